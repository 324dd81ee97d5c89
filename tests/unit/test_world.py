"""The generated world (loadtest/world.py): deterministic, unique ids, balanced, valid, loadable."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from backend.schemas import BOT_USERNAME_RE, Persona, PersonaProfile, TopicWeights
from backend.stores.bots import bot_id_from_token
from behavior_engine.market import DEFAULT_PRICES
from behavior_engine.topics import TOPIC_PATTERNS
from bots.personas import load_persona_dir
from loadtest.world import World, generate_personas, generate_world, sandbox_world
from sandbox.telegram_api import TOKEN_RE, SandboxError, TelegramSandbox

N_BOTS, N_CHATS = 10_000, 1_000


@pytest.fixture(scope="module")
def big() -> World:
    """The 10,000-bot world (its generation time is a benchmark, docs/benchmarks.md, not a
    timed assertion: a loaded machine must not fail the suite)."""
    return generate_world(N_BOTS, N_CHATS, seed=2024)


def test_big_world_has_every_bot_and_chat(big: World) -> None:
    assert len(big.bots) == N_BOTS and len(big.chats) == N_CHATS


def test_same_seed_gives_the_same_world() -> None:
    a = generate_world(60, 7, seed=11, humans_per_chat=2)
    b = generate_world(60, 7, seed=11, humans_per_chat=2)
    assert a == b
    assert generate_personas(60, seed=11) == [bot.persona for bot in a.bots]


def test_other_seed_gives_another_world() -> None:
    a = generate_world(60, 7, seed=11)
    b = generate_world(60, 7, seed=12)
    assert [x.persona for x in a.bots] != [x.persona for x in b.bots]
    assert {x.token for x in a.bots}.isdisjoint(x.token for x in b.bots)
    assert [c.telegram_chat_id for c in a.chats] != [c.telegram_chat_id for c in b.chats]
    assert [c.topics for c in a.chats] != [c.topics for c in b.chats]


def test_personas_are_a_stable_prefix() -> None:
    assert generate_personas(10, seed=5) == generate_personas(30, seed=5)[:10]
    assert generate_personas(0, seed=5) == []


def test_the_global_random_generator_is_neither_used_nor_touched() -> None:
    random.seed(1)
    state = random.getstate()
    a = generate_world(30, 4, seed=9)
    assert random.getstate() == state
    random.seed(2)
    assert generate_world(30, 4, seed=9) == a


def test_ids_and_usernames_are_unique_and_well_formed(big: World) -> None:
    world = big
    usernames = [b.persona.username for b in world.bots]
    assert len({u.lower() for u in usernames}) == N_BOTS
    assert all(BOT_USERNAME_RE.fullmatch(u) and len(u) <= 32 for u in usernames)
    demo = {p.username.lower() for p in load_persona_dir()}
    assert demo.isdisjoint(u.lower() for u in usernames)

    tokens = [b.token for b in world.bots]
    assert len(set(tokens)) == N_BOTS
    for bot in world.bots:
        match = TOKEN_RE.fullmatch(bot.token)
        assert match, bot.token
        assert len(match.group(2)) == 35
        assert bot_id_from_token(bot.token) == bot.user_id == int(match.group(1))
    assert len({b.user_id for b in world.bots}) == N_BOTS

    chat_ids = [c.telegram_chat_id for c in world.chats]
    assert len(set(chat_ids)) == N_CHATS
    assert all(str(cid).startswith("-100") and len(str(cid)) == 14 for cid in chat_ids)

    humans = [h for c in world.chats for h in c.humans]
    assert len(humans) == N_CHATS  # humans_per_chat=1
    assert len({h["id"] for h in humans}) == N_CHATS
    assert {h["id"] for h in humans}.isdisjoint(b.user_id for b in world.bots)
    assert len({h["username"] for h in humans}) == N_CHATS


def test_bots_are_spread_evenly_one_chat_each(big: World) -> None:
    world = big
    sizes = [len(c.bot_tokens) for c in world.chats]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    placed = Counter(t for c in world.chats for t in c.bot_tokens)
    assert placed == Counter(b.token for b in world.bots)  # every bot exactly once

    uneven = generate_world(23, 5, seed=1)
    assert sorted(len(c.bot_tokens) for c in uneven.chats) == [4, 4, 5, 5, 5]
    one_each = generate_world(6, 6, seed=1)
    assert [len(c.bot_tokens) for c in one_each.chats] == [1] * 6


def test_every_persona_validates(big: World) -> None:
    world = big
    for bot in world.bots:
        p = bot.persona
        assert Persona.model_validate(p.model_dump()) == p
        PersonaProfile.model_validate(p.profile().model_dump())
        assert p.bio.startswith(p.name.split()[0]), (p.name, p.bio[:30])
        for h in p.holdings:  # bought near the demo market's start prices
            assert abs(h.avg_cost / DEFAULT_PRICES[h.symbol] - 1) < 0.05, (p.username, h)
    sample = world.bots[0].persona
    assert Persona.model_validate_json(sample.model_dump_json()) == sample


def test_personas_vary(big: World) -> None:
    personas = [b.persona for b in big.bots]
    assert {p.role for p in personas} == {p.role for p in load_persona_dir()}
    assert len({p.name for p in personas}) > 500
    assert len({p.talkativeness for p in personas}) > 100
    assert len({p.style.emoji_rate for p in personas}) > 50
    assert len({p.mood_baseline for p in personas}) > 20
    assert len({tuple(sorted(p.topics)) for p in personas}) > 10
    assert {len(p.holdings) for p in personas} >= {1, 2, 3}
    btc_views = {s.view for p in personas if p.role == "scalper" for s in p.stances
                 if s.topic == "btc"}
    assert len(btc_views) > 1  # not every scalper copies the archetype's view


def test_chat_topics_come_from_the_topic_detector(big: World) -> None:
    for chat in big.chats:
        assert set(chat.topics) <= set(TOPIC_PATTERNS)
        assert 2 <= len(chat.topics) <= 4
        TopicWeights(weights=chat.topics)
        assert chat.title


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1, 1), "n_bots must be >= 1"),
        ((-3, 1, 1), "n_bots must be >= 1"),
        ((5, 0, 1), "n_chats must be >= 1"),
        ((3, 4, 1), r"n_chats \(4\) must not exceed n_bots \(3\)"),
        ((5, 2, -1), "humans_per_chat must be >= 0"),
    ],
)
def test_bad_input_is_refused(args: tuple[int, int, int], message: str) -> None:
    n_bots, n_chats, humans = args
    with pytest.raises(ValueError, match=message):
        generate_world(n_bots, n_chats, seed=1, humans_per_chat=humans)


def test_negative_persona_count_is_refused() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        generate_personas(-1, seed=1)


def test_no_humans_when_asked_for_none() -> None:
    assert all(c.humans == () for c in generate_world(4, 2, seed=1, humans_per_chat=0).chats)


async def test_sandbox_world_loads_and_each_chat_has_its_bots_and_humans() -> None:
    world = generate_world(23, 5, seed=8, humans_per_chat=2)
    sandbox = TelegramSandbox()
    sandbox.load_world(sandbox_world(world))
    for chat in world.chats:
        for human in chat.humans:
            msg = await sandbox.post_as_human(chat.telegram_chat_id, human["id"], "merhaba")
            assert msg["chat"] == {"id": chat.telegram_chat_id, "title": chat.title,
                                   "type": "supergroup"}
            assert msg["from"]["username"] == human["username"]
    for chat in world.chats:
        for token in chat.bot_tokens:  # a bot gets exactly its own chat's human messages
            updates = sandbox.pending_updates(token)
            assert [(u["message"]["chat"]["id"], u["message"]["from"]["id"]) for u in updates] \
                == [(chat.telegram_chat_id, h["id"]) for h in chat.humans]
    a, b = world.chats[0], world.chats[1]
    with pytest.raises(SandboxError, match="not a member"):
        await sandbox.post_as_human(a.telegram_chat_id, b.humans[0]["id"], "selam")


def test_big_world_loads_into_the_sandbox(big: World) -> None:
    data = sandbox_world(big)
    TelegramSandbox().load_world(data)  # refuses a bad token, a duplicate bot or chat id
    assert len(data["bots"]) == N_BOTS and len(data["chats"]) == N_CHATS
    assert sum(len(c["bots"]) for c in data["chats"]) == N_BOTS

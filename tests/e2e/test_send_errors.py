"""Every send error Telegram answers, end to end: the sandbox Telegram, the listener and the
worker, talking through python-telegram-bot over real HTTP on 127.0.0.1 (issue 15, item 3;
the table in ``behavior_engine/pipeline.py``'s docstring).

Each test makes the sandbox answer one way (kick a bot, revoke a token, migrate the group,
delete the reply target) or makes the writer produce one kind of text (over the limit, full
of markup), then checks what Telegram shows, what our database holds, and what the operator
is told (metric, audit entry).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db.models import AuditEntry, Chat, Message, TurnRecord
from backend.db.types import utcnow
from backend.stores import audit as audit_store
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import members as member_store
from backend.stores import turns as turn_store
from behavior_engine.llm.chain import ProviderChain
from behavior_engine.llm.factory import build_chain
from behavior_engine.market import MarketFeed
from behavior_engine.pipeline import TEXT_LIMIT, utf16_len
from behavior_engine.turn import Generation, GenerationRequest
from tests.e2e.test_loop import World, make_world, wait_until
from worker import Worker

pytestmark = pytest.mark.e2e
SUPERGROUP = -100777
GROUP = -777  # a basic group (it migrates to a supergroup)
NEW_SUPERGROUP = -100777000
HUMAN_ID = 900
FIRST_BOT = 8100000000  # the first persona's Telegram user id (the token's prefix)


@pytest.fixture
async def world(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession], request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    """test_loop's world (:func:`tests.e2e.test_loop.make_world`) in a supergroup, or with
    the param ``"group"`` in a basic group (which can migrate to a supergroup)."""
    kind = getattr(request, "param", "supergroup")
    async with make_world(tmp_path, sessionmaker, kind=kind,
                          chat_id=GROUP if kind == "group" else SUPERGROUP) as w:
        yield w


class Writes:
    """A writer that always writes ``text`` (stands for a provider, last in the chain)."""

    name = "fixed"

    def __init__(self, text: str) -> None:
        self.text = text

    async def generate(self, request: GenerationRequest) -> Generation:
        return Generation(text=self.text, provider=self.name)


def make_worker(w: World, writes: str | None = None) -> Worker:
    chain = build_chain([]) if writes is None else ProviderChain([], last_resort=Writes(writes))
    return Worker(settings=w.settings, sessionmaker=w.sessionmaker, secrets=w.secrets,
                  chain=chain, market=MarketFeed(seed=1, start=utcnow()))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def bot_id_of(w: World, telegram_user_id: int) -> int:
    async with w.sessionmaker() as s:
        bots = await bot_store.list_bots(s)
    return next(b.id for b in bots if b.telegram_user_id == telegram_user_id)


async def audit_of(w: World, bot_id: int) -> list[AuditEntry]:
    async with w.sessionmaker() as s:
        return await audit_store.list_entries(s, entity="bot", entity_id=bot_id)


async def stored_bot_messages(w: World) -> list[Message]:
    async with w.sessionmaker() as s:
        return list((await s.execute(select(Message).where(Message.bot_id.is_not(None))
                                     .order_by(Message.id))).scalars().all())


def bot_posts(w: World, chat: int) -> list[dict[str, object]]:
    return [m for m in w.sandbox.messages(chat) if m["from"]["is_bot"]]  # type: ignore[index]


def assert_no_token(w: World, entries: list[AuditEntry]) -> None:
    shown = repr([(e.before, e.after) for e in entries])
    assert not any(t in shown or t.split(":")[1] in shown for t in w.tokens)


async def test_a_kicked_bot_leaves_that_chat_once_and_the_operator_is_told(
        world: World) -> None:
    """(a) 403: the membership becomes kicked, the turn fails and is not repeated, the
    counter and the audit log say so once; the others go on."""
    kicked = await bot_id_of(world, FIRST_BOT)
    before = sample("botsim_bot_membership_lost_total", reason="kicked")
    # The listener would hear the kick first (my_chat_member to that bot, left_chat_member
    # to the others); with those updates lost (every webhook gone), the send's 403 is what
    # tells the engine.
    async with httpx.AsyncClient() as http:
        for token in world.tokens:
            got = await http.post(f"{world.sandbox.bot_api_url}{token}/deleteWebhook")
            assert got.json()["ok"] is True
    world.sandbox.kick_bot(world.chat, FIRST_BOT)
    worker = make_worker(world)
    await worker.start()
    try:
        async def left() -> bool:
            async with world.sessionmaker() as s:
                rows = await member_store.bot_memberships(s, bot_id=kicked)
            return any(r.status == "kicked" for r in rows)

        assert await wait_until(left, 30), dict(worker.stats)

        async def others_post() -> bool:
            return len(bot_posts(world, world.chat)) >= 3

        assert await wait_until(others_post, 30)
    finally:
        await worker.stop()
    async with world.sessionmaker() as s:
        [member] = await member_store.bot_memberships(s, bot_id=kicked)  # the panel's call
        turns = (await s.execute(select(TurnRecord).where(TurnRecord.bot_id == kicked))
                 ).scalars().all()
    assert member.status == "kicked" and "kicked" in (member.reason or "")
    assert member.updated_at is not None
    # the 403 turn failed and was never tried again (a turn already in flight when the
    # first 403 came may meet its own)
    assert 1 <= len(turns) <= 2
    assert all(t.status == "failed" and t.attempts == 1 for t in turns), turns
    assert sample("botsim_bot_membership_lost_total", reason="kicked") - before == 1
    [entry] = await audit_of(world, kicked)
    assert (entry.action, entry.user_id, entry.username) == (
        "bot.membership_lost", None, "engine")
    assert entry.after is not None
    assert entry.after["telegram_chat_id"] == world.chat and entry.after["status"] == "kicked"
    assert "Forbidden: bot was kicked" in str(entry.after["description"])
    assert_no_token(world, [entry])
    assert all(m["from"]["id"] != FIRST_BOT for m in bot_posts(world, world.chat))
    async with world.sessionmaker() as s:
        assert (await bot_store.get_bot(s, bot_id=kicked)).enabled  # only that chat is left


async def test_a_revoked_token_disables_the_bot_and_the_others_go_on(world: World) -> None:
    """(b) 401 to a send: the bot is disabled, let go and audited; the others go on."""
    victim = await bot_id_of(world, FIRST_BOT)
    before = sample("botsim_bots_disabled_total", reason="token_refused")
    worker = make_worker(world)
    await worker.start()
    try:
        assert victim in worker.driven()  # connected with the token, before its revocation
        world.sandbox.revoke_token(FIRST_BOT)

        async def disabled() -> bool:
            async with world.sessionmaker() as s:
                return not (await bot_store.get_bot(s, bot_id=victim)).enabled

        assert await wait_until(disabled, 40), dict(worker.stats)

        async def let_go() -> bool:
            await worker.rebalance()
            return victim not in worker.driven()

        assert await wait_until(let_go, 10)
        after_revoke = len(bot_posts(world, world.chat))

        async def others_post() -> bool:
            return len(bot_posts(world, world.chat)) >= after_revoke + 3

        assert await wait_until(others_post, 30), dict(worker.stats)
    finally:
        await worker.stop()
    async with world.sessionmaker() as s:
        refused = (await s.execute(select(TurnRecord).where(
            TurnRecord.bot_id == victim, TurnRecord.status == "failed"))).scalars().all()
    # the 401 failed its turn; a second turn in flight then may fail on the bot let go
    assert any("nauthorized" in (t.error or "") for t in refused), [t.error for t in refused]
    assert sample("botsim_bots_disabled_total", reason="token_refused") - before == 1
    [entry] = await audit_of(world, victim)
    assert (entry.action, entry.user_id, entry.username) == ("bot.disabled", None, "engine")
    assert entry.before == {"enabled": True}
    assert entry.after is not None and entry.after["reason"] == "token_refused"
    assert str(entry.after["description"]).startswith("401 ")
    assert_no_token(world, [entry])


@pytest.mark.parametrize("world", ["group"], indirect=True)
async def test_a_migrated_group_keeps_its_history_under_the_new_id(world: World) -> None:
    """(c) 400 migrate_to_chat_id: the chat takes the supergroup's id (the old one kept, the
    old messages' ids negated), the send is repeated there once and stored once."""
    worker = make_worker(world)
    await worker.start()
    try:
        async def talked() -> bool:
            return len(await stored_bot_messages(world)) >= 2

        assert await wait_until(talked, 30), dict(worker.stats)
        world.sandbox.migrate_chat(GROUP, NEW_SUPERGROUP)

        async def moved() -> bool:
            async with world.sessionmaker() as s:
                chat = await chat_store.get_chat_by_telegram_id(
                    s, telegram_chat_id=NEW_SUPERGROUP)
            return chat is not None and len(bot_posts(world, NEW_SUPERGROUP)) >= 2

        assert await wait_until(moved, 30), dict(worker.stats)
    finally:
        await worker.stop()
    old_posts = bot_posts(world, GROUP)
    new_posts = bot_posts(world, NEW_SUPERGROUP)
    async with world.sessionmaker() as s:
        [chat] = (await s.execute(select(Chat))).scalars().all()  # one chat, not two
        failed = (await s.execute(select(func.count()).select_from(TurnRecord).where(
            TurnRecord.status == "failed"))).scalar_one()
    assert chat.telegram_chat_id == NEW_SUPERGROUP
    assert chat.migrated_from_telegram_chat_id == GROUP
    stored = await stored_bot_messages(world)
    assert {m.chat_id for m in stored} == {chat.id}
    # history kept: the old group's messages under their negated ids, the new ones as sent
    assert sorted(-m.telegram_message_id for m in stored if m.telegram_message_id < 0) == (
        sorted(int(m["message_id"]) for m in old_posts))  # type: ignore[call-overload]
    assert sorted(m.telegram_message_id for m in stored if m.telegram_message_id > 0) == (
        sorted(int(m["message_id"]) for m in new_posts))  # type: ignore[call-overload]
    assert len({m.turn_id for m in stored}) == len(stored)  # each turn stored once
    assert failed == 0  # the turns that met the 400 were sent in the new chat


async def test_a_deleted_reply_target_is_answered_without_the_reply(world: World) -> None:
    """(d) the message a reply answers was deleted: sent without the reply (python-telegram-
    bot's ``allow_sending_without_reply``), stored once with no reply_to, the human's
    message answered."""
    worker = make_worker(world)
    await worker.start()
    try:
        human = await world.sandbox.post_as_human(world.chat, HUMAN_ID,
                                                  "Ali Hoca, faiz ne olur?")
        world.sandbox.delete_message(world.chat, human["message_id"])

        async def answered() -> bool:
            async with world.sessionmaker() as s:
                return bool((await s.execute(select(TurnRecord).where(
                    TurnRecord.reply_to_message_id.is_not(None),
                    TurnRecord.status == "sent"))).first())

        assert await wait_until(answered, 30), dict(worker.stats)
    finally:
        await worker.stop()
    async with world.sessionmaker() as s:
        stored_human = (await s.execute(select(Message).where(
            Message.bot_id.is_(None)))).scalar_one()
        turn = (await s.execute(select(TurnRecord).where(
            TurnRecord.reply_to_message_id == stored_human.id))).scalar_one()
        answer = (await s.execute(select(Message).where(
            Message.turn_id == turn.turn_id))).scalar_one()
    assert stored_human.reply_wanted is False and turn.status == "sent"
    shown = {m["message_id"]: m for m in bot_posts(world, world.chat)}
    assert "reply_to_message" not in shown[answer.telegram_message_id]  # sent without it
    assert answer.telegram_message_id == turn.telegram_message_id
    assert answer.reply_to_telegram_message_id is None


LONG_TEXT = " ".join(
    f"Cümle {i}: dolar 1.5 puan yükseldi 📈, altın yatay; herkes ne düşünüyor?"
    for i in range(150))  # ~11,000 characters, more UTF-16 code units (the emoji count 2)


async def test_a_text_over_the_limit_goes_out_in_parts_each_stored_once(world: World) -> None:
    """(e) a text over 4096 UTF-16 code units: sent as several messages in order, cut at
    sentence ends, each within the limit and stored once; the turn sent once."""
    assert utf16_len(LONG_TEXT) > 2 * TEXT_LIMIT
    worker = make_worker(world, writes=LONG_TEXT)
    await worker.start()
    try:
        async def whole() -> bool:
            async with world.sessionmaker() as s:
                sent = (await s.execute(select(TurnRecord.turn_id).where(
                    TurnRecord.status == "sent"))).scalars().all()
                for t in sent:
                    if len(await turn_store.turn_message_ids(s, turn_id=t)) == 3:
                        return True
            return False

        assert await wait_until(whole, 40), dict(worker.stats)
    finally:
        await worker.stop()
    async with world.sessionmaker() as s:
        turns = (await s.execute(select(TurnRecord).where(TurnRecord.status == "sent"))
                 ).scalars().all()
        by_turn = {t.turn_id: await turn_store.turn_message_ids(s, turn_id=t.turn_id)
                   for t in turns}
        rows = {m.id: m for m in (await s.execute(select(Message))).scalars().all()}
    complete = [t for t in turns if len(by_turn[t.turn_id]) == 3]
    assert complete
    shown = {m["message_id"]: m for m in bot_posts(world, world.chat)}
    for t in complete:
        parts = [rows[i] for i in by_turn[t.turn_id]]
        assert t.error is None and t.telegram_message_id == parts[0].telegram_message_id
        assert " ".join(p.text for p in parts) == LONG_TEXT
        assert all(utf16_len(p.text) <= TEXT_LIMIT for p in parts)
        assert all(p.text.endswith("?") for p in parts)  # whole sentences
        ids = [p.telegram_message_id for p in parts]
        assert ids == sorted(ids)  # in order
        assert [shown[i]["text"] for i in ids] == [p.text for p in parts]  # as Telegram has it
        assert parts[0].turn_id == t.turn_id
        assert [p.turn_id for p in parts[1:]] == [turn_store.part_turn_id(t.turn_id, k)
                                                  for k in (2, 3)]
    # every message Telegram accepted is stored exactly once
    stored = sorted(m.telegram_message_id for m in rows.values() if m.bot_id is not None)
    assert stored == sorted(shown)
    assert worker.stats["errors"] == 0


MARKUP = ("<b>kalın</b> <i>eğik <a href='x'>bağ</a> *yıldız* _alt_ __çift__ [köşeli](parantez) "
          "`kod` ```blok``` ~çizgi~ ||gizli|| > alıntı #etiket 1.5 - 2 = -0.5! & &amp; \\ {}")


async def test_markup_characters_arrive_verbatim(world: World) -> None:
    """(f) plain text, no parse_mode: markup characters never fail to parse and arrive as
    written (the sandbox refuses an unbalanced ``<b>`` or ``*`` under HTML or Markdown)."""
    worker = make_worker(world, writes=MARKUP)
    await worker.start()
    try:
        # One post: the writer always writes the same text, and the repeat guard (issue 16)
        # drops the same text said again.
        async def posted() -> bool:
            return len(bot_posts(world, world.chat)) >= 1

        assert await wait_until(posted, 30), dict(worker.stats)
    finally:
        await worker.stop()
    posts = bot_posts(world, world.chat)
    assert len(posts) == 1 and posts[0]["text"] == MARKUP
    assert all("entities" not in m for m in posts)  # nothing was parsed as formatting
    stored = await stored_bot_messages(world)
    assert len(stored) == 1 and stored[0].text == MARKUP
    async with world.sessionmaker() as s:
        failed = (await s.execute(select(func.count()).select_from(TurnRecord).where(
            TurnRecord.status == "failed"))).scalar_one()
    assert failed == 0

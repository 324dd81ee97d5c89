"""One contract, both memberships: the same tests run against the in-process kind (one
worker, no Redis) and the shared kind (Redis leases, ring, reply stream), over real
connections."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher
from backend.settings import Settings
from behavior_engine.membership import (
    HistoryIntake,
    InProcessMembership,
    Membership,
    SharedMembership,
    StreamIntake,
    reply_intake_for,
)
from behavior_engine.reads import CachedReads
from behavior_engine.scheduler import HUMAN_WAIT_MAX
from behavior_engine.turn import ChatLine, Outcome, Turn
from tests.integration.test_turns_store import World, human_message, seed_world

Sessions = async_sessionmaker[AsyncSession]


@dataclass
class Rig:
    membership: Membership
    reads: CachedReads
    world: World
    sm: Sessions

    async def human(self, tg_id: int) -> int:
        """A human message arrives the way this kind hears of it; returns its id."""
        mid = await human_message(self.sm, self.world.chat_id, tg_id)
        await self.reads.cache.invalidate("history", str(self.world.chat_id))
        if isinstance(self.membership, SharedMembership):
            item = next(i for i in await self.reads.history(self.world.chat_id)
                        if i.message_id == mid)
            # Every member bot is asked (the dispatcher's choice is the scheduler's test).
            await self.membership.stream.add(item, self.world.chat_id, self.world.bot_ids,
                                             None)
        return mid


@pytest.fixture(params=["in_process", "shared"])
async def rig(request: pytest.FixtureRequest, sessionmaker: Sessions,
              cipher: TokenCipher) -> AsyncIterator[Rig]:
    world = await seed_world(sessionmaker, cipher)
    cache = Settings(redis_url=None).make_cache()
    reads = CachedReads(cache, sessionmaker)
    membership: Membership
    if request.param == "in_process":
        membership = InProcessMembership(reads, sessionmaker, "worker-contract")
    else:
        redis_url = request.getfixturevalue("redis_url")
        settings = Settings(redis_url=redis_url, heartbeat_ttl_s=30.0,
                            redis_namespace=f"contract-{uuid.uuid4().hex[:8]}")
        membership = SharedMembership.build(settings, reads, sessionmaker,
                                            worker_id="worker-contract")
        membership.join_settle_s = 0.0
    try:
        yield Rig(membership, reads, world, sessionmaker)
    finally:
        await membership.leave()
        await membership.close()
        await cache.close()


async def held_all(rig: Rig) -> list[int]:
    m = rig.membership
    await m.join({"name": "contract"})
    change = await m.rebalance(rig.world.bot_ids, set(), {"name": "contract"})
    return await m.confirm(change.won, change.won)


def reply_turn(rig: Rig, bot_id: int, mid: int, tg_id: int) -> Turn:
    line = ChatLine(telegram_message_id=tg_id, speaker="Deniz", speaker_username="deniz",
                    is_human=True, text="?", created_at=datetime.now(UTC))
    return Turn(turn_id=str(uuid.uuid4()), chat_id=rig.world.chat_id, telegram_chat_id=-1,
                bot_id=bot_id, topic="btc", reply_to=line, reason="human",
                decided_at=datetime.now(UTC), reply_message_id=mid)


async def test_a_lone_worker_holds_every_bot_under_a_token(rig: Rig) -> None:
    held = await held_all(rig)
    assert sorted(held) == sorted(rig.world.bot_ids)
    assert set(rig.membership.tokens) == set(held)
    assert all(rig.membership.tokens[b] >= 1 and rig.membership.valid(b) for b in held)
    again = await rig.membership.rebalance(rig.world.bot_ids, set(), {})
    assert again.won == [] and again.released == [] and again.lost == []


async def test_bots_not_connected_are_not_held_and_offered_again(rig: Rig) -> None:
    m, bots = rig.membership, rig.world.bot_ids
    change = await m.rebalance(bots, set(), {})
    held = await m.confirm(change.won, change.won[1:])
    assert change.won[0] not in held and not m.valid(change.won[0])
    assert (await m.rebalance(bots, set(), {})).won == [change.won[0]]


async def test_bots_gone_from_the_chats_are_released_unless_busy(rig: Rig) -> None:
    await held_all(rig)
    first, busy, *rest = rig.world.bot_ids
    change = await rig.membership.rebalance(rest, {busy}, {})
    assert change.released == [first] and change.won == []
    assert not rig.membership.valid(first) and rig.membership.valid(busy)


async def test_forget_and_leave_drop_the_bots(rig: Rig) -> None:
    held = await held_all(rig)
    rig.membership.forget(held[0])
    assert held[0] not in rig.membership.tokens and not rig.membership.valid(held[0])
    await rig.membership.leave()
    assert rig.membership.tokens == {}


async def test_a_human_message_waits_for_the_bots_held(rig: Rig) -> None:
    await held_all(rig)
    m, chat = rig.membership, rig.world.chat_id
    mid = await rig.human(4242)
    await m.poll()
    now = datetime.now(UTC)
    history = await rig.reads.history(chat)
    assert await m.wants_reply(chat)
    [waiting] = m.waiting(chat, history, now, set(rig.world.bot_ids))
    assert waiting.message_id == mid and waiting.line.telegram_message_id == 4242
    assert m.waiting(chat, history, now, set()) == []  # no member bot: nobody to answer
    assert m.waiting(chat + 1, history, now, set(rig.world.bot_ids)) == [] or isinstance(
        m, InProcessMembership)  # in-process reads the chat's own history
    later = now + HUMAN_WAIT_MAX + timedelta(seconds=1)
    await m.drop_stale(later)
    assert m.waiting(chat, history, later, set(rig.world.bot_ids)) == []


async def test_settling_a_reply_never_raises_and_keeps_the_rest(rig: Rig) -> None:
    await held_all(rig)
    m, chat, bots = rig.membership, rig.world.chat_id, rig.world.bot_ids
    mid = await rig.human(4343)
    await m.poll()
    turn = reply_turn(rig, bots[0], mid, 4343)
    await m.settle(turn, Outcome(turn=turn, status="sent", telegram_message_id=1))
    history = await rig.reads.history(chat)
    left = m.waiting(chat, history, datetime.now(UTC), set(bots))
    # Shared: the other asked bots still have their requests; in-process: the history
    # (not yet showing the reply) still lists the message.
    assert [w.message_id for w in left] == [mid]
    if isinstance(m, SharedMembership):
        assert left[0].assigned is not None and bots[0] not in left[0].assigned


async def test_replies_always_get_the_floor_and_floors_are_given_back(rig: Rig) -> None:
    await held_all(rig)
    m, bots = rig.membership, rig.world.bot_ids
    reply = reply_turn(rig, bots[0], 1, 1)
    assert await m.take_floor(reply)
    spontaneous = Turn(turn_id=str(uuid.uuid4()), chat_id=rig.world.chat_id,
                       telegram_chat_id=-1, bot_id=bots[1], topic="btc", reply_to=None,
                       reason="spontaneous", decided_at=datetime.now(UTC))
    assert await m.take_floor(spontaneous)
    await m.give_floor(spontaneous)
    assert not m.floor_held(rig.world.chat_id)
    assert await m.take_floor(spontaneous)  # free again
    await m.give_floor(spontaneous)
    await m.give_floor(spontaneous)  # twice: never raises


async def test_an_outage_is_told_once_and_its_end_once(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    m = rig.membership
    with caplog.at_level(logging.INFO, logger="botsim.membership"):
        m.outage(ConnectionError("connection refused"))
        m.outage(ConnectionError("connection refused"))
        m.outage(None)
        m.outage(None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1 and "connection refused" in warnings[0]
    assert len(infos) == 1 and "contract" in infos[0]


async def test_the_listeners_intake_matches_the_membership(rig: Rig) -> None:
    m = rig.membership
    await held_all(rig)
    mid = await human_message(rig.sm, rig.world.chat_id, 4545)
    await rig.reads.cache.invalidate("history", str(rig.world.chat_id))
    item = next(i for i in await rig.reads.history(rig.world.chat_id) if i.message_id == mid)
    if isinstance(m, SharedMembership):
        settings = Settings(redis_url="redis://127.0.0.1:6379/0",
                            redis_namespace=m.leases.namespace, seed=m.dispatcher.seed)
        with pytest.raises(ValueError, match="Redis client"):
            reply_intake_for(settings, rig.reads, rig.sm)
        intake = reply_intake_for(settings, rig.reads, rig.sm, redis=m.redis)
        assert isinstance(intake, StreamIntake)
    else:
        intake = reply_intake_for(Settings(redis_url=None), rig.reads, rig.sm)
        assert isinstance(intake, HistoryIntake)
    asked = await intake.announce(rig.world.chat_id, item)
    await m.poll()
    [waiting] = m.waiting(rig.world.chat_id, await rig.reads.history(rig.world.chat_id),
                          datetime.now(UTC), set(rig.world.bot_ids))
    assert waiting.message_id == mid
    if isinstance(m, SharedMembership):
        assert asked and set(waiting.assigned or ()) == set(asked)
    else:
        assert asked == []

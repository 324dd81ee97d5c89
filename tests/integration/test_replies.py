"""The reply stream (Redis) and the dispatcher that chooses a human message's repliers."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import keys
from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from backend.schemas import MessageMeta
from backend.stores import messages as message_store
from backend.stores import settings as settings_store
from behavior_engine.reads import CachedReads, HistoryItem
from behavior_engine.replies import ReplyDispatcher, ReplyStream
from tests.integration.test_turns_store import World, human_message, seed_world

Sessions = async_sessionmaker[AsyncSession]

AT = datetime(2026, 3, 2, 10, 15, 30, 123456, tzinfo=UTC)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def ns() -> str:
    return f"replytest-{uuid.uuid4().hex[:8]}"


def item(message_id: int, tg: int, text: str, *, at: datetime = AT,
         reply_to: int | None = None, username: str | None = "deniz") -> HistoryItem:
    return HistoryItem(message_id=message_id, telegram_message_id=tg, bot_id=None,
                       speaker="Deniz Ş.", speaker_username=username, is_human=True, text=text,
                       created_at=at, reply_to=reply_to, reply_wanted=True)


# -- the stream -------------------------------------------------------------------------------


async def test_add_read_new_read_all_done(redis: aioredis.Redis, ns: str) -> None:
    stream = ReplyStream(redis, namespace=ns)
    ids = await stream.add(item(7, 70, "Dolar ne olur? 🙂"), 3, [11, 12], None)
    ids += await stream.add(item(8, 80, "Ya altın?", username=None), 3, [13], 12)
    assert len(ids) == 3 and len(set(ids)) == 3

    got = await stream.read_new()
    assert [(r.entry_id, r.message_id, r.chat_id, r.bot_id, r.reply_to_bot_id) for r in got] == [
        (ids[0], 7, 3, 11, None), (ids[1], 7, 3, 12, None), (ids[2], 8, 3, 13, 12)]
    first, last = got[0], got[2]
    assert first.line.telegram_message_id == 70
    assert first.line.text == "Dolar ne olur? 🙂"
    assert first.line.speaker == "Deniz Ş." and first.line.speaker_username == "deniz"
    assert first.line.is_human and first.line.bot_id is None
    assert first.line.created_at == AT and first.line.created_at.tzinfo is not None
    assert last.line.speaker_username is None and last.line.text == "Ya altın?"
    w = last.waiting((13,))
    assert (w.message_id, w.line, w.reply_to_bot_id, w.assigned) == (8, last.line, 12, (13,))

    assert await stream.read_new() == []  # nothing new
    assert [r.entry_id for r in await stream.read_all()] == ids  # everything still there
    # another worker (its own cursor) sees them all too
    assert [r.entry_id for r in await ReplyStream(redis, namespace=ns).read_new()] == ids

    await stream.done(ids[:2])
    await stream.done([])
    assert [r.entry_id for r in await stream.read_all()] == [ids[2]]
    assert await redis.xlen(keys.replies_stream(ns)) == 1

    newer = await stream.add(item(9, 90, "Borsa?"), 3, [11], None)
    assert [r.entry_id for r in await stream.read_new()] == newer


async def test_read_all_moves_the_cursor(redis: aioredis.Redis, ns: str) -> None:
    stream = ReplyStream(redis, namespace=ns)
    ids = await stream.add(item(7, 70, "x"), 3, [11, 12, 13], None)
    assert [r.entry_id for r in await stream.read_all()] == ids
    assert await stream.read_new() == []  # read_all already delivered them


async def test_dispatch_record(redis: aioredis.Redis, ns: str) -> None:
    stream = ReplyStream(redis, namespace=ns)
    assert await stream.undispatched([]) == []
    assert await stream.undispatched([7, 8]) == [7, 8]
    await stream.add(item(7, 70, "x"), 3, [11, 12], None)
    await stream.add(item(8, 80, "y"), 3, [13], None)
    assert await stream.undispatched([7, 8, 9]) == [9]
    assert json.loads(await redis.get(keys.replied_key(7, ns))) == [11, 12]
    assert 0 < await redis.ttl(keys.replied_key(7, ns)) <= 1800
    await stream.forget_dispatch(7)
    assert await stream.undispatched([7, 8, 9]) == [7, 9]
    # forgetting the record does not take the entries off the stream
    assert [r.message_id for r in await stream.read_all()] == [7, 7, 8]


async def test_malformed_entries_are_dropped_and_logged(
    redis: aioredis.Redis, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="botsim.replies")
    stream = ReplyStream(redis, namespace=ns)
    key = keys.replies_stream(ns)
    good_line = json.dumps({"tg": 70, "speaker": "D", "username": None, "text": "t",
                            "at": AT.isoformat()})
    bad = [
        {"foo": "bar"},
        {"message": "7", "chat": "3", "bot": "11", "line": "not json"},
        {"message": "seven", "chat": "3", "bot": "11", "line": good_line},
        {"message": "7", "chat": "3", "bot": "11", "line": "[1, 2]"},
        {"message": "7", "chat": "3", "bot": "11", "line": json.dumps({"tg": 70})},
        {"message": "7", "chat": "3", "bot": "11",
         "line": json.dumps({"tg": 70, "speaker": "D", "text": "t", "at": "yesterday"})},
    ]
    bad_ids = [(await redis.xadd(key, f)).decode() for f in bad[:3]]  # type: ignore[arg-type]
    good = await stream.add(item(7, 70, "fine"), 3, [11], None)
    bad_ids += [(await redis.xadd(key, f)).decode() for f in bad[3:]]  # type: ignore[arg-type]

    got = await stream.read_new()
    assert [r.entry_id for r in got] == good
    assert await redis.xlen(key) == 1  # the unreadable ones were deleted
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    for entry_id in bad_ids:
        assert entry_id in logged

    # read_all drops them too
    caplog.clear()
    late = (await redis.xadd(key, {"message": "1"})).decode()
    assert [r.entry_id for r in await stream.read_all()] == good
    assert await redis.xlen(key) == 1
    assert any(late in r.getMessage() for r in caplog.records)


# -- the dispatcher ---------------------------------------------------------------------------


@pytest.fixture
async def reads(sessionmaker: Sessions) -> AsyncIterator[CachedReads]:
    cache = TwoLayerCache(redis_url=None)
    await cache.start()
    try:
        yield CachedReads(cache, sessionmaker)
    finally:
        await cache.close()


@pytest.fixture
async def world(sessionmaker: Sessions, cipher: TokenCipher) -> World:
    return await seed_world(sessionmaker, cipher)


@pytest.fixture
def stream(redis: aioredis.Redis, ns: str) -> ReplyStream:
    return ReplyStream(redis, namespace=ns)


def dispatcher(stream: ReplyStream, reads: CachedReads, sm: Sessions) -> ReplyDispatcher:
    return ReplyDispatcher(stream, reads, sm, seed=5)


async def settle() -> None:
    for _ in range(5):  # invalidations run as tasks right after the commit
        await asyncio.sleep(0)


async def test_mention_is_dispatched_to_that_bot(
    world: World, stream: ReplyStream, reads: CachedReads, sessionmaker: Sessions
) -> None:
    d = dispatcher(stream, reads, sessionmaker)
    for i, username in enumerate(world.usernames):
        mid = 100 + i
        chosen = await d.dispatch(world.chat_id, item(mid, 1000 + i,
                                                      f"@{username} dolar ne olur?"))
        assert chosen == [world.bot_ids[i]], username
        got = await stream.read_new()
        assert [(r.message_id, r.bot_id, r.chat_id) for r in got] == [
            (mid, world.bot_ids[i], world.chat_id)]
        assert await stream.undispatched([mid]) == []
    # two bots addressed: both, nobody else
    both = await d.dispatch(world.chat_id, item(
        200, 2000, f"@{world.usernames[3]} ve @{world.usernames[1]} ne dersiniz?"))
    assert sorted(both) == sorted([world.bot_ids[1], world.bot_ids[3]])


async def test_reply_to_a_bot_message_goes_to_that_bot(
    world: World, stream: ReplyStream, reads: CachedReads, sessionmaker: Sessions
) -> None:
    bot = world.bot_ids[2]
    async with sessionmaker() as s, s.begin():
        await message_store.record_sent(
            s, chat_id=world.chat_id, bot_id=bot, turn_id=str(uuid.uuid4()),
            telegram_message_id=500, text="Bence yükselir.", meta=MessageMeta(),
            created_at=datetime.now(UTC) - timedelta(seconds=30))
    d = dispatcher(stream, reads, sessionmaker)
    assert await d.dispatch(world.chat_id, item(300, 501, "Neden öyle düşünüyorsun?",
                                                reply_to=500)) == [bot]
    [req] = await stream.read_new()
    assert (req.bot_id, req.reply_to_bot_id, req.message_id) == (bot, bot, 300)


async def test_repeated_dispatch_chooses_the_same_bots(
    world: World, stream: ReplyStream, reads: CachedReads, sessionmaker: Sessions
) -> None:
    first, again = [], []
    texts = ["Piyasa bugün nasıl?", "Faiz kararı ne olur?", "Altın mı dolar mı?"]
    for mid in range(1, 25):
        it = item(mid, 10 * mid, texts[mid % len(texts)])
        first.append(await dispatcher(stream, reads, sessionmaker).dispatch(world.chat_id, it))
    for mid in reversed(range(1, 25)):  # another dispatcher, another order
        it = item(mid, 10 * mid, texts[mid % len(texts)])
        again.append(await dispatcher(stream, reads, sessionmaker).dispatch(world.chat_id, it))
    assert first == list(reversed(again))
    assert all(c and set(c) <= set(world.bot_ids) for c in first)
    # the choice depends on the message: not always the same bot
    assert len({c[0] for c in first}) > 1


async def test_paused_simulation_dispatches_nothing(
    world: World, stream: ReplyStream, reads: CachedReads, sessionmaker: Sessions
) -> None:
    async with sessionmaker() as s, s.begin():
        await settings_store.update_settings(s, changes={"simulation_active": False},
                                             cache=reads.cache)
    await settle()
    d = dispatcher(stream, reads, sessionmaker)
    it = item(1, 10, f"@{world.usernames[0]} selam")
    assert await d.dispatch(world.chat_id, it) == []
    assert await stream.read_all() == []
    assert await stream.undispatched([1]) == [1]  # the sweep picks it up later
    async with sessionmaker() as s, s.begin():
        await settings_store.update_settings(s, changes={"simulation_active": True},
                                             cache=reads.cache)
    await settle()
    assert await d.dispatch(world.chat_id, it) == [world.bot_ids[0]]


async def test_unknown_chat_dispatches_nothing(
    world: World, stream: ReplyStream, reads: CachedReads, sessionmaker: Sessions
) -> None:
    d = dispatcher(stream, reads, sessionmaker)
    assert await d.dispatch(world.chat_id + 999, item(1, 10, "selam")) == []
    assert await stream.read_all() == []


async def test_sweep_redispatches_only_lost_records(
    world: World, stream: ReplyStream, reads: CachedReads, sessionmaker: Sessions
) -> None:
    d = dispatcher(stream, reads, sessionmaker)
    kept = await human_message(sessionmaker, world.chat_id, 41, f"@{world.usernames[0]} ?")
    lost = await human_message(sessionmaker, world.chat_id, 42, f"@{world.usernames[1]} ?")
    fresh = await human_message(sessionmaker, world.chat_id, 43, f"@{world.usernames[2]} ?",
                                age_s=-60)  # "newer than older_than_s"
    for mid, tg, who in [(kept, 41, 0), (lost, 42, 1)]:
        chosen = await d.dispatch(world.chat_id, item(mid, tg, f"@{world.usernames[who]} ?"))
        assert chosen == [world.bot_ids[who]]
    assert len(await stream.read_new()) == 2
    await stream.forget_dispatch(lost)  # e.g. Redis restarted without persistence

    assert await d.sweep(older_than_s=0) == 1
    got = await stream.read_new()
    assert [(r.message_id, r.bot_id) for r in got] == [(lost, world.bot_ids[1])]
    req = got[0]
    assert req.line.telegram_message_id == 42 and req.line.speaker == "Deniz"
    assert req.line.speaker_username == "deniz"
    assert await stream.undispatched([kept, lost, fresh]) == [fresh]
    assert await d.sweep(older_than_s=0) == 0  # its record exists again
    assert await stream.read_new() == []


async def test_a_worker_whose_clock_stepped_back_still_sweeps(
    world: World, stream: ReplyStream, reads: CachedReads, sessionmaker: Sessions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """botsim chaos: the sweeping worker's wall clock 90 s behind the listener's. The window
    is measured on the later of its clock and the database's, so a message stored 30 s ago
    whose dispatch record is gone is dispatched again (before: none was old enough)."""
    from behavior_engine import replies

    d = dispatcher(stream, reads, sessionmaker)
    lost = await human_message(sessionmaker, world.chat_id, 51, f"@{world.usernames[0]} ?",
                               age_s=30)
    behind = datetime.now(UTC) - timedelta(seconds=90)
    monkeypatch.setattr(replies, "utcnow", lambda: behind)
    assert await d.sweep(older_than_s=20) == 1
    assert [r.message_id for r in await stream.read_new()] == [lost]
    async with sessionmaker() as s:
        db_now = await message_store.database_now(s)
    assert abs((db_now - datetime.now(UTC)).total_seconds()) < 5

"""Membership and bot leases in Redis with fencing tokens from the database (two workers)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import keys
from backend.crypto import TokenCipher
from backend.db.models import TurnRecord
from backend.errors import FencedOut
from backend.stores import turns as turn_store
from behavior_engine.leases import SAFETY, Leases
from tests.integration.test_turns_store import World, human_message, reply_wanted, seed_world

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def ns() -> str:
    return f"leasetest-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def world(sessionmaker: Sessions, cipher: TokenCipher) -> World:
    return await seed_world(sessionmaker, cipher)


MakeLeases = Callable[..., Leases]


@pytest.fixture
def make(redis: aioredis.Redis, sessionmaker: Sessions, ns: str) -> MakeLeases:
    def build(worker_id: str, ttl_s: float = 30.0, **kw: object) -> Leases:
        return Leases(redis=redis, sessionmaker=sessionmaker, worker_id=worker_id, ttl_s=ttl_s,
                      namespace=ns, **kw)  # type: ignore[arg-type]
    return build


async def test_one_holder_per_bot_and_tokens_increase(world: World, make: MakeLeases) -> None:
    a, b = make("worker-a"), make("worker-b")
    b1, b2, b3 = world.bot_ids[:3]
    assert await a.acquire([b1, b2]) == {b1: 1, b2: 1}
    assert await b.acquire([b1, b2, b3]) == {b3: 1}  # only the free one
    assert a.tokens == {b1: 1, b2: 1} and b.tokens == {b3: 1}
    assert await a.holders([b1, b2, b3, world.bot_ids[3]]) == {
        b1: "worker-a", b2: "worker-a", b3: "worker-b", world.bot_ids[3]: None}
    assert await a.acquire([b1]) == {}  # already held: nothing new
    assert await a.holders([]) == {}

    await a.release([b1])
    assert b1 not in a.tokens
    assert await b.acquire([b1]) == {b1: 2}
    await b.release([b1])
    assert await a.acquire([b1]) == {b1: 3}
    assert (await a.holders([b1]))[b1] == "worker-a"
    # the older holder's token is fenced out in the database
    async with a.sessionmaker() as s, s.begin():
        await turn_store.check_fence(s, bot_id=b1, token=3)
    assert a.valid(b1) and not b.valid(b1)


async def test_acquire_same_bot_concurrently_one_winner(world: World, make: MakeLeases) -> None:
    workers = [make(f"worker-{i}") for i in range(4)]
    bot = world.bot_ids[0]
    got = await asyncio.gather(*(w.acquire([bot]) for w in workers))
    winners = [w for w, g in zip(workers, got, strict=True) if g]
    assert len(winners) == 1
    assert got.count({bot: 1}) == 1
    assert (await workers[0].holders([bot]))[bot] == winners[0].worker_id


async def test_renew_extends_own_and_reports_lost(world: World, make: MakeLeases,
                                                  redis: aioredis.Redis, ns: str) -> None:
    a = make("worker-a", ttl_s=30.0)
    b = make("worker-b", ttl_s=5.0)
    b1, b2, b3 = world.bot_ids[:3]
    assert await a.acquire([b1, b2, b3])
    # b1's key expires (deleted here) and worker-b takes it; b2's key is just gone
    await redis.delete(keys.lease_key(b1, ns))
    assert await b.acquire([b1]) == {b1: 2}
    await redis.delete(keys.lease_key(b2, ns))
    await redis.pexpire(keys.lease_key(b3, ns), 1000)

    lost = await a.renew()
    assert lost == {b1, b2}
    assert a.tokens == {b3: 1}
    assert not a.valid(b1) and not a.valid(b2) and a.valid(b3)
    # own key extended to the full TTL; the other's key neither extended nor touched
    assert await redis.pttl(keys.lease_key(b3, ns)) > 25_000
    assert 0 < await redis.pttl(keys.lease_key(b1, ns)) <= 5_000
    assert (await a.holders([b1, b2, b3])) == {b1: "worker-b", b2: None, b3: "worker-a"}
    # b2 stays free: renewing does not recreate a lost key
    assert await redis.exists(keys.lease_key(b2, ns)) == 0
    assert await a.renew() == set()


async def test_release_only_deletes_own_keys(world: World, make: MakeLeases,
                                             redis: aioredis.Redis, ns: str) -> None:
    a, b = make("worker-a"), make("worker-b")
    b1, b2 = world.bot_ids[:2]
    await a.acquire([b1, b2])
    await redis.delete(keys.lease_key(b1, ns))  # a's lease on b1 expires...
    await b.acquire([b1])  # ...and b takes it
    await a.release([b1, b2])  # a still believes it holds b1
    assert a.tokens == {}
    assert await a.holders([b1, b2]) == {b1: "worker-b", b2: None}
    assert b.tokens == {b1: 2}
    await a.release([])  # nothing to do


async def test_valid_until_the_local_deadline(world: World, make: MakeLeases) -> None:
    now = [100.0]
    a = make("worker-a", ttl_s=10.0, clock=lambda: now[0])
    b1, b2 = world.bot_ids[:2]
    assert not a.valid(b1)  # not held
    await a.acquire([b1])
    deadline = 100.0 + 10.0 * (1 - SAFETY)
    assert a.remaining() == pytest.approx(deadline - 100.0)
    now[0] = deadline - 0.01
    assert a.valid(b1)
    assert not a.valid(b2)
    now[0] = deadline + 0.01
    assert not a.valid(b1)  # the key still exists in Redis, but the local clock says no
    assert a.remaining() < 0
    assert b1 in a.tokens
    # a renewal moves the deadline from the time it started
    assert await a.renew() == set()
    assert a.valid(b1)
    assert a.remaining() == pytest.approx(10.0 * (1 - SAFETY))
    now[0] += 10.0 * (1 - SAFETY) + 0.01
    assert not a.valid(b1)


async def test_live_workers_fresh_only(make: MakeLeases, redis: aioredis.Redis,
                                       ns: str) -> None:
    a = make("worker-a", ttl_s=30.0)
    b = make("worker-b", ttl_s=1.0)
    assert await a.live_workers() == []
    await b.heartbeat({"bots": 2})
    await a.heartbeat({"bots": 1})
    assert await a.live_workers() == ["worker-a", "worker-b"]
    info = await a.worker_info()
    assert info["worker-a"]["bots"] == 1 and info["worker-b"]["bots"] == 2
    assert isinstance(info["worker-b"]["at_ms"], int)
    await asyncio.sleep(1.15)  # b's heartbeat expires
    assert await b.live_workers() == ["worker-a"]
    members = {m.decode() for m in await redis.zrange(keys.workers_key(ns), 0, -1)}
    assert members == {"worker-a"}  # b forgotten
    await b.heartbeat({"bots": 0})  # b is back
    assert await a.live_workers() == ["worker-a", "worker-b"]


async def test_leave_removes_membership_and_leases(world: World, make: MakeLeases,
                                                   redis: aioredis.Redis, ns: str) -> None:
    a, b = make("worker-a"), make("worker-b")
    b1, b2, b3 = world.bot_ids[:3]
    await a.heartbeat({})
    await b.heartbeat({})
    await a.acquire([b1, b2])
    await b.acquire([b3])
    await a.leave()
    assert a.tokens == {}
    assert await b.live_workers() == ["worker-b"]
    assert await redis.exists(keys.worker_key("worker-a", ns)) == 0
    assert await b.holders([b1, b2, b3]) == {b1: None, b2: None, b3: "worker-b"}
    assert await b.acquire([b1, b2]) == {b1: 2, b2: 2}


async def test_acquire_reconciles_an_earlier_holders_intent(
    world: World, make: MakeLeases, redis: aioredis.Redis, ns: str, sessionmaker: Sessions
) -> None:
    a, b = make("worker-a"), make("worker-b")
    b1, b2 = world.bot_ids[:2]
    m1 = await human_message(sessionmaker, world.chat_id, 30)
    m2 = await human_message(sessionmaker, world.chat_id, 31)
    await a.acquire([b1, b2])
    async with sessionmaker() as s, s.begin():
        assert await turn_store.record_intent(
            s, turn_id="a-b1", bot_id=b1, chat_id=world.chat_id, token=a.tokens[b1],
            worker=a.worker_id, reply_to_message_id=m1)
        assert await turn_store.record_intent(
            s, turn_id="a-b2", bot_id=b2, chat_id=world.chat_id, token=a.tokens[b2],
            worker=a.worker_id, reply_to_message_id=m2)
    # worker-a dies: its keys expire (deleted here); worker-b takes b1 only
    await redis.delete(keys.lease_key(b1, ns), keys.lease_key(b2, ns))
    assert await b.acquire([b1]) == {b1: 2}
    assert b.unknown == 1 and a.unknown == 0
    async with sessionmaker() as s:
        got = {t.turn_id: t.status
               for t in (await s.execute(select(TurnRecord))).scalars().all()}
    assert got == {"a-b1": "unknown", "a-b2": "intent"}
    assert await reply_wanted(sessionmaker, m1) is False
    assert await reply_wanted(sessionmaker, m2) is True
    # and the dead holder can write nothing more for b1
    async with sessionmaker() as s, s.begin():
        with pytest.raises(FencedOut):
            await turn_store.record_intent(
                s, turn_id="a-b1-again", bot_id=b1, chat_id=world.chat_id, token=1,
                worker=a.worker_id)
    assert await b.acquire([b2]) == {b2: 2}
    assert b.unknown == 2


async def test_acquire_failure_in_the_database_releases_the_lease(
    world: World, make: MakeLeases, redis: aioredis.Redis, ns: str
) -> None:
    a = make("worker-a")
    missing = max(world.bot_ids) + 100  # no such bot: the fencing row violates its FK
    with pytest.raises(IntegrityError):
        await a.acquire([missing])
    assert a.tokens == {}
    assert await redis.exists(keys.lease_key(missing, ns)) == 0


async def test_worker_info_empty(make: MakeLeases) -> None:
    assert await make("worker-a").worker_info() == {}


async def test_live_workers_forgets_expired_and_takes_back_a_worker_that_beats_again(
    make: MakeLeases, redis: aioredis.Redis, ns: str
) -> None:
    a, b = make("worker-a"), make("worker-b")
    await a.heartbeat({})
    await b.heartbeat({})
    await redis.delete(keys.worker_key("worker-b", ns))  # b's heartbeat expired
    assert await a.live_workers() == ["worker-a"]
    assert await redis.zscore(keys.workers_key(ns), "worker-b") is None  # forgotten
    await b.heartbeat({})  # b beats again: back in the live set
    assert await a.live_workers() == ["worker-a", "worker-b"]

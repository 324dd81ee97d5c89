"""SharedLimiter against real Redis: two limiters on two connections stand for two workers.

Telegram's limits (1/s per chat, 20/min per group as a sliding window, ~30/s per bot, the
429 block) and the per-chat cap over all bots hold across them; a refusal takes nothing;
with Redis unreachable or hung, the in-process limiter answers, counted and logged once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from backend import keys
from bots.ratelimit import SharedLimiter, TelegramLimiter

Make = Callable[..., SharedLimiter]


def fallbacks(op: str) -> float:
    return REGISTRY.get_sample_value("botsim_ratelimit_fallback_total", {"op": op}) or 0.0


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def warnings_of(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "botsim.ratelimit" and r.levelno == level
    ]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client for looking at the keys directly."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def make(redis_url: str) -> AsyncIterator[Make]:
    """Makes a SharedLimiter on a client (connection pool) of its own: one per "worker"."""
    clients: list[Redis] = []

    def factory(**kwargs: Any) -> SharedLimiter:
        client = Redis.from_url(redis_url)
        clients.append(client)
        return SharedLimiter(client, **kwargs)

    yield factory
    for client in clients:
        await client.aclose()


async def server_ms(redis: Redis) -> float:
    sec, usec = await redis.time()
    return float(sec) * 1000 + usec / 1000


async def test_one_message_per_second_per_chat_across_workers(make: Make) -> None:
    a, b = make(), make()
    assert await a.try_acquire(1, -100) == 0.0
    assert b.wait_time(1, -100) == 0.0  # b's local estimate cannot know a's send yet
    wait = await b.try_acquire(1, -100)
    assert 0.9 < wait <= 1.0
    assert 0.9 < a.wait_time(1, -100) <= 1.0  # a recorded its own send locally
    assert 0.9 < b.wait_time(1, -100) <= 1.0  # b remembers what Redis told it
    assert await b.try_acquire(1, -200) == 0.0  # another chat is free
    assert await b.try_acquire(2, -100) == 0.0  # another bot is free


async def test_chat_cap_holds_across_workers(make: Make) -> None:
    a, b = make(), make()
    for bot, lim in ((1, a), (2, b), (3, a)):
        assert await lim.try_acquire(bot, -100, chat_cap=3) == 0.0
    wait = await b.try_acquire(4, -100, chat_cap=3)
    assert 59.0 < wait <= 60.0  # until the first of the three leaves the 60 s window
    assert 59.0 < await a.try_acquire(4, -100, chat_cap=3) <= wait  # and for a too
    assert await b.try_acquire(4, -200, chat_cap=3) == 0.0  # another chat has room
    assert await b.try_acquire(4, -100, chat_cap=4) == 0.0  # the operator raised the cap
    assert await a.try_acquire(5, -100, chat_cap=4) > 59.0
    assert await a.try_acquire(6, -100, chat_cap=0) > 59.0  # a cap of 0 allows nothing


async def test_group_limit_is_a_sliding_window(make: Make, redis: Redis) -> None:
    # 3 per 60 s per (bot, group); the 1/s per-chat limit loosened to one per 20 ms.
    a, b = (
        make(per_group_per_min=3, per_chat_per_sec=50),
        make(per_group_per_min=3, per_chat_per_sec=50),
    )
    for lim in (a, b, a):
        assert await lim.try_acquire(1, -100) == 0.0
        await asyncio.sleep(0.03)
    # The script reads Redis's clock at some instant between these two readings, so the wait
    # it returns lies between the two bounds (exact, however loaded the machine is).
    before = await server_ms(redis)
    wait = await b.try_acquire(1, -100)
    after = await server_ms(redis)
    group = keys.ratelimit_group_key(1, -100)
    [(_, oldest)] = await redis.zrange(group, 0, 0, withscores=True)
    assert oldest + 60_000 - after - 1 <= wait * 1000 <= oldest + 60_000 - before + 1
    assert wait > 59.5  # a token bucket of 3 refilled at 3/min would say 20 s
    assert await redis.zcard(group) == 3  # the refusal took nothing


async def test_a_refusal_takes_nothing(make: Make, redis: Redis) -> None:
    # Bot 1 may send 2/s across chats; 1/min per group; chat -3 is capped at 1/min.
    kw: dict[str, Any] = {"per_bot_per_sec": 2, "per_group_per_min": 1}
    a, b = make(**kw), make(**kw)
    assert await a.try_acquire(1, -1) == 0.0
    assert await b.try_acquire(1, -2) == 0.0
    waits = [await lim.try_acquire(1, -3, chat_cap=1) for lim in (a, b, a, b, a)]
    assert all(0.0 < w <= 1.0 for w in waits)  # the bot's 1 s window is full
    for key in (
        keys.ratelimit_chat_key(1, -3),
        keys.ratelimit_group_key(1, -3),
        keys.ratelimit_chat_cap_key(-3),
    ):
        assert await redis.zcard(key) == 0, key
    assert await redis.zcard(keys.ratelimit_bot_key(1)) == 2
    await asyncio.sleep(waits[-1] + 0.02)
    # Exactly one more fits: the group (1/min) and the cap (1/min) now refuse.
    assert await b.try_acquire(1, -3, chat_cap=1) == 0.0
    assert await a.try_acquire(1, -3, chat_cap=1) > 59.0
    assert await a.try_acquire(2, -3, chat_cap=1) > 59.0  # another bot: the chat cap


async def test_local_estimate_follows_redis_even_when_the_clocks_disagree(make: Make) -> None:
    # The local limiter's clock stands still: Redis (server time) allows the second send
    # 60 ms later while the local per-chat bucket (1 per 50 ms) still finds itself empty.
    local = TelegramLimiter(clock=lambda: 1000.0, per_chat_per_sec=20)
    lim = make(per_chat_per_sec=20, local=local)
    assert await lim.try_acquire(1, -100) == 0.0
    await asyncio.sleep(0.06)
    assert await lim.try_acquire(1, -100) == 0.0
    assert lim.wait_time(1, -100) == pytest.approx(0.05)  # empty, not reset to full
    assert len(local._group[(1, -100)].events) == 2


async def test_429_block_is_seen_by_the_other_worker(make: Make) -> None:
    a, b = make(), make()
    await a.block(1, 2.0)
    wait = await b.try_acquire(1, -100)
    assert 1.9 < wait <= 2.0
    assert 1.9 < b.wait_time(1, -100) <= 2.0
    assert await b.try_acquire(2, -100) == 0.0  # other bots are not blocked
    first = await b.blocked_for(1)
    assert 1.9 < first <= 2.0
    await asyncio.sleep(0.1)
    second = await b.blocked_for(1)
    assert 0.0 < second < first - 0.05
    await b.block(1, 0.5)  # a shorter retry_after never shortens the block
    assert await a.blocked_for(1) > 1.5
    assert await a.blocked_for(2) == 0.0


async def test_per_bot_limit_across_chats_and_workers(make: Make, redis: Redis) -> None:
    a, b = make(), make()
    results = [await (a, b)[i % 2].try_acquire(1, -1000 - i) for i in range(40)]
    taken = [w for w in results if w == 0.0]
    refused = [w for w in results if w > 0.0]
    assert len(taken) == 30  # ~30 messages per second per bot, over both workers
    assert results[:30] == [0.0] * 30
    assert all(0.0 < w <= 1.0 for w in refused)
    assert await redis.zcard(keys.ratelimit_bot_key(1)) == 30
    assert await a.try_acquire(2, -1000) == 0.0  # other bots have their own window
    await asyncio.sleep(refused[-1] + 0.02)
    assert await b.try_acquire(1, -2000) == 0.0


async def test_redis_unreachable_falls_back_to_the_local_limiter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="botsim.ratelimit")
    before = fallbacks("acquire"), fallbacks("block"), fallbacks("blocked_for")
    lim = SharedLimiter.from_url(f"redis://127.0.0.1:{spare_port()}/0")
    try:
        assert await lim.try_acquire(1, -100, chat_cap=2) == 0.0
        assert 0.9 < await lim.try_acquire(1, -100, chat_cap=2) <= 1.0  # local 1/s
        assert await lim.try_acquire(2, -100, chat_cap=2) == 0.0
        assert await lim.try_acquire(3, -100, chat_cap=2) > 59.0  # local chat cap
        await lim.block(4, 5.0)
        assert 4.9 < await lim.blocked_for(4) <= 5.0
        assert 4.9 < await lim.try_acquire(4, -200) <= 5.0
        assert not lim.redis_up
    finally:
        await lim.aclose()
    assert fallbacks("acquire") - before[0] == 5
    assert fallbacks("block") - before[1] == 1
    assert fallbacks("blocked_for") - before[2] == 1
    warned = warnings_of(caplog, logging.WARNING)
    assert len(warned) == 1, warned
    assert "per process only" in warned[0]


async def test_hung_redis_costs_one_timeout_then_serves_locally(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers, until the client hangs up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis.from_url(
        f"redis://127.0.0.1:{port}/0",
        socket_timeout=0.1,
        socket_connect_timeout=0.1,
        retry=Retry(NoBackoff(), 0),
    )
    lim = SharedLimiter(client)
    before = fallbacks("acquire")
    try:
        start = time.monotonic()
        assert await lim.try_acquire(1, -100) == 0.0
        first = time.monotonic() - start
        start = time.monotonic()
        for _ in range(20):
            assert await lim.try_acquire(1, -100) > 0.9
        rest = time.monotonic() - start
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert 0.09 < first < 0.5  # one socket timeout
    assert rest < 0.05  # no round trip during the backoff
    assert fallbacks("acquire") - before == 21
    assert len(warnings_of(caplog, logging.WARNING)) == 1


async def test_outage_is_logged_once_and_recovery_once(
    make: Make, redis: Redis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="botsim.ratelimit")
    lim = make()
    client = lim._redis
    calls = 0

    async def refused(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(client, "evalsha", refused)
    assert await lim.try_acquire(1, -100) == 0.0  # served locally
    assert await lim.try_acquire(2, -100) == 0.0
    assert calls == 1  # the second call did not try Redis within the backoff
    assert len(warnings_of(caplog, logging.WARNING)) == 1
    await asyncio.sleep(0.06)  # past the first backoff (50 ms): the next call probes
    assert await lim.try_acquire(3, -100) == 0.0
    assert calls == 2
    assert len(warnings_of(caplog, logging.WARNING)) == 1  # still the same outage
    monkeypatch.undo()
    await asyncio.sleep(0.11)  # past the doubled backoff
    assert await lim.try_acquire(4, -100) == 0.0
    assert lim.redis_up
    assert await redis.zcard(keys.ratelimit_chat_key(4, -100)) == 1  # went to Redis
    assert await redis.zcard(keys.ratelimit_chat_key(3, -100)) == 0  # had not
    infos = warnings_of(caplog, logging.INFO)
    assert len(infos) == 1 and "answers again" in infos[0]
    monkeypatch.setattr(client, "evalsha", refused)
    assert await lim.try_acquire(5, -100) == 0.0
    assert len(warnings_of(caplog, logging.WARNING)) == 2  # a new outage, a new warning

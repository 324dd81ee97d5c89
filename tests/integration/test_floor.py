"""``loadtest.floor``: the CPU floor of one message against the sandboxes, the database and
Redis; it must measure every figure and leave nothing behind (rows, keys).

Redis: this test worker's own database (the ``redis_url`` fixture, flushed first); the floor's
keys have a random ``botsim-floor-`` namespace, and none may be left.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db.models import Bot, Chat, ChatBot, Message
from backend.stores import messages as message_store
from bots.ratelimit import SharedLimiter
from loadtest import floor
from sandbox.llm_api import LLMSandbox
from sandbox.telegram_api import Limits, TelegramSandbox

TOKEN = "7000001:floor-test-token"
BOT_ID = 7000001
CHATS = [-1001000000001 - i for i in range(30)]


async def telegram(chats: list[int], limits: Limits | None = None) -> TelegramSandbox:
    sb = TelegramSandbox(limits=limits)
    sb.add_bot(TOKEN, "floor_test_bot", "Floor")
    for chat_id in chats:
        sb.add_chat(chat_id, f"floor {chat_id}")
        sb.add_bot_to_chat(chat_id, TOKEN)
    await sb.start()
    return sb


@pytest.fixture
async def tg() -> AsyncIterator[TelegramSandbox]:
    """Telegram's real limits (1/s per chat after a burst of 3, 20/min per group, 30/s)."""
    sb = await telegram(CHATS)
    try:
        yield sb
    finally:
        await sb.stop()


@pytest.fixture
async def redis_db(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


async def floor_keys(client: aioredis.Redis) -> list[Any]:
    return [k async for k in client.scan_iter(match="botsim-floor-*", count=1000)]


async def row_counts(sm: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sm() as s:
        return {m.__tablename__: int((await s.execute(select(func.count()).select_from(m)))
                                     .scalar_one())
                for m in (Bot, Chat, ChatBot, Message)}


async def test_floor_measures_every_call_and_leaves_nothing(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession], llm: LLMSandbox,
    tg: TelegramSandbox, redis_db: aioredis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = await row_counts(sessionmaker)
    inserts: list[int] = []
    real_record_sent = message_store.record_sent

    async def record_sent(session: AsyncSession, **kw: Any) -> Message:
        if not inserts:  # the floor's own rows exist, disabled, and have no membership
            bot = await session.get(Bot, kw["bot_id"])
            chat = await session.get(Chat, kw["chat_id"])
            assert bot is not None and chat is not None
            assert not bot.enabled and not chat.enabled
            assert bot.username.startswith("floor_")
            assert await session.get(ChatBot, (chat.id, bot.id)) is None
        inserts.append(kw["telegram_message_id"])
        return await real_record_sent(session, **kw)

    acquired: list[float] = []
    real_acquire = SharedLimiter.try_acquire

    async def try_acquire(self: SharedLimiter, bot_id: int, chat_id: int, **kw: Any) -> float:
        wait = await real_acquire(self, bot_id, chat_id, **kw)
        acquired.append(wait)
        return wait

    monkeypatch.setattr(message_store, "record_sent", record_sent)
    monkeypatch.setattr(SharedLimiter, "try_acquire", try_acquire)

    # Two bursts of 25 sends after the warm-up's: within Telegram's 30 per second per bot.
    samples, warmup = 45, 5
    result = await floor.measure_floor(
        telegram_api_url=tg.bot_api_url, bot_token=TOKEN, telegram_chat_ids=CHATS,
        llm_base_url=llm.url_for("openai") + "/v1", database_url=db_url,
        redis_url=redis_url, samples=samples, warmup=warmup, concurrency=2,
        telegram_per_second=25)

    figures = (result.llm_sdk_call_ms, result.telegram_send_ms, result.db_insert_ms,
               result.redis_turn_ms)
    assert all(f > 0 for f in figures), result
    assert result.total_ms == pytest.approx(sum(figures))
    assert result.samples == samples
    d = result.as_dict()
    assert set(d) == {"llm_sdk_call", "telegram_send", "db_insert", "redis_turn", "total",
                      "samples", "telegram_throttled"}
    assert d["total"] == round(result.total_ms, 3) and d["samples"] == samples
    # Telegram: every send arrived, paced within Telegram's limits (no 429).
    stats = tg.stats
    assert stats["sent"] == {BOT_ID: warmup + samples}
    assert stats["too_many_requests"] == 0 and result.telegram_throttled == 0
    assert sum(len(tg.messages(c)) for c in CHATS) == warmup + samples
    # Database: one insert per operation, then nothing left.
    assert sorted(inserts) == list(range(1, warmup + samples + 1))
    assert await row_counts(sessionmaker) == before
    # Redis: every turn took its limiter slot; no key left.
    assert acquired == [0.0] * (warmup + samples)
    assert await floor_keys(redis_db) == []


async def test_a_429_is_waited_out_and_sent_again(llm: LLMSandbox) -> None:
    """One chat: a burst of 3, then 1/s. The refused sends wait their retry_after (none is
    sent during a penalty) and go again; every sample arrives."""
    sb = await telegram(CHATS[:1])
    try:
        cpu, throttled = await floor.telegram_send_cpu_ms(
            sb.bot_api_url, TOKEN, CHATS[:1], samples=3, warmup=2, per_second=None)
        stats = sb.stats
    finally:
        await sb.stop()
    assert cpu > 0
    assert stats["sent"] == {BOT_ID: 5}
    assert throttled >= 1 and stats["too_many_requests"] == throttled
    assert stats["ignored_retry_after"] == 0


async def test_without_redis_the_turn_costs_nothing_there(
    llm: LLMSandbox, tmp_path: Path, sqlite_template: Path,
) -> None:
    path = tmp_path / "floor.db"
    shutil.copy(sqlite_template, path)
    sb = await telegram(CHATS[:2], Limits(chat_burst=100, group_per_minute=100))
    try:
        result = await floor.measure_floor(
            telegram_api_url=sb.bot_api_url, bot_token=TOKEN, telegram_chat_ids=CHATS[:2],
            llm_base_url=llm.url_for("openai") + "/v1", database_url=f"sqlite+aiosqlite:///{path}",
            redis_url=None, samples=3, warmup=1, telegram_per_second=None)
    finally:
        await sb.stop()
    assert result.redis_turn_ms == 0.0
    assert result.total_ms == pytest.approx(
        result.llm_sdk_call_ms + result.telegram_send_ms + result.db_insert_ms)
    assert min(result.llm_sdk_call_ms, result.telegram_send_ms, result.db_insert_ms) > 0


async def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="samples >= 1"):
        await floor.llm_call_cpu_ms("http://127.0.0.1:9/v1", samples=0)
    with pytest.raises(ValueError, match="telegram_chat_ids is empty"):
        await floor.telegram_send_cpu_ms("http://127.0.0.1:9/bot", TOKEN, [], samples=1)

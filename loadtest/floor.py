"""The CPU floor of one message: the library calls a message cannot avoid (issue 7).

``botsim loadtest`` compares the engine's CPU per message with this floor, measured in the
same process and the same report. The floor of one message is the client-side CPU of:

1. one LLM SDK call: the official ``openai`` SDK, ``AsyncOpenAI().chat.completions.create``
   with a persona prompt of about 1 KB (two system messages and a user message), against the
   sandbox LLM server (``sandbox/llm_api.py``);
2. one python-telegram-bot send, ``telegram.Bot.send_message``, against the sandbox Telegram
   (``sandbox/telegram_api.py``), with the ``HTTPXRequest`` settings of our ``BotClient``;
3. one message insert through our store, ``backend.stores.messages.record_sent`` in its own
   transaction;
4. the Redis operations of one turn: the shared limiter's ``try_acquire`` (one EVALSHA),
   taking the chat's floor (``SET NX PX``) and giving it back (the worker's compare-and-delete
   script, one EVALSHA).

Each kind runs in a phase of its own: a few warm-up operations (connections, imports,
caches; not counted), then ``samples`` operations, ``concurrency`` at a time, with
``time.process_time()`` read before and after the batch; the figure is that CPU divided by
``samples``, in milliseconds. ``process_time`` counts every thread of this process (the
aiosqlite thread included, as the engine pays it too), so run the servers (sandboxes,
PostgreSQL, Redis) in other processes and nothing else in this one, or their CPU is counted.

For reference, on the development machine (2 cores, Python 3.11, issue 7), these cost about
3.4 ms (AsyncOpenAI call, ``loadtest/bench_chain.py``'s ``direct``), 1.9 ms (PTB send),
1.2 ms (ORM insert) and 0.25 ms (a Redis GET) of client CPU.

Usage (the caller has started the servers and migrated the database)::

    floor = await measure_floor(
        telegram_api_url=sandbox.bot_api_url, bot_token=token, telegram_chat_ids=chat_ids,
        llm_base_url=llm.url_for("openai") + "/v1", database_url=url,
        redis_url="redis://127.0.0.1:6379/0", samples=200)
    print(floor.as_dict())
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import openai
import telegram
from cryptography.fernet import Fernet
from openai.types.chat import ChatCompletionMessageParam
from telegram import error as tg_error
from telegram.request import HTTPXRequest

from backend import keys
from backend.crypto import TokenCipher
from backend.db.session import make_engine, make_sessionmaker
from backend.redis_client import make_redis
from backend.schemas import MessageMeta, Persona, SimulationSettings
from backend.stores import bots as bot_store
from backend.stores import bulk as bulk_store
from backend.stores import chats as chat_store
from backend.stores import messages as message_store
from behavior_engine.membership import RELEASE_FLOOR_LUA
from bots.personas import load_persona_dir
from bots.ratelimit import SharedLimiter
from bots.telegram import retry_after_seconds, shared_ssl_context

#: Warm-up operations per phase, not counted.
WARMUP = 5
#: Model name sent to the LLM server.
LLM_MODEL = "gpt-4o-mini"
#: ``max_tokens`` of the LLM call.
LLM_MAX_TOKENS = 100
#: A persona prompt as the prompt builder writes one: 1,000-1,100 bytes in three messages.
LLM_PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": (
        "You are Ayşe (@ayse_bot), a scalper in a Telegram group of market traders. Kısa "
        "vadeli işlem yapar, hızlı konuşur.\nWrite only in Turkish. Style: casual, at most 8 "
        "words, about 1 emoji per message. You are a bot account and never claim otherwise. "
        "Never promise returns, never tell anyone to buy or sell, give no personal investment "
        "advice. Disagree when your views differ; do not just agree.")},
    {"role": "system", "content": (
        "Your views: btc bullish (0.6), gold bearish (-0.3).\nYour holdings: BTC 0.4 at "
        "91000; P&L +1.0 %.\nYour mood now: +0.20 on a scale from -1 (gloomy) to +1 "
        "(euphoric).")},
    {"role": "user", "content": (
        "Market now: BTC 95000 (+0.40 %), XAU 2650 (-0.20 %), USDTRY 34.5 (+0.10 %)\n"
        "Recent messages:\n[1] Mehmet Yatırımcı: Dolar bugün yine yükseldi, altın ne "
        "olacak?\n[2] Ali Hoca: Uzun vadede altın her zaman korur, panik yok.\n[3] Zeynep: "
        "BTC 95 bin üstünde kalırsa güzel olur 🙂\n\nWrite one new message about btc. "
        "Write only the message text.")},
]
#: Sends per burst (one burst a second) by default: under Telegram's ~30 per second per bot.
TELEGRAM_PER_SECOND = 25
#: Extra pause after a burst's second, for the sliding window's edge (seconds).
_BURST_MARGIN_S = 0.05
#: Text of each Telegram send (a bot message of typical length).
TELEGRAM_TEXT = "BTC 95 bin üstünde tutunursa kısa vadede yukarı bakarım 📈"


class FloorError(RuntimeError):
    """The floor could not be measured cleanly (the message says why)."""


@dataclass(frozen=True)
class Floor:
    """CPU milliseconds per operation (client side, this process) of a message's library calls.

    Attributes:
        llm_sdk_call_ms: one ``AsyncOpenAI().chat.completions.create`` (about 1 KB prompt).
        telegram_send_ms: one ``telegram.Bot.send_message`` request. A request answered 429
            and retried counts as a request (``samples + telegram_throttled`` requests share
            the phase's CPU); none are when the sends keep within Telegram's limits.
        db_insert_ms: one ``record_sent`` in its own transaction (session, INSERT, COMMIT).
        redis_turn_ms: a turn's Redis calls (limiter EVALSHA, floor SET NX PX, release
            EVALSHA); 0.0 without Redis (solo mode does them in process memory).
        samples: operations measured per kind (warm-up excluded).
        telegram_throttled: sends answered 429, warm-up included (retry_after waited,
            then sent again).
    """

    llm_sdk_call_ms: float
    telegram_send_ms: float
    db_insert_ms: float
    redis_turn_ms: float
    samples: int
    telegram_throttled: int = 0

    @property
    def total_ms(self) -> float:
        """The floor of one message: the sum of the four figures, CPU ms."""
        return self.llm_sdk_call_ms + self.telegram_send_ms + self.db_insert_ms + self.redis_turn_ms

    def as_dict(self) -> dict[str, float | int]:
        """``llm_sdk_call``, ``telegram_send``, ``db_insert``, ``redis_turn``, ``total`` (CPU
        ms, rounded to 3 decimals), ``samples`` and ``telegram_throttled``."""
        return {
            "llm_sdk_call": round(self.llm_sdk_call_ms, 3),
            "telegram_send": round(self.telegram_send_ms, 3),
            "db_insert": round(self.db_insert_ms, 3),
            "redis_turn": round(self.redis_turn_ms, 3),
            "total": round(self.total_ms, 3),
            "samples": self.samples,
            "telegram_throttled": self.telegram_throttled,
        }


def _check(samples: int, warmup: int, concurrency: int) -> None:
    if samples < 1 or warmup < 0 or concurrency < 1:
        raise ValueError(f"need samples >= 1, warmup >= 0 and concurrency >= 1 (got "
                         f"{samples}, {warmup}, {concurrency})")


async def _lanes(op: Callable[[int], Awaitable[Any]], indices: Iterable[int],
                 concurrency: int) -> None:
    """Run ``op(i)`` for every index, ``concurrency`` at a time."""
    shared = iter(indices)

    async def lane() -> None:
        for i in shared:  # one shared iterator: each index runs once
            await op(i)

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def _cpu_ms(op: Callable[[int], Awaitable[Any]], *, samples: int, warmup: int,
                  concurrency: int) -> float:
    """Run ``op(0..warmup-1)`` one by one, then ``op(warmup..warmup+samples-1)`` with
    ``concurrency`` at a time; return the batch's process CPU per operation, ms."""
    for i in range(warmup):
        await op(i)
    t0 = time.process_time()
    await _lanes(op, range(warmup, warmup + samples), min(concurrency, samples))
    return (time.process_time() - t0) * 1000.0 / samples


async def llm_call_cpu_ms(base_url: str, *, samples: int = 200, warmup: int = WARMUP,
                          concurrency: int = 1) -> float:
    """CPU ms of one ``chat.completions.create`` with one reused ``AsyncOpenAI`` client.

    Args:
        base_url: an OpenAI-compatible base URL, e.g. ``LLMSandbox().url_for("openai") +
            "/v1"``; give it no latency (it costs wall time, not CPU).

    Raises:
        openai.OpenAIError: a failed call (no retries: ``max_retries=0``).
        FloorError: an answer without text.
        ValueError: ``samples`` < 1, ``warmup`` < 0 or ``concurrency`` < 1.
    """
    _check(samples, warmup, concurrency)
    client = openai.AsyncOpenAI(api_key="sandbox-key", base_url=base_url, max_retries=0)

    async def call(_: int) -> None:
        response = await client.chat.completions.create(
            model=LLM_MODEL, messages=LLM_PROMPT, max_tokens=LLM_MAX_TOKENS, temperature=0.9)
        if not response.choices or not response.choices[0].message.content:
            raise FloorError(f"the LLM server at {base_url} answered without text")

    try:
        return await _cpu_ms(call, samples=samples, warmup=warmup, concurrency=concurrency)
    finally:
        await client.close()


async def telegram_send_cpu_ms(
    api_url: str, bot_token: str, chat_ids: Sequence[int], *, samples: int = 200,
    warmup: int = WARMUP, concurrency: int = 1, per_second: int | None = TELEGRAM_PER_SECOND,
) -> tuple[float, int]:
    """CPU ms of one ``telegram.Bot.send_message``, round-robin over ``chat_ids``.

    Sends ``warmup + samples`` messages with one ``telegram.Bot`` (``async with``: getMe
    first), as ``bots.telegram.BotClient`` builds it (its own ``HTTPXRequest``, the shared
    TLS context). The sandbox enforces Telegram's limits by default: per bot about 30
    messages in any second, per chat 1/s after a burst of 3, per group 20 a minute. So the
    sends go in bursts of ``per_second``, one burst a second; the pause between bursts is
    not measured (sleeping through it costs CPU: a paced send measured 2.4 ms against
    1.35 ms back to back). With the default 25, give at least 25 chats, and at least
    ``(warmup + samples) / 20`` of them for the per-group minute; with a sandbox with
    relaxed ``Limits``, ``per_second=None`` sends in one go. A refused send (429) pauses
    every lane for its ``retry_after`` (no request during a penalty) and is sent again; it
    shows in the sandbox's ``stats["too_many_requests"]`` and in the returned count.

    Args:
        api_url: python-telegram-bot's ``base_url`` (``TelegramSandbox.bot_api_url``).
        bot_token: a bot registered in the sandbox and a member of every chat in
            ``chat_ids``; best a bot of its own, so the load test's per-bot counts and
            limits are not disturbed.
        chat_ids: Telegram chat ids to send to, in turn.
        per_second: sends per burst, one burst per second (None: no pauses).

    Returns:
        ``(cpu_ms_per_request, throttled)``: the measured sends' CPU divided by their
        requests (``samples`` plus the refused ones among them), and the number of 429s
        (warm-up included, as the sandbox counts them).

    Raises:
        telegram.error.TelegramError: a send failed other than by a 429 (e.g. the bot is
            not in the chat: ``Forbidden``).
        FloorError: more sends refused than ``samples``: too few chats or too strict limits.
        ValueError: no chat ids, ``per_second`` < 1, ``samples`` < 1, ``warmup`` < 0 or
            ``concurrency`` < 1.
    """
    _check(samples, warmup, concurrency)
    if not chat_ids:
        raise ValueError("telegram_chat_ids is empty: give at least one chat")
    if per_second is not None and per_second < 1:
        raise ValueError(f"per_second must be >= 1 or None (got {per_second})")
    request = HTTPXRequest(
        connection_pool_size=max(4, concurrency), connect_timeout=10.0, read_timeout=10.0,
        write_timeout=10.0, pool_timeout=10.0, httpx_kwargs={"verify": shared_ssl_context()})
    bot = telegram.Bot(bot_token, base_url=api_url, request=request,
                       get_updates_request=request)
    throttled = 0
    resume_at = 0.0  # monotonic time before which no lane sends (a 429's penalty)

    async def send(i: int) -> None:
        nonlocal throttled, resume_at
        chat_id = chat_ids[i % len(chat_ids)]
        while True:
            pause = resume_at - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            try:
                await bot.send_message(chat_id=chat_id, text=TELEGRAM_TEXT)
                return
            except tg_error.RetryAfter as exc:
                throttled += 1
                if throttled > samples:
                    raise FloorError(
                        f"{throttled} sends refused with 429 for {samples} samples: give "
                        "more chats, fewer per second, or a sandbox with relaxed limits"
                    ) from exc
                resume_at = max(resume_at, time.monotonic() + retry_after_seconds(exc))

    async def bursts(indices: range, lanes: int) -> float:
        """Send ``indices`` in bursts; returns the CPU seconds of the bursts alone."""
        size = per_second or len(indices)
        cpu, last = 0.0, -1.0
        for start in range(0, len(indices), size):
            if last >= 0:  # the last burst's sends must have left the 1 s window (+ margin)
                await asyncio.sleep(max(0.0, last + 1.0 + _BURST_MARGIN_S - time.monotonic()))
            t0 = time.process_time()
            await _lanes(send, indices[start:start + size], lanes)
            cpu += time.process_time() - t0
            # Counted from the burst's last send, not its first: a burst that took 0.8 s on
            # a busy machine left most of its sends in the window the next one would open.
            last = time.monotonic()
        return cpu

    async with bot:
        await bursts(range(warmup), 1)
        if warmup and per_second:
            await asyncio.sleep(1.0 + _BURST_MARGIN_S)
        before = throttled
        cpu = await bursts(range(warmup, warmup + samples), min(concurrency, samples))
    # The batch's CPU includes its refused requests': share it over all its requests.
    refused = throttled - before
    return cpu * 1000.0 / (samples + refused), throttled


async def db_insert_cpu_ms(database_url: str, *, samples: int = 200, warmup: int = WARMUP,
                           concurrency: int = 1) -> float:
    """CPU ms of one ``record_sent`` in its own ``async with session, session.begin()``.

    The database must be migrated. A bot and a chat of the floor's own are created first
    (a random ``floor_<hex>_bot`` username and Telegram ids in ranges the demo and the
    generated worlds do not use), both disabled and without membership, so no worker
    takes turns in them; they and their messages are deleted at the end, also on errors.

    Args:
        database_url: SQLAlchemy async URL (``sqlite+aiosqlite:///...`` or
            ``postgresql+asyncpg://...``).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached, has no schema, or
            an insert failed.
        ValueError: ``samples`` < 1, ``warmup`` < 0 or ``concurrency`` < 1.
    """
    _check(samples, warmup, concurrency)
    engine = make_engine(database_url, pool_size=max(5, concurrency))
    sessionmaker = make_sessionmaker(engine)
    tag = secrets.token_hex(4)
    base = load_persona_dir()[0]
    persona = Persona.model_validate(
        {**base.model_dump(), "name": "Floor benchmark", "username": f"floor_{tag}_bot"})
    token = f"{9_990_000_000 + secrets.randbelow(10**9)}:floor-{secrets.token_urlsafe(12)}"
    cipher = TokenCipher(Fernet.generate_key().decode())
    bot_id: int | None = None
    chat_id: int | None = None
    try:
        async with sessionmaker() as session, session.begin():
            bot = await bot_store.upsert_persona_bot(session, persona=persona, token=token,
                                                     cipher=cipher)
            await bot_store.set_enabled(session, bot_id=bot.id, enabled=False)
            chat = await chat_store.upsert_chat(
                session, telegram_chat_id=-1_009_990_000_000 - secrets.randbelow(10**9),
                title=f"floor {tag}", topics={"btc": 1.0})
            await chat_store.set_enabled(session, chat_id=chat.id, enabled=False)
            bot_id, chat_id = bot.id, chat.id
        meta_bot, meta_chat = bot_id, chat_id

        async def insert(i: int) -> None:
            async with sessionmaker() as s, s.begin():
                await message_store.record_sent(
                    s, chat_id=meta_chat, bot_id=meta_bot, turn_id=str(uuid.uuid4()),
                    telegram_message_id=i + 1, text=TELEGRAM_TEXT,
                    meta=MessageMeta(provider="openai", model=LLM_MODEL, topic="btc",
                                     sender_is_bot=True, sender_username=persona.username),
                    created_at=datetime.now(UTC))

        return await _cpu_ms(insert, samples=samples, warmup=warmup, concurrency=concurrency)
    finally:
        try:
            if bot_id is not None and chat_id is not None:
                async with sessionmaker() as session, session.begin():
                    await bulk_store.delete_bot_and_chat(session, bot_id=bot_id,
                                                         chat_id=chat_id)
        finally:
            await engine.dispose()


async def redis_turn_cpu_ms(redis_url: str, *, samples: int = 200, warmup: int = WARMUP,
                            concurrency: int = 1) -> float:
    """CPU ms of one turn's Redis calls, as a sharded worker makes them.

    Per sample: ``SharedLimiter.try_acquire`` with the default chat cap (a new bot and
    chat each time, so the slot is taken: the script's ZADD path), ``SET floor NX PX``
    and the worker's release script (``behavior_engine.membership.RELEASE_FLOOR_LUA``), on
    one client with the worker's socket timeouts. Keys live under a namespace of the floor's own,
    ``botsim-floor-<hex>``, and are deleted at the end, also on errors.

    Args:
        redis_url: ``redis://host:port/db``.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable (a PING first) or a floor call
            failed.
        FloorError: the limiter fell back to its in-process limits during the phase (a
            Redis outage), so the figure would not be Redis's.
        ValueError: ``samples`` < 1, ``warmup`` < 0 or ``concurrency`` < 1.
    """
    _check(samples, warmup, concurrency)
    client = make_redis(redis_url, role="commands")
    namespace = f"botsim-floor-{secrets.token_hex(6)}"
    try:
        await client.ping()
        limiter = SharedLimiter(client, namespace=namespace)
        release = client.register_script(RELEASE_FLOOR_LUA)
        cap = SimulationSettings().max_msgs_per_min
        ttl_ms = int(keys.FLOOR_TTL_S * 1000)

        async def turn(i: int) -> None:
            telegram_chat_id = -1_009_990_000_000 - i
            await limiter.try_acquire(i + 1, telegram_chat_id, chat_cap=cap)
            key = keys.floor_key(i + 1, namespace)
            turn_id = str(uuid.uuid4())
            if not await client.set(key, turn_id, nx=True, px=ttl_ms):
                raise FloorError(f"floor key {key} was already taken")
            await release(keys=[key], args=[turn_id])

        cpu = await _cpu_ms(turn, samples=samples, warmup=warmup, concurrency=concurrency)
        if not limiter.redis_up:
            raise FloorError("Redis failed during the floor: the limiter answered locally")
        return cpu
    finally:
        try:
            found = [k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
            for start in range(0, len(found), 500):
                await client.delete(*found[start:start + 500])
        finally:
            await client.aclose()


async def measure_floor(
    *, telegram_api_url: str, bot_token: str, telegram_chat_ids: Sequence[int],
    llm_base_url: str, database_url: str, redis_url: str | None, samples: int = 200,
    concurrency: int = 1, warmup: int = WARMUP,
    telegram_per_second: int | None = TELEGRAM_PER_SECOND,
) -> Floor:
    """Measure the four figures of :class:`Floor`, one phase after the other.

    Phases: LLM (:func:`llm_call_cpu_ms`), Telegram (:func:`telegram_send_cpu_ms`),
    database (:func:`db_insert_cpu_ms`), Redis (:func:`redis_turn_cpu_ms`; skipped,
    0.0, when ``redis_url`` is None). Each leaves nothing behind: clients closed, the
    floor's bot, chat and messages deleted, its Redis keys deleted. The Telegram sends
    stay in the sandbox's chat logs and ``stats["sent"]`` (``warmup + samples`` for the
    bot of ``bot_token``).

    Args:
        telegram_api_url: python-telegram-bot ``base_url`` of the sandbox Telegram.
        bot_token: a sandbox bot in every chat of ``telegram_chat_ids`` (see
            :func:`telegram_send_cpu_ms` for the limits and how many chats).
        telegram_chat_ids: chats the sends go to, round-robin.
        llm_base_url: OpenAI-compatible base URL (``LLMSandbox().url_for("openai") + "/v1"``).
        database_url: a migrated database (SQLAlchemy async URL).
        redis_url: Redis for the turn's shared calls, or None (solo mode).
        samples: operations measured per kind.
        concurrency: operations in flight at once within a phase (wall time only: the
            figure is CPU per operation either way).
        warmup: operations per phase before the measurement, not counted.
        telegram_per_second: Telegram sends per burst, one burst a second, the pauses
            not measured (None: no pauses, for a sandbox with relaxed limits).

    Raises:
        ValueError, FloorError, and the errors of the phases' clients (see each phase).
    """
    _check(samples, warmup, concurrency)
    llm = await llm_call_cpu_ms(llm_base_url, samples=samples, warmup=warmup,
                                concurrency=concurrency)
    send, throttled = await telegram_send_cpu_ms(
        telegram_api_url, bot_token, telegram_chat_ids, samples=samples, warmup=warmup,
        concurrency=concurrency, per_second=telegram_per_second)
    db = await db_insert_cpu_ms(database_url, samples=samples, warmup=warmup,
                                concurrency=concurrency)
    rds = 0.0
    if redis_url is not None:
        rds = await redis_turn_cpu_ms(redis_url, samples=samples, warmup=warmup,
                                      concurrency=concurrency)
    return Floor(llm_sdk_call_ms=llm, telegram_send_ms=send, db_insert_ms=db,
                 redis_turn_ms=rds, samples=samples, telegram_throttled=throttled)

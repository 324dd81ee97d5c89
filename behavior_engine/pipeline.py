"""One turn, start to end: context → read → prompt → generate and type → guards → intent →
send → commit.

The scheduler decides a :class:`~behavior_engine.turn.Turn`; :class:`TurnPipeline` carries
it out with the bot's Telegram client, Telegram's send limits, the turn records (the stores)
and the clock it is given, and says how it ended (an :class:`~behavior_engine.turn.Outcome`).
It never raises for a failure of Telegram, a provider or the bot's lease.

Pace (:mod:`behavior_engine.typist`): a reply first reads the message it answers, then
"typing…" shows while the text is generated and for the rest of the typing time its length
calls for (renewed every 4.5 s); both pauses go through the injected ``sleep``.

Exactly-once sends (``backend.stores.turns``): the turn's id exists before generation; right
before the send its intent is recorded under the bot's fencing token (a stale token writes
nothing: :class:`~backend.errors.FencedOut`), then the message is sent, then one store call
commits the message, the turn's outcome, the answered flag and the mood together. A send
whose outcome is unknown (the request may have reached Telegram) is recorded ``unknown`` and
never repeated; a send Telegram answered with an error posted nothing and may be tried again.

Telegram's answers (TELEGRAM.md, "Errors"):

=============================  =============================================================
429 ``retry_after``            the bot is blocked that long; the turn is ``rate_limited``
400 ``migrate_to_chat_id``     the chat now has a new id: stored, the send repeated there once
400 reply target not found     sent again without the reply (the thread stays in our data)
403 (kicked, not a member)     the bot leaves the chat in our data; ``failed``
401 (token refused)            the bot is disabled and let go; ``failed``
timeout / connection dropped   ``unknown`` when the request may have arrived, else ``skipped``
=============================  =============================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from backend import metrics
from backend.db.types import utcnow
from backend.errors import (
    FencedOut,
    TelegramChatMigrated,
    TelegramError,
    TelegramForbidden,
    TelegramInvalidToken,
    TelegramReplyNotFound,
    TelegramRetryAfter,
    TelegramUnavailable,
)
from backend.schemas import SimulationSettings
from behavior_engine.context import turn_context
from behavior_engine.llm.chain import ChainResult
from behavior_engine.market import MarketFeed
from behavior_engine.prompt_builder import build_request
from behavior_engine.reads import BotProfile, HistoryItem
from behavior_engine.rhythm import chatter_cap
from behavior_engine.turn import Generation, GenerationRequest, Outcome, Turn
from behavior_engine.typist import TYPING_RENEW_S, Pace, jitter_rng, keep_typing
from bots.ratelimit import TelegramLimiter
from bots.telegram import SentMessage

log = logging.getLogger("botsim.pipeline")

#: Longest a turn waits for Telegram's limits before it is given up (seconds).
MAX_LIMIT_WAIT_S = 5.0


class SendLimits(Protocol):
    """Telegram's send limits as a turn uses them (in-process, or shared in Redis)."""

    def wait_time(self, bot_id: int, chat_id: int) -> float:
        """A cheap local estimate of the seconds before ``bot_id`` may send to ``chat_id``."""

    async def try_acquire(self, bot_id: int, chat_id: int, *,
                          chat_cap: int | None = None) -> float:
        """Take a send slot (0.0) or say how long to wait in seconds (nothing taken)."""

    async def block(self, bot_id: int, seconds: float) -> None:
        """Stop ``bot_id`` for ``seconds`` after a 429."""


class LocalLimits:
    """:class:`~bots.ratelimit.TelegramLimiter` (this process only) as :class:`SendLimits`.

    The per-chat cap is then the scheduler's (from the chat's history), not a bucket.
    """

    def __init__(self, limiter: TelegramLimiter | None = None) -> None:
        self.limiter = limiter or TelegramLimiter()

    def wait_time(self, bot_id: int, chat_id: int) -> float:
        """See :meth:`TelegramLimiter.wait_time` (seconds)."""
        return self.limiter.wait_time(bot_id, chat_id)

    async def try_acquire(self, bot_id: int, chat_id: int, *,
                          chat_cap: int | None = None) -> float:
        """See :meth:`TelegramLimiter.try_acquire` (``chat_cap`` is not used here)."""
        return self.limiter.try_acquire(bot_id, chat_id)

    async def block(self, bot_id: int, seconds: float) -> None:
        """See :meth:`TelegramLimiter.block`."""
        self.limiter.block(bot_id, seconds)


class Sender(Protocol):
    """What a turn needs of a bot's Telegram client (:class:`bots.telegram.BotClient`)."""

    async def send_message(self, *, chat_id: int, text: str,
                           reply_to_message_id: int | None = None) -> SentMessage:
        """sendMessage. Raises a :class:`~backend.errors.TelegramError` subclass."""

    async def send_typing(self, *, chat_id: int) -> None:
        """sendChatAction ``typing``. Raises a :class:`~backend.errors.TelegramError`."""


class Generator(Protocol):
    """The provider chain as a turn uses it (:class:`~behavior_engine.llm.chain.ProviderChain`)."""

    async def generate(self, request: GenerationRequest, *,
                       order: list[str] | None = None) -> ChainResult:
        """The generation from the first provider that answers; never raises for them."""


class TurnReads(Protocol):
    """The cached reads a turn uses (:class:`~behavior_engine.reads.CachedReads`)."""

    async def bot(self, bot_id: int) -> BotProfile:
        """The bot's profile."""

    async def history(self, chat_id: int) -> list[HistoryItem]:
        """The chat's recent messages, oldest first."""

    async def settings(self) -> SimulationSettings:
        """The simulation settings (``max_msgs_per_min``...)."""

    async def appended(self, chat_id: int, item: HistoryItem) -> None:
        """Add a stored message to the chat's cached history."""


@dataclass(frozen=True, slots=True)
class Timing:
    """A sent turn's timing (stored in its message's meta; the load test's latencies).

    Attributes:
        sent_at: when Telegram's answer arrived (aware UTC).
        latency_s: from the turn's decision to Telegram's answer, seconds.
        llm_s: of which generating the text; wait_s: of which waiting for a Telegram limit.
        read_s: of which reading the replied message (a pause, seconds).
        typing_s: of which "typing…" showed: ``llm_s`` plus the typing pause after it.
    """

    sent_at: datetime
    latency_s: float
    llm_s: float
    wait_s: float
    read_s: float = 0.0
    typing_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Sent:
    """What a sent turn commits (:meth:`TurnRecords.commit_sent`).

    Attributes:
        turn: the turn; bot: the speaking bot; message: Telegram's answer.
        generation: the text and the provider that wrote it.
        reply_to: the Telegram id the message replies to in our data (kept even when
            Telegram sent it without the reply), or None.
        mood: the bot's mood after the turn, -1.0–1.0; timing: see :class:`Timing`.
    """

    turn: Turn
    bot: BotProfile
    message: SentMessage
    generation: Generation
    reply_to: int | None
    mood: float
    timing: Timing


class TurnRecords(Protocol):
    """The writes of one turn (implemented over ``backend.stores`` by
    :class:`behavior_engine.records.StoreTurnRecords`)."""

    async def record_intent(self, turn: Turn, *, token: int, worker: str) -> bool:
        """Record the intent to send under ``token``. False: the turn id was already acted
        on. Raises :class:`~backend.errors.FencedOut` when ``token`` is stale."""

    async def finish(self, turn: Turn, status: str, error: str | None = None) -> None:
        """Set an outcome other than ``sent`` (``retry``, ``failed``, ``unknown``)."""

    async def commit_sent(self, sent: Sent) -> HistoryItem:
        """Commit a sent turn (message, outcome, answered flag, mood); returns the message
        as the chat's history shows it."""

    async def leave_chat(self, turn: Turn, *, status: str, reason: str) -> None:
        """The bot was removed from the turn's chat (403): its membership there becomes
        ``status`` (``kicked`` or ``left``) and it stops posting there."""

    async def disable_bot(self, bot_id: int) -> None:
        """Telegram refused the bot's token (401): disable the bot."""

    async def migrate_chat(self, turn: Turn, new_telegram_chat_id: int) -> bool:
        """The turn's chat has a new Telegram id; False when it could not be stored."""


class BotHolder(Protocol):
    """What the pipeline asks of whoever holds the bots (the worker)."""

    def client(self, bot_id: int) -> Sender | None:
        """The bot's connected Telegram client, or None."""

    def token(self, bot_id: int) -> int | None:
        """The bot's fencing token while held, else None."""

    def valid(self, bot_id: int) -> bool:
        """True while this process may act for the bot (its lease is valid)."""

    async def let_go(self, bot_id: int) -> None:
        """Stop driving the bot here (lease moved, or token refused)."""


class TurnPipeline:
    """Carries out decided turns (see the module docstring for the steps and errors).

    Args:
        chain: the provider chain (offline generator last).
        limits: Telegram's send limits.
        records: the turn's writes (the stores).
        reads: the cached reads (bot profile, chat history, settings).
        market: the market feed (prices → the persona's P&L and mood).
        holder: the bots' clients, fencing tokens and leases.
        worker_id: recorded with each intent.
        seed: the simulation's seed (deterministic context).
        clock: aware UTC now.
        stats: counters updated in place: ``fallbacks``, ``fenced``.
        on_sent: called with (bot id, aware UTC time) after each commit (hourly budgets).
        sleep: awaited to wait for a limit, to read and to type, seconds (injectable for
            tests: a fake clock).
    """

    def __init__(
        self, *, chain: Generator, limits: SendLimits, records: TurnRecords, reads: TurnReads,
        market: MarketFeed, holder: BotHolder, worker_id: str, seed: int,
        clock: Callable[[], datetime] = utcnow, stats: Counter[str] | None = None,
        on_sent: Callable[[int, datetime], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.chain = chain
        self.limits = limits
        self.records = records
        self.reads = reads
        self.market = market
        self.holder = holder
        self.worker_id = worker_id
        self.seed = seed
        self.clock = clock
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.on_sent = on_sent
        self._sleep = sleep

    async def run(self, turn: Turn, *, decided: float | None = None) -> Outcome:
        """Carry out ``turn``; ``decided`` is ``time.perf_counter()`` at its decision (for
        the latency figures; default: now). Returns how it ended; raises only when
        cancelled (a send in flight is then recorded ``unknown``)."""
        decided = decided if decided is not None else time.perf_counter()
        client = self.holder.client(turn.bot_id)
        token = self.holder.token(turn.bot_id)
        if client is None or token is None or not self.holder.valid(turn.bot_id):
            return Outcome(turn=turn, status="skipped", error="bot not held")
        t0 = time.perf_counter()
        bot = await self.reads.bot(turn.bot_id)
        ctx = turn_context(
            bot, await self.reads.history(turn.chat_id), self.market.snapshot(self.clock()),
            turn_id=turn.turn_id, topic=turn.topic, chat_id=turn.chat_id, seed=self.seed,
            reply_to=turn.reply_to,
        )
        request = build_request(ctx)
        metrics.PROMPT_ASSEMBLY.observe(time.perf_counter() - t0)
        sim = await self.reads.settings()
        pace = Pace.of(sim, bot.persona)
        read_s = pace.reading_s(turn.reply_to.text) if turn.reply_to is not None else 0.0
        if read_s > 0:  # a person reads the message before typing the answer
            await self._sleep(read_s)
        generation, llm_s, typing_s = await self._generate(turn, client, request,
                                                           ctx.profile.llm_providers, pace)
        await self._until_due(turn)  # written ahead of its slot: sent on the chat's rhythm
        # Guards: Telegram's limits (per chat, per group, per bot) and the chat's cap.
        # An answer to a human may use the whole cap; chatter only what the human-reply
        # reserve leaves (issue 14), here too, where the cap holds across workers.
        cap = sim.max_msgs_per_min if turn.reply_message_id is not None else chatter_cap(sim)
        waited_s, refused = await self._guard(turn, cap)
        if refused is not None:
            return refused
        try:
            fresh = await self.records.record_intent(turn, token=token, worker=self.worker_id)
        except FencedOut as exc:
            log.warning("bot %s: %s; this worker stops driving it", turn.bot_id, exc)
            metrics.FENCED_OUT.inc()
            self.stats["fenced"] += 1
            await self.holder.let_go(turn.bot_id)
            return Outcome(turn=turn, status="skipped", error=str(exc))
        if not fresh:
            return Outcome(turn=turn, status="duplicate", error="turn already acted on")
        if not self.holder.valid(turn.bot_id):  # paused or cut off past the lease's deadline
            await self.records.finish(turn, "failed", "lease expired before the send")
            self.stats["fenced"] += 1
            return Outcome(turn=turn, status="skipped", error="lease expired before the send")
        if self.holder.client(turn.bot_id) is not client:
            # The bot was let go (and perhaps taken on again) while this turn read, typed or
            # waited: its client is closed, so a send would fail with an unknown outcome.
            await self.records.finish(turn, "failed", "bot let go before the send")
            self.stats["fenced"] += 1
            return Outcome(turn=turn, status="skipped", error="bot let go before the send")
        reply_id = turn.reply_to.telegram_message_id if turn.reply_to else None
        sent_or_outcome = await self._send(turn, client, generation.text, reply_id)
        if isinstance(sent_or_outcome, Outcome):
            return sent_or_outcome
        timing = Timing(sent_at=utcnow(), latency_s=time.perf_counter() - decided,
                        llm_s=llm_s, wait_s=waited_s, read_s=read_s, typing_s=typing_s)
        metrics.TURN_LATENCY.observe(timing.latency_s)
        # the engine's own part: neither generation nor the deliberate reading/typing pauses
        metrics.TURN_OVERHEAD.observe(max(timing.latency_s - read_s - typing_s, 0.0))
        commit = asyncio.ensure_future(self.records.commit_sent(Sent(
            turn=turn, bot=bot, message=sent_or_outcome, generation=generation,
            reply_to=reply_id, mood=ctx.mood, timing=timing)))
        try:
            item = await asyncio.shield(commit)
        except asyncio.CancelledError:
            # Telegram has the message: record it before giving in to the cancellation
            # (a worker stopping), or an ``intent`` would be left for a message that exists.
            with contextlib.suppress(Exception):
                await commit
            raise
        if self.on_sent is not None:
            self.on_sent(turn.bot_id, self.clock())
        await self.reads.appended(turn.chat_id, item)
        return Outcome(turn=turn, status="sent", telegram_message_id=sent_or_outcome.message_id)

    async def _generate(self, turn: Turn, client: Sender, request: GenerationRequest,
                        order: list[str] | None,
                        pace: Pace) -> tuple[Generation, float, float]:
        """The text, the seconds spent generating it, and the seconds "typing…" showed.

        A turn due now (no ``not_before``, or one within ``typing_cap_s``): "typing…" shows
        while the text is generated (renewed every
        :data:`~behavior_engine.typist.TYPING_RENEW_S` seconds of the provider's wall-clock
        time), then for what is left of the typing time the text's length calls for
        (:meth:`Pace.typing_s`; the generation counts toward it, never added twice).

        A slot's turn decided ahead of its due time (:func:`~behavior_engine.rhythm.slot_lead`)
        is written first, out of sight; the bot then waits and types for the whole typing
        time so that "typing…" ends at the due time (issue 14: sends keep the rhythm's
        gaps instead of trailing them by the typing time)."""
        chat_id = turn.telegram_chat_id
        early = turn.not_before is not None and (
            turn.not_before - self.clock()).total_seconds() > pace.typing_cap_s
        typing = renew = None
        if not early:
            typing = asyncio.create_task(client.send_typing(chat_id=chat_id))
            renew = asyncio.create_task(self._renew_typing(client, chat_id))
        t_llm = time.perf_counter()
        try:
            result = await self.chain.generate(request, order=order)
        finally:
            llm_s = time.perf_counter() - t_llm
            if renew is not None and typing is not None:
                renew.cancel()
                await asyncio.wait({renew})
                try:
                    await typing
                except TelegramError as exc:  # decoration: never worth a lost turn
                    log.debug("bot %s: typing not shown: %s", turn.bot_id, exc)
        if result.skipped:
            self.stats["fallbacks"] += 1
        text = result.generation.text
        typing_s = pace.typing_s(text, jitter_rng(self.seed, turn.turn_id))
        shown = 0.0 if early else llm_s
        pause = typing_s - shown
        if early and turn.not_before is not None:
            idle = (turn.not_before - self.clock()).total_seconds() - max(pause, 0.0)
            if idle > 0:  # not typing yet: start so as to finish at the due time
                await self._sleep(idle)
        if pause > 0:
            await keep_typing(lambda: client.send_typing(chat_id=chat_id), self._sleep, pause,
                              shown_ago=None if early else llm_s)
        return result.generation, llm_s, shown + max(pause, 0.0)

    async def _renew_typing(self, client: Sender, chat_id: int) -> None:
        """Renew "typing…" every :data:`TYPING_RENEW_S` seconds (wall clock: the provider's
        own time) until cancelled."""
        while True:
            await asyncio.sleep(TYPING_RENEW_S)
            try:
                await client.send_typing(chat_id=chat_id)
            except TelegramError as exc:  # decoration: never worth a lost turn
                log.debug("chat %s: typing not renewed: %s", chat_id, exc)

    async def _until_due(self, turn: Turn) -> None:
        """Wait until the turn's due time (``Turn.not_before``) when it is still ahead: the
        send follows the chat's rhythm, not the worker's tick (issue 14)."""
        if turn.not_before is None:
            return
        ahead = (turn.not_before - self.clock()).total_seconds()
        if ahead > 0:
            await self._sleep(ahead)

    async def _guard(self, turn: Turn, chat_cap: int) -> tuple[float, Outcome | None]:
        """Take a send slot, waiting at most :data:`MAX_LIMIT_WAIT_S`. Returns the seconds
        waited and, when no slot came, the ``skipped`` outcome."""
        wait = await self.limits.try_acquire(turn.bot_id, turn.telegram_chat_id,
                                             chat_cap=chat_cap)
        if wait <= 0:
            return 0.0, None
        if wait > MAX_LIMIT_WAIT_S:
            return 0.0, Outcome(turn=turn, status="skipped", error="Telegram limit",
                                retry_after=wait)
        t_wait = time.perf_counter()
        await self._sleep(wait)
        waited = time.perf_counter() - t_wait
        if await self.limits.try_acquire(turn.bot_id, turn.telegram_chat_id,
                                         chat_cap=chat_cap) > 0:
            return waited, Outcome(turn=turn, status="skipped", error="Telegram limit")
        return waited, None

    async def _send(self, turn: Turn, client: Sender, text: str,
                    reply_id: int | None) -> SentMessage | Outcome:
        """Send after the intent; every Telegram answer but success ends in an outcome
        recorded here. An error answer means nothing was posted, so the two answers that
        name a fix (the chat's new id, the reply target gone) are followed once."""
        chat_id, reply = turn.telegram_chat_id, reply_id
        for _attempt in range(3):
            try:
                # allow_sending_without_reply: a vanished reply target does not lose the turn.
                return await client.send_message(chat_id=chat_id, text=text,
                                                 reply_to_message_id=reply)
            except TelegramChatMigrated as exc:
                if chat_id == exc.new_chat_id or not await self.records.migrate_chat(
                        turn, exc.new_chat_id):
                    return await self._failed(turn, exc)
                log.warning("chat %s migrated to %s; sent there", chat_id, exc.new_chat_id)
                chat_id = exc.new_chat_id
            except TelegramReplyNotFound as exc:
                if reply is None:
                    return await self._failed(turn, exc)
                reply = None
            except TelegramRetryAfter as exc:
                await self.limits.block(turn.bot_id, exc.retry_after)
                await self.records.finish(turn, "retry", str(exc))
                log.warning("bot %s: 429, waits %.0f s", turn.bot_id, exc.retry_after)
                return Outcome(turn=turn, status="rate_limited", error=str(exc),
                               retry_after=exc.retry_after)
            except TelegramUnavailable as exc:
                if exc.delivered_unknown:
                    await self.records.finish(turn, "unknown", str(exc))
                    metrics.SEND_UNKNOWN.labels(reason="no_answer").inc()
                    log.error("turn %s: send outcome unknown (%s); not repeated",
                              turn.turn_id, exc)
                    return Outcome(turn=turn, status="unknown", error=str(exc))
                await self.records.finish(turn, "retry", str(exc))
                return Outcome(turn=turn, status="skipped", error=str(exc))
            except TelegramForbidden as exc:
                log.error("bot %s removed from chat %s: %s", turn.bot_id, chat_id, exc)
                status = "kicked" if "kicked" in str(exc).lower() else "left"
                await self.records.leave_chat(turn, status=status, reason=f"403 {exc}")
                return await self._failed(turn, exc)
            except TelegramInvalidToken as exc:
                log.error("bot %s disabled: %s", turn.bot_id, exc)
                await self.records.disable_bot(turn.bot_id)
                await self.holder.let_go(turn.bot_id)
                return await self._failed(turn, exc)
            except TelegramError as exc:
                return await self._failed(turn, exc)
            except BaseException as exc:  # cancelled mid-send: the request may have gone out
                with contextlib.suppress(Exception):
                    await self.records.finish(turn, "unknown", repr(exc))
                metrics.SEND_UNKNOWN.labels(reason="interrupted").inc()
                raise
        return await self._failed(turn, TelegramError("send refused three times"))

    async def _failed(self, turn: Turn, exc: TelegramError) -> Outcome:
        await self.records.finish(turn, "failed", str(exc))
        return Outcome(turn=turn, status="failed", error=str(exc))


def message_time(sent: SentMessage) -> datetime:
    """Telegram's time of a sent message as aware UTC (a naive date is UTC)."""
    return sent.date if sent.date.tzinfo else sent.date.replace(tzinfo=UTC)

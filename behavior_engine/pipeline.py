"""One turn, start to end: context → read → prompt → generate and type → guards → intent →
send → commit.

The scheduler decides a :class:`~behavior_engine.turn.Turn`; :class:`TurnPipeline` carries
it out with the bot's Telegram client, Telegram's send limits, the turn records (the stores)
and the clock it is given, and says how it ended (an :class:`~behavior_engine.turn.Outcome`).
It never raises for a failure of Telegram, a provider or the bot's lease.

The near-duplicate guard (:mod:`behavior_engine.repeats`, issue 16): a generated text that
repeats the chat's history or the bot's own recent texts (exactly, or a 5-gram Jaccard ≥ 0.5,
as ``botsim realism`` counts) is asked for again with a hint, at most twice; chatter that still
repeats is dropped (``skipped``, nothing recorded), an answer to a person is sent in its least
repeating draft.

Pace (:mod:`behavior_engine.typist`): a reply first reads the message it answers, then
"typing…" shows while the text is generated and for the rest of the typing time its length
calls for (renewed every 4.5 s); both pauses go through the injected ``sleep``.

Exactly-once sends (``backend.stores.turns``): the turn's id exists before generation; right
before the send its intent is recorded under the bot's fencing token (a stale token writes
nothing: :class:`~backend.errors.FencedOut`), then the message is sent, then one store call
commits the message, the turn's outcome, the answered flag and the mood together. A send
whose outcome is unknown (the request may have reached Telegram) is recorded ``unknown`` and
never repeated; a send Telegram answered with an error posted nothing and may be tried again.

Telegram's answers (TELEGRAM.md, "Errors"; the operator is told by a metric and an audit
entry, ``backend.stores.audit``'s table, where the table says so):

=============================  =============================================================
429 ``retry_after``            the bot is blocked that long; the turn is ``rate_limited``
                               (``retry``: nothing was posted)
400 ``migrate_to_chat_id``     the chat's Telegram id becomes the new one in our data
                               (``chats.map_migration``: the old id kept, the old messages'
                               ids negated), the send repeated there once, without a reply
                               (the old group's ids mean nothing in the supergroup)
400 reply target not found     sent again without the reply; stored with no ``reply_to``, as
                               Telegram shows it (likewise a reply Telegram dropped silently,
                               ``allow_sending_without_reply``); the human message is marked
                               answered all the same and the turn record keeps what it
                               answered (``turns.reply_to_message_id``)
403 (kicked, not a member)     the bot's membership there becomes ``kicked`` or ``left``: no
                               more turns there, its configuration kept; ``failed``, never
                               repeated; metric ``botsim_bot_membership_lost_total{reason}``,
                               audit ``bot.membership_lost``
401 (token refused)            the bot is disabled and let go; ``failed``; metric
                               ``botsim_bots_disabled_total{reason="token_refused"}``, audit
                               ``bot.disabled``
timeout / connection dropped   ``unknown`` when the request may have arrived (never
                               repeated), else ``skipped`` (``retry``)
other error answers            ``failed``
=============================  =============================================================

The text goes as plain text (no ``parse_mode``, :meth:`bots.telegram.BotClient.send_message`):
``<b>``, ``*_[]()`` or ``1.5`` arrive verbatim and can never fail to parse.

A text over Telegram's limit (Bot API, sendMessage: "Text of the message to be sent, 1-4096
characters after entities parsing") is sent as several messages (:func:`split_text`, UTF-16
code units, at most :data:`MAX_PARTS`), in order, each taking its own send slot: one intent
for the turn, each part stored once right after Telegram accepted it (``backend.stores.turns``
docstring: part 1 carries the turn id, part k its derived id). The error answers above end a
later part the same way (a 403 still leaves the chat, a 401 still disables the bot), but the
turn stays ``sent`` with what was sent stored; the outcome's ``error`` and ``extra``
(``parts``, ``parts_sent``) and the turn record's ``error`` say which part was not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from opentelemetry.trace import Span, SpanKind

from backend import logcontext, metrics, tracing
from backend.db.session import database_unreachable
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
from backend.stores.audit import redact_tokens
from backend.stores.turns import MAX_PARTS
from behavior_engine.agreement import AgreementWatch, adds_agreement
from behavior_engine.consistency import check_consistency, expected_direction
from behavior_engine.context import turn_context
from behavior_engine.events import EventBook
from behavior_engine.llm.chain import ChainResult
from behavior_engine.market import MarketFeed
from behavior_engine.prompt_builder import build_request
from behavior_engine.reads import BotProfile, HistoryItem
from behavior_engine.recall import MemoryKeeper, recall_query
from behavior_engine.repeats import (
    CHAT_RECENT,
    MAX_REGENERATIONS,
    OWN_RECENT,
    RecentTexts,
    check_repeat,
    repeat_hint,
)
from behavior_engine.rhythm import chatter_cap
from behavior_engine.safety import Rule, check_safety, load_rules
from behavior_engine.stances import BotViews, StanceBook
from behavior_engine.topics import detect_topic
from behavior_engine.turn import Generation, GenerationRequest, Outcome, Turn, TurnContext
from behavior_engine.typist import TYPING_RENEW_S, Pace, jitter_rng, keep_typing
from bots.ratelimit import TelegramLimiter
from bots.telegram import SentMessage

log = logging.getLogger("botsim.pipeline")
#: What a draft that adds agreement, in a chat drifting into it, is asked again with
#: when the bot's view gives it no particular reason to differ.
AGREEMENT_HINT = ("The chat has been agreeing too much lately. Do not just agree: add a doubt, "
                  "a risk or another angle of your own.")

#: Longest a turn waits for Telegram's limits before it is given up (seconds).
MAX_LIMIT_WAIT_S = 5.0

#: Longest text of one message, UTF-16 code units. Bot API, sendMessage: "Text of the
#: message to be sent, 1-4096 characters after entities parsing"; the Bot API counts its
#: entities' offsets and lengths in UTF-16 code units (MessageEntity), and clients that split
#: for Telegram count the limit in them too (NousResearch/hermes-agent#8725, "Telegram's
#: 4096 message length limit is measured in UTF-16 code units"). A live probe found 4,096
#: astral characters (8,192 units) accepted (FerroxLabs/wayland#934): counting UTF-16 units
#: is the safe side of both readings, as a text within 4,096 units has at most 4,096
#: characters.
TEXT_LIMIT = 4096

#: Where a sentence ends: ``.``, ``!``, ``?`` or ``…`` (runs of them) before whitespace, or
#: a line break (``1.5`` or ``a.b`` is no sentence end).
_SENTENCE_END = re.compile(r"[.!?…]+(?=\s)|\n")


def utf16_len(text: str) -> int:
    """``text``'s length in UTF-16 code units (a character outside the BMP, e.g. most emoji,
    counts 2): how Telegram measures text (:data:`TEXT_LIMIT`)."""
    return len(text.encode("utf-16-le")) // 2


def _prefix_within(text: str, limit: int) -> int:
    """The most characters of ``text`` whose UTF-16 length is at most ``limit``."""
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Cut ``text`` into parts of at most ``limit`` UTF-16 code units each, in order.

    Each cut is at the last sentence end (``.``, ``!``, ``?``, ``…`` before whitespace, or a
    line break) within the limit, else at the last space, else hard (between two characters,
    never inside a surrogate pair). A sentence end or a space in the first half of the
    window is used only when no cut of the other kind lies in its second half, so that a
    part is not needlessly short. Whitespace at the cuts is dropped (Telegram trims a
    message's text) and blank parts are left out.

    Args:
        text: the text, any length.
        limit: the longest part, UTF-16 code units, >= 2 (default :data:`TEXT_LIMIT`).

    Returns:
        ``[text]`` when it fits (or is blank); else the parts, each 1-``limit`` units.

    Raises:
        ValueError: ``limit`` < 2 (a surrogate pair must fit).
    """
    if limit < 2:
        raise ValueError(f"limit must be >= 2 UTF-16 code units, got {limit}")
    if utf16_len(text) <= limit or not text.strip():
        return [text]
    parts: list[str] = []
    rest = text.strip()
    while utf16_len(rest) > limit:
        window = rest[:_prefix_within(rest, limit)]
        ends = [m.end() for m in _SENTENCE_END.finditer(window)]
        spaces = [i for i, ch in enumerate(window) if ch.isspace() and i > 0]
        half = len(window) // 2
        late_end = next((e for e in reversed(ends) if e >= half), None)
        late_space = next((i for i in reversed(spaces) if i >= half), None)
        cut = (late_end or late_space or (ends[-1] if ends else None)
               or (spaces[-1] if spaces else None) or len(window))
        part = rest[:cut].strip()
        if part:
            parts.append(part)
        rest = rest[cut:].strip()
    if rest:
        parts.append(rest)
    return parts


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
                           reply_to_message_id: int | None = None,
                           message_thread_id: int | None = None) -> SentMessage:
        """sendMessage (``message_thread_id``: inside that forum topic). Raises a
        :class:`~backend.errors.TelegramError` subclass."""

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
        due_s: of which waiting for the turn's due time in the chat's rhythm.
        pause_s: of which typing after the text was ready (``typing_s`` less what showed
            while it was generated; all of it for a slot's turn written out of sight).
    """

    sent_at: datetime
    latency_s: float
    llm_s: float
    wait_s: float
    read_s: float = 0.0
    typing_s: float = 0.0
    due_s: float = 0.0
    pause_s: float = 0.0

    @property
    def overhead_s(self) -> float:
        """The engine's own part of the latency: less the text generation and the deliberate
        pauses (reading, typing after the text was ready, the rhythm's due time);
        Telegram-limit waits stay in."""
        return max(self.latency_s - self.llm_s - self.read_s - self.pause_s - self.due_s, 0.0)


@dataclass(frozen=True, slots=True)
class Sent:
    """What a sent message of a turn commits (:meth:`TurnRecords.commit_sent` for part 1,
    :meth:`TurnRecords.commit_part` for the later parts of a split text).

    Attributes:
        turn: the turn; bot: the speaking bot; message: Telegram's answer.
        generation: the text and the provider that wrote it.
        reply_to: the Telegram id the message replies to as Telegram shows it, or None
            (also when Telegram sent it without the reply: the target was deleted, or the
            chat migrated; the turn still answers ``turn.reply_message_id``).
        mood: the bot's mood after the turn, -1.0–1.0; timing: see :class:`Timing`.
        part / parts: which part of the generation's text this message is, 1-based, of how
            many (1 / 1: the text sent whole).
        text: this message's text: the part (None: the generation's whole text).
        views: the bot's views when it wrote it, topic → view (None: not known).
        event_id: the world event it reacted to (the turn's news was about its topic).
    """

    turn: Turn
    bot: BotProfile
    message: SentMessage
    generation: Generation
    reply_to: int | None
    mood: float
    timing: Timing
    part: int = 1
    parts: int = 1
    text: str | None = None
    views: dict[str, str] | None = None
    event_id: int | None = None

    @property
    def sent_text(self) -> str:
        """The text of this message (the part, or the whole generation)."""
        return self.generation.text if self.text is None else self.text


@dataclass(frozen=True, slots=True)
class _Refused:
    """A send Telegram did not take (or whose fate is unknown); its side effects (block,
    leave, disable, let go) are done. ``record``: the turn record's outcome for it."""

    status: Literal["rate_limited", "failed", "skipped", "unknown"]
    record: str
    error: str
    retry_after: float | None = None


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

    async def commit_part(self, sent: Sent) -> HistoryItem:
        """Store part ``sent.part`` >= 2 of a sent turn's split text; returns the message
        as the chat's history shows it."""

    async def note_partial(self, turn: Turn, error: str) -> None:
        """Say on the sent turn's record that a later part of its text was not sent."""

    async def leave_chat(self, turn: Turn, *, status: str, reason: str) -> None:
        """The bot was removed from the turn's chat (403): its membership there becomes
        ``status`` (``kicked`` or ``left``) and it stops posting there; ``reason`` carries
        Telegram's description (for the operator: metric and audit entry)."""

    async def disable_bot(self, bot_id: int, *, description: str = "") -> None:
        """Telegram refused the bot's token (401): disable the bot and tell the operator
        (``description``: Telegram's, never the token)."""

    async def safety_blocked(self, turn: Turn, *, rule: str, part: str, text: str) -> None:
        """A draft broke content-safety ``rule`` (``part``: what broke it) and was not sent:
        tell the operator (the audit log)."""

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
        safety_rules: the content-safety rules (default: :func:`~behavior_engine.safety.
            load_rules`'s Turkish and English defaults).
        events: the world events (news in prompts, shocks in ``market``; None: none).
        stance_book: the bots' views as the market and events move them (default: one over
            ``market`` and ``events``).
        memory: the bots' long-term memory (default: a
            :class:`~behavior_engine.recall.MemoryKeeper` without a database: fed by the
            turns' history alone).
    """

    def __init__(
        self, *, chain: Generator, limits: SendLimits, records: TurnRecords, reads: TurnReads,
        market: MarketFeed, holder: BotHolder, worker_id: str, seed: int,
        clock: Callable[[], datetime] = utcnow, stats: Counter[str] | None = None,
        on_sent: Callable[[int, datetime], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        safety_rules: tuple[Rule, ...] | None = None,
        events: EventBook | None = None, stance_book: StanceBook | None = None,
        memory: MemoryKeeper | None = None,
    ) -> None:
        self.chain = chain
        self.memory = memory or MemoryKeeper()
        self.agreement = AgreementWatch()
        self.events = events
        self.stance_book = stance_book or StanceBook(market, events)
        #: bot → topic → (direction it last expressed, its view then): a neutral view's
        #: last said direction (the stance guard), forgotten when the view changes
        self.expressed: dict[int, dict[str, tuple[str, str]]] = {}
        #: bot → changes of view already counted (``botsim_stance_changes_total``)
        self._changes_seen: dict[int, int] = {}
        self.safety_rules = load_rules() if safety_rules is None else safety_rules
        for rule in self.safety_rules:  # each rule's series exists before its first block
            metrics.SAFETY_BLOCKS.labels(rule=rule.name)
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
        self.own_recent = RecentTexts(OWN_RECENT)
        #: What the guards did in this worker, ``"<guard>:<outcome or rule>"`` → count (its
        #: heartbeat carries it to the panel; Prometheus has the same).
        self.guard_counts: Counter[str] = Counter()
        self.chat_recent = RecentTexts(CHAT_RECENT)
        #: Texts of turns past the last repeat check and not yet ended, per chat: a second
        #: turn of the chat checked meanwhile sees them (two turns written at once with the
        #: same text both passed the check and both posted: test_markup_characters, ci44).
        self._saying: dict[int, list[str]] = {}

    @logcontext.scoped
    async def run(self, turn: Turn, *, decided: float | None = None) -> Outcome:
        """Carry out ``turn``; ``decided`` is ``time.perf_counter()`` at its decision (for
        the latency figures; default: now). Returns how it ended; raises only when
        cancelled (a send in flight is then recorded ``unknown``). Its log lines carry the
        turn's, chat's, bot's and worker's ids (:mod:`backend.logcontext`)."""
        logcontext.update(turn_id=turn.turn_id, chat_id=turn.chat_id, bot_id=turn.bot_id,
                          worker_id=self.worker_id)
        carried = turn.traceparent is not None
        with tracing.span(
                "turn", context=tracing.parent_of(turn.traceparent),
                kind=SpanKind.CONSUMER if carried else SpanKind.INTERNAL,
                attributes=_turn_attributes(turn, self.worker_id)) as span:
            claimed: list[str] = []
            try:
                outcome = await self._run(turn, decided, claimed)
            finally:
                self._unclaim(turn.chat_id, claimed)
            _traced_outcome(span, outcome.status)
            return outcome

    def _unclaim(self, chat_id: int, claimed: list[str]) -> None:
        """Forget the texts a turn claimed in :attr:`_saying` (its turn has ended; a sent
        text is in :attr:`chat_recent` and the chat's history by now)."""
        saying = self._saying.get(chat_id)
        for text in claimed:
            if saying is not None and text in saying:
                saying.remove(text)
        if saying == []:
            del self._saying[chat_id]

    async def _run(self, turn: Turn, decided: float | None, claimed: list[str]) -> Outcome:
        """:meth:`run`'s body, inside the turn's span: a child of the human message's trace
        (``turn.traceparent``) or a root span (:mod:`backend.tracing`). The text it goes on
        to send once the repeat guard passed it is appended to ``claimed`` (and
        :attr:`_saying`); :meth:`run` releases it when the turn ends."""
        decided = decided if decided is not None else time.perf_counter()
        client = self.holder.client(turn.bot_id)
        token = self.holder.token(turn.bot_id)
        if client is None or token is None or not self.holder.valid(turn.bot_id):
            return Outcome(turn=turn, status="skipped", error="bot not held")
        prompt_span = tracing.start("prompt")  # ended once the request is built
        t0 = time.perf_counter()
        bot = await self.reads.bot(turn.bot_id)
        history = await self.reads.history(turn.chat_id)
        now = self.clock()
        snapshot = self.market.snapshot(now)
        views = self.stance_book.views(bot.stances, now, bot.persona.language)
        self._count_changes(turn.bot_id, views)
        await self.memory.prepare(bot, turn.chat_id, history, now)
        self.agreement.observe(turn.chat_id, history)
        query = recall_query(turn.topic, turn.reply_to.text if turn.reply_to else None,
                             history)
        ctx = turn_context(
            bot, history, snapshot,
            turn_id=turn.turn_id, topic=turn.topic, chat_id=turn.chat_id, seed=self.seed,
            reply_to=turn.reply_to, views=views,
            news=self.events.recent(now) if self.events is not None else (),
            memories=self.memory.recall(bot, query, now),
            contrast=self.agreement.line(
                turn.chat_id, topic=turn.topic, stances=views.stances, history=history,
                reply_to_text=turn.reply_to.text if turn.reply_to else None),
        )
        request = build_request(ctx)
        metrics.PROMPT_ASSEMBLY.observe(time.perf_counter() - t0)
        prompt_span.set_attribute("botsim.prompt.messages", len(request.messages))
        prompt_span.end()
        sim = await self.reads.settings()
        pace = Pace.of(sim, bot.persona)
        read_s = pace.reading_s(turn.reply_to.text) if turn.reply_to is not None else 0.0
        if read_s > 0:  # a person reads the message before typing the answer
            await self._sleep(read_s)
        generation, llm_s, typing_s, idle_s, pause_s = await self._generate(
            turn, client, request, ctx.profile.llm_providers, pace)
        regenerated: list[float] = []  # seconds of each regeneration the guards asked for
        vetted = await self._vet(turn, ctx, request, generation, history, regenerated)
        llm_s += sum(regenerated)  # generation time too: not the engine's overhead
        if vetted is None:
            return Outcome(turn=turn, status="skipped", error="guards: dropped")
        generation = vetted
        # written ahead of its slot: sent on the chat's rhythm (the wait before typing too)
        due_s = idle_s + await self._until_due(turn)
        if (turn.reply_to is None or not turn.reply_to.is_human) and check_repeat(
                generation.text, await self._said_since(turn, history)
        ).repeats:  # another turn of the chat said it while this one was written
            self._count("repeat", "dropped")
            return Outcome(turn=turn, status="skipped", error="guards: dropped")
        # No await since the check: the chat's other turns see this text from now on.
        self._saying.setdefault(turn.chat_id, []).append(generation.text)
        claimed.append(generation.text)
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
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            # Nothing written, nothing sent: the turn may be planned again (an answer to a
            # person is: the person still waits). botsim chaos, PostgreSQL restarted.
            log.warning("bot %s: database unreachable before the send (%s); nothing sent",
                        turn.bot_id, type(exc).__name__)
            return Outcome(turn=turn, status="skipped",
                           error=f"database unreachable before the send: {type(exc).__name__}")
        if not fresh:
            return Outcome(turn=turn, status="duplicate", error="turn already acted on")
        # Stopped before the send, the turn is recorded ``retry``: its non-delivery is
        # certain, so its next holder may act on it (``failed`` would make the same turn id,
        # an answer to a person, a duplicate for good: botsim chaos, a worker cut off from
        # Redis past its lease left a person unanswered).
        if not self.holder.valid(turn.bot_id):  # paused or cut off past the lease's deadline
            await self.records.finish(turn, "retry", "lease expired before the send")
            self.stats["fenced"] += 1
            return Outcome(turn=turn, status="skipped", error="lease expired before the send")
        if self.holder.client(turn.bot_id) is not client:
            # The bot was let go (and perhaps taken on again) while this turn read, typed or
            # waited: its client is closed, so a send would fail with an unknown outcome.
            await self.records.finish(turn, "retry", "bot let go before the send")
            self.stats["fenced"] += 1
            return Outcome(turn=turn, status="skipped", error="bot let go before the send")
        reply_id = turn.reply_to.telegram_message_id if turn.reply_to else None
        parts = split_text(generation.text)
        dropped = len(parts) > MAX_PARTS
        parts = parts[:MAX_PARTS]
        with tracing.span("send", kind=SpanKind.CLIENT,
                          attributes={"botsim.parts": len(parts)}) as send_span:
            posted = await self._post(turn, client, turn.telegram_chat_id, parts[0], reply_id)
            _traced_outcome(send_span, posted.status if isinstance(posted, _Refused) else "sent")
        if isinstance(posted, _Refused):
            with tracing.span("commit"):
                await self.records.finish(turn, posted.record, posted.error)
            return Outcome(turn=turn, status=posted.status, error=posted.error,
                           retry_after=posted.retry_after)
        message, shown_reply = posted
        timing = Timing(sent_at=utcnow(), latency_s=time.perf_counter() - decided,
                        llm_s=llm_s, wait_s=waited_s, read_s=read_s, typing_s=typing_s,
                        due_s=due_s, pause_s=pause_s)
        metrics.TURN_LATENCY.observe(timing.latency_s)
        metrics.TURN_OVERHEAD.observe(timing.overhead_s)
        _observe_sent(turn, timing.sent_at, history)
        view_map = views.view_map()
        sent = Sent(turn=turn, bot=bot, message=message, generation=generation,
                    reply_to=shown_reply, mood=ctx.mood, timing=timing, parts=len(parts),
                    text=parts[0] if len(parts) > 1 else None, views=view_map,
                    event_id=ctx.event_id if ctx.topic in ctx.news_topics else None)
        with tracing.span("commit"):
            await self._stored(turn, self.records.commit_sent(sent))
        self._expressed(turn, generation.text, view_map)
        if sent.event_id is not None and self.events is not None:
            for note in self.events.recent(now):
                if note.id == sent.event_id:
                    self.memory.note_event(turn.bot_id, note.headline, note.at)
        self.own_recent.add(turn.bot_id, generation.text)
        self.chat_recent.add(turn.chat_id, generation.text)
        outcome = Outcome(turn=turn, status="sent", telegram_message_id=message.message_id)
        if len(parts) > 1:
            await self._send_rest(sent, client, parts, cap, outcome)
            if dropped and outcome.error is None:
                outcome.error = f"text cut after {MAX_PARTS} parts"
                await self.records.note_partial(turn, outcome.error)
        return outcome

    def forget(self, bot_ids: Sequence[int]) -> None:
        """Release what this pipeline keeps per bot (its last texts, the directions it
        expressed, the changes of view counted, its memory stream) for bots this worker no
        longer drives; a bot taken on again starts from the database."""
        for bot_id in bot_ids:
            self.own_recent.forget(bot_id)
            self.expressed.pop(bot_id, None)
            self._changes_seen.pop(bot_id, None)
        self.memory.forget(bot_ids)

    def _count_changes(self, bot_id: int, views: BotViews) -> None:
        """Count the bot's changes of view not counted yet
        (``botsim_stance_changes_total{cause}``, :attr:`guard_counts` ``stance_change:*``)."""
        seen = self._changes_seen.get(bot_id, 0)
        for change in views.changes[seen:]:
            metrics.STANCE_CHANGES.labels(cause=change.cause).inc()
            self.guard_counts[f"stance_change:{change.cause}"] += 1
        self._changes_seen[bot_id] = len(views.changes)

    def _expressed(self, turn: Turn, text: str, views: dict[str, str]) -> None:
        """Remember the direction a sent text expects on its topic (the stance guard's
        ``last_said``)."""
        said = expected_direction(text)
        if said is not None:
            topic = detect_topic(text) or turn.topic
            self.expressed.setdefault(turn.bot_id, {})[topic] = (said, views.get(topic, ""))

    def _last_said(self, bot_id: int, views: dict[str, str]) -> dict[str, str]:
        """Topic → the direction the bot last expressed, while its view is unchanged."""
        return {t: d for t, (d, v) in self.expressed.get(bot_id, {}).items()
                if views.get(t, "") == v}

    def _count(self, guard: str, outcome: str) -> None:
        """Count a guard's outcome (``botsim_guard_outcomes_total`` and
        :attr:`guard_counts`)."""
        metrics.GUARD_OUTCOMES.labels(guard=guard, outcome=outcome).inc()
        self.guard_counts[f"{guard}:{outcome}"] += 1

    def _said(self, turn: Turn, history: Sequence[HistoryItem]) -> list[str]:
        """What the repeat guard compares a draft with: the bots' texts of the chat's history,
        the chat's last texts sent from this worker, and the bot's own last texts."""
        return [*(i.text for i in history if not i.is_human),
                *self.chat_recent.of(turn.chat_id), *self.own_recent.of(turn.bot_id)]

    async def _said_since(self, turn: Turn, history: Sequence[HistoryItem]) -> list[str]:
        """What was said since ``history`` was read: the bots' new messages in the chat's
        history (this worker's and others'), the chat's and the bot's last texts sent from
        this worker, and what the chat's turns in flight in this worker are about to send."""
        seen = {i.message_id for i in history}
        return [*(i.text for i in await self.reads.history(turn.chat_id)
                  if not i.is_human and i.message_id not in seen),
                *self.chat_recent.of(turn.chat_id), *self.own_recent.of(turn.bot_id),
                *self._saying.get(turn.chat_id, ())]

    async def _vet(self, turn: Turn, ctx: TurnContext, request: GenerationRequest,
                   generation: Generation, history: Sequence[HistoryItem],
                   regenerated: list[float]) -> Generation | None:
        """The guards on a generated text before its send, in this order: content safety
        (:mod:`behavior_engine.safety`), the bot's views and holdings
        (:mod:`behavior_engine.consistency`), agreement while the chat drifts into it
        (:mod:`behavior_engine.agreement`), and repeats (:mod:`behavior_engine.repeats`).

        ``generation`` when it passes them all; else a draft asked for again with the first
        failed guard's hint (and another seed), at most
        :data:`~behavior_engine.repeats.MAX_REGENERATIONS` times. None: the turn is dropped
        (counted ``dropped`` for the guard the last draft failed). An answer to a person is
        never dropped for a repeat or an agreement: it is sent in its least repeating draft
        that broke no rule and contradicted nothing; only when every draft broke a safety
        rule or contradicted the bot is it dropped (the person is answered by another turn).
        Each safety block is counted per rule and written to the audit log. Each draft asked
        for again appends its generation's seconds to ``regenerated`` (the turn's ``llm_s``:
        generation, not the engine's overhead; ran (b)'s slowest 1 % were regenerations).
        """
        earlier = self._said(turn, history)
        language = ctx.profile.language
        to_person = turn.reply_to is not None and turn.reply_to.is_human
        last_said = self._last_said(turn.bot_id, {s.topic: s.view for s in ctx.stances})
        drifting = self.agreement.drifting(turn.chat_id)
        draft = generation
        kept: tuple[float, Generation] | None = None  # the best draft for a person
        failures: list[str] = []
        for attempt in range(MAX_REGENERATIONS + 1):
            breach = check_safety(draft.text, self.safety_rules, language=language,
                                  to_person=to_person)
            clash = check_consistency(draft.text, stances=ctx.stances, holdings=ctx.holdings,
                                      topic=ctx.topic, last_said=last_said)
            agrees = drifting and adds_agreement(draft.text)
            check = check_repeat(draft.text, earlier)
            if breach is None and clash is None and not agrees and not check.repeats:
                for guard in ("repeat", "stance", "agreement"):
                    self._count(guard, "regenerated" if guard in failures else "passed")
                return draft
            if breach is not None:
                metrics.SAFETY_BLOCKS.labels(rule=breach.rule).inc()
                self.guard_counts[f"safety:{breach.rule}"] += 1
                await self.records.safety_blocked(turn, rule=breach.rule, part=breach.part,
                                                  text=draft.text)
                failures.append("safety")
                hint = breach.hint
            elif clash is not None:
                self.guard_counts[f"stance:{clash.kind}"] += 1
                failures.append("stance")
                hint = clash.hint(language)
            else:
                score = check.score + (1.0 if agrees else 0.0)
                if kept is None or score < kept[0]:
                    kept = (score, draft)
                if agrees:
                    failures.append("agreement")
                    hint = ctx.contrast or AGREEMENT_HINT
                else:
                    failures.append("repeat")
                    hint = repeat_hint(check, language)
            if attempt == MAX_REGENERATIONS:
                break
            again = GenerationRequest(
                messages=[*request.messages, {"role": "system", "content": hint}],
                context=dataclasses.replace(ctx, seed=ctx.seed + 7919 * (attempt + 1)),
                max_chars=request.max_chars)
            t_again = time.perf_counter()
            draft = (await self.chain.generate(again, order=ctx.profile.llm_providers)
                     ).generation
            regenerated.append(time.perf_counter() - t_again)
        if kept is not None and to_person:
            self._count(failures[-1] if failures[-1] in ("repeat", "agreement") else "repeat",
                        "kept_for_human")
            return kept[1]
        self._count(failures[-1], "dropped")
        log.info("turn %s of bot %s dropped by its guards", turn.turn_id, turn.bot_id)
        return None

    async def _stored(self, turn: Turn, commit: Awaitable[HistoryItem]) -> None:
        """Await a message's commit even when cancelled meanwhile (Telegram has the message:
        it is recorded before giving in to the cancellation, a worker stopping, or an
        ``intent`` would be left for a message that exists), then count the send and add
        the message to the chat's cached history."""
        task = asyncio.ensure_future(commit)
        try:
            item = await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await task
            raise
        if self.on_sent is not None:
            self.on_sent(turn.bot_id, self.clock())
        await self.reads.appended(turn.chat_id, item)

    async def _send_rest(self, first: Sent, client: Sender, parts: list[str], cap: int,
                         outcome: Outcome) -> None:
        """Send parts 2.. of a split text after part 1, in order, each after a send slot
        and each stored once sent. The first part not sent ends it: the outcome (and the
        turn record) say which and why; what was sent stays stored."""
        turn, n = first.turn, len(parts)
        chat_id = first.message.chat_id  # where part 1 went (after a migration: the new id)
        sent_parts = 1
        for k, text in enumerate(parts[1:], start=2):
            waited, refused = await self._guard(turn, cap, chat_id)
            if refused is not None:
                why = refused.error or "Telegram limit"
            elif not self.holder.valid(turn.bot_id) or self.holder.client(
                    turn.bot_id) is not client:
                why = "bot let go before the send"
            else:
                with tracing.span("send", kind=SpanKind.CLIENT,
                                  attributes={"botsim.part": k}) as send_span:
                    posted = await self._post(turn, client, chat_id, text, None, part=(k, n))
                    _traced_outcome(send_span, posted.status if isinstance(posted, _Refused)
                                    else "sent")
                if isinstance(posted, _Refused):
                    why = posted.error
                else:
                    message, _ = posted
                    chat_id = message.chat_id
                    timing = dataclasses.replace(first.timing, sent_at=utcnow(),
                                                 wait_s=waited, read_s=0.0, typing_s=0.0)
                    await self._stored(turn, self.records.commit_part(dataclasses.replace(
                        first, message=message, reply_to=None, part=k, text=text,
                        timing=timing)))
                    sent_parts = k
                    continue
            outcome.error = f"part {k} of {n} not sent: {why}"
            break
        outcome.extra.update(parts=n, parts_sent=sent_parts)
        metrics.SPLIT_SENDS.labels(outcome="complete" if sent_parts == n else "partial").inc()
        if outcome.error is not None:
            log.warning("turn %s: %s (parts 1-%d sent and stored)", turn.turn_id,
                        outcome.error, sent_parts)
            await self.records.note_partial(turn, outcome.error)

    async def _generate(self, turn: Turn, client: Sender, request: GenerationRequest,
                        order: list[str] | None,
                        pace: Pace) -> tuple[Generation, float, float, float, float]:
        """The text, the seconds spent generating it, the seconds "typing…" showed, the
        seconds waited before typing for the turn's due time (a slot's turn, below), and the
        seconds typed after the text was ready.

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
        idle = 0.0
        if early and turn.not_before is not None:
            idle = max((turn.not_before - self.clock()).total_seconds() - max(pause, 0.0), 0.0)
            if idle > 0:  # not typing yet: start so as to finish at the due time
                await self._sleep(idle)
        if pause > 0:
            await keep_typing(lambda: client.send_typing(chat_id=chat_id), self._sleep, pause,
                              shown_ago=None if early else llm_s)
        return result.generation, llm_s, shown + max(pause, 0.0), idle, max(pause, 0.0)

    async def _renew_typing(self, client: Sender, chat_id: int) -> None:
        """Renew "typing…" every :data:`TYPING_RENEW_S` seconds (wall clock: the provider's
        own time) until cancelled."""
        while True:
            await asyncio.sleep(TYPING_RENEW_S)
            try:
                await client.send_typing(chat_id=chat_id)
            except TelegramError as exc:  # decoration: never worth a lost turn
                log.debug("chat %s: typing not renewed: %s", chat_id, exc)

    async def _until_due(self, turn: Turn) -> float:
        """Wait until the turn's due time (``Turn.not_before``) when it is still ahead: the
        send follows the chat's rhythm, not the worker's tick (issue 14). Returns the
        seconds waited."""
        if turn.not_before is None:
            return 0.0
        ahead = (turn.not_before - self.clock()).total_seconds()
        if ahead <= 0:
            return 0.0
        await self._sleep(ahead)
        return ahead

    async def _guard(self, turn: Turn, chat_cap: int,
                     chat_id: int | None = None) -> tuple[float, Outcome | None]:
        """Take a send slot in ``chat_id`` (Telegram's id; default the turn's), waiting at
        most :data:`MAX_LIMIT_WAIT_S`. Returns the seconds waited and, when no slot came,
        the ``skipped`` outcome."""
        chat = turn.telegram_chat_id if chat_id is None else chat_id
        wait = await self.limits.try_acquire(turn.bot_id, chat, chat_cap=chat_cap)
        if wait <= 0:
            return 0.0, None
        if wait > MAX_LIMIT_WAIT_S:
            return 0.0, Outcome(turn=turn, status="skipped", error="Telegram limit",
                                retry_after=wait)
        t_wait = time.perf_counter()
        await self._sleep(wait)
        waited = time.perf_counter() - t_wait
        if await self.limits.try_acquire(turn.bot_id, chat, chat_cap=chat_cap) > 0:
            return waited, Outcome(turn=turn, status="skipped", error="Telegram limit")
        return waited, None

    async def _post(self, turn: Turn, client: Sender, chat_id: int, text: str,
                    reply_id: int | None, *,
                    part: tuple[int, int] = (1, 1)) -> tuple[SentMessage, int | None] | _Refused:
        """Send one message after the intent: Telegram's answer and the reply it shows, or
        how it was refused (module table; the side effects are done here, the turn's
        record is the caller's). An error answer means nothing was posted, so the two
        answers that name a fix (the chat's new id, the reply target gone) are followed
        once. ``part``: (k, n) of a split text, for the logs."""
        reply = reply_id
        # An answer goes into the forum topic of the message it answers (Bot API,
        # sendMessage message_thread_id); a fresh line into the General topic.
        thread = turn.reply_to.thread_id if turn.reply_to is not None else None
        where = f" (part {part[0]} of {part[1]})" if part[1] > 1 else ""
        for _attempt in range(3):
            try:
                # allow_sending_without_reply: a vanished reply target does not lose the turn.
                message = await client.send_message(chat_id=chat_id, text=text,
                                                     reply_to_message_id=reply,
                                                     message_thread_id=thread)
            except TelegramChatMigrated as exc:
                if chat_id == exc.new_chat_id or not await self.records.migrate_chat(
                        turn, exc.new_chat_id):
                    return _Refused("failed", "failed", str(exc))
                log.warning("chat %s migrated to %s; sent there", chat_id, exc.new_chat_id)
                chat_id, reply, thread = exc.new_chat_id, None, None  # old ids mean nothing
            except TelegramReplyNotFound as exc:
                if reply is None:
                    return _Refused("failed", "failed", str(exc))
                reply = None
            except TelegramRetryAfter as exc:
                await self.limits.block(turn.bot_id, exc.retry_after)
                log.warning("bot %s: 429, waits %.0f s%s", turn.bot_id, exc.retry_after, where)
                return _Refused("rate_limited", "retry", str(exc), exc.retry_after)
            except TelegramUnavailable as exc:
                if exc.delivered_unknown:
                    metrics.SEND_UNKNOWN.labels(reason="no_answer").inc()
                    log.error("turn %s: send outcome unknown (%s)%s; not repeated",
                              turn.turn_id, exc, where)
                    return _Refused("unknown", "unknown", f"outcome unknown: {exc}")
                return _Refused("skipped", "retry", str(exc))
            except TelegramForbidden as exc:
                log.error("bot %s removed from chat %s: %s", turn.bot_id, chat_id, exc)
                status = "kicked" if "kicked" in str(exc).lower() else "left"
                await self.records.leave_chat(turn, status=status, reason=f"403 {exc}")
                return _Refused("failed", "failed", str(exc))
            except TelegramInvalidToken as exc:
                error = redact_tokens(str(exc))
                log.error("bot %s disabled: %s", turn.bot_id, error)
                await self.records.disable_bot(turn.bot_id, description=f"401 {error}")
                await self.holder.let_go(turn.bot_id)
                return _Refused("failed", "failed", error)
            except TelegramError as exc:
                return _Refused("failed", "failed", str(exc))
            except BaseException as exc:  # cancelled mid-send: the request may have gone out
                with contextlib.suppress(Exception):
                    if part[0] == 1:
                        await self.records.finish(turn, "unknown", repr(exc))
                    else:
                        await self.records.note_partial(
                            turn, f"part {part[0]} of {part[1]} outcome unknown: {exc!r}")
                metrics.SEND_UNKNOWN.labels(reason="interrupted").inc()
                raise
            else:
                return message, (reply if _reply_shown(message, reply) else None)
        return _Refused("failed", "failed", "send refused three times")


def _turn_attributes(turn: Turn, worker_id: str) -> dict[str, str | int]:
    """A turn span's attributes: its ids and why it was taken (never a text)."""
    attrs: dict[str, str | int] = {
        tracing.TURN_ID: turn.turn_id, tracing.CHAT_ID: turn.chat_id,
        tracing.BOT_ID: turn.bot_id, tracing.WORKER_ID: worker_id,
        "botsim.turn.reason": turn.reason, "botsim.topic": turn.topic}
    if turn.reply_message_id is not None:
        attrs["botsim.reply_message_id"] = turn.reply_message_id
    return attrs


def _traced_outcome(span: Span, status: str) -> None:
    """Put an outcome (``sent``, ``failed``, ``unknown``, ``skipped``...) on ``span``;
    ``failed`` and ``unknown`` set the status ERROR."""
    if span.is_recording():
        span.set_attribute(tracing.OUTCOME, status)
        if status in ("failed", "unknown"):
            tracing.failed(span, status)


def _reply_shown(message: SentMessage, asked: int | None) -> bool:
    """Whether Telegram shows the sent message as the reply ``asked`` for: with
    ``allow_sending_without_reply`` a deleted target is dropped silently, which Telegram's
    answer tells by ``reply_to_message`` (``SentMessage.reply_to_message_id``)."""
    return asked is not None and message.reply_to_message_id == asked


def message_time(sent: SentMessage) -> datetime:
    """Telegram's time of a sent message as aware UTC (a naive date is UTC)."""
    return sent.date if sent.date.tzinfo else sent.date.replace(tzinfo=UTC)


def _observe_sent(turn: Turn, sent_at: datetime, history: Sequence[HistoryItem]) -> None:
    """Count a sent message in the chat's metrics: ``botsim_chat_messages_total{chat}``,
    ``botsim_chat_gap_seconds`` (from the chat's latest message in ``history``) and, for an
    answer to a person, ``botsim_human_reply_latency_seconds`` (from the person's message
    stored by the listener)."""
    metrics.CHAT_MESSAGES.labels(chat=str(turn.chat_id)).inc()
    if history:
        last = max(h.created_at for h in history)
        metrics.CHAT_GAP.observe(max(_seconds_between(last, sent_at), 0.0))
    asked = turn.reply_to
    if asked is not None and asked.is_human and asked.created_at is not None:
        metrics.HUMAN_REPLY_LATENCY.observe(
            max(_seconds_between(asked.created_at, sent_at), 0.0))


def _seconds_between(earlier: datetime, later: datetime) -> float:
    """``later - earlier`` in seconds; a naive time is taken as UTC (SQLite keeps none)."""
    if earlier.tzinfo is None:
        earlier = earlier.replace(tzinfo=UTC)
    if later.tzinfo is None:
        later = later.replace(tzinfo=UTC)
    return (later - earlier).total_seconds()

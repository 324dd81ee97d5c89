"""The worker process: drives the bots, one scheduler tick at a time (APScheduler).

Each tick (``Settings.tick_seconds``) the worker reads the chats, budgets and waiting human
messages, asks the :class:`~behavior_engine.scheduler.Scheduler` which turns are due, and
runs each turn as a task: build the prompt, show "typing", generate, wait for Telegram's
limits, send through python-telegram-bot, store the sent message with its Telegram id.

Failures never crash the worker: a 429 blocks that bot for ``retry_after`` seconds (and a
waiting human message is planned again), a reply to a vanished message is sent without the
reply (``allow_sending_without_reply``), a bot kicked from a chat stops posting there, a bot
with a revoked token is disabled, and a send whose outcome is unknown (the request may have
reached Telegram) is counted and never repeated by itself.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import metrics
from backend.crypto import Secrets
from backend.db.types import utcnow
from backend.errors import (
    TelegramError,
    TelegramForbidden,
    TelegramInvalidToken,
    TelegramRetryAfter,
    TelegramUnavailable,
)
from backend.invalidation import KIND_BOT, KIND_CHATS, invalidate_after_commit
from backend.schemas import MessageMeta, ProviderSettings
from backend.settings import Settings
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import messages as message_store
from behavior_engine.llm.chain import ProviderChain
from behavior_engine.llm.ledger import Ledger
from behavior_engine.market import MarketFeed, holdings_pnl_pct, mood_from_pnl
from behavior_engine.prompt_builder import MEMORY_ITEMS, build_request
from behavior_engine.reads import BotProfile, CachedReads, HistoryItem, item_from_row
from behavior_engine.scheduler import (
    HUMAN_WAIT_MAX,
    BotView,
    ChatView,
    Scheduler,
    WaitingMessage,
)
from behavior_engine.turn import ChatLine, Outcome, Turn, TurnContext
from bots.ratelimit import TelegramLimiter
from bots.telegram import BotClient, SentMessage

log = logging.getLogger("botsim.worker")

HISTORY_SIZE = 20
#: Longest a turn waits for Telegram's limits before it is given up (seconds).
MAX_LIMIT_WAIT_S = 5.0


def to_line(item: HistoryItem) -> ChatLine:
    """A cached history item as the :class:`ChatLine` the scheduler and prompts read."""
    return ChatLine(
        telegram_message_id=item.telegram_message_id,
        speaker=item.speaker,
        speaker_username=item.speaker_username,
        is_human=item.is_human,
        text=item.text,
        bot_id=item.bot_id,
        created_at=item.created_at,
    )


def waiting_messages(
    history: Sequence[HistoryItem], now: datetime
) -> list[WaitingMessage]:
    """Human messages of ``history`` that want an answer none of our bots has given yet."""
    answered = {i.reply_to for i in history if i.bot_id is not None and i.reply_to is not None}
    bot_of = {i.telegram_message_id: i.bot_id for i in history if i.bot_id is not None}
    return [
        WaitingMessage(
            message_id=i.message_id,
            line=to_line(i),
            reply_to_bot_id=bot_of.get(i.reply_to) if i.reply_to is not None else None,
        )
        for i in history
        if i.reply_wanted and i.telegram_message_id not in answered
        and i.created_at >= now - HUMAN_WAIT_MAX
    ]


class Worker:
    """Drives every enabled bot of the database (sharding comes later).

    Args:
        settings: process settings (``tick_seconds``, ``telegram_api_url``, ``seed``).
        sessionmaker: database sessions.
        secrets: the Fernet key that decrypts bot tokens.
        chain: the provider chain (offline generator last).
        ledger: the chain's recorder, flushed every tick and on stop (None: no ledger).
        market: the market feed (holdings P&L → mood).
        limiter: Telegram's send limits (a fresh in-process one by default).
        clock: aware UTC now (injectable for tests).
        reads: the cached reads (default: an in-memory cache over ``sessionmaker``).

    Attributes:
        stats: counters: ``ticks``, ``turns``, ``sent``, ``rate_limited``, ``failed``,
            ``unknown`` (send outcome unknown, not repeated), ``errors`` (failed turns and
            tick errors), ``fallbacks`` (turns answered after a provider was left).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        secrets: Secrets,
        chain: ProviderChain,
        market: MarketFeed,
        ledger: Ledger | None = None,
        limiter: TelegramLimiter | None = None,
        clock: Callable[[], datetime] = utcnow,
        reads: CachedReads | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.secrets = secrets
        self.chain = chain
        self.ledger = ledger
        self.market = market
        self.limiter = limiter or TelegramLimiter()
        self.clock = clock
        self.scheduler = Scheduler(seed=settings.seed)
        self.stats: Counter[str] = Counter()
        self._clients: dict[int, BotClient] = {}
        self.reads = reads or CachedReads(settings.make_cache(), sessionmaker)
        # Send times per bot in the last hour, for the hourly budgets (this process's sends;
        # loaded from the database at start).
        self._sent: dict[int, deque[datetime]] = defaultdict(deque)
        self._busy: set[int] = set()
        self._in_flight: Counter[int] = Counter()
        self._tasks: set[asyncio.Task[Outcome]] = set()
        self._aps: AsyncIOScheduler | None = None
        self._owns_chain = False

    @classmethod
    def assemble(
        cls,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        secrets: Secrets,
        reads: CachedReads,
        providers: Sequence[ProviderSettings] | None = None,
        market_start: datetime | None = None,
    ) -> Worker:
        """A worker with its provider chain (``providers``, default: the settings' chain;
        offline last) and cost ledger; :meth:`stop` closes the chain's clients too."""
        from behavior_engine.llm.factory import build_chain

        ledger = Ledger(sessionmaker, settings.llm_prices)
        chosen = settings.llm_providers if providers is None else providers
        worker = cls(
            settings=settings,
            sessionmaker=sessionmaker,
            secrets=secrets,
            chain=build_chain(list(chosen), recorder=ledger),
            ledger=ledger,
            market=MarketFeed(seed=settings.seed, start=market_start or utcnow()),
            reads=reads,
        )
        worker._owns_chain = True
        return worker

    async def start(self) -> None:
        """Connect every enabled bot (getMe) and start ticking.

        A bot whose token Telegram refuses is disabled and logged; the others go on.
        """
        cipher = self.secrets.cipher()
        async with self.sessionmaker() as session, session.begin():
            bots = await bot_store.list_bots(session, enabled_only=True)
            for bot in bots:
                client = BotClient(
                    bot_id=bot.id,
                    token=cipher.decrypt(bot.token_encrypted),
                    base_url=self.settings.telegram_api_url,
                )
                try:
                    await client.start()
                except TelegramInvalidToken:
                    log.error("bot %s (@%s): token refused by Telegram; disabled", bot.id,
                              bot.username)
                    bot.enabled = False
                    await client.close()
                    continue
                self._clients[bot.id] = client
            since = self.clock() - timedelta(hours=1)
            for bot_id, when in await message_store.bot_send_times(session, since=since):
                self._sent[bot_id].append(when)
        self._aps = AsyncIOScheduler(timezone=UTC)
        self._aps.add_job(
            self.tick,
            "interval",
            seconds=self.settings.tick_seconds,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        self._aps.start()
        if self._clients:
            log.info("worker started with %d bots", len(self._clients))
        else:
            log.warning("worker started with no enabled bot: nothing will be posted")

    async def stop(self) -> None:
        """Stop ticking, let running turns finish (10 s at most), close the bots."""
        if self._aps is not None:
            self._aps.shutdown(wait=False)
            self._aps = None
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self.ledger is not None:
            await self.ledger.flush()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        if self._owns_chain:
            from behavior_engine.llm.factory import close_chain

            await close_chain(self.chain)

    # -- the tick ------------------------------------------------------------------------
    async def tick(self) -> None:
        """Decide and launch the turns due now. Never raises (errors are counted)."""
        self.stats["ticks"] += 1
        if self.ledger is not None:
            await self.ledger.flush()
        try:
            turns = await self._decide()
        except Exception:
            self.stats["errors"] += 1
            log.exception("tick failed")
            return
        for turn in turns:
            self._busy.add(turn.bot_id)
            self._in_flight[turn.chat_id] += 1
            task = asyncio.create_task(self.run_turn(turn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _decide(self) -> list[Turn]:
        now = self.clock()
        sim = await self.reads.settings()
        if not sim.simulation_active:
            return []
        turns: list[Turn] = []
        for chat in await self.reads.chats():
            members = [b for b in chat.bot_ids if b in self._clients]
            if not members:
                continue
            history = await self.reads.history(chat.id)
            view = ChatView(
                chat_id=chat.id,
                telegram_chat_id=chat.telegram_chat_id,
                topics=chat.topics,
                sent_last_minute=sum(
                    1 for i in history
                    if i.bot_id is not None and i.created_at >= now - timedelta(seconds=60)
                ),
                recent=[to_line(i) for i in history[-HISTORY_SIZE:]],
                waiting=waiting_messages(history, now),
                in_flight=self._in_flight[chat.id],
            )
            bot_views = [
                self._bot_view(await self.reads.bot(b), chat.telegram_chat_id, now)
                for b in members
            ]
            turns.extend(self.scheduler.decide(view, bot_views, sim, now))
        self.stats["turns"] += len(turns)
        return turns

    def _sent_last_hour(self, bot_id: int, now: datetime) -> int:
        times = self._sent[bot_id]
        while times and times[0] < now - timedelta(hours=1):
            times.popleft()
        return len(times)

    def _bot_view(self, bot: BotProfile, tg_chat_id: int, now: datetime) -> BotView:
        wait = self.limiter.wait_time(bot.id, tg_chat_id)
        if bot.id in self._busy:
            wait = max(wait, 1.0)
        return BotView(
            bot_id=bot.id,
            name=bot.name,
            username=bot.username,
            talkativeness=bot.persona.talkativeness,
            topics=bot.persona.topics,
            sent_last_hour=self._sent_last_hour(bot.id, now),
            send_wait=wait,
        )

    # -- one turn ------------------------------------------------------------------------
    async def run_turn(self, turn: Turn) -> Outcome:
        """Generate, send and store one turn. Never raises; returns how it ended."""
        try:
            outcome = await self._run_turn(turn)
        except Exception as exc:
            log.exception("turn %s of bot %s failed", turn.turn_id, turn.bot_id)
            outcome = Outcome(turn=turn, status="failed", error=repr(exc))
        finally:
            self._busy.discard(turn.bot_id)
            self._in_flight[turn.chat_id] -= 1
        if outcome.status == "failed":
            self.stats["failed"] += 1
            self.stats["errors"] += 1
        elif outcome.status != "sent" and turn.reply_to is not None and turn.reply_to.is_human:
            # The human still waits: let the scheduler plan a reply again.
            self.scheduler.forget_handled(turn.chat_id, turn.reply_to.telegram_message_id)
        self.stats[outcome.status] += 1
        return outcome

    async def _context(
        self, turn: Turn, now: datetime
    ) -> tuple[TurnContext, BotProfile, float]:
        bot = await self.reads.bot(turn.bot_id)
        history = (await self.reads.history(turn.chat_id))[-HISTORY_SIZE:]
        snapshot = self.market.snapshot(now)
        pnl = holdings_pnl_pct(bot.holdings, snapshot)
        mood = mood_from_pnl(bot.persona.mood_baseline, pnl)
        ctx = TurnContext(
            turn_id=turn.turn_id,
            bot_name=bot.name,
            bot_username=bot.username,
            profile=bot.persona,
            stances=tuple(bot.stances),
            holdings=tuple(bot.holdings),
            mood=mood,
            pnl_pct=pnl,
            topic=turn.topic,
            market=snapshot,
            history=tuple(to_line(i) for i in history),
            memories=tuple(i.text for i in history if i.bot_id == bot.id)[-MEMORY_ITEMS:],
            reply_to=turn.reply_to,
            bot_id=bot.id,
            chat_id=turn.chat_id,
            seed=zlib.crc32(f"{self.settings.seed}:{turn.turn_id}".encode()),
        )
        return ctx, bot, mood

    async def _run_turn(self, turn: Turn) -> Outcome:
        client = self._clients.get(turn.bot_id)
        if client is None:
            return Outcome(turn=turn, status="skipped", error="bot not connected")
        t0 = time.perf_counter()
        ctx, bot, mood = await self._context(turn, self.clock())
        request = build_request(ctx)
        metrics.PROMPT_ASSEMBLY.observe(time.perf_counter() - t0)
        try:
            await client.send_typing(chat_id=turn.telegram_chat_id)
        except TelegramError as exc:  # "typing…" is decoration: never worth a lost turn
            log.debug("bot %s: typing not shown: %s", turn.bot_id, exc)
        result = await self.chain.generate(request, order=ctx.profile.llm_providers)
        generation = result.generation
        if result.skipped:
            self.stats["fallbacks"] += 1
        wait = self.limiter.try_acquire(turn.bot_id, turn.telegram_chat_id)
        if wait > 0:
            if wait > MAX_LIMIT_WAIT_S:
                return Outcome(
                    turn=turn, status="skipped", error="Telegram limit", retry_after=wait
                )
            await asyncio.sleep(wait)
            if self.limiter.try_acquire(turn.bot_id, turn.telegram_chat_id) > 0:
                return Outcome(turn=turn, status="skipped", error="Telegram limit")
        reply_id = turn.reply_to.telegram_message_id if turn.reply_to else None
        try:
            # allow_sending_without_reply: a vanished reply target does not lose the turn.
            sent = await client.send_message(
                chat_id=turn.telegram_chat_id, text=generation.text, reply_to_message_id=reply_id
            )
        except TelegramRetryAfter as exc:
            self.limiter.block(turn.bot_id, exc.retry_after)
            log.warning("bot %s: 429, waits %.0f s", turn.bot_id, exc.retry_after)
            return Outcome(turn=turn, status="rate_limited", error=str(exc),
                           retry_after=exc.retry_after)
        except TelegramUnavailable as exc:
            if exc.delivered_unknown:
                self.stats["unknown"] += 1
                log.error("turn %s: send outcome unknown (%s); not repeated", turn.turn_id, exc)
            return Outcome(turn=turn, status="failed", error=str(exc))
        except TelegramForbidden as exc:
            await self._leave_chat(turn, exc)
            return Outcome(turn=turn, status="failed", error=str(exc))
        except TelegramInvalidToken as exc:
            await self._disable(turn.bot_id, exc)
            return Outcome(turn=turn, status="failed", error=str(exc))
        except TelegramError as exc:
            return Outcome(turn=turn, status="failed", error=str(exc))
        await self._record(turn, bot, sent, generation.text, generation.provider,
                           generation.model, reply_id, mood)
        return Outcome(turn=turn, status="sent", telegram_message_id=sent.message_id)

    async def _record(
        self, turn: Turn, bot: BotProfile, sent: SentMessage, text: str, provider: str,
        model: str | None, reply_id: int | None, mood: float,
    ) -> None:
        """Store the sent message (and the answered flag and the mood) in one transaction,
        then add it to the chat's cached history."""
        when = sent.date if sent.date.tzinfo else sent.date.replace(tzinfo=UTC)
        async with self.sessionmaker() as session, session.begin():
            msg = await message_store.record_sent(
                session,
                chat_id=turn.chat_id,
                bot_id=turn.bot_id,
                turn_id=turn.turn_id,
                telegram_message_id=sent.message_id,
                text=text,
                meta=MessageMeta(provider=provider, model=model, topic=turn.topic,
                                 sender_is_bot=True, sender_username=bot.username),
                created_at=when,
                reply_to_telegram_message_id=reply_id,
            )
            if turn.reply_to is not None and turn.reply_to.is_human:
                await message_store.mark_answered(
                    session, chat_id=turn.chat_id,
                    telegram_message_ids=[turn.reply_to.telegram_message_id],
                )
            await bot_store.set_mood(session, bot_id=turn.bot_id, mood=mood)
        self._sent[turn.bot_id].append(self.clock())
        await self.reads.appended(turn.chat_id, item_from_row(msg, bot.name, bot.username))

    async def _leave_chat(self, turn: Turn, exc: TelegramError) -> None:
        """403 in a chat (kicked, or not a member): stop posting there, tell the operator."""
        log.error("bot %s removed from chat %s: %s", turn.bot_id, turn.telegram_chat_id, exc)
        async with self.sessionmaker() as session, session.begin():
            await chat_store.remove_bot(session, chat_id=turn.chat_id, bot_id=turn.bot_id,
                                        cache=self.reads.cache)

    async def _disable(self, bot_id: int, exc: TelegramError) -> None:
        log.error("bot %s disabled: %s", bot_id, exc)
        async with self.sessionmaker() as session, session.begin():
            bot = await bot_store.get_bot(session, bot_id=bot_id)
            bot.enabled = False
            invalidate_after_commit(session, self.reads.cache, KIND_BOT, str(bot_id))
            invalidate_after_commit(session, self.reads.cache, KIND_CHATS, "enabled")
        client = self._clients.pop(bot_id, None)
        if client is not None:
            await client.close()


async def serve(settings: Settings, secrets: Secrets) -> None:
    """Run one worker until cancelled: migrate, connect the bots, tick.

    Raises:
        ConfigError, StorageError: when the database or the secrets are unusable.
    """
    from backend.db.session import make_engine, make_sessionmaker, upgrade
    from backend.metrics import serve_metrics

    await upgrade(settings.effective_database_url)
    if settings.metrics_port is not None:
        serve_metrics(settings.listener_host, settings.metrics_port)
    engine = make_engine(settings.effective_database_url, pool_size=settings.db_pool_size)
    sessionmaker = make_sessionmaker(engine)
    cache = settings.make_cache()
    await cache.start()
    worker = Worker.assemble(settings=settings, sessionmaker=sessionmaker, secrets=secrets,
                             reads=CachedReads(cache, sessionmaker))
    await worker.start()
    try:
        await asyncio.Event().wait()
    finally:
        await worker.stop()
        await cache.close()
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    """``python worker.py``: the same as ``botsim worker``."""
    from backend.cli import main as cli_main

    return cli_main(["worker", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

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

Exactly-once sends (``backend.stores.turns``): each turn has its id before generation; right
before the send its intent is recorded under the bot's fencing token, then the message is
sent, then the outcome is committed with the message row. A worker killed in between leaves
an intent that the bot's next holder records as ``unknown`` and never sends again.

Sharding (with ``REDIS_URL``, :class:`Shard`): the worker joins the live set (heartbeat key
with a TTL), builds the ring over the live workers (:mod:`behavior_engine.sharding`), holds
the leases of the bots the ring gives it (:mod:`behavior_engine.leases`) and drives only
those; human messages reach it through the reply stream (:mod:`behavior_engine.replies`),
and Telegram's limits and the per-chat cap are Redis token buckets shared by all workers.
Without Redis the worker drives every enabled bot (one worker per database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import metrics
from backend.crypto import Secrets
from backend.db.types import utcnow
from backend.errors import (
    FencedOut,
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
from backend.stores import turns as turn_store
from behavior_engine.context import HISTORY_SIZE, to_line, turn_context
from behavior_engine.leases import Leases, new_worker_id
from behavior_engine.llm.chain import ProviderChain
from behavior_engine.llm.ledger import Ledger
from behavior_engine.market import MarketFeed
from behavior_engine.prompt_builder import build_request
from behavior_engine.reads import BotProfile, CachedReads, HistoryItem, item_from_row
from behavior_engine.replies import ReplyDispatcher, ReplyRequest, ReplyStream
from behavior_engine.scheduler import (
    HUMAN_WAIT_MAX,
    BotView,
    ChatView,
    Scheduler,
    WaitingMessage,
)
from behavior_engine.turn import Outcome, Turn, TurnContext
from bots.ratelimit import SharedLimiter, TelegramLimiter
from bots.telegram import BotClient, SentMessage

log = logging.getLogger("botsim.worker")

#: Longest a turn waits for Telegram's limits before it is given up (seconds).
MAX_LIMIT_WAIT_S = 5.0
#: A new worker waits this long (at most a third of the heartbeat TTL) between joining the
#: live set and taking bots (seconds).
JOIN_SETTLE_S = 1.0
#: getMe calls at once while taking bots on: thousands at once time out (a worker taking
#: 2,500 bots at once saw every call time out against the sandbox, and retried forever).
CONNECT_CONCURRENCY = 16
#: The reply sweep runs at most this often across all workers (seconds).
SWEEP_EVERY_S = 15.0

_RELEASE_FLOOR = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SendLimits(Protocol):
    """Telegram's send limits as the worker uses them (in-process or shared in Redis)."""

    def wait_time(self, bot_id: int, chat_id: int) -> float:
        """A cheap local estimate of the seconds before ``bot_id`` may send to ``chat_id``."""

    async def try_acquire(self, bot_id: int, chat_id: int, *,
                          chat_cap: int | None = None) -> float:
        """Take a send slot (0.0) or say how long to wait (nothing taken)."""

    async def block(self, bot_id: int, seconds: float) -> None:
        """Stop ``bot_id`` for ``seconds`` after a 429."""


class LocalLimits:
    """:class:`TelegramLimiter` (this process only) behind the :class:`SendLimits` face.

    The per-chat cap is then the scheduler's (from the shared history), not a bucket.
    """

    def __init__(self, limiter: TelegramLimiter) -> None:
        self.limiter = limiter

    def wait_time(self, bot_id: int, chat_id: int) -> float:
        """See :meth:`TelegramLimiter.wait_time`."""
        return self.limiter.wait_time(bot_id, chat_id)

    async def try_acquire(self, bot_id: int, chat_id: int, *,
                          chat_cap: int | None = None) -> float:
        """See :meth:`TelegramLimiter.try_acquire` (``chat_cap`` is not used here)."""
        return self.limiter.try_acquire(bot_id, chat_id)

    async def block(self, bot_id: int, seconds: float) -> None:
        """See :meth:`TelegramLimiter.block`."""
        self.limiter.block(bot_id, seconds)


@dataclass
class Shard:
    """What a sharded worker shares with the others through Redis.

    Attributes:
        redis: the Redis client (closed by :meth:`Worker.stop`).
        leases: membership and bot leases.
        stream: the reply stream (reads the requests of the bots held).
        dispatcher: re-dispatches lost reply requests (the sweep).
        limiter: Telegram's limits and the per-chat cap across workers.
        ring_epsilon: the ring's load bound (None: the module default).
    """

    redis: Any
    leases: Leases
    stream: ReplyStream
    dispatcher: ReplyDispatcher
    limiter: SharedLimiter
    ring_epsilon: float | None = None

    @classmethod
    def build(cls, settings: Settings, reads: CachedReads,
              sessionmaker: async_sessionmaker[AsyncSession], *,
              worker_id: str | None = None) -> Shard:
        """A shard on ``settings.redis_url`` (namespace ``settings.redis_namespace``).

        Raises:
            ValueError: ``settings.redis_url`` is not set.
        """
        import redis.asyncio as aioredis

        if not settings.redis_url:
            raise ValueError("sharding needs REDIS_URL")
        client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2.0,
                                         socket_connect_timeout=2.0)
        ns = settings.redis_namespace
        stream = ReplyStream(client, namespace=ns)
        return cls(
            redis=client,
            leases=Leases(client, sessionmaker, worker_id or new_worker_id(settings.worker_name),
                          settings.heartbeat_ttl_s, namespace=ns),
            stream=stream,
            dispatcher=ReplyDispatcher(stream, reads, sessionmaker, seed=settings.seed),
            limiter=SharedLimiter(client, namespace=ns),
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
    """Drives the bots this process holds: all enabled bots, or its shard of them.

    Args:
        settings: process settings (``tick_seconds``, ``telegram_api_url``, ``seed``,
            ``max_turns_in_flight``, ``heartbeat_ttl_s``).
        sessionmaker: database sessions.
        secrets: the Fernet key that decrypts bot tokens.
        chain: the provider chain (offline generator last).
        ledger: the chain's recorder, flushed every tick and on stop (None: no ledger).
        market: the market feed (holdings P&L → mood).
        limiter: Telegram's send limits in this process (a fresh one by default; unused
            when ``shard`` brings the shared one).
        clock: aware UTC now (injectable for tests).
        reads: the cached reads (default: an in-memory cache over ``sessionmaker``).
        shard: Redis membership, leases, reply stream and shared limits; None: this worker
            drives every enabled bot.
        worker_id: this worker's id (default: the shard's, or a new one).

    Attributes:
        stats: counters: ``ticks``, ``turns``, ``sent``, ``rate_limited``, ``failed``,
            ``unknown`` (send outcome unknown, not repeated), ``duplicate`` (a turn already
            acted on), ``fenced`` (lease moved before the send), ``errors`` (failed turns
            and tick errors), ``fallbacks`` (turns answered after a provider was left),
            ``acquired`` / ``released`` / ``lost`` (leases).
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
        shard: Shard | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.secrets = secrets
        self.chain = chain
        self.ledger = ledger
        self.market = market
        self.limiter = limiter or TelegramLimiter()
        self.shard = shard
        self.limits: SendLimits = shard.limiter if shard else LocalLimits(self.limiter)
        self.worker_id = worker_id or (shard.leases.worker_id if shard else
                                       new_worker_id(settings.worker_name))
        self.clock = clock
        self.scheduler = Scheduler(seed=settings.seed)
        self.stats: Counter[str] = Counter()
        self._clients: dict[int, BotClient] = {}
        self.reads = reads or CachedReads(settings.make_cache(), sessionmaker)
        # Send times per bot in the last hour, for the hourly budgets (loaded from the
        # database when the bot is taken on: a bot is driven by one worker at a time).
        self._sent: dict[int, deque[datetime]] = defaultdict(deque)
        self._busy: set[int] = set()
        self._in_flight: Counter[int] = Counter()
        self._tasks: set[asyncio.Task[Outcome]] = set()
        self._aps: AsyncIOScheduler | None = None
        self._owns_chain = False
        # Solo mode: fencing tokens of every driven bot (sharded: the leases' tokens).
        self._solo_tokens: dict[int, int] = {}
        # Sharded: reply requests of the held bots, (chat, Telegram message id) → bot → req.
        self._requests: dict[tuple[int, int], dict[int, ReplyRequest]] = {}
        self._floors_held: set[int] = set()  # chats whose floor a turn of ours holds
        self._last_sweep = 0.0
        self._rebalancing = asyncio.Lock()
        self._connecting: set[int] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._redis_down = False
        # The last ring computed: ((live workers, bots, epsilon), the bots it gives us).
        self._ring_memo: tuple[tuple[Any, ...], frozenset[int]] | None = None
        # Turn id → perf_counter() at its decision, until the turn runs (latency figures).
        self._decided: dict[str, float] = {}
        if shard is not None:
            self._release_floor = shard.redis.register_script(_RELEASE_FLOOR)

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
        shard: Shard | None = None,
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
            shard=shard,
        )
        worker._owns_chain = True
        return worker

    def status(self) -> dict[str, Any]:
        """What this worker reports (its heartbeat's info; the API's provider health):
        ``name``, ``bots`` held, ``sent``, ``in_flight`` turns, ``in_flight_full`` /
        ``skipped`` / ``ticks`` counters, and ``providers`` (each provider's breaker state
        and budget left, :meth:`ProviderChain.status`)."""
        return {"name": self.settings.worker_name, "bots": len(self.tokens),
                "sent": self.stats["sent"], "in_flight": len(self._tasks),
                "in_flight_full": self.stats["in_flight_full"],
                "skipped": self.stats["skipped"], "ticks": self.stats["ticks"],
                "providers": self.chain.status()}

    # -- which bots ----------------------------------------------------------------------
    @property
    def tokens(self) -> dict[int, int]:
        """Bot id → fencing token of every bot this worker may drive now."""
        return self.shard.leases.tokens if self.shard else self._solo_tokens

    def driven(self) -> set[int]:
        """The bots this worker drives now (lease held and client connected)."""
        return {b for b in self.tokens if b in self._clients}

    def _lease_valid(self, bot_id: int) -> bool:
        if self.shard is None:
            return bot_id in self._solo_tokens
        return self.shard.leases.valid(bot_id)

    async def _connect(self, bot_ids: Sequence[int]) -> list[int]:
        """Connect the clients of ``bot_ids`` (getMe, :data:`CONNECT_CONCURRENCY` at a time)
        and load their send times; returns those connected. A refused token disables its
        bot."""
        if not bot_ids:
            return []
        cipher = self.secrets.cipher()
        async with self.sessionmaker() as session:
            rows = {b.id: b for b in await bot_store.list_bots(
                session, enabled_only=True, bot_ids=bot_ids)}
        clients = {
            b: BotClient(bot_id=b, token=cipher.decrypt(rows[b].token_encrypted),
                         base_url=self.settings.telegram_api_url)
            for b in bot_ids if b in rows
        }
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def start(client: BotClient) -> None:
            async with gate:
                await client.start()

        results = await asyncio.gather(*(start(c) for c in clients.values()),
                                       return_exceptions=True)
        ok: list[int] = []
        for (bot_id, client), res in zip(clients.items(), results, strict=True):
            if isinstance(res, TelegramInvalidToken):
                log.error("bot %s (@%s): token refused by Telegram; disabled", bot_id,
                          rows[bot_id].username)
                await client.close()
                await self._disable(bot_id, res)
                continue
            if isinstance(res, BaseException):
                log.warning("bot %s: not connected (%s); tried again later", bot_id, res)
                await client.close()
                continue
            self._clients[bot_id] = client
            ok.append(bot_id)
        since = self.clock() - timedelta(hours=1)
        async with self.sessionmaker() as session:
            times = await message_store.bot_send_times(session, since=since, bot_ids=ok)
        wanted = set(ok)
        for b in ok:
            self._sent[b].clear()
        for bot_id, when in times:
            if bot_id in wanted:
                self._sent[bot_id].append(when)
        return ok

    async def _disconnect(self, bot_ids: Sequence[int]) -> None:
        for b in bot_ids:
            client = self._clients.pop(b, None)
            if client is not None:
                await client.close()
        self._report_bots()

    def _report_bots(self) -> None:
        """Set the gauges of bots driven (and, solo, of fencing tokens held)."""
        metrics.BOTS_DRIVEN.set(len(self.driven()))
        if self.shard is None:
            metrics.LEASES_HELD.set(len(self._solo_tokens))

    async def start(self) -> None:
        """Take on the bots (every enabled bot of an enabled chat, or this worker's shard) and
        start ticking.

        A bot whose token Telegram refuses is disabled and logged; the others go on.
        """
        self._write_id_file()
        if self.shard is None:
            await self._sync_solo()
        else:
            # Join first and let workers started together see each other before taking
            # bots, so a fleet starting at once does not hand every bot around.
            try:
                await self.shard.leases.heartbeat({"name": self.settings.worker_name,
                                                   "bots": 0, "sent": 0})
                await asyncio.sleep(min(JOIN_SETTLE_S, self.settings.heartbeat_ttl_s / 3))
            except Exception as exc:
                log.warning("worker %s: first heartbeat failed: %s", self.worker_id, exc)
            await self.rebalance()
        self._aps = AsyncIOScheduler(timezone=UTC)
        self._aps.add_job(
            self.tick, "interval", seconds=self.settings.tick_seconds, max_instances=1,
            coalesce=True, next_run_time=datetime.now(UTC),
        )
        self._aps.add_job(
            self.rebalance, "interval", seconds=self.settings.heartbeat_ttl_s / 3,
            max_instances=1, coalesce=True,
        )
        self._aps.start()
        n = len(self.driven())
        if self.shard is not None:
            log.info("worker %s joined the live set; %d bots being taken on", self.worker_id,
                     len(self._connecting) + n)
        elif n:
            log.info("worker %s started with %d bots", self.worker_id, n)
        else:
            log.warning("worker started with no enabled bot: nothing will be posted")

    def _write_id_file(self) -> None:
        """Write this worker's id for ``botsim worker --check`` (its mtime is the solo
        heartbeat)."""
        path = self.settings.effective_worker_id_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.worker_id + "\n", encoding="utf-8")
        except OSError as exc:
            log.warning("cannot write the worker id file %s: %s", path, exc)

    async def rebalance(self) -> None:
        """One heartbeat: renew the leases, rebuild the ring over the live workers, give up
        the bots no longer ours (once idle) and take the new ones. Never raises.

        Solo (no shard): touches the id file (the heartbeat ``--check`` reads).
        """
        if self.shard is None:
            with contextlib.suppress(OSError):
                self.settings.effective_worker_id_file.touch()
            async with self._rebalancing:
                try:
                    await self._sync_solo()
                except Exception as exc:
                    self.stats["errors"] += 1
                    log.warning("worker %s: reading the bots failed: %s", self.worker_id, exc)
            return
        async with self._rebalancing:
            try:
                await self._rebalance(self.shard)
                if self._redis_down:
                    log.info("worker %s: Redis answers again", self.worker_id)
                self._redis_down = False
            except Exception as exc:
                self.stats["errors"] += 1
                if not self._redis_down:
                    log.warning("worker %s: heartbeat failed (%s); the leases stay valid "
                                "locally for %.1f s", self.worker_id, exc,
                                max(0.0, self.shard.leases.remaining()))
                self._redis_down = True

    async def _sync_solo(self) -> None:
        """Solo mode: drive every enabled bot of an enabled chat. Bots added in the panel
        are connected (and get fencing tokens) at the next heartbeat; bots disabled or
        removed from every chat are let go once idle. Intents an earlier run left are
        reconciled (recorded unknown, never resent)."""
        universe = {b for c in await self.reads.chats() for b in c.bot_ids}
        give_up = [b for b in self._solo_tokens if b not in universe and b not in self._busy]
        if give_up:
            await self._disconnect(give_up)
            for b in give_up:
                del self._solo_tokens[b]
            self.stats["released"] += len(give_up)
            self._report_bots()
        take = sorted(universe - set(self._solo_tokens))
        if not take:
            return
        connected = await self._connect(take)
        if not connected:
            return
        async with self.sessionmaker() as session, session.begin():
            tokens = await turn_store.issue_fencing_tokens(
                session, bot_ids=connected, holder=self.worker_id)
            stale = await turn_store.reconcile(session, tokens=tokens)
        self._solo_tokens.update(tokens)
        self._report_bots()
        self.stats["acquired"] += len(tokens)
        for r in stale:
            metrics.SEND_UNKNOWN.labels(reason="reconciled").inc()
            log.error("turn %s of bot %s: left between intent and outcome by an earlier "
                      "run; recorded unknown, not resent", r.turn_id, r.bot_id)

    async def _rebalance(self, shard: Shard) -> None:
        from behavior_engine.sharding import Ring

        leases = shard.leases
        lost = await leases.renew()
        if lost:
            self.stats["lost"] += len(lost)
            metrics.LEASE_CHANGES.labels(change="lost").inc(len(lost))
            await self._disconnect(sorted(lost))
        await leases.heartbeat(self.status())
        with contextlib.suppress(OSError):
            self.settings.effective_worker_id_file.touch()
        live = await leases.live_workers()
        metrics.WORKERS_LIVE.set(len(live))
        universe = sorted({b for c in await self.reads.chats() for b in c.bot_ids})
        mine: set[int] = set()
        if self.worker_id in live and universe:
            kwargs = {} if shard.ring_epsilon is None else {"epsilon": shard.ring_epsilon}
            key = (tuple(sorted(live)), tuple(universe), shard.ring_epsilon)
            if self._ring_memo is None or self._ring_memo[0] != key:  # same ring: no rehash
                self._ring_memo = (key, frozenset(
                    Ring(live, universe, **kwargs).owned_by(self.worker_id)))
            mine = set(self._ring_memo[1])
        give_up = [b for b in leases.tokens
                   if b not in mine and b not in self._busy and b not in self._connecting]
        if give_up:
            await self._disconnect(give_up)
            await leases.release(give_up)
            self.stats["released"] += len(give_up)
            metrics.LEASE_CHANGES.labels(change="released").inc(len(give_up))
        take = sorted(mine - set(leases.tokens))
        if take:
            won = await leases.acquire(take)
            if won:
                # Connecting (getMe per bot) runs beside the heartbeat, which keeps renewing
                # these leases meanwhile; the bots are driven once connected.
                self._connecting |= set(won)
                task = asyncio.create_task(self._take_on(shard, sorted(won)))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        metrics.LEASES_HELD.set(len(leases.tokens))
        loop_now = time.monotonic()
        if loop_now - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = loop_now
            from backend import keys as rkeys

            lock = rkeys.sweeper_key(leases.namespace)
            if await shard.redis.set(lock, self.worker_id, nx=True, px=int(SWEEP_EVERY_S * 1000)):
                await shard.dispatcher.sweep()

    async def _take_on(self, shard: Shard, won: list[int]) -> None:
        """Connect the bots whose leases were just won, then read the reply requests again
        (those of the new bots included). Bots that did not connect are released."""
        try:
            connected = set(await self._connect(won))
            lost = [b for b in connected if b not in shard.leases.tokens]
            if lost:  # the lease went while connecting
                await self._disconnect(lost)
            failed = [b for b in won if b not in connected and b in shard.leases.tokens]
            if failed:
                await shard.leases.release(failed)
            self.stats["acquired"] += len(connected) - len(lost)
            metrics.LEASE_CHANGES.labels(change="acquired").inc(len(connected) - len(lost))
            self._report_bots()
            self._take_requests(await shard.stream.read_all())
        except Exception:
            self.stats["errors"] += 1
            log.exception("worker %s: taking on %d bots failed", self.worker_id, len(won))
        finally:
            self._connecting -= set(won)

    def _take_requests(self, requests: Sequence[ReplyRequest]) -> None:
        for req in requests:
            key = (req.chat_id, req.line.telegram_message_id)
            self._requests.setdefault(key, {})[req.bot_id] = req

    async def stop(self) -> None:
        """Stop ticking, let running turns finish (10 s at most), leave the live set and
        release the leases, close the bots."""
        if self._aps is not None:
            self._aps.shutdown(wait=False)
            self._aps = None
        if self._background:
            await asyncio.wait(self._background, timeout=10)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self.ledger is not None:
            await self.ledger.flush()
        await self._disconnect(list(self._clients))
        if self.shard is not None:
            try:
                await self.shard.leases.leave()
            except Exception as exc:  # the leases then expire by their TTL
                log.warning("worker %s: could not leave cleanly: %s", self.worker_id, exc)
            await self.shard.redis.aclose()
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
            if self.shard is not None:
                self._take_requests(await self.shard.stream.read_new())
            turns = await self._decide()
        except Exception:
            self.stats["errors"] += 1
            self._decided.clear()  # this tick's decisions are dropped (earlier ones started)
            log.exception("tick failed")
            return
        for turn in turns:
            self._busy.add(turn.bot_id)
            self._in_flight[turn.chat_id] += 1
            task = asyncio.create_task(self.run_turn(turn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _take_floor(self, turn: Turn) -> bool:
        """Sharded: one spontaneous turn at a time per chat across all workers (replies to
        humans do not wait for the floor)."""
        if self.shard is None or turn.reply_message_id is not None:
            return True
        from backend import keys as rkeys

        key = rkeys.floor_key(turn.chat_id, self.shard.leases.namespace)
        try:
            got = await self.shard.redis.set(key, turn.turn_id, nx=True,
                                             px=int(rkeys.FLOOR_TTL_S * 1000))
        except Exception as exc:
            log.debug("floor of chat %s not taken: %s", turn.chat_id, exc)
            return False
        if got:
            self._floors_held.add(turn.chat_id)
        return bool(got)

    async def _give_floor(self, turn: Turn) -> None:
        if self.shard is None or turn.reply_message_id is not None:
            return
        from backend import keys as rkeys

        self._floors_held.discard(turn.chat_id)
        with contextlib.suppress(Exception):
            await self._release_floor(
                keys=[rkeys.floor_key(turn.chat_id, self.shard.leases.namespace)],
                args=[turn.turn_id])

    def _waiting(self, requests: dict[int, list[dict[int, ReplyRequest]]], chat_id: int,
                 history: Sequence[HistoryItem], now: datetime,
                 members: set[int]) -> list[WaitingMessage]:
        if self.shard is None:
            return waiting_messages(history, now)
        out: list[WaitingMessage] = []
        for by_bot in requests.get(chat_id, []):
            bots = tuple(sorted(b for b in by_bot if b in members))
            if bots:
                first = by_bot[bots[0]]
                if (first.line.created_at or now) >= now - HUMAN_WAIT_MAX:
                    out.append(first.waiting(bots))
        return out

    async def _drop_stale_requests(self, now: datetime) -> None:
        if self.shard is None:
            return
        stale = [k for k, by_bot in self._requests.items()
                 if all((r.line.created_at or now) < now - HUMAN_WAIT_MAX
                        for r in by_bot.values())]
        ids: list[str] = []
        for k in stale:
            ids.extend(r.entry_id for r in self._requests.pop(k).values())
        if ids:
            await self.shard.stream.done(ids)

    async def _decide(self) -> list[Turn]:
        now = self.clock()
        sim = await self.reads.settings()
        if not sim.simulation_active:
            return []
        await self._drop_stale_requests(now)
        room_total = self.settings.max_turns_in_flight - len(self._tasks)
        driven = {b for b in self.driven() if self._lease_valid(b)}
        turns: list[Turn] = []
        chats = await self.reads.chats()
        requests: dict[int, list[dict[int, ReplyRequest]]] = {}  # chat → requests, in order
        for (chat_id, _tg), by_bot in sorted(self._requests.items()):
            requests.setdefault(chat_id, []).append(by_bot)
        # Start at a different chat each tick, so a full in-flight limit starves none.
        start = self.stats["ticks"] % len(chats) if chats else 0
        for chat in [*chats[start:], *chats[:start]]:
            if room_total - len(turns) <= 0:
                self.stats["in_flight_full"] += 1
                break
            members = [b for b in chat.bot_ids if b in driven]
            if not members:
                continue
            if chat.id not in requests and self.scheduler.idle_until(chat.id, now) is not None:
                # Nothing due before later: skip building its views, unless (solo) a human
                # message waits in its history for the scheduler to plan replies.
                if self.shard is not None or not any(
                        i.reply_wanted for i in await self.reads.history(chat.id)):
                    continue
            if self.shard is not None and chat.id in self._floors_held and (
                    chat.id not in requests):
                continue  # its floor is ours already: no second spontaneous turn
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
                waiting=self._waiting(requests, chat.id, history, now, set(members)),
                in_flight=self._in_flight[chat.id],
            )
            bot_views = [
                self._bot_view(await self.reads.bot(b), chat.telegram_chat_id, now)
                for b in members
            ]
            for turn in self.scheduler.decide(view, bot_views, sim, now):
                # Only turns that get the chat's floor count against the in-flight room.
                if await self._take_floor(turn):
                    turns.append(turn)
                    self._decided[turn.turn_id] = time.perf_counter()
                else:
                    self.stats["floor_taken"] += 1
        self.stats["turns"] += len(turns)
        metrics.TURNS_DECIDED.inc(len(turns))
        return turns

    def _sent_last_hour(self, bot_id: int, now: datetime) -> int:
        times = self._sent[bot_id]
        while times and times[0] < now - timedelta(hours=1):
            times.popleft()
        return len(times)

    def _bot_view(self, bot: BotProfile, tg_chat_id: int, now: datetime) -> BotView:
        wait = self.limits.wait_time(bot.id, tg_chat_id)
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
            await self._give_floor(turn)
        if outcome.status == "failed":
            self.stats["failed"] += 1
            self.stats["errors"] += 1
        elif outcome.status not in ("sent", "unknown", "duplicate") and (
            turn.reply_to is not None and turn.reply_to.is_human
        ):
            # The human still waits: let the scheduler plan a reply again.
            self.scheduler.forget_handled(turn.chat_id, turn.reply_to.telegram_message_id,
                                          turn.bot_id)
        if outcome.status != "failed":
            self.stats[outcome.status] += 1
        metrics.TURNS.labels(outcome=outcome.status).inc()
        await self._settle_request(turn, outcome)
        return outcome

    async def _settle_request(self, turn: Turn, outcome: Outcome) -> None:
        """Sharded: delete the reply request once acted on (sent, unknown, done before, or
        failed for good: then its message is dispatched again by the sweep)."""
        if self.shard is None or turn.reply_to is None or turn.reply_message_id is None:
            return
        key = (turn.chat_id, turn.reply_to.telegram_message_id)
        by_bot = self._requests.get(key, {})
        req = by_bot.get(turn.bot_id)
        if req is None or outcome.status not in ("sent", "unknown", "duplicate", "failed"):
            return
        by_bot.pop(turn.bot_id, None)
        if not by_bot:
            self._requests.pop(key, None)
        try:
            await self.shard.stream.done([req.entry_id])
            if outcome.status == "failed":
                await self.shard.stream.forget_dispatch(req.message_id)
        except Exception as exc:  # delivered again later: acted on once (turn record)
            log.warning("reply request %s not deleted: %s", req.entry_id, exc)

    async def _context(
        self, turn: Turn, now: datetime
    ) -> tuple[TurnContext, BotProfile, float]:
        bot = await self.reads.bot(turn.bot_id)
        ctx = turn_context(
            bot, await self.reads.history(turn.chat_id), self.market.snapshot(now),
            turn_id=turn.turn_id, topic=turn.topic, chat_id=turn.chat_id,
            seed=self.settings.seed, reply_to=turn.reply_to,
        )
        return ctx, bot, ctx.mood

    async def _finish(self, turn: Turn, status: str, error: str | None = None) -> None:
        async with self.sessionmaker() as session, session.begin():
            await turn_store.finish_turn(session, turn_id=turn.turn_id, status=status,
                                         error=error)

    async def _fenced(self, turn: Turn, exc: FencedOut) -> Outcome:
        """The lease moved: stop driving the bot here; nothing was sent."""
        log.warning("bot %s: %s; this worker stops driving it", turn.bot_id, exc)
        metrics.FENCED_OUT.inc()
        self.stats["fenced"] += 1
        self.tokens.pop(turn.bot_id, None)
        await self._disconnect([turn.bot_id])
        return Outcome(turn=turn, status="skipped", error=str(exc))

    async def _run_turn(self, turn: Turn) -> Outcome:
        decided = self._decided.pop(turn.turn_id, None) or time.perf_counter()
        client = self._clients.get(turn.bot_id)
        token = self.tokens.get(turn.bot_id)
        if client is None or token is None or not self._lease_valid(turn.bot_id):
            return Outcome(turn=turn, status="skipped", error="bot not held")
        t0 = time.perf_counter()
        ctx, bot, mood = await self._context(turn, self.clock())
        request = build_request(ctx)
        metrics.PROMPT_ASSEMBLY.observe(time.perf_counter() - t0)
        # "typing…" shows while the text is generated (as a person types it), so it adds no
        # round trip to the turn; it is awaited before the send, which it must precede.
        typing = asyncio.create_task(client.send_typing(chat_id=turn.telegram_chat_id))
        t_llm = time.perf_counter()
        try:
            result = await self.chain.generate(request, order=ctx.profile.llm_providers)
        finally:
            llm_s = time.perf_counter() - t_llm
            try:
                await typing
            except TelegramError as exc:  # decoration: never worth a lost turn
                log.debug("bot %s: typing not shown: %s", turn.bot_id, exc)
        generation = result.generation
        if result.skipped:
            self.stats["fallbacks"] += 1
        sim = await self.reads.settings()
        wait = await self.limits.try_acquire(turn.bot_id, turn.telegram_chat_id,
                                             chat_cap=sim.max_msgs_per_min)
        waited_s = 0.0
        if wait > 0:
            if wait > MAX_LIMIT_WAIT_S:
                return Outcome(
                    turn=turn, status="skipped", error="Telegram limit", retry_after=wait
                )
            t_wait = time.perf_counter()
            await asyncio.sleep(wait)
            waited_s = time.perf_counter() - t_wait
            if await self.limits.try_acquire(turn.bot_id, turn.telegram_chat_id,
                                             chat_cap=sim.max_msgs_per_min) > 0:
                return Outcome(turn=turn, status="skipped", error="Telegram limit")
        # The intent, under the fencing token: a stale token (the lease moved) writes nothing.
        try:
            async with self.sessionmaker() as session, session.begin():
                fresh = await turn_store.record_intent(
                    session, turn_id=turn.turn_id, bot_id=turn.bot_id, chat_id=turn.chat_id,
                    token=token, worker=self.worker_id,
                    reply_to_message_id=turn.reply_message_id,
                )
        except FencedOut as exc:
            return await self._fenced(turn, exc)
        if not fresh:
            return Outcome(turn=turn, status="duplicate", error="turn already acted on")
        if not self._lease_valid(turn.bot_id):  # paused or cut off past the lease's deadline
            await self._finish(turn, "failed", "lease expired before the send")
            self.stats["fenced"] += 1
            return Outcome(turn=turn, status="skipped", error="lease expired before the send")
        reply_id = turn.reply_to.telegram_message_id if turn.reply_to else None
        try:
            # allow_sending_without_reply: a vanished reply target does not lose the turn.
            sent = await client.send_message(
                chat_id=turn.telegram_chat_id, text=generation.text, reply_to_message_id=reply_id
            )
        except TelegramRetryAfter as exc:
            await self.limits.block(turn.bot_id, exc.retry_after)
            await self._finish(turn, "retry", str(exc))
            log.warning("bot %s: 429, waits %.0f s", turn.bot_id, exc.retry_after)
            return Outcome(turn=turn, status="rate_limited", error=str(exc),
                           retry_after=exc.retry_after)
        except TelegramUnavailable as exc:
            if exc.delivered_unknown:
                await self._finish(turn, "unknown", str(exc))
                metrics.SEND_UNKNOWN.labels(reason="no_answer").inc()
                log.error("turn %s: send outcome unknown (%s); not repeated", turn.turn_id, exc)
                return Outcome(turn=turn, status="unknown", error=str(exc))
            await self._finish(turn, "retry", str(exc))
            return Outcome(turn=turn, status="skipped", error=str(exc))
        except TelegramForbidden as exc:
            await self._finish(turn, "failed", str(exc))
            await self._leave_chat(turn, exc)
            return Outcome(turn=turn, status="failed", error=str(exc))
        except TelegramInvalidToken as exc:
            await self._finish(turn, "failed", str(exc))
            await self._disable(turn.bot_id, exc)
            return Outcome(turn=turn, status="failed", error=str(exc))
        except TelegramError as exc:
            await self._finish(turn, "failed", str(exc))
            return Outcome(turn=turn, status="failed", error=str(exc))
        except BaseException as exc:  # cancelled mid-send: the request may have gone out
            with contextlib.suppress(Exception):
                await self._finish(turn, "unknown", repr(exc))
            metrics.SEND_UNKNOWN.labels(reason="interrupted").inc()
            raise
        answered = time.perf_counter()
        timing = Timing(sent_at=utcnow(), latency_s=answered - decided, llm_s=llm_s,
                        wait_s=waited_s)
        metrics.TURN_LATENCY.observe(timing.latency_s)
        metrics.TURN_OVERHEAD.observe(timing.latency_s - llm_s)
        await self._record(turn, bot, sent, generation.text, generation.provider,
                           generation.model, reply_id, mood, timing)
        return Outcome(turn=turn, status="sent", telegram_message_id=sent.message_id)

    async def _record(
        self, turn: Turn, bot: BotProfile, sent: SentMessage, text: str, provider: str,
        model: str | None, reply_id: int | None, mood: float, timing: Timing,
    ) -> None:
        """Store the sent message, its turn's outcome, the answered flag and the mood in one
        transaction, then add it to the chat's cached history."""
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
                                 sender_is_bot=True, sender_username=bot.username,
                                 sent_at=timing.sent_at,
                                 latency_ms=round(timing.latency_s * 1000, 3),
                                 llm_ms=round(timing.llm_s * 1000, 3),
                                 wait_ms=round(timing.wait_s * 1000, 3)),
                created_at=when,
                reply_to_telegram_message_id=reply_id,
            )
            await turn_store.finish_turn(session, turn_id=turn.turn_id, status="sent",
                                         telegram_message_id=sent.message_id)
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
        await self._disconnect([bot_id])


@dataclass(frozen=True, slots=True)
class Timing:
    """A sent turn's timing (stored in its message's meta; the load test's latencies).

    Attributes:
        sent_at: when Telegram's answer arrived (UTC).
        latency_s: from the turn's decision to Telegram's answer, seconds.
        llm_s: of which generating the text; wait_s: of which waiting for a Telegram limit.
    """

    sent_at: datetime
    latency_s: float
    llm_s: float
    wait_s: float


def check(settings: Settings) -> int:
    """``botsim worker --check``: 0 if this worker's heartbeat is fresh, 1 if not.

    The worker's id is read from ``settings.effective_worker_id_file``. With Redis, fresh
    means its heartbeat key exists (it lives ``heartbeat_ttl_s``); without, that the id
    file was touched within ``heartbeat_ttl_s``. Prints one line saying which.
    """
    path = settings.effective_worker_id_file
    try:
        worker_id = path.read_text(encoding="utf-8").strip()
        age = time.time() - path.stat().st_mtime
    except OSError as exc:
        print(f"unhealthy: no worker id file {path}: {exc.strerror or exc}")
        return 1
    if not settings.redis_url:
        if age <= settings.heartbeat_ttl_s:
            print(f"healthy: worker {worker_id}, heartbeat {age:.1f} s ago")
            return 0
        print(f"unhealthy: worker {worker_id}, last heartbeat {age:.1f} s ago")
        return 1
    import redis

    from backend import keys as rkeys

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        ttl_ms = client.pttl(rkeys.worker_key(worker_id, settings.redis_namespace))
    except redis.RedisError as exc:
        print(f"unhealthy: Redis unreachable: {exc}")
        return 1
    finally:
        client.close()
    if isinstance(ttl_ms, int) and ttl_ms > 0:
        print(f"healthy: worker {worker_id}, heartbeat expires in {ttl_ms / 1000:.1f} s")
        return 0
    print(f"unhealthy: worker {worker_id} has no heartbeat in Redis")
    return 1


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
    reads = CachedReads(cache, sessionmaker)
    shard = Shard.build(settings, reads, sessionmaker) if settings.redis_url else None
    worker = Worker.assemble(settings=settings, sessionmaker=sessionmaker, secrets=secrets,
                             reads=reads, shard=shard)
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

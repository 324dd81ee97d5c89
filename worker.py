"""The worker process: drives the bots it holds, one scheduler tick at a time.

Each tick (``Settings.tick_seconds``, on the monotonic clock:
:mod:`behavior_engine.periodic`) the worker asks its
:class:`~behavior_engine.planner.TurnPlanner` which turns are due and runs each as a task
through the :class:`~behavior_engine.pipeline.TurnPipeline` (prompt, generation, Telegram's
limits, the intent under the bot's fencing token, the send, one commit). Every
``heartbeat_ttl_s / 3`` its :class:`~behavior_engine.membership.Membership` says which bots
it holds: all enabled bots (one worker, no Redis) or its shard of them (``REDIS_URL``:
leases over a consistent-hash ring, the reply stream, shared limits). Failures never crash
the worker: they end a turn (see :mod:`behavior_engine.pipeline`) or a heartbeat.

``botsim worker`` runs :func:`serve`; ``botsim worker --check`` runs :func:`check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import logcontext, metrics
from backend.crypto import Secrets
from backend.db.types import utcnow
from backend.schemas import ProviderSettings
from backend.settings import Settings
from backend.stores import messages as message_store
from behavior_engine.clients import BotClients, HeldBots
from behavior_engine.events import EventBook
from behavior_engine.llm.chain import ProviderChain
from behavior_engine.llm.ledger import Ledger
from behavior_engine.market import MarketFeed
from behavior_engine.membership import Membership, membership_for, membership_kind
from behavior_engine.periodic import Periodic
from behavior_engine.pipeline import TurnPipeline
from behavior_engine.planner import TurnPlanner
from behavior_engine.reads import CachedReads
from behavior_engine.recall import MemoryKeeper, chain_generator
from behavior_engine.records import StoreTurnRecords
from behavior_engine.safety import load_rules
from behavior_engine.scheduler import Scheduler
from behavior_engine.turn import Outcome, Turn
from bots.ratelimit import TelegramLimiter

log = logging.getLogger("botsim.worker")

#: Seconds :meth:`Worker.stop` lets running turns and bot connections finish before it
#: cancels them (a cancelled send is recorded ``unknown``, never left an ``intent``).
STOP_GRACE_S = 10.0
#: How often the retention job runs (``Settings.retention_days``), seconds.
RETENTION_EVERY_S = 3600.0
#: Seconds between two runs of the reflection job (:meth:`Worker.reflect`).
REFLECT_EVERY_S = 60.0
#: How often the profile job runs (:meth:`Worker.refresh_profiles`); each run reads again
#: one :data:`PROFILES_SLICES`-th of the driven bots' profiles, so each is read every
#: 240 s, within the cache's L2 lifetime (``backend.keys.L2_TTL_S``, 600 s): the entries
#: the turns use never expire one by one, a query each (10,000 bots: 1,000 queries a
#: minute). In slices, as all 2,500 of a worker's bots at once held its event loop for about
#: a second (run (c) at 1,573 msg/min: that 500-message stretch's overhead p99 1.2 s).
PROFILES_EVERY_S = 30.0
PROFILES_SLICES = 8
#: Event loop lag (how late a 0.25-s probe wakes, :data:`LAG_PROBE_S`) above which a
#: worker is overloaded and sheds chatter (issue 20). The loop's lag, not the tick's: a tick
#: that waited on Redis or the database (an outage) is slow without the worker being busy,
#: and shedding then slowed the chaos test's takeover (10 s against 4-6 s).
SHED_LAG_S = 0.5
#: Ticks in a row whose lag must pass :data:`SHED_LAG_S` before chatter is shed: a lone
#: spike (a fault, a burst of work) sheds nothing.
SHED_SUSTAIN = 3
#: Period of the event loop lag probe, seconds.
LAG_PROBE_S = 0.25
#: Share of ``max_turns_in_flight`` in flight at which a worker sheds chatter, so answers
#: to people keep the room that is left.
SHED_IN_FLIGHT = 0.9


class Worker:
    """Drives the bots its membership holds.

    Args:
        settings: process settings (``tick_seconds``, ``telegram_api_url``, ``seed``,
            ``max_turns_in_flight``, ``heartbeat_ttl_s``, ``worker_name``).
        sessionmaker: database sessions.
        secrets: the Fernet key that decrypts bot tokens.
        chain: the provider chain (offline generator last).
        market: the market feed (holdings P&L → mood).
        ledger: the chain's recorder, flushed every tick and on stop (None: no ledger).
        limiter: Telegram's limits in this process (in-process membership only).
        clock: aware UTC now (injectable for tests).
        reads: the cached reads (default: the settings' cache over ``sessionmaker``).
        membership: which bots this worker holds (default: :func:`membership_for` the
            settings, on ``redis`` if given; closed by :meth:`stop`).

    Attributes:
        stats: counters: ``ticks``, ``turns``, ``sent``, ``rate_limited``, ``failed``,
            ``unknown`` (send outcome unknown, not repeated), ``duplicate`` (a turn already
            acted on), ``fenced`` (lease moved before the send), ``errors`` (failed turns
            and tick errors), ``fallbacks`` (turns answered after a provider was left),
            ``acquired`` / ``released`` / ``lost`` (bots held).
    """

    def __init__(
        self, *, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession],
        secrets: Secrets, chain: ProviderChain, market: MarketFeed,
        ledger: Ledger | None = None, limiter: TelegramLimiter | None = None,
        clock: Callable[[], datetime] = utcnow, reads: CachedReads | None = None,
        membership: Membership | None = None, redis: Any = None,
    ) -> None:
        self.settings = settings
        self.chain = chain
        self.ledger = ledger
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self.sessionmaker = sessionmaker
        self.reads = reads or CachedReads(settings.make_cache(), sessionmaker)
        self.membership = membership or membership_for(
            settings, self.reads, sessionmaker, limiter=limiter, stats=self.stats, redis=redis)
        self.worker_id = self.membership.worker_id
        self.records = StoreTurnRecords(sessionmaker, self.reads.cache, ledger=ledger)
        self.clients = BotClients(sessionmaker, secrets, settings.telegram_api_url,
                                  on_refused=self.records.disable_bot)
        self.scheduler = Scheduler(seed=settings.seed, lookahead_s=settings.tick_seconds)
        #: the world events, applied to ``market`` (read when the cache says an event was
        #: stored; without Redis, at most every ``behavior_engine.events.REFRESH_S`` s)
        self.events = EventBook(market)
        self.planner = TurnPlanner(scheduler=self.scheduler, reads=self.reads,
                                   membership=self.membership, clients=self.clients,
                                   clock=clock, stats=self.stats, events=self.events)
        self.held = HeldBots(self.membership, self.clients)
        self.pipeline = TurnPipeline(
            chain=chain, limits=self.membership.limits, records=self.records,
            reads=self.reads, market=market, holder=self.held, worker_id=self.worker_id,
            seed=settings.seed, clock=clock, stats=self.stats, on_sent=self.clients.sent,
            safety_rules=load_rules(settings.safety_rules), events=self.events,
            memory=MemoryKeeper(self.records))
        self._reflections = chain_generator(chain, market, seed=settings.seed, clock=clock)
        self._expired_at: datetime | None = None
        # bot → due times of its turns running (None: a turn with no due time, e.g. an
        # answer to a human): a bot with one slot turn running may be given its next slot
        # (TurnPlanner.decide), so its next line is written while the last one is typed
        self._busy: dict[int, list[datetime | None]] = {}
        self._in_flight: Counter[int] = Counter()
        self._tasks: set[asyncio.Task[Outcome]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._connecting: set[int] = set()
        self._rebalancing = asyncio.Lock()
        self._ticking = asyncio.Lock()  # held by a running tick
        self._reflecting: asyncio.Task[Any] | None = None  # a running reflection job
        self._probe_at: float | None = None  # monotonic time of the lag probe's last run
        self._lag_s = 0.0  # the largest event loop lag seen since the last tick
        self._lagging = 0  # ticks in a row with the lag over SHED_LAG_S
        self._profile_slice = 0  # the profile job's last slice
        self._periodic: Periodic | None = None
        self._owns_chain = False
        self._stopping = False
        self.stop_grace_s = STOP_GRACE_S

    @classmethod
    def assemble(
        cls, *, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession],
        secrets: Secrets, reads: CachedReads,
        providers: Sequence[ProviderSettings] | None = None,
        market_start: datetime | None = None, redis: Any = None,
    ) -> Worker:
        """A worker with its provider chain (``providers``, default: the settings' chain;
        offline last) and cost ledger; :meth:`stop` closes the chain's clients too."""
        from behavior_engine.llm.factory import build_chain

        ledger = Ledger(sessionmaker, settings.llm_prices)
        chosen = settings.llm_providers if providers is None else providers
        worker = cls(settings=settings, sessionmaker=sessionmaker, secrets=secrets,
                     chain=build_chain(list(chosen), recorder=ledger), ledger=ledger,
                     market=MarketFeed(seed=settings.seed, start=market_start or utcnow()),
                     reads=reads, redis=redis)
        worker._owns_chain = True
        return worker

    def status(self) -> dict[str, Any]:
        """What this worker reports (its heartbeat's info; the API's provider health):
        ``name``, ``bots`` held, ``sent``, ``in_flight`` turns, ``in_flight_full`` /
        ``skipped`` / ``ticks`` / ``overloaded`` (ticks that shed chatter) /
        ``chatter_shed`` counters, ``providers`` (each provider's breaker state
        and budget left, :meth:`ProviderChain.status`) and ``guards`` (what the text guards
        did: ``"repeat:passed"``, ``"safety:links"``... → count,
        :attr:`TurnPipeline.guard_counts`)."""
        return {"name": self.settings.worker_name, "bots": len(self.membership.tokens),
                "sent": self.stats["sent"], "in_flight": len(self._tasks),
                "in_flight_full": self.stats["in_flight_full"],
                "skipped": self.stats["skipped"], "ticks": self.stats["ticks"],
                "overloaded": self.stats["overloaded"],
                "chatter_shed": self.stats["chatter_shed"],
                "providers": self.chain.status(),
                "guards": dict(sorted(self.pipeline.guard_counts.items()))}

    def driven(self) -> set[int]:
        """The bots this worker drives now (held and connected)."""
        return self.held.driven()

    # -- start, heartbeat, stop -----------------------------------------------------------
    async def start(self) -> None:
        """Join, take on this worker's bots and start ticking. A bot whose token Telegram
        refuses is disabled and logged; the others go on. From here on, the log lines of
        this task and of those it starts (ticks, heartbeats, turns) carry the worker's id."""
        logcontext.update(worker_id=self.worker_id)
        self._write_id_file()
        await self.membership.join({"name": self.settings.worker_name, "bots": 0, "sent": 0})
        await self.rebalance()
        # On the monotonic clock: a step of the wall clock neither stalls nor rushes them
        # (behavior_engine.periodic).
        self._periodic = Periodic()
        self._periodic.add(self.tick, self.settings.tick_seconds, first_in_s=0.0)
        self._periodic.add(self.rebalance, self.settings.heartbeat_ttl_s / 3)
        self._periodic.add(self.reflect, REFLECT_EVERY_S)
        self._periodic.add(self.refresh_profiles, PROFILES_EVERY_S)
        self._periodic.add(self._probe_lag, LAG_PROBE_S)
        if self.settings.retention_days is not None:
            self._periodic.add(self.apply_retention, RETENTION_EVERY_S, first_in_s=0.0)
        self._periodic.start()
        if self._background:  # the first bots, connected while the heartbeat runs
            await asyncio.wait(set(self._background))
        log.log(logging.INFO if self.driven() else logging.WARNING,
                "worker %s started with %d bots", self.worker_id, len(self.driven()))

    async def refresh_profiles(self) -> int:
        """The profile job: read the next slice (one :data:`PROFILES_SLICES`-th) of the
        driven bots' profiles again in bulk (:meth:`CachedReads.bots` with ``refresh``: a
        query per 100 bots), restarting their cache lifetimes. Returns how many were read;
        never raises (the next run retries, and a turn reads its bot anyway)."""
        if self._stopping:
            return 0
        self._profile_slice = (self._profile_slice + 1) % PROFILES_SLICES
        part = sorted(self.driven())[self._profile_slice::PROFILES_SLICES]
        try:
            return len(await self.reads.bots(part, refresh=True))
        except Exception as exc:  # a job: the next run tries again
            log.warning("profiles: not read again this time (%s)", type(exc).__name__)
            return 0

    async def apply_retention(self) -> int:
        """Anonymise people's messages older than ``Settings.retention_days`` (the hourly
        job; every worker runs it, and it is idempotent). Returns how many were anonymised;
        0 when no retention is set. Errors are logged, never raised (the next run retries).
        """
        days = self.settings.retention_days
        if days is None:
            return 0
        try:
            async with self.sessionmaker() as session, session.begin():
                done = await message_store.anonymise_people(
                    session, before=utcnow() - timedelta(days=days))
        except Exception as exc:  # a job: the next run tries again
            log.warning("retention: not applied this time (%s)", type(exc).__name__)
            return 0
        if done:
            log.info("retention: %d people's messages older than %d days anonymised", done,
                     days)
        return done

    async def reflect(self) -> int:
        """The reflection job: a few driven bots whose memories call for it draw a
        reflection through the provider chain (:meth:`MemoryKeeper.reflect_due`), and
        expired reflections are deleted hourly. Returns how many were drawn; never raises.
        """
        if self._stopping:
            return 0
        now = self.clock()
        memory = self.pipeline.memory
        self._reflecting = asyncio.current_task()
        try:
            due = memory.due(sorted(self.driven()), now)
            bots = [await self.reads.bot(b) for b in due]
            drawn = await memory.reflect_due(bots, self._reflections, now)
            if self._expired_at is None or now - self._expired_at >= timedelta(hours=1):
                self._expired_at = now
                await self.records.expire_reflections(now)
        except Exception as exc:  # a job: the next run tries again
            log.warning("reflections: not drawn this time (%s)", type(exc).__name__)
            return 0
        except asyncio.CancelledError:
            if self._stopping:  # stop() cut it short: the job ends quietly
                return 0
            raise
        finally:
            self._reflecting = None
        return drawn

    def _write_id_file(self) -> None:
        """Write this worker's id for ``botsim worker --check`` (its mtime is the heartbeat
        without Redis)."""
        path = self.settings.effective_worker_id_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.worker_id + "\n", encoding="utf-8")
        except OSError as exc:
            log.warning("cannot write the worker id file %s: %s", path, exc)

    async def rebalance(self) -> None:
        """One heartbeat: touch the id file, let the membership say which bots are this
        worker's, let go of the others (once idle) and connect the new ones beside the
        heartbeat (which keeps their leases meanwhile). Never raises."""
        with contextlib.suppress(OSError):
            self.settings.effective_worker_id_file.touch()
        async with self._rebalancing:
            try:
                universe = {b for c in await self.reads.chats() for b in c.bot_ids}
                change = await self.membership.rebalance(
                    universe, set(self._busy) | self._connecting, self.status())
                self.membership.outage(None)
            except Exception as exc:
                self.stats["errors"] += 1
                self.membership.outage(exc)
                return
            if change.lost or change.released:
                await self.held.disconnect([*change.lost, *change.released])
                self.pipeline.forget([*change.lost, *change.released])
            if change.won and not self._stopping:
                self._connecting |= set(change.won)
                task = asyncio.create_task(self._take_on(change.won))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _take_on(self, won: list[int]) -> None:
        """Connect the bots just won and confirm them (those not held by then are closed),
        then warm the cache with their profiles and refill their memory streams, in bulk
        (:meth:`CachedReads.bots` and :meth:`MemoryKeeper.prefill`: a few statements per
        hundreds of bots, where each bot's first turn read its own). After the confirm, so
        a slow read (Redis or the database in trouble) never delays a takeover; a bot whose
        turn comes first refills its own stream (the prefill leaves it)."""
        try:
            connected = await self.clients.connect(won, self.clock())
            held = set(await self.membership.confirm(won, connected))
            await self.held.disconnect([b for b in connected if b not in held])
            taken = [b for b in connected if b in held]
            metrics.BOTS_DRIVEN.set(len(self.driven()))  # driven from here on
            try:
                await self.reads.bots(taken)
            except Exception as exc:  # a warm-up only: each turn reads its bot anyway
                log.warning("worker %s: profiles of %d bots not read in bulk (%s)",
                            self.worker_id, len(taken), type(exc).__name__)
            await self.pipeline.memory.prefill(taken, self.clock())
        except Exception:
            self.stats["errors"] += 1
            log.exception("worker %s: taking on %d bots failed", self.worker_id, len(won))
        finally:
            self._connecting -= set(won)
            metrics.BOTS_DRIVEN.set(len(self.driven()))

    async def stop(self) -> None:
        """Stop ticking, let running turns finish (:attr:`stop_grace_s`, default
        :data:`STOP_GRACE_S`), then cancel what is left and wait for it, so a send cut off
        mid-flight is recorded ``unknown`` while the database is still open (an ``intent``
        left behind would be reconciled only by the bot's next holder). Then leave (the
        bots are given up), close the clients and what the worker opened.

        A tick already running when ``stop`` starts launches no turn (:meth:`tick`)."""
        self._stopping = True
        periodic, self._periodic = self._periodic, None
        if periodic is not None:  # no run starts from now on
            periodic.stop()
        if self._reflecting is not None:  # an LLM call may take long: it is cut short
            self._reflecting.cancel()
            await asyncio.wait({self._reflecting}, timeout=self.stop_grace_s)
        try:  # a running tick ends (it launches no turn once stopping)
            await asyncio.wait_for(self._ticking.acquire(), self.stop_grace_s)
            self._ticking.release()
        except TimeoutError:
            log.warning("worker %s: a tick still running after %.0f s is left behind",
                        self.worker_id, self.stop_grace_s)
        await _finish(self._background, self.stop_grace_s, "bot connections")
        await _finish(self._tasks, self.stop_grace_s, "turns")
        if periodic is not None:
            await periodic.join(self.stop_grace_s)
        if self.ledger is not None:
            await self.ledger.flush()
        async with self._rebalancing:  # a heartbeat running now ends first
            await self.held.disconnect(self.clients.ids())
            await self.clients.close()  # the bots' shared HTTP pool
            await self.membership.leave()
            await self.membership.close()
        if self._owns_chain:
            from behavior_engine.llm.factory import close_chain

            await close_chain(self.chain)

    # -- the tick and its turns -----------------------------------------------------------
    async def tick(self) -> None:
        """Decide and launch the turns due now. Never raises (errors are counted).
        :meth:`stop` waits for a tick that is running."""
        if self._stopping:
            return
        async with self._ticking:
            await self._tick()

    async def _tick(self) -> None:
        self.stats["ticks"] += 1
        metrics.EVENT_LOOP_TASKS.set(len(asyncio.all_tasks()))
        if self.ledger is not None:
            await self.ledger.flush_due()
        try:
            # With Redis, the cache says when there is news (an invalidation from whoever
            # stored it); without, the database is asked every REFRESH_S seconds.
            latest = await self.reads.latest_event_id() if self.reads.cache.redis_up else None
            for event in await self.events.refresh(self.sessionmaker, latest=latest):
                log.info("world event %d at %s: %s", event.id, event.at.isoformat(),
                         event.headline)
        except Exception as exc:  # the engine goes on with the events it knows
            self.stats["errors"] += 1
            log.warning("world events not read this tick (%s)", type(exc).__name__)
        try:
            await self.membership.poll()
            driven = {b for b in self.driven() if self.membership.valid(b)}
            turns = await self.planner.decide(
                driven=driven, busy=self._busy_until(), in_flight=self._in_flight,
                room=self.settings.max_turns_in_flight - len(self._tasks),
                tick=self.stats["ticks"], shed_chatter=self._overloaded())
        except Exception:
            self.stats["errors"] += 1
            log.exception("tick failed")
            return
        if self._stopping:  # stop() began while this tick decided: its turns are not run
            return
        for turn in turns:
            self._busy.setdefault(turn.bot_id, []).append(_slot_due(turn))
            self._in_flight[turn.chat_id] += 1
            task = asyncio.create_task(self.run_turn(turn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _probe_lag(self) -> None:
        """The lag probe (every :data:`LAG_PROBE_S`): how much later than its period it
        runs is the event loop's lag (the probe itself does nothing else); the largest
        since the last tick is kept for :meth:`_overloaded`."""
        now = time.monotonic()
        if self._probe_at is not None:
            self._lag_s = max(self._lag_s, now - self._probe_at - LAG_PROBE_S)
        self._probe_at = now

    def _overloaded(self) -> bool:
        """Whether this tick sheds chatter (:meth:`TurnPlanner.decide`'s ``shed_chatter``):
        the event loop lagged more than :data:`SHED_LAG_S` before each of the last
        :data:`SHED_SUSTAIN` ticks (:meth:`_probe_lag`), or the turns in flight fill
        :data:`SHED_IN_FLIGHT` of the room. Sets ``botsim_tick_lag_seconds`` (that lag);
        counts ``stats["overloaded"]`` and ``botsim_overloaded_ticks_total``."""
        lag, self._lag_s = max(0.0, self._lag_s), 0.0
        metrics.TICK_LAG.set(lag)
        self._lagging = self._lagging + 1 if lag > SHED_LAG_S else 0
        over = (self._lagging >= SHED_SUSTAIN
                or len(self._tasks) >= SHED_IN_FLIGHT * self.settings.max_turns_in_flight)
        if over:
            self.stats["overloaded"] += 1
            metrics.OVERLOADED_TICKS.inc()
        return over

    def _busy_until(self) -> dict[int, datetime | None]:
        """Bot → the due time of its one running slot turn, or None when it runs a turn
        without one (an answer to a human) or more than one (it takes no other turn)."""
        return {b: (dues[0] if len(dues) == 1 else None) for b, dues in self._busy.items()}

    async def run_turn(self, turn: Turn) -> Outcome:
        """Carry out one turn (:class:`TurnPipeline`). Never raises but when cancelled."""
        try:
            outcome = await self.pipeline.run(turn, decided=self.planner.started(turn))
        except Exception as exc:
            log.exception("turn %s of bot %s failed", turn.turn_id, turn.bot_id)
            outcome = Outcome(turn=turn, status="failed", error=repr(exc))
        finally:
            dues = self._busy.get(turn.bot_id, [])
            if (due := _slot_due(turn)) in dues:
                dues.remove(due)
            if not dues:
                self._busy.pop(turn.bot_id, None)
            self._in_flight[turn.chat_id] -= 1
            await self.membership.give_floor(turn)
        if outcome.status == "failed":
            self.stats["errors"] += 1
        elif outcome.status not in ("sent", "unknown", "duplicate") and (
                turn.reply_to is not None and turn.reply_to.is_human):
            # The human still waits: let the scheduler plan a reply again.
            self.scheduler.forget_handled(turn.chat_id, turn.reply_to.telegram_message_id,
                                          turn.bot_id)
        self.stats[outcome.status] += 1
        metrics.TURNS.labels(outcome=outcome.status).inc()
        await self.membership.settle(turn, outcome)
        return outcome


def _slot_due(turn: Turn) -> datetime | None:
    """A spontaneous (slot) turn's due time; None for an answer to a human."""
    return turn.not_before if turn.reply_message_id is None else None


async def _finish(tasks: set[asyncio.Task[Any]], grace_s: float, what: str) -> None:
    """Wait up to ``grace_s`` seconds for ``tasks`` (a live set: tasks started meanwhile
    count too), then cancel the rest and wait until their cancellation handlers ran."""
    deadline = time.monotonic() + grace_s
    while tasks and (left := deadline - time.monotonic()) > 0:
        await asyncio.wait(set(tasks), timeout=left)
    pending = set(tasks)
    if not pending:
        return
    log.warning("stopping: %d %s still running after %.0f s; cancelled", len(pending), what,
                grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def check(settings: Settings) -> int:
    """``botsim worker --check``: 0 if this worker's heartbeat is fresh, 1 if not.

    The worker's id is read from ``settings.effective_worker_id_file``; what fresh means is
    the membership's (:meth:`InProcessMembership.check`, :meth:`SharedMembership.check`).
    Prints one line saying which.
    """
    path = settings.effective_worker_id_file
    try:
        worker_id = path.read_text(encoding="utf-8").strip()
        age = time.time() - path.stat().st_mtime
    except OSError as exc:
        print(f"unhealthy: no worker id file {path}: {exc.strerror or exc}")
        return 1
    healthy, why = membership_kind(settings).check(settings, worker_id, age)
    print(f"{'healthy' if healthy else 'unhealthy'}: {why}")
    return 0 if healthy else 1


async def serve(settings: Settings, secrets: Secrets) -> None:
    """Run one worker until cancelled (:func:`botsim.bootstrap.runtime`, then tick).

    Raises:
        ConfigError, StorageError: when the database or the secrets are unusable.
    """
    from backend.metrics import init_series, serve_metrics
    from botsim.bootstrap import runtime

    init_series("worker")
    async with runtime(settings, pre_ping=False) as rt:  # the hot path (make_engine)
        if settings.metrics_port is not None:
            serve_metrics(settings.listener_host, settings.metrics_port)
        worker = Worker.assemble(settings=settings, sessionmaker=rt.sessionmaker,
                                 secrets=secrets, reads=rt.reads, redis=rt.redis)
        await worker.start()
        try:
            await asyncio.Event().wait()
        finally:
            await worker.stop()

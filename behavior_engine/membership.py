"""Which bots this worker holds, and how human messages reach it: one interface, two kinds.

:class:`Membership` is chosen once at start-up (:func:`membership_for`):

* :class:`InProcessMembership`: one worker, no Redis. It holds every enabled bot of an
  enabled chat under fencing tokens from the database, reads waiting human messages from
  the chats' history, and enforces Telegram's limits in this process.
* :class:`SharedMembership`: many workers over Redis. A heartbeat key with a TTL lists the
  live workers; the consistent-hash ring (:mod:`behavior_engine.sharding`) gives each its
  bots, held under leases (:mod:`behavior_engine.leases`); human messages arrive on the
  reply stream (:mod:`behavior_engine.replies`); one spontaneous turn at a time per chat
  across workers (the chat's floor); Telegram's limits are Redis token buckets.

The worker calls the same methods on either, in this order: :meth:`~Membership.join` once,
:meth:`~Membership.rebalance` every heartbeat (then connects the bots won and
:meth:`~Membership.confirm` s them), :meth:`~Membership.poll` every tick,
:meth:`~Membership.leave` at the end. The same contract tests run against both
(``tests/integration/test_membership.py``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import keys as rkeys
from backend import metrics
from backend.outage import Outage
from backend.redis_client import make_redis
from backend.settings import Settings
from backend.stores import turns as turn_store
from behavior_engine.context import to_line
from behavior_engine.leases import Leases, new_worker_id
from behavior_engine.pipeline import LocalLimits, SendLimits
from behavior_engine.reads import CachedReads, HistoryItem
from behavior_engine.replies import ReplyDispatcher, ReplyRequest, ReplyStream
from behavior_engine.scheduler import HUMAN_WAIT_MAX, WaitingMessage
from behavior_engine.turn import Outcome, Turn
from bots.ratelimit import SharedLimiter, TelegramLimiter

log = logging.getLogger("botsim.membership")

#: A new worker waits this long (at most a third of the heartbeat TTL) between joining the
#: live set and taking bots (seconds).
JOIN_SETTLE_S = 1.0
#: The reply sweep runs at most this often across all workers (seconds).
SWEEP_EVERY_S = 15.0

#: Release a chat's floor only if this turn still holds it (KEYS[1] floor, ARGV[1] turn id).
RELEASE_FLOOR_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class Rebalance:
    """What a heartbeat changed: ``lost`` (leases gone: stop now), ``released`` (given up),
    ``won`` (to connect, then :meth:`Membership.confirm`)."""

    lost: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    won: list[int] = field(default_factory=list)


def waiting_messages(history: Sequence[HistoryItem], now: datetime) -> list[WaitingMessage]:
    """Human messages of ``history`` (oldest first) that want an answer none of our bots has
    given yet, at most ``HUMAN_WAIT_MAX`` old at ``now`` (aware UTC)."""
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


class Membership(Protocol):
    """The bots this worker holds and the human messages addressed to them.

    Attributes:
        worker_id: this worker's id.
        limits: Telegram's send limits as this kind shares them.
        tokens: bot id → fencing token of every bot held now.
    """

    worker_id: str
    limits: SendLimits

    @property
    def tokens(self) -> dict[int, int]:
        """Bot id → fencing token of every bot held now."""

    def valid(self, bot_id: int) -> bool:
        """True while this worker may act for ``bot_id`` (held, lease not expired)."""

    async def join(self, status: Mapping[str, Any]) -> None:
        """Enter the set of workers (``status``: the worker's report). Never raises."""

    async def rebalance(self, universe: Collection[int], keep: Collection[int],
                        status: Mapping[str, Any]) -> Rebalance:
        """One heartbeat over the bots ``universe`` (every enabled bot of an enabled chat):
        give up the bots no longer this worker's, except those in ``keep`` (busy); say which
        to take on. Raises when the shared state cannot be reached (held bots stay valid
        until their leases expire)."""

    def outage(self, exc: BaseException | None) -> None:
        """Note a heartbeat that failed with ``exc`` (logged) or succeeded (None)."""

    async def confirm(self, won: Sequence[int], connected: Sequence[int]) -> list[int]:
        """After connecting: the bots of ``won`` now held and driven (a subset of
        ``connected``); those not connected are given up."""

    def forget(self, bot_id: int) -> None:
        """Stop holding ``bot_id`` here at once (fenced out, or its token refused)."""

    async def leave(self) -> None:
        """Give up every bot and leave the set of workers (a clean stop). Never raises."""

    async def poll(self) -> None:
        """Take the human messages addressed to the bots held since the last poll."""

    async def wants_reply(self, chat_id: int) -> bool:
        """True when a human message of ``chat_id`` may wait for a held bot's answer."""

    def waiting(self, chat_id: int, history: Sequence[HistoryItem], now: datetime,
                members: Collection[int]) -> list[WaitingMessage]:
        """The human messages of ``chat_id`` the held ``members`` should answer."""

    async def drop_stale(self, now: datetime) -> None:
        """Forget human messages too old to answer at ``now``."""

    async def settle(self, turn: Turn, outcome: Outcome) -> None:
        """A reply turn ended: its request is done (or handed back)."""

    def floor_held(self, chat_id: int) -> bool:
        """True while a spontaneous turn of this worker holds ``chat_id``'s floor."""

    async def take_floor(self, turn: Turn) -> bool:
        """Take the floor of ``turn``'s chat (False: another turn has it)."""

    async def give_floor(self, turn: Turn) -> None:
        """Give back the floor ``turn`` took. Never raises."""

    async def close(self) -> None:
        """Close what this membership opened (its Redis client)."""


class InProcessMembership:
    """One worker drives every enabled bot of an enabled chat, without Redis.

    Fencing tokens come from the database (:func:`backend.stores.turns.issue_fencing_tokens`);
    intents an earlier run left are reconciled (``unknown``, never resent). Human messages
    wait in the chats' history (``reply_wanted``).

    Args:
        reads: the cached reads (chat histories).
        sessionmaker: database sessions (fencing tokens).
        worker_id: this worker's id.
        limiter: Telegram's limits in this process (default: a new one).
        stats: counters updated in place: ``acquired``, ``released``.
    """

    def __init__(self, reads: CachedReads, sessionmaker: async_sessionmaker[AsyncSession],
                 worker_id: str, *, limiter: TelegramLimiter | None = None,
                 stats: Counter[str] | None = None) -> None:
        self.reads = reads
        self.sessionmaker = sessionmaker
        self.worker_id = worker_id
        self.limits: SendLimits = LocalLimits(limiter)
        self.tokens: dict[int, int] = {}
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._outage = Outage(f"worker {worker_id}: the database", logger=log,
                              while_down="the bots held are driven on; new ones wait",
                              on_recovery="bots are read again")

    def valid(self, bot_id: int) -> bool:
        """Held: one worker per database, so a held token stays valid."""
        return bot_id in self.tokens

    async def join(self, status: Mapping[str, Any]) -> None:
        """Nothing to join alone."""

    async def rebalance(self, universe: Collection[int], keep: Collection[int],
                        status: Mapping[str, Any]) -> Rebalance:
        """Every bot of ``universe`` is this worker's; the others are let go once idle
        (``keep``: bots in use or being connected, neither given up nor taken again)."""
        wanted = set(universe)
        released = [b for b in self.tokens if b not in wanted and b not in keep]
        for b in released:
            del self.tokens[b]
        self.stats["released"] += len(released)
        metrics.LEASES_HELD.set(len(self.tokens))
        return Rebalance(released=released,
                         won=sorted(wanted - set(self.tokens) - set(keep)))

    def outage(self, exc: BaseException | None) -> None:
        """A failed heartbeat here is a failed read of the bots
        (:class:`backend.outage.Outage`: one warning per outage)."""
        if exc is None:
            self._outage.recovered()
        else:
            self._outage.should_probe()
            self._outage.failed(exc)

    async def confirm(self, won: Sequence[int], connected: Sequence[int]) -> list[int]:
        """Issue fencing tokens to the connected bots and reconcile their earlier intents."""
        if not connected:
            return []
        async with self.sessionmaker() as session, session.begin():
            tokens = await turn_store.issue_fencing_tokens(
                session, bot_ids=connected, holder=self.worker_id)
            stale = await turn_store.reconcile(session, tokens=tokens)
        self.tokens.update(tokens)
        self.stats["acquired"] += len(tokens)
        metrics.LEASES_HELD.set(len(self.tokens))
        for r in stale:
            metrics.SEND_UNKNOWN.labels(reason="reconciled").inc()
            log.error("turn %s of bot %s: left between intent and outcome by an earlier "
                      "run; recorded unknown, not resent", r.turn_id, r.bot_id)
        return sorted(tokens)

    def forget(self, bot_id: int) -> None:
        """Drop the bot's token."""
        self.tokens.pop(bot_id, None)

    async def leave(self) -> None:
        """Drop every token (the database keeps them; the next run issues newer ones)."""
        self.tokens.clear()

    async def poll(self) -> None:
        """Human messages are read from the history: nothing to take."""

    async def wants_reply(self, chat_id: int) -> bool:
        """True when the chat's history holds a message marked ``reply_wanted``."""
        return any(i.reply_wanted for i in await self.reads.history(chat_id))

    def waiting(self, chat_id: int, history: Sequence[HistoryItem], now: datetime,
                members: Collection[int]) -> list[WaitingMessage]:
        """See :func:`waiting_messages` (none without ``members``)."""
        return waiting_messages(history, now) if members else []

    async def drop_stale(self, now: datetime) -> None:
        """The history ages out by itself."""

    async def settle(self, turn: Turn, outcome: Outcome) -> None:
        """The answered flag is the record (committed with the reply)."""

    def floor_held(self, chat_id: int) -> bool:
        """No floors: this process's scheduler is the only one speaking."""
        return False

    async def take_floor(self, turn: Turn) -> bool:
        """Always granted (see :meth:`floor_held`)."""
        return True

    async def give_floor(self, turn: Turn) -> None:
        """Nothing to give back."""

    async def close(self) -> None:
        """Nothing opened."""


class SharedMembership:
    """Many workers share the bots through Redis (see the module docstring).

    Args:
        redis: the Redis client (closed by :meth:`close`).
        leases: membership and bot leases.
        stream: the reply stream (the requests of the bots held).
        dispatcher: dispatches lost reply requests again (the sweep).
        limiter: Telegram's limits and the per-chat cap across workers.
        join_settle_s: seconds between joining and taking bots, so workers started together
            see each other first (a fleet starting at once hands no bot around).
        ring_epsilon: the ring's load bound (None: the module default).
        stats: counters updated in place: ``acquired``, ``released``, ``lost``, ``errors``.
    """

    def __init__(self, *, redis: Any, leases: Leases, stream: ReplyStream,
                 dispatcher: ReplyDispatcher, limiter: SharedLimiter,
                 join_settle_s: float = JOIN_SETTLE_S, ring_epsilon: float | None = None,
                 stats: Counter[str] | None = None) -> None:
        self.redis = redis
        self.leases = leases
        self.stream = stream
        self.dispatcher = dispatcher
        self.limits: SendLimits = limiter
        self.worker_id = leases.worker_id
        self.join_settle_s = join_settle_s
        self.ring_epsilon = ring_epsilon
        self.stats: Counter[str] = stats if stats is not None else Counter()
        # Reply requests of the held bots: (chat, Telegram message id) → bot → request.
        self._requests: dict[tuple[int, int], dict[int, ReplyRequest]] = {}
        self._floors_held: set[int] = set()
        self._release_floor = redis.register_script(RELEASE_FLOOR_LUA)
        self._last_sweep = 0.0
        self._ring_memo: tuple[tuple[Any, ...], frozenset[int]] | None = None
        self._owns_redis = True
        self._outage = Outage(f"worker {self.worker_id}: Redis", logger=log,
                              while_down="the leases stay valid locally until their "
                                         "deadline; heartbeats go on trying",
                              on_recovery="heartbeats resume")

    @classmethod
    def build(cls, settings: Settings, reads: CachedReads,
              sessionmaker: async_sessionmaker[AsyncSession], *,
              worker_id: str | None = None, stats: Counter[str] | None = None,
              ring_epsilon: float | None = None, redis: Any = None) -> SharedMembership:
        """A shared membership on ``settings.redis_url`` (namespace
        ``settings.redis_namespace``, TTL ``settings.heartbeat_ttl_s``).

        Args:
            redis: the process's Redis client (its owner closes it); None: a client of its
                own, closed by :meth:`close`.

        Raises:
            ValueError: ``settings.redis_url`` is not set.
        """
        if not settings.redis_url:
            raise ValueError("shared membership needs REDIS_URL")
        client = redis if redis is not None else make_redis(settings.redis_url,
                                                            role="commands")
        ns = settings.redis_namespace
        stream = ReplyStream(client, namespace=ns)
        membership = cls(
            redis=client,
            leases=Leases(client, sessionmaker, worker_id or new_worker_id(settings.worker_name),
                          settings.heartbeat_ttl_s, namespace=ns),
            stream=stream,
            dispatcher=ReplyDispatcher(stream, reads, sessionmaker, seed=settings.seed),
            limiter=SharedLimiter(client, namespace=ns),
            join_settle_s=min(JOIN_SETTLE_S, settings.heartbeat_ttl_s / 3),
            ring_epsilon=ring_epsilon, stats=stats,
        )
        membership._owns_redis = redis is None
        return membership

    @property
    def tokens(self) -> dict[int, int]:
        """Bot id → fencing token of every lease held."""
        return self.leases.tokens

    def valid(self, bot_id: int) -> bool:
        """See :meth:`Leases.valid`."""
        return self.leases.valid(bot_id)

    async def join(self, status: Mapping[str, Any]) -> None:
        """First heartbeat, then wait ``join_settle_s``. Never raises (logged)."""
        import asyncio

        try:
            await self.leases.heartbeat(dict(status))
            await asyncio.sleep(self.join_settle_s)
        except Exception as exc:
            log.warning("worker %s: first heartbeat failed: %s", self.worker_id, exc)

    async def rebalance(self, universe: Collection[int], keep: Collection[int],
                        status: Mapping[str, Any]) -> Rebalance:
        """Renew the leases, beat, rebuild the ring over the live workers, release the bots
        no longer ours (unless in ``keep``), acquire the new ones; sweep lost reply requests
        at most every :data:`SWEEP_EVERY_S` across workers.

        Raises:
            redis.RedisError: Redis unreachable (logged once per outage by the caller's
                :meth:`outage`); the leases stay valid locally until their deadline.
        """
        from behavior_engine.sharding import Ring

        leases = self.leases
        change = Rebalance()
        change.lost = sorted(await leases.renew())
        if change.lost:
            self.stats["lost"] += len(change.lost)
            metrics.LEASE_CHANGES.labels(change="lost").inc(len(change.lost))
        await leases.heartbeat(dict(status))
        live = await leases.live_workers()
        metrics.WORKERS_LIVE.set(len(live))
        bots = sorted(set(universe))
        mine: frozenset[int] = frozenset()
        if self.worker_id in live and bots:
            key = (tuple(live), tuple(bots), self.ring_epsilon)
            if self._ring_memo is None or self._ring_memo[0] != key:  # same ring: no rehash
                kwargs = {} if self.ring_epsilon is None else {"epsilon": self.ring_epsilon}
                self._ring_memo = (key, frozenset(
                    Ring(live, bots, **kwargs).owned_by(self.worker_id)))
            mine = self._ring_memo[1]
        change.released = [b for b in leases.tokens if b not in mine and b not in keep]
        if change.released:
            await leases.release(change.released)
            self.stats["released"] += len(change.released)
            metrics.LEASE_CHANGES.labels(change="released").inc(len(change.released))
        take = sorted(mine - set(leases.tokens) - set(keep))
        if take:
            change.won = sorted(await leases.acquire(take))
        metrics.LEASES_HELD.set(len(leases.tokens))
        now = time.monotonic()
        if now - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = now
            lock = rkeys.sweeper_key(leases.namespace)
            if await self.redis.set(lock, self.worker_id, nx=True,
                                    px=int(SWEEP_EVERY_S * 1000)):
                await self.dispatcher.sweep()
        return change

    def outage(self, exc: BaseException | None) -> None:
        """Note a failed (``exc``) or successful (None) heartbeat
        (:class:`backend.outage.Outage`: one warning per outage, one info line when Redis
        answers again)."""
        if exc is None:
            self._outage.recovered()
        else:
            self._outage.should_probe()  # every heartbeat is a probe
            self._outage.failed(exc)

    async def confirm(self, won: Sequence[int], connected: Sequence[int]) -> list[int]:
        """Release the leases of bots that did not connect; read the reply requests again
        (the new bots' included). Returns the connected bots whose lease is still held."""
        ok = set(connected)
        held = [b for b in won if b in ok and b in self.leases.tokens]
        failed = [b for b in won if b not in ok and b in self.leases.tokens]
        if failed:
            await self.leases.release(failed)
        self.stats["acquired"] += len(held)
        metrics.LEASE_CHANGES.labels(change="acquired").inc(len(held))
        metrics.LEASES_HELD.set(len(self.leases.tokens))
        self._take(await self.stream.read_all())
        return held

    def forget(self, bot_id: int) -> None:
        """Drop the lease locally (its key expires, or is another's already)."""
        self.leases.tokens.pop(bot_id, None)

    async def leave(self) -> None:
        """Release every lease and leave the live set; on failure they expire by TTL."""
        try:
            await self.leases.leave()
        except Exception as exc:
            log.warning("worker %s: could not leave cleanly: %s", self.worker_id, exc)

    def _take(self, requests: Sequence[ReplyRequest]) -> None:
        for req in requests:
            key = (req.chat_id, req.line.telegram_message_id)
            self._requests.setdefault(key, {})[req.bot_id] = req

    async def poll(self) -> None:
        """Read the new entries of the reply stream.

        Raises:
            redis.RedisError: the stream is unreachable (the tick is skipped).
        """
        self._take(await self.stream.read_new())

    async def wants_reply(self, chat_id: int) -> bool:
        """True when a reply request of ``chat_id`` is pending here."""
        return any(c == chat_id for c, _ in self._requests)

    def waiting(self, chat_id: int, history: Sequence[HistoryItem], now: datetime,
                members: Collection[int]) -> list[WaitingMessage]:
        """The pending requests of ``chat_id``, in message order, each for the requested
        bots among ``members`` (the dispatcher chose them)."""
        out: list[WaitingMessage] = []
        for (c, _tg), by_bot in sorted(self._requests.items()):
            if c != chat_id:
                continue
            bots = tuple(sorted(b for b in by_bot if b in members))
            if bots:
                first = by_bot[bots[0]]
                if (first.line.created_at or now) >= now - HUMAN_WAIT_MAX:
                    out.append(first.waiting(bots))
        return out

    async def drop_stale(self, now: datetime) -> None:
        """Delete the requests whose message is older than ``HUMAN_WAIT_MAX``."""
        stale = [k for k, by_bot in self._requests.items()
                 if all((r.line.created_at or now) < now - HUMAN_WAIT_MAX
                        for r in by_bot.values())]
        ids: list[str] = []
        for k in stale:
            ids.extend(r.entry_id for r in self._requests.pop(k).values())
        if ids:
            await self.stream.done(ids)

    async def settle(self, turn: Turn, outcome: Outcome) -> None:
        """Delete the reply request once acted on (sent, unknown, done before, or failed
        for good: then its message is dispatched again by the sweep)."""
        if turn.reply_to is None or turn.reply_message_id is None:
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
            await self.stream.done([req.entry_id])
            if outcome.status == "failed":
                await self.stream.forget_dispatch(req.message_id)
        except Exception as exc:  # delivered again later: acted on once (turn record)
            log.warning("reply request %s not deleted: %s", req.entry_id, exc)

    def floor_held(self, chat_id: int) -> bool:
        """See :meth:`Membership.floor_held`."""
        return chat_id in self._floors_held

    async def take_floor(self, turn: Turn) -> bool:
        """One spontaneous turn at a time per chat across all workers (SET NX with a TTL of
        ``keys.FLOOR_TTL_S``); replies to humans do not wait for the floor."""
        if turn.reply_message_id is not None:
            return True
        key = rkeys.floor_key(turn.chat_id, self.leases.namespace)
        try:
            got = await self.redis.set(key, turn.turn_id, nx=True,
                                       px=int(rkeys.FLOOR_TTL_S * 1000))
        except Exception as exc:
            log.debug("floor of chat %s not taken: %s", turn.chat_id, exc)
            return False
        if got:
            self._floors_held.add(turn.chat_id)
        return bool(got)

    async def give_floor(self, turn: Turn) -> None:
        """Delete the floor key if this turn still holds it (one Lua script)."""
        if turn.reply_message_id is not None:
            return
        self._floors_held.discard(turn.chat_id)
        with contextlib.suppress(Exception):
            await self._release_floor(
                keys=[rkeys.floor_key(turn.chat_id, self.leases.namespace)],
                args=[turn.turn_id])

    async def close(self) -> None:
        """Close the Redis client if this membership made it."""
        if self._owns_redis:
            await self.redis.aclose()


def membership_for(settings: Settings, reads: CachedReads,
                   sessionmaker: async_sessionmaker[AsyncSession], *,
                   worker_id: str | None = None, limiter: TelegramLimiter | None = None,
                   stats: Counter[str] | None = None, redis: Any = None) -> Membership:
    """The membership ``settings`` call for, chosen once: shared with ``REDIS_URL`` (on
    ``redis``, the process's client, if given), else in-process (``limiter`` is used
    in-process only)."""
    if settings.redis_url:
        return SharedMembership.build(settings, reads, sessionmaker, worker_id=worker_id,
                                      stats=stats, redis=redis)
    return InProcessMembership(reads, sessionmaker,
                               worker_id or new_worker_id(settings.worker_name),
                               limiter=limiter, stats=stats)


class ReplyIntake(Protocol):
    """How a stored human message reaches the workers that will answer it (the listener's
    side of the membership)."""

    async def announce(self, chat_id: int, item: HistoryItem) -> list[int]:
        """Tell the workers that ``item`` (stored, committed, ``reply_wanted``) waits in
        ``chat_id``; returns the bots asked to answer (empty: the workers find it).

        Raises:
            Exception: it could not be told now (the message stays stored and waiting).
        """


class HistoryIntake:
    """In-process: the worker finds waiting messages in the chat's history itself."""

    async def announce(self, chat_id: int, item: HistoryItem) -> list[int]:
        """Nothing to tell: returns []."""
        return []


class StreamIntake:
    """Shared: the repliers are chosen once, here, and their requests put on the reply
    stream for the workers holding them (:class:`ReplyDispatcher`; a request lost on the
    way is dispatched again by the workers' sweep)."""

    def __init__(self, dispatcher: ReplyDispatcher) -> None:
        self.dispatcher = dispatcher

    async def announce(self, chat_id: int, item: HistoryItem) -> list[int]:
        """See :meth:`ReplyDispatcher.dispatch` (raises ``redis.RedisError``)."""
        return await self.dispatcher.dispatch(chat_id, item)


def reply_intake_for(settings: Settings, reads: CachedReads,
                     sessionmaker: async_sessionmaker[AsyncSession], *,
                     redis: Any = None) -> ReplyIntake:
    """The intake matching :func:`membership_for`: the reply stream on ``redis`` (the
    process's client) with ``REDIS_URL``, else the history.

    Raises:
        ValueError: ``REDIS_URL`` is set but no ``redis`` client was given.
    """
    if settings.redis_url:
        if redis is None:
            raise ValueError("the reply stream needs the process's Redis client")
        stream = ReplyStream(redis, namespace=settings.redis_namespace)
        return StreamIntake(ReplyDispatcher(stream, reads, sessionmaker, seed=settings.seed))
    return HistoryIntake()

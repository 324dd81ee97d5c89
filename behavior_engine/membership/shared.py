"""Many workers over Redis: :class:`SharedMembership` (see :mod:`behavior_engine.membership`)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import keys as rkeys
from backend import metrics
from backend.outage import Outage
from backend.redis_client import make_redis, make_sync_redis
from backend.settings import Settings
from behavior_engine.leases import Leases, new_worker_id
from behavior_engine.membership.base import Rebalance
from behavior_engine.pipeline import SendLimits
from behavior_engine.reads import CachedReads, HistoryItem
from behavior_engine.replies import ReplyDispatcher, ReplyRequest, ReplyStream
from behavior_engine.scheduler import HUMAN_WAIT_MAX, WaitingMessage
from behavior_engine.turn import Outcome, Turn
from bots.ratelimit import SharedLimiter

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

    @staticmethod
    def check(settings: Settings, worker_id: str, id_file_age_s: float) -> tuple[bool, str]:
        """``botsim worker --check`` shared: fresh while the worker's heartbeat key exists
        in Redis (it lives ``heartbeat_ttl_s``). Returns (healthy, one line saying why)."""
        import redis

        client = make_sync_redis(settings.redis_url or "")
        try:
            ttl_ms = client.pttl(rkeys.worker_key(worker_id, settings.redis_namespace))
        except redis.RedisError as exc:
            return False, f"Redis unreachable: {exc}"
        finally:
            client.close()
        if isinstance(ttl_ms, int) and ttl_ms > 0:
            return True, f"worker {worker_id}, heartbeat expires in {ttl_ms / 1000:.1f} s"
        return False, f"worker {worker_id} has no heartbeat in Redis"

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
            lock = rkeys.sweeper_key(leases.namespace)
            if await self.redis.set(lock, self.worker_id, nx=True,
                                    px=int(SWEEP_EVERY_S * 1000)):
                # Only a won lock starts this worker's period: one that lost tries again at
                # its next heartbeat, so the lock passes between workers (before, the
                # winner's next try fell just after its lock expired, ahead of the others
                # waiting out a whole period: one worker could sweep alone for good).
                self._last_sweep = now
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

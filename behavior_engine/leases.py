"""Membership and bot leases in Redis, fencing tokens from the database.

A worker process is one member of the live set: it writes a heartbeat key with a TTL
(``heartbeat_ttl_s``) every third of it, and the ring (:mod:`behavior_engine.sharding`) is
built from the members whose heartbeat key exists. There are no fixed worker numbers.

Before driving a bot a worker holds the bot's lease: ``SET lease:{bot} {worker} NX PX ttl``
(atomic set-if-absent with expiry), renewed with the heartbeat by a Lua script that extends
only the keys still holding this worker's id, and released the same way (compare-and-
delete). Winning a lease then issues a fencing token from the database
(:func:`backend.stores.turns.issue_fencing_tokens`): every turn's intent is written only
under the current token, so a worker that lost a lease (paused, cut off from Redis) can
write nothing for that bot (Kleppmann, "How to do distributed locking", 2016).

A lease is trusted locally until ``renewed_at + ttl × (1 - SAFETY)`` on the monotonic
clock: a worker stopped (SIGSTOP) or cut off past that point sees it expired when it runs
again, before Redis could have given the lease to anyone else (the Redis TTL starts later
than the local clock reading, at the PEXPIRE).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import keys, metrics
from backend.db.models import TurnRecord
from backend.stores import turns as turn_store

log = logging.getLogger("botsim.leases")

#: Share of the lease TTL kept as a safety margin on the local clock.
SAFETY = 0.15

_RENEW = """
local n = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    n[i] = 1
  else
    n[i] = 0
  end
end
return n
"""

_LIVE = """
local live = {}
for _, w in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[1] .. w) == 1 then
    live[#live + 1] = w
  else
    redis.call('ZREM', KEYS[1], w)
  end
end
return live
"""

_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    n = n + redis.call('DEL', key)
  end
end
return n
"""


async def read_heartbeats(
    redis: aioredis.Redis, namespace: str = keys.DEFAULT_NAMESPACE
) -> dict[str, dict[str, Any]]:
    """Worker id → its last heartbeat info (JSON object; ``{}`` if unreadable), for the
    workers whose heartbeat key exists. Read only: forgets nobody.

    Raises:
        redis.RedisError, OSError: Redis unreachable.
    """
    members = [m.decode() if isinstance(m, bytes) else str(m)
               for m in await redis.zrange(keys.workers_key(namespace), 0, -1)]
    if not members:
        return {}
    raw = await redis.mget([keys.worker_key(w, namespace) for w in members])
    out: dict[str, dict[str, Any]] = {}
    for worker_id, beat in sorted(zip(members, raw, strict=True)):
        if beat is None:
            continue  # heartbeat expired: not live
        try:
            info = json.loads(beat)
        except ValueError:
            info = None
        out[worker_id] = info if isinstance(info, dict) else {}
    return out


def new_worker_id(name: str | None = None) -> str:
    """A worker id unique across processes and restarts: ``{name or host}-{pid}-{hex6}``."""
    base = name or socket.gethostname().split(".")[0] or "worker"
    return f"{base}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Leases:
    """This worker's membership and the bot leases it holds.

    Args:
        redis: the Redis client (decode_responses is not assumed).
        sessionmaker: database sessions (fencing tokens, reconciliation).
        worker_id: this worker's id (:func:`new_worker_id`).
        ttl_s: heartbeat and lease TTL, seconds.
        namespace: Redis key namespace.
        clock: monotonic seconds (injectable for tests).

    Attributes:
        tokens: bot id → fencing token of every lease held now.
        unknown: turns turned ``unknown`` by reconciliation since start.
    """

    redis: aioredis.Redis
    sessionmaker: async_sessionmaker[AsyncSession]
    worker_id: str
    ttl_s: float
    namespace: str = keys.DEFAULT_NAMESPACE
    clock: Callable[[], float] = time.monotonic
    tokens: dict[int, int] = field(default_factory=dict)
    unknown: int = 0
    _valid_until: float = 0.0
    _renew: Any = None
    _release: Any = None
    _live: Any = None

    def __post_init__(self) -> None:
        self._live = self.redis.register_script(_LIVE)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)

    @property
    def ttl_ms(self) -> int:
        """The TTL in milliseconds."""
        return int(self.ttl_s * 1000)

    # -- membership ----------------------------------------------------------------------
    async def heartbeat(self, info: dict[str, Any]) -> None:
        """Write this worker's heartbeat (``info`` as JSON) with the TTL and list it.

        Raises:
            redis.RedisError: Redis unreachable (the caller keeps going on its leases until
                they expire locally).
        """
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.worker_key(self.worker_id, self.namespace),
                     json.dumps({**info, "at_ms": now_ms}), px=self.ttl_ms)
            pipe.zadd(keys.workers_key(self.namespace), {self.worker_id: now_ms})
            await pipe.execute()

    async def live_workers(self) -> list[str]:
        """Ids of the workers whose heartbeat key exists, sorted; forgets the others (one
        Lua script, so a worker beating meanwhile is never forgotten)."""
        prefix = keys.worker_key("", self.namespace)
        got = await self._live(keys=[keys.workers_key(self.namespace)], args=[prefix])
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in got)

    async def worker_info(self) -> dict[str, dict[str, Any]]:
        """Worker id → its last heartbeat info, for the live workers (forgets the dead)."""
        await self.live_workers()
        return await read_heartbeats(self.redis, self.namespace)

    async def leave(self) -> None:
        """Release every lease and remove this worker from the live set (clean stop)."""
        await self.release(list(self.tokens))
        await self.redis.delete(keys.worker_key(self.worker_id, self.namespace))
        await self.redis.zrem(keys.workers_key(self.namespace), self.worker_id)

    # -- leases --------------------------------------------------------------------------
    def valid(self, bot_id: int) -> bool:
        """True while this worker may act for ``bot_id``: it holds the lease and the local
        deadline (last renewal + TTL minus the safety margin) has not passed."""
        return bot_id in self.tokens and self.clock() < self._valid_until

    def remaining(self) -> float:
        """Seconds the held leases remain valid on the local clock (≤ 0: expired)."""
        return self._valid_until - self.clock()

    async def acquire(self, bot_ids: Collection[int]) -> dict[int, int]:
        """Try to take the leases of ``bot_ids`` (those held by nobody).

        For the leases won: issues fencing tokens, reconciles the intents of earlier holders
        (``intent`` → ``unknown``, counted in ``botsim_send_unknown_total``).

        Returns:
            bot id → fencing token of the leases won now.

        Raises:
            redis.RedisError, sqlalchemy errors: the won leases are released again first.
        """
        wanted = sorted(set(bot_ids) - set(self.tokens))
        if not wanted:
            return {}
        started = self.clock()
        async with self.redis.pipeline(transaction=False) as pipe:
            for b in wanted:
                pipe.set(keys.lease_key(b, self.namespace), self.worker_id, nx=True,
                         px=self.ttl_ms)
            won = [b for b, ok in zip(wanted, await pipe.execute(), strict=True) if ok]
        if not won:
            return {}
        try:
            async with self.sessionmaker() as session, session.begin():
                tokens = await turn_store.issue_fencing_tokens(
                    session, bot_ids=won, holder=self.worker_id
                )
                stale: list[TurnRecord] = await turn_store.reconcile(session, tokens=tokens)
        except BaseException:
            await self.release(won)
            raise
        for r in stale:
            log.error("turn %s of bot %s: worker gone between intent and outcome; recorded "
                      "unknown, not resent", r.turn_id, r.bot_id)
            metrics.SEND_UNKNOWN.labels(reason="reconciled").inc()
        self.unknown += len(stale)
        if not self.tokens:
            self._valid_until = started + self.ttl_s * (1 - SAFETY)
        self.tokens.update(tokens)
        return tokens

    async def renew(self) -> set[int]:
        """Extend every held lease by the TTL.

        Returns:
            The bots whose lease was lost (expired and taken, or deleted): they are dropped
            from :attr:`tokens` and must not be driven any more.

        Raises:
            redis.RedisError: Redis unreachable; nothing is dropped, the leases stay valid
                locally until their deadline (:meth:`valid`).
        """
        if not self.tokens:
            self._valid_until = self.clock() + self.ttl_s * (1 - SAFETY)
            return set()
        started = self.clock()
        held = sorted(self.tokens)
        got = await self._renew(
            keys=[keys.lease_key(b, self.namespace) for b in held],
            args=[self.worker_id, self.ttl_ms],
        )
        lost = {b for b, ok in zip(held, got, strict=True) if not int(ok)}
        for b in lost:
            self.tokens.pop(b, None)
        self._valid_until = started + self.ttl_s * (1 - SAFETY)
        if lost:
            log.warning("lost the lease of %d bots: %s", len(lost), sorted(lost)[:10])
        return lost

    async def release(self, bot_ids: Collection[int]) -> None:
        """Give up the leases of ``bot_ids`` (only those this worker still holds in Redis)."""
        ids = sorted(set(bot_ids))
        for b in ids:
            self.tokens.pop(b, None)
        if not ids:
            return
        try:
            await self._release(keys=[keys.lease_key(b, self.namespace) for b in ids],
                                args=[self.worker_id])
        except RedisError as exc:  # they expire by themselves within the TTL
            log.warning("could not release %d leases (they expire by TTL): %s", len(ids), exc)

    async def holders(self, bot_ids: Collection[int]) -> dict[int, str | None]:
        """Bot id → the worker id holding its lease in Redis now (None: nobody)."""
        ids = sorted(bot_ids)
        if not ids:
            return {}
        raw = await self.redis.mget([keys.lease_key(b, self.namespace) for b in ids])
        return {b: (r.decode() if isinstance(r, bytes) else r)
                for b, r in zip(ids, raw, strict=True)}

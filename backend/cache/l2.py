"""L2 of the two-layer cache: the Redis side (scripts, keys, invalidation channel, outage).

:class:`L2` owns the two clients (commands, and the pub/sub subscriber; both from
:func:`backend.redis_client.make_redis`), the registered Lua scripts, the subscription to
the invalidation channel, the invalidations that could not reach Redis, and the
:class:`backend.outage.Outage` that says whether L2 may be used. The cache
(:class:`backend.cache.TwoLayerCache`) asks :meth:`L2.conn` for the connection before each
use (None: degraded, serve from L1 and the loader) and reports failures to
:meth:`L2.failed`.

Reconnecting after an outage (backoff from ``backend.keys.RECONNECT_INITIAL_S`` doubling to
``RECONNECT_MAX_S``) subscribes again (confirmed), replays the invalidations made while
down, then calls ``on_resync`` (the cache clears L1: events may have been missed), and only
then goes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from backend import keys, metrics
from backend.outage import Outage, State
from backend.redis_client import make_redis, redacted_url

log = logging.getLogger("botsim.cache")

#: Errors from a Redis command: redis-py's tree plus raw socket errors and timeouts.
REDIS_ERRORS = (RedisError, OSError)

#: An L1/L2 key: ``(kind, key)``.
Key = tuple[str, str]

# KEYS: value, generation. ARGV: generation read at the miss ('' = none), value, TTL ms.
FILL_VALUE_LUA = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# KEYS: list, generation. ARGV: generation read at the miss, TTL ms, header, items...
FILL_LIST_LUA = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: list, generation. ARGV: item, max_len, generation TTL ms, channel, event.
# Returns the items after the push (oldest first), or nil when the list is not cached (a
# list started here would lack the older items; the next miss loads it whole).
APPEND_LUA = """
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local items = false
if redis.call('EXISTS', KEYS[1]) == 1 then
  local n = redis.call('RPUSH', KEYS[1], ARGV[1])
  local max = tonumber(ARGV[2])
  if n - 1 > max then
    local header = redis.call('LINDEX', KEYS[1], 0)
    redis.call('LTRIM', KEYS[1], -max, -1)
    redis.call('LPUSH', KEYS[1], header)
  end
  items = redis.call('LRANGE', KEYS[1], 1, -1)
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return items
"""


def key_pair(ck: Key, namespace: str) -> tuple[str, str]:
    """The value key and the generation key of ``ck`` (:mod:`backend.keys`)."""
    kind, key = ck
    return (
        keys.cache_key(kind, key, namespace=namespace),
        keys.generation_key(kind, key, namespace=namespace),
    )


@dataclass(frozen=True)
class Conn:
    """The command client and its registered Lua scripts (EVALSHA, reloaded on NOSCRIPT)."""

    redis: Redis
    fill_value: AsyncScript
    fill_list: AsyncScript
    append: AsyncScript


class L2:
    """The Redis side of one cache (module docstring). One instance per event loop.

    Args:
        url: ``redis://host:port/db``.
        namespace: first segment of every key and of the channel (``backend.keys``).
        l1_ttl_s: the staleness bound while down, named in the outage warning.
        l2_ttl_ms: milliseconds an L2 entry lives, named in the overflow warning.
        pending_max: invalidations kept while down for replay (beyond: warned once).
        on_event: called with ``(kind, key)`` for every invalidation event from another
            process.
        on_resync: called when (re)connected, before going up: events may have been missed.

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        l1_ttl_s: float,
        l2_ttl_ms: int,
        pending_max: int,
        on_event: Callable[[str, str], None],
        on_resync: Callable[[], None],
    ) -> None:
        self._redis = make_redis(url, role="commands")
        self._sub_redis = make_redis(url, role="subscriber")
        self._conn = Conn(
            redis=self._redis,
            fill_value=self._redis.register_script(FILL_VALUE_LUA),
            fill_list=self._redis.register_script(FILL_LIST_LUA),
            append=self._redis.register_script(APPEND_LUA),
        )
        self._ns = namespace
        self.channel = keys.invalidation_channel(namespace)
        self._origin = uuid.uuid4().hex
        self._gen_ttl_ms = int(keys.GEN_TTL_S * 1000)
        self._l2_ttl_ms = l2_ttl_ms
        self._pending_max = pending_max
        self._on_event = on_event
        self._on_resync = on_resync
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._closed = False
        self._next_reply_warning = 0.0
        self._pending: dict[Key, None] = {}
        self._pending_overflow = False
        self.outage = Outage(
            f"cache: Redis at {redacted_url(url)}",
            logger=log,
            while_down=(
                f"serving from L1 and the database, values may be up to {l1_ttl_s:.0f} s "
                "stale until it returns; reconnecting in the background"
            ),
            on_recovery="L2 and invalidations resumed",
            state=State.UNKNOWN,
            on_change=lambda up: metrics.CACHE_REDIS_UP.set(1 if up else 0),
        )

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect and subscribe; on failure go down and reconnect in the background."""
        try:
            await self._connect()
        except REDIS_ERRORS as exc:
            self.failed(exc, down=True)

    async def close(self) -> None:
        """Stop the background tasks and close both clients. Idempotent."""
        self._closed = True
        tasks = [t for t in (self._reconnector, self._listener) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listener = self._reconnector = None
        await self._close_pubsub()
        await self._redis.aclose()
        await self._sub_redis.aclose()

    @property
    def up(self) -> bool:
        """True while L2 and the invalidation channel are in use."""
        return self.outage.is_up and not self._closed

    def conn(self) -> Conn | None:
        """The connection while up, else None (serve without Redis)."""
        return self._conn if self.up else None

    # ---------------------------------------------------------------- keys and events

    @property
    def gen_ttl_ms(self) -> int:
        """Milliseconds a generation counter lives after its last bump."""
        return self._gen_ttl_ms

    def event(self, op: str, ck: Key) -> str:
        """The JSON event published for ``op`` (``invalidate``/``append``) on ``ck``."""
        return json.dumps({"op": op, "kind": ck[0], "key": ck[1], "origin": self._origin})

    def queue_invalidation(self, pipe: Any, ck: Key) -> None:
        """Queue on ``pipe``: bump the generation, delete the value, publish the event."""
        vk, gk = key_pair(ck, self._ns)
        pipe.incr(gk)
        pipe.pexpire(gk, self._gen_ttl_ms)
        pipe.delete(vk)
        pipe.publish(self.channel, self.event("invalidate", ck))

    def remember(self, ck: Key) -> None:
        """Keep an invalidation that could not reach Redis, to replay on reconnect."""
        if len(self._pending) < self._pending_max:
            self._pending[ck] = None
        elif not self._pending_overflow:
            self._pending_overflow = True
            log.warning(
                "cache: more than %d invalidations while Redis was down; the rest may be "
                "served stale from L2 for up to %.0f s after it returns",
                self._pending_max,
                self._l2_ttl_ms / 1000,
            )

    # ---------------------------------------------------------------- failures

    def failed(self, exc: BaseException, *, down: bool = False) -> None:
        """Count a failed command; a connection problem (or ``down``) starts an outage.

        An error reply (OOM, READONLY...) means the server is there: only that command is
        skipped, with a warning at most once a minute.
        """
        metrics.CACHE_REDIS_ERRORS.inc()
        if isinstance(exc, ResponseError) and not down:
            now = time.monotonic()
            if now >= self._next_reply_warning:
                self._next_reply_warning = now + 60
                log.warning("cache: Redis refused a command: %s (logged once a minute)", exc)
            return
        if self._closed:
            return
        if self.outage.failed(exc) and (self._reconnector is None or self._reconnector.done()):
            self._reconnector = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._closed and not self.outage.is_up:
            await asyncio.sleep(self.outage.wait_s())
            if self._closed or not self.outage.should_probe():
                continue
            try:
                await self._connect()
            except REDIS_ERRORS as exc:
                self.outage.failed(exc)  # a failed probe: the backoff doubles
            finally:
                self.outage.end_probe()

    async def _connect(self) -> None:
        """Subscribe (confirmed), replay pending invalidations, resync, go up.

        Raises:
            RedisError, OSError: Redis unreachable; nothing changed but the pub/sub object.
        """
        await self._close_pubsub()
        pubsub = self._sub_redis.pubsub()
        self._pubsub = pubsub
        await pubsub.subscribe(self.channel)
        # Wait for the confirmation: only then can no event published from now on be missed.
        deadline = time.monotonic() + keys.SOCKET_TIMEOUT_S * 4
        while True:
            message = await pubsub.get_message(timeout=keys.SOCKET_TIMEOUT_S)
            if message is not None and message["type"] == "subscribe":
                break
            if time.monotonic() > deadline:
                raise TimeoutError("no SUBSCRIBE confirmation from Redis")
        await self._replay_pending()
        self._on_resync()  # events may have been missed while down
        self.outage.recovered()
        self._listener = asyncio.create_task(self._listen(pubsub))

    async def _replay_pending(self) -> None:
        while self._pending:
            batch = list(self._pending)[:500]
            async with self._redis.pipeline(transaction=False) as pipe:
                for ck in batch:
                    self.queue_invalidation(pipe, ck)
                await pipe.execute()
            for ck in batch:
                self._pending.pop(ck, None)
        self._pending_overflow = False

    # ---------------------------------------------------------------- events

    async def _listen(self, pubsub: PubSub) -> None:
        try:
            while True:
                # The timeout lets redis-py send its health-check PING on an idle channel.
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    self._event_received(message["data"])
        except Exception as exc:  # Redis gone, or a bug: either way events stop arriving
            if self._pubsub is pubsub:
                self.failed(exc, down=True)

    def _event_received(self, data: bytes) -> None:
        try:
            event = json.loads(data)
            origin, kind, key = event["origin"], event["kind"], event["key"]
        except (ValueError, KeyError, TypeError):
            log.debug("cache: ignored malformed invalidation event %r", data)
            return
        if origin != self._origin:
            self._on_event(kind, key)

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        listener, self._listener = self._listener, None
        if listener is not None and listener is not asyncio.current_task():
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        if pubsub is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()

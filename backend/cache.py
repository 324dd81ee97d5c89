"""The two-layer cache: L1 in process memory (LRU + TTL) over L2 in Redis, over the database.

A worker needs, for every message, the bot's persona, the chat's recent history and the chat
settings. :class:`TwoLayerCache` serves them from memory and goes to the database (the
caller's ``loader``) only on a miss in both layers::

    get(kind, key, loader)  ─►  L1 (cachetools TLRUCache, per process)
                            ─►  L2 (Redis GET / LRANGE, bytes from a Codec)
                            ─►  loader()  (the database), then fill L2 and L1

Correctness when the operator edits something:

* ``invalidate(kind, key)`` deletes the L2 entry, bumps its generation counter and publishes
  an event on the invalidation channel in one MULTI/EXEC; every other process drops its L1
  entry when the event arrives (about a millisecond on localhost; the spec bound is 100 ms).
* Fills cannot put an old value back: a miss reads the entry's generation together with
  the value, and the loader's result is written to L2 only if the generation is unchanged
  (a Lua script). In process, every key with an operation in flight has an epoch; any drop
  or write bumps it, and an L1 write whose epoch moved is skipped.
* **Single-flight**: concurrent misses of one ``(kind, key)`` in a process share one task;
  the loader runs once and every caller gets its result or its exception (nothing is
  cached on an exception; the next call tries again).

Chat history is a list (``get_list``/``append``). ``append`` pushes the new item onto the L2
list (RPUSH + trim in a Lua script that also bumps the generation and publishes an
``append`` event atomically), and replaces this process's L1 list with the list the script
returned, so the writer keeps serving from memory. **Other processes drop their L1 list when
the event arrives** and read it back from L2 (one LRANGE) on their next call: the event is
published after the push, so once it is received, no process serves a history without the
new item. (Carrying the item in the event and appending it remotely would be cheaper, but
could duplicate or reorder items when two processes append at once.)

**Redis down**: any connection error, refusal or timeout switches the cache to degraded
mode: one warning is logged per outage, ``botsim_cache_redis_errors_total`` counts the failed
commands, ``botsim_cache_redis_up`` drops to 0, and every call is served by L1 and the
loader without touching Redis. A background task reconnects (backoff 50 ms doubling to 1 s),
re-subscribes, replays the invalidations made while down, clears L1 (events may have been
missed) and returns to normal. **While degraded, L1's TTL (``l1_ttl_s``, 30 s by default)
bounds how stale a value can be**: invalidations from other processes cannot arrive. An
``append`` served by L1 alone (no Redis, or Redis down) keeps the list's expiry: it is read
again from the database ``l1_ttl_s`` after it was loaded, however often this process appends
(a chatty worker would otherwise never see the messages another process stored).
No call of this class raises because of Redis.

``redis_url=None`` is the embedded default: L1 only, the same API, for one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, cast
from urllib.parse import urlsplit

from cachetools import TLRUCache
from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from backend import keys, metrics

log = logging.getLogger("botsim.cache")

T = TypeVar("T")
_Key = tuple[str, str]
_MISSING: Any = object()
#: Errors from a Redis command: redis-py's tree plus raw socket errors and timeouts.
_REDIS_ERRORS = (RedisError, OSError)
#: Longest list ``get_list``/``append`` accept (Lua ``unpack`` takes a few thousand args).
MAX_LIST_LEN = 4096

# KEYS: value, generation. ARGV: generation read at the miss ('' = none), value, TTL ms.
_FILL_VALUE_LUA = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# KEYS: list, generation. ARGV: generation read at the miss, TTL ms, header, items...
_FILL_LIST_LUA = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: list, generation. ARGV: item, max_len, generation TTL ms, channel, event.
# Returns the items after the push (oldest first), or nil when the list is not cached (a
# list started here would lack the older items; the next miss loads it whole).
_APPEND_LUA = """
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


class Codec(Protocol[T]):
    """Turns a cached value into bytes for Redis and back."""

    def dumps(self, value: T) -> bytes:
        """Serialize ``value``."""
        ...

    def loads(self, data: bytes) -> T:
        """Deserialize bytes written by :meth:`dumps`.

        Raises:
            ValueError: when ``data`` does not decode (an old shape, corruption); the cache
                then treats the entry as a miss.
        """
        ...


class PydanticCodec(Generic[T]):
    """A :class:`Codec` through a pydantic ``TypeAdapter`` (JSON bytes).

    Works for pydantic models, dataclasses, and lists or dicts of them, e.g.
    ``PydanticCodec(Persona)`` or ``PydanticCodec(list[StoredMessage])``.
    """

    def __init__(self, type_: type[T]) -> None:
        self._adapter: TypeAdapter[T] = TypeAdapter(type_)

    def dumps(self, value: T) -> bytes:
        """JSON bytes of ``value``."""
        return self._adapter.dump_json(value)

    def loads(self, data: bytes) -> T:
        """The value of JSON ``data``; raises ``pydantic.ValidationError`` (a ValueError)."""
        return self._adapter.validate_json(data)


@dataclass(frozen=True)
class LayerCounts:
    """Lookups of one layer for one kind, as counted by :meth:`TwoLayerCache.stats`."""

    hits: int = 0
    misses: int = 0
    errors: int = 0

    @property
    def hit_rate(self) -> float:
        """``hits / (hits + misses)``, 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(frozen=True)
class _Conn:
    """The command client and its registered Lua scripts (EVALSHA, reloaded on NOSCRIPT)."""

    redis: Redis
    fill_value: AsyncScript
    fill_list: AsyncScript
    append: AsyncScript


class _L1Entry(NamedTuple):
    """An L1 value and the monotonic time it expires at."""

    value: Any
    expires: float


def _l1_expiry(_key: Any, entry: _L1Entry, _now: float) -> float:
    return entry.expires


class _KeyState:
    """Epoch of a key with operations in flight (exists only while ``users`` > 0)."""

    __slots__ = ("epoch", "users")

    def __init__(self) -> None:
        self.epoch = 0
        self.users = 0


class TwoLayerCache:
    """L1 (process memory) over L2 (Redis) over a loader; see the module docstring.

    Args:
        redis_url: ``redis://host:port/db``; None runs L1 only (one process).
        l1_size: entries kept in L1 (least recently used evicted beyond).
        l1_ttl_s: seconds an L1 entry lives; also the staleness bound while Redis is down.
        l2_ttl_s: seconds an L2 entry lives (invalidations remove it sooner).
        namespace: first segment of every key and of the channel (``backend.keys``).
        clock: monotonic seconds for L1 expiry (tests pass a fake).

    A kind is either a value kind (``get``) or a list kind (``get_list``/``append``); the
    same kind must not be used both ways. Treat returned values as read-only: they are the
    cached objects themselves (lists are copies). One instance per process and event loop.
    """

    def __init__(
        self,
        *,
        redis_url: str | None,
        l1_size: int = keys.L1_SIZE,
        l1_ttl_s: float = keys.L1_TTL_S,
        l2_ttl_s: float = keys.L2_TTL_S,
        namespace: str = keys.DEFAULT_NAMESPACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = redis_url
        self._l1_ttl_s = l1_ttl_s
        self._l2_ttl_ms = int(l2_ttl_s * 1000)
        self._gen_ttl_ms = int(keys.GEN_TTL_S * 1000)
        self._ns = namespace
        self._channel = keys.invalidation_channel(namespace)
        self._origin = uuid.uuid4().hex
        self._clock = clock
        self._l1: TLRUCache[_Key, _L1Entry] = TLRUCache(maxsize=l1_size, ttu=_l1_expiry,
                                                         timer=clock)
        self._inflight: dict[_Key, asyncio.Task[Any]] = {}
        self._keys: dict[_Key, _KeyState] = {}
        self._counts: dict[tuple[str, str, str], int] = {}
        self._series: dict[tuple[str, str, str], Any] = {}
        self._redis: Redis | None = None
        self._sub_redis: Redis | None = None
        self._conn: _Conn | None = None
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._up = False
        self._outage = False
        self._closed = False
        self._next_reply_warning = 0.0
        self._pending: dict[_Key, None] = {}
        self._pending_overflow = False
        self._label = _redacted(redis_url) if redis_url else "none"

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect to Redis and subscribe to the invalidation channel.

        Never raises because Redis is unreachable: the cache then starts degraded (L1 and the
        loader) and a background task keeps trying. Does nothing without ``redis_url``.
        """
        if self._url is None or self._redis is not None or self._closed:
            return
        timeouts: dict[str, Any] = {
            "socket_timeout": keys.SOCKET_TIMEOUT_S,
            "socket_connect_timeout": keys.SOCKET_TIMEOUT_S,
            "health_check_interval": keys.HEALTH_CHECK_INTERVAL_S,
        }
        # Commands get one immediate retry (a pooled connection the server closed); the
        # subscriber none: any break must go through _redis_failed and the reconnect, which
        # clears L1, because events published while it was disconnected are lost.
        self._redis = Redis.from_url(self._url, retry=Retry(NoBackoff(), 1), **timeouts)
        self._sub_redis = Redis.from_url(self._url, retry=Retry(NoBackoff(), 0), **timeouts)
        self._conn = _Conn(
            redis=self._redis,
            fill_value=self._redis.register_script(_FILL_VALUE_LUA),
            fill_list=self._redis.register_script(_FILL_LIST_LUA),
            append=self._redis.register_script(_APPEND_LUA),
        )
        try:
            await self._connect()
        except _REDIS_ERRORS as exc:
            self._redis_failed(exc, down=True)

    async def close(self) -> None:
        """Stop the background tasks and close every Redis connection. Idempotent."""
        self._closed = True
        tasks = [t for t in (self._reconnector, self._listener) if t is not None]
        tasks += self._inflight.values()
        self._inflight.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listener = self._reconnector = None
        await self._close_pubsub()
        for client in (self._redis, self._sub_redis):
            if client is not None:
                await client.aclose()
        self._redis = self._sub_redis = None
        self._conn = None
        self._up = False

    async def __aenter__(self) -> TwoLayerCache:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def redis_up(self) -> bool:
        """True while L2 and the invalidation channel are in use (False: degraded or no Redis)."""
        return self._up

    def cached(self, kind: str, key: str) -> bool:
        """Whether L1 holds a live entry for ``(kind, key)`` (diagnostics; counts nothing)."""
        return (kind, key) in self._l1

    def stats(self) -> dict[str, dict[str, LayerCounts]]:
        """Lookups since creation: ``{layer: {kind: LayerCounts}}``, layers l1, l2, loader.

        For the loader, ``hits`` are values loaded and ``errors`` loaders that raised.
        """
        out: dict[str, dict[str, LayerCounts]] = {}
        for (layer, kind, result), n in self._counts.items():
            old = out.setdefault(layer, {}).get(kind, LayerCounts())
            field = {"hit": "hits", "miss": "misses", "error": "errors"}[result]
            out[layer][kind] = dataclasses.replace(old, **{field: n})
        return out

    # ---------------------------------------------------------------- reads

    async def get(
        self, kind: str, key: str, loader: Callable[[], Awaitable[T]], *, codec: Codec[T]
    ) -> T:
        """The value of ``(kind, key)``: from L1, else L2, else ``loader()`` (then cached).

        Args:
            kind: what is cached (``persona``, ``chat_settings``...); its schema version is
                in ``backend.keys.SCHEMA_VERSIONS``.
            key: the entity's id as a string.
            loader: reads the value from the database; awaited at most once per process
                for concurrent misses of one key.
            codec: bytes for L2.

        Raises:
            Exception: whatever ``loader`` raised (to every caller waiting on that load);
                never a Redis error.
        """
        ck = (kind, key)
        entry = self._l1.get(ck)
        if entry is not None:
            self._count("l1", kind, "hit")
            return cast(T, entry.value)
        self._count("l1", kind, "miss")
        return cast(T, await self._single_flight(ck, lambda: self._load_value(ck, loader, codec)))

    async def get_list(
        self,
        kind: str,
        key: str,
        loader: Callable[[], Awaitable[Sequence[T]]],
        *,
        codec: Codec[T],
        max_len: int,
    ) -> list[T]:
        """The list ``(kind, key)`` (e.g. a chat's history, oldest first), at most ``max_len``.

        Like :meth:`get`, but L2 holds a Redis list of items (``codec`` encodes one item)
        that :meth:`append` extends in place. ``loader`` returns the whole list; only its
        last ``max_len`` items are kept. Use one ``max_len`` per kind: a list cached by a
        caller with a smaller cap holds only that many items.

        Raises:
            ValueError: ``max_len`` outside 1..MAX_LIST_LEN.
            Exception: whatever ``loader`` raised; never a Redis error.
        """
        _check_len(max_len)
        ck = (kind, key)
        entry = self._l1.get(ck)
        if entry is None:
            self._count("l1", kind, "miss")
            items = await self._single_flight(
                ck, lambda: self._load_list(ck, loader, codec, max_len)
            )
        else:
            self._count("l1", kind, "hit")
            items = entry.value
        return list(cast(tuple[T, ...], items)[-max_len:])

    async def _single_flight(
        self, ck: _Key, make: Callable[[], Coroutine[Any, Any, Any]]
    ) -> Any:
        task = self._inflight.get(ck)
        if task is None:
            task = asyncio.create_task(make())
            self._inflight[ck] = task
            task.add_done_callback(lambda t: self._flight_done(ck, t))
        # shield: a cancelled caller does not cancel the load the others wait for.
        return await asyncio.shield(task)

    def _flight_done(self, ck: _Key, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(ck) is task:
            del self._inflight[ck]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" report when all callers left

    async def _load_value(
        self, ck: _Key, loader: Callable[[], Awaitable[T]], codec: Codec[T]
    ) -> T:
        kind = ck[0]
        state = self._begin(ck)
        epoch = state.epoch
        try:
            vk, gk = self._keys_of(ck)
            gen: Any = None
            read = False
            if (c := self._l2()) is not None:
                raw: Any = None
                try:
                    raw, gen = await c.redis.mget(vk, gk)
                    read = True
                except _REDIS_ERRORS as exc:
                    self._redis_failed(exc)
                if raw is not None:
                    value = self._decode(codec, raw, ck)
                    if value is not _MISSING:
                        self._count("l2", kind, "hit")
                        self._l1_write(ck, state, epoch, value)
                        return cast(T, value)
                if read:
                    self._count("l2", kind, "miss")
            loaded = await self._call_loader(kind, loader)
            if read and (c := self._l2()) is not None:
                try:
                    await c.fill_value(
                        keys=[vk, gk], args=[gen or b"", codec.dumps(loaded), self._l2_ttl_ms]
                    )
                except _REDIS_ERRORS as exc:
                    self._redis_failed(exc)
            self._l1_write(ck, state, epoch, loaded)
            return loaded
        finally:
            self._end(ck, state)

    async def _load_list(
        self,
        ck: _Key,
        loader: Callable[[], Awaitable[Sequence[T]]],
        codec: Codec[T],
        max_len: int,
    ) -> tuple[T, ...]:
        kind = ck[0]
        state = self._begin(ck)
        epoch = state.epoch
        try:
            vk, gk = self._keys_of(ck)
            gen: Any = None
            read = False
            if (c := self._l2()) is not None:
                try:
                    async with c.redis.pipeline(transaction=False) as pipe:
                        pipe.lrange(vk, 0, -1)
                        pipe.get(gk)
                        raw_items, gen = await pipe.execute()
                    read = True
                except _REDIS_ERRORS as exc:
                    self._redis_failed(exc)
                if read and raw_items:  # element 0 is the header: present = cached
                    decoded = [self._decode(codec, raw, ck) for raw in raw_items[1:][-max_len:]]
                    if _MISSING not in decoded:
                        self._count("l2", kind, "hit")
                        items = tuple(cast(list[T], decoded))
                        self._l1_write(ck, state, epoch, items)
                        return items
                if read:
                    self._count("l2", kind, "miss")
            items = tuple(await self._call_loader(kind, loader))[-max_len:]
            if read and (c := self._l2()) is not None:
                try:
                    encoded = [codec.dumps(item) for item in items]
                    await c.fill_list(
                        keys=[vk, gk],
                        args=[gen or b"", self._l2_ttl_ms, keys.LIST_HEADER, *encoded],
                    )
                except _REDIS_ERRORS as exc:
                    self._redis_failed(exc)
            self._l1_write(ck, state, epoch, items)
            return items
        finally:
            self._end(ck, state)

    async def _call_loader(self, kind: str, loader: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await loader()
        except BaseException:
            self._count("loader", kind, "error")
            raise
        self._count("loader", kind, "hit")
        return value

    def _decode(self, codec: Codec[T], raw: bytes, ck: _Key) -> Any:
        try:
            return codec.loads(raw)
        except Exception as exc:  # any codec's decode error: treat as a miss, reload
            log.debug("cache: undecodable L2 entry %s (%s), reloading", ck, exc)
            return _MISSING

    # ---------------------------------------------------------------- writes

    async def invalidate(self, kind: str, key: str) -> None:
        """Drop ``(kind, key)`` everywhere: L1 here, L2, and (via pub/sub) every other L1.

        Call it after the database write commits. With Redis down it never raises: L1 here
        is dropped, and the L2 delete and the event are replayed on reconnect.
        """
        ck = (kind, key)
        metrics.CACHE_INVALIDATIONS.labels(kind, "local").inc()
        self._drop(ck)
        if self._redis is None:
            return
        if (c := self._l2()) is None:
            self._remember(ck)
            return
        try:
            async with c.redis.pipeline(transaction=True) as pipe:
                self._queue_invalidation(pipe, ck)
                await pipe.execute()
        except _REDIS_ERRORS as exc:
            self._redis_failed(exc)
            self._remember(ck)
        # A load that started during the round trip may have read the old L2 value.
        self._drop(ck)

    async def append(
        self, kind: str, key: str, item: T, *, codec: Codec[T], max_len: int
    ) -> None:
        """Append ``item`` to the cached list ``(kind, key)`` (after the database write).

        L2: pushed onto the Redis list and trimmed to the newest ``max_len`` (atomically,
        with a generation bump and an ``append`` event); this process's L1 takes the list
        the script returns; other processes drop their L1 list on the event and re-read
        L2. A list cached in neither layer is left alone (the next miss loads it whole).
        With Redis down, L1 here is appended in place and the L2 list is invalidated on
        reconnect. Never raises because of Redis.

        Raises:
            ValueError: ``max_len`` outside 1..MAX_LIST_LEN.
        """
        _check_len(max_len)
        ck = (kind, key)
        state = self._begin(ck)
        state.epoch += 1  # loads already running may predate the item: they fill nothing
        epoch = state.epoch
        self._inflight.pop(ck, None)
        try:
            c = self._l2()
            if c is not None:
                vk, gk = self._keys_of(ck)
                try:
                    raw_items = await c.append(
                        keys=[vk, gk],
                        args=[
                            codec.dumps(item),
                            max_len,
                            self._gen_ttl_ms,
                            self._channel,
                            self._event("append", ck),
                        ],
                    )
                except _REDIS_ERRORS as exc:
                    self._redis_failed(exc)
                    self._remember(ck)
                else:
                    if raw_items is not None:
                        decoded = [self._decode(codec, raw, ck) for raw in raw_items]
                        if _MISSING in decoded or not self._l1_write(
                            ck, state, epoch, tuple(decoded)
                        ):
                            self._l1.pop(ck, None)
                        return
            elif self._redis is not None:
                self._remember(ck)
            current = self._l1.get(ck)
            if current is None or not self._l1_write(
                ck, state, epoch, (*current.value, item)[-max_len:], expires=current.expires
            ):
                self._l1.pop(ck, None)
        finally:
            self._inflight.pop(ck, None)
            self._end(ck, state)

    # ---------------------------------------------------------------- in-process bookkeeping

    def _begin(self, ck: _Key) -> _KeyState:
        state = self._keys.get(ck)
        if state is None:
            state = self._keys[ck] = _KeyState()
        state.users += 1
        return state

    def _end(self, ck: _Key, state: _KeyState) -> None:
        state.users -= 1
        if state.users == 0 and self._keys.get(ck) is state:
            del self._keys[ck]

    def _l1_write(self, ck: _Key, state: _KeyState, epoch: int, value: Any,
                  expires: float | None = None) -> bool:
        """Write L1 unless a drop or another write happened since ``epoch`` was read; the
        entry expires at ``expires`` (monotonic; default: ``l1_ttl_s`` from now)."""
        if state.epoch != epoch:
            return False
        state.epoch += 1
        if expires is None:
            expires = self._clock() + self._l1_ttl_s
        self._l1[ck] = _L1Entry(value, expires)
        return True

    def _drop(self, ck: _Key) -> None:
        state = self._keys.get(ck)
        if state is not None:
            state.epoch += 1
        self._l1.pop(ck, None)
        self._inflight.pop(ck, None)  # later callers start a fresh load

    def _drop_all(self) -> None:
        for state in self._keys.values():
            state.epoch += 1
        self._l1.clear()
        self._inflight.clear()

    def _count(self, layer: str, kind: str, result: str) -> None:
        label = (layer, kind, result)
        series = self._series.get(label)
        if series is None:
            series = self._series[label] = metrics.CACHE_REQUESTS.labels(layer, kind, result)
        series.inc()
        self._counts[label] = self._counts.get(label, 0) + 1

    # ---------------------------------------------------------------- Redis plumbing

    def _l2(self) -> _Conn | None:
        return self._conn if self._up else None

    def _keys_of(self, ck: _Key) -> tuple[str, str]:
        kind, key = ck
        return (
            keys.cache_key(kind, key, namespace=self._ns),
            keys.generation_key(kind, key, namespace=self._ns),
        )

    def _event(self, op: str, ck: _Key) -> str:
        return json.dumps({"op": op, "kind": ck[0], "key": ck[1], "origin": self._origin})

    def _queue_invalidation(self, pipe: Any, ck: _Key) -> None:
        vk, gk = self._keys_of(ck)
        pipe.incr(gk)
        pipe.pexpire(gk, self._gen_ttl_ms)
        pipe.delete(vk)
        pipe.publish(self._channel, self._event("invalidate", ck))

    def _remember(self, ck: _Key) -> None:
        """Keep an invalidation that could not reach Redis, to replay on reconnect."""
        if len(self._pending) < self._l1.maxsize:
            self._pending[ck] = None
        elif not self._pending_overflow:
            self._pending_overflow = True
            log.warning(
                "cache: more than %d invalidations while Redis was down; the rest may be "
                "served stale from L2 for up to %.0f s after it returns",
                self._l1.maxsize,
                self._l2_ttl_ms / 1000,
            )

    def _redis_failed(self, exc: BaseException, *, down: bool = False) -> None:
        """Count a failed command; a connection problem switches to degraded mode."""
        metrics.CACHE_REDIS_ERRORS.inc()
        if isinstance(exc, ResponseError) and not down:
            # An error reply (OOM, READONLY...): the server is there; skip this command.
            now = time.monotonic()
            if now >= self._next_reply_warning:
                self._next_reply_warning = now + 60
                log.warning("cache: Redis refused a command: %s (logged once a minute)", exc)
            return
        self._up = False
        if self._outage or self._closed:
            return
        self._outage = True
        metrics.CACHE_REDIS_UP.set(0)
        log.warning(
            "cache: Redis at %s unreachable (%s: %s); serving from L1 and the database, "
            "values may be up to %.0f s stale until it returns; reconnecting in the background",
            self._label,
            type(exc).__name__,
            exc,
            self._l1_ttl_s,
        )
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = keys.RECONNECT_INITIAL_S
        while not self._closed:
            await asyncio.sleep(delay)
            delay = min(delay * 2, keys.RECONNECT_MAX_S)
            try:
                await self._connect()
            except _REDIS_ERRORS as exc:
                log.debug("cache: Redis reconnect failed: %s", exc)
                continue
            log.info("cache: Redis at %s is back; L2 and invalidations resumed", self._label)
            return

    async def _connect(self) -> None:
        """Subscribe (confirmed), replay pending invalidations, clear L1, go up.

        Raises:
            RedisError, OSError: Redis unreachable; nothing changed but the pub/sub object.
        """
        assert self._redis is not None and self._sub_redis is not None
        await self._close_pubsub()
        pubsub = self._sub_redis.pubsub()
        self._pubsub = pubsub
        await pubsub.subscribe(self._channel)
        # Wait for the confirmation: only then can no event published from now on be missed.
        deadline = time.monotonic() + keys.SOCKET_TIMEOUT_S * 4
        while True:
            message = await pubsub.get_message(timeout=keys.SOCKET_TIMEOUT_S)
            if message is not None and message["type"] == "subscribe":
                break
            if time.monotonic() > deadline:
                raise TimeoutError("no SUBSCRIBE confirmation from Redis")
        await self._replay_pending()
        self._drop_all()  # events may have been missed while down
        self._up = True
        self._outage = False
        metrics.CACHE_REDIS_UP.set(1)
        self._listener = asyncio.create_task(self._listen(pubsub))

    async def _replay_pending(self) -> None:
        assert self._redis is not None
        while self._pending:
            batch = list(self._pending)[:500]
            async with self._redis.pipeline(transaction=False) as pipe:
                for ck in batch:
                    self._queue_invalidation(pipe, ck)
                await pipe.execute()
            for ck in batch:
                self._pending.pop(ck, None)
        self._pending_overflow = False

    async def _listen(self, pubsub: PubSub) -> None:
        try:
            while True:
                # The timeout lets redis-py send its health-check PING on an idle channel.
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    self._on_event(message["data"])
        except Exception as exc:  # Redis gone, or a bug: either way events stop arriving
            if self._pubsub is pubsub:
                self._redis_failed(exc, down=True)

    def _on_event(self, data: bytes) -> None:
        try:
            event = json.loads(data)
            origin, kind, key = event["origin"], event["kind"], event["key"]
        except (ValueError, KeyError, TypeError):
            log.debug("cache: ignored malformed invalidation event %r", data)
            return
        if origin == self._origin:
            return
        metrics.CACHE_INVALIDATIONS.labels(kind, "remote").inc()
        self._drop((kind, key))

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        listener, self._listener = self._listener, None
        if listener is not None and listener is not asyncio.current_task():
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        if pubsub is not None:
            with contextlib.suppress(*_REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


def _check_len(max_len: int) -> None:
    if not 1 <= max_len <= MAX_LIST_LEN:
        raise ValueError(f"max_len must be in 1..{MAX_LIST_LEN}, got {max_len}")


def _redacted(url: str) -> str:
    """``scheme://host:port/db`` of a Redis URL, without credentials (for logs)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"

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
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from backend import keys, metrics
from backend.cache.codec import Codec
from backend.cache.l1 import L1, Key
from backend.cache.l2 import L2, REDIS_ERRORS, Conn, key_pair

log = logging.getLogger("botsim.cache")

T = TypeVar("T")
_MISSING: Any = object()
#: Longest list ``get_list``/``append`` accept (Lua ``unpack`` takes a few thousand args).
MAX_LIST_LEN = 4096


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
        self._ns = namespace
        self._l1 = L1(size=l1_size, ttl_s=l1_ttl_s, clock=clock)
        self._counts: dict[tuple[str, str, str], int] = {}
        self._series: dict[tuple[str, str, str], Any] = {}
        self._link: L2 | None = None
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect to Redis and subscribe to the invalidation channel.

        Never raises because Redis is unreachable: the cache then starts degraded (L1 and the
        loader) and a background task keeps trying. Does nothing without ``redis_url``.

        Raises:
            ValueError: ``redis_url`` is not a Redis URL (named without credentials).
        """
        if self._url is None or self._link is not None or self._closed:
            return
        self._link = L2(
            self._url,
            namespace=self._ns,
            l1_ttl_s=self._l1_ttl_s,
            l2_ttl_ms=self._l2_ttl_ms,
            pending_max=self._l1.maxsize,
            on_event=self._on_event,
            on_resync=self._l1.drop_all,
        )
        await self._link.start()

    async def close(self) -> None:
        """Stop the background tasks and close every Redis connection. Idempotent."""
        self._closed = True
        flights = self._l1.take_flights()
        for task in flights:
            task.cancel()
        # the loads end first: one cancelled mid-read could otherwise take a Redis
        # connection from the pool after it is closed, and leave it open
        await asyncio.gather(*flights, return_exceptions=True)
        if self._link is not None:
            await self._link.close()

    async def __aenter__(self) -> TwoLayerCache:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def redis_up(self) -> bool:
        """True while L2 and the invalidation channel are in use (False: degraded or no Redis)."""
        return self._link is not None and self._link.up and not self._closed

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
        value = await self._l1.single_flight(ck, lambda: self._load_value(ck, loader, codec))
        return cast(T, value)

    async def get_many(
        self, kind: str, keys: Sequence[str],
        loader: Callable[[list[str]], Awaitable[Mapping[str, T]]], *, codec: Codec[T],
        refresh: bool = False,
    ) -> dict[str, T]:
        """The values of many keys of ``kind`` at once (e.g. the profiles of the bots a
        worker takes on): L1 for each, then one L2 ``MGET`` for the misses, then one
        ``loader`` call for those still missing, whose values are written to L2 (one
        pipeline, each under the generation guard of :meth:`get`) and L1.

        Args:
            keys: the entities' ids as strings (repeats are read once).
            loader: missing keys → their values (one query); a key it leaves out (no such
                entity) is left out of the result and cached nowhere.
            codec: bytes for L2.
            refresh: load every key and write both layers again (their TTLs start over),
                as if none were cached: a process keeps the entries it uses from expiring
                one by one, each a query (the generation guard still applies).

        Returns:
            key → value, for the keys found.

        Raises:
            Exception: whatever ``loader`` raised (nothing is cached then); never a Redis
                error.
        """
        out: dict[str, T] = {}
        missing: list[Key] = []
        for key in dict.fromkeys(keys):
            entry = None if refresh else self._l1.get((kind, key))
            if entry is None:
                self._count("l1", kind, "miss")
                missing.append((kind, key))
            else:
                self._count("l1", kind, "hit")
                out[key] = cast(T, entry.value)
        if not missing:
            return out
        states = {ck: self._l1.begin(ck) for ck in missing}
        epochs = {ck: state.epoch for ck, state in states.items()}
        try:
            pairs = {ck: key_pair(ck, self._ns) for ck in missing}
            gens: dict[Key, Any] = {}
            read = False
            if (c := self._l2()) is not None:
                flat: list[Any] = []
                try:
                    flat = await c.redis.mget([k for ck in missing for k in pairs[ck]])
                    read = True
                except REDIS_ERRORS as exc:
                    self._failed(exc)
                if read:
                    still: list[Key] = []
                    for i, ck in enumerate(missing):
                        raw, gens[ck] = flat[2 * i], flat[2 * i + 1]
                        value = (_MISSING if raw is None or refresh
                                 else self._decode(codec, raw, ck))
                        if value is _MISSING:
                            self._count("l2", kind, "miss")
                            still.append(ck)
                        else:
                            self._count("l2", kind, "hit")
                            self._l1.write(ck, states[ck], epochs[ck], value)
                            out[ck[1]] = cast(T, value)
                    missing = still
            if not missing:
                return out
            wanted = [ck[1] for ck in missing]
            loaded = await self._call_loader(kind, lambda: loader(wanted))
            found = [ck for ck in missing if ck[1] in loaded]
            if read and found and (c := self._l2()) is not None:
                try:
                    async with c.redis.pipeline(transaction=False) as pipe:
                        for ck in found:
                            await c.fill_value(
                                keys=list(pairs[ck]),
                                args=[gens.get(ck) or b"", codec.dumps(loaded[ck[1]]),
                                      self._l2_ttl_ms],
                                client=pipe)
                        await pipe.execute()
                except REDIS_ERRORS as exc:
                    self._failed(exc)
            for ck in found:
                value = loaded[ck[1]]
                self._l1.write(ck, states[ck], epochs[ck], value)
                out[ck[1]] = value
            return out
        finally:
            for ck, state in states.items():
                self._l1.end(ck, state)

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
            items = await self._l1.single_flight(
                ck, lambda: self._load_list(ck, loader, codec, max_len)
            )
        else:
            self._count("l1", kind, "hit")
            items = entry.value
        return list(cast(tuple[T, ...], items)[-max_len:])

    async def _load_value(
        self, ck: Key, loader: Callable[[], Awaitable[T]], codec: Codec[T]
    ) -> T:
        kind = ck[0]
        state = self._l1.begin(ck)
        epoch = state.epoch
        try:
            vk, gk = key_pair(ck, self._ns)
            gen: Any = None
            read = False
            if (c := self._l2()) is not None:
                raw: Any = None
                try:
                    raw, gen = await c.redis.mget(vk, gk)
                    read = True
                except REDIS_ERRORS as exc:
                    self._failed(exc)
                if raw is not None:
                    value = self._decode(codec, raw, ck)
                    if value is not _MISSING:
                        self._count("l2", kind, "hit")
                        self._l1.write(ck, state, epoch, value)
                        return cast(T, value)
                if read:
                    self._count("l2", kind, "miss")
            loaded = await self._call_loader(kind, loader)
            if read and (c := self._l2()) is not None:
                try:
                    await c.fill_value(
                        keys=[vk, gk], args=[gen or b"", codec.dumps(loaded), self._l2_ttl_ms]
                    )
                except REDIS_ERRORS as exc:
                    self._failed(exc)
            self._l1.write(ck, state, epoch, loaded)
            return loaded
        finally:
            self._l1.end(ck, state)

    async def _load_list(
        self,
        ck: Key,
        loader: Callable[[], Awaitable[Sequence[T]]],
        codec: Codec[T],
        max_len: int,
    ) -> tuple[T, ...]:
        kind = ck[0]
        state = self._l1.begin(ck)
        epoch = state.epoch
        try:
            vk, gk = key_pair(ck, self._ns)
            gen: Any = None
            read = False
            if (c := self._l2()) is not None:
                try:
                    async with c.redis.pipeline(transaction=False) as pipe:
                        pipe.lrange(vk, 0, -1)
                        pipe.get(gk)
                        raw_items, gen = await pipe.execute()
                    read = True
                except REDIS_ERRORS as exc:
                    self._failed(exc)
                if read and raw_items:  # element 0 is the header: present = cached
                    decoded = [self._decode(codec, raw, ck) for raw in raw_items[1:][-max_len:]]
                    if _MISSING not in decoded:
                        self._count("l2", kind, "hit")
                        items = tuple(cast(list[T], decoded))
                        self._l1.write(ck, state, epoch, items)
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
                except REDIS_ERRORS as exc:
                    self._failed(exc)
            self._l1.write(ck, state, epoch, items)
            return items
        finally:
            self._l1.end(ck, state)

    async def _call_loader(self, kind: str, loader: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await loader()
        except BaseException:
            self._count("loader", kind, "error")
            raise
        self._count("loader", kind, "hit")
        return value

    def _decode(self, codec: Codec[T], raw: bytes, ck: Key) -> Any:
        try:
            return codec.loads(raw)
        except Exception as exc:  # any codec's decode error: treat as a miss, reload
            # the class only: a decode error may quote the entry (a chat's messages)
            log.debug("cache: undecodable L2 entry %s (%s), reloading", ck,
                      type(exc).__name__)
            return _MISSING

    # ---------------------------------------------------------------- writes

    async def invalidate(self, kind: str, key: str) -> None:
        """Drop ``(kind, key)`` everywhere: L1 here, L2, and (via pub/sub) every other L1.

        Call it after the database write commits. With Redis down it never raises: L1 here
        is dropped, and the L2 delete and the event are replayed on reconnect.
        """
        ck = (kind, key)
        metrics.CACHE_INVALIDATIONS.labels(kind, "local").inc()
        self._l1.drop(ck)
        link = self._link
        if link is None or self._closed:
            return
        if (c := link.conn()) is None:
            link.remember(ck)
            return
        try:
            async with c.redis.pipeline(transaction=True) as pipe:
                link.queue_invalidation(pipe, ck)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            link.failed(exc)
            link.remember(ck)
        # A load that started during the round trip may have read the old L2 value.
        self._l1.drop(ck)

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
        state = self._l1.begin(ck)
        state.epoch += 1  # loads already running may predate the item: they fill nothing
        epoch = state.epoch
        self._l1.forget_flight(ck)
        try:
            link, c = self._link, self._l2()
            if c is not None and link is not None:
                vk, gk = key_pair(ck, self._ns)
                try:
                    raw_items = await c.append(
                        keys=[vk, gk],
                        args=[
                            codec.dumps(item),
                            max_len,
                            link.gen_ttl_ms,
                            link.channel,
                            link.event("append", ck),
                        ],
                    )
                except REDIS_ERRORS as exc:
                    self._failed(exc)
                    self._remember(ck)
                else:
                    if raw_items is not None:
                        decoded = [self._decode(codec, raw, ck) for raw in raw_items]
                        if _MISSING in decoded or not self._l1.write(
                            ck, state, epoch, tuple(decoded)
                        ):
                            self._l1.discard(ck)
                        return
            elif link is not None and not self._closed:
                link.remember(ck)
            current = self._l1.get(ck)
            if current is None or not self._l1.write(
                ck, state, epoch, (*current.value, item)[-max_len:], expires=current.expires
            ):
                self._l1.discard(ck)
        finally:
            self._l1.forget_flight(ck)
            self._l1.end(ck, state)

    # ---------------------------------------------------------------- Redis plumbing

    def _count(self, layer: str, kind: str, result: str) -> None:
        label = (layer, kind, result)
        series = self._series.get(label)
        if series is None:
            series = self._series[label] = metrics.CACHE_REQUESTS.labels(layer, kind, result)
        series.inc()
        self._counts[label] = self._counts.get(label, 0) + 1

    def _l2(self) -> Conn | None:
        return self._link.conn() if self._link is not None and not self._closed else None

    def _failed(self, exc: BaseException) -> None:
        if self._link is not None:
            self._link.failed(exc)

    def _remember(self, ck: Key) -> None:
        if self._link is not None:
            self._link.remember(ck)

    def _on_event(self, kind: str, key: str) -> None:
        metrics.CACHE_INVALIDATIONS.labels(kind, "remote").inc()
        self._l1.drop((kind, key))


def _check_len(max_len: int) -> None:
    if not 1 <= max_len <= MAX_LIST_LEN:
        raise ValueError(f"max_len must be in 1..{MAX_LIST_LEN}, got {max_len}")


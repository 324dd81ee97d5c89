"""L1 of the two-layer cache: this process's memory (LRU + TTL), epochs, single-flight.

* Entries live ``ttl_s`` seconds (a ``cachetools.TLRUCache`` with a per-entry expiry, so an
  entry can keep the expiry of the one it replaces) and the least recently used go beyond
  ``size``.
* **Epochs**: every key with an operation in flight has an epoch; any drop or write bumps
  it, and a write whose epoch moved since its load began is skipped (the load may have read
  a value older than the drop).
* **Single-flight**: concurrent misses of one key share one task; every caller gets its
  result or its exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from cachetools import TLRUCache

#: An L1 key: ``(kind, key)``.
Key = tuple[str, str]


class Entry(NamedTuple):
    """An L1 value and the monotonic time it expires at."""

    value: Any
    expires: float


def _expiry(_key: Any, entry: Entry, _now: float) -> float:
    return entry.expires


class KeyState:
    """Epoch of a key with operations in flight (exists only while ``users`` > 0)."""

    __slots__ = ("epoch", "users")

    def __init__(self) -> None:
        self.epoch = 0
        self.users = 0


class L1:
    """This process's layer (module docstring). One instance per event loop.

    Args:
        size: entries kept (least recently used evicted beyond).
        ttl_s: seconds an entry lives unless written with another expiry.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, *, size: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: TLRUCache[Key, Entry] = TLRUCache(maxsize=size, ttu=_expiry, timer=clock)
        self._inflight: dict[Key, asyncio.Task[Any]] = {}
        self._keys: dict[Key, KeyState] = {}

    @property
    def maxsize(self) -> int:
        """Entries kept at most."""
        return int(self._cache.maxsize)

    def __contains__(self, ck: Key) -> bool:
        return ck in self._cache

    def get(self, ck: Key) -> Entry | None:
        """The live entry of ``ck``, or None."""
        return self._cache.get(ck)

    def discard(self, ck: Key) -> None:
        """Remove the entry of ``ck`` (no epoch bump: for a writer that holds the key)."""
        self._cache.pop(ck, None)

    # ---------------------------------------------------------------- epochs

    def begin(self, ck: Key) -> KeyState:
        """Register an operation on ``ck``; pair with :meth:`end`."""
        state = self._keys.get(ck)
        if state is None:
            state = self._keys[ck] = KeyState()
        state.users += 1
        return state

    def end(self, ck: Key, state: KeyState) -> None:
        """End an operation registered by :meth:`begin`."""
        state.users -= 1
        if state.users == 0 and self._keys.get(ck) is state:
            del self._keys[ck]

    def write(self, ck: Key, state: KeyState, epoch: int, value: Any,
              expires: float | None = None) -> bool:
        """Write ``value`` unless a drop or another write happened since ``epoch`` was read.

        The entry expires at ``expires`` (monotonic; default: ``ttl_s`` from now).

        Returns:
            Whether it was written.
        """
        if state.epoch != epoch:
            return False
        state.epoch += 1
        if expires is None:
            expires = self._clock() + self.ttl_s
        self._cache[ck] = Entry(value, expires)
        return True

    def drop(self, ck: Key) -> None:
        """Remove ``ck``: its entry, its load in flight (later callers start a fresh one),
        and any write of a load already running."""
        state = self._keys.get(ck)
        if state is not None:
            state.epoch += 1
        self._cache.pop(ck, None)
        self._inflight.pop(ck, None)

    def drop_all(self) -> None:
        """:meth:`drop` every key."""
        for state in self._keys.values():
            state.epoch += 1
        self._cache.clear()
        self._inflight.clear()

    # ---------------------------------------------------------------- single-flight

    async def single_flight(self, ck: Key, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """The result of the load of ``ck`` in flight, or of a new one from ``make()``.

        Raises:
            Exception: whatever the load raised, to every caller waiting on it.
        """
        task = self._inflight.get(ck)
        if task is None:
            task = asyncio.create_task(make())
            self._inflight[ck] = task
            task.add_done_callback(lambda t: self._flight_done(ck, t))
        # shield: a cancelled caller does not cancel the load the others wait for.
        return await asyncio.shield(task)

    def forget_flight(self, ck: Key) -> None:
        """Let the next miss of ``ck`` start a new load (the one in flight may be stale)."""
        self._inflight.pop(ck, None)

    def take_flights(self) -> list[asyncio.Task[Any]]:
        """Every load in flight, forgotten (for the caller to cancel)."""
        tasks = list(self._inflight.values())
        self._inflight.clear()
        return tasks

    def _flight_done(self, ck: Key, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(ck) is task:
            del self._inflight[ck]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" report when all callers left

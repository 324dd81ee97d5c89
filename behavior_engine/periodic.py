"""Jobs run every N seconds on the monotonic clock: the worker's tick, heartbeat, reflection
and retention.

APScheduler's interval trigger (which the worker used before) computes each next run from
the wall clock (``datetime.now``): when a worker's wall clock stepped back 90 s (an NTP step,
a VM resumed; the chaos run's ``clock_jump``), its next tick and heartbeat were 90 s away;
the worker stopped talking and its heartbeat expired while it ran (``botsim chaos``, issue
19: 30 s without a message in the whole run). Here the periods are measured on
``time.monotonic``, which no clock step moves (PEP 418).

Each job runs in its own task, one run at a time (a run that takes longer than the period
is followed by the next at once; the runs it overlapped are not made up: APScheduler's
``max_instances=1, coalesce=True``). A job that raises is logged and runs again at its next
time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("botsim.periodic")


@dataclass(frozen=True)
class _Job:
    run: Callable[[], Awaitable[object]]
    every_s: float
    first_in_s: float
    name: str


class Periodic:
    """A set of periodic async jobs; :meth:`start` starts them, :meth:`stop` ends them
    after the runs in progress.

    Args:
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._jobs: list[_Job] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    def add(self, run: Callable[[], Awaitable[object]], every_s: float, *,
            first_in_s: float | None = None, name: str | None = None) -> None:
        """Run ``run()`` every ``every_s`` seconds, the first time ``first_in_s`` seconds
        after :meth:`start` (default: one period).

        Raises:
            ValueError: ``every_s`` not above 0, or ``first_in_s`` below 0.
            RuntimeError: already started.
        """
        if not every_s > 0:
            raise ValueError(f"every_s must be above 0, got {every_s!r}")
        if first_in_s is not None and first_in_s < 0:
            raise ValueError(f"first_in_s must be 0 or more, got {first_in_s!r}")
        if self._tasks:
            raise RuntimeError("Periodic already started: add jobs before start()")
        label = name or str(getattr(run, "__name__", "job"))
        self._jobs.append(_Job(run, every_s, every_s if first_in_s is None else first_in_s,
                               label))

    def jobs(self) -> list[Callable[[], Awaitable[object]]]:
        """The jobs added, in order."""
        return [job.run for job in self._jobs]

    def start(self) -> None:
        """Start every job's loop on the running event loop."""
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._loop(job), name=f"periodic:{job.name}")
                       for job in self._jobs]

    def stop(self) -> None:
        """No run starts from now on; a run in progress finishes (:meth:`join` waits)."""
        self._stop.set()

    async def join(self, timeout_s: float | None = None) -> bool:
        """Wait until every loop has ended (after :meth:`stop`); whether they all did
        within ``timeout_s`` (the late ones are cancelled)."""
        if not self._tasks:
            return True
        _done, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return not pending

    async def _loop(self, job: _Job) -> None:
        due = self.clock() + job.first_in_s
        while not self._stop.is_set():
            wait = due - self.clock()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)
                if self._stop.is_set():
                    return
            try:
                await job.run()
            except Exception:
                log.exception("periodic job %s failed; it runs again in %.1f s", job.name,
                              job.every_s)
            due += job.every_s
            now = self.clock()
            if due < now:  # overran: the next run now, the skipped ones not made up
                due = now

"""A SQLite statement cancelled again and again leaves no task and no thread behind.

anyio's cancel scopes (Starlette's, when a client leaves an ``/events`` stream) cancel a
task at every await until it ends. With SQLAlchemy 2.1's ``terminate`` and aiosqlite 0.22,
a connection whose statement was cancelled that way got two stop requests; its graceful
close then awaited the second forever: one task pending per cancellation, and an event loop
that hung when it closed (ci36: a test teardown stuck for 120 s). ``make_engine`` queues a
connection's stop once (:class:`backend.db.session._StopOnce`).
"""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

from sqlalchemy import text

from backend.db.session import make_engine, make_sessionmaker

ROUNDS = 150


async def _poll_until_cancelled(sessions: object) -> None:
    while True:
        async with sessions() as session:  # type: ignore[operator]
            await session.execute(text("SELECT 1"))
        await asyncio.sleep(0)


async def _cancel_like_anyio(task: asyncio.Task[None]) -> None:
    """Cancels ``task`` at each of its awaits until it ends (an anyio cancel scope)."""
    for _ in range(50):
        if task.done():
            break
        task.cancel()
        await asyncio.sleep(0)
    try:
        async with asyncio.timeout(2):
            await task
    except asyncio.CancelledError:
        pass


async def test_repeated_cancellation_leaves_no_pending_close(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'cancel.db'}")
    sessions = make_sessionmaker(engine)
    rng = random.Random(7)
    try:
        for _ in range(ROUNDS):
            task = asyncio.create_task(_poll_until_cancelled(sessions))
            await asyncio.sleep(rng.random() * 0.003)
            await _cancel_like_anyio(task)
        await asyncio.sleep(0.3)  # a close that can finish has finished by now
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        names = [t.get_coro().__qualname__ for t in left]  # type: ignore[union-attr]
        assert left == [], f"{len(left)} tasks still pending: {names[:3]}"
    finally:
        await engine.dispose()
    deadline = asyncio.get_running_loop().time() + 5
    while asyncio.get_running_loop().time() < deadline:
        workers = [t for t in threading.enumerate()
                   if "_connection_worker_thread" in t.name]
        if not workers:
            break
        await asyncio.sleep(0.05)
    assert workers == [], f"aiosqlite threads still running: {len(workers)}"

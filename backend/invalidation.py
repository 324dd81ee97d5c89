"""Cache invalidation after commit: the stores mark what a transaction changed; once it
commits, each mark becomes ``TwoLayerCache.invalidate`` (L1 here, L2, and every other
process's L1 over Redis pub/sub). Never before the commit: a reader could reload the old row
and cache it again.

Cached kinds (``backend.keys.SCHEMA_VERSIONS`` versions their layout):
``bot`` (key: bot id), ``chats`` (key: ``enabled``), ``history`` (key: chat id, a list),
``settings`` (key: ``simulation``), ``events`` (key: ``latest``: the newest world event's
id, the workers' signal to read the events again).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from backend.cache import TwoLayerCache

KIND_BOT = "bot"
KIND_CHATS = "chats"
KIND_HISTORY = "history"
KIND_SETTINGS = "settings"
KIND_EVENTS = "events"

_PENDING = "botsim_invalidate"


def invalidate_after_commit(
    session: AsyncSession, cache: TwoLayerCache | None, kind: str, key: str
) -> None:
    """Invalidate ``(kind, key)`` once ``session`` commits (never before: a reader could
    reload the old row and cache it again). No-op without a cache."""
    if cache is None:
        return
    pending: list[tuple[TwoLayerCache, str, str]] = session.sync_session.info.setdefault(
        _PENDING, [])
    pending.append((cache, kind, key))


_TASKS: set[asyncio.Task[Any]] = set()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    loop = asyncio.get_running_loop()
    for cache, kind, key in pending:
        task = loop.create_task(cache.invalidate(kind, key))
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)


async def settle() -> None:
    """Wait for the invalidations already started (after commits) to finish: a one-shot
    command calls it before closing its cache, or its last change might not be announced to
    the other processes. Their errors are not raised (the cache logs and counts them).
    Only this event loop's are awaited (a task belongs to the loop that made it)."""
    loop = asyncio.get_running_loop()
    while mine := [t for t in _TASKS if t.get_loop() is loop and not t.done()]:
        await asyncio.gather(*mine, return_exceptions=True)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)

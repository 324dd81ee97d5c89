"""World events: what the operator injects or schedules (issue 16, item 5).

Keyword-only async functions over an ``AsyncSession``; the caller owns the transaction.
Rows come back as :class:`~backend.schemas.WorldEvent` (validated), oldest first.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db.models import WorldEventRow
from backend.db.types import utcnow
from backend.errors import NotFound, ValidationFailed
from backend.invalidation import KIND_EVENTS, invalidate_after_commit
from backend.schemas import WorldEvent, WorldEventIn

if TYPE_CHECKING:
    from backend.cache import TwoLayerCache

#: The cache key of the newest event's id (kind :data:`~backend.invalidation.KIND_EVENTS`).
LATEST = "latest"

#: The largest page :func:`list_events` returns.
MAX_LIMIT = 500


def _out(row: WorldEventRow) -> WorldEvent:
    return WorldEvent(id=row.id, headline=row.headline, shocks=row.shocks or {},
                      views=row.views or {}, topics=row.topics or [], at=row.at,
                      created_by=row.created_by, created_at=row.created_at)


async def add_event(session: AsyncSession, *, event: WorldEventIn, created_by: str,
                    now: datetime | None = None,
                    cache: TwoLayerCache | None = None) -> WorldEvent:
    """Store ``event``; its time is ``event.at`` or ``now`` (default: the clock).

    Args:
        event: the validated event.
        created_by: who injected it (an operator's name, ``cli``, ``demo``), ≤ 64 chars.
        now: aware UTC now.
        cache: invalidated once the transaction commits (``events``/:data:`LATEST`), so
            every worker reads the events again at its next tick.

    Returns:
        The stored event with its id.
    """
    now = now or utcnow()
    row = WorldEventRow(headline=event.headline, shocks=dict(event.shocks),
                        views=dict(event.views), topics=list(event.topics),
                        at=event.at or now, created_by=created_by[:64], created_at=now)
    session.add(row)
    await session.flush()
    invalidate_after_commit(session, cache, KIND_EVENTS, LATEST)
    return _out(row)


async def latest_event_id(session: AsyncSession) -> int:
    """The largest event id stored (0: none). One query on the primary key."""
    return int(await session.scalar(select(func.max(WorldEventRow.id))) or 0)


async def list_events(session: AsyncSession, *, after_id: int = 0,
                      since: datetime | None = None,
                      limit: int = MAX_LIMIT) -> list[WorldEvent]:
    """Events with an id above ``after_id`` (and taking effect at or after ``since``, if
    given), oldest id first, at most ``limit`` (1–:data:`MAX_LIMIT`).

    Raises:
        ValueError: ``limit`` out of range or ``after_id`` negative.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1-{MAX_LIMIT}, got {limit}")
    if after_id < 0:
        raise ValueError(f"after_id must be >= 0, got {after_id}")
    query = select(WorldEventRow).where(WorldEventRow.id > after_id)
    if since is not None:
        query = query.where(WorldEventRow.at >= since)
    rows = (await session.scalars(query.order_by(WorldEventRow.id).limit(limit))).all()
    return [_out(r) for r in rows]


async def cancel_event(session: AsyncSession, *, event_id: int,
                       now: datetime | None = None,
                       cache: TwoLayerCache | None = None) -> WorldEvent:
    """Delete a scheduled event that has not happened yet (``cache``: as :func:`add_event`).

    Raises:
        NotFound: no event ``event_id``.
        ValidationFailed: the event already happened (the chat reacted: it stays on record).
    """
    row = await session.get(WorldEventRow, event_id)
    if row is None:
        raise NotFound("world event", event_id)
    if row.at <= (now or utcnow()):
        raise ValidationFailed(f"world event {event_id}", [(
            "at", f"already happened at {row.at.isoformat()}; only a scheduled event can be "
                  "cancelled")])
    out = _out(row)
    await session.execute(delete(WorldEventRow).where(WorldEventRow.id == event_id))
    invalidate_after_commit(session, cache, KIND_EVENTS, LATEST)
    return out

"""``/api/v1/world-events``: the world events the operator injects or schedules (issue 16,
item 5): a headline, price shocks, views and topics the market feed, moods, stances and the
chats' topics react to (:mod:`behavior_engine.events`).

Routes:

- ``GET /world-events?after_id=&limit=``: stored events by id, oldest first (any user);
  ``next_after_id`` is the ``after_id`` of the next page (None on the last).
- ``POST /world-events`` (admin): a :class:`WorldEventCreate` body, either an event's fields
  (``headline`` required) or ``{"preset": "rate_hike", "at": ...}``; 201 with the stored
  event; audited ``world_event.created``. ``at`` (aware) must lie within
  :data:`MAX_BACKDATE` before and :data:`MAX_AHEAD` after now; none: now.
- ``DELETE /world-events/{id}`` (admin): cancel a scheduled event; 404 unknown, 409 when it
  already happened; audited ``world_event.cancelled``. Answers the cancelled event.
- ``GET /world-events/presets``: the ready-made events (:data:`behavior_engine.events.PRESETS`).

Errors are RFC 9457 problem details; a refused body names each field
(``["body", "shocks"]``, ``["body", "preset"]``). Also here: what the live message stream
(``GET /api/v1/events``, :mod:`backend.api.routes_ops`) needs to send the events as they
happen (:func:`due_events`, :func:`sse_world_event`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.api.deps import (
    DEFAULT_PAGE,
    E404,
    E409,
    E422,
    Admin,
    PageLimit,
    State,
    Viewer,
    audit_change,
)
from backend.api.problems import invalid
from backend.api.security import MAX_DB_ID, ApiState, DbId
from backend.db.types import utcnow
from backend.errors import NotFound, ValidationFailed
from backend.schemas import WorldEvent, WorldEventIn
from backend.stores import events as event_store
from behavior_engine.events import PRESETS

router = APIRouter()

#: How far back an event's ``at`` may be set (a late entry of what just happened).
MAX_BACKDATE = timedelta(days=1)
#: How far ahead an event may be scheduled.
MAX_AHEAD = timedelta(days=30)
#: Audit entity and actions.
ENTITY = "world_event"
CREATED = "world_event.created"
CANCELLED = "world_event.cancelled"


class WorldEventCreate(WorldEventIn):
    """Body of "inject a world event": an event's fields (``headline`` required, as in
    :class:`~backend.schemas.WorldEventIn`), or a ``preset`` name with at most ``at``.

    Attributes:
        preset: a name of ``GET /world-events/presets`` (``rate_hike``...); with it, only
            ``at`` may be given.
        headline: 3–280 characters; required without a preset.
    """

    headline: str | None = Field(default=None, min_length=3, max_length=280)  # type: ignore[assignment]
    preset: str | None = Field(default=None, max_length=32, description="a preset's name")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str | None) -> str | None:
        if v is not None and v not in PRESETS:
            raise ValueError(f"unknown preset {v!r} (known: {', '.join(PRESETS)})")
        return v

    def event(self) -> WorldEventIn:
        """The event to store.

        Raises:
            RequestValidationError: a preset with other fields than ``at`` (``body.preset``),
                or neither a preset nor a headline (``body.headline``).
        """
        if self.preset is not None:
            extra = sorted(self.model_fields_set - {"preset", "at"})
            if extra:
                raise invalid("body", [("preset", "a preset takes only 'at'; drop "
                                                  + ", ".join(extra))])
            return PRESETS[self.preset].model_copy(update={"at": self.at})
        if self.headline is None:
            raise invalid("body", [("headline", "required (or give a preset)")])
        return WorldEventIn(headline=self.headline, shocks=self.shocks, views=self.views,
                            topics=self.topics, at=self.at)


class WorldEventsOut(BaseModel):
    """A page of world events, by id (oldest first).

    Attributes:
        items: the events.
        next_after_id: pass it as ``after_id`` for the next page; None on the last.
    """

    model_config = ConfigDict(frozen=True)

    items: list[WorldEvent]
    next_after_id: int | None = None


class PresetOut(WorldEventIn):
    """A ready-made event and its ``name`` (``at`` is always None: it happens when sent)."""

    name: str


def check_at(at: datetime | None, now: datetime) -> datetime | None:
    """``at`` in UTC, within :data:`MAX_BACKDATE` before and :data:`MAX_AHEAD` after ``now``.

    Raises:
        RequestValidationError: out of that range (``body.at``).
    """
    if at is None:
        return None
    try:
        utc = at.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or not now - MAX_BACKDATE <= utc <= now + MAX_AHEAD:
        raise invalid("body", [("at", f"must be within {MAX_BACKDATE.days} day(s) before and "
                                      f"{MAX_AHEAD.days} days after now")])
    return utc


def audited(event: WorldEvent) -> dict[str, Any]:
    """The fields of ``event`` an audit entry records (JSON)."""
    return event.model_dump(mode="json", include={"headline", "shocks", "views", "topics",
                                                  "at"})


async def create_event(state: ApiState, who: Any, body: WorldEventCreate) -> WorldEvent:
    """Store ``body``'s event as ``who`` (a :class:`~backend.api.security.Principal`) and
    audit it, in one transaction (the route's work; the panel reuses it)."""
    now = utcnow()
    event = body.event()
    event = event.model_copy(update={"at": check_at(event.at, now)})
    async with state.sessionmaker() as session, session.begin():
        stored = await event_store.add_event(session, event=event, created_by=who.username,
                                             now=now, cache=state.cache)
        await audit_change(session, who, CREATED, ENTITY, stored.id, None, audited(stored))
    return stored


async def read_events(state: ApiState, *, after_id: int = 0,
                      limit: int = DEFAULT_PAGE) -> WorldEventsOut:
    """A page of events with an id above ``after_id`` (``limit``: 1 to
    :data:`~backend.api.deps.MAX_PAGE`)."""
    async with state.sessionmaker() as session:
        rows = await event_store.list_events(session, after_id=after_id, limit=limit + 1)
    kept = rows[:limit]
    return WorldEventsOut(items=kept,
                          next_after_id=kept[-1].id if len(rows) > limit else None)


@router.get("/world-events", response_model=WorldEventsOut, tags=["world events"])
async def list_world_events(
    _who: Viewer,
    state: State,
    after_id: Annotated[int, Query(ge=0, le=MAX_DB_ID,
                                   description="only events with a larger id")] = 0,
    limit: PageLimit = DEFAULT_PAGE,
) -> WorldEventsOut:
    """World events by id, oldest first, scheduled ones included (``at`` in the future);
    pass ``next_after_id`` back as ``after_id`` for the next page."""
    return await read_events(state, after_id=after_id, limit=limit)


@router.get("/world-events/presets", response_model=list[PresetOut], tags=["world events"])
async def list_presets(_who: Viewer) -> list[PresetOut]:
    """The ready-made events, by name (``POST /world-events`` with ``{"preset": name}``)."""
    return [PresetOut(name=name, **event.model_dump()) for name, event in PRESETS.items()]


@router.post("/world-events", response_model=WorldEvent, status_code=201,
             tags=["world events"], responses={**E422})
async def post_world_event(body: WorldEventCreate, who: Admin, state: State) -> WorldEvent:
    """Inject a world event now, or schedule it at ``at`` (admin). Every worker picks it up
    within seconds: prices step by its shocks, moods and stances follow, the chats turn to
    its topics. Audited ``world_event.created``. 422 names each refused field."""
    return await create_event(state, who, body)


@router.delete("/world-events/{event_id}", response_model=WorldEvent, tags=["world events"],
               responses={**E404, **E409})
async def delete_world_event(event_id: DbId, who: Admin, state: State) -> WorldEvent:
    """Cancel a scheduled event that has not happened yet (admin); audited
    ``world_event.cancelled``. 404 for an unknown id, 409 once it happened (the chats
    reacted: it stays on record)."""
    try:
        async with state.sessionmaker() as session, session.begin():
            gone = await event_store.cancel_event(session, event_id=event_id,
                                                  cache=state.cache)
            await audit_change(session, who, CANCELLED, ENTITY, event_id, audited(gone), None)
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    except ValidationFailed as exc:
        reason = "; ".join(r for _, r in exc.problems) or str(exc)
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"world event {event_id} cannot be cancelled: {reason}"
                            ) from None
    return gone


# --- the live stream's part -------------------------------------------------------------

#: Seconds between two reads of due world events by a live stream.
STREAM_POLL_S = 2.0
#: Events of the live stream at most per read (a week of operator events fits).
STREAM_BATCH = event_store.MAX_LIMIT
#: How far back a live stream's ``world_since`` may reach, and its default.
STREAM_BACKLOG_MAX = timedelta(days=7)
STREAM_BACKLOG = timedelta(hours=1)


def stream_since(world_since: datetime | None, now: datetime) -> datetime:
    """The time from which a live stream sends world events: ``world_since`` (naive: UTC)
    clamped to the last :data:`STREAM_BACKLOG_MAX`; none: :data:`STREAM_BACKLOG` ago."""
    if world_since is None:
        return now - STREAM_BACKLOG
    if world_since.tzinfo is None or world_since.utcoffset() is None:
        world_since = world_since.replace(tzinfo=UTC)
    try:
        utc = world_since.astimezone(UTC)
    except (OverflowError, ValueError):
        return now - STREAM_BACKLOG
    return min(max(utc, now - STREAM_BACKLOG_MAX), now)


async def due_events(state: ApiState, since: datetime, sent: set[int],
                     now: datetime | None = None) -> list[WorldEvent]:
    """The events taking effect in ``[since, now]`` whose id is not in ``sent`` (which gets
    them), by time; scheduled ones come once their time has passed."""
    now = now or utcnow()
    async with state.sessionmaker() as session:
        found = await event_store.list_events(session, since=since, limit=STREAM_BATCH)
    due = sorted((e for e in found if e.at <= now and e.id not in sent),
                 key=lambda e: (e.at, e.id))
    sent.update(e.id for e in due)
    return due


def sse_world_event(event: WorldEvent) -> str:
    """``event: world_event`` with the event as JSON data (no ``id:`` line: the stream's
    ``Last-Event-ID`` stays the last message's)."""
    return f"event: world_event\ndata: {event.model_dump_json()}\n\n"


def shocks_text(shocks: Iterable[tuple[str, float]]) -> str:
    """``[("BIST100", -2.5)]`` → ``"BIST100 −2.5 %"`` (a real minus sign), comma-separated."""
    return ", ".join(f"{s} {'+' if p > 0 else '−'}{abs(p):g} %" for s, p in shocks)


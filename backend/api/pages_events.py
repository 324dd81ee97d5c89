"""The panel's world events page: ``/world-events`` (issue 16, item 5).

Every stored event, newest first (time in UTC, headline, shocks, views, topics, who, and
whether it happened or is scheduled), for any logged-in user; otherwise a redirect to
``/login``, as every page. An admin also gets a form to inject one (headline, shocks,
views, topics, optional time), a button per preset and a "Cancel" button on scheduled
events: ``panel.js`` sends them to ``POST`` / ``DELETE /api/v1/world-events`` with the
session's CSRF token. A viewer sees the list only (the API would refuse their writes).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from backend.api import routes_events
from backend.api.deps import MAX_PAGE, State
from backend.api.pages import _principal, _render, _time, _to_login
from backend.api.security import ApiState
from backend.db.types import utcnow
from backend.schemas import WorldEvent
from behavior_engine.events import PRESETS

router = APIRouter(include_in_schema=False)

#: Events shown at most (the newest ones).
PAGE_MAX = 2000


async def all_events(state: ApiState, most: int = PAGE_MAX) -> list[WorldEvent]:
    """The stored events by id, the newest ``most`` of them if there are more."""
    events: list[WorldEvent] = []
    after = 0
    while True:
        page = await routes_events.read_events(state, after_id=after, limit=MAX_PAGE)
        events = (events + page.items)[-most:]
        if page.next_after_id is None:
            return events
        after = page.next_after_id


def event_view(event: WorldEvent, now: Any) -> dict[str, Any]:
    """What the page shows of ``event`` (strings; the template escapes them)."""
    return {"id": event.id, "at": _time(event.at), "headline": event.headline,
            "shocks": routes_events.shocks_text(event.shocks.items()),
            "views": ", ".join(f"{t} {v}" for t, v in event.views.items()),
            "topics": ", ".join(event.topics), "by": event.created_by,
            "scheduled": event.at > now}


@router.get("/world-events", response_class=HTMLResponse, response_model=None)
async def world_events_page(request: Request, state: State) -> Response:
    """The world events, newest first, and (admins) the form and presets to inject one."""
    who = await _principal(request, state)
    if who is None:
        return _to_login()
    now = utcnow()
    events = sorted(await all_events(state), key=lambda e: (e.at, e.id), reverse=True)
    presets = [{"name": name, "headline": e.headline,
                "shocks": routes_events.shocks_text(e.shocks.items())}
               for name, e in PRESETS.items()]
    return _render(request, "world_events.html", {
        "user": who, "page": "world-events", "admin": who.role == "admin",
        "events": [event_view(e, now) for e in events], "presets": presets,
        "max_ahead_days": routes_events.MAX_AHEAD.days,
    })

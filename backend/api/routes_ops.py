"""``/api/v1`` operations routes: settings, start/stop, messages, costs, provider health,
the audit log and the live message stream (Server-Sent Events).

Reads go to the database directly (an operator sees what is stored, not a cached copy);
settings writes go through :func:`backend.stores.settings.update_settings` with the app's
cache, so running workers see them, and are audited in the same transaction.

Every route needs a logged-in user (401 otherwise); the ones that change state and the
audit log need an admin (403 for a viewer). Errors are RFC 9457 problem details
(:mod:`backend.api.problems`): bad query parameters and bodies get 422 naming each field in
``errors[].loc`` (``["query", "since"]``, ``["body", "max_msgs_per_min"]``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError
from redis.exceptions import RedisError

from backend.api import routes_events
from backend.api.deps import (
    DEFAULT_PAGE,
    Admin,
    Cursor,
    PageLimit,
    State,
    Viewer,
    audit_change,
)
from backend.api.problems import invalid
from backend.api.security import MAX_DB_ID, NO_NUL, ApiState, Principal, current_principal
from backend.api_schemas import (
    AuditOut,
    CostRow,
    CostsOut,
    HealthOut,
    MessageOut,
    Page,
    ProviderGuards,
    ProviderHealth,
    SettingsPatch,
    WorkerOut,
    page_of,
)
from backend.db.models import Message
from backend.errors import ValidationFailed
from backend.redis_client import make_redis
from backend.schemas import SimulationSettings
from backend.stores import audit as audit_store
from backend.stores import llm_calls as llm_store
from backend.stores import messages as message_store
from backend.stores import settings as settings_store
from backend.stores.llm_calls import GroupBy
from backend.timewindow import parse_since
from behavior_engine.leases import read_heartbeats

router = APIRouter()

#: Longest ``entity`` / ``entity_id`` filter of ``/audit``.
AUDIT_ENTITY_MAX = 32
AUDIT_ENTITY_ID_MAX = 64
#: Longest ``since`` of ``/costs``, characters.
SINCE_MAX = 64
#: What ``since`` (of ``/costs``) takes, as a refusal says it.
SINCE_EXPECTED = "expected an age (30m, 24h, 7d), an ISO date/time or 'all'"
#: Seconds between two database polls of ``/events`` (tests make it shorter).
EVENTS_POLL_S = 0.5
#: Seconds between two ``: ping`` comments of ``/events`` (keeps proxies from closing it).
EVENTS_PING_S = 15.0
#: Seconds between two checks that the caller of an open ``/events`` stream may still
#: read it (a logout, revoked token, disabled user or expired session ends the stream
#: within about this long; one query per check; tests make it shorter).
EVENTS_AUTH_S = 2.0
#: Messages read per poll of ``/events`` at most; a larger backlog is sent over several
#: polls without waiting in between.
EVENTS_BATCH = 500
#: Window of ``/providers/health``, seconds.
HEALTH_WINDOW_S = 15 * 60
#: The bound on the whole Redis read of ``/providers/health``, seconds (each command has
#: the timeouts of :func:`backend.redis_client.make_redis`).
REDIS_TOTAL_S = 2.0


# --- helpers ----------------------------------------------------------------------------


async def _change_settings(
    state: ApiState,
    principal: Principal,
    *,
    action: str,
    changes_of: Any,
) -> SimulationSettings:
    """Apply ``changes_of(current)`` (a dict of changed fields) and audit it, in one
    transaction. Nothing is audited when no value changes."""
    async with state.sessionmaker() as session, session.begin():
        current = await settings_store.get_settings(session)
        try:
            changes: dict[str, Any] = changes_of(current)
            if not changes:
                return current
            new = await settings_store.update_settings(
                session, changes=changes, cache=state.cache
            )
        except ValidationFailed as exc:
            raise invalid("body", exc.problems) from None
        before, after = audit_store.diff(
            current.model_dump(mode="json"), new.model_dump(mode="json")
        )
        if after:
            await audit_change(session, principal, action, "settings", None, before, after)
        return new


# --- settings ---------------------------------------------------------------------------


@router.get("/settings", response_model=SimulationSettings, tags=["settings"])
async def get_settings(
    _user: Viewer,
    state: State,
) -> SimulationSettings:
    """The operator settings as stored (fields never set show their defaults)."""
    async with state.sessionmaker() as session:
        return await settings_store.get_settings(session)


@router.patch("/settings", response_model=SimulationSettings, tags=["settings"])
async def patch_settings(
    body: SettingsPatch,
    principal: Admin,
    state: State,
) -> SimulationSettings:
    """Change some settings (admin). Only the fields sent change; ``prime_hours`` may be
    partial. The result is validated whole (422 naming the field otherwise), stored,
    audited (``settings.update`` with the changed fields before and after) and pushed to
    the running workers' caches. Returns the new settings."""
    return await _change_settings(
        state, principal, action="settings.update", changes_of=body.changes
    )


async def _set_active(state: ApiState, principal: Principal, active: bool) -> SimulationSettings:
    def changes_of(current: SimulationSettings) -> dict[str, Any]:
        return {} if current.simulation_active == active else {"simulation_active": active}

    return await _change_settings(
        state,
        principal,
        action="simulation.start" if active else "simulation.stop",
        changes_of=changes_of,
    )


@router.post("/simulation/start", response_model=SimulationSettings, tags=["settings"])
async def start_simulation(
    principal: Admin,
    state: State,
) -> SimulationSettings:
    """Let the bots take turns again (admin): sets ``simulation_active`` and audits
    ``simulation.start``. Already running: nothing changes, nothing is audited."""
    return await _set_active(state, principal, True)


@router.post("/simulation/stop", response_model=SimulationSettings, tags=["settings"])
async def stop_simulation(
    principal: Admin,
    state: State,
) -> SimulationSettings:
    """Stop every bot from starting turns (admin; human messages are still stored): clears
    ``simulation_active`` and audits ``simulation.stop``. Already stopped: no change."""
    return await _set_active(state, principal, False)


# --- messages ---------------------------------------------------------------------------


@router.get("/messages", response_model=Page[MessageOut], tags=["messages"])
async def list_messages(
    _user: Viewer,
    state: State,
    chat_id: Annotated[
        int | None, Query(ge=1, le=MAX_DB_ID, description="only this chat (our chat id)")
    ] = None,
    bot_id: Annotated[
        int | None, Query(ge=1, le=MAX_DB_ID, description="only this bot's messages")
    ] = None,
    human: Annotated[
        bool | None,
        Query(
            description="true: only messages not sent by our bots (humans and foreign bots);"
            " false: only our bots' messages"
        ),
    ] = None,
    limit: PageLimit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> Page[MessageOut]:
    """Messages, newest first (by id), one page at a time: pass ``next_cursor`` back as
    ``cursor`` for the next page (None on the last). Text is returned as stored."""
    async with state.sessionmaker() as session:
        rows = await message_store.page_messages(
            session, limit=limit + 1, before_id=cursor, chat_id=chat_id, bot_id=bot_id,
            human=human)
    return page_of(rows, limit, MessageOut.from_row)


# --- costs ------------------------------------------------------------------------------


@router.get("/costs", response_model=CostsOut, tags=["costs"])
async def costs(
    _user: Viewer,
    state: State,
    since: Annotated[
        str,
        Query(
            description="an age (30m, 24h, 7d), an ISO date or time (UTC unless it says), or 'all'",
            max_length=SINCE_MAX,
        ),
    ] = "24h",
    by: Annotated[
        GroupBy, Query(description="group by provider, bot or UTC day")
    ] = "provider",
) -> CostsOut:
    """LLM call totals from the ``llm_calls`` ledger since ``since``, grouped by ``by``:
    calls, answered and failed calls, tokens and USD cost (the same figures as
    ``botsim costs``)."""
    try:
        start = None if since.strip().lower() == "all" else parse_since(since)
    except ValidationFailed as exc:
        why = exc.problems[0][1] if exc.problems else ""
        why = SINCE_EXPECTED if why.startswith("expected") else f"{why}; {SINCE_EXPECTED}"
        raise invalid("query", [("since", f"{since!r}: {why}")]) from None
    async with state.sessionmaker() as session:
        raw = await llm_store.cost_totals(session, since=start, by=by)
    rows = [CostRow.model_validate(r) for r in raw]
    return CostsOut(since=start, by=by, rows=rows, total=CostRow.total_of(rows))


# --- provider health --------------------------------------------------------------------


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def _live_workers(url: str, namespace: str) -> list[WorkerOut]:
    """The workers whose heartbeat key exists (read only: forgets nobody).

    Raises:
        RedisError, OSError, TimeoutError: Redis unreachable.
    """
    client = make_redis(url, role="commands")
    try:
        async with asyncio.timeout(REDIS_TOTAL_S):
            beats = await read_heartbeats(client, namespace)
    finally:
        await client.aclose()
    return [worker_out(worker_id, info) for worker_id, info in beats.items()]


def worker_out(worker_id: str, info: dict[str, Any]) -> WorkerOut:
    """A :class:`WorkerOut` from a worker's status (:meth:`worker.Worker.status`, as its
    heartbeat carries it); fields of the wrong type become None."""
    at_ms = _int_or_none(info.get("at_ms"))
    name = info.get("name")
    providers: list[ProviderGuards] | None = None
    try:
        providers = TypeAdapter(list[ProviderGuards]).validate_python(info["providers"])
    except (KeyError, ValidationError):
        providers = None
    return WorkerOut(
        id=worker_id,
        name=name if isinstance(name, str) else None,
        bots=_int_or_none(info.get("bots")),
        in_flight=_int_or_none(info.get("in_flight")),
        sent=_int_or_none(info.get("sent")),
        heartbeat_at=None if at_ms is None else datetime.fromtimestamp(at_ms / 1000, UTC),
        providers=providers,
        info=info,
    )


@router.get("/providers/health", response_model=HealthOut, tags=["health"])
async def providers_health(
    _user: Viewer,
    state: State,
) -> HealthOut:
    """LLM providers over the last 15 minutes of the ledger (calls, errors, error rate,
    median latency, last error) and the live workers (bots held, turns in flight, each
    provider's breaker state and budget left): those of this process (``botsim demo``)
    and, when Redis is configured, those with a heartbeat. An unreachable Redis does not
    fail the answer: the Redis workers are missing and ``workers_error`` says why."""
    since = datetime.now(UTC) - timedelta(seconds=HEALTH_WINDOW_S)
    async with state.sessionmaker() as session:
        raw = await llm_store.provider_health(session, since=since)
    providers = [ProviderHealth.model_validate(p) for p in raw]
    url = state.settings.redis_url
    local = [worker_out(w, info) for w, info in state.local_workers()]
    workers: list[WorkerOut] | None = local or None
    error: str | None = None
    if url:
        try:
            workers = local + await _live_workers(url, state.settings.redis_namespace)
        except (RedisError, OSError, TimeoutError) as exc:
            error = f"Redis unreachable: {type(exc).__name__}: {exc}"[:500]
    return HealthOut(
        window_s=HEALTH_WINDOW_S,
        providers=providers,
        redis_configured=bool(url),
        workers=workers,
        workers_error=error,
    )


# --- audit ------------------------------------------------------------------------------


@router.get("/audit", response_model=Page[AuditOut], tags=["audit"])
async def list_audit(
    _admin: Admin,
    state: State,
    entity: Annotated[
        str | None,
        Query(max_length=AUDIT_ENTITY_MAX, pattern=NO_NUL, description="bot, chat, settings..."),
    ] = None,
    entity_id: Annotated[
        str | None, Query(max_length=AUDIT_ENTITY_ID_MAX, pattern=NO_NUL)
    ] = None,
    limit: PageLimit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> Page[AuditOut]:
    """The audit log (admin), newest first, one page at a time (``cursor`` as in
    ``/messages``). Secrets never appear in it (masked when recorded)."""
    async with state.sessionmaker() as session:
        rows = await audit_store.list_entries(
            session, entity=entity, entity_id=entity_id, limit=limit + 1, before_id=cursor
        )
    return page_of(rows, limit, AuditOut.from_row)


# --- live messages (Server-Sent Events) -------------------------------------------------


def _sse_message(msg: Message) -> str:
    data = MessageOut.from_row(msg).model_dump_json()  # JSON: no raw newline in data
    return f"event: message\nid: {msg.id}\ndata: {data}\n\n"


async def latest_id(state: ApiState) -> int:
    """The highest message id stored now (0 when none): a stream starting there sends only
    the messages stored from now on."""
    async with state.sessionmaker() as session:
        return await message_store.latest_message_id(session)


async def still_allowed(request: Request, state: ApiState) -> str | None:
    """None while the stream's caller is still let in; otherwise why not.

    Calls :func:`~backend.api.security.current_principal` again with the request's own
    credentials (cookie or bearer token), so whatever it checks (a session logged out or
    expired, a token revoked, a user disabled) ends a stream too.
    """
    try:
        await current_principal(request, state)
    except HTTPException as exc:
        return f"{exc.status_code}: {exc.detail}"
    return None


async def _event_stream(
    request: Request, state: ApiState, after_id: int, chat_id: int | None,
    world_since: datetime | None = None,
) -> AsyncIterator[str]:
    last = after_id
    next_ping = time.monotonic() + EVENTS_PING_S
    since = routes_events.stream_since(world_since, datetime.now(UTC))
    world_sent: set[int] = set()
    next_world = time.monotonic()
    next_auth = time.monotonic() + EVENTS_AUTH_S
    yield ": connected\n\n"  # headers and a first byte now, before any message
    while not await request.is_disconnected():
        if time.monotonic() >= next_auth:
            refused = await still_allowed(request, state)
            if refused is not None:
                # A comment, then the end: EventSource reconnects and gets the 401 itself.
                yield f": credentials no longer valid ({refused})\n\n"
                return
            next_auth = time.monotonic() + EVENTS_AUTH_S
        if time.monotonic() >= next_world:
            for event in await routes_events.due_events(state, since, world_sent):
                yield routes_events.sse_world_event(event)
            next_world = time.monotonic() + routes_events.STREAM_POLL_S
        async with state.sessionmaker() as session:
            rows = await message_store.messages_after(
                session, after_id=last, limit=EVENTS_BATCH, chat_id=chat_id)
        for msg in rows:
            yield _sse_message(msg)
            last = msg.id
        if time.monotonic() >= next_ping:
            yield ": ping\n\n"
            next_ping = time.monotonic() + EVENTS_PING_S
        if len(rows) < EVENTS_BATCH:
            await asyncio.sleep(EVENTS_POLL_S)


def _resume_id(raw: str) -> int:
    """The message id of a ``Last-Event-ID`` header: ASCII digits, 0 to ``MAX_DB_ID``.

    Raises:
        RequestValidationError: 422 naming ``header.last-event-id`` otherwise (a sign,
            other digits, too many of them).
    """
    text = raw.strip()
    if text.isascii() and text.isdigit() and len(text) <= len(str(MAX_DB_ID)):
        if int(text) <= MAX_DB_ID:
            return int(text)
    shown = text[:20] + ("…" if len(text) > 20 else "")
    raise invalid("header", [("last-event-id",
                              f"{shown!r} is not a message id (a whole number from 0 to"
                              f" {MAX_DB_ID})")])


@router.get(
    "/events",
    tags=["messages"],
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "a stream of `message` events (data: a MessageOut) and"
            " `world_event` events (data: a WorldEvent)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def events(
    request: Request,
    _user: Viewer,
    state: State,
    after_id: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_DB_ID,
            description="send the messages with a larger id first (default: the latest"
            " id, i.e. only new ones)",
        ),
    ] = None,
    chat_id: Annotated[int | None, Query(ge=1, le=MAX_DB_ID, description="only this chat")] = None,
    world_since: Annotated[
        datetime | None,
        Query(description="send the world events taking effect from this time on (UTC"
              " unless it says; at most 7 days back; default: the last hour)"),
    ] = None,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> StreamingResponse:
    """Server-Sent Events of new messages: each as ``event: message``, ``id: <message
    id>``, ``data: <MessageOut JSON>``; a ``: ping`` comment every 15 s. The database is
    polled every 0.5 s. World events (global, whatever the chat) come as ``event:
    world_event`` with a ``WorldEvent`` as data and no ``id``, each once its time has come,
    from ``world_since`` on (:mod:`backend.api.routes_events`; read every 2 s). A
    reconnecting ``EventSource`` resumes after its ``Last-Event-ID`` (a message id, 0 to
    2^31-1; anything else is a 422 naming ``header.last-event-id``). The caller's
    credentials are checked again every 2 s: once its session is logged out or expired,
    its token revoked or its user disabled, the stream ends (a last comment says why).
    Text is sent as JSON, unescaped for HTML: escaping is the page's job."""
    start = after_id
    if start is None and last_event_id is not None and last_event_id.strip():
        start = _resume_id(last_event_id)
    if start is None:
        start = await latest_id(state)
    return StreamingResponse(
        _event_stream(request, state, start, chat_id, world_since),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

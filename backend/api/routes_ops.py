"""``/api/v1`` operations routes: settings, start/stop, messages, costs, provider health,
the audit log and the live message stream (Server-Sent Events).

Reads go to the database directly (an operator sees what is stored, not a cached copy);
settings writes go through :func:`backend.stores.settings.update_settings` with the app's
cache, so running workers see them, and are audited in the same transaction.

Every route needs a logged-in user (401 otherwise); the ones that change state and the
audit log need an admin (403 for a viewer). Bad query parameters and bodies get 422 with
the offending field in ``detail[].loc``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.api.security import (
    MAX_DB_ID,
    NO_NUL,
    ApiState,
    Principal,
    api_state,
    require_admin,
    require_viewer,
)
from backend.api_schemas import MessageOut, Page, SettingsPatch
from backend.cache import TwoLayerCache
from backend.db.models import AuditEntry, LLMCall, Message
from backend.errors import ValidationFailed
from backend.schemas import SimulationSettings
from backend.stores import audit as audit_store
from backend.stores import llm_calls as llm_store
from backend.stores import settings as settings_store
from backend.timewindow import parse_since
from behavior_engine.leases import read_heartbeats

router = APIRouter()

#: Largest page of ``/messages`` and ``/audit``.
MAX_PAGE = 200
#: Default page size.
DEFAULT_PAGE = 50
#: Seconds between two database polls of ``/events`` (tests make it shorter).
EVENTS_POLL_S = 0.5
#: Seconds between two ``: ping`` comments of ``/events`` (keeps proxies from closing it).
EVENTS_PING_S = 15.0
#: Messages read per poll of ``/events`` at most; a larger backlog is sent over several
#: polls without waiting in between.
EVENTS_BATCH = 500
#: Window of ``/providers/health``, seconds.
HEALTH_WINDOW_S = 15 * 60
#: Redis connect/read timeout of ``/providers/health``, seconds, and the bound on the
#: whole Redis read.
REDIS_TIMEOUT_S = 0.5
REDIS_TOTAL_S = 2.0


# --- models -----------------------------------------------------------------------------


class CostRow(BaseModel):
    """Ledger totals of one group (``key``: provider, bot name or ``YYYY-MM-DD``).

    ``failed`` counts calls that did not answer; ``unpriced`` the calls of models without a
    price (their cost is not in ``cost_usd``).
    """

    key: str
    calls: int
    ok: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    unpriced: int


class CostsOut(BaseModel):
    """``GET /costs``: one row per group, largest cost first, and their sum (``total``).

    ``since``: the start of the window (None: the whole ledger).
    """

    since: datetime | None
    by: Literal["provider", "bot", "day"]
    rows: list[CostRow]
    total: CostRow


class LastError(BaseModel):
    """The latest failed call of a provider in the window."""

    at: datetime
    outcome: str
    model: str | None
    error: str | None


class ProviderHealth(BaseModel):
    """One provider over the window.

    Attributes:
        errors: calls whose outcome is not ``ok``; error_rate: errors / calls (0–1).
        p50_latency_ms: median latency of the answered (``ok``) calls; None without any.
    """

    provider: str
    calls: int
    errors: int
    error_rate: float
    p50_latency_ms: float | None
    last_error: LastError | None


class ProviderGuards(BaseModel):
    """A provider's guards in one worker (each worker keeps its own breakers and budgets).

    Attributes:
        breaker: ``closed``, ``open`` or ``half_open``; retry_in_s: seconds until an open
            breaker lets a probe through.
        budget_left: ``requests/min``, ``tokens/min``, ``tokens/day`` → what is left
            before the headroom (None: no limit).
        tokens_today: tokens counted in the last 24 h.
    """

    name: str
    breaker: str
    retry_in_s: float
    budget_left: dict[str, float | None]
    tokens_today: float


class WorkerOut(BaseModel):
    """A live worker, from its Redis heartbeat (or, in ``botsim demo``, the worker of this
    process).

    Attributes:
        bots: bots it holds leases on; in_flight: turns running now; sent: messages sent
            since it started. None when the heartbeat does not say.
        heartbeat_at: when it last beat (the worker's clock).
        providers: its providers' breakers and budgets; None when it does not say.
        info: the whole heartbeat, as the worker wrote it.
    """

    id: str
    name: str | None
    bots: int | None
    in_flight: int | None
    sent: int | None
    heartbeat_at: datetime | None
    providers: list[ProviderGuards] | None = None
    info: dict[str, JsonValue]


class HealthOut(BaseModel):
    """``GET /providers/health``.

    Attributes:
        window_s: the ledger window, seconds (the last 15 minutes).
        providers: providers with at least one call in the window, by name.
        redis_configured: whether ``REDIS_URL`` is set (workers are only listed then).
        workers: the live workers (this process's first, then Redis's by id); None when
            there is none to list (no local worker, and Redis not configured or silent).
        workers_error: why the workers could not be read (Redis unreachable), else None.
    """

    window_s: int
    providers: list[ProviderHealth]
    redis_configured: bool
    workers: list[WorkerOut] | None
    workers_error: str | None


class AuditOut(BaseModel):
    """An audit entry: who changed what, and the changed fields before and after."""

    id: int
    at: datetime
    user_id: int | None
    username: str
    action: str
    entity: str
    entity_id: str | None
    before: JsonValue
    after: JsonValue

    @classmethod
    def from_row(cls, row: AuditEntry) -> AuditOut:
        """Build from an ``audit_log`` row (its attributes are this model's fields)."""
        return cls.model_validate(row, from_attributes=True)


# --- helpers ----------------------------------------------------------------------------


def _unprocessable(
    where: Literal["body", "query"], problems: list[tuple[str, str]]
) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (``loc`` names the field)."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[
            {"type": "value_error", "loc": [where, *field.split(".")], "msg": msg}
            for field, msg in problems
        ],
    )


def _cache(state: ApiState) -> TwoLayerCache | None:
    return state.reads.cache if state.reads is not None else None


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
                session, changes=changes, cache=_cache(state)
            )
        except ValidationFailed as exc:
            raise _unprocessable("body", exc.problems) from None
        before, after = audit_store.diff(
            current.model_dump(mode="json"), new.model_dump(mode="json")
        )
        if after:
            await audit_store.record(
                session,
                user_id=principal.user_id,
                username=principal.username,
                action=action,
                entity="settings",
                entity_id=None,
                before=before,
                after=after,
            )
        return new


def _page_limit() -> Any:
    return Query(ge=1, le=MAX_PAGE, description=f"page size, 1-{MAX_PAGE}")


def _page_cursor(items: str) -> Any:
    return Query(ge=1, le=MAX_DB_ID,
                 description=f"the previous page's next_cursor: {items} with a smaller id")


# --- settings ---------------------------------------------------------------------------


@router.get("/settings", response_model=SimulationSettings, tags=["settings"])
async def get_settings(
    _user: Annotated[Principal, Depends(require_viewer)],
    state: Annotated[ApiState, Depends(api_state)],
) -> SimulationSettings:
    """The operator settings as stored (fields never set show their defaults)."""
    async with state.sessionmaker() as session:
        return await settings_store.get_settings(session)


@router.patch("/settings", response_model=SimulationSettings, tags=["settings"])
async def patch_settings(
    body: SettingsPatch,
    principal: Annotated[Principal, Depends(require_admin)],
    state: Annotated[ApiState, Depends(api_state)],
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
    principal: Annotated[Principal, Depends(require_admin)],
    state: Annotated[ApiState, Depends(api_state)],
) -> SimulationSettings:
    """Let the bots take turns again (admin): sets ``simulation_active`` and audits
    ``simulation.start``. Already running: nothing changes, nothing is audited."""
    return await _set_active(state, principal, True)


@router.post("/simulation/stop", response_model=SimulationSettings, tags=["settings"])
async def stop_simulation(
    principal: Annotated[Principal, Depends(require_admin)],
    state: Annotated[ApiState, Depends(api_state)],
) -> SimulationSettings:
    """Stop every bot from starting turns (admin; human messages are still stored): clears
    ``simulation_active`` and audits ``simulation.stop``. Already stopped: no change."""
    return await _set_active(state, principal, False)


# --- messages ---------------------------------------------------------------------------


def _message_filters(
    chat_id: int | None, bot_id: int | None, human: bool | None
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if chat_id is not None:
        where.append(Message.chat_id == chat_id)
    if bot_id is not None:
        where.append(Message.bot_id == bot_id)
    if human is True:
        where.append(Message.bot_id.is_(None))
    elif human is False:
        where.append(Message.bot_id.is_not(None))
    return where


@router.get("/messages", response_model=Page[MessageOut], tags=["messages"])
async def list_messages(
    _user: Annotated[Principal, Depends(require_viewer)],
    state: Annotated[ApiState, Depends(api_state)],
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
    limit: Annotated[int, _page_limit()] = DEFAULT_PAGE,
    cursor: Annotated[int | None, _page_cursor("messages")] = None,
) -> Page[MessageOut]:
    """Messages, newest first (by id), one page at a time: pass ``next_cursor`` back as
    ``cursor`` for the next page (None on the last). Text is returned as stored."""
    stmt = select(Message).where(*_message_filters(chat_id, bot_id, human))
    if cursor is not None:
        stmt = stmt.where(Message.id < cursor)
    stmt = stmt.order_by(Message.id.desc()).limit(limit + 1)
    async with state.sessionmaker() as session:
        rows = list((await session.execute(stmt)).scalars().all())
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[MessageOut](
        items=[MessageOut.from_row(m) for m in rows], next_cursor=rows[-1].id if more else None
    )


# --- costs ------------------------------------------------------------------------------


@router.get("/costs", response_model=CostsOut, tags=["costs"])
async def costs(
    _user: Annotated[Principal, Depends(require_viewer)],
    state: Annotated[ApiState, Depends(api_state)],
    since: Annotated[
        str,
        Query(
            description="an age (30m, 24h, 7d), an ISO date or time (UTC unless it says), or 'all'",
            max_length=64,
        ),
    ] = "24h",
    by: Annotated[
        Literal["provider", "bot", "day"], Query(description="group by provider, bot or UTC day")
    ] = "provider",
) -> CostsOut:
    """LLM call totals from the ``llm_calls`` ledger since ``since``, grouped by ``by``:
    calls, answered and failed calls, tokens and USD cost (the same figures as
    ``botsim costs``)."""
    try:
        start = None if since.strip().lower() == "all" else parse_since(since)
    except ValidationFailed:
        raise _unprocessable(
            "query",
            [("since", f"{since!r}: expected an age (30m, 24h, 7d), an ISO date/time or 'all'")],
        ) from None
    async with state.sessionmaker() as session:
        raw = await llm_store.cost_totals(session, since=start, by=by)
    rows = [CostRow.model_validate(r) for r in raw]
    total = CostRow(
        key="total",
        calls=sum(r.calls for r in rows),
        ok=sum(r.ok for r in rows),
        failed=sum(r.failed for r in rows),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        cached_tokens=sum(r.cached_tokens for r in rows),
        cost_usd=sum(r.cost_usd for r in rows),
        unpriced=sum(r.unpriced for r in rows),
    )
    return CostsOut(since=start, by=by, rows=rows, total=total)


# --- provider health --------------------------------------------------------------------


async def _provider_health(session: AsyncSession, since: datetime) -> list[ProviderHealth]:
    rows = (
        await session.execute(
            select(
                LLMCall.provider,
                LLMCall.outcome,
                LLMCall.latency_ms,
                LLMCall.created_at,
                LLMCall.model,
                LLMCall.error,
            )
            .where(LLMCall.created_at >= since)
            .order_by(LLMCall.id)
        )
    ).all()
    grouped: dict[str, list[Any]] = {}
    for row in rows:
        grouped.setdefault(row.provider, []).append(row)
    out = []
    for provider in sorted(grouped):
        calls = grouped[provider]
        failed = [c for c in calls if c.outcome != "ok"]
        latencies = [float(c.latency_ms) for c in calls if c.outcome == "ok"]
        last = failed[-1] if failed else None
        out.append(
            ProviderHealth(
                provider=provider,
                calls=len(calls),
                errors=len(failed),
                error_rate=round(len(failed) / len(calls), 4),
                p50_latency_ms=statistics.median(latencies) if latencies else None,
                last_error=None
                if last is None
                else LastError(
                    at=last.created_at, outcome=last.outcome, model=last.model, error=last.error
                ),
            )
        )
    return out


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def _live_workers(url: str, namespace: str) -> list[WorkerOut]:
    """The workers whose heartbeat key exists (read only: forgets nobody).

    Raises:
        RedisError, OSError, TimeoutError: Redis unreachable.
    """
    client = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
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
    _user: Annotated[Principal, Depends(require_viewer)],
    state: Annotated[ApiState, Depends(api_state)],
) -> HealthOut:
    """LLM providers over the last 15 minutes of the ledger (calls, errors, error rate,
    median latency, last error) and the live workers (bots held, turns in flight, each
    provider's breaker state and budget left): those of this process (``botsim demo``)
    and, when Redis is configured, those with a heartbeat. An unreachable Redis does not
    fail the answer: the Redis workers are missing and ``workers_error`` says why."""
    since = datetime.now(UTC) - timedelta(seconds=HEALTH_WINDOW_S)
    async with state.sessionmaker() as session:
        providers = await _provider_health(session, since)
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
    _admin: Annotated[Principal, Depends(require_admin)],
    state: Annotated[ApiState, Depends(api_state)],
    entity: Annotated[
        str | None, Query(max_length=32, pattern=NO_NUL, description="bot, chat, settings...")
    ] = None,
    entity_id: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    limit: Annotated[int, _page_limit()] = DEFAULT_PAGE,
    cursor: Annotated[int | None, _page_cursor("entries")] = None,
) -> Page[AuditOut]:
    """The audit log (admin), newest first, one page at a time (``cursor`` as in
    ``/messages``). Secrets never appear in it (masked when recorded)."""
    async with state.sessionmaker() as session:
        rows = await audit_store.list_entries(
            session, entity=entity, entity_id=entity_id, limit=limit + 1, before_id=cursor
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[AuditOut](
        items=[AuditOut.from_row(r) for r in rows], next_cursor=rows[-1].id if more else None
    )


# --- live messages (Server-Sent Events) -------------------------------------------------


def _sse_message(msg: Message) -> str:
    data = MessageOut.from_row(msg).model_dump_json()  # JSON: no raw newline in data
    return f"event: message\nid: {msg.id}\ndata: {data}\n\n"


async def _latest_id(state: ApiState) -> int:
    async with state.sessionmaker() as session:
        latest = (await session.execute(select(func.max(Message.id)))).scalar_one_or_none()
    return int(latest or 0)


async def _event_stream(
    request: Request, state: ApiState, after_id: int, chat_id: int | None
) -> AsyncIterator[str]:
    last = after_id
    next_ping = time.monotonic() + EVENTS_PING_S
    yield ": connected\n\n"  # headers and a first byte now, before any message
    while not await request.is_disconnected():
        stmt = (
            select(Message)
            .where(Message.id > last, *_message_filters(chat_id, None, None))
            .order_by(Message.id)
            .limit(EVENTS_BATCH)
        )
        async with state.sessionmaker() as session:
            rows = list((await session.execute(stmt)).scalars().all())
        for msg in rows:
            yield _sse_message(msg)
            last = msg.id
        if time.monotonic() >= next_ping:
            yield ": ping\n\n"
            next_ping = time.monotonic() + EVENTS_PING_S
        if len(rows) < EVENTS_BATCH:
            await asyncio.sleep(EVENTS_POLL_S)


@router.get(
    "/events",
    tags=["messages"],
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "a stream of `message` events (data: a MessageOut)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def events(
    request: Request,
    _user: Annotated[Principal, Depends(require_viewer)],
    state: Annotated[ApiState, Depends(api_state)],
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
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> StreamingResponse:
    """Server-Sent Events of new messages: each as ``event: message``, ``id: <message
    id>``, ``data: <MessageOut JSON>``; a ``: ping`` comment every 15 s. The database is
    polled every 0.5 s. A reconnecting ``EventSource`` resumes after its
    ``Last-Event-ID``. Text is sent as JSON, unescaped for HTML: escaping is the page's
    job."""
    start = after_id
    if start is None and last_event_id is not None and last_event_id.strip().isdigit():
        start = int(last_event_id.strip())
    if start is None:
        start = await _latest_id(state)
    return StreamingResponse(
        _event_stream(request, state, start, chat_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

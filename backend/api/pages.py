"""The admin panel: server-rendered pages (Jinja2, autoescaped) and one JSON route.

Pages (a logged-in session or API token; otherwise a redirect to ``/login``):

- ``/login``: the login form (``panel.js`` posts it to ``/api/v1/auth/login``).
- ``/``: the live group page: a chat's recent messages, then new ones from
  ``/api/v1/events`` (rendered by ``panel.js`` with ``textContent``), and a box to post as a
  human into a sandbox group.
- ``/personas`` and ``/personas/{bot_id}``: the bots, and a bot's persona as JSON to edit
  (saved with ``PATCH /api/v1/bots/{id}``) with its prompt preview, and its preflight
  against the Bot API (``?preflight=1``, as ``GET /api/v1/bots/{id}/preflight``).
  The editor also lists the chats with a button each to add/remove the bot
  (``PUT``/``DELETE /api/v1/chats/{chat_id}/bots/{bot_id}``).
- ``/personas/new``: a bot token and a whole persona as JSON (prefilled with an example),
  created with ``POST /api/v1/bots``; then the browser opens the new bot's editor.
- ``/settings``: the simulation settings as JSON to edit (saved with
  ``PATCH /api/v1/settings``), and whether the simulation runs, with buttons calling
  ``POST /api/v1/simulation/start`` / ``stop``.
- ``/costs``: a read-only table.
- ``/audit``: the audit log (admins; a viewer gets a 403 page), newest first, filtered by
  entity and entity id, one page at a time ("Older" follows ``next_cursor``). Bad query
  values get a 422 page naming them.

Every text from Telegram or a persona reaches the HTML through Jinja2's autoescaping or
``textContent``, never as markup. Pages answer with a Content-Security-Policy allowing only
this origin's scripts and styles (no inline script).

``POST /panel/sandbox/post`` (admin, CSRF-checked): post a message as a human into a chat
of the sandbox Telegram (``sandbox.telegram_api``) at ``settings.telegram_api_url`` without
its trailing ``/bot``; 409 when that URL is not on 127.0.0.1/localhost.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlencode, urlsplit

import httpx
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from backend.api import routes_bots, routes_ops
from backend.api.deps import DEFAULT_PAGE, MAX_PAGE, Admin, State
from backend.api.security import MAX_DB_ID, ApiState, Principal, current_principal, require_admin
from backend.api_schemas import ChatOut, MessageOut, SandboxPost, SandboxPosted
from backend.db.models import Bot
from backend.errors import NotFound
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import members as member_store
from backend.stores import messages as message_store
from backend.stores.llm_calls import GroupBy
from bots.personas import load_persona_dir
from botsim.preflight import BotPreflight

router = APIRouter(include_in_schema=False)

HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.autoescape = True  # every template, whatever its name ends in

#: Messages shown when the live page opens.
RECENT_MESSAGES = 50
#: Hosts of a sandbox Telegram (the only ones the panel posts human messages to).
SANDBOX_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Telegram user ids of panel users posting into the sandbox: this base + our user id.
SANDBOX_USER_BASE = 7_000_000_000
#: Timeout of the call to the sandbox, seconds.
SANDBOX_TIMEOUT_S = 5.0
#: Transport of the calls to the sandbox (None: the network); tests replace it.
sandbox_transport: httpx.AsyncBaseTransport | None = None

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")


async def _principal(request: Request, state: ApiState) -> Principal | None:
    """The logged-in caller, or None (not logged in, expired, unknown token)."""
    try:
        return await current_principal(request, state)
    except HTTPException:
        return None


def _to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)


def _render(request: Request, name: str, context: dict[str, Any], *,
            status_code: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")


# --- login ------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> HTMLResponse:
    """The login form; ``panel.js`` posts it to the JSON login and then opens ``/``."""
    return _render(request, "login.html", {"user": None, "page": "login"})


# --- live group page --------------------------------------------------------------------


async def _chats(state: ApiState) -> list[ChatOut]:
    async with state.sessionmaker() as session:
        rows = await chat_store.list_chats(session)
    return [ChatOut.from_row(c) for c in rows]


def _chosen_chat(chats: list[ChatOut], chat_id: int | None) -> ChatOut | None:
    """The chat ``chat_id`` of ``chats``; without an id, the first chat; None when there is
    none (or no chat has that id)."""
    if chat_id is None:
        return chats[0] if chats else None
    return next((c for c in chats if c.id == chat_id), None)


async def _bot_names(state: ApiState) -> dict[int, str]:
    async with state.sessionmaker() as session:
        return await bot_store.bot_names(session)


def _message_view(msg: MessageOut, bots: dict[int, str],
                  by_tg_id: dict[int, MessageOut]) -> dict[str, Any]:
    sender = (bots.get(msg.bot_id, f"bot {msg.bot_id}") if msg.bot_id is not None
              else msg.sender_name or f"user {msg.sender_id}")
    reply = None
    if msg.reply_to_telegram_message_id is not None:
        target = by_tg_id.get(msg.reply_to_telegram_message_id)
        if target is None:
            reply = f"message #{msg.reply_to_telegram_message_id}"
        else:
            who = (bots.get(target.bot_id, f"bot {target.bot_id}") if target.bot_id is not None
                   else target.sender_name or "someone")
            snippet = target.text if len(target.text) <= 60 else target.text[:60] + "…"
            reply = f"{who}: {snippet}"
    return {"id": msg.id, "tg_id": msg.telegram_message_id, "sender": sender,
            "human": msg.bot_id is None, "text": msg.text, "kind": msg.kind,
            "reply": reply, "at": _time(msg.created_at)}


@router.get("/", response_class=HTMLResponse, response_model=None)
async def live_page(request: Request, state: State,
                    chat_id: int | None = None) -> Response:
    """The live group page for ``chat_id`` (default: the first chat)."""
    who = await _principal(request, state)
    if who is None:
        return _to_login()
    chats = await _chats(state)
    chat = _chosen_chat(chats, chat_id)
    bots = await _bot_names(state)
    messages: list[dict[str, Any]] = []
    last_id = 0
    if chat is not None:
        async with state.sessionmaker() as session:
            rows = await message_store.page_messages(
                session, limit=RECENT_MESSAGES, chat_id=chat.id)
        outs = [MessageOut.from_row(m) for m in reversed(rows)]
        by_tg_id = {m.telegram_message_id: m for m in outs}
        messages = [_message_view(m, bots, by_tg_id) for m in outs]
        last_id = outs[-1].id if outs else 0
        if not outs:  # start the stream after whatever exists now
            last_id = await routes_ops.latest_id(state)
    return _render(request, "live.html", {
        "user": who, "page": "live", "chats": chats, "chat": chat,
        "unknown_chat": chat_id is not None and chat is None,
        "messages": messages, "last_id": last_id,
        "bot_names": {str(k): v for k, v in bots.items()},
    })


# --- personas ---------------------------------------------------------------------------


def _editable(bot: Bot) -> dict[str, Any]:
    """A bot's editable fields, as ``PATCH /api/v1/bots/{id}`` takes them (no token): its
    audited fields less the Telegram user id, which comes from the token."""
    fields = routes_bots.bot_snapshot(bot)
    del fields["telegram_user_id"]
    return fields


@router.get("/personas", response_class=HTMLResponse, response_model=None)
async def personas_page(request: Request, state: State) -> Response:
    """Every bot, with a link to its persona editor."""
    who = await _principal(request, state)
    if who is None:
        return _to_login()
    async with state.sessionmaker() as session:
        bots = await bot_store.list_bots(session)
    rows = [{"id": b.id, "name": b.name, "username": b.username, "enabled": b.enabled,
             "role": b.persona.role, "language": b.persona.language, "bio": b.persona.bio}
            for b in bots]
    return _render(request, "personas.html", {"user": who, "page": "personas", "bots": rows})


#: Username of the example persona prefilled on ``/personas/new``.
EXAMPLE_USERNAME = "new_persona_bot"


def example_persona() -> dict[str, Any]:
    """A valid persona (a demo persona file under a new username and name) as
    ``POST /api/v1/bots`` takes it, without the token."""
    persona = load_persona_dir()[0]
    persona = persona.model_copy(update={"username": EXAMPLE_USERNAME, "name": "New persona"})
    data: dict[str, Any] = persona.model_dump(mode="json")
    return data


@router.get("/personas/new", response_class=HTMLResponse, response_model=None)
async def new_persona_page(request: Request, state: State) -> Response:
    """The "new persona" form: a token and a persona as JSON (admins create; a viewer sees
    the API's 403 on the page)."""
    who = await _principal(request, state)
    if who is None:
        return _to_login()
    return _render(request, "persona_new.html", {
        "user": who, "page": "personas",
        "persona_json": json.dumps(example_persona(), ensure_ascii=False, indent=2),
    })


async def _memberships(state: ApiState, bot_id: int) -> list[dict[str, Any]]:
    """Every chat, with whether ``bot_id`` is configured a member of it and what Telegram
    last said of its membership there (``telegram``: status, whether it may post there,
    what told us and when; None when nothing was heard: :mod:`backend.stores.members`)."""
    chats = await _chats(state)
    async with state.sessionmaker() as session:
        member_of = await chat_store.chat_ids_of_bot(session, bot_id=bot_id)
        heard = {m.chat_id: m for m in await member_store.bot_memberships(session,
                                                                          bot_id=bot_id)}
    return [{"id": c.id, "title": c.title, "telegram_chat_id": c.telegram_chat_id,
             "member": c.id in member_of,
             "telegram": None if (m := heard.get(c.id)) is None else {
                 "status": m.status, "active": member_store.is_active(m.status, m.can_send),
                 "reason": m.reason or "", "at": m.updated_at.strftime("%Y-%m-%d %H:%M UTC")}}
            for c in chats]


async def _preflight(state: ApiState, who: Principal,
                     bot_id: int) -> tuple[BotPreflight | None, str | None]:
    """The bot's preflight (``GET /api/v1/bots/{id}/preflight``), or why there is none."""
    try:
        return await routes_bots.bot_preflight(bot_id, who, state), None
    except HTTPException as exc:
        return None, f"cannot check: {exc.detail}"


@router.get("/personas/{bot_id}", response_class=HTMLResponse, response_model=None)
async def persona_editor(bot_id: int, request: Request, state: State,
                         preflight: str | None = None) -> Response:
    """One bot's persona as JSON to edit, its prompt preview (404 page when unknown), and
    its preflight section (a 422 page for an id outside 1 to 2^31-1): with
    ``?preflight=1`` the bot is checked against the Bot API
    while the page renders (``GET /api/v1/bots/{id}/preflight``; any value but empty or ``0``
    asks for it); otherwise a link does it."""
    who = await _principal(request, state)
    if who is None:
        return _to_login()
    if not 1 <= bot_id <= MAX_DB_ID:  # the database driver would fail on it
        return _render(request, "refused.html", {
            "user": who, "page": "personas", "problems": [
                f"bot_id (in the path): {_quote(str(bot_id))} is not a bot id"
                f" (a whole number from 1 to {MAX_DB_ID})"]}, status_code=422)
    async with state.sessionmaker() as session:
        bot = await bot_store.find_bot(session, bot_id=bot_id)
        fields = _editable(bot) if bot is not None else None
        name = bot.name if bot is not None else None
    if fields is None:
        return _render(request, "not_found.html",
                       {"user": who, "page": "personas", "what": f"bot {bot_id}"},
                       status_code=404)
    wanted = preflight is not None and preflight.strip() not in ("", "0")
    checked, problem = await _preflight(state, who, bot_id) if wanted else (None, None)
    return _render(request, "persona_edit.html", {
        "user": who, "page": "personas", "bot_id": bot_id, "name": name,
        "persona_json": json.dumps(fields, ensure_ascii=False, indent=2),
        "chats": await _chats(state),
        "memberships": await _memberships(state, bot_id),
        "preflight": checked, "preflight_error": problem,
    })


# --- settings and costs -----------------------------------------------------------------


@router.get("/settings", response_class=HTMLResponse, response_model=None)
async def settings_page(request: Request, state: State) -> Response:
    """The operator settings as JSON to edit, and the simulation's state with start/stop
    buttons (``panel.js`` sends the changes; a viewer sees the API's 403 on the page)."""
    who = await _principal(request, state)
    if who is None:
        return _to_login()
    current = await routes_ops.get_settings(who, state)
    return _render(request, "settings.html", {
        "user": who, "page": "settings", "active": current.simulation_active,
        "settings_json": json.dumps(current.model_dump(mode="json"), ensure_ascii=False,
                                    indent=2),
    })


@router.get("/costs", response_class=HTMLResponse, response_model=None)
async def costs_page(request: Request, state: State, since: str = "24h",
                     by: str = "provider") -> Response:
    """LLM costs since ``since`` grouped by ``by`` (as ``GET /api/v1/costs``) and the
    providers' health (as ``GET /api/v1/providers/health``: the ledger's last 15 minutes,
    and each live worker's breakers and budgets left)."""
    who = await _principal(request, state)
    if who is None:
        return _to_login()
    group: GroupBy = by if by in get_args(GroupBy) else "provider"  # type: ignore[assignment]
    since = since[:routes_ops.SINCE_MAX]
    error = None
    data = None
    try:
        data = await routes_ops.costs(who, state, since=since, by=group)
    except RequestValidationError:
        error = f"{since!r}: {routes_ops.SINCE_EXPECTED}"
    health = await routes_ops.providers_health(who, state)
    return _render(request, "costs.html", {
        "user": who, "page": "costs", "since": since, "by": group, "data": data,
        "error": error, "health": health}, status_code=200 if error is None else 422)


# --- audit log --------------------------------------------------------------------------

#: Characters of a refused query value quoted back in the 422 page.
QUOTE_MAX = 40


def _quote(raw: str) -> str:
    return repr(raw if len(raw) <= QUOTE_MAX else raw[:QUOTE_MAX] + "…")


def _int_query(name: str, raw: str | None, low: int, high: int,
               problems: list[str]) -> int | None:
    """``raw`` as an int in ``low..high`` (None when absent or blank); otherwise None and a
    line in ``problems`` naming ``name``. Only ASCII digits count (no sign, ``_`` or
    spaces), so whatever passes also passes the API's own checks."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(high))
            and low <= int(text) <= high):
        problems.append(f"{name}: {_quote(raw)} is not a whole number from {low} to {high}")
        return None
    return int(text)


def _text_query(name: str, raw: str | None, longest: int, problems: list[str]) -> str | None:
    """``raw`` stripped (None when absent or blank); over ``longest`` characters: None and
    a line in ``problems`` naming ``name``; so is one holding a NUL character."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if len(text) > longest:
        problems.append(f"{name}: {_quote(raw)} is longer than {longest} characters")
        return None
    if "\x00" in text:  # PostgreSQL text cannot hold NUL
        problems.append(f"{name}: {_quote(raw)} contains a NUL character")
        return None
    return text


def _json_text(value: Any) -> str | None:
    """A compact one-line JSON of an audit entry's ``before``/``after`` (None for null)."""
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _utc(at: datetime) -> str:
    """``at`` in UTC (a naive time, as SQLite returns it, is taken as UTC already)."""
    return _time(at.astimezone(UTC) if at.tzinfo is not None else at)


@router.get("/audit", response_class=HTMLResponse, response_model=None)
async def audit_page(request: Request, state: State, entity: str | None = None,
                     entity_id: str | None = None, limit: str | None = None,
                     cursor: str | None = None) -> Response:
    """The audit log, newest first, as ``GET /api/v1/audit`` pages it (admins only).

    Query values are taken as text and checked here, so a bad one gets this page with a
    422 naming it (``cursor`` and ``limit``: whole numbers in the API's ranges; ``entity``
    at most 32 and ``entity_id`` 64 characters; blank ones are ignored). A viewer gets a
    403 page; no login, a redirect to ``/login``.
    """
    who = await _principal(request, state)
    if who is None:
        return _to_login()
    filters = {"entity": (entity or "").strip()[:routes_ops.AUDIT_ENTITY_MAX],
               "entity_id": (entity_id or "").strip()[:routes_ops.AUDIT_ENTITY_ID_MAX]}
    context: dict[str, Any] = {"user": who, "page": "audit", "filters": filters,
                               "forbidden": False, "problems": [], "entries": [],
                               "older": None, "newest": None}
    try:
        await require_admin(who)
    except HTTPException:
        context["forbidden"] = True
        return _render(request, "audit.html", context, status_code=403)
    problems: list[str] = []
    want_entity = _text_query("entity", entity, routes_ops.AUDIT_ENTITY_MAX, problems)
    want_id = _text_query("entity_id", entity_id, routes_ops.AUDIT_ENTITY_ID_MAX, problems)
    size = _int_query("limit", limit, 1, MAX_PAGE, problems)
    before = _int_query("cursor", cursor, 1, MAX_DB_ID, problems)
    if problems:
        context["problems"] = problems
        return _render(request, "audit.html", context, status_code=422)
    page = await routes_ops.list_audit(
        who, state, entity=want_entity, entity_id=want_id,
        limit=DEFAULT_PAGE if size is None else size, cursor=before)
    keep = {k: v for k, v in (("entity", want_entity), ("entity_id", want_id),
                              ("limit", None if size is None else str(size)))
            if v is not None}
    if page.next_cursor is not None:
        context["older"] = "/audit?" + urlencode({**keep, "cursor": str(page.next_cursor)})
    if before is not None:
        context["newest"] = "/audit" + ("?" + urlencode(keep) if keep else "")
    context["entries"] = [
        {"id": e.id, "at": _utc(e.at), "username": e.username, "user_id": e.user_id,
         "action": e.action, "entity": e.entity, "entity_id": e.entity_id,
         "before": _json_text(e.before), "after": _json_text(e.after)}
        for e in page.items]
    return _render(request, "audit.html", context)


# --- posting as a human into the sandbox ------------------------------------------------


def sandbox_base_url(telegram_api_url: str) -> str | None:
    """The sandbox's base URL from ``telegram_api_url`` (its trailing ``/bot`` removed), or
    None when the URL is not on 127.0.0.1/localhost (so not the sandbox)."""
    parts = urlsplit(telegram_api_url)
    if parts.scheme not in ("http", "https") or parts.hostname not in SANDBOX_HOSTS:
        return None
    base = telegram_api_url.rstrip("/")
    return base.removesuffix("/bot")


@router.post("/panel/sandbox/post", response_model=SandboxPosted)
async def sandbox_post(body: SandboxPost, who: Admin, state: State) -> SandboxPosted:
    """Post ``text`` as a human (this panel user) into a chat of the sandbox Telegram.

    Admin only, CSRF-checked. 409 when ``telegram_api_url`` is not the sandbox's, 404 for
    an unknown chat, 502 when the sandbox refuses or does not answer.
    """
    base = sandbox_base_url(state.settings.telegram_api_url)
    if base is None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="not a sandbox")
    try:
        async with state.sessionmaker() as session:
            chat = await chat_store.get_chat(session, chat_id=body.chat_id)
            telegram_chat_id = chat.telegram_chat_id
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    payload: dict[str, Any] = {"user_id": SANDBOX_USER_BASE + who.user_id, "text": body.text,
                               "first_name": who.username, "username": who.username}
    if body.reply_to_message_id is not None:
        payload["reply_to_message_id"] = body.reply_to_message_id
    url = f"{base}/sandbox/chats/{telegram_chat_id}/messages"
    try:
        async with httpx.AsyncClient(transport=sandbox_transport,
                                     timeout=SANDBOX_TIMEOUT_S) as client:
            answer = await client.post(url, json=payload)
        data = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY,
                            detail=f"sandbox did not answer: {type(exc).__name__}") from None
    if answer.status_code >= 400 or not isinstance(data, dict) or not data.get("ok"):
        description = data.get("description") if isinstance(data, dict) else None
        raise HTTPException(status.HTTP_502_BAD_GATEWAY,
                            detail=f"sandbox refused: {description or answer.status_code}")
    result = data.get("result")
    message_id = result.get("message_id") if isinstance(result, dict) else None
    return SandboxPosted(telegram_message_id=message_id if isinstance(message_id, int) else None)

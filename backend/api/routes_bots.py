"""``/api/v1/bots`` and ``/api/v1/personas/validate``: bots, their personas, their prompt
preview and their interview (chats and their members: :mod:`backend.api.routes_chats`).

Reads need a viewer, changes an admin (both CSRF-checked for cookie sessions); an interview
needs an admin too: it changes nothing but may spend LLM budget. Every change writes an
audit entry (:mod:`backend.stores.audit`) in the transaction of the change, and invalidates
the cached reads of the running workers once it commits.

No answer ever carries a bot token: bots are shown as :class:`~backend.api_schemas.BotOut`
(``token_masked`` only). Bodies that may hold a token (create and edit a bot) are validated
here rather than by FastAPI's parameter binding; no refusal echoes the input.

Errors (RFC 9457 problem details, :mod:`backend.api.problems`): an unknown id → 404 naming
it; a refused body → 422 listing each field under ``errors`` (``loc`` ``["body", ...]``); a
duplicate username or token → 409; no Fernet key configured → 503.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, HTTPException, Query, status
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.api.deps import (
    DEFAULT_PAGE,
    E404,
    E409,
    E422,
    E503,
    Admin,
    Cursor,
    PageLimit,
    State,
    Viewer,
    audit_change,
    http_errors,
)
from backend.api.problems import invalid, invalid_body
from backend.api.security import MAX_DB_ID, ApiState, DbId, Principal
from backend.api_schemas import (
    BotCreate,
    BotOut,
    BotUpdate,
    InterviewBody,
    InterviewOut,
    OkOut,
    Page,
    PreviewOut,
    page_of,
)
from backend.crypto import TokenCipher
from backend.db.models import Bot
from backend.errors import NotFound
from backend.schemas import Persona
from backend.stores import audit
from backend.stores import bots as bot_store
from backend.stores import messages as message_store
from behavior_engine.interview import interview
from behavior_engine.llm.factory import build_chain, close_chain
from behavior_engine.market import MarketFeed
from behavior_engine.preview import preview_prompt
from behavior_engine.reads import CachedReads, item_from_row
from behavior_engine.recall import MemoryKeeper
from behavior_engine.records import StoreTurnRecords
from botsim.preflight import BotPreflight, load_targets, run_checks

router = APIRouter()
log = logging.getLogger(__name__)

#: The bot's own last messages an interview gives it as what it said lately (as
#: ``botsim interview``).
INTERVIEW_RECENT = 20

#: Seconds each Bot API call of ``GET /bots/{id}/preflight`` may take (the answer waits
#: for them; ``botsim preflight`` allows 10 by default).
PREFLIGHT_CALL_TIMEOUT_S = 5.0

M = TypeVar("M", bound=BaseModel)

def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined (for a hand-documented body)."""
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


def _documented_body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_schema(model)}},
        }
    }


# --- helpers ----------------------------------------------------------------------------


def _parse(model: type[M], body: Any) -> M:
    """Validate ``body`` as ``model``.

    Raises:
        RequestValidationError: 422 naming each refused field (no input echoed).
    """
    if not isinstance(body, dict):
        raise invalid("body", [("body", "expected a JSON object")])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc) from None


def _cipher(state: ApiState) -> TokenCipher:
    if state.cipher is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="no Fernet key configured: bot tokens cannot be handled",
        )
    return state.cipher


def _reads(state: ApiState) -> CachedReads:
    if state.reads is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="no cached reads")
    return state.reads


def bot_snapshot(bot: Bot) -> dict[str, Any]:
    """A bot's audited fields (no token: the caller adds a masked marker when it changes)."""
    return {
        "name": bot.name,
        "username": bot.username,
        "enabled": bot.enabled,
        "mood": bot.mood,
        "telegram_user_id": bot.telegram_user_id,
        **bot.persona.model_dump(mode="json"),
        "stances": [s.model_dump(mode="json") for s in bot.stances.items],
        "holdings": [h.model_dump(mode="json") for h in bot.holdings.items],
    }


def _conflict(what: str, bot: Bot) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=f"{what} already belongs to bot {bot.id}")


async def _refuse_taken(
    session: AsyncSession, *, username: str | None, token: str | None, other_than: int | None
) -> None:
    """409 when another bot has ``username`` (ignoring case) or ``token``'s bot id."""
    if username is not None:
        taken = await bot_store.bot_with_username(
            session, username=username, other_than=other_than)
        if taken is not None:
            raise _conflict(f"username {username!r}", taken)
    if token is not None:
        taken = await bot_store.bot_with_telegram_user_id(
            session, telegram_user_id=bot_store.bot_id_from_token(token), other_than=other_than)
        if taken is not None:
            raise _conflict("this token's bot id", taken)


# --- bots -------------------------------------------------------------------------------


@router.get("/bots", response_model=Page[BotOut], tags=["bots"], responses={**E503})
async def list_bots(
    _who: Viewer, state: State, limit: PageLimit = DEFAULT_PAGE, cursor: Cursor = None
) -> Page[BotOut]:
    """Bots, newest first, one page at a time (pass ``next_cursor`` back as ``cursor``).

    Tokens appear only masked (``token_masked``).
    """
    cipher = _cipher(state)
    async with state.sessionmaker() as session:
        rows = await bot_store.page_bots(session, limit=limit + 1, before_id=cursor)
    return page_of(rows, limit, lambda b: BotOut.from_row(b, cipher))


@router.get("/bots/{bot_id}", response_model=BotOut, tags=["bots"], responses={**E404, **E503})
async def get_bot(bot_id: DbId, _who: Viewer, state: State) -> BotOut:
    """One bot (404 when there is none)."""
    cipher = _cipher(state)
    with http_errors():
        async with state.sessionmaker() as session:
            bot = await bot_store.get_bot(session, bot_id=bot_id)
    return BotOut.from_row(bot, cipher)


@router.post(
    "/bots",
    response_model=BotOut,
    status_code=201,
    tags=["bots"],
    responses={**E409, **E422, **E503},
    openapi_extra=_documented_body(BotCreate),
)
async def create_bot(
    who: Admin, state: State, body: Annotated[Any, Body(description="a BotCreate")]
) -> BotOut:
    """Create a bot from a whole persona and its Bot API token (admin).

    The token is write-only: it is stored encrypted and shown only masked. 409 when another
    bot has the username (case-insensitive) or the token's bot id; 422 naming each refused
    field (a token of the wrong form, a persona field out of bounds...).
    """
    cipher = _cipher(state)
    new = _parse(BotCreate, body)
    token = new.token_value()
    with http_errors():
        async with state.sessionmaker() as session, session.begin():
            await _refuse_taken(session, username=new.username, token=token, other_than=None)
            bot = await bot_store.upsert_persona_bot(
                session, persona=new.persona(), token=token, cipher=cipher, cache=state.cache
            )
            await audit_change(session, who, "bot.create", "bot", bot.id, None,
                         {**bot_snapshot(bot), "token": "set"})
    return BotOut.from_row(bot, cipher)


@router.patch(
    "/bots/{bot_id}",
    response_model=BotOut,
    tags=["bots"],
    responses={**E404, **E409, **E422, **E503},
    openapi_extra=_documented_body(BotUpdate),
)
async def update_bot(
    bot_id: DbId, who: Admin, state: State, body: Annotated[Any, Body(description="a BotUpdate")]
) -> BotOut:
    """Edit a bot (admin): only the fields sent change.

    The persona fields are merged into the bot's persona and validated whole (422 naming
    each refused field). A new ``token`` replaces the stored one (write-only). The running
    workers see the change once it commits (the cached bot is invalidated).
    """
    cipher = _cipher(state)
    patch = _parse(BotUpdate, body)
    token = patch.token.get_secret_value() if patch.token is not None else None
    with http_errors():
        async with state.sessionmaker() as session, session.begin():
            bot = await bot_store.get_bot(session, bot_id=bot_id)
            before = bot_snapshot(bot)
            current = Persona.model_validate(
                {
                    **bot.persona.model_dump(),
                    "name": bot.name,
                    "username": bot.username,
                    "stances": bot.stances.items,
                    "holdings": bot.holdings.items,
                }
            )
            persona = patch.merged(current)
            renamed = persona.username if persona.username != bot.username else None
            await _refuse_taken(session, username=renamed, token=token, other_than=bot.id)
            await bot_store.update_bot(
                session, bot=bot, persona=persona, enabled=patch.enabled, mood=patch.mood,
                token=token, cipher=cipher, cache=state.cache)
            old, new = audit.diff(before, bot_snapshot(bot))
            if token is not None:
                old["token"], new["token"] = "replaced", "replaced"  # masked by the store
            if old or new:
                await audit_change(session, who, "bot.update", "bot", bot.id, old, new)
    return BotOut.from_row(bot, cipher)


async def _set_enabled(bot_id: int, enabled: bool, who: Principal, state: ApiState) -> BotOut:
    cipher = _cipher(state)
    with http_errors():
        async with state.sessionmaker() as session, session.begin():
            bot, changed = await bot_store.set_enabled(
                session, bot_id=bot_id, enabled=enabled, cache=state.cache)
            if changed:
                await audit_change(session, who, "bot.enable" if enabled else "bot.disable", "bot",
                             bot.id, {"enabled": not enabled}, {"enabled": enabled})
    return BotOut.from_row(bot, cipher)


@router.post(
    "/bots/{bot_id}/enable", response_model=BotOut, tags=["bots"], responses={**E404, **E503}
)
async def enable_bot(bot_id: DbId, who: Admin, state: State) -> BotOut:
    """Let the bot take turns again (admin; no-op when already enabled)."""
    return await _set_enabled(bot_id, True, who, state)


@router.post(
    "/bots/{bot_id}/disable", response_model=BotOut, tags=["bots"], responses={**E404, **E503}
)
async def disable_bot(bot_id: DbId, who: Admin, state: State) -> BotOut:
    """Stop the bot taking turns (admin; no-op when already disabled)."""
    return await _set_enabled(bot_id, False, who, state)


@router.post(
    "/personas/validate",
    response_model=OkOut,
    tags=["bots"],
    responses={**E422},
    openapi_extra=_documented_body(Persona),
)
async def validate_persona(
    _who: Viewer, body: Annotated[Any, Body(description="a Persona")]
) -> OkOut:
    """Check persona fields without storing anything: ``{"ok": true}``, or 422 listing
    each refused field."""
    _parse(Persona, body)
    return OkOut(ok=True)


@router.get("/bots/{bot_id}/preview", response_model=PreviewOut, tags=["bots"], responses={**E404})
async def preview(
    bot_id: DbId,
    chat_id: Annotated[int, Query(ge=1, le=MAX_DB_ID, description="our chat id")],
    _who: Viewer,
    state: State,
) -> PreviewOut:
    """The prompt the bot would get for a spontaneous turn in the chat now: its layers, the
    LLM messages and an estimate of their tokens. Nothing is generated, sent or stored.

    The market is the simulated feed (seed ``settings.seed``) opened now. 404 for an
    unknown bot or chat.
    """
    now = datetime.now(UTC)
    seed = state.settings.seed
    with http_errors():
        got = await preview_prompt(
            _reads(state),
            bot_id=bot_id,
            chat_id=chat_id,
            market=MarketFeed(seed=seed, start=now),
            now=now,
            seed=seed,
        )
    return PreviewOut.model_validate(got)


@router.post("/bots/{bot_id}/interview", response_model=InterviewOut, tags=["bots"],
             responses={**E404, **E422})
async def interview_bot(bot_id: DbId, body: InterviewBody, who: Admin,
                        state: State) -> InterviewOut:
    """Ask the bot a question out of band (admin), as ``botsim interview`` does: it answers
    in persona, from its profile, stances, holdings and mood, with its long-term memory
    recalled by the question and its last 20 messages as what it said lately.

    Body ``{"question": "1-4096 characters", "llm": "settings" | "offline"}``: ``settings``
    (the default) asks the configured provider chain, which may spend LLM budget (hence
    admin only), the offline generator last; ``offline`` asks only the offline generator.
    Answer ``{"bot_id", "question", "answer", "provider"}``. Nothing is posted to a group
    and nothing is stored (no message, no audit entry: nothing changes); the question is
    not logged. 404 for an unknown bot; 422 naming ``question`` (empty, only whitespace or
    longer than 4096 characters) or ``llm``.
    """
    reads = _reads(state)
    now = datetime.now(UTC)
    seed = state.settings.seed
    with http_errors():
        profile = await reads.bot(bot_id)
    async with state.sessionmaker() as session:
        recent = [item_from_row(m, profile.name, profile.username)
                  for m in await message_store.bot_recent(session, bot_id=bot_id,
                                                          limit=INTERVIEW_RECENT)]
    chain = build_chain(list(state.settings.llm_providers) if body.llm == "settings" else [])
    try:
        answer = await interview(
            profile, body.question, recent=recent, chain=chain,
            market=MarketFeed(seed=seed, start=now), now=now, seed=seed,
            memory=MemoryKeeper(StoreTurnRecords(state.sessionmaker, reads.cache)))
    finally:
        await close_chain(chain)
    log.info("bot %s interviewed by %s (%s): answered by %s", bot_id, who.username, body.llm,
             answer.provider)
    return InterviewOut(bot_id=bot_id, question=body.question, answer=answer.text,
                        provider=answer.provider)


@router.get("/bots/{bot_id}/preflight", response_model=BotPreflight, tags=["bots"],
            responses={**E404, **E503})
async def bot_preflight(bot_id: DbId, _who: Viewer, state: State) -> BotPreflight:
    """Check the bot against the Bot API now, as ``botsim preflight`` does (viewer).

    With the bot's own token (never shown: ``token_masked``): getMe (the token is valid
    and the persona's username; privacy mode off, or an administrator in each group),
    getChatMember in each enabled group it is configured in (creator, administrator or
    member; restricted only while it may send messages), and getWebhookInfo (the webhook is
    ``<public_webhook_url>/webhook/<bot id>``, with no recent delivery error while updates
    wait). Each finding is ``ok``, ``warn`` or ``fail`` with what to fix (the @BotFather
    step where one exists); ``ok`` is true when none is ``fail``. Telegram's answers never
    make this route fail: a refused token or no answer within 5 s per call is a finding.
    404 for an unknown bot, 503 without a Fernet key.
    """
    cipher = _cipher(state)
    with http_errors():
        targets = await load_targets(state.sessionmaker, cipher, bot_ids=[bot_id])
        if not targets:
            raise NotFound("bot", bot_id)
    report = await run_checks(
        targets, api_url=state.settings.telegram_api_url,
        public_url=state.settings.public_webhook_url, call_timeout_s=PREFLIGHT_CALL_TIMEOUT_S)
    return report.bots[0]

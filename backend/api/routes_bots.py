"""``/api/v1/bots``, ``/api/v1/personas/validate`` and ``/api/v1/chats``: bots, their
personas and prompt preview, chats and their member bots.

Reads need a viewer, changes an admin (both CSRF-checked for cookie sessions). Every change
writes an audit entry (:mod:`backend.stores.audit`) in the transaction of the change, and
invalidates the cached reads of the running workers once it commits.

No answer ever carries a bot token: bots are shown as :class:`~backend.api_schemas.BotOut`
(``token_masked`` only). Bodies that may hold a token (create and edit a bot) are validated
here rather than by FastAPI, whose 422 answers echo the submitted values: refusals list
``{"field", "reason"}`` and never the input.

Errors: ``{"detail": ...}``; an unknown id → 404 naming it; a refused body → 422 listing each
``{"field", "reason"}``; a duplicate username, token or Telegram chat id → 409; no Fernet key
configured → 503 on the bot routes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.api.security import (
    MAX_DB_ID,
    ApiState,
    DbId,
    Principal,
    api_state,
    require_admin,
    require_viewer,
)
from backend.api_schemas import BotCreate, BotOut, BotUpdate, ChatOut, InputModel, Page
from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from backend.db.models import Bot, Chat, ChatBot
from backend.errors import NotFound, ValidationFailed
from backend.invalidation import KIND_BOT, KIND_CHATS, invalidate_after_commit
from backend.schemas import HoldingList, Persona, StanceList, TopicId
from backend.stores import audit
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from behavior_engine.market import MarketFeed
from behavior_engine.preview import preview_prompt
from behavior_engine.reads import CachedReads

router = APIRouter()

M = TypeVar("M", bound=BaseModel)

#: Largest page of a list.
MAX_PAGE = 200
#: Default page size.
DEFAULT_PAGE = 50

Viewer = Annotated[Principal, Depends(require_viewer)]
Admin = Annotated[Principal, Depends(require_admin)]
State = Annotated[ApiState, Depends(api_state)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")]
Cursor = Annotated[
    int | None, Query(ge=1, le=MAX_DB_ID, description="next_cursor of the previous page")
]


# --- models -----------------------------------------------------------------------------


class Problem(BaseModel):
    """One refused field: its dotted path and why (never the submitted value)."""

    field: str
    reason: str


class ProblemsOut(BaseModel):
    """A 422 answer of this module."""

    detail: list[Problem]


class DetailOut(BaseModel):
    """A 404 / 409 / 503 answer."""

    detail: str


class OkOut(BaseModel):
    """A persona that validates."""

    ok: bool


class ChatCreate(InputModel):
    """Body of "create a chat".

    Attributes:
        telegram_chat_id: Telegram's id of the group (negative for groups).
        title: display title, 1–255 characters.
        topics: topic id → weight (> 0); at least one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    telegram_chat_id: int
    title: str = Field(min_length=1, max_length=255)
    topics: dict[TopicId, float] = Field(min_length=1)

    @field_validator("topics")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(t for t, w in v.items() if not w > 0)
        if bad:
            raise ValueError(f"weights must be > 0 (topics {', '.join(bad)})")
        return v


class ChatDetailOut(ChatOut):
    """A chat and the ids of its member bots (enabled or not), ascending."""

    bot_ids: list[int]


class PromptLayer(BaseModel):
    """One layer of a prompt, in prompt order."""

    name: str
    text: str


class PromptMessage(BaseModel):
    """One message of the request sent to the LLM."""

    role: str
    content: str


class PreviewOut(BaseModel):
    """The prompt a bot would get for a spontaneous turn in a chat now (nothing is sent).

    Attributes:
        tokens_estimate: estimated prompt tokens of all messages.
        topic: the topic drawn for the turn; mood / pnl_pct: the mood and holdings P&L now.
    """

    layers: list[PromptLayer]
    messages: list[PromptMessage]
    tokens_estimate: int
    topic: str
    mood: float
    pnl_pct: float


Responses = dict[int | str, dict[str, Any]]
_E404: Responses = {404: {"model": DetailOut, "description": "unknown id"}}
_E409: Responses = {409: {"model": DetailOut, "description": "duplicate"}}
_E422: Responses = {422: {"model": ProblemsOut, "description": "refused fields"}}
_E503: Responses = {503: {"model": DetailOut, "description": "no Fernet key configured"}}


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


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in e["loc"]) or "body", e["msg"]) for e in exc.errors()]


def _unprocessable(problems: Sequence[tuple[str, str]]) -> HTTPException:
    return HTTPException(422, detail=[{"field": f, "reason": r} for f, r in problems])


def _parse(model: type[M], body: Any) -> M:
    """Validate ``body`` as ``model``; 422 listing ``{field, reason}`` (no input echoed)."""
    if not isinstance(body, dict):
        raise _unprocessable([("body", "expected a JSON object")])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _unprocessable(_problems(exc)) from None


@contextmanager
def _http_errors() -> Iterator[None]:
    """Turn the stores' errors into HTTP answers (404, 422, 409)."""
    try:
        yield
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    except ValidationFailed as exc:
        raise _unprocessable(exc.problems) from None
    except IntegrityError:
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail="conflicts with an existing row (duplicate)"
        ) from None


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


def _cache(state: ApiState) -> TwoLayerCache | None:
    return state.reads.cache if state.reads is not None else None


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


async def _record(
    session: AsyncSession,
    who: Principal,
    action: str,
    entity: str,
    entity_id: int,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> None:
    await audit.record(
        session,
        user_id=who.user_id,
        username=who.username,
        action=action,
        entity=entity,
        entity_id=entity_id,
        before=before,
        after=after,
    )


async def _username_taken(
    session: AsyncSession, username: str, *, other_than: int | None
) -> Bot | None:
    stmt = select(Bot).where(func.lower(Bot.username) == username.lower())
    if other_than is not None:
        stmt = stmt.where(Bot.id != other_than)
    return (await session.execute(stmt)).scalars().first()


async def _token_taken(session: AsyncSession, token: str, *, other_than: int | None) -> Bot | None:
    stmt = select(Bot).where(Bot.telegram_user_id == bot_store.bot_id_from_token(token))
    if other_than is not None:
        stmt = stmt.where(Bot.id != other_than)
    return (await session.execute(stmt)).scalars().first()


def _conflict(what: str, bot: Bot) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=f"{what} already belongs to bot {bot.id}")


async def _member_ids(session: AsyncSession, chat_ids: Sequence[int]) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {c: [] for c in chat_ids}
    if chat_ids:
        rows = await session.execute(
            select(ChatBot.chat_id, ChatBot.bot_id)
            .where(ChatBot.chat_id.in_(chat_ids))
            .order_by(ChatBot.bot_id)
        )
        for chat_id, bot_id in rows.all():
            members[int(chat_id)].append(int(bot_id))
    return members


def _chat_out(chat: Chat, bot_ids: list[int]) -> ChatDetailOut:
    return ChatDetailOut(**ChatOut.from_row(chat).model_dump(), bot_ids=bot_ids)


async def _chat_detail(session: AsyncSession, chat: Chat) -> ChatDetailOut:
    return _chat_out(chat, (await _member_ids(session, [chat.id]))[chat.id])


# --- bots -------------------------------------------------------------------------------


@router.get("/bots", response_model=Page[BotOut], tags=["bots"], responses={**_E503})
async def list_bots(
    _who: Viewer, state: State, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
) -> Page[BotOut]:
    """Bots, newest first, one page at a time (pass ``next_cursor`` back as ``cursor``).

    Tokens appear only masked (``token_masked``).
    """
    cipher = _cipher(state)
    stmt = select(Bot).order_by(Bot.id.desc()).limit(limit + 1)
    if cursor is not None:
        stmt = stmt.where(Bot.id < cursor)
    async with state.sessionmaker() as session:
        rows = list((await session.execute(stmt)).scalars().all())
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[BotOut](
        items=[BotOut.from_row(b, cipher) for b in rows], next_cursor=rows[-1].id if more else None
    )


@router.get("/bots/{bot_id}", response_model=BotOut, tags=["bots"], responses={**_E404, **_E503})
async def get_bot(bot_id: DbId, _who: Viewer, state: State) -> BotOut:
    """One bot (404 when there is none)."""
    cipher = _cipher(state)
    with _http_errors():
        async with state.sessionmaker() as session:
            bot = await bot_store.get_bot(session, bot_id=bot_id)
    return BotOut.from_row(bot, cipher)


@router.post(
    "/bots",
    response_model=BotOut,
    status_code=201,
    tags=["bots"],
    responses={**_E409, **_E422, **_E503},
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
    with _http_errors():
        async with state.sessionmaker() as session, session.begin():
            taken = await _username_taken(session, new.username, other_than=None)
            if taken is not None:
                raise _conflict(f"username {new.username!r}", taken)
            taken = await _token_taken(session, token, other_than=None)
            if taken is not None:
                raise _conflict("this token's bot id", taken)
            bot = await bot_store.upsert_persona_bot(
                session, persona=new.persona(), token=token, cipher=cipher, cache=_cache(state)
            )
            await _record(
                session,
                who,
                "bot.create",
                "bot",
                bot.id,
                None,
                {**bot_snapshot(bot), "token": "set"},
            )
    return BotOut.from_row(bot, cipher)


@router.patch(
    "/bots/{bot_id}",
    response_model=BotOut,
    tags=["bots"],
    responses={**_E404, **_E409, **_E422, **_E503},
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
    with _http_errors():
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
            if persona.username != bot.username:
                taken = await _username_taken(session, persona.username, other_than=bot.id)
                if taken is not None:
                    raise _conflict(f"username {persona.username!r}", taken)
            bot.name = persona.name
            bot.username = persona.username
            bot.persona = persona.profile()
            bot.stances = StanceList(items=list(persona.stances))
            bot.holdings = HoldingList(items=list(persona.holdings))
            if patch.enabled is not None:
                bot.enabled = patch.enabled
            if patch.mood is not None:
                bot.mood = patch.mood
            if patch.token is not None:
                token = patch.token.get_secret_value()
                taken = await _token_taken(session, token, other_than=bot.id)
                if taken is not None:
                    raise _conflict("this token's bot id", taken)
                bot.token_encrypted = cipher.encrypt(token)
                bot.telegram_user_id = bot_store.bot_id_from_token(token)
            await session.flush()
            old, new = audit.diff(before, bot_snapshot(bot))
            if patch.token is not None:
                old["token"], new["token"] = "replaced", "replaced"  # masked by the store
            if old or new:
                await _record(session, who, "bot.update", "bot", bot.id, old, new)
            invalidate_after_commit(session, _cache(state), KIND_BOT, str(bot.id))
            invalidate_after_commit(session, _cache(state), KIND_CHATS, "enabled")
    return BotOut.from_row(bot, cipher)


async def _set_enabled(bot_id: int, enabled: bool, who: Principal, state: ApiState) -> BotOut:
    cipher = _cipher(state)
    with _http_errors():
        async with state.sessionmaker() as session, session.begin():
            bot = await bot_store.get_bot(session, bot_id=bot_id)
            if bot.enabled != enabled:
                bot.enabled = enabled
                await session.flush()
                await _record(
                    session,
                    who,
                    "bot.enable" if enabled else "bot.disable",
                    "bot",
                    bot.id,
                    {"enabled": not enabled},
                    {"enabled": enabled},
                )
                invalidate_after_commit(session, _cache(state), KIND_BOT, str(bot.id))
                invalidate_after_commit(session, _cache(state), KIND_CHATS, "enabled")
    return BotOut.from_row(bot, cipher)


@router.post(
    "/bots/{bot_id}/enable", response_model=BotOut, tags=["bots"], responses={**_E404, **_E503}
)
async def enable_bot(bot_id: DbId, who: Admin, state: State) -> BotOut:
    """Let the bot take turns again (admin; no-op when already enabled)."""
    return await _set_enabled(bot_id, True, who, state)


@router.post(
    "/bots/{bot_id}/disable", response_model=BotOut, tags=["bots"], responses={**_E404, **_E503}
)
async def disable_bot(bot_id: DbId, who: Admin, state: State) -> BotOut:
    """Stop the bot taking turns (admin; no-op when already disabled)."""
    return await _set_enabled(bot_id, False, who, state)


@router.post(
    "/personas/validate",
    response_model=OkOut,
    tags=["bots"],
    responses={**_E422},
    openapi_extra=_documented_body(Persona),
)
async def validate_persona(
    _who: Viewer, body: Annotated[Any, Body(description="a Persona")]
) -> OkOut:
    """Check persona fields without storing anything: ``{"ok": true}``, or 422 listing
    each refused ``{field, reason}``."""
    _parse(Persona, body)
    return OkOut(ok=True)


@router.get("/bots/{bot_id}/preview", response_model=PreviewOut, tags=["bots"], responses={**_E404})
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
    with _http_errors():
        got = await preview_prompt(
            _reads(state),
            bot_id=bot_id,
            chat_id=chat_id,
            market=MarketFeed(seed=seed, start=now),
            now=now,
            seed=seed,
        )
    return PreviewOut.model_validate(got)


# --- chats ------------------------------------------------------------------------------


@router.get("/chats", response_model=Page[ChatDetailOut], tags=["chats"])
async def list_chats(
    _who: Viewer, state: State, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
) -> Page[ChatDetailOut]:
    """Chats with their member bot ids, newest first (pass ``next_cursor`` back as
    ``cursor``)."""
    stmt = select(Chat).order_by(Chat.id.desc()).limit(limit + 1)
    if cursor is not None:
        stmt = stmt.where(Chat.id < cursor)
    async with state.sessionmaker() as session:
        rows = list((await session.execute(stmt)).scalars().all())
        more = len(rows) > limit
        rows = rows[:limit]
        members = await _member_ids(session, [c.id for c in rows])
    return Page[ChatDetailOut](
        items=[_chat_out(c, members[c.id]) for c in rows], next_cursor=rows[-1].id if more else None
    )


@router.get("/chats/{chat_id}", response_model=ChatDetailOut, tags=["chats"], responses={**_E404})
async def get_chat(chat_id: DbId, _who: Viewer, state: State) -> ChatDetailOut:
    """One chat with its member bot ids (404 when there is none)."""
    with _http_errors():
        async with state.sessionmaker() as session:
            chat = await chat_store.get_chat(session, chat_id=chat_id)
            return await _chat_detail(session, chat)


@router.post(
    "/chats", response_model=ChatDetailOut, status_code=201, tags=["chats"], responses={**_E409}
)
async def create_chat(body: ChatCreate, who: Admin, state: State) -> ChatDetailOut:
    """Register a Telegram group (admin); 409 when its Telegram chat id is known already."""
    with _http_errors():
        async with state.sessionmaker() as session, session.begin():
            known = await chat_store.get_chat_by_telegram_id(
                session, telegram_chat_id=body.telegram_chat_id
            )
            if known is not None:
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    detail=f"telegram chat {body.telegram_chat_id} is chat {known.id} already",
                )
            chat = await chat_store.upsert_chat(
                session,
                telegram_chat_id=body.telegram_chat_id,
                title=body.title,
                topics=dict(body.topics),
                cache=_cache(state),
            )
            out = _chat_out(chat, [])
            await _record(
                session,
                who,
                "chat.create",
                "chat",
                chat.id,
                None,
                out.model_dump(
                    mode="json", include={"telegram_chat_id", "title", "topics", "enabled"}
                ),
            )
    return out


async def _membership(
    chat_id: int, bot_id: int, member: bool, who: Principal, state: ApiState
) -> ChatDetailOut:
    with _http_errors():
        async with state.sessionmaker() as session, session.begin():
            chat = await chat_store.get_chat(session, chat_id=chat_id)
            await bot_store.get_bot(session, bot_id=bot_id)
            before = (await _member_ids(session, [chat_id]))[chat_id]
            if member:
                await chat_store.add_bot(
                    session, chat_id=chat_id, bot_id=bot_id, cache=_cache(state)
                )
            else:
                await chat_store.remove_bot(
                    session, chat_id=chat_id, bot_id=bot_id, cache=_cache(state)
                )
            after = (await _member_ids(session, [chat_id]))[chat_id]
            if before != after:
                await _record(
                    session,
                    who,
                    "chat.add_bot" if member else "chat.remove_bot",
                    "chat",
                    chat_id,
                    {"bot_ids": before},
                    {"bot_ids": after},
                )
            return _chat_out(chat, after)


@router.put(
    "/chats/{chat_id}/bots/{bot_id}",
    response_model=ChatDetailOut,
    tags=["chats"],
    responses={**_E404},
)
async def add_member(chat_id: DbId, bot_id: DbId, who: Admin, state: State) -> ChatDetailOut:
    """Make the bot a member of the chat (admin; idempotent). 404 for an unknown chat or
    bot."""
    return await _membership(chat_id, bot_id, True, who, state)


@router.delete(
    "/chats/{chat_id}/bots/{bot_id}",
    response_model=ChatDetailOut,
    tags=["chats"],
    responses={**_E404},
)
async def remove_member(chat_id: DbId, bot_id: DbId, who: Admin, state: State) -> ChatDetailOut:
    """End the bot's membership of the chat (admin; idempotent). 404 for an unknown chat or
    bot."""
    return await _membership(chat_id, bot_id, False, who, state)

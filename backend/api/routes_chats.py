"""``/api/v1/chats``: chats (Telegram groups) and their member bots.

Reads need a viewer, changes an admin (both CSRF-checked for cookie sessions). Every change
writes an audit entry in the transaction of the change; the stores invalidate the cached
chat lists of the running workers once it commits.

Errors (RFC 9457 problem details, :mod:`backend.api.problems`): an unknown id → 404 naming
it; a refused body or parameter → 422 listing each field under ``errors``; a Telegram chat
id known already → 409.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, status

from backend.api.deps import (
    DEFAULT_PAGE,
    E404,
    E409,
    Admin,
    Cursor,
    PageLimit,
    State,
    Viewer,
    audit_change,
    http_errors,
)
from backend.api.security import ApiState, DbId, Principal
from backend.api_schemas import ChatCreate, ChatDetailOut, Page, page_of
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store

router = APIRouter()


@router.get("/chats", response_model=Page[ChatDetailOut], tags=["chats"])
async def list_chats(
    _who: Viewer, state: State, limit: PageLimit = DEFAULT_PAGE, cursor: Cursor = None
) -> Page[ChatDetailOut]:
    """Chats with their member bot ids, newest first (pass ``next_cursor`` back as
    ``cursor``)."""
    async with state.sessionmaker() as session:
        rows = await chat_store.page_chats(session, limit=limit + 1, before_id=cursor)
        members = await chat_store.member_ids(session, chat_ids=[c.id for c in rows[:limit]])
    return page_of(rows, limit, lambda c: ChatDetailOut.of(c, members[c.id]))


@router.get("/chats/{chat_id}", response_model=ChatDetailOut, tags=["chats"], responses={**E404})
async def get_chat(chat_id: DbId, _who: Viewer, state: State) -> ChatDetailOut:
    """One chat with its member bot ids (404 when there is none)."""
    with http_errors():
        async with state.sessionmaker() as session:
            chat = await chat_store.get_chat(session, chat_id=chat_id)
            members = await chat_store.member_ids(session, chat_ids=[chat.id])
    return ChatDetailOut.of(chat, members[chat.id])


@router.post(
    "/chats", response_model=ChatDetailOut, status_code=201, tags=["chats"], responses={**E409}
)
async def create_chat(body: ChatCreate, who: Admin, state: State) -> ChatDetailOut:
    """Register a Telegram group (admin); 409 when its Telegram chat id is known already."""
    with http_errors():
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
                cache=state.cache,
            )
            out = ChatDetailOut.of(chat, [])
            await audit_change(session, who, "chat.create", "chat", chat.id, None, out.model_dump(
                mode="json", include={"telegram_chat_id", "title", "topics", "enabled"}))
    return out


async def _membership(
    chat_id: int, bot_id: int, member: bool, who: Principal, state: ApiState,
    talkativeness: float | None = None,
) -> ChatDetailOut:
    with http_errors():
        async with state.sessionmaker() as session, session.begin():
            chat = await chat_store.get_chat(session, chat_id=chat_id)
            await bot_store.get_bot(session, bot_id=bot_id)
            before = (await chat_store.member_ids(session, chat_ids=[chat_id]))[chat_id]
            if member:
                await chat_store.add_bot(session, chat_id=chat_id, bot_id=bot_id,
                                         cache=state.cache, talkativeness=talkativeness)
            else:
                await chat_store.remove_bot(session, chat_id=chat_id, bot_id=bot_id,
                                            cache=state.cache)
            after = (await chat_store.member_ids(session, chat_ids=[chat_id]))[chat_id]
            if talkativeness is not None:
                await audit_change(session, who, "chat.bot_talkativeness", "chat", chat_id,
                                   None, {"bot_id": bot_id, "talkativeness": talkativeness})
            if before != after:
                await audit_change(session, who, "chat.add_bot" if member else "chat.remove_bot",
                             "chat", chat_id, {"bot_ids": before}, {"bot_ids": after})
            return ChatDetailOut.of(chat, after)


@router.put(
    "/chats/{chat_id}/bots/{bot_id}",
    response_model=ChatDetailOut,
    tags=["chats"],
    responses={**E404},
)
async def add_member(
    chat_id: DbId, bot_id: DbId, who: Admin, state: State,
    talkativeness: float | None = Query(
        default=None, ge=0.05, le=10.0,
        description="the bot's talkativeness in this chat, overriding its persona's "
                    "(0.05–10); absent: unchanged (a new member: the persona's)"),
) -> ChatDetailOut:
    """Make the bot a member of the chat (admin; idempotent), optionally with its
    talkativeness there (``?talkativeness=``, 0.05–10, issue 14). 404 for an unknown chat
    or bot; 422 for a talkativeness out of range."""
    return await _membership(chat_id, bot_id, True, who, state, talkativeness)


@router.delete(
    "/chats/{chat_id}/bots/{bot_id}",
    response_model=ChatDetailOut,
    tags=["chats"],
    responses={**E404},
)
async def remove_member(chat_id: DbId, bot_id: DbId, who: Admin, state: State) -> ChatDetailOut:
    """End the bot's membership of the chat (admin; idempotent). 404 for an unknown chat or
    bot."""
    return await _membership(chat_id, bot_id, False, who, state)

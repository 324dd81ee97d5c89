"""Read-only figures of a run, for the demo's summary, the load test's report and the
benchmarks: what was stored, how often, by whom, and whether anything was stored twice.

Keyword-only async functions over an ``AsyncSession``; none writes. Times are aware UTC
``datetime``s, counts plain ``int``s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, NamedTuple, overload

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db.models import Bot, Chat, Message, TurnRecord
from backend.schemas import MessageMeta


class BotMessageRow(NamedTuple):
    """One stored message of our bots, the fields the load test's figures read."""

    id: int
    bot_id: int
    chat_id: int
    meta: MessageMeta
    reply_to_telegram_message_id: int | None


class BotTextRow(NamedTuple):
    """One stored message of our bots with its text and time (the stance and event
    figures)."""

    bot_id: int
    chat_id: int
    text: str
    meta: MessageMeta
    created_at: datetime


class Duplicates(NamedTuple):
    """Groups of stored messages that should be one (each group counts once, however many
    rows it has)."""

    #: (chat, Telegram message id) pairs held by more than one row.
    telegram: int
    #: turn ids held by more than one row.
    turn: int


async def bot_messages(session: AsyncSession) -> list[BotMessageRow]:
    """Every message our bots sent (``bot_id`` set), any time, in no particular order.

    Returns:
        one :class:`BotMessageRow` per message (``meta.sent_at``, ``meta.latency_ms``...
        as the worker stored them).
    """
    rows = (await session.execute(
        select(Message.id, Message.bot_id, Message.chat_id, Message.meta,
               Message.reply_to_telegram_message_id)
        .where(Message.bot_id.is_not(None)))).all()
    return [BotMessageRow(int(i), int(b), int(c), m, r) for i, b, c, m, r in rows
            if b is not None]


async def bot_texts(session: AsyncSession, *, since: datetime) -> list[BotTextRow]:
    """Our bots' messages stored at or after ``since``, in the order they were stored
    (by row id): who, where, what, its metadata (``views``, ``event_id``) and when."""
    rows = (await session.execute(
        select(Message.bot_id, Message.chat_id, Message.text, Message.meta, Message.created_at)
        .where(Message.bot_id.is_not(None), Message.created_at >= since)
        .order_by(Message.id))).all()
    return [BotTextRow(int(b), int(c), t, m, at) for b, c, t, m, at in rows if b is not None]


async def duplicate_groups(session: AsyncSession) -> Duplicates:
    """How many (chat, Telegram message id) pairs and how many turn ids more than one
    stored message shares (every message, any time; NULL turn ids left out). Two queries.

    Both are 0 when exactly-once holds. (:func:`backend.stores.messages.run_summary`
    counts the extra rows instead, since a time.)
    """
    dup_tg = (await session.execute(select(func.count()).select_from(
        select(Message.chat_id, Message.telegram_message_id)
        .group_by(Message.chat_id, Message.telegram_message_id)
        .having(func.count() > 1).subquery()))).scalar_one()
    dup_turn = (await session.execute(select(func.count()).select_from(
        select(Message.turn_id).where(Message.turn_id.is_not(None))
        .group_by(Message.turn_id).having(func.count() > 1).subquery()))).scalar_one()
    return Duplicates(telegram=int(dup_tg), turn=int(dup_turn))


async def sent_per_worker(
    session: AsyncSession, *, since: datetime | None = None, until: datetime | None = None
) -> dict[str, int]:
    """Turns that ended ``sent``, per worker id (``turns.worker``).

    Args:
        since / until: only turns whose ``updated_at`` is in [``since``, ``until``) (either
            bound left open when None).

    Returns:
        worker id → sent turns; workers without one are absent.
    """
    stmt = select(TurnRecord.worker, func.count()).where(TurnRecord.status == "sent")
    if since is not None:
        stmt = stmt.where(TurnRecord.updated_at >= since)
    if until is not None:
        stmt = stmt.where(TurnRecord.updated_at < until)
    rows = (await session.execute(stmt.group_by(TurnRecord.worker))).all()
    return {str(w): int(n) for w, n in rows}


@overload
async def bot_telegram_message_ids(session: AsyncSession) -> set[int]: ...


@overload
async def bot_telegram_message_ids(session: AsyncSession, *,
                                   by_chat: Literal[True]) -> set[tuple[int, int]]: ...


async def bot_telegram_message_ids(session: AsyncSession, *,
                                   by_chat: bool = False) -> set[int] | set[tuple[int, int]]:
    """The Telegram message ids of every message our bots sent (all chats, any time);
    ``by_chat``: as (Telegram chat id, message id) pairs (ids are counted per chat)."""
    if by_chat:
        return {(int(c), int(i)) for c, i in (await session.execute(
            select(Chat.telegram_chat_id, Message.telegram_message_id)
            .join(Chat, Chat.id == Message.chat_id).where(Message.bot_id.is_not(None))
        )).all()}
    return {int(i) for i in (await session.execute(
        select(Message.telegram_message_id).where(Message.bot_id.is_not(None))
    )).scalars().all()}


async def messages_per_bot(session: AsyncSession, *, since: datetime) -> list[tuple[str, int]]:
    """Every bot's name with the messages it stored since ``since`` (0 for a silent bot),
    in bot id order (one query).

    Returns:
        ``[(bot name, messages), ...]``, one pair per bot (names need not be distinct).
    """
    rows = (await session.execute(
        select(Bot.name, func.count(Message.id))
        .outerjoin(Message, (Message.bot_id == Bot.id) & (Message.created_at >= since))
        .group_by(Bot.id, Bot.name)
        .order_by(Bot.id)
    )).all()
    return [(str(name), int(n)) for name, n in rows]


async def bot_message_metas(session: AsyncSession, *, since: datetime) -> list[MessageMeta]:
    """The metadata (provider, model, timings...) of every message our bots stored since
    ``since``, in no particular order."""
    return list((await session.execute(
        select(Message.meta).where(Message.bot_id.is_not(None), Message.created_at >= since)
    )).scalars().all())


class ChatMessageRow(NamedTuple):
    """One stored message of a chat, as the realism metrics read it.

    ``at`` is when Telegram accepted it: a bot message's ``meta.sent_at`` when stored (our
    clock, to the microsecond), else ``created_at`` (Telegram's date, to the second).
    """

    telegram_message_id: int
    bot_id: int | None
    sender_id: int | None
    sender_name: str
    username: str | None
    text: str
    at: datetime
    reply_to_telegram_message_id: int | None


async def chat_messages(
    session: AsyncSession, *, telegram_chat_id: int, since: datetime | None = None,
    until: datetime | None = None,
) -> list[ChatMessageRow]:
    """A chat's messages (bots' and humans') stored in [``since``, ``until``) by
    ``created_at``, ordered by Telegram message id (one query).

    Returns:
        one :class:`ChatMessageRow` per message; a bot's name and username come from its
        ``bots`` row, a human's from the message (``sender_name``, ``meta.sender_username``).
        Empty for an unknown chat (see :func:`backend.stores.chats.get_chat_by_telegram_id`).
    """
    stmt = (select(Message.telegram_message_id, Message.bot_id, Message.sender_id,
                   Message.sender_name, Bot.name, Bot.username, Message.text,
                   Message.created_at, Message.meta, Message.reply_to_telegram_message_id)
            .join(Chat, Chat.id == Message.chat_id)
            .outerjoin(Bot, Bot.id == Message.bot_id)
            .where(Chat.telegram_chat_id == telegram_chat_id))
    if since is not None:
        stmt = stmt.where(Message.created_at >= since)
    if until is not None:
        stmt = stmt.where(Message.created_at < until)
    rows = (await session.execute(stmt.order_by(Message.telegram_message_id))).all()
    out: list[ChatMessageRow] = []
    for tg_id, bot_id, sender_id, sender_name, bot_name, bot_user, text, created, meta, rep in rows:
        is_bot = bot_id is not None
        at = meta.sent_at if is_bot and meta.sent_at is not None else created
        out.append(ChatMessageRow(
            int(tg_id), None if bot_id is None else int(bot_id),
            None if sender_id is None else int(sender_id),
            str((bot_name if is_bot else sender_name) or ""),
            bot_user if is_bot else meta.sender_username, text or "", at,
            None if rep is None else int(rep)))
    return out


async def chats_with_messages(
    session: AsyncSession, *, since: datetime | None = None, until: datetime | None = None,
) -> list[int]:
    """Telegram chat ids of the chats with a message stored in [``since``, ``until``)
    (``created_at``), ascending."""
    stmt = select(Chat.telegram_chat_id).join(Message, Message.chat_id == Chat.id)
    if since is not None:
        stmt = stmt.where(Message.created_at >= since)
    if until is not None:
        stmt = stmt.where(Message.created_at < until)
    rows = (await session.execute(stmt.distinct().order_by(Chat.telegram_chat_id))).scalars()
    return [int(c) for c in rows]


class StoredMessageRow(NamedTuple):
    """One stored message with its chat's Telegram id (the chaos run's figures)."""

    telegram_chat_id: int
    telegram_message_id: int
    bot_id: int | None
    turn_id: str | None
    reply_wanted: bool


async def stored_messages(session: AsyncSession) -> list[StoredMessageRow]:
    """Every stored message, humans' (``bot_id`` None) and our bots', with its chat's
    Telegram id, in no particular order. One query."""
    rows = (await session.execute(
        select(Chat.telegram_chat_id, Message.telegram_message_id, Message.bot_id,
               Message.turn_id, Message.reply_wanted)
        .join(Chat, Chat.id == Message.chat_id))).all()
    return [StoredMessageRow(int(c), int(m), None if b is None else int(b), t, bool(w))
            for c, m, b, t, w in rows]


async def reply_turn_statuses(session: AsyncSession) -> dict[tuple[int, int], list[str]]:
    """(Telegram chat id, Telegram message id of a human message) → the statuses of the
    turns answering it (``turns.reply_to_message_id``), for every message that has one.
    One query."""
    rows = (await session.execute(
        select(Chat.telegram_chat_id, Message.telegram_message_id, TurnRecord.status)
        .join(Message, Message.id == TurnRecord.reply_to_message_id)
        .join(Chat, Chat.id == Message.chat_id))).all()
    out: dict[tuple[int, int], list[str]] = {}
    for chat, message, status in rows:
        out.setdefault((int(chat), int(message)), []).append(str(status))
    return out

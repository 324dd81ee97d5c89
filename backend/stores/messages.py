"""Messages (bots' and humans') and the deduplication of webhook updates."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from backend.db.models import Bot, ChatMember, Message, WebhookUpdate
from backend.db.types import utcnow
from backend.schemas import MessageMeta


async def insert_ignore(
    session: AsyncSession, model: Any, values: dict[str, Any], conflict: list[str]
) -> int | None:
    """INSERT ... ON CONFLICT (conflict) DO NOTHING (PostgreSQL or SQLite): the new row's
    first primary-key column, or None when a row with the same ``conflict`` columns exists
    (two writers racing for one row never fail on the unique key)."""
    dialect = session.get_bind().dialect.name
    table = model.__table__
    # Column types (validation, UTC) apply in Core inserts through the Column objects.
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(table).values(**values)
    pk = next(iter(table.primary_key.columns))
    stmt = ins.on_conflict_do_nothing(index_elements=conflict).returning(pk)
    got: int | None = (await session.execute(stmt)).scalar_one_or_none()
    return got


async def take_update(session: AsyncSession, *, bot_id: int, update_id: int) -> bool:
    """Record that ``(bot_id, update_id)`` was taken.

    Returns:
        True the first time, False when that update was already taken (a redelivery).
    """
    got = await insert_ignore(
        session,
        WebhookUpdate,
        {"bot_id": bot_id, "update_id": update_id, "received_at": utcnow()},
        ["bot_id", "update_id"],
    )
    return got is not None


async def record_incoming(
    session: AsyncSession,
    *,
    chat_id: int,
    telegram_message_id: int,
    text: str,
    sender_id: int,
    sender_name: str,
    meta: MessageMeta,
    created_at: datetime,
    reply_to_telegram_message_id: int | None = None,
    bot_id: int | None = None,
    reply_wanted: bool = False,
) -> int | None:
    """Store a message that arrived by webhook (a human's, or another bot's).

    The same group message reaches every member bot as its own update; it is stored once,
    on the unique (chat, Telegram message id).

    Returns:
        The new message id, or None when the message was already stored.
    """
    return await insert_ignore(
        session,
        Message,
        {
            "chat_id": chat_id,
            "bot_id": bot_id,
            "sender_id": sender_id,
            "sender_name": sender_name,
            "telegram_message_id": telegram_message_id,
            "reply_to_telegram_message_id": reply_to_telegram_message_id,
            "text": text,
            "metadata": meta,
            "reply_wanted": reply_wanted,
            "created_at": created_at,
        },
        ["chat_id", "telegram_message_id"],
    )


async def record_edit(
    session: AsyncSession,
    *,
    chat_id: int,
    telegram_message_id: int,
    text: str,
    meta: MessageMeta,
) -> None:
    """Replace the text and metadata of a stored message that was edited in Telegram.

    Args:
        chat_id: our chat id.
        telegram_message_id: the message's id in that chat.
        text: the edited text (or caption).
        meta: the metadata of the edit (``edited`` set).

    Does nothing when no such message is stored (the edit of a message never seen).
    """
    await session.execute(
        update(Message)
        .where(Message.chat_id == chat_id, Message.telegram_message_id == telegram_message_id)
        .values(text=text, meta=meta)
    )


async def record_sent(
    session: AsyncSession,
    *,
    chat_id: int,
    bot_id: int,
    turn_id: str,
    telegram_message_id: int,
    text: str,
    meta: MessageMeta,
    created_at: datetime,
    reply_to_telegram_message_id: int | None = None,
) -> Message:
    """Store a message one of our bots sent, from Telegram's answer to sendMessage.

    Raises:
        sqlalchemy.exc.IntegrityError: when the turn or the (chat, Telegram id) is already
            stored — a duplicate, which must never happen.
    """
    msg = Message(
        chat_id=chat_id,
        bot_id=bot_id,
        turn_id=turn_id,
        telegram_message_id=telegram_message_id,
        reply_to_telegram_message_id=reply_to_telegram_message_id,
        text=text,
        meta=meta,
        created_at=created_at,
    )
    session.add(msg)
    await session.flush()
    return msg


async def by_turn_id(session: AsyncSession, *, turn_id: str) -> Message | None:
    """The message a bot's turn stored (its first part), or None."""
    return (await session.execute(select(Message).where(Message.turn_id == turn_id))
            ).scalar_one_or_none()


async def recent_messages(
    session: AsyncSession, *, chat_id: int, limit: int = 20
) -> list[Message]:
    """Return the last ``limit`` messages of a chat, oldest first."""
    rows = (
        await session.execute(
            select(Message)
            .where(Message.chat_id == chat_id)
            .order_by(Message.telegram_message_id.desc())
            .limit(limit)
        )
    ).scalars().all()
    return list(reversed(rows))


async def waiting_for_reply(
    session: AsyncSession, *, chat_id: int, since: datetime
) -> Sequence[Message]:
    """Messages of ``chat_id`` marked ``reply_wanted``, newer than ``since``, oldest first."""
    return (
        await session.execute(
            select(Message)
            .where(
                Message.chat_id == chat_id,
                Message.reply_wanted.is_(True),
                Message.created_at >= since,
            )
            .order_by(Message.telegram_message_id)
        )
    ).scalars().all()


async def mark_answered(
    session: AsyncSession, *, chat_id: int, telegram_message_ids: Sequence[int]
) -> None:
    """Clear ``reply_wanted`` on the given messages of ``chat_id``."""
    if telegram_message_ids:
        await session.execute(
            update(Message)
            .where(
                Message.chat_id == chat_id,
                Message.telegram_message_id.in_(telegram_message_ids),
            )
            .values(reply_wanted=False)
        )


async def bot_message_counts(
    session: AsyncSession, *, since: datetime, bot_ids: Sequence[int] | None = None
) -> dict[int, int]:
    """Return bot id → messages sent since ``since`` (all chats)."""
    stmt = (
        select(Message.bot_id, func.count())
        .where(Message.bot_id.is_not(None), Message.created_at >= since)
        .group_by(Message.bot_id)
    )
    if bot_ids is not None:
        stmt = stmt.where(Message.bot_id.in_(bot_ids))
    return {int(b): int(n) for b, n in (await session.execute(stmt)).all() if b is not None}


async def bot_send_times(
    session: AsyncSession, *, since: datetime, bot_ids: Sequence[int] | None = None
) -> list[tuple[int, datetime]]:
    """(bot id, sent at) of every message of ``bot_ids`` (default: all bots) since
    ``since``, oldest first."""
    stmt = (
        select(Message.bot_id, Message.created_at)
        .where(Message.bot_id.is_not(None), Message.created_at >= since)
        .order_by(Message.created_at)
    )
    if bot_ids is not None:
        stmt = stmt.where(Message.bot_id.in_(list(bot_ids)))
    rows = await session.execute(stmt)
    return [(int(b), t) for b, t in rows.all() if b is not None]


async def run_summary(session: AsyncSession, *, since: datetime) -> dict[str, int]:
    """Figures of the messages stored since ``since`` (the demo's summary).

    A received message's time is Telegram's ``date``, whole seconds (Bot API, Message.date),
    so ``since`` counts from the start of its second: a message posted 0.3 s after
    ``since`` may carry a date up to a second before it.

    Returns:
        ``messages`` (bot messages), ``bots_spoken`` (distinct bots), ``human_messages``,
        ``human_replies`` (human messages answered by a bot message replying to them),
        ``duplicates`` (extra rows sharing a (chat, Telegram id) or a turn id).
    """
    base = Message.created_at >= since.replace(microsecond=0)
    bot_msgs = (
        await session.execute(select(func.count()).where(base, Message.bot_id.is_not(None)))
    ).scalar_one()
    bots_spoken = (
        await session.execute(
            select(func.count(func.distinct(Message.bot_id))).where(
                base, Message.bot_id.is_not(None)
            )
        )
    ).scalar_one()
    humans = (
        await session.execute(
            select(func.count()).where(
                base, Message.bot_id.is_(None), Message.sender_id.is_not(None)
            )
        )
    ).scalar_one()
    reply = aliased(Message)
    answered = (
        await session.execute(
            select(func.count(func.distinct(Message.id))).where(
                base,
                Message.bot_id.is_(None),
                select(reply.id)
                .where(
                    reply.chat_id == Message.chat_id,
                    reply.bot_id.is_not(None),
                    reply.reply_to_telegram_message_id == Message.telegram_message_id,
                )
                .exists(),
            )
        )
    ).scalar_one()
    dup_tg = (
        select(func.count().label("n"))
        .where(base)
        .group_by(Message.chat_id, Message.telegram_message_id)
        .subquery()
    )
    dup_turn = (
        select(func.count().label("n"))
        .where(base, Message.turn_id.is_not(None))
        .group_by(Message.turn_id)
        .subquery()
    )
    dups = 0
    for sub in (dup_tg, dup_turn):
        extra = (
            await session.execute(select(func.coalesce(func.sum(sub.c.n - 1), 0)))
        ).scalar_one()
        dups += int(extra)
    return {
        "messages": int(bot_msgs),
        "bots_spoken": int(bots_spoken),
        "human_messages": int(humans),
        "human_replies": int(answered),
        "duplicates": dups,
    }


async def chat_history(
    session: AsyncSession, *, chat_id: int, limit: int
) -> list[tuple[Message, str | None, str | None]]:
    """The last ``limit`` messages of ``chat_id`` by Telegram id, oldest first, each with
    its bot's name and username (None, None for people). One query."""
    rows = (await session.execute(
        select(Message, Bot.name, Bot.username)
        .outerjoin(Bot, Bot.id == Message.bot_id)
        .where(Message.chat_id == chat_id)
        .order_by(Message.telegram_message_id.desc())
        .limit(limit)
    )).all()
    return [(m, n, u) for m, n, u in reversed(rows)]


async def database_now(session: AsyncSession) -> datetime:
    """The database server's current time (aware UTC): ``now()`` on PostgreSQL,
    ``CURRENT_TIMESTAMP`` (UTC, whole seconds) on SQLite. One query.

    A clock that does not move with this process's: the reply sweep compares stored
    times, written by the listener's clock, against it as well as against its own."""
    value = (await session.execute(select(func.current_timestamp()))).scalar_one()
    if isinstance(value, str):  # SQLite: "YYYY-MM-DD HH:MM:SS", UTC
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


async def waiting_human_messages(
    session: AsyncSession, *, since: datetime, until: datetime, limit: int
) -> Sequence[Message]:
    """Messages still marked ``reply_wanted`` created in [``since``, ``until``] (aware UTC),
    oldest first, at most ``limit`` (the reply sweep)."""
    return (await session.execute(
        select(Message).where(
            Message.reply_wanted.is_(True),
            Message.created_at >= since,
            Message.created_at <= until,
        ).order_by(Message.id).limit(limit)
    )).scalars().all()


async def page_messages(
    session: AsyncSession,
    *,
    limit: int,
    before_id: int | None = None,
    chat_id: int | None = None,
    bot_id: int | None = None,
    human: bool | None = None,
) -> list[Message]:
    """Return at most ``limit`` messages, newest (highest id) first, for keyset pagination.

    Args:
        limit: rows at most (>= 1; one more than the page size tells whether more follow).
        before_id: only messages with a smaller id (the previous page's last id).
        chat_id: only this chat's; bot_id: only this bot's.
        human: True: only messages not sent by our bots (``bot_id`` NULL); False: only our
            bots'; None: both.
    """
    stmt = select(Message).where(*_message_filters(chat_id, bot_id, human))
    if before_id is not None:
        stmt = stmt.where(Message.id < before_id)
    stmt = stmt.order_by(Message.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars().all())


async def messages_after(
    session: AsyncSession, *, after_id: int, limit: int | None, chat_id: int | None = None
) -> list[Message]:
    """Return at most ``limit`` messages with an id above ``after_id``, oldest first (the
    live stream's next batch); only ``chat_id``'s when given.

    Args:
        limit: rows at most (>= 1), or None for every one (the demo's printer, whose
            chat is small).
    """
    stmt = (
        select(Message)
        .where(Message.id > after_id, *_message_filters(chat_id, None, None))
        .order_by(Message.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list((await session.execute(stmt)).scalars().all())


async def latest_message_id(session: AsyncSession) -> int:
    """Return the highest message id stored, or 0 when there is no message."""
    latest = (await session.execute(select(func.max(Message.id)))).scalar_one_or_none()
    return int(latest or 0)


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


#: What an anonymised person's name becomes (:func:`anonymise_people`).
ANONYMISED = "(anonymised)"


async def anonymise_people(session: AsyncSession, *, before: datetime,
                           batch: int = 1000) -> int:
    """Retention: people's messages stored before ``before`` lose what identifies them and
    what they said (issue 16, item 7; ``Settings.retention_days``).

    A person's message (``bot_id`` NULL and not sent by a bot) keeps its place in the chat
    (its row, Telegram id, time, reply link: the bots' replies still point at something),
    but its text becomes empty, its sender :data:`ANONYMISED` with id 0, and the metadata
    naming people (username, mentions, a forward's origin) is cleared. Our bots' messages
    are kept. People's names in ``chat_members`` last updated before ``before`` are cleared
    too. Idempotent; at most ``batch`` messages per statement round, repeated until none is
    left.

    Returns:
        How many messages were anonymised.
    """
    done, after = 0, 0
    while True:
        rows = (await session.execute(
            select(Message).where(Message.bot_id.is_(None), Message.created_at < before,
                                  Message.sender_name.is_distinct_from(ANONYMISED),
                                  Message.id > after)
            .order_by(Message.id).limit(batch)
        )).scalars().all()
        for m in rows:
            if m.meta.sender_is_bot:  # another bot's message: no person's
                continue
            m.text, m.sender_id, m.sender_name, m.reply_wanted = "", 0, ANONYMISED, False
            m.meta = m.meta.model_copy(update={"sender_username": None, "mentions": (),
                                               "forwarded_from": None})
            done += 1
        await session.flush()
        if len(rows) < batch:
            break
        after = rows[-1].id
    await session.execute(
        update(ChatMember).where(ChatMember.bot_id.is_(None), ChatMember.updated_at < before)
        .values(name=""))
    return done


async def bot_recent(session: AsyncSession, *, bot_id: int, limit: int) -> list[Message]:
    """The last ``limit`` messages our bot ``bot_id`` sent, in any chat, oldest first (one
    query)."""
    rows = (await session.execute(
        select(Message).where(Message.bot_id == bot_id)
        .order_by(Message.created_at.desc(), Message.id.desc()).limit(limit)
    )).scalars().all()
    return list(reversed(rows))

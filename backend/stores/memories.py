"""A bot's long-term memory in the database (issue 16, item 4; ``docs/memory.md``).

The memory stream itself lives in the worker that drives the bot
(``behavior_engine.memory.MemoryStream``); what must outlive the worker is stored here:

- the bot's reflections (``bot_reflections``): LLM-written insights, which cost a call each
  and cannot be rebuilt from the chat, kept until their ``expires_at``;
- nothing else: what the bot said and what was said to it are the ``messages`` rows, which
  :func:`bot_memory_seed` reads back in one query when a worker takes the bot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Text, cast, delete, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from backend.db.models import Bot, BotReflection, ChatBot, Message


async def add_reflection(session: AsyncSession, *, bot_id: int, text: str, importance: float,
                         created_at: datetime, expires_at: datetime) -> int:
    """Store one reflection of ``bot_id``.

    Args:
        text: the insight (non-empty).
        importance: 0–1.
        created_at, expires_at: aware UTC; ``expires_at`` after ``created_at``.

    Returns:
        The new row's id.

    Raises:
        ValueError: an empty text, an importance outside 0–1, ``expires_at`` not after
            ``created_at``, or a naive datetime (``UTCDateTime``, on flush).
        sqlalchemy.exc.IntegrityError: no such bot (on flush).
    """
    if not text.strip():
        raise ValueError("a reflection needs a text")
    if not 0.0 <= importance <= 1.0:
        raise ValueError(f"importance {importance!r} is not within 0-1")
    if expires_at <= created_at:
        raise ValueError("expires_at must come after created_at")
    row = BotReflection(bot_id=bot_id, text=text, importance=importance,
                        created_at=created_at, expires_at=expires_at)
    session.add(row)
    await session.flush()
    return row.id


async def recent_reflections(session: AsyncSession, *, bot_id: int, limit: int,
                             now: datetime | None = None) -> list[BotReflection]:
    """The last ``limit`` reflections of ``bot_id``, newest first (one query on
    ``ix_bot_reflections_bot_created``); with ``now`` (aware UTC), only those not expired at
    ``now``."""
    stmt = select(BotReflection).where(BotReflection.bot_id == bot_id)
    if now is not None:
        stmt = stmt.where(BotReflection.expires_at > now)
    stmt = stmt.order_by(BotReflection.created_at.desc(), BotReflection.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars().all())


async def expire_reflections(session: AsyncSession, *, now: datetime) -> int:
    """Delete every reflection whose ``expires_at`` is at or before ``now`` (aware UTC).

    Returns:
        How many were deleted.
    """
    result = await session.execute(
        delete(BotReflection).where(BotReflection.expires_at <= now)
        .returning(BotReflection.id))
    return len(result.all())


@dataclass(frozen=True, slots=True)
class SeedMessage:
    """One message of :func:`bot_memory_seed`.

    Attributes:
        message: the stored message.
        bot_name, bot_username: its sender's, when one of our bots sent it (else None): what
            ``behavior_engine.reads.item_from_row`` takes.
        own: the seeded bot sent it; otherwise it replies to one of the bot's messages or
            mentions the bot (it was said to the bot).
    """

    message: Message
    bot_name: str | None
    bot_username: str | None
    own: bool


async def bot_memory_seed(session: AsyncSession, *, bot_id: int, since: datetime,
                          limit: int) -> list[SeedMessage]:
    """What a worker taking ``bot_id`` refills its memory stream from: the bot's own
    messages and the messages that reply to one of them or mention it, stored at or after
    ``since`` (aware UTC), newest first, at most ``limit``. One query.

    "Mention" is read from the text (``@username``, case-insensitive) or from the
    metadata's ``mentions`` (Telegram's entities); only the chats the bot is a member of
    are searched for messages to it (through ``ix_messages_chat_created``), its own
    messages in every chat (``ix_messages_bot_created``). People's messages emptied by
    retention (``messages.anonymise_people``) are left out.
    """
    username = func.lower(
        select(Bot.username).where(Bot.id == bot_id).scalar_subquery())
    own_msg = aliased(Message)
    replies_to_bot = (
        select(own_msg.id)
        .where(own_msg.chat_id == Message.chat_id,
               own_msg.telegram_message_id == Message.reply_to_telegram_message_id,
               own_msg.bot_id == bot_id)
        .exists()
    )
    mentions_bot = (
        func.lower(Message.text).contains(literal("@").concat(username))
        | cast(Message.meta, Text).contains(literal('"').concat(username).concat('"'))
    )
    own_ids = select(Message.id).where(Message.bot_id == bot_id, Message.created_at >= since)
    to_bot_ids = select(Message.id).where(
        Message.chat_id.in_(select(ChatBot.chat_id).where(ChatBot.bot_id == bot_id)),
        Message.created_at >= since,
        Message.bot_id.is_distinct_from(bot_id),
        Message.text != "",
        replies_to_bot | mentions_bot,
    )
    ids = union_all(own_ids, to_bot_ids).subquery()
    rows = (await session.execute(
        select(Message, Bot.name, Bot.username)
        .outerjoin(Bot, Bot.id == Message.bot_id)
        .where(Message.id.in_(select(ids.c.id)))
        .order_by(Message.created_at.desc(), Message.id.desc())
        .limit(limit)
    )).all()
    return [SeedMessage(message=m, bot_name=n, bot_username=u, own=m.bot_id == bot_id)
            for m, n, u in rows]


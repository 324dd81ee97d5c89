"""A bot's long-term memory in the database (issue 16, item 4; ``docs/memory.md``).

The memory stream itself lives in the worker that drives the bot
(``behavior_engine.memory.MemoryStream``); what must outlive the worker is stored here:

- the bot's reflections (``bot_reflections``): LLM-written insights, which cost a call each
  and cannot be rebuilt from the chat, kept until their ``expires_at``;
- nothing else: what the bot said and what was said to it are the ``messages`` rows, which
  :func:`bot_memory_seeds` reads back in one query for many bots when a worker takes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Text, and_, cast, delete, func, literal, select, union
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
    """The last ``limit`` reflections of ``bot_id``, newest first
    (:func:`recent_reflections_of`)."""
    return (await recent_reflections_of(session, bot_ids=[bot_id], limit=limit,
                                        now=now))[bot_id]


async def recent_reflections_of(session: AsyncSession, *, bot_ids: Sequence[int], limit: int,
                                now: datetime | None = None
                                ) -> dict[int, list[BotReflection]]:
    """Bot id → its last ``limit`` reflections, newest first, for every bot of ``bot_ids``
    (an empty list for a bot with none): one query for them all (``row_number()`` over
    each bot's reflections, on ``ix_bot_reflections_bot_created``). With ``now`` (aware
    UTC), only those not expired at ``now``.

    Raises:
        ValueError: ``limit`` below 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    out: dict[int, list[BotReflection]] = {b: [] for b in bot_ids}
    if not out:
        return out
    rank = func.row_number().over(
        partition_by=BotReflection.bot_id,
        order_by=(BotReflection.created_at.desc(), BotReflection.id.desc())).label("rank")
    ranked = select(BotReflection.id, rank).where(BotReflection.bot_id.in_(list(out)))
    if now is not None:
        ranked = ranked.where(BotReflection.expires_at > now)
    top = ranked.subquery()
    rows = (await session.execute(
        select(BotReflection).join(top, top.c.id == BotReflection.id)
        .where(top.c.rank <= limit)
        .order_by(BotReflection.bot_id, BotReflection.created_at.desc(),
                  BotReflection.id.desc()))).scalars().all()
    for row in rows:
        out[row.bot_id].append(row)
    return out


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
    """What a worker taking ``bot_id`` refills its memory stream from
    (:func:`bot_memory_seeds` for one bot), newest first."""
    return (await bot_memory_seeds(session, bot_ids=[bot_id], since=since,
                                   limit=limit))[bot_id]


async def bot_memory_seeds(session: AsyncSession, *, bot_ids: Sequence[int],
                           since: datetime, limit: int) -> dict[int, list[SeedMessage]]:
    """What a worker taking the bots ``bot_ids`` refills their memory streams from, in one
    query: bot id → the bot's own messages and the messages that reply to one of them or
    mention it, stored at or after ``since`` (aware UTC), newest first, at most ``limit``
    each (``row_number()`` over each bot's messages; an empty list for a bot with none).

    "Mention" is read from the text (``@username``, case-insensitive) or from the
    metadata's ``mentions`` (Telegram's entities); only the chats a bot is a member of
    are searched for messages to it (through ``ix_messages_chat_created``), its own
    messages in every chat (``ix_messages_bot_created``). People's messages emptied by
    retention (``messages.anonymise_people``) are left out. A message said to two of the
    bots is in both lists (the same ``Message`` object).

    Raises:
        ValueError: ``limit`` below 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    out: dict[int, list[SeedMessage]] = {b: [] for b in bot_ids}
    if not out:
        return out
    targets = list(out)
    own_msg = aliased(Message)
    member = aliased(Bot)
    said_to = (Message.created_at >= since, Message.bot_id.is_distinct_from(ChatBot.bot_id),
               Message.text != "")
    own = select(Message.bot_id.label("target"), Message.id.label("mid")).where(
        Message.bot_id.in_(targets), Message.created_at >= since)
    replies = (
        select(ChatBot.bot_id.label("target"), Message.id.label("mid"))
        .join(Message, Message.chat_id == ChatBot.chat_id)
        .join(own_msg, and_(own_msg.chat_id == Message.chat_id,
                            own_msg.telegram_message_id == Message.reply_to_telegram_message_id,
                            own_msg.bot_id == ChatBot.bot_id))
        .where(ChatBot.bot_id.in_(targets), *said_to)
    )
    username = func.lower(member.username)
    mentions = (
        select(ChatBot.bot_id.label("target"), Message.id.label("mid"))
        .join(Message, Message.chat_id == ChatBot.chat_id)
        .join(member, member.id == ChatBot.bot_id)
        .where(ChatBot.bot_id.in_(targets), *said_to,
               func.lower(Message.text).contains(literal("@").concat(username))
               | cast(Message.meta, Text).contains(
                   literal('"').concat(username).concat('"')))
    )
    pairs = union(own, replies, mentions).subquery()  # UNION: a (bot, message) pair once
    rank = func.row_number().over(
        partition_by=pairs.c.target,
        order_by=(Message.created_at.desc(), Message.id.desc())).label("rank")
    ranked = (select(pairs.c.target, pairs.c.mid, rank)
              .join(Message, Message.id == pairs.c.mid)).subquery()
    rows = (await session.execute(
        select(ranked.c.target, Message, Bot.name, Bot.username)
        .join(ranked, ranked.c.mid == Message.id)
        .outerjoin(Bot, Bot.id == Message.bot_id)
        .where(ranked.c.rank <= limit)
        .order_by(ranked.c.target, Message.created_at.desc(), Message.id.desc())
    )).all()
    for target, m, name, handle in rows:
        out[target].append(SeedMessage(message=m, bot_name=name, bot_username=handle,
                                       own=m.bot_id == target))
    return out

"""Chats and which bots are in them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import JSON, delete, func, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.cache import TwoLayerCache
from backend.db.models import Bot, Chat, ChatBot, ChatMember, LLMCall, Message, TurnRecord
from backend.errors import NotFound, ValidationFailed
from backend.invalidation import KIND_CHATS, KIND_HISTORY, invalidate_after_commit
from backend.schemas import TopicWeights
from backend.stores.members import is_active


async def upsert_chat(
    session: AsyncSession, *, telegram_chat_id: int, title: str, topics: dict[str, float],
    cache: TwoLayerCache | None = None, enabled_if_new: bool = True,
) -> Chat:
    """Create the chat with ``telegram_chat_id`` (enabled if ``enabled_if_new``) or update
    its title and topics (its ``enabled`` unchanged)."""
    chat = (
        await session.execute(select(Chat).where(Chat.telegram_chat_id == telegram_chat_id))
    ).scalar_one_or_none()
    if chat is None:
        chat = Chat(telegram_chat_id=telegram_chat_id, enabled=enabled_if_new)
        session.add(chat)
    chat.title = title
    chat.topics = TopicWeights(weights=topics)
    await session.flush()
    invalidate_after_commit(session, cache, KIND_CHATS, "enabled")
    return chat


#: Bounds of a talkativeness, per persona or per chat (``PersonaSpec.talkativeness``).
TALKATIVENESS_MIN, TALKATIVENESS_MAX = 0.05, 10.0


async def add_bot(
    session: AsyncSession, *, chat_id: int, bot_id: int, cache: TwoLayerCache | None = None,
    talkativeness: float | None = None,
) -> None:
    """Make ``bot_id`` a member of ``chat_id`` (idempotent).

    Args:
        talkativeness: the bot's share weight in this chat, overriding its persona's
            (0.05–10); None leaves an existing member's as it is (a new one: the persona's).

    Raises:
        ValidationFailed: ``talkativeness`` outside 0.05–10 (nothing is written).
    """
    if talkativeness is not None and not (
            TALKATIVENESS_MIN <= talkativeness <= TALKATIVENESS_MAX):
        raise ValidationFailed("chat membership", [(
            "talkativeness",
            f"{talkativeness!r} is outside {TALKATIVENESS_MIN}-{TALKATIVENESS_MAX}")])
    member = await session.get(ChatBot, (chat_id, bot_id))
    if member is None:
        session.add(ChatBot(chat_id=chat_id, bot_id=bot_id, talkativeness=talkativeness))
    elif talkativeness is not None and member.talkativeness != talkativeness:
        member.talkativeness = talkativeness
    else:
        return
    await session.flush()
    invalidate_after_commit(session, cache, KIND_CHATS, "enabled")


async def remove_bot(
    session: AsyncSession, *, chat_id: int, bot_id: int, cache: TwoLayerCache | None = None
) -> None:
    """End ``bot_id``'s membership of ``chat_id`` (idempotent)."""
    member = await session.get(ChatBot, (chat_id, bot_id))
    if member is not None:
        await session.delete(member)
        await session.flush()
        invalidate_after_commit(session, cache, KIND_CHATS, "enabled")


async def set_title(
    session: AsyncSession, *, chat_id: int, title: str, cache: TwoLayerCache | None = None
) -> bool:
    """Store the chat's new title (Telegram's ``new_chat_title``; cut to 255 characters).

    Returns:
        True when it changed.

    Raises:
        NotFound: there is no chat ``chat_id``.
    """
    chat = await get_chat(session, chat_id=chat_id)
    title = title[:255]
    if chat.title == title:
        return False
    chat.title = title
    await session.flush()
    invalidate_after_commit(session, cache, KIND_CHATS, "enabled")
    return True


async def get_chat(session: AsyncSession, *, chat_id: int) -> Chat:
    """Return the chat with our id ``chat_id``.

    Raises:
        NotFound: when there is none.
    """
    chat = await session.get(Chat, chat_id)
    if chat is None:
        raise NotFound("chat", chat_id)
    return chat


async def get_chat_by_telegram_id(session: AsyncSession, *, telegram_chat_id: int) -> Chat | None:
    """Return the chat with Telegram id ``telegram_chat_id`` (its current id, or its id
    before its group became a supergroup: :func:`map_migration`), or None."""
    return (await session.execute(
        select(Chat).where((Chat.telegram_chat_id == telegram_chat_id)
                           | (Chat.migrated_from_telegram_chat_id == telegram_chat_id))
        .order_by(Chat.telegram_chat_id != telegram_chat_id).limit(1)
    )).scalar_one_or_none()


async def set_enabled(
    session: AsyncSession, *, chat_id: int, enabled: bool, cache: TwoLayerCache | None = None
) -> tuple[Chat, bool]:
    """Let the bots talk in ``chat_id`` (``enabled``) or not; a no-op when it already is so.

    On a change the row is flushed and, with a ``cache``, the cached list of enabled chats
    is invalidated in every process once the transaction commits.

    Returns:
        ``(chat, changed)``: the chat row, and whether ``enabled`` changed.

    Raises:
        NotFound: there is no such chat.
    """
    chat = await get_chat(session, chat_id=chat_id)
    if chat.enabled == enabled:
        return chat, False
    chat.enabled = enabled
    await session.flush()
    invalidate_after_commit(session, cache, KIND_CHATS, "enabled")
    return chat, True


async def chat_bots(
    session: AsyncSession, *, chat_id: int, enabled_only: bool = True
) -> Sequence[Bot]:
    """Return the bots that are members of ``chat_id``, ordered by id."""
    stmt = (
        select(Bot)
        .join(ChatBot, ChatBot.bot_id == Bot.id)
        .where(ChatBot.chat_id == chat_id)
        .order_by(Bot.id)
    )
    if enabled_only:
        stmt = stmt.where(Bot.enabled.is_(True))
    return (await session.execute(stmt)).scalars().all()


async def migrate_chat(
    session: AsyncSession, *, chat_id: int, new_telegram_chat_id: int,
    cache: TwoLayerCache | None = None,
) -> bool:
    """Point our chat ``chat_id`` at its new Telegram id after the group became a
    supergroup (a send answered 400 with ``migrate_to_chat_id``,
    core.telegram.org/bots/api#responseparameters): :func:`map_migration` from the chat's
    current Telegram id.

    Returns:
        True (the chat now has ``new_telegram_chat_id``).

    Raises:
        NotFound: there is no chat ``chat_id``.
    """
    chat = await get_chat(session, chat_id=chat_id)
    if chat.telegram_chat_id == new_telegram_chat_id:
        return True
    await map_migration(session, old_telegram_chat_id=chat.telegram_chat_id,
                        new_telegram_chat_id=new_telegram_chat_id, cache=cache)
    return True


async def map_migration(
    session: AsyncSession, *, old_telegram_chat_id: int, new_telegram_chat_id: int,
    title: str | None = None, cache: TwoLayerCache | None = None,
) -> Chat:
    """One chat from a group and the supergroup it became (Bot API, Message:
    ``migrate_to_chat_id`` in the old group, ``migrate_from_chat_id`` in the new one; either
    may arrive first, and a send may learn it first from a 400).

    - Only the old chat is ours: it takes the new Telegram id and remembers the old one
      (``migrated_from_telegram_chat_id``), keeping its history, members and settings.
    - Only the new one is: it remembers the old id.
    - Neither: a new chat, disabled (an operator enables it), as for any unknown chat.
    - Both (a message from the supergroup arrived before any news of the migration): the
      new one is merged into the old one (its messages, members, bot configuration and
      turns move; it is deleted), the old one enabled if either was.

    Message ids restart at 1 in a supergroup, so the old group's messages keep their
    Telegram ids negated (a reply to one of them can no longer be sent there anyway, and
    the two id ranges never collide). Idempotent; the cached chat list and the chat's
    history are invalidated after the commit.

    Returns:
        The chat, now with ``telegram_chat_id == new_telegram_chat_id``.
    """
    old = await get_chat_by_telegram_id(session, telegram_chat_id=old_telegram_chat_id)
    new = (await session.execute(
        select(Chat).where(Chat.telegram_chat_id == new_telegram_chat_id)
    )).scalar_one_or_none()
    if old is not None and old is new:  # mapped already
        return old
    if old is None and new is None:
        new = Chat(telegram_chat_id=new_telegram_chat_id, enabled=False,
                   title=(title or str(new_telegram_chat_id))[:255],
                   topics=TopicWeights(weights={"general": 1.0}))
        session.add(new)
    if old is None:
        assert new is not None
        new.migrated_from_telegram_chat_id = old_telegram_chat_id
        await session.flush()
        invalidate_after_commit(session, cache, KIND_CHATS, "enabled")
        return new
    await _negate_message_ids(session, chat_id=old.id)
    if new is not None:
        await _merge_into(session, keep=old, gone=new)
    old.telegram_chat_id = new_telegram_chat_id
    old.migrated_from_telegram_chat_id = old_telegram_chat_id
    if title:
        old.title = title[:255]
    await session.flush()
    invalidate_after_commit(session, cache, KIND_CHATS, "enabled")
    invalidate_after_commit(session, cache, KIND_HISTORY, str(old.id))
    return old


async def _negate_message_ids(session: AsyncSession, *, chat_id: int) -> None:
    """The old group's messages keep their Telegram ids negated (:func:`map_migration`)."""
    await session.execute(
        update(Message).where(Message.chat_id == chat_id, Message.telegram_message_id > 0)
        .values(telegram_message_id=-Message.telegram_message_id,
                reply_to_telegram_message_id=-Message.reply_to_telegram_message_id))


async def _merge_into(session: AsyncSession, *, keep: Chat, gone: Chat) -> None:
    """Move ``gone``'s messages, turns, members and bot configuration into ``keep`` and
    delete ``gone`` (rows ``keep`` already has win)."""
    await session.execute(update(Message).where(Message.chat_id == gone.id)
                          .values(chat_id=keep.id))
    await session.execute(update(TurnRecord).where(TurnRecord.chat_id == gone.id)
                          .values(chat_id=keep.id))
    await session.execute(update(LLMCall).where(LLMCall.chat_id == gone.id)
                          .values(chat_id=keep.id))
    for model, key in ((ChatBot, ChatBot.bot_id), (ChatMember, ChatMember.user_id)):
        have = set((await session.execute(
            select(key).where(model.chat_id == keep.id))).scalars().all())
        await session.execute(delete(model).where(model.chat_id == gone.id, key.in_(have)))
        await session.execute(update(model).where(model.chat_id == gone.id)
                              .values(chat_id=keep.id))
    keep.enabled = keep.enabled or gone.enabled
    await session.flush()
    await session.delete(gone)
    await session.flush()


async def enabled_chats_with_bots(session: AsyncSession) -> list[tuple[Chat, list[int]]]:
    """Every enabled chat with the ids of its enabled member bots, in chat then bot order
    (one query). A chat without an enabled member has an empty list."""
    return [(chat, list(talk)) for chat, talk in await enabled_chats_with_talkativeness(session)]


async def enabled_chats_with_talkativeness(
    session: AsyncSession,
) -> list[tuple[Chat, dict[int, tuple[float | None, float]]]]:
    """Every enabled chat with its enabled member bots, ``{bot id: (talkativeness in the
    chat (None: the persona's), the persona's talkativeness)}``, in chat then bot order
    (one query; the persona's value is read from its JSON, 1.0 when it sets none). A bot
    whose membership Telegram reports as not active (kicked, left, restricted from sending:
    :mod:`backend.stores.members`) is left out of that chat."""
    persona_talk = func.coalesce(
        type_coerce(Bot.persona, JSON)["talkativeness"].as_float(), 1.0)
    rows = (await session.execute(
        select(Chat, Bot.id, ChatBot.talkativeness, ChatMember.status, ChatMember.can_send,
               persona_talk)
        .outerjoin(ChatBot, ChatBot.chat_id == Chat.id)
        .outerjoin(Bot, (Bot.id == ChatBot.bot_id) & Bot.enabled.is_(True))
        .outerjoin(ChatMember, (ChatMember.chat_id == Chat.id) & (ChatMember.bot_id == Bot.id))
        .where(Chat.enabled.is_(True))
        .order_by(Chat.id, Bot.id)
    )).all()
    chats: dict[int, tuple[Chat, dict[int, tuple[float | None, float]]]] = {}
    for chat, bot_id, talk, status, can_send, own in rows:
        entry = chats.setdefault(chat.id, (chat, {}))
        if bot_id is not None and (status is None or is_active(status, bool(can_send))):
            entry[1][int(bot_id)] = (None if talk is None else float(talk), float(own))
    return list(chats.values())


async def telegram_chat_ids(session: AsyncSession) -> dict[int, int]:
    """Every chat's Telegram chat id, enabled or not (one query): ``{chat id: Telegram
    chat id}``."""
    rows = (await session.execute(select(Chat.id, Chat.telegram_chat_id))).all()
    return {int(c): int(tg) for c, tg in rows}


async def list_chats(session: AsyncSession) -> list[Chat]:
    """Return every chat, ordered by id."""
    return list((await session.execute(select(Chat).order_by(Chat.id))).scalars().all())


async def page_chats(
    session: AsyncSession, *, limit: int, before_id: int | None = None
) -> list[Chat]:
    """Return at most ``limit`` chats, newest (highest id) first, for keyset pagination.

    Args:
        limit: rows at most (>= 1; one more than the page size tells whether more follow).
        before_id: only chats with a smaller id (the previous page's last id).
    """
    stmt = select(Chat).order_by(Chat.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(Chat.id < before_id)
    return list((await session.execute(stmt)).scalars().all())


async def member_ids(session: AsyncSession, *, chat_ids: Sequence[int]) -> dict[int, list[int]]:
    """Return chat id → ids of its member bots (enabled or not), ascending.

    Every id of ``chat_ids`` is a key (an empty list for a chat without members, or an id
    that names no chat); no query is sent when ``chat_ids`` is empty.
    """
    members: dict[int, list[int]] = {c: [] for c in chat_ids}
    if chat_ids:
        rows = await session.execute(
            select(ChatBot.chat_id, ChatBot.bot_id)
            .where(ChatBot.chat_id.in_(list(chat_ids)))
            .order_by(ChatBot.bot_id)
        )
        for chat_id, bot_id in rows.all():
            members[int(chat_id)].append(int(bot_id))
    return members


async def chat_ids_of_bot(session: AsyncSession, *, bot_id: int) -> set[int]:
    """Return the ids of the chats ``bot_id`` is a member of (empty for an unknown bot)."""
    rows = await session.execute(select(ChatBot.chat_id).where(ChatBot.bot_id == bot_id))
    return {int(c) for c in rows.scalars().all()}

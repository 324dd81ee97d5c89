"""Who is in a chat as Telegram reports it (``chat_members``), our bots included.

Telegram's ChatMember statuses (Bot API, ChatMember): ``creator``, ``administrator``,
``member``, ``restricted`` (``can_send_messages`` may be false), ``left`` and ``kicked``
(banned). A bot of ours takes turns in a chat only while its membership there is active:
no row (nothing heard yet), or a status in :data:`ACTIVE`, or ``restricted`` with
``can_send``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.cache import TwoLayerCache
from backend.db.models import Bot, ChatMember
from backend.db.types import utcnow
from backend.errors import ValidationFailed
from backend.invalidation import KIND_CHATS, invalidate_after_commit
from backend.stores.messages import insert_ignore

#: Telegram's ChatMember statuses (Bot API, ChatMember).
STATUSES = frozenset({"creator", "administrator", "member", "restricted", "left", "kicked"})
#: Statuses in which a member may send (``restricted`` depends on ``can_send``).
ACTIVE = frozenset({"creator", "administrator", "member"})
#: Longest ``reason`` kept (the column's size).
REASON_MAX = 255


def is_active(status: str, can_send: bool) -> bool:
    """Whether a member with ``status`` may post (``restricted`` only with ``can_send``)."""
    return status in ACTIVE or (status == "restricted" and can_send)


async def set_member(
    session: AsyncSession, *, chat_id: int, user_id: int, status: str, name: str = "",
    bot_id: int | None = None, can_send: bool = True, reason: str | None = None,
    at: datetime | None = None, cache: TwoLayerCache | None = None,
    keep: frozenset[str] = frozenset(),
) -> bool:
    """Record that Telegram user ``user_id`` is ``status`` in our chat ``chat_id``.

    A report older than the stored one (``at`` before its ``updated_at``) changes nothing:
    Telegram delivers each bot's updates in order, but two bots' copies of one event, or a
    send error and an update, may cross. When one of our bots becomes active or inactive,
    the cached list of enabled chats is invalidated after the commit, so the workers stop
    (or resume) giving it turns there.

    Args:
        chat_id: our chat id; user_id: the Telegram user id.
        status: one of :data:`STATUSES`.
        name: the user's display name (kept when empty).
        bot_id: our bot id when the user is one of our bots.
        can_send: for ``restricted``: ``can_send_messages``.
        reason: what told us (e.g. "my_chat_member from 42", "403 bot was kicked").
        at: when Telegram says it happened (aware UTC; default now).
        keep: stored statuses this report does not replace: a service message says less
            than a ChatMemberUpdated (``left_chat_member`` is sent for a member who left
            and for one removed, so it keeps ``kicked``; ``new_chat_members`` keeps an
            administrator's rank).

    Returns:
        True when the stored state changed.

    Raises:
        ValidationFailed: ``status`` is not one of Telegram's.
    """
    if status not in STATUSES:
        raise ValidationFailed("chat member", [("status", f"{status!r} is not one of "
                                                f"{', '.join(sorted(STATUSES))}")])
    at = at or utcnow()
    name, reason = name[:255], (reason[:REASON_MAX] if reason else None)
    # Two bots' copies of one event race for the row: the insert never fails on the key,
    # and the loser reads the winner's row (locked on PostgreSQL) and updates it.
    if await insert_ignore(session, ChatMember, {
            "chat_id": chat_id, "user_id": user_id, "bot_id": bot_id, "name": name,
            "status": status, "can_send": can_send, "reason": reason, "updated_at": at,
    }, ["chat_id", "user_id"]) is not None:
        if bot_id is not None and not is_active(status, can_send):
            invalidate_after_commit(session, cache, KIND_CHATS, "enabled")
        return True
    row = (await session.execute(
        select(ChatMember).where(ChatMember.chat_id == chat_id, ChatMember.user_id == user_id)
        .with_for_update().execution_options(populate_existing=True)
    )).scalar_one()
    if row.updated_at > at or row.status in keep:
        return False
    was_active = is_active(row.status, row.can_send)
    if (row.status, row.can_send) == (status, can_send) and bot_id in (None, row.bot_id):
        row.updated_at = at
        await session.flush()
        return False
    row.status, row.can_send, row.updated_at = status, can_send, at
    row.bot_id = bot_id if bot_id is not None else row.bot_id
    row.name = name or row.name or ""
    row.reason = reason
    await session.flush()
    if row.bot_id is not None and was_active != is_active(status, can_send):
        invalidate_after_commit(session, cache, KIND_CHATS, "enabled")
    return True


async def set_bot_member(
    session: AsyncSession, *, chat_id: int, bot_id: int, status: str, can_send: bool = True,
    reason: str | None = None, at: datetime | None = None, cache: TwoLayerCache | None = None,
) -> bool:
    """:func:`set_member` for our bot ``bot_id`` (its Telegram id and name from its row;
    a bot with no Telegram id yet changes nothing and returns False)."""
    bot = await session.get(Bot, bot_id)
    if bot is None or bot.telegram_user_id is None:
        return False
    return await set_member(session, chat_id=chat_id, user_id=bot.telegram_user_id,
                            status=status, name=bot.name, bot_id=bot_id, can_send=can_send,
                            reason=reason, at=at, cache=cache)


async def chat_members(session: AsyncSession, *, chat_id: int) -> Sequence[ChatMember]:
    """Every member row of ``chat_id``, our bots first, then by Telegram user id."""
    return (await session.execute(
        select(ChatMember).where(ChatMember.chat_id == chat_id)
        .order_by(ChatMember.bot_id.is_(None), ChatMember.user_id)
    )).scalars().all()


async def bot_memberships(session: AsyncSession, *, bot_id: int) -> Sequence[ChatMember]:
    """Every member row of our bot ``bot_id``, by chat id."""
    return (await session.execute(
        select(ChatMember).where(ChatMember.bot_id == bot_id).order_by(ChatMember.chat_id)
    )).scalars().all()


async def inactive_bot_pairs(session: AsyncSession) -> set[tuple[int, int]]:
    """``{(chat id, bot id)}`` of our bots whose membership is not active (one query)."""
    rows = (await session.execute(
        select(ChatMember.chat_id, ChatMember.bot_id, ChatMember.status, ChatMember.can_send)
        .where(ChatMember.bot_id.is_not(None))
    )).all()
    return {(int(c), int(b)) for c, b, s, can in rows
            if b is not None and not is_active(s, bool(can))}

"""The realism report of a stored run: read the chats' messages through the store, hand them
to :mod:`behavior_engine.realism` (pure), return its :class:`RealismReport`.

Used by ``botsim realism``, the demo's summary, the load test's figures and the panel's
realism page.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from backend.errors import NotFound
from backend.stores import chats as chat_store
from backend.stores import figures as figures_store
from behavior_engine.realism import MessageRecord, RealismReport, realism_report


def records(rows: Sequence[figures_store.ChatMessageRow]) -> list[MessageRecord]:
    """Store rows → metric records; speakers keyed ``bot:<bot id>`` or ``human:<user id>``."""
    return [MessageRecord(
        message_id=r.telegram_message_id,
        sender=f"bot:{r.bot_id}" if r.bot_id is not None else f"human:{r.sender_id}",
        is_bot=r.bot_id is not None, text=r.text, at=r.at,
        reply_to=r.reply_to_telegram_message_id, name=r.sender_name, username=r.username,
    ) for r in rows]


async def load_chats(
    session: AsyncSession, *, telegram_chat_ids: Sequence[int] | None = None,
    since: datetime | None = None, until: datetime | None = None,
) -> tuple[dict[str, list[MessageRecord]], dict[str, list[str]]]:
    """The messages of each chat in [``since``, ``until``) and each chat's member bots.

    Args:
        telegram_chat_ids: the chats (default: every chat with a message in the window).

    Returns:
        (Telegram chat id as text → records in message id order, the same key → sender keys
        of the chat's member bots). A chat without messages in the window is left out.

    Raises:
        NotFound: a chat of ``telegram_chat_ids`` is not stored.
    """
    if telegram_chat_ids is None:
        telegram_chat_ids = await figures_store.chats_with_messages(
            session, since=since, until=until)
    chats: dict[str, list[MessageRecord]] = {}
    members: dict[str, list[str]] = {}
    for tg in telegram_chat_ids:
        chat = await chat_store.get_chat_by_telegram_id(session, telegram_chat_id=tg)
        if chat is None:
            raise NotFound("chat", tg)
        rows = await figures_store.chat_messages(
            session, telegram_chat_id=tg, since=since, until=until)
        if rows:
            chats[str(tg)] = records(rows)
            bots = (await chat_store.member_ids(session, chat_ids=[chat.id]))[chat.id]
            members[str(tg)] = [f"bot:{b}" for b in bots]
    return chats, members


async def run_report(
    session: AsyncSession, *, telegram_chat_ids: Sequence[int] | None = None,
    since: datetime | None = None, until: datetime | None = None, seed: int = 0,
) -> RealismReport | None:
    """:func:`load_chats` then :func:`behavior_engine.realism.realism_report` (CPU-bound: the
    separability classifier takes ~0.1 s per chat; call it from a thread on a busy loop).

    Returns:
        the report, or None when no chat has a message in the window.

    Raises:
        NotFound: a chat of ``telegram_chat_ids`` is not stored.
    """
    chats, members = await load_chats(session, telegram_chat_ids=telegram_chat_ids,
                                      since=since, until=until)
    if not chats:
        return None
    return realism_report(chats, bots_per_chat=members, seed=seed)

"""The writes of a turn, over ``backend.stores`` (:class:`StoreTurnRecords`).

Each method is one transaction; the SQL is the stores'. The cache is told what changed
after each commit (``backend.invalidation``).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.cache import TwoLayerCache
from backend.schemas import MessageMeta
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import members as member_store
from backend.stores import turns as turn_store
from behavior_engine.pipeline import Sent, message_time
from behavior_engine.reads import HistoryItem, item_from_row
from behavior_engine.turn import Turn


class StoreTurnRecords:
    """:class:`behavior_engine.pipeline.TurnRecords` over the database.

    Args:
        sessionmaker: database sessions.
        cache: the cache to invalidate after chat and bot changes (None: none).
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession],
                 cache: TwoLayerCache | None = None) -> None:
        self.sessionmaker = sessionmaker
        self.cache = cache

    async def record_intent(self, turn: Turn, *, token: int, worker: str) -> bool:
        """See :func:`backend.stores.turns.record_intent` (raises ``FencedOut``)."""
        async with self.sessionmaker() as session, session.begin():
            return await turn_store.record_intent(
                session, turn_id=turn.turn_id, bot_id=turn.bot_id, chat_id=turn.chat_id,
                token=token, worker=worker, reply_to_message_id=turn.reply_message_id)

    async def finish(self, turn: Turn, status: str, error: str | None = None) -> None:
        """See :func:`backend.stores.turns.finish_turn`."""
        async with self.sessionmaker() as session, session.begin():
            await turn_store.finish_turn(session, turn_id=turn.turn_id, status=status,
                                         error=error)

    async def commit_sent(self, sent: Sent) -> HistoryItem:
        """One transaction (:func:`backend.stores.turns.commit_sent`); returns the history
        item of the stored message."""
        turn, timing, gen = sent.turn, sent.timing, sent.generation
        meta = MessageMeta(provider=gen.provider, model=gen.model, topic=turn.topic,
                           sender_is_bot=True, sender_username=sent.bot.username,
                           sent_at=timing.sent_at,
                           latency_ms=round(timing.latency_s * 1000, 3),
                           llm_ms=round(timing.llm_s * 1000, 3),
                           wait_ms=round(timing.wait_s * 1000, 3),
                           read_ms=round(timing.read_s * 1000, 3),
                           typing_ms=round(timing.typing_s * 1000, 3))
        async with self.sessionmaker() as session, session.begin():
            msg = await turn_store.commit_sent(
                session, turn_id=turn.turn_id, chat_id=turn.chat_id, bot_id=turn.bot_id,
                telegram_message_id=sent.message.message_id, text=gen.text, meta=meta,
                created_at=message_time(sent.message),
                reply_to_telegram_message_id=sent.reply_to,
                answered_human=turn.reply_to is not None and turn.reply_to.is_human,
                mood=sent.mood)
        return item_from_row(msg, sent.bot.name, sent.bot.username)

    async def leave_chat(self, turn: Turn, *, status: str, reason: str) -> None:
        """Telegram refused the bot in the turn's chat (403): its membership there becomes
        ``status`` (``kicked`` or ``left``), so it takes no more turns there until Telegram
        reports it back; its configuration (``chat_bots``) is kept
        (:func:`backend.stores.members.set_bot_member`)."""
        async with self.sessionmaker() as session, session.begin():
            await member_store.set_bot_member(session, chat_id=turn.chat_id,
                                              bot_id=turn.bot_id, status=status,
                                              reason=reason, cache=self.cache)

    async def disable_bot(self, bot_id: int) -> None:
        """See :func:`backend.stores.bots.disable_bot`."""
        async with self.sessionmaker() as session, session.begin():
            await bot_store.disable_bot(session, bot_id=bot_id, cache=self.cache)

    async def migrate_chat(self, turn: Turn, new_telegram_chat_id: int) -> bool:
        """See :func:`backend.stores.chats.migrate_chat`."""
        async with self.sessionmaker() as session, session.begin():
            return await chat_store.migrate_chat(
                session, chat_id=turn.chat_id, new_telegram_chat_id=new_telegram_chat_id,
                cache=self.cache)

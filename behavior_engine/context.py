"""A turn's context from the cached bot, the chat's history and the market: one code path
for the worker's turns and the admin panel's prompt preview."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from behavior_engine.events import EventNote, notes_text
from behavior_engine.market import holdings_pnl_pct, mood_from_pnl
from behavior_engine.prompt_builder import MEMORY_ITEMS
from behavior_engine.reads import BotProfile, HistoryItem
from behavior_engine.stances import BotViews, change_lines
from behavior_engine.turn import ChatLine, MarketSnapshot, TurnContext

#: Messages of the chat's history a turn sees (the newest).
HISTORY_SIZE = 20


def to_line(item: HistoryItem) -> ChatLine:
    """A cached history item as the :class:`ChatLine` the scheduler and prompts read."""
    return ChatLine(
        telegram_message_id=item.telegram_message_id,
        speaker=item.speaker,
        speaker_username=item.speaker_username,
        is_human=item.is_human,
        text=item.text,
        bot_id=item.bot_id,
        created_at=item.created_at,
        reply_to=item.reply_to,
        thread_id=item.thread_id,
        mentions=item.mentions,
    )


def turn_context(
    bot: BotProfile,
    history: Sequence[HistoryItem],
    snapshot: MarketSnapshot,
    *,
    turn_id: str,
    topic: str,
    chat_id: int,
    seed: int,
    reply_to: ChatLine | None = None,
    views: BotViews | None = None,
    news: Sequence[EventNote] = (),
    contrast: str | None = None,
    memories: Sequence[str] | None = None,
) -> TurnContext:
    """Everything the generator gets for one turn of ``bot`` in ``chat_id``.

    Args:
        history: the chat's cached history, oldest first (the last :data:`HISTORY_SIZE`
            are used; the bot's own among them are its memories).
        snapshot: the market now (the holdings' P&L sets the mood).
        seed: seed material of the process (mixed with ``turn_id`` for the generator).
        views: the bot's views now (:class:`~behavior_engine.stances.StanceBook`); None:
            the persona's stances as configured.
        news: recent world events, newest first (:meth:`~behavior_engine.events.EventBook.
            recent`).
        contrast: the agreement watch's line for this bot, if any
            (:mod:`behavior_engine.agreement`).
        memories: the memory layer's lines (:class:`~behavior_engine.recall.MemoryKeeper`);
            None: the bot's own last :data:`~behavior_engine.prompt_builder.MEMORY_ITEMS`
            texts in ``history``.
    """
    recent = list(history)[-HISTORY_SIZE:]
    pnl = holdings_pnl_pct(bot.holdings, snapshot)
    return TurnContext(
        turn_id=turn_id,
        bot_name=bot.name,
        bot_username=bot.username,
        profile=bot.persona,
        stances=views.stances if views is not None else tuple(bot.stances),
        holdings=tuple(bot.holdings),
        mood=mood_from_pnl(bot.persona.mood_baseline, pnl),
        pnl_pct=pnl,
        topic=topic,
        market=snapshot,
        history=tuple(to_line(i) for i in recent),
        memories=tuple(memories) if memories is not None
        else tuple(i.text for i in recent if i.bot_id == bot.id)[-MEMORY_ITEMS:],
        reply_to=reply_to,
        bot_id=bot.id,
        chat_id=chat_id,
        seed=zlib.crc32(f"{seed}:{turn_id}".encode()),
        news=tuple(notes_text(news, bot.persona.language)),
        news_topics=news[0].topics if news else (),
        event_id=news[0].id if news else None,
        view_changes=tuple(change_lines(views, snapshot.at, bot.persona.language))
        if views is not None else (),
        contrast=contrast,
    )

"""Asking a bot out of band (issue 16, item 8): ``botsim interview BOT "question"``.

The bot answers in persona, from its profile, stances, holdings, mood and its long-term
memory (:mod:`behavior_engine.recall`: recalled by the question), through the same prompt and
provider chain as a turn, but nothing is posted and nothing is stored: an operator can check
a persona before letting it loose, or ask why it holds a view.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from behavior_engine.context import to_line, turn_context
from behavior_engine.llm.chain import ProviderChain
from behavior_engine.market import MarketFeed
from behavior_engine.prompt_builder import build_request
from behavior_engine.reads import BotProfile, HistoryItem
from behavior_engine.recall import MemoryKeeper
from behavior_engine.topics import detect_topic
from behavior_engine.turn import Generation

#: Who asks, as the bot sees the question.
ASKER = "Operatör"


async def interview(bot: BotProfile, question: str, *, recent: Sequence[HistoryItem],
                    chain: ProviderChain, market: MarketFeed, now: datetime,
                    seed: int = 0, memory: MemoryKeeper | None = None) -> Generation:
    """The bot's answer to ``question``.

    Args:
        bot: the bot's profile (persona, stances, holdings).
        question: what the operator asks (1–4096 characters).
        recent: the bot's own recent messages, oldest first (its memories).
        chain: the provider chain (the offline generator last).
        market: the market feed (the holdings' P&L and so the mood).
        now: aware UTC time of the question.
        seed: seed material (the same question and seed: the same offline answer).
        memory: the long-term memory (:class:`~behavior_engine.recall.MemoryKeeper`, with
            the database: the bot's stream is refilled and recalled by the question); None:
            its own recent messages are its memories.

    Returns:
        The generation (text, provider, usage).

    Raises:
        ValueError: ``question`` is empty or longer than 4096 characters.
    """
    if not question.strip() or len(question) > 4096:
        raise ValueError("question must be 1-4096 characters")
    asked = HistoryItem(message_id=0, telegram_message_id=0, bot_id=None, speaker=ASKER,
                        speaker_username=None, is_human=True, text=question, created_at=now)
    topic = detect_topic(question) or max(bot.persona.topics, key=bot.persona.topics.__getitem__)
    memories = None
    if memory is not None:
        await memory.prepare(bot, 0, [], now)
        memories = memory.recall(bot, question, now)
    ctx = turn_context(bot, [*recent, asked], market.snapshot(now),
                       turn_id=f"interview-{uuid.uuid4()}", topic=topic, chat_id=0,
                       seed=seed, reply_to=to_line(asked), memories=memories)
    result = await chain.generate(build_request(ctx), order=ctx.profile.llm_providers)
    return result.generation

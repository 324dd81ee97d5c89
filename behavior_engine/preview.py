"""What a bot would be asked right now: the layered prompt of a turn, without the turn.

:func:`preview_prompt` assembles a :class:`~behavior_engine.turn.TurnContext` the way
``Worker._context`` does (the cached bot profile, the chat's last ``HISTORY_SIZE`` messages,
the market snapshot now, the holdings' P&L and the mood it gives, the bot's own recent
messages as memories) and runs it through the worker's own
:func:`~behavior_engine.prompt_builder.build_request`. Nothing is generated, sent or stored.

The previewed turn is a spontaneous one (no reply target); its topic is drawn like the
scheduler's (chat weight × bot weight) from a generator seeded by ``seed``, so the same
seed over the same data gives the same preview.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from backend.stores import chats as chat_store
from behavior_engine.context import turn_context
from behavior_engine.market import MarketFeed
from behavior_engine.prompt_builder import (
    build_request,
    count_tokens,
    history_layer,
    instruction,
    memory_layer,
    mood_layer,
    persona_core,
    stances_and_holdings,
)
from behavior_engine.reads import CachedReads
from behavior_engine.scheduler import draw_topic

#: The turn id of a preview (also seed material, as a real turn id is).
PREVIEW_TURN_ID = "preview"

_LAYERS = (
    ("persona_core", persona_core),
    ("stances_and_holdings", stances_and_holdings),
    ("mood", mood_layer),
    ("memory", memory_layer),
    ("history", history_layer),
    ("instruction", instruction),
)


async def preview_prompt(
    reads: CachedReads,
    *,
    bot_id: int,
    chat_id: int,
    market: MarketFeed,
    now: datetime,
    seed: int = 0,
) -> dict[str, Any]:
    """Return the prompt ``bot_id`` would get for a spontaneous turn in ``chat_id`` now.

    Args:
        reads: the cached reads (the same the worker uses).
        bot_id / chat_id: our ids (``bots.id``, ``chats.id``); the chat may be disabled.
        market: the market feed; it is advanced to ``now`` (time never goes back).
        now: aware datetime of the preview.
        seed: seeds the topic draw and the context's seed.

    Returns:
        ``{"layers": [{"name": str, "text": str}, ...], "messages": [{"role", "content"},
        ...], "tokens_estimate": int, "topic": str, "mood": float, "pnl_pct": float}``:
        the six layers in prompt order (``persona_core``, ``stances_and_holdings``,
        ``mood``, ``memory``, ``history``, ``instruction``; an empty memory layer is listed
        with empty text), the messages exactly as ``build_request`` makes them, and the
        estimated prompt tokens (:func:`~behavior_engine.prompt_builder.count_tokens` of
        every message's content).

    Raises:
        NotFound: no bot ``bot_id`` or no chat ``chat_id``.
        ValueError: ``now`` is naive.
    """
    async with reads.sessionmaker() as session:
        chat = await chat_store.get_chat(session, chat_id=chat_id)
        chat_topics = dict(chat.topics.weights)
    bot = await reads.bot(bot_id)
    topic = draw_topic(chat_topics, bot.persona.topics, random.Random(seed))
    ctx = turn_context(bot, await reads.history(chat_id), market.snapshot(now),
                       turn_id=PREVIEW_TURN_ID, topic=topic, chat_id=chat_id, seed=seed)
    mood, pnl = ctx.mood, ctx.pnl_pct
    request = build_request(ctx)
    messages = [dict(m) for m in request.messages]
    return {
        "layers": [{"name": name, "text": layer(ctx)} for name, layer in _LAYERS],
        "messages": messages,
        "tokens_estimate": sum(count_tokens(m["content"]) for m in messages),
        "topic": topic,
        "mood": mood,
        "pnl_pct": pnl,
    }

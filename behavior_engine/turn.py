"""The records that move through the pipeline: Turn → GenerationRequest → Generation → Outcome.

A :class:`Turn` is the scheduler's decision (this bot speaks in this chat, maybe replying to
that message). The prompt builder turns it into a :class:`GenerationRequest` (chat messages
for an LLM plus the structured :class:`TurnContext` the offline generator reads). A provider
answers with a :class:`Generation`. The worker records an :class:`Outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from backend.schemas import Holding, PersonaProfile, Stance


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One message of a chat as the engine sees it.

    Attributes:
        telegram_message_id: Telegram's id of the message in its chat.
        speaker: display name of the sender.
        speaker_username: Telegram username of the sender, if any (bots always have one).
        is_human: True for people, False for bots.
        text: the message text.
        bot_id: our bot id when one of our bots sent it, else None.
        created_at: aware UTC time the message was sent.
        reply_to: Telegram's id of the message it replies to, if any (the scheduler reads
            answered messages and reply-chain depth from it).
        thread_id: the forum topic it is in, if any (an answer goes into the same topic).
        mentions: usernames it mentions, from Telegram's entities (lowercase, no ``@``).
    """

    telegram_message_id: int
    speaker: str
    speaker_username: str | None
    is_human: bool
    text: str
    bot_id: int | None = None
    created_at: datetime | None = None
    reply_to: int | None = None
    thread_id: int | None = None
    mentions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """Prices at one moment.

    Attributes:
        at: aware UTC time of the snapshot.
        prices: symbol → last price (quote currency of the symbol).
        change_pct: symbol → change since the session open, in percent (+1.5 = up 1.5 %).
    """

    at: datetime
    prices: dict[str, float]
    change_pct: dict[str, float]


@dataclass(frozen=True, slots=True)
class Turn:
    """The scheduler's decision that one bot speaks in one chat.

    Attributes:
        turn_id: a UUID string, given before any generation (exactly-once bookkeeping):
            random (UUID4) for a spontaneous turn, derived from the human message and the
            bot (UUID5, :func:`behavior_engine.scheduler.reply_turn_id`) for a reply to a
            human, so that reply is acted on once however often it is requested.
        chat_id: our chat id (``chats.id``).
        telegram_chat_id: Telegram's chat id.
        bot_id: our bot id (``bots.id``).
        topic: topic id the turn is about.
        reply_to: the message this turn answers, or None for a fresh message.
        reason: why the turn was chosen: ``human`` (a human waits), ``mention``, ``reply``
            (answering another bot), or ``spontaneous``.
        decided_at: aware UTC time of the decision.
        reply_message_id: our ``messages.id`` of the human message a reply answers.
        not_before: aware UTC due time: the pipeline does not send before it (sends follow
            the chat's rhythm, not the worker's tick grid); None: send when ready.
        traceparent: the W3C trace context of the human message a reply answers (the
            listener's dispatch span, carried by the reply stream): the turn's span is its
            child; None: the turn starts a trace of its own.
    """

    turn_id: str
    chat_id: int
    telegram_chat_id: int
    bot_id: int
    topic: str
    reply_to: ChatLine | None
    reason: Literal["human", "mention", "reply", "spontaneous"]
    decided_at: datetime
    reply_message_id: int | None = None
    not_before: datetime | None = None
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class TurnContext:
    """Everything a generator may use to write one message, already resolved.

    Attributes:
        turn_id: id of the turn (also the offline generator's seed material).
        bot_name: display name of the speaking bot.
        bot_username: its Telegram username.
        profile: the persona's stable profile (language, style, topics...).
        stances: the persona's views.
        holdings: the persona's positions.
        mood: current mood, -1.0 (gloomy) – 1.0 (euphoric).
        pnl_pct: the holdings' profit or loss against cost, percent.
        topic: topic id of the turn.
        market: the market now.
        history: recent chat messages, oldest first.
        reply_to: the message to answer, or None.
        seed: seed for deterministic generation.
        bot_id / chat_id: our ids of the bot and the chat (for the cost ledger).
        memories: things the bot said or learned earlier, oldest first (the memory layer).
        news: world events of the last half hour as prompt lines, newest first
            (:func:`behavior_engine.events.notes_text`).
        news_topics: the topics of ``news``' newest event (the offline generator reacts to
            it when the turn is about one of them).
        event_id: the newest event of ``news``, if any.
        view_changes: the bot's recent changes of view, each with its cause, as prompt lines
            (:func:`behavior_engine.stances.change_lines`).
        contrast: a prompt line asking the bot to say where it disagrees, when the chat
            drifts into agreement (:mod:`behavior_engine.agreement`); None otherwise.
    """

    turn_id: str
    bot_name: str
    bot_username: str
    profile: PersonaProfile
    stances: tuple[Stance, ...]
    holdings: tuple[Holding, ...]
    mood: float
    pnl_pct: float
    topic: str
    market: MarketSnapshot
    history: tuple[ChatLine, ...]
    reply_to: ChatLine | None
    seed: int
    bot_id: int | None = None
    chat_id: int | None = None
    memories: tuple[str, ...] = ()
    news: tuple[str, ...] = ()
    news_topics: tuple[str, ...] = ()
    event_id: int | None = None
    view_changes: tuple[str, ...] = ()
    contrast: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a provider gets.

    Attributes:
        messages: OpenAI-style chat messages ``[{"role": ..., "content": ...}]``, stable
            persona layers first (provider prefix caches hit on them).
        context: the structured context (the offline generator writes from it).
        max_chars: the longest text allowed (Telegram: 4096 characters per message).
    """

    messages: list[dict[str, str]]
    context: TurnContext
    max_chars: int = 4096


@dataclass(frozen=True, slots=True)
class Generation:
    """What a provider answers.

    Attributes:
        text: the message text, 1–``max_chars`` characters.
        provider: provider name (``offline``, ``groq``, ``openai``, ``gemini``...).
        model: model name, or None.
        prompt_tokens / completion_tokens / cached_tokens: usage as reported (estimated for
            ``offline``).
        latency_ms: wall time of the call in milliseconds.
    """

    text: str
    provider: str
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    latency_ms: float = 0.0


@dataclass(slots=True)
class Outcome:
    """How a turn ended.

    Attributes:
        turn: the turn.
        status: ``sent`` (Telegram accepted it, row stored), ``rate_limited`` (429, bot waits),
            ``failed`` (an error answer; nothing was posted), ``skipped`` (guard or cap, or
            the lease was lost before the send), ``unknown`` (the request may have reached
            Telegram and no answer came: never resent), ``duplicate`` (this turn id was
            already acted on: not sent again).
        telegram_message_id: Telegram's id of the sent message, if sent.
        error: a short description of what went wrong, if anything.
        retry_after: seconds to wait, for ``rate_limited``.
    """

    turn: Turn
    status: Literal["sent", "rate_limited", "failed", "skipped", "unknown", "duplicate"]
    telegram_message_id: int | None = None
    error: str | None = None
    retry_after: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

"""Typed models for every JSON column and every persona file.

The prototype stored JSON as strings and read it back as dicts (``'str' object has no
attribute 'get'``). Here every JSON value passes through one of these pydantic models on the
way into the database and on the way out (see ``backend.db.types.PydanticJSON``).

Topic ids are lowercase slugs. The demo world knows ``usdtry``, ``bist100``, ``btc``, ``gold``,
``rates`` and ``inflation``; any other slug is accepted and treated as a free topic.
Market symbols (holdings) are the uppercase ids of ``behavior_engine.market``: ``USDTRY``,
``BIST100``, ``BTC``, ``GOLD``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

TopicId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,31}$")]
#: The topic ids the engine's detector knows (``behavior_engine.topics.TOPIC_PATTERNS`` has
#: one pattern for each): a persona's expertise may name only these.
KNOWN_TOPICS: tuple[str, ...] = ("usdtry", "bist100", "btc", "gold", "rates", "inflation")
Symbol = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9]{1,15}$")]

#: Telegram bot usernames: 5–32 characters of ``A-Za-z0-9_``, ending in "bot"
#: (core.telegram.org/bots/features#botfather).
M = TypeVar("M")

BOT_USERNAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{1,28}[Bb][Oo][Tt]$")


def _one_each(items: list[M], key: str, what: str) -> list[M]:
    """Refuse two items with the same ``key`` attribute (one stance per topic...)."""
    seen: set[str] = set()
    for item in items:
        value = getattr(item, key)
        if value in seen:
            raise ValueError(f"two {what} {value!r}")
        seen.add(value)
    return items


def _unique_topics(stances: list[Stance]) -> list[Stance]:
    return _one_each(stances, "topic", "stances on topic")


def _unique_symbols(holdings: list[Holding]) -> list[Holding]:
    return _one_each(holdings, "symbol", "holdings of symbol")


def _positive_weights(weights: dict[str, float]) -> dict[str, float]:
    for topic, w in weights.items():
        if not w > 0:
            raise ValueError(f"weight of topic {topic!r} must be > 0, got {w}")
    return weights


def _known_expertise(expertise: dict[str, float]) -> dict[str, float]:
    """Refuse an expertise topic the detector does not know, or a level outside 0..1."""
    for topic, level in expertise.items():
        if topic not in KNOWN_TOPICS:
            raise ValueError(f"expertise topic {topic!r} is not a known topic "
                             f"(known: {', '.join(KNOWN_TOPICS)})")
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"expertise in {topic!r} must be within 0..1, got {level}")
    return expertise


def refuse_nul(value: M) -> M:
    """Return ``value`` unless a string in it (nested in lists, tuples and dict keys or values
    included) holds a NUL character, which PostgreSQL text cannot store (asyncpg fails on it).

    Raises:
        ValueError: naming the character (the string itself is not echoed).
    """
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain a NUL character (\\x00)")
    elif isinstance(value, dict):
        for k, v in value.items():
            refuse_nul(k)
            refuse_nul(v)
    elif isinstance(value, list | tuple):
        for v in value:
            refuse_nul(v)
    return value


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Strict(_Record):
    """What people write (persona files, the panel, settings): no NUL in any string."""

    _no_nul = field_validator("*")(classmethod(lambda cls, v: refuse_nul(v)))


class Style(_Strict):
    """How a persona writes.

    Attributes:
        formality: ``casual`` (slang, lowercase), ``neutral`` or ``formal`` (full sentences).
        emoji_rate: expected emojis per message, 0.0–3.0.
        length: preferred message length: ``short`` (≤ 8 words), ``medium`` (8–20),
            ``long`` (20–45).
    """

    formality: Literal["casual", "neutral", "formal"]
    emoji_rate: float = Field(ge=0.0, le=3.0)
    length: Literal["short", "medium", "long"]


class Stance(_Strict):
    """A persona's view on one topic.

    Attributes:
        topic: topic id (``usdtry``, ``btc``, ...).
        view: ``bullish`` (goes up / good), ``bearish`` or ``neutral``.
        conviction: 0.0 (open to persuasion) – 1.0 (immovable).
        reason: one sentence in the persona's language, used in prompts and templates.
    """

    topic: TopicId
    view: Literal["bullish", "bearish", "neutral"]
    conviction: float = Field(ge=0.0, le=1.0)
    reason: str = Field(min_length=1, max_length=300)


class Holding(_Strict):
    """A position in a market symbol.

    Attributes:
        symbol: market symbol (``USDTRY``, ``BIST100``, ``BTC``, ``GOLD``).
        quantity: units held, > 0.
        avg_cost: average cost per unit in the symbol's quote currency, > 0.
    """

    symbol: Symbol
    quantity: float = Field(gt=0)
    avg_cost: float = Field(gt=0)


class TopicWeights(_Strict):
    """Topic id → relative weight (> 0); at least one topic."""

    weights: dict[TopicId, float] = Field(min_length=1)

    _positive = field_validator("weights")(classmethod(lambda cls, v: _positive_weights(v)))


class PersonaProfile(_Strict):
    """The stable part of a persona, stored in ``bots.persona``.

    Attributes:
        role: short role label (``long-term investor``, ``scalper``, ...).
        language: ISO 639-1 code of the language the persona writes in (``tr`` or ``en``).
        bio: persona text: who they are, how they think (1–4000 characters).
        style: how they write.
        topics: topic id → weight: what they like to talk about.
        talkativeness: relative share of the chat's messages (1.0 = average), 0.05–10.
        mood_baseline: resting mood, -1.0 (gloomy) – 1.0 (euphoric).
        llm_providers: this bot's own provider order (names from the settings), or None
            for the global order.
        expertise: topic id (one of :data:`KNOWN_TOPICS`) → level 0..1: what the persona
            knows well enough to be the one who answers a human's question on it (the
            scheduler's ``choose_repliers``); empty: no topic of expertise.
        typing_cpm: how fast this persona types, characters per minute, 60–1500, or None
            for the settings' ``typing_cpm_default`` (``behavior_engine.typist``).
    """

    role: str = Field(min_length=1, max_length=80)
    language: Literal["tr", "en"]
    bio: str = Field(min_length=1, max_length=4000)
    style: Style
    topics: dict[TopicId, float] = Field(min_length=1)
    talkativeness: float = Field(default=1.0, ge=0.05, le=10.0)
    mood_baseline: float = Field(default=0.0, ge=-1.0, le=1.0)
    llm_providers: list[str] | None = None
    expertise: dict[TopicId, float] = Field(default_factory=dict)
    typing_cpm: float | None = Field(default=None, ge=60.0, le=1500.0)

    _positive = field_validator("topics")(classmethod(lambda cls, v: _positive_weights(v)))
    _expertise = field_validator("expertise")(classmethod(lambda cls, v: _known_expertise(v)))


class StanceList(_Strict):
    """The ``bots.stances`` column: at most one stance per topic."""

    items: list[Stance] = Field(default_factory=list)

    _unique = field_validator("items")(classmethod(lambda cls, v: _unique_topics(v)))


class HoldingList(_Strict):
    """The ``bots.holdings`` column: at most one holding per symbol."""

    items: list[Holding] = Field(default_factory=list)

    _unique = field_validator("items")(classmethod(lambda cls, v: _unique_symbols(v)))


class Persona(PersonaProfile):
    """A whole persona as written in ``bots/personas/*.yaml``: the profile fields (see
    :class:`PersonaProfile`, flattened in the file) plus these.

    Attributes:
        name: display name (``Mehmet Yatırımcı``), 1–64 characters.
        username: Telegram username, must end in "bot" (Telegram's rule for bot accounts).
        stances: views on topics, one per topic.
        holdings: positions, one per symbol.
    """

    name: str = Field(min_length=1, max_length=64)
    username: str
    stances: list[Stance] = Field(default_factory=list)
    holdings: list[Holding] = Field(default_factory=list)

    _unique_stances = field_validator("stances")(classmethod(lambda cls, v: _unique_topics(v)))
    _unique_holdings = field_validator("holdings")(
        classmethod(lambda cls, v: _unique_symbols(v))
    )

    @field_validator("username")
    @classmethod
    def _bot_username(cls, v: str) -> str:
        if not BOT_USERNAME_RE.fullmatch(v):
            raise ValueError(
                "must be 5-32 characters of A-Za-z0-9_, start with a letter and end in 'bot'"
                " (Telegram's rule for bot usernames)"
            )
        return v

    def profile(self) -> PersonaProfile:
        """Return the stable profile part stored in ``bots.persona``."""
        return PersonaProfile.model_validate(
            self.model_dump(include=set(PersonaProfile.model_fields))
        )


class HourlyLimit(_Strict):
    """Messages per bot per hour, drawn per bot between ``min`` and ``max`` (inclusive)."""

    min: int = Field(ge=0, le=1200)
    max: int = Field(ge=0, le=1200)

    @model_validator(mode="after")
    def _ordered(self) -> HourlyLimit:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class PrimeHours(_Strict):
    """Hours of the day (local to ``timezone``) when bots talk ``boost`` times more."""

    hours: list[int] = Field(default_factory=lambda: [9, 10, 12, 13, 18, 19, 20, 21])
    boost: float = Field(default=1.5, ge=1.0, le=10.0)
    timezone: str = "Europe/Istanbul"

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: list[int]) -> list[int]:
        bad = [h for h in v if not 0 <= h <= 23]
        if bad:
            raise ValueError(f"hours must be 0-23, got {bad}")
        return sorted(set(v))

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v


class SimulationSettings(_Strict):
    """Operator settings stored in the ``settings`` table, one row per field.

    Attributes:
        simulation_active: when False no bot starts a turn (human messages are still stored).
        bot_hourly_msg_limit: per-bot budget of messages per hour.
        max_msgs_per_min: cap on messages per chat per minute, all bots together, 1–20
            (Telegram allows a bot 20 messages/min per group; core.telegram.org/bots/faq).
        prime_hours: hours with more activity and their boost.
        scale_factor: multiplies every bot's budget (0.01–100), for quick tuning.
        second_answer_p: probability that a human message asking the group (see
            ``behavior_engine.scheduler.asks_group``) gets a second answer, from another bot
            (0–1; REALISM.md: ≤ 15 % of messages are answered by ≥ 2 others). Default 0:
            one answer per human message; 0.2 gives a group question a second answer one
            time in five.
        expertise_weight: how strongly expertise picks the bot answering a human: a bot's
            weight is talkativeness × exp(expertise_weight × its expertise in the message's
            topic) (0–20; 0: talkativeness alone).
        thread_max_depth: replies in a chain after which a spontaneous turn no longer answers
            it: a message d replies deep is picked as a reply target with weight
            1 − d / thread_max_depth (1–20).
        reply_p: share of spontaneous turns that reply to one of the chat's last 8 messages
            (0–1; the rest start a fresh line). 0.45 puts "messages nobody answers" near the
            human 50 % (REALISM.md; docs/realism.md, "Who answers").
        reading_wpm: words per minute a bot reads the message it replies to, 60–1000
            (adults read about 238 wpm; Brysbaert 2019; ``behavior_engine.typist``).
        reading_cap_s: the longest reading pause before a reply, seconds, 0–30 (0: none).
        typing_cpm_default: characters per minute a bot types when its persona sets no
            ``typing_cpm``, 60–1500 (keyboard typists average ~260; Dhakal et al. 2018).
        typing_jitter: half-width of the uniform factor around 1 that varies each typing
            time, 0–0.9.
        typing_cap_s: the bound of the typing time ("typing…" shown, generation included;
            approached softly, see ``behavior_engine.typist``), seconds, 0–60 (0: none).
        writing_lead_s: time allowed to write a slot's text, seconds, 0–30: a slot's turn is
            decided ``reading_cap_s + typing_cap_s + writing_lead_s`` ahead of its due time,
            and one bot's consecutive slots are that far apart (``behavior_engine.rhythm``;
            the offline writer takes milliseconds, a provider about a second).
        budget_use: share of the chats' summed hourly budgets the spontaneous rhythm spends
            on average (0.05–1); budgets are ceilings, not rates to spend evenly.
        burst_mean_msgs: mean messages of a burst (geometric, ≥ 1), 1–20.
        burst_gap_median_s: median gap inside a burst (log-normal), seconds, 0.2–120 (one
            bot's own consecutive lines are a slot lead apart whatever this is).
        lull_sigma: σ of the log-normal lulls between bursts, 0.3–3 (heavier tail above 1).
        human_reply_reserve: share of ``max_msgs_per_min`` chatter may never use, kept for
            answers to humans, 0–0.9.
        chatter_pacing: spread chatter over the minute (a token bucket holding a third of
            the chatter cap) instead of spending the cap in one burst.
        bot_daily_profile: each bot follows its own 24-hour activity curve (a morning or an
            evening person) on top of prime hours.
        quiet_boost: weight multiplier of a bot silent for the chat's last 10 messages
            (1.0 = off; > 1 evens out participation), 1–10.
        budget_evening: weight a speaker by its budget left (evens out participation).
    """

    simulation_active: bool = True
    bot_hourly_msg_limit: HourlyLimit = HourlyLimit(min=6, max=12)
    max_msgs_per_min: int = Field(default=6, ge=1, le=20)
    prime_hours: PrimeHours = PrimeHours()
    scale_factor: float = Field(default=1.0, ge=0.01, le=100.0)
    # -- who answers (issue 14) --
    second_answer_p: float = Field(default=0.0, ge=0.0, le=1.0)
    expertise_weight: float = Field(default=4.0, ge=0.0, le=20.0)
    thread_max_depth: int = Field(default=3, ge=1, le=20)
    reply_p: float = Field(default=0.45, ge=0.0, le=1.0)
    # -- voice: reading and typing time (issue 14) --
    reading_wpm: float = Field(default=250.0, ge=60.0, le=1000.0)
    reading_cap_s: float = Field(default=3.0, ge=0.0, le=30.0)
    typing_cpm_default: float = Field(default=300.0, ge=60.0, le=1500.0)
    typing_jitter: float = Field(default=0.3, ge=0.0, le=0.9)
    typing_cap_s: float = Field(default=10.0, ge=0.0, le=60.0)
    writing_lead_s: float = Field(default=1.0, ge=0.0, le=30.0)
    # -- timing, pacing and participation (issue 14) --
    budget_use: float = Field(default=0.5, ge=0.05, le=1.0)
    burst_mean_msgs: float = Field(default=5.0, ge=1.0, le=20.0)
    burst_gap_median_s: float = Field(default=10.0, ge=0.2, le=120.0)
    lull_sigma: float = Field(default=1.8, ge=0.3, le=3.0)
    human_reply_reserve: float = Field(default=0.3, ge=0.0, le=0.9)
    chatter_pacing: bool = True
    bot_daily_profile: bool = True
    quiet_boost: float = Field(default=1.0, ge=1.0, le=10.0)
    budget_evening: bool = False


class MessageMeta(_Record):  # written per message by the engine: no text check
    """The ``messages.metadata`` column.

    Attributes:
        provider: which generator wrote a bot message (``offline``, ``groq``, ...).
        model: the provider's model name, if any.
        topic: topic id the turn was about.
        sender_is_bot: True when the sender is a bot (ours or another).
        sender_username: Telegram username of the sender, if it has one.
        kind: ``text`` or the kind of a non-text message (``photo``, ``sticker``, ...).
        update_id: the webhook update that brought a received message.
        edited: True if this row was updated by an ``edited_message`` update.
        sent_at: when Telegram's answer to the send arrived (our clock, UTC, to the
            microsecond; the row's ``created_at`` is Telegram's date, to the second).
        latency_ms: the turn's time from its decision to Telegram's answer, ms.
        llm_ms: the part of it spent generating the text (the provider chain), ms.
        wait_ms: the part of it spent waiting for a Telegram limit (our limiter), ms.
        read_ms: the reading pause before a reply (``behavior_engine.typist``), ms.
        typing_ms: how long "typing…" showed before the send: generation plus the typing
            pause after it, ms.
        due_ms: the wait for the turn's due time in the chat's rhythm (a slot's turn is
            written ahead of it, issue 14), ms.
        pause_ms: typing after the text was ready (``typing_ms`` less what showed while it
            was generated), ms.
        thread_id: the forum topic (``message_thread_id``) the message is in, if any.
        mentions: usernames it mentions (lowercase, no ``@``; ``id:<user id>`` for a person
            without one), from Telegram's entities (``bots.updates.TgMessage.mentions``).
        forwarded_from: the forwarded message's origin (a person's or chat's name).
        sender_chat: the message was sent on behalf of a chat (an anonymous admin, a
            channel): True; the sender id is then the chat's.
        views: a bot message's persona views when it was written, topic → ``bullish`` /
            ``bearish`` / ``neutral`` (``behavior_engine.stances``: what a later message is
            checked against, and how flips are told from changes of view).
        event_id: the world event the message reacted to, if any.
    """

    provider: str | None = None
    model: str | None = None
    topic: str | None = None
    sender_is_bot: bool = False
    sender_username: str | None = None
    kind: str = "text"
    update_id: int | None = None
    edited: bool = False
    sent_at: datetime | None = None
    latency_ms: float | None = None
    llm_ms: float | None = None
    wait_ms: float | None = None
    read_ms: float | None = None
    typing_ms: float | None = None
    due_ms: float | None = None
    pause_ms: float | None = None
    thread_id: int | None = None
    mentions: tuple[str, ...] = ()
    forwarded_from: str | None = None
    sender_chat: bool = False
    views: dict[str, str] | None = None
    event_id: int | None = None


class ModelPrice(_Strict):
    """USD per million tokens of one model (the provider's published price list).

    Attributes:
        input: prompt tokens not served from the provider's prefix cache.
        cached_input: prompt tokens served from the cache (None: same as ``input``).
        output: completion tokens.
    """

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float:
        """USD of one call: uncached × input + cached × cached_input + completion × output."""
        cached = min(cached_tokens, prompt_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return (
            (prompt_tokens - cached) * self.input
            + cached * cached_price
            + completion_tokens * self.output
        ) / 1_000_000


#: Published list prices (USD per million tokens) as of 2025 for the default models of each
#: provider; override them with BOTSIM_LLM_PRICES. Sources: groq.com/pricing,
#: openai.com/api/pricing, ai.google.dev/gemini-api/docs/pricing.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "llama-3.3-70b-versatile": ModelPrice(input=0.59, output=0.79),
    "llama-3.1-8b-instant": ModelPrice(input=0.05, output=0.08),
    "gpt-4o-mini": ModelPrice(input=0.15, cached_input=0.075, output=0.60),
    "gpt-4.1-mini": ModelPrice(input=0.40, cached_input=0.10, output=1.60),
    "gemini-2.0-flash": ModelPrice(input=0.10, cached_input=0.025, output=0.40),
    "gemini-2.5-flash": ModelPrice(input=0.30, cached_input=0.075, output=2.50),
}


class ProviderSettings(_Strict):
    """One LLM provider of the chain (an item of ``BOTSIM_LLM_PROVIDERS``, a JSON list).

    Attributes:
        name: the provider's name in the chain, ledger and metrics (``groq``, ``openai-2``).
        kind: which SDK speaks to it: ``groq``, ``openai``, ``gemini``, or
            ``openai_compatible`` (Ollama, vLLM, a LiteLLM proxy: any OpenAI-style server).
        model: the model name sent to the provider.
        api_key: the key (required except for ``openai_compatible``); never logged.
        base_url: the API base URL (None: the SDK's default host).
        timeout_s: timeout of one attempt; deadline_s: all attempts together (None: timeout).
        max_attempts / max_retry_after_s: retries (see ``behavior_engine.llm.chain``).
        requests_per_min / tokens_per_min / tokens_per_day: budgets (None: no limit).
        max_tokens: completion tokens asked for.
        breaker_failures / breaker_cooldown_s: the circuit breaker.
    """

    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    kind: Literal["groq", "openai", "gemini", "openai_compatible"]
    model: str = Field(min_length=1, max_length=128)
    api_key: SecretStr | None = None
    base_url: str | None = None
    timeout_s: float = Field(default=30.0, gt=0, le=300)
    deadline_s: float | None = Field(default=None, gt=0, le=600)
    max_attempts: int = Field(default=3, ge=1, le=10)
    max_retry_after_s: float = Field(default=5.0, ge=0, le=300)
    requests_per_min: int | None = Field(default=None, ge=1)
    tokens_per_min: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)
    max_tokens: int = Field(default=300, ge=1, le=8192)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _key_needed(self) -> ProviderSettings:
        if self.kind != "openai_compatible" and self.api_key is None:
            raise ValueError(f"provider {self.name!r} ({self.kind}) needs an api_key")
        return self


#: The largest price shock an event may carry, percent either way (a limit-down day on Borsa
#: Istanbul is -10 %; ±50 % leaves room for a crypto crash without allowing nonsense).
MAX_SHOCK_PCT = 50.0


class WorldEventIn(_Strict):
    """A world event as the operator injects it (panel, API, CLI; issue 16, item 5).

    The event is global: every chat's market feed, moods, stances and topics react.

    Attributes:
        headline: what happened, in the words the bots quote ("TCMB faizi 250 baz puan
            artırdı"), 3–280 characters.
        shocks: symbol → price move in percent (``{"BIST100": -3.0}``), each within
            ±:data:`MAX_SHOCK_PCT` and not 0; applied as a step in the feed at ``at``.
        views: topic → the way the event pushes views on it (``bullish`` / ``bearish``):
            personas whose view differs move one step towards it (unless immovable).
        topics: topic ids the event is about (the chat turns to them); empty: taken from
            ``shocks``' symbols, ``views`` and the headline's keywords.
        at: when it happens, aware UTC; None: now. A future time schedules it.
    """

    headline: str = Field(min_length=3, max_length=280)
    shocks: dict[Symbol, float] = Field(default_factory=dict, max_length=16)
    views: dict[TopicId, Literal["bullish", "bearish"]] = Field(default_factory=dict,
                                                                 max_length=16)
    topics: list[TopicId] = Field(default_factory=list, max_length=16)
    at: datetime | None = None

    @field_validator("shocks")
    @classmethod
    def _shock_sizes(cls, v: dict[str, float]) -> dict[str, float]:
        for sym, pct in v.items():
            if not (-MAX_SHOCK_PCT <= pct <= MAX_SHOCK_PCT) or pct == 0:
                raise ValueError(f"shock of {sym!r} must be a non-zero percent within "
                                 f"±{MAX_SHOCK_PCT:g}, got {pct}")
        return v

    @field_validator("views", "topics")
    @classmethod
    def _known_topics(cls, v: Any) -> Any:
        for topic in v:
            if topic not in KNOWN_TOPICS:
                raise ValueError(f"topic {topic!r} is not a known topic "
                                 f"(known: {', '.join(KNOWN_TOPICS)})")
        return v

    @field_validator("at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and (v.tzinfo is None or v.utcoffset() is None):
            raise ValueError("at must carry a timezone (UTC), e.g. 2026-12-05T10:00:00Z")
        return v


class WorldEvent(WorldEventIn):
    """A stored world event: :class:`WorldEventIn` with its id, its time set, who created
    it and when."""

    id: int
    at: datetime
    created_by: str
    created_at: datetime

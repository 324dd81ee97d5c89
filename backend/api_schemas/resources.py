"""Models of the resource routes: bots and personas, chats and their members, messages,
pages of a list, settings, the prompt preview, an interview (see
:mod:`backend.api_schemas`)."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from backend.crypto import TokenCipher, mask_token
from backend.db.models import Bot, Chat, Message
from backend.errors import ValidationFailed
from backend.schemas import (
    BOT_USERNAME_RE,
    Holding,
    HourlyLimit,
    Persona,
    PersonaProfile,
    PrimeHours,
    SimulationSettings,
    Stance,
    Style,
    TopicId,
    refuse_nul,
)

#: A Bot API token: the bot's numeric id, a colon, 30–64 characters of urlsafe base64
#: (core.telegram.org/bots/api#authorizing-your-bot; BotFather issues 35 today).
TOKEN_RE = re.compile(r"^\d{5,16}:[A-Za-z0-9_-]{30,64}$")

T = TypeVar("T")
R = TypeVar("R", bound="_HasId")

#: The roles of a user: an admin changes things, a viewer reads.
Role = Literal["admin", "viewer"]


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field, reason)`` per error of ``exc``, the field as a dotted path (``"body"`` for
    an error of the whole object); never the submitted value."""
    return [(".".join(str(p) for p in e["loc"]) or "body", e["msg"]) for e in exc.errors()]


def _check_token(token: SecretStr | None) -> SecretStr | None:
    if token is not None and not TOKEN_RE.fullmatch(token.get_secret_value()):
        raise ValueError(
            "not a Bot API token: expected '<5-16 digit bot id>:<30-64 characters of"
            " A-Za-z0-9_->'"
        )
    return token


def _refuse_nulls(model: BaseModel, nullable: frozenset[str] = frozenset()) -> None:
    nulls = sorted(
        k for k in model.model_fields_set if getattr(model, k) is None and k not in nullable
    )
    if nulls:
        raise ValueError(f"null is not a value for {', '.join(nulls)}: leave the field out")


class InputModel(BaseModel):
    """Base of every request body: unknown fields and NUL characters in any string are
    refused (422 naming the field; PostgreSQL text cannot hold NUL)."""

    model_config = ConfigDict(extra="forbid")

    _no_nul = field_validator("*")(classmethod(lambda cls, v: refuse_nul(v)))


class _Input(InputModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class _Output(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- bots -------------------------------------------------------------------------------


class BotCreate(Persona):
    """Body of "create a bot": a whole persona (see :class:`~backend.schemas.Persona`, the
    same fields as a persona file) plus its token.

    Attributes:
        token: the Bot API token from BotFather, matching :data:`TOKEN_RE`. Write-only: kept
            as a ``SecretStr`` (hidden in ``repr`` and dumps), never in an output model.

    Raises (on validation):
        pydantic.ValidationError: an unknown field, a token of the wrong form (loc
            ``("token",)``), or any persona field the persona model refuses. The error
            text never contains the submitted values.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    token: SecretStr

    _token = field_validator("token")(classmethod(lambda cls, v: _check_token(v)))

    def persona(self) -> Persona:
        """The persona part (everything but the token)."""
        return Persona.model_validate(self.model_dump(exclude={"token"}))

    def token_value(self) -> str:
        """The plain token, to hand to the store that encrypts it."""
        return self.token.get_secret_value()


class BotUpdate(_Input):
    """Body of "edit a bot": every field optional; only the fields sent change.

    The persona fields have the types and bounds of :class:`~backend.schemas.Persona`;
    :meth:`merged` validates the result as a whole persona. ``llm_providers`` may be sent
    as null (back to the global provider order), and so may ``typing_cpm`` (back to the
    settings' default); null is refused for every other field.

    Attributes:
        enabled: whether the bot takes turns.
        token: a new Bot API token (write-only, as in :class:`BotCreate`).
        mood: the mood now, -1.0 – 1.0.
        name, username, role, language, bio, style, topics, talkativeness, mood_baseline,
        llm_providers, typing_cpm, stances, holdings, expertise: as in
            :class:`~backend.schemas.Persona`.
    """

    enabled: bool | None = None
    token: SecretStr | None = None
    mood: float | None = Field(default=None, ge=-1.0, le=1.0)
    name: str | None = Field(default=None, min_length=1, max_length=64)
    username: str | None = None
    role: str | None = Field(default=None, min_length=1, max_length=80)
    language: Literal["tr", "en"] | None = None
    bio: str | None = Field(default=None, min_length=1, max_length=4000)
    style: Style | None = None
    topics: dict[TopicId, float] | None = Field(default=None, min_length=1)
    talkativeness: float | None = Field(default=None, ge=0.05, le=10.0)
    mood_baseline: float | None = Field(default=None, ge=-1.0, le=1.0)
    llm_providers: list[str] | None = None
    typing_cpm: float | None = Field(default=None, ge=60.0, le=1500.0)
    stances: list[Stance] | None = None
    holdings: list[Holding] | None = None
    expertise: dict[TopicId, float] | None = None  # who answers (issue 14)

    _token = field_validator("token")(classmethod(lambda cls, v: _check_token(v)))

    @field_validator("username")
    @classmethod
    def _bot_username(cls, v: str | None) -> str | None:
        if v is not None and not BOT_USERNAME_RE.fullmatch(v):
            raise ValueError(
                "must be 5-32 characters of A-Za-z0-9_, start with a letter and end in 'bot'"
            )
        return v

    @model_validator(mode="after")
    def _no_nulls(self) -> BotUpdate:
        _refuse_nulls(self, frozenset({"llm_providers", "typing_cpm"}))
        return self

    def persona_changes(self) -> dict[str, Any]:
        """The persona fields that were sent, as plain values (``{"bio": "..."}``)."""
        return self.model_dump(
            include=set(Persona.model_fields) & self.model_fields_set, mode="json"
        )

    def merged(self, current: Persona) -> Persona:
        """Return ``current`` with this update's persona fields applied, validated whole.

        Raises:
            ValidationFailed: naming each field the merged persona refuses (two stances on
                one topic, a non-positive topic weight...).
        """
        try:
            return Persona.model_validate(
                {**current.model_dump(mode="json"), **self.persona_changes()}
            )
        except ValidationError as exc:
            raise ValidationFailed("bot update", validation_problems(exc)) from None


class BotOut(_Output):
    """A bot as the API shows it. Never the token: only ``token_masked``.

    Attributes:
        id, username, name, enabled, mood: the ``bots`` columns.
        telegram_user_id: the bot's Telegram user id (the token's numeric head).
        token_masked: :func:`mask_token` of the token (``"1234567:****wxyz"``).
        persona, stances, holdings: the persona as stored.
    """

    id: int
    username: str
    name: str
    enabled: bool
    mood: float
    telegram_user_id: int | None
    token_masked: str
    persona: PersonaProfile
    stances: list[Stance]
    holdings: list[Holding]

    @classmethod
    def from_row(cls, bot: Bot, cipher: TokenCipher) -> BotOut:
        """Build from a ``bots`` row, decrypting the token only to mask it.

        Raises:
            ConfigError: when the token was encrypted with another key (see TokenCipher).
        """
        return cls(
            id=bot.id,
            username=bot.username,
            name=bot.name,
            enabled=bot.enabled,
            mood=bot.mood,
            telegram_user_id=bot.telegram_user_id,
            token_masked=mask_token(cipher.decrypt(bot.token_encrypted)),
            persona=bot.persona,
            stances=list(bot.stances.items),
            holdings=list(bot.holdings.items),
        )


# --- chats and messages -----------------------------------------------------------------


class ChatOut(_Output):
    """A chat. ``topics``: topic id → weight."""

    id: int
    telegram_chat_id: int
    title: str
    topics: dict[str, float]
    enabled: bool
    created_at: datetime

    @classmethod
    def from_row(cls, chat: Chat) -> ChatOut:
        """Build from a ``chats`` row."""
        return cls(
            id=chat.id,
            telegram_chat_id=chat.telegram_chat_id,
            title=chat.title,
            topics=dict(chat.topics.weights),
            enabled=chat.enabled,
            created_at=chat.created_at,
        )


class MessageOut(_Output):
    """A message of a chat. ``text`` is plain, as stored: escaping is the page's job.

    Attributes:
        bot_id: our bot that sent it, or None (a human or another bot: ``sender_*``).
        kind: ``text`` or the kind of a non-text message; topic: the turn's topic (bots).
    """

    id: int
    chat_id: int
    bot_id: int | None
    sender_id: int | None
    sender_name: str | None
    telegram_message_id: int
    reply_to_telegram_message_id: int | None
    text: str
    kind: str
    topic: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, msg: Message) -> MessageOut:
        """Build from a ``messages`` row."""
        return cls(
            id=msg.id,
            chat_id=msg.chat_id,
            bot_id=msg.bot_id,
            sender_id=msg.sender_id,
            sender_name=msg.sender_name,
            telegram_message_id=msg.telegram_message_id,
            reply_to_telegram_message_id=msg.reply_to_telegram_message_id,
            text=msg.text,
            kind=msg.meta.kind,
            topic=msg.meta.topic,
            created_at=msg.created_at,
        )


class Page(_Output, Generic[T]):
    """One page of a list, newest first (keyset pagination).

    Attributes:
        items: the page.
        next_cursor: pass it back (as ``cursor``) for the next page; None on the last.
    """

    items: list[T]
    next_cursor: int | None = None


class _HasId(Protocol):
    @property
    def id(self) -> int: ...


def page_of(rows: Sequence[R], limit: int, out: Callable[[R], T]) -> Page[T]:
    """The page of the first ``limit`` of ``rows`` (read with ``limit + 1``, newest first),
    each converted by ``out``; ``next_cursor`` is the last row's id when ``rows`` held more.
    """
    kept = rows[:limit]
    more = len(rows) > limit
    return Page(items=[out(r) for r in kept], next_cursor=kept[-1].id if more else None)


# --- settings ---------------------------------------------------------------------------


class SettingsPatch(_Input):
    """Body of "change settings": any subset of :class:`~backend.schemas.SimulationSettings`.

    ``prime_hours`` may be partial (``{"boost": 2}``): the fields sent replace the current
    ones. ``bot_hourly_msg_limit`` is sent whole (its min and max are checked together).
    Null is refused. :meth:`merged` validates the result as whole settings.
    """

    simulation_active: bool | None = None
    bot_hourly_msg_limit: HourlyLimit | None = None
    max_msgs_per_min: int | None = Field(default=None, ge=1, le=20)
    prime_hours: PrimeHours | None = None
    scale_factor: float | None = Field(default=None, ge=0.01, le=100.0)
    # -- who answers (issue 14) --
    second_answer_p: float | None = Field(default=None, ge=0.0, le=1.0)
    expertise_weight: float | None = Field(default=None, ge=0.0, le=20.0)
    thread_max_depth: int | None = Field(default=None, ge=1, le=20)
    reply_p: float | None = Field(default=None, ge=0.0, le=1.0)
    # -- voice: reading and typing time (issue 14) --
    reading_wpm: float | None = Field(default=None, ge=60.0, le=1000.0)
    reading_cap_s: float | None = Field(default=None, ge=0.0, le=30.0)
    typing_cpm_default: float | None = Field(default=None, ge=60.0, le=1500.0)
    typing_jitter: float | None = Field(default=None, ge=0.0, le=0.9)
    typing_cap_s: float | None = Field(default=None, ge=0.0, le=60.0)
    writing_lead_s: float | None = Field(default=None, ge=0.0, le=30.0)
    # -- timing, pacing and participation (issue 14); bounds checked by merged() --
    budget_use: float | None = None
    burst_mean_msgs: float | None = None
    burst_gap_median_s: float | None = None
    lull_sigma: float | None = None
    human_reply_reserve: float | None = None
    chatter_pacing: bool | None = None
    bot_daily_profile: bool | None = None
    quiet_boost: float | None = None
    budget_evening: bool | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> SettingsPatch:
        _refuse_nulls(self)
        return self

    def merged(self, current: SimulationSettings) -> SimulationSettings:
        """Return ``current`` with this patch applied, validated as whole settings.

        Raises:
            ValidationFailed: naming each field the merged settings refuse.
        """
        base = current.model_dump(mode="json")
        sent = self.model_dump(exclude_unset=True, mode="json")
        for key, value in sent.items():
            old = base.get(key)
            base[key] = {**old, **value} if isinstance(old, dict) else value
        try:
            return SimulationSettings.model_validate(base)
        except ValidationError as exc:
            raise ValidationFailed("settings", validation_problems(exc)) from None

    def changes(self, current: SimulationSettings) -> dict[str, Any]:
        """The changed fields with their whole new values, for
        ``backend.stores.settings.update_settings(changes=...)``.

        Raises:
            ValidationFailed: as :meth:`merged`.
        """
        new = self.merged(current).model_dump(mode="json")
        return {k: new[k] for k in self.model_fields_set}


# --- personas, chats, prompt preview ----------------------------------------------------


class OkOut(BaseModel):
    """A persona that validates."""

    ok: bool


class ChatCreate(InputModel):
    """Body of "create a chat".

    Attributes:
        telegram_chat_id: Telegram's id of the group (negative for groups).
        title: display title, 1–255 characters.
        topics: topic id → weight (> 0); at least one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    telegram_chat_id: int
    title: str = Field(min_length=1, max_length=255)
    topics: dict[TopicId, float] = Field(min_length=1)

    @field_validator("topics")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(t for t, w in v.items() if not w > 0)
        if bad:
            raise ValueError(f"weights must be > 0 (topics {', '.join(bad)})")
        return v


class ChatDetailOut(ChatOut):
    """A chat and the ids of its member bots (enabled or not), ascending."""

    bot_ids: list[int]

    @classmethod
    def of(cls, chat: Chat, bot_ids: list[int]) -> ChatDetailOut:
        """Build from a ``chats`` row and its member bot ids."""
        return cls(**ChatOut.from_row(chat).model_dump(), bot_ids=bot_ids)


class PromptLayer(BaseModel):
    """One layer of a prompt, in prompt order."""

    name: str
    text: str


class PromptMessage(BaseModel):
    """One message of the request sent to the LLM."""

    role: str
    content: str


class PreviewOut(BaseModel):
    """The prompt a bot would get for a spontaneous turn in a chat now (nothing is sent).

    Attributes:
        tokens_estimate: estimated prompt tokens of all messages.
        topic: the topic drawn for the turn; mood / pnl_pct: the mood and holdings P&L now.
    """

    layers: list[PromptLayer]
    messages: list[PromptMessage]
    tokens_estimate: int
    topic: str
    mood: float
    pnl_pct: float


# --- interview --------------------------------------------------------------------------


class InterviewBody(InputModel):
    """Body of ``POST /api/v1/bots/{id}/interview``.

    Attributes:
        question: what the operator asks, 1–4096 characters, not only whitespace.
        llm: ``"settings"``: the configured provider chain (may spend LLM budget), the
            offline generator last; ``"offline"``: the offline generator alone (no LLM call).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    question: str = Field(min_length=1, max_length=4096)
    llm: Literal["offline", "settings"] = "settings"

    @field_validator("question")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the question is only whitespace")
        return v


class InterviewOut(_Output):
    """A bot's answer to an interview question (nothing was posted or stored).

    Attributes:
        bot_id: our bot id; question: as asked; answer: the bot's text, plain (escaping is
        the page's job); provider: who wrote it (``"offline"`` for the offline generator).
    """

    bot_id: int
    question: str
    answer: str
    provider: str

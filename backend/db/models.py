"""SQLAlchemy 2 typed models. Alembic (``backend/db/migrations``) owns the schema.

Tables: ``bots``, ``chats``, ``chat_bots`` (membership), ``messages`` (bots' and humans'),
``settings`` (operator settings, one row per key) and ``webhook_updates`` (deduplication of
Telegram updates on (bot, update_id)). Timestamps are aware UTC (:class:`UTCDateTime`);
JSON columns are validated by pydantic models (:class:`PydanticJSON`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import JsonValue
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from backend.db.types import PydanticJSON, UTCDateTime, utcnow
from backend.schemas import HoldingList, MessageMeta, PersonaProfile, StanceList, TopicWeights

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention (stable Alembic diffs)."""

    metadata = MetaData(naming_convention=NAMING)


class Bot(Base):
    """A bot account and its persona.

    ``token_encrypted`` holds the Fernet ciphertext of the bot token; the plain token never
    touches the database (see ``backend.crypto``).
    """

    __tablename__ = "bots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    username: Mapped[str] = mapped_column(String(32), unique=True)
    telegram_user_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    token_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    persona: Mapped[PersonaProfile] = mapped_column(PydanticJSON(PersonaProfile))
    stances: Mapped[StanceList] = mapped_column(PydanticJSON(StanceList))
    holdings: Mapped[HoldingList] = mapped_column(PydanticJSON(HoldingList))
    mood: Mapped[float] = mapped_column(Float, default=0.0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (CheckConstraint("mood >= -1 AND mood <= 1", name="mood_range"),)


class Chat(Base):
    """A Telegram group the bots talk in."""

    __tablename__ = "chats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    telegram_chat_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    title: Mapped[str] = mapped_column(String(255))
    topics: Mapped[TopicWeights] = mapped_column(PydanticJSON(TopicWeights))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The chat's Telegram id before its group became a supergroup (Bot API, Message:
    #: ``migrate_to_chat_id`` / ``migrate_from_chat_id``); updates from it still find it.
    migrated_from_telegram_chat_id: Mapped[int | None] = mapped_column(
        BigInteger, unique=True, nullable=True)


class ChatMember(Base):
    """A Telegram user's membership of a chat as Telegram last reported it.

    Rows come from ``my_chat_member`` / ``chat_member`` updates, service messages
    (``new_chat_members``, ``left_chat_member``) and send errors (403: kicked or not a
    member). ``bot_id`` is set when the user is one of our bots: a bot whose row is not
    active (:data:`backend.stores.members.ACTIVE`) takes no turn in that chat, while its
    ``chat_bots`` configuration (talkativeness) is kept for when it is added back. No row:
    nothing heard yet, taken as a member.
    """

    __tablename__ = "chat_members"

    chat_id: Mapped[int] = mapped_column(
        ForeignKey("chats.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    bot_id: Mapped[int | None] = mapped_column(
        ForeignKey("bots.id", ondelete="CASCADE"), nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16))
    can_send: Mapped[bool] = mapped_column(Boolean, default=True)
    reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ChatBot(Base):
    """Membership of a bot in a chat.

    ``talkativeness`` is the bot's share weight in this chat (0.05–10, as the persona's),
    overriding its persona's when set: a person loud in one group may lurk in another
    (issue 14). NULL: the persona's.
    """

    __tablename__ = "chat_bots"

    chat_id: Mapped[int] = mapped_column(
        ForeignKey("chats.id", ondelete="CASCADE"), primary_key=True
    )
    bot_id: Mapped[int] = mapped_column(
        ForeignKey("bots.id", ondelete="CASCADE"), primary_key=True
    )
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    talkativeness: Mapped[float | None] = mapped_column(Float, nullable=True)


class Message(Base):
    """A message in a chat, from one of our bots or from anyone else (humans, other bots).

    ``bot_id`` is NULL for humans, who have ``sender_id`` (Telegram user id) and
    ``sender_name`` instead: the prototype dropped human messages because ``bot_id`` was
    NOT NULL. ``reply_wanted`` marks a human message the engine has not answered yet.
    ``turn_id`` is the scheduler's turn that produced a bot message (unique: one message
    per turn).
    """

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    bot_id: Mapped[int | None] = mapped_column(ForeignKey("bots.id", ondelete="SET NULL"))
    sender_id: Mapped[int | None] = mapped_column(BigInteger)
    sender_name: Mapped[str | None] = mapped_column(String(255))
    telegram_message_id: Mapped[int] = mapped_column(BigInteger)
    reply_to_telegram_message_id: Mapped[int | None] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text, default="")
    meta: Mapped[MessageMeta] = mapped_column(
        "metadata", PydanticJSON(MessageMeta), default=MessageMeta
    )
    turn_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    reply_wanted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("chat_id", "telegram_message_id", name="uq_messages_chat_tg_id"),
        CheckConstraint(
            "bot_id IS NOT NULL OR sender_id IS NOT NULL", name="sender_known"
        ),
        Index("ix_messages_chat_created", "chat_id", "created_at"),
        Index("ix_messages_bot_created", "bot_id", "created_at"),
        Index(
            "ix_messages_reply_wanted",
            "chat_id",
            sqlite_where=sql_text("reply_wanted"),
            postgresql_where=sql_text("reply_wanted"),
        ),
    )


class SettingRow(Base):
    """One operator setting (a field of ``SimulationSettings``), validated by the store."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(PydanticJSON(JsonValue))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class LLMCall(Base):
    """One network call to an LLM provider, answered or not: the cost ledger.

    ``cost_usd`` is computed from the price table in settings at write time; None when the
    model has no price there (the ``botsim costs`` report counts such calls as unpriced).
    """

    __tablename__ = "llm_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    bot_id: Mapped[int | None] = mapped_column(ForeignKey("bots.id", ondelete="SET NULL"))
    chat_id: Mapped[int | None] = mapped_column(ForeignKey("chats.id", ondelete="SET NULL"))
    turn_id: Mapped[str | None] = mapped_column(String(36))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    cost_usd: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_llm_calls_created", "created_at"),
        Index("ix_llm_calls_provider_created", "provider", "created_at"),
        Index("ix_llm_calls_bot_created", "bot_id", "created_at"),
    )


class WebhookUpdate(Base):
    """A Telegram update already taken, keyed by (bot, update_id) for deduplication.

    Telegram retries updates it thinks failed and keeps them up to 24 h
    (core.telegram.org/bots/api#getting-updates).
    """

    __tablename__ = "webhook_updates"

    bot_id: Mapped[int] = mapped_column(
        ForeignKey("bots.id", ondelete="CASCADE"), primary_key=True
    )
    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BotLease(Base):
    """The fencing token of each bot's lease: the system of record for who may drive it.

    A worker that wins a bot's lease in Redis increments ``fencing_token`` here (PostgreSQL
    or SQLite never go backwards, unlike a Redis counter on a server without persistence);
    every write of a turn checks that the token it holds is still the current one
    (Kleppmann, "How to do distributed locking", 2016).
    """

    __tablename__ = "bot_leases"

    bot_id: Mapped[int] = mapped_column(
        ForeignKey("bots.id", ondelete="CASCADE"), primary_key=True
    )
    fencing_token: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


#: Status of a turn record. ``intent``: recorded before the send, outcome not yet known;
#: ``sent``: Telegram answered with a message; ``retry``: not delivered for certain (429,
#: connection refused, an error answer that is safe to repeat); ``failed``: not delivered,
#: not to be repeated (kicked, revoked token, lease lost before the send); ``unknown``: the
#: request may have reached Telegram and no answer came (a read timeout, or a worker killed
#: between the send and the commit): never resent by itself.
TURN_STATUSES = ("intent", "sent", "retry", "failed", "unknown")


class TurnRecord(Base):
    """One turn's send: the intent recorded before the send, then its outcome.

    ``turn_id`` is the scheduler's id (deterministic for a reply to a human, so a second
    delivery of the same reply request finds the row and is not acted on again).
    ``reply_to_message_id`` is our ``messages.id`` of the human message a reply answers.
    """

    __tablename__ = "turns"

    turn_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"))
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    fencing_token: Mapped[int] = mapped_column(BigInteger)
    worker: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    reply_to_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL")
    )
    telegram_message_id: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(
            "status IN ('intent', 'sent', 'retry', 'failed', 'unknown')", name="status_known"
        ),
        Index("ix_turns_bot_status", "bot_id", "status"),
        Index("ix_turns_reply_to", "reply_to_message_id"),
    )


class User(Base):
    """An operator of the admin panel.

    ``password_hash`` is an argon2id PHC string (``$argon2id$v=19$...``); the password itself
    is never stored. ``role`` is ``admin`` (edits) or ``viewer`` (reads).
    ``credentials_version`` goes up by one at each password change; sessions and API tokens
    carry the version they were issued under and stop working when it moves on (so one
    created concurrently with a password change cannot outlive it).
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    credentials_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (CheckConstraint("role IN ('admin', 'viewer')", name="role_known"),)


class ApiSession(Base):
    """A browser session. ``token_hash`` is the HMAC-SHA256 (hex, keyed by ``secret_key``)
    of the cookie's value: a database leak gives no usable session. ``csrf_token`` is sent
    back with every state-changing request."""

    __tablename__ = "api_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    credentials_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (Index("ix_api_sessions_user", "user_id"),)


class ApiToken(Base):
    """A token for scripts (``Authorization: Bearer``); only its HMAC-SHA256 (keyed by
    ``secret_key``) is stored.

    ``scope`` is ``read`` (acts as a viewer) or ``admin`` (acts with its user's role);
    ``expires_at`` is when it stops working; a revoked token is kept for the record
    (``revoked_at``); ``credentials_version`` is its user's at issue (see :class:`User`).
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    scope: Mapped[str] = mapped_column(String(8), default="admin", server_default="admin")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    credentials_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        CheckConstraint("scope IN ('read', 'admin')", name="scope_known"),
        Index("ix_api_tokens_user", "user_id"),
    )


class AuditEntry(Base):
    """One change made through the admin API: who, when, what, before and after.

    ``before`` / ``after`` are JSON objects of the changed fields (secrets masked).
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    username: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str | None] = mapped_column(String(64))
    before: Mapped[Any] = mapped_column(PydanticJSON(JsonValue), nullable=True)
    after: Mapped[Any] = mapped_column(PydanticJSON(JsonValue), nullable=True)

    __table_args__ = (Index("ix_audit_log_at", "at"), Index("ix_audit_log_entity", "entity",
                                                             "entity_id"))


class WorldEventRow(Base):
    """A world event the operator injected or scheduled (``backend.schemas.WorldEvent``).

    ``shocks``, ``views`` and ``topics`` are JSON as in :class:`~backend.schemas.WorldEventIn`;
    ``at`` is when it takes effect (later than ``created_at`` for a scheduled one).
    """

    __tablename__ = "world_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    headline: Mapped[str] = mapped_column(String(280))
    shocks: Mapped[Any] = mapped_column(PydanticJSON(JsonValue), default=dict)
    views: Mapped[Any] = mapped_column(PydanticJSON(JsonValue), default=dict)
    topics: Mapped[Any] = mapped_column(PydanticJSON(JsonValue), default=list)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_world_events_at", "at"),)


class BotReflection(Base):
    """One reflection of a bot: a short first-person insight written by the LLM from the
    bot's most important recent memories.

    Attributes:
        bot_id: the bot (its reflections go with it: ON DELETE CASCADE).
        text: the insight (one or two sentences).
        importance: 0–1 (``behavior_engine.memory.importance``).
        created_at: when it was drawn (aware UTC).
        expires_at: when it is forgotten (``created_at`` + 30 days by default; deleted by
            ``backend.stores.memories.expire_reflections``).
    """

    __tablename__ = "bot_reflections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    importance: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_bot_reflections_bot_created", "bot_id", "created_at"),)

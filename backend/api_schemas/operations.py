"""Models of the operations routes: auth and users, costs, provider health and workers,
the audit log, and the panel's sandbox post (see :mod:`backend.api_schemas`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, JsonValue, model_validator

from backend.api_schemas.resources import InputModel, Role
from backend.db.models import AuditEntry
from backend.stores.llm_calls import GroupBy

# --- auth and users ---------------------------------------------------------------------

#: Longest password accepted, characters: argon2 takes any length, this only bounds the work
#: one request can ask for.
MAX_PASSWORD_CHARS = 4096


class LoginBody(InputModel):
    """``POST /auth/login`` body."""

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)


class LoginOut(BaseModel):
    """Who logged in, and the CSRF token to send back in ``X-CSRF-Token``."""

    username: str
    role: Role
    csrf_token: str


class MeOut(BaseModel):
    """The caller; ``csrf_token`` only for a cookie session."""

    user_id: int
    username: str
    role: Role
    via: Literal["session", "token"]
    csrf_token: str | None


#: Shortest new password accepted, characters (NIST SP 800-63B §5.1.1.2: at least 8).
MIN_NEW_PASSWORD_CHARS = 8
#: A token lifetime: a whole number of minutes, hours or days (``30m``, ``12h``, ``30d``).
TOKEN_TTL_PATTERN = r"^\d{1,6}[mhd]$"
TokenScope = Literal["read", "admin"]
TokenState = Literal["active", "revoked", "expired"]


class TokenBody(InputModel):
    """``POST /auth/tokens`` body.

    ``name`` recognises the token (1-64 characters, no control characters); ``scope`` is
    ``read`` (default: acts as a viewer) or ``admin`` (acts with the user's role; a viewer
    may not ask for it). The expiry is ``expires_at`` (an ISO 8601 time) or ``expires_in``
    (``30m``, ``12h``, ``30d``), not both; default 90 days, 5 minutes to 365 days ahead.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
    scope: TokenScope = "read"
    expires_at: datetime | None = None
    expires_in: str | None = Field(default=None, max_length=8, pattern=TOKEN_TTL_PATTERN)

    @model_validator(mode="after")
    def _one_expiry(self) -> TokenBody:
        if self.expires_at is not None and self.expires_in is not None:
            raise ValueError("give expires_at or expires_in, not both")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a time zone (e.g. 2027-01-31T12:00:00Z)")
        return self


class TokenOut(BaseModel):
    """A new API token; ``token`` is shown this once and never again."""

    id: int
    name: str
    token: str
    scope: TokenScope = "admin"
    expires_at: datetime | None = None


class TokenInfo(BaseModel):
    """An API token as listed (never the token or its digest).

    ``state``: ``active``, ``revoked`` (by hand or by a password change) or ``expired``.
    """

    id: int
    user_id: int
    username: str
    name: str
    scope: TokenScope
    state: TokenState
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime
    revoked_at: datetime | None


class PasswordChange(InputModel):
    """``POST /auth/password`` body: the caller's current password and the new one."""

    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)
    new_password: str = Field(min_length=MIN_NEW_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)


class PasswordSet(InputModel):
    """``POST /users/{id}/password`` body (an admin sets another user's password)."""

    new_password: str = Field(min_length=MIN_NEW_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)


class EndedOut(BaseModel):
    """What a password change, a disable or "end sessions" ended."""

    status: str
    sessions_ended: int
    tokens_revoked: int


class UserOut(BaseModel):
    """A user as the API shows it (never the password hash): ``sessions`` not expired,
    ``tokens`` neither revoked nor expired."""

    id: int
    username: str
    role: Role
    disabled: bool
    created_at: datetime
    sessions: int = 0
    tokens: int = 0


class StatusOut(BaseModel):
    """A plain acknowledgement."""

    status: str


# --- costs, provider health, workers, audit ---------------------------------------------


class CostRow(BaseModel):
    """Ledger totals of one group (``key``: provider, bot name or ``YYYY-MM-DD``).

    ``failed`` counts calls that did not answer; ``unpriced`` the calls of models without a
    price (their cost is not in ``cost_usd``).
    """

    key: str
    calls: int
    ok: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    unpriced: int

    @classmethod
    def total_of(cls, rows: Sequence[CostRow]) -> CostRow:
        """The row ``"total"``: the sum of every figure of ``rows``."""
        return cls(key="total", **{
            name: sum(getattr(r, name) for r in rows)
            for name in cls.model_fields if name != "key"
        })


class CostsOut(BaseModel):
    """``GET /costs``: one row per group, largest cost first, and their sum (``total``).

    ``since``: the start of the window (None: the whole ledger).
    """

    since: datetime | None
    by: GroupBy
    rows: list[CostRow]
    total: CostRow


class LastError(BaseModel):
    """The latest failed call of a provider in the window."""

    at: datetime
    outcome: str
    model: str | None
    error: str | None


class ProviderHealth(BaseModel):
    """One provider over the window.

    Attributes:
        errors: calls whose outcome is not ``ok``; error_rate: errors / calls (0–1).
        p50_latency_ms: median latency of the answered (``ok``) calls; None without any.
    """

    provider: str
    calls: int
    errors: int
    error_rate: float
    p50_latency_ms: float | None
    last_error: LastError | None


class ProviderGuards(BaseModel):
    """A provider's guards in one worker (each worker keeps its own breakers and budgets).

    Attributes:
        breaker: ``closed``, ``open`` or ``half_open``; retry_in_s: seconds until an open
            breaker lets a probe through.
        budget_left: ``requests/min``, ``tokens/min``, ``tokens/day`` → what is left
            before the headroom (None: no limit).
        tokens_today: tokens counted in the last 24 h.
    """

    name: str
    breaker: str
    retry_in_s: float
    budget_left: dict[str, float | None]
    tokens_today: float


class WorkerOut(BaseModel):
    """A live worker, from its Redis heartbeat (or, in ``botsim demo``, the worker of this
    process).

    Attributes:
        bots: bots it holds leases on; in_flight: turns running now; sent: messages sent
            since it started. None when the heartbeat does not say.
        heartbeat_at: when it last beat (the worker's clock).
        providers: its providers' breakers and budgets; None when it does not say.
        info: the whole heartbeat, as the worker wrote it.
    """

    id: str
    name: str | None
    bots: int | None
    in_flight: int | None
    sent: int | None
    heartbeat_at: datetime | None
    providers: list[ProviderGuards] | None = None
    info: dict[str, JsonValue]


class HealthOut(BaseModel):
    """``GET /providers/health``.

    Attributes:
        window_s: the ledger window, seconds (the last 15 minutes).
        providers: providers with at least one call in the window, by name.
        redis_configured: whether ``REDIS_URL`` is set (workers are only listed then).
        workers: the live workers (this process's first, then Redis's by id); None when
            there is none to list (no local worker, and Redis not configured or silent).
        workers_error: why the workers could not be read (Redis unreachable), else None.
    """

    window_s: int
    providers: list[ProviderHealth]
    redis_configured: bool
    workers: list[WorkerOut] | None
    workers_error: str | None


class AuditOut(BaseModel):
    """An audit entry: who changed what, and the changed fields before and after."""

    id: int
    at: datetime
    user_id: int | None
    username: str
    action: str
    entity: str
    entity_id: str | None
    before: JsonValue
    after: JsonValue

    @classmethod
    def from_row(cls, row: AuditEntry) -> AuditOut:
        """Build from an ``audit_log`` row (its attributes are this model's fields)."""
        return cls.model_validate(row, from_attributes=True)


# --- the panel's sandbox post -----------------------------------------------------------


class SandboxPost(InputModel):
    """Body of ``POST /panel/sandbox/post``.

    Attributes:
        chat_id: our chat id; text: the message (1–4096 characters, Telegram's limit);
        reply_to_message_id: the Telegram message id it answers, if any.
    """

    chat_id: int
    text: str = Field(min_length=1, max_length=4096)
    reply_to_message_id: int | None = None


class SandboxPosted(BaseModel):
    """What the sandbox answered: the Telegram message id of the new message."""

    telegram_message_id: int | None

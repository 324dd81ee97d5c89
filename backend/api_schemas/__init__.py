"""Input and output models of the admin API (pydantic v2).

Inputs (:class:`BotCreate`, :class:`BotUpdate`, :class:`SettingsPatch`) refuse unknown
fields (``extra="forbid"``) and never echo what was sent in their errors
(``hide_input_in_errors``: a refused body may hold a bot token). Outputs (:class:`BotOut`,
:class:`ChatOut`, :class:`MessageOut`, :class:`Page`) are built from database rows with
``from_row`` and never carry a token: :class:`BotOut` has only :func:`mask_token`'s form.

Persona fields reuse the models of :mod:`backend.schemas` (:class:`~backend.schemas.Persona`
for a new bot; a :class:`BotUpdate` is validated for good by merging it into the bot's
current persona with :meth:`BotUpdate.merged`). Message text is returned as stored, plain:
escaping is the page's job.

One package, one import path (``from backend.api_schemas import BotOut``): every request
and response model of the API lives here, by subject, in :mod:`.resources` (bots, chats,
messages, settings, preview, interview), :mod:`.operations` (auth, costs, health, audit,
sandbox) and :mod:`.problems` (the RFC 9457 error bodies). Route modules define no models
of their own.
"""

from __future__ import annotations

from backend.api_schemas.operations import (
    MAX_PASSWORD_CHARS,
    MIN_NEW_PASSWORD_CHARS,
    AuditOut,
    CostRow,
    CostsOut,
    EndedOut,
    HealthOut,
    LastError,
    LoginBody,
    LoginOut,
    MeOut,
    PasswordChange,
    PasswordSet,
    ProviderGuards,
    ProviderHealth,
    SandboxPost,
    SandboxPosted,
    StatusOut,
    TokenBody,
    TokenInfo,
    TokenOut,
    UserOut,
    WorkerOut,
)
from backend.api_schemas.problems import (
    FieldProblem,
    ProblemDetails,
    ValidationProblem,
)
from backend.api_schemas.resources import (
    TOKEN_RE,
    BotCreate,
    BotOut,
    BotUpdate,
    ChatCreate,
    ChatDetailOut,
    ChatOut,
    InputModel,
    InterviewBody,
    InterviewOut,
    MessageOut,
    OkOut,
    Page,
    PreviewOut,
    PromptLayer,
    PromptMessage,
    Role,
    SettingsPatch,
    page_of,
    validation_problems,
)
from backend.crypto import mask_token

__all__ = [
    "MAX_PASSWORD_CHARS",
    "MIN_NEW_PASSWORD_CHARS",
    "TOKEN_RE",
    "AuditOut",
    "BotCreate",
    "BotOut",
    "BotUpdate",
    "ChatCreate",
    "ChatDetailOut",
    "ChatOut",
    "CostRow",
    "CostsOut",
    "EndedOut",
    "FieldProblem",
    "HealthOut",
    "InputModel",
    "InterviewBody",
    "InterviewOut",
    "LastError",
    "LoginBody",
    "LoginOut",
    "MeOut",
    "MessageOut",
    "OkOut",
    "Page",
    "PasswordChange",
    "PasswordSet",
    "PreviewOut",
    "ProblemDetails",
    "PromptLayer",
    "PromptMessage",
    "ProviderGuards",
    "ProviderHealth",
    "Role",
    "SandboxPost",
    "SandboxPosted",
    "SettingsPatch",
    "StatusOut",
    "TokenBody",
    "TokenInfo",
    "TokenOut",
    "UserOut",
    "ValidationProblem",
    "WorkerOut",
    "mask_token",
    "page_of",
    "validation_problems",
]

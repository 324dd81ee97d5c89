"""The one error tree of botsim.

Every error the engine raises on purpose derives from :class:`BotsimError`. Errors carry
what recovery needs (``TelegramRetryAfter.retry_after``, ``TelegramChatMigrated.new_chat_id``);
only the API layer turns them into HTTP answers, and only the CLI into exit codes::

    BotsimError
    ├── ConfigError                 settings missing, malformed or unsafe (exit code 2)
    ├── ValidationFailed            input that does not fit its model; names where and why
    │   └── PersonaFileError        a persona file: file name, field, reason
    ├── NotFound                    an id that names nothing
    ├── StorageError                the database refused or is unreachable
    │   ├── FencedOut               a write carried a stale fencing token: the lease moved
    │   └── WrongEventLoop          an engine used from an event loop other than its own
    ├── ProviderError               an LLM provider call failed (``provider`` says which)
    │   ├── ProviderRateLimited     429: retry after ``retry_after`` seconds (None: unknown)
    │   ├── ProviderUnavailable     5xx, timeout, connection error, malformed answer: retryable
    │   ├── ProviderRejected        400/401/403/404 (bad key, retired model, bad request):
    │   │                           never retried; ``status`` says which
    │   └── ProviderRefused         content filter or an empty answer: next provider, no retry
    └── TelegramError               a Bot API call failed (``bot_id`` says which bot)
        ├── TelegramRetryAfter      429: wait ``retry_after`` seconds for that bot
        ├── TelegramChatMigrated    400 with ``migrate_to_chat_id``: use ``new_chat_id``
        ├── TelegramReplyNotFound   400 "message to be replied not found"
        ├── TelegramForbidden       403: the bot was kicked or blocked in that chat
        ├── TelegramInvalidToken    401/404 on the token: wrong or revoked
        ├── TelegramBadRequest      any other 400
        └── TelegramUnavailable     network error or 5xx; ``delivered_unknown`` says whether
                                    the request may have reached Telegram

The split between ``TelegramUnavailable(delivered_unknown=True)`` and the rest matters for
exactly-once sending: only a send that certainly did not reach Telegram may be retried.
"""

from __future__ import annotations


class BotsimError(Exception):
    """Root of every error botsim raises on purpose."""


class ConfigError(BotsimError):
    """Settings are missing, malformed or unsafe for the chosen environment."""


class ValidationFailed(BotsimError):
    """Input does not fit its model.

    Args:
        where: what was being validated (a file name, a settings key, an API body).
        problems: one ``(field, reason)`` pair per problem, field as a dotted path.
    """

    def __init__(self, where: str, problems: list[tuple[str, str]]) -> None:
        self.where = where
        self.problems = problems
        lines = "; ".join(f"{field}: {reason}" for field, reason in problems)
        super().__init__(f"{where}: {lines}")


class PersonaFileError(ValidationFailed):
    """A persona file was refused; the message names the file, the field and the reason."""


class NotFound(BotsimError):
    """An id that names nothing (``kind`` and ``key`` say which)."""

    def __init__(self, kind: str, key: object) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} not found")


class StorageError(BotsimError):
    """The database refused an operation or could not be reached."""


class FencedOut(StorageError):
    """A turn's write carried a fencing token that is no longer the bot's current one.

    Another worker has taken the bot's lease since; the caller must stop driving the bot
    and must not send.

    Args:
        bot_id: the bot.
        token: the token the caller held.
    """

    def __init__(self, bot_id: int, token: int) -> None:
        self.bot_id = bot_id
        self.token = token
        super().__init__(f"bot {bot_id}: fencing token {token} is stale (lease moved)")


class WrongEventLoop(StorageError):
    """A database engine was used from an event loop other than the one that owns it.

    An asyncpg or aiosqlite connection belongs to the loop that opened it; driving it from a
    second loop (another thread's, or a test client's) corrupts memory and can crash the
    process with a segmentation fault. The session factory raises this before any I/O.

    Args:
        what: the engine, as a URL without its password.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"database {what}: used from an event loop other than the one that owns its "
            "engine; make an engine on this loop (an engine, session or Redis client belongs "
            "to the loop that made it)")


class ProviderError(BotsimError):
    """An LLM provider call failed.

    Args:
        provider: the provider's configured name (``groq``, ``openai``...).
        message: what went wrong (never contains an API key).
    """

    retryable = False

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        super().__init__(f"{provider}: {message}")


class ProviderRateLimited(ProviderError):
    """HTTP 429. ``retry_after`` is the server's ``Retry-After`` in seconds, or None."""

    retryable = True

    def __init__(self, provider: str, message: str, *, retry_after: float | None) -> None:
        self.retry_after = retry_after
        super().__init__(provider, message)


class ProviderUnavailable(ProviderError):
    """5xx, a timeout, a dropped connection or an answer that is not the wire format."""

    retryable = True


class ProviderRejected(ProviderError):
    """400, 401, 403 or 404: retrying cannot help (``status`` is the HTTP status)."""

    def __init__(self, provider: str, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(provider, message)


class ProviderRefused(ProviderError):
    """The provider answered but gave no usable text (content filter, empty choices)."""


class TelegramError(BotsimError):
    """A Bot API call failed.

    Args:
        message: Telegram's description, or what went wrong on the way.
        bot_id: our id of the bot whose call failed, if known.
    """

    def __init__(self, message: str, *, bot_id: int | None = None) -> None:
        self.bot_id = bot_id
        super().__init__(message)


class TelegramRetryAfter(TelegramError):
    """HTTP 429: the bot must not call Telegram again for ``retry_after`` seconds.

    Source: core.telegram.org/bots/faq ("retry after N"); ignoring it can get a bot banned.
    """

    def __init__(self, retry_after: float, *, bot_id: int | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(f"Too Many Requests: retry after {retry_after:g}", bot_id=bot_id)


class TelegramChatMigrated(TelegramError):
    """The group became a supergroup; ``new_chat_id`` is the chat's id from now on."""

    def __init__(self, new_chat_id: int, *, bot_id: int | None = None) -> None:
        self.new_chat_id = new_chat_id
        super().__init__(f"chat migrated to {new_chat_id}", bot_id=bot_id)


class TelegramReplyNotFound(TelegramError):
    """The message to reply to is gone: send without the reply, keep the thread in our data."""


class TelegramForbidden(TelegramError):
    """403: the bot was kicked from the chat (stop posting there, tell the operator)."""


class TelegramInvalidToken(TelegramError):
    """401: the token is wrong or revoked (disable the bot, tell the operator)."""


class TelegramBadRequest(TelegramError):
    """Any other 400 answer from the Bot API."""


class TelegramUnavailable(TelegramError):
    """The Bot API could not be reached or answered 5xx.

    Attributes:
        delivered_unknown: True when the request may have reached Telegram (read timeout,
            connection dropped after sending); such a send must never be repeated by itself.
    """

    def __init__(
        self, message: str, *, delivered_unknown: bool, bot_id: int | None = None
    ) -> None:
        self.delivered_unknown = delivered_unknown
        super().__init__(message, bot_id=bot_id)

"""One process bootstrap: settings → logging → migrations → engine → cache → reads → Redis.

Every process (worker, listener, admin API, demo) and every CLI command that touches the
database starts the same way, written once here::

    configure_process()                    # library switches, before anything else
    settings = load_settings()             # ConfigError names the bad variable
    configure_logging(settings)            # once per process
    async with runtime(settings) as rt:    # migrated database, cache, reads, Redis
        ...                                # rt.sessionmaker, rt.reads, rt.redis

:func:`runtime` closes what it opened in reverse order (Redis client, cache, engine) when
the block ends, also on an error or a cancellation (Ctrl-C, SIGTERM), and also when it fails
half-way (only what was opened is closed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from backend import redaction
from backend.logcontext import FIELDS, ContextFilter

if TYPE_CHECKING:  # the heavy imports wait for runtime(): `botsim personas check` stays quick
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from backend.cache import TwoLayerCache
    from backend.settings import Settings
    from behavior_engine.reads import CachedReads

log = logging.getLogger("botsim.bootstrap")

#: Libraries that log one line per tick, request or statement: kept at WARNING or above.
#: aiosqlite's DEBUG lines quote each statement's parameters (people's messages among them);
#: the LLM SDKs' DEBUG lines quote each request's body (the prompt: the chat's history) and
#: httpcore's the bytes sent.
CHATTY_LOGGERS = ("alembic", "httpx", "httpcore", "aiosqlite", "openai",
                  "groq", "google_genai")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: How the plain format names the ids in its ``[…]`` suffix (``backend.logcontext.FIELDS``;
#: the span id only in JSON).
_PLAIN_IDS = {"bot_id": "bot", "chat_id": "chat", "turn_id": "turn", "worker_id": "worker",
              "trace_id": "trace"}

_logging_configured = False


def configure_process() -> None:
    """Process-wide library switches, set once by each entry point before anything runs.

    ``PTB_TIMEDELTA``: python-telegram-bot 22 reports time periods (``RetryAfter``) as
    ``timedelta`` instead of warning that int seconds are deprecated. An already set value
    is kept.
    """
    os.environ.setdefault("PTB_TIMEDELTA", "true")


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger: message [bot=12 chat=3 turn=… worker=… trace=…]``: the suffix
    names the ids :class:`~backend.logcontext.ContextFilter` found bound (none: no suffix);
    a traceback follows on the next lines. Secrets are masked in the whole text (message,
    arguments, traceback, stack: :func:`backend.redaction.redact`)."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """The line (and its traceback), secrets masked."""
        return redaction.redact(super().format(record))

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line without its traceback, ids appended."""
        ids = [f"{short}={value}" for name, short in _PLAIN_IDS.items()
               if (value := getattr(record, name, None)) is not None]
        line = super().formatMessage(record)
        return f"{line} [{' '.join(ids)}]" if ids else line


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line (python-json-logger): ``time`` (ISO 8601 UTC, ms, ``Z``),
    ``level``, ``logger``, ``message``; then, where set, ``bot_id``, ``chat_id`` (ints),
    ``turn_id``, ``worker_id``, ``trace_id`` (32 hex), ``span_id`` (16 hex) and any
    ``extra=`` fields; ``exception`` (the formatted traceback) and ``stack`` when the record
    has one. Secrets are masked in every field, and the value of a secret-named ``extra=``
    field is ``***`` (:func:`backend.redaction.redact_fields`)."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception",
                           "stack_info": "stack"},
            timestamp="time",
            # uvicorn's colour copy of each message; taskName (Python 3.12+) says nothing
            reserved_attrs=[*RESERVED_ATTRS, "color_message", "taskName"],
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """``time`` first and as text, then level, logger, message, the bound ids (those not
        bound left out), the rest; secrets masked."""
        at = log_data.pop("time")
        out: dict[str, Any] = {"time": at.isoformat(timespec="milliseconds")
                               .replace("+00:00", "Z")}
        for key in ("level", "logger", "message"):
            out[key] = log_data.pop(key, None)
        for key in FIELDS:
            if (value := log_data.pop(key, None)) is not None:
                out[key] = value
        if isinstance(out["message"], str):
            out["message"] = redaction.redact(out["message"])
        out.update(redaction.redact_fields(log_data))  # extra=, exception, stack
        return out


def log_handler(log_format: Literal["plain", "json"],
                stream: TextIO | None = None) -> logging.Handler:
    """A handler writing ``log_format`` lines (:class:`PlainFormatter` or
    :class:`JsonLineFormatter`) to ``stream`` (default: standard error), with the bound ids
    (:class:`~backend.logcontext.ContextFilter`)."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else PlainFormatter())
    return handler


def tame_chatty_loggers(level: int) -> None:
    """Set :data:`CHATTY_LOGGERS` to ``level`` but WARNING at least."""
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))


def configure_logging(settings: Settings, *, quiet: bool = False) -> bool:
    """Configure the root logger once per process; later calls change nothing.

    Lines go to standard error at ``settings.log_level`` in ``settings.log_format``:
    ``plain`` (:class:`PlainFormatter`) or ``json`` (:class:`JsonLineFormatter`), each with
    the ids bound by :mod:`backend.logcontext`. :data:`CHATTY_LOGGERS` (a line per tick,
    request or statement) log WARNING and above.

    Args:
        settings: the process settings (``log_level``, ``log_format``).
        quiet: WARNING at least, whatever ``log_level`` says (the demo and the load test,
            whose output is the conversation or the figures).

    Returns:
        True when this call configured logging, False when an earlier one had.
    """
    global _logging_configured
    if _logging_configured:
        return False
    _logging_configured = True
    level = getattr(logging, settings.log_level)
    if quiet:
        level = max(level, logging.WARNING)
    register_settings_secrets(settings)
    logging.basicConfig(level=level, handlers=[log_handler(settings.log_format)])
    tame_chatty_loggers(level)
    install_redacting_excepthooks()
    return True


def register_settings_secrets(settings: Settings) -> None:
    """Register the secrets ``settings`` hold with :mod:`backend.redaction`, so that no log
    line shows them whatever their shape: the Fernet key, the webhook secret, the admin
    API's secret key, each LLM provider's API key, the passwords of the database and Redis
    URLs. (Generated development keys, per-bot webhook secrets and decrypted bot tokens are
    registered where they are made: :mod:`backend.crypto`.)"""
    from urllib.parse import urlsplit

    values = [secret.get_secret_value() for secret in (
        settings.fernet_key, settings.webhook_secret, settings.secret_key,
        *(p.api_key for p in settings.llm_providers)) if secret is not None]
    for url in (settings.database_url, settings.redis_url):
        with contextlib.suppress(ValueError):
            values.append(urlsplit(url or "").password or "")
    redaction.register_secrets(values)


def _redacted_traceback(exc_type: type[BaseException], exc: BaseException,
                        tb: Any) -> str:
    import traceback

    return redaction.redact("".join(traceback.format_exception(exc_type, exc, tb)))


def install_redacting_excepthooks() -> None:
    """An exception nobody caught (in the main thread or another) is printed to standard
    error with its secrets masked, as a log line would be: Python's own hooks print the
    traceback as it is (python-telegram-bot's ``InvalidToken`` quotes the token)."""
    import threading

    def main_hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        sys.stderr.write(_redacted_traceback(exc_type, exc, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = args.thread.name if args.thread is not None else "?"
        sys.stderr.write(f"Exception in thread {name}:\n"
                         + _redacted_traceback(args.exc_type, args.exc_value,
                                               args.exc_traceback))

    sys.excepthook = main_hook
    threading.excepthook = thread_hook


@dataclass(frozen=True)
class Runtime:
    """What a running process shares: built by :func:`runtime`, valid inside its block.

    Attributes:
        settings: the process settings (as given to :func:`runtime`).
        engine: the database engine of ``settings.effective_database_url`` (migrated to
            head), owned by the event loop that entered :func:`runtime`.
        sessionmaker: sessions on ``engine`` (only on that loop: ``WrongEventLoop``).
        cache: the two-layer cache (started unless ``connect_cache=False``).
        reads: the cached per-message reads over ``cache`` and ``sessionmaker``.
        redis: the process's Redis client (``settings.redis_url``, the ``commands`` policy
            of :func:`backend.redis_client.make_redis`), or None without ``redis_url`` or
            with ``redis=False``. Not connected until first used.
    """

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    cache: TwoLayerCache
    reads: CachedReads
    redis: Redis | None


def _redis_client(url: str) -> Redis:
    """The process's Redis client for ``url`` (the one place it is made; lazy connect)."""
    from backend.redis_client import make_redis

    return make_redis(url, role="commands")


@contextlib.asynccontextmanager
async def runtime(
    settings: Settings,
    *,
    pool_size: int | None = None,
    cache_namespace: str | None = None,
    connect_cache: bool = True,
    redis: bool = True,
    pre_ping: bool = True,
) -> AsyncIterator[Runtime]:
    """Migrate the database, open the engine, start the cache, make the reads and Redis.

    In that order; on leaving the block (normally, by an exception or by cancellation) the
    Redis client is closed, then the cache, then the engine is disposed. A failure half-way
    closes what was already opened and propagates.

    Args:
        settings: the process settings (``effective_database_url``, ``db_pool_size``,
            ``redis_url``, cache sizes and TTLs).
        pool_size: PostgreSQL connections (as many again may overflow); default
            ``settings.db_pool_size``. Ignored for SQLite.
        cache_namespace: prefix of the cache's Redis keys and channel; default
            ``settings.redis_namespace`` (a fresh one isolates a run, as the demo does).
        connect_cache: start the cache (connect its Redis layer, subscribe to
            invalidations). False for one-shot commands: the cache then works in process
            memory only.
        redis: make the process's Redis client when ``settings.redis_url`` is set.
        pre_ping: a round trip testing each pooled connection at checkout
            (:func:`backend.db.session.make_engine`); the worker and the listener, the hot
            paths, turn it off.

    Yields:
        The :class:`Runtime`.

    Raises:
        StorageError: the database cannot be reached or migrated; the message names the
            URL without its password and the driver's reason.
    """
    from backend.db.session import describe_url, make_engine, make_sessionmaker, upgrade
    from backend.invalidation import settle
    from behavior_engine.reads import CachedReads

    url = settings.effective_database_url
    await upgrade(url)
    async with contextlib.AsyncExitStack() as stack:
        engine = make_engine(url, pool_size=pool_size or settings.db_pool_size,
                             pre_ping=pre_ping)
        stack.push_async_callback(engine.dispose)
        sessionmaker = make_sessionmaker(engine)
        cache = settings.make_cache(namespace=cache_namespace)
        stack.push_async_callback(cache.close)
        stack.push_async_callback(settle)  # before the cache closes: changes announced
        if connect_cache:
            await cache.start()
        reads = CachedReads(cache, sessionmaker)
        client = None
        if redis and settings.redis_url:
            client = _redis_client(settings.redis_url)
            stack.push_async_callback(client.aclose)
        log.debug("runtime up: database %s, redis %s", describe_url(url),
                  "yes" if client is not None else "no")
        yield Runtime(settings=settings, engine=engine, sessionmaker=sessionmaker,
                      cache=cache, reads=reads, redis=client)

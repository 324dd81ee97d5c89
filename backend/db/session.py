"""Engine and session factory, plus the Alembic upgrade the processes run at start.

An engine belongs to the event loop that made it (or, made outside any loop, to the loop that
first opens a session on it): its asyncpg or aiosqlite connections are bound to that loop, and
driving one from a second loop corrupts memory. :class:`LoopBoundSessionmaker` checks the
running loop before every session and raises :class:`~backend.errors.WrongEventLoop` instead.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from backend.errors import StorageError, WrongEventLoop

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

#: The event loop each engine belongs to (keyed by its sync engine, dropped with it).
_OWNER_LOOPS: weakref.WeakKeyDictionary[Engine, asyncio.AbstractEventLoop] = (
    weakref.WeakKeyDictionary())


def _ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a SQLite file URL (the file itself SQLite creates)."""
    path = url.split("///", 1)[-1]
    if url.startswith("sqlite") and path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


class _StopOnce:
    """An aiosqlite connection's ``stop()`` that queues its stop request once only.

    SQLAlchemy terminates a connection whose statement was cancelled by starting a
    graceful ``close()`` in a shielded task and, when the cancellation reaches it too (as
    anyio's cancel scopes do, e.g. a client leaving an ``/events`` stream), calling
    ``stop()`` (``connectors/asyncio.py`` ``terminate``). aiosqlite 0.22's ``close()`` ends
    with a ``stop()`` of its own and awaits it; with the first stop request already queued
    the worker thread has exited, so that await never returned: a task pending forever on
    each such cancellation, and an event loop that hung when it closed (ci36, a test
    teardown stuck 120 s). A second ``stop()`` here returns None (nothing to await): the
    first request closes the sqlite3 connection and ends the thread.
    """

    def __init__(self, stop: Any) -> None:
        self._stop = stop
        self._called = False

    def __call__(self) -> asyncio.Future[Any] | None:
        if self._called:
            return None
        self._called = True
        result: asyncio.Future[Any] | None = self._stop()
        return result


def _aiosqlite_connect(*args: Any, **kwargs: Any) -> Any:
    """``aiosqlite.connect(*args, **kwargs)`` (not yet awaited) with :class:`_StopOnce`, its
    thread a daemon as SQLAlchemy makes it (a connection left open never holds up exit)."""
    import aiosqlite

    connection = aiosqlite.connect(*args, **kwargs)
    connection.stop = _StopOnce(connection.stop)  # type: ignore[method-assign]
    thread = getattr(connection, "_thread", None)
    if thread is not None:
        thread.daemon = True
    return connection


#: asyncpg's errors that mean the server went away or is not accepting connections yet
#: (SQLSTATE class 57 "operator intervention" and 08 "connection exception"; PostgreSQL,
#: Appendix A).
_ASYNCPG_GONE = frozenset({
    "AdminShutdownError", "CannotConnectNowError", "CrashShutdownError",
    "ConnectionDoesNotExistError", "ConnectionFailureError", "PostgresConnectionError",
    "InterfaceError", "ClientCannotConnectError",
})


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the database could not be
    reached or dropped the connection (a restart, a cut), not that a statement was wrong.

    True for ``OSError`` (connection refused, reset), ``TimeoutError``, SQLAlchemy's
    ``DBAPIError`` with ``connection_invalidated`` or an ``OperationalError`` /
    ``InterfaceError``, and asyncpg's connection and shutdown errors (SQLSTATE classes 08
    and 57). Follows ``__cause__`` / ``__context__`` up to 8 levels.
    """
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, OSError | TimeoutError):
            return True
        if isinstance(seen, DBAPIError) and (
                seen.connection_invalidated or isinstance(seen, OperationalError | InterfaceError)):
            return True
        if type(seen).__module__.startswith("asyncpg") and type(seen).__name__ in _ASYNCPG_GONE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe_url(url: str) -> str:
    """``url`` without its password, safe to log."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False,
                pre_ping: bool = True) -> AsyncEngine:
    """Create an async engine for ``url``.

    SQLite (``sqlite+aiosqlite:///path``) gets WAL, a 5 s busy timeout and foreign keys on,
    so a listener and a worker can share the file, and connections that a cancelled
    statement cannot leave hanging (:class:`_StopOnce`). PostgreSQL (``postgresql+asyncpg://``)
    gets a pool of ``pool_size`` connections. Every statement counts in
    ``botsim_db_queries_total``, by kind (:func:`statement_kind`). A database error's text
    (and ``echo``) never shows the statement's parameters: they hold people's messages and
    names (``hide_parameters``).

    Args:
        url: SQLAlchemy async URL.
        pool_size: PostgreSQL pool size (ignored for SQLite).
        echo: log every statement (debugging).
        pre_ping: test each pooled PostgreSQL connection with a round trip at checkout
            (replacing one the server dropped). The hot paths turn it off (the worker and
            the listener, issue 20: a round trip on every transaction, every turn's two):
            there a dropped connection fails its statement, SQLAlchemy then discards every
            older pooled connection, and what must not be lost is tried again
            (``behavior_engine.records``: a sent message's commit; Telegram retries an
            update the listener answered 500).
    """
    kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        kwargs["connect_args"] = {"timeout": 5}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping)
    engine = create_async_engine(url, **kwargs)
    try:
        _OWNER_LOOPS[engine.sync_engine] = asyncio.get_running_loop()
    except RuntimeError:  # made outside a loop: owned by the loop of its first session
        pass
    from backend import metrics

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _count_query(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        counter = _STATEMENT_COUNTERS.get(statement)
        if counter is None:
            counter = metrics.DB_QUERIES.labels(statement=statement_kind(statement))
            if len(_STATEMENT_COUNTERS) < _STATEMENT_CACHE_SIZE:
                _STATEMENT_COUNTERS[statement] = counter
        counter.inc()

    if url.startswith("sqlite"):

        @event.listens_for(engine.sync_engine, "do_connect")
        def _sqlite_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: Any) -> None:
            cparams["async_creator_fn"] = _aiosqlite_connect  # SQLAlchemy's hook for it

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

    return engine


#: Statement text → its ``botsim_db_queries_total`` child. SQLAlchemy sends the same
#: compiled string for a statement each time, whose hash Python keeps: one dict lookup a
#: statement. Bounded: an engine sending ever new texts (literal values) is classified anew.
_STATEMENT_COUNTERS: dict[str, Any] = {}
_STATEMENT_CACHE_SIZE = 2048
_KIND = re.compile(
    r"^\s*(?:/\*.*?\*/\s*)?(?:(?P<with>WITH)\s+(?:RECURSIVE\s+)?(?P<cte>\w+)"
    r"|(?P<verb>INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(?P<table>\w+)"
    r"|(?P<select>SELECT)\b(?:.*?\bFROM\s+\"?(?P<from>\w+))?)",
    re.IGNORECASE | re.DOTALL)


def statement_kind(statement: str) -> str:
    """The kind of a SQL statement for ``botsim_db_queries_total{statement}``: its verb and
    table (``"INSERT turns"``, ``"UPDATE bot_leases"``, ``"SELECT messages"``, ``"SELECT"``
    without a table), a statement with common table expressions by its first one
    (``"WITH turn_intent"``), else its first word in capitals (``"BEGIN"``, ``"PRAGMA"``)."""
    m = _KIND.match(statement)
    if m is None:
        word = statement.split(None, 1)
        return word[0].upper()[:20] if word else "empty"
    if m["with"]:
        return f"WITH {m['cte']}"
    if m["verb"]:
        return f"{m['verb'].split()[0].upper()} {m['table']}"
    return f"SELECT {m['from']}" if m["from"] else "SELECT"


def owner_loop(engine: AsyncEngine) -> asyncio.AbstractEventLoop | None:
    """The event loop ``engine`` belongs to, or None while no loop has used it yet."""
    return _OWNER_LOOPS.get(engine.sync_engine)


def check_loop(engine: AsyncEngine) -> None:
    """Make sure the running event loop owns ``engine`` (binding it at the engine's first use).

    Does nothing outside a running loop (no I/O can happen there).

    Raises:
        WrongEventLoop: the engine belongs to another loop; nothing was sent on it.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    owner = _OWNER_LOOPS.setdefault(engine.sync_engine, loop)
    if owner is not loop:
        raise WrongEventLoop(describe_url(engine.url.render_as_string(hide_password=False)))


class LoopBoundSessionmaker(async_sessionmaker[AsyncSession]):
    """An ``async_sessionmaker`` that refuses to open a session from a foreign event loop.

    Raises:
        WrongEventLoop: on ``__call__`` (and so ``begin()``) from a loop other than the
            engine's (see :func:`check_loop`), before any connection is touched.
    """

    def __call__(self, **local_kw: Any) -> AsyncSession:
        bind = local_kw.get("bind", self.kw.get("bind"))
        if isinstance(bind, AsyncEngine):
            check_loop(bind)
        return super().__call__(**local_kw)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Session factory for ``engine``; objects stay usable after commit.

    Sessions may be opened only on the event loop that owns ``engine``
    (:class:`LoopBoundSessionmaker`).
    """
    return LoopBoundSessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at botsim's migrations and ``url`` (no ini file needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_sync(url: str, revision: str = "head") -> None:
    """Run Alembic migrations up to ``revision`` (blocking).

    Raises:
        StorageError: when the database cannot be reached or opened (names the URL, without
            its password, and the driver's reason).
    """
    try:
        _ensure_sqlite_dir(url)
        command.upgrade(alembic_config(url), revision)
    except (DBAPIError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise StorageError(f"database {describe_url(url)}: {reason}") from exc


async def upgrade(url: str, revision: str = "head") -> None:
    """Run Alembic migrations up to ``revision`` in a thread (the env uses its own loop)."""
    await asyncio.to_thread(upgrade_sync, url, revision)

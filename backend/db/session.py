"""Engine and session factory, plus the Alembic upgrade the processes run at start."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from backend.errors import StorageError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a SQLite file URL (the file itself SQLite creates)."""
    path = url.split("///", 1)[-1]
    if url.startswith("sqlite") and path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def describe_url(url: str) -> str:
    """``url`` without its password, safe to log."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> AsyncEngine:
    """Create an async engine for ``url``.

    SQLite (``sqlite+aiosqlite:///path``) gets WAL, a 5 s busy timeout and foreign keys on,
    so a listener and a worker can share the file. PostgreSQL (``postgresql+asyncpg://``)
    gets a pool of ``pool_size`` connections. Every statement counts in
    ``botsim_db_queries_total``.

    Args:
        url: SQLAlchemy async URL.
        pool_size: PostgreSQL pool size (ignored for SQLite).
        echo: log every statement (debugging).
    """
    kwargs: dict[str, Any] = {"echo": echo}
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        kwargs["connect_args"] = {"timeout": 5}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    from backend import metrics

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _count_query(*_args: Any) -> None:
        metrics.DB_QUERIES.inc()

    if url.startswith("sqlite"):

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Session factory for ``engine``; objects stay usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


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

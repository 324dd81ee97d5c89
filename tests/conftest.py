"""Shared fixtures: one storage fixture parametrized over SQLite and PostgreSQL; Redis.

The suite runs in parallel (pytest-xdist, ``-n 3``); every worker process keeps to resources
of its own:

- PostgreSQL: a database ``botsim_test_<pid>`` on 127.0.0.1:5432 (user ``postgres``), migrated
  once per worker with Alembic, truncated before each test and dropped at the end (those
  of runs that died first, whose pid no longer runs, are dropped at the next start);
- Redis: a database index of its own on 127.0.0.1:6379, claimed for the whole run with a
  ``SET NX`` key in database 0 (so two runs at once, a developer's and CI's, never share one
  either), flushed (``FLUSHDB``) before each test and released at the end.

When a service is not reachable its tests skip with the reason, unless ``CI`` is set: then
they fail, so CI can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from argon2 import PasswordHasher
from argon2.profiles import CHEAPEST
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher
from backend.db.models import Base
from backend.db.session import make_engine, make_sessionmaker, upgrade_sync
from sandbox.llm_api import LLMSandbox

# python-telegram-bot 22 warns (an error under filterwarnings=error) when a RetryAfter is
# built with int seconds unless the process opts in to timedelta periods; the entry points
# opt in the same way (botsim.bootstrap.configure_process).
os.environ.setdefault("PTB_TIMEDELTA", "true")

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# One database per test session, so concurrent runs (CI and a developer, two terminals) never
# drop each other's tables; dropped again when the session ends.
PG_DB = f"botsim_test_{os.getpid()}"
PG_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{PG_DB}"
REDIS_SERVER = "redis://127.0.0.1:6379"
#: Database indexes a test run may claim (0 holds the claims; Redis has 16 by default).
REDIS_TEST_DBS = range(15, 0, -1)
#: Seconds a claim lives without renewal (renewed by every ``redis_url`` fixture); a run that
#: was killed leaves its index free again after this.
REDIS_CLAIM_TTL_S = 900


def cheap_hasher() -> PasswordHasher:
    """argon2id with its cheapest parameters: tests that hash many passwords stay fast."""
    return PasswordHasher(time_cost=CHEAPEST.time_cost, memory_cost=CHEAPEST.memory_cost,
                          parallelism=CHEAPEST.parallelism, hash_len=CHEAPEST.hash_len,
                          salt_len=CHEAPEST.salt_len)


def service_missing(what: str, why: str) -> NoReturn:
    """Skip on a laptop, fail in CI, naming the missing service and why."""
    msg = f"{what} not reachable: {why}"
    if os.environ.get("CI"):
        pytest.fail(f"{msg} (CI is set, so this fails instead of skipping)")
    pytest.skip(msg)


async def _drop_pg() -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
    finally:
        await conn.close()


async def _prepare_pg() -> str | None:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        # Databases of earlier runs that died (a crash, kill -9) before dropping theirs.
        for (name,) in await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname ~ '^botsim_test_[0-9]+$'"):
            if name != PG_DB and not _alive(int(name.rsplit("_", 1)[1])):
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{PG_DB}"')
    finally:
        await conn.close()
    return None


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (a test run's database is named so)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database URL (created fresh for the session)."""
    problem = asyncio.run(_prepare_pg())
    if problem:
        service_missing("PostgreSQL at 127.0.0.1:5432", problem)
    upgrade_sync(PG_URL)
    yield PG_URL
    asyncio.run(_drop_pg())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_sync(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """The URL of an empty, migrated database: SQLite file or PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``db_url``; PostgreSQL tables are emptied first."""
    eng = make_engine(db_url)
    if eng.dialect.name == "postgresql":
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        async with eng.begin() as conn:
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    yield eng
    await eng.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on the test database."""
    return make_sessionmaker(engine)


@pytest.fixture
def cipher() -> TokenCipher:
    """A token cipher with a key made for this test."""
    return TokenCipher(Fernet.generate_key().decode())


def _claim_key(db: int) -> str:
    return f"botsim-tests:claim:db{db}"


@pytest.fixture(scope="session")
def redis_test_db() -> Iterator[int]:
    """A Redis database index claimed by this worker process for the run (see the module).

    Skips (fails in CI) when Redis is not reachable or every index is taken.
    """
    import redis

    owner = f"{os.getpid()}"
    client = redis.Redis.from_url(f"{REDIS_SERVER}/0", socket_connect_timeout=2,
                                  socket_timeout=2)
    try:
        try:
            db = next((d for d in REDIS_TEST_DBS
                       if client.set(_claim_key(d), owner, nx=True, ex=REDIS_CLAIM_TTL_S)),
                      None)
        except redis.RedisError as exc:
            service_missing("Redis at 127.0.0.1:6379", f"{type(exc).__name__}: {exc}")
        if db is None:
            service_missing("a free Redis test database",
                            f"indexes {min(REDIS_TEST_DBS)}-{max(REDIS_TEST_DBS)} are all "
                            "claimed by other test runs")
        yield db
        with contextlib.suppress(redis.RedisError):
            if client.get(_claim_key(db)) == owner.encode():
                client.delete(_claim_key(db))
    finally:
        client.close()


@pytest.fixture
def redis_url(redis_test_db: int) -> str:
    """The URL of this worker's Redis database on 127.0.0.1:6379, flushed for this test.

    Pub/sub channels are not per database: tests that publish use their own namespace.
    """
    import redis

    url = f"{REDIS_SERVER}/{redis_test_db}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.flushdb()
        claims = redis.Redis.from_url(f"{REDIS_SERVER}/0", socket_connect_timeout=2,
                                      socket_timeout=2)
        with claims:
            claims.expire(_claim_key(redis_test_db), REDIS_CLAIM_TTL_S)
    except redis.RedisError as exc:
        service_missing("Redis at 127.0.0.1:6379", f"{type(exc).__name__}: {exc}")
    finally:
        client.close()
    return url


@pytest.fixture
async def llm() -> AsyncIterator[LLMSandbox]:
    """The sandbox LLM server on a free 127.0.0.1 port (stopped after the test)."""
    sb = LLMSandbox()
    await sb.start()
    try:
        yield sb
    finally:
        await sb.stop()


#: The share of the other tests over which the end-to-end tests are spread (the last ones
#: are short and busy, so the run does not end on a test that waits).
E2E_SPREAD = 0.7


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Hand the end-to-end tests out spread through the run, not all at its start.

    pytest-xdist hands out tests in this order (after the ``xdist_group`` groups, which
    ``--dist loadgroup`` puts first). The end-to-end tests mostly wait on a chat's real-time
    rhythm: handed out first, four of them at once left the two cores ~30 % idle for the
    run's first two minutes (2026-12-06, vmstat), while the busy unit and integration tests
    waited for their turn. Here each ungrouped end-to-end test goes in at a module boundary
    of the other tests, evenly over their first :data:`E2E_SPREAD` and taking the modules in
    turn, so one waits while others compute. The type check still goes first (its CPU,
    when mypy's cache is cold).
    """
    def first(item: pytest.Item) -> bool:
        return item.nodeid.startswith("tests/unit/test_typecheck.py")

    def spread(item: pytest.Item) -> bool:
        return (item.get_closest_marker("e2e") is not None
                and item.get_closest_marker("xdist_group") is None and not first(item))

    by_module: dict[Path, list[pytest.Item]] = {}
    for item in items:
        if spread(item):
            by_module.setdefault(item.path, []).append(item)
    # round robin over the modules: one module's tests (e.g. test_loop's demos) never
    # wait side by side
    waiting = [i for batch in itertools.zip_longest(*by_module.values()) for i in batch
               if i is not None]
    rest = [i for i in items if not spread(i) and not first(i)]
    out = [i for i in items if first(i)]
    step = len(rest) * E2E_SPREAD / max(len(waiting), 1)
    n = 0
    for k, item in enumerate(rest):
        if k == 0 or item.path != rest[k - 1].path:  # a module boundary
            while n < len(waiting) and n * step <= k:
                out.append(waiting[n])
                n += 1
        out.append(item)
    out.extend(waiting[n:])
    assert len(out) == len(items)
    items[:] = out

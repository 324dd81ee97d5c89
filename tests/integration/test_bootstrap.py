"""The process bootstrap (botsim.bootstrap): one runtime, opened in order, closed in reverse."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.cache import TwoLayerCache
from backend.db import session as db_session
from backend.errors import StorageError
from backend.settings import Settings
from backend.stores import health
from backend.stores import settings as settings_store
from botsim import bootstrap
from botsim.bootstrap import runtime

CloseLog = list[str]


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> CloseLog:
    """The names of what the runtime closes, in the order it closes them."""
    order: CloseLog = []
    # The runtime's own engine and Redis client (not Alembic's engine, not the cache's clients).
    owned: list[object] = []

    def keep(factory: Callable[..., Any]) -> Callable[..., Any]:
        def made(*args: Any, **kwargs: Any) -> Any:
            owned.append(factory(*args, **kwargs))
            return owned[-1]
        return made

    monkeypatch.setattr(db_session, "make_engine", keep(db_session.make_engine))
    monkeypatch.setattr(bootstrap, "_redis_client", keep(bootstrap._redis_client))

    def spy(cls: type, name: str, label: str) -> None:
        original: Callable[..., Coroutine[Any, Any, Any]] = getattr(cls, name)

        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if label == "cache" or any(self is o for o in owned):
                order.append(label)
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    spy(AsyncEngine, "dispose", "engine")
    spy(TwoLayerCache, "close", "cache")
    spy(Redis, "aclose", "redis")
    return order


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(data_dir=tmp_path, **{"redis_url": None, **kw})  # type: ignore[arg-type]


async def test_sqlite_runtime_works_and_closes_in_reverse(tmp_path: Path, closed: CloseLog,
                                                          ) -> None:
    settings = _settings(tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    async with runtime(settings) as rt:
        assert rt.settings is settings
        assert rt.redis is None  # no redis_url
        assert rt.reads.sessionmaker is rt.sessionmaker and rt.reads.cache is rt.cache
        async with rt.sessionmaker() as session:  # migrated: the tables are there
            await health.ping(session)
            stored = await settings_store.get_settings(session)
        assert await rt.reads.settings() == stored
        assert closed == []
    assert closed == ["cache", "engine"]
    assert (tmp_path / "b.db").exists()


async def test_redis_client_is_made_once_and_closed_first(tmp_path: Path, closed: CloseLog,
                                                          redis_url: str) -> None:
    settings = _settings(tmp_path, redis_url=redis_url)
    async with runtime(settings, redis=True) as rt:
        assert rt.redis is not None
        assert await rt.redis.ping()
        assert rt.cache.redis_up  # started: L2 and invalidations in use
    assert closed == ["redis", "cache", "engine"]

    closed.clear()
    async with runtime(settings, redis=False, connect_cache=False) as rt:
        assert rt.redis is None
        assert not rt.cache.redis_up  # one-shot commands keep the cache in memory
    assert closed == ["cache", "engine"]


async def test_an_error_in_the_block_still_closes_everything(tmp_path: Path, closed: CloseLog,
                                                             ) -> None:
    settings = _settings(tmp_path, redis_url="redis://127.0.0.1:1/0")  # never connected
    with pytest.raises(RuntimeError, match="boom"):
        async with runtime(settings, connect_cache=False) as rt:
            assert rt.redis is not None
            raise RuntimeError("boom")
    assert closed == ["redis", "cache", "engine"]


async def test_cancellation_closes_everything(tmp_path: Path, closed: CloseLog) -> None:
    entered = asyncio.Event()

    async def serve() -> None:
        async with runtime(_settings(tmp_path)):
            entered.set()
            await asyncio.Event().wait()  # a process serving until stopped

    task = asyncio.create_task(serve())
    await asyncio.wait_for(entered.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == ["cache", "engine"]


async def test_unreachable_database_names_it_without_the_password(
        tmp_path: Path, closed: CloseLog) -> None:
    url = "postgresql+asyncpg://botsim:hunter2-secret@127.0.0.1:1/botsim"
    with pytest.raises(StorageError) as err:
        async with runtime(_settings(tmp_path, database_url=url)):
            pytest.fail("the block must not run without a database")
    message = str(err.value)
    assert "127.0.0.1:1/botsim" in message and "botsim:***@" in message
    assert "hunter2-secret" not in message
    assert closed == []  # nothing was opened


def test_logging_is_configured_once_per_process(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(bootstrap, "_logging_configured", False)
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: calls.append(kw))
    httpx_log = logging.getLogger("httpx")
    before = httpx_log.level
    try:
        assert bootstrap.configure_logging(_settings(tmp_path, log_level="DEBUG"), quiet=True)
        assert not bootstrap.configure_logging(_settings(tmp_path, log_level="DEBUG"))
        assert [c["level"] for c in calls] == [logging.WARNING]  # quiet wins over DEBUG
        assert httpx_log.level == logging.WARNING
    finally:
        httpx_log.setLevel(before)

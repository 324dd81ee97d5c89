"""An engine belongs to the event loop that made it; nothing drives it from another loop.

A test once loaded the admin API's spec with ``schemathesis.openapi.from_asgi``, whose
TestClient ran the app's lifespan on a loop of its own in a worker thread; the lifespan's
session purge then wrote through the test's asyncpg pool from that second loop, and the
process died with a segmentation fault. These tests pin the fix on both databases: the purge
runs on the serving loop while requests are served, a lifespan started on a foreign loop
refuses before touching the engine, and so does every session opened from a foreign loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.api.app import create_app
from backend.db.models import ApiSession
from backend.db.session import make_engine, make_sessionmaker, owner_loop
from backend.db.types import utcnow
from backend.errors import WrongEventLoop
from backend.settings import Settings
from backend.stores import users as user_store
from tests.conftest import cheap_hasher as _hasher

SECRET = "e" * 40


async def _expired_sessions(sm: async_sessionmaker[AsyncSession]) -> int:
    async with sm() as s:
        return int((await s.execute(select(func.count()).select_from(ApiSession)
                                    .where(ApiSession.expires_at <= utcnow()))).scalar_one())


async def test_session_purge_runs_while_requests_are_served(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    hasher = _hasher()
    async with sessionmaker() as s, s.begin():
        user = await user_store.create_user(s, username="ops", role="admin",
                                            password_hash=hasher.hash("ops password 1"))
        _, token = await user_store.create_api_token(s, user_id=user.id, name="t",
                                                     secret_key=SECRET)
        await user_store.create_session(s, user_id=user.id, secret_key=SECRET, ttl_s=3600.0)
    app = create_app(Settings(data_dir=tmp_path, secret_key=SECRET, redis_url=None),
                     sessionmaker, hasher=hasher, session_purge_every_s=0.01)
    bearer = {"Authorization": f"Bearer {token}"}
    statuses: list[int] = []
    serving = True

    async def serve(client: httpx.AsyncClient) -> None:
        while serving:
            for url in ("/api/v1/auth/me", "/health/ready", "/api/v1/users"):
                statuses.append((await client.get(url, headers=bearer)).status_code)

    transport = httpx.ASGITransport(app=app)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url="http://t") as client):
        servers = [asyncio.create_task(serve(client)) for _ in range(4)]
        try:
            for _ in range(5):  # expired sessions keep arriving; each batch is purged
                async with sessionmaker() as s, s.begin():
                    for _ in range(3):
                        await user_store.create_session(s, user_id=user.id, secret_key=SECRET,
                                                        ttl_s=-60.0)
                for _ in range(200):
                    if await _expired_sessions(sessionmaker) == 0:
                        break
                    await asyncio.sleep(0.01)
                assert await _expired_sessions(sessionmaker) == 0, "the purge stopped"
        finally:
            serving = False
            await asyncio.gather(*servers)
    assert len(statuses) >= 3 and set(statuses) == {200}, sorted(set(statuses))
    async with sessionmaker() as s:  # the live session was never purged
        assert (await s.execute(select(func.count()).select_from(ApiSession))).scalar_one() == 1


async def test_a_lifespan_on_a_foreign_loop_refuses_before_touching_the_engine(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    async with sessionmaker() as s:  # the engine is in use on this (the test's) loop
        await s.execute(text("SELECT 1"))
    app = create_app(Settings(data_dir=tmp_path, secret_key=SECRET, redis_url=None),
                     sessionmaker, hasher=_hasher(), session_purge_every_s=0.01)

    async def run_lifespan() -> str:
        try:
            async with app.router.lifespan_context(app):
                await asyncio.sleep(0.2)  # the old purge task wrote here, from this loop
        except WrongEventLoop as exc:
            return str(exc)
        return "started"

    # As schemathesis' from_asgi (Starlette's TestClient) did: another thread, another loop.
    answer = await asyncio.to_thread(asyncio.run, run_lifespan())
    assert "event loop other than the one that owns its engine" in answer, answer
    assert "password" not in answer
    assert engine.sync_engine.pool.checkedout() == 0
    async with sessionmaker() as s:  # and the engine still works on its own loop
        assert (await s.execute(text("SELECT 1"))).scalar_one() == 1


async def test_a_session_from_a_foreign_loop_is_refused(
    sessionmaker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    async with sessionmaker() as s:
        await s.execute(text("SELECT 1"))
    assert owner_loop(engine) is asyncio.get_running_loop()

    async def elsewhere() -> None:
        async with sessionmaker() as s:
            await s.execute(text("SELECT 1"))

    with pytest.raises(WrongEventLoop):
        await asyncio.to_thread(asyncio.run, elsewhere())
    assert engine.sync_engine.pool.checkedout() == 0


def test_an_engine_made_outside_a_loop_belongs_to_its_first_loop(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    sm = make_sessionmaker(engine)
    assert owner_loop(engine) is None

    async def use() -> int:
        async with sm() as s:
            return int((await s.execute(text("SELECT 7"))).scalar_one())

    async def first() -> int:
        try:
            return await use()
        finally:
            await engine.dispose()

    assert asyncio.run(first()) == 7
    with pytest.raises(WrongEventLoop, match=r"x\.db"):
        asyncio.run(use())

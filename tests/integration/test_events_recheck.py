"""An open ``GET /api/v1/events`` stream re-checks its caller (issue 18, item 5).

Every ``EVENTS_AUTH_S`` the stream calls ``current_principal`` again with the request's own
credentials: a session logged out or expired, or an API token revoked, ends the stream
within seconds (here the period is 0.1 s). Before, an open stream went on delivering to a
session that had logged out. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from backend.api import routes_ops
from backend.api.security import SESSION_COOKIE
from backend.db.models import ApiSession
from backend.db.types import utcnow
from backend.stores import users as user_store
from tests.integration.test_api_events import StreamingTransport
from tests.integration.test_api_ops import API, Env, Sessions, make_env

SECRET = "t" * 40
#: The stream must end within this long after the credentials stop being valid.
END_WITHIN_S = 3.0


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    monkeypatch.setattr(routes_ops, "EVENTS_POLL_S", 0.02)
    monkeypatch.setattr(routes_ops, "EVENTS_AUTH_S", 0.1)
    async for e in make_env(tmp_path, sessionmaker):
        yield e


class Watch:
    """Reads a streamed response in a task: its comments, and whether it has ended."""

    def __init__(self, response: httpx.Response) -> None:
        self.comments: list[str] = []
        self.ended = asyncio.Event()
        self.task = asyncio.create_task(self._read(response))

    async def _read(self, response: httpx.Response) -> None:
        try:
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
        finally:
            self.ended.set()

    async def still_open(self) -> None:
        """The stream goes on for several check periods (the check lets the caller in)."""
        await asyncio.sleep(0.5)
        assert not self.ended.is_set(), f"the stream ended: {self.comments}"
        assert "connected" in self.comments

    async def ends(self) -> list[str]:
        """Waits for the end (failing after :data:`END_WITHIN_S`); the comments."""
        async with asyncio.timeout(END_WITHIN_S):
            await self.ended.wait()
        return self.comments

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def watching(client: httpx.AsyncClient, **kw: Any) -> AsyncIterator[Watch]:
    async with client.stream("GET", f"{API}/events", **kw) as r:
        assert r.status_code == 200
        watch = Watch(r)
        try:
            yield watch
        finally:
            await watch.stop()


async def test_logout_ends_an_open_stream(env: Env) -> None:
    transport = StreamingTransport(env.app)
    viewer = await env.login("vera", transport)
    async with watching(viewer) as watch:
        await watch.still_open()
        # The same session logs out from another tab (same cookie, its CSRF token).
        other = env.client()
        other.cookies.set(SESSION_COOKIE, viewer.cookies[SESSION_COOKIE])
        out = await other.post(f"{API}/auth/logout",
                               headers={"X-CSRF-Token": viewer.headers["X-CSRF-Token"]})
        assert out.status_code == 200, out.text
        comments = await watch.ends()
    assert any("credentials no longer valid (401" in c for c in comments), comments
    assert all(t.done() for t in transport.tasks)


async def test_expired_session_ends_an_open_stream(env: Env) -> None:
    transport = StreamingTransport(env.app)
    viewer = await env.login("vera", transport)
    async with watching(viewer) as watch:
        await watch.still_open()
        async with env.sm() as s, s.begin():
            await s.execute(update(ApiSession).values(
                expires_at=utcnow() - timedelta(seconds=1)))
        comments = await watch.ends()
    assert any("credentials no longer valid (401" in c for c in comments), comments


async def test_revoked_token_ends_an_open_stream(env: Env) -> None:
    async with env.sm() as s, s.begin():
        vera = await user_store.get_by_username(s, username="vera")
        assert vera is not None
        row, token = await user_store.create_api_token(s, user_id=vera.id, name="stream",
                                                       secret_key=env.state.secret_key)
        token_id = row.id
    transport = StreamingTransport(env.app)
    client = env.client(transport)
    headers = {"Authorization": f"Bearer {token}"}
    async with watching(client, headers=headers) as watch:
        await watch.still_open()
        async with env.sm() as s, s.begin():
            assert await user_store.revoke_api_token(s, token_id=token_id)
        comments = await watch.ends()
    assert any("credentials no longer valid (401" in c for c in comments), comments
    again = await env.client().get(f"{API}/events", headers=headers)
    assert again.status_code == 401


async def test_a_valid_caller_keeps_its_stream(env: Env) -> None:
    """Control: with nothing revoked the checks pass and the stream stays open."""
    transport = StreamingTransport(env.app)
    viewer = await env.login("vera", transport)
    async with watching(viewer) as watch:
        await watch.still_open()
        await watch.still_open()

"""Proxy trust is explicit (issue 18, item 4).

``BOTSIM_TRUSTED_PROXIES`` names the reverse proxies whose ``X-Forwarded-For`` is
believed; by default none is. Before, uvicorn's default (``proxy_headers`` on, trusting
127.0.0.1) let any process on the host pick its own address for the failed-login limits
by sending ``X-Forwarded-For``. Checked here: the setting's parsing, the client-address
function (rightmost untrusted entry), a real uvicorn server configured from the setting,
``botsim api``'s uvicorn options, and the login limit seen through a proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import Headers

from backend.api import app as api_app
from backend.api.app import create_app
from backend.api.security import client_address
from backend.crypto import resolve_secrets
from backend.errors import ConfigError
from backend.settings import Settings, load_settings
from backend.stores import users as store
from tests.conftest import cheap_hasher

SECRET = "p" * 40
LOGIN = "/api/v1/auth/login"


def _request(peer: str | None, forwarded: Sequence[str] = ()) -> Request:
    headers = Headers(raw=[(b"x-forwarded-for", f.encode("latin-1")) for f in forwarded])
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "query_string": b"",
                             "headers": headers.raw,
                             "client": None if peer is None else (peer, 40000)}
    return Request(scope)


# --- the setting ------------------------------------------------------------------------


def test_no_proxy_is_trusted_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOTSIM_TRUSTED_PROXIES", raising=False)
    settings = load_settings()
    assert settings.trusted_proxies == []
    assert settings.proxy_options() == {"proxy_headers": False}


def test_trusted_proxies_are_parsed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOTSIM_TRUSTED_PROXIES", "10.0.0.5, 172.18.0.0/16 ::1")
    settings = load_settings()
    assert settings.trusted_proxies == ["10.0.0.5/32", "172.18.0.0/16", "::1/128"]
    assert settings.proxy_options() == {
        "proxy_headers": True, "forwarded_allow_ips": ["10.0.0.5/32", "172.18.0.0/16",
                                                       "::1/128"]}
    monkeypatch.setenv("BOTSIM_TRUSTED_PROXIES", '["192.0.2.1"]')
    assert load_settings().trusted_proxies == ["192.0.2.1/32"]
    for bad, says in (("10.0.0.1,proxy.local", "entry 2 'proxy.local'"),
                      ("10.0.0.300", "entry 1 '10.0.0.300'"),
                      ("*", "entry 1 '*'"),
                      (",".join(["10.0.0.1"] * 65), "at most 64 entries")):
        monkeypatch.setenv("BOTSIM_TRUSTED_PROXIES", bad)
        with pytest.raises(ConfigError, match="BOTSIM_TRUSTED_PROXIES") as caught:
            load_settings()
        assert says in str(caught.value)


# --- the client address -----------------------------------------------------------------


def test_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    assert client_address(_request("127.0.0.1", ["1.2.3.4"])) == "127.0.0.1"
    assert client_address(_request("127.0.0.1", ["1.2.3.4"]), []) == "127.0.0.1"
    assert client_address(_request(None)) == "unknown"


def test_forwarded_for_is_ignored_from_an_untrusted_peer() -> None:
    req = _request("198.51.100.9", ["10.0.0.5"])
    assert client_address(req, ["10.0.0.5/32"]) == "198.51.100.9"


def test_the_rightmost_untrusted_entry_is_the_client() -> None:
    trusted = ["10.0.0.0/8"]
    # The client wrote "6.6.6.6" itself; the proxy appended the address it saw.
    assert client_address(_request("10.0.0.5", ["6.6.6.6, 203.0.113.7"]), trusted) \
        == "203.0.113.7"
    # Two proxies: the inner one's entry is skipped.
    assert client_address(_request("10.0.0.5", ["6.6.6.6, 203.0.113.7, 10.1.1.1"]),
                          trusted) == "203.0.113.7"
    # Several headers count as one list.
    assert client_address(_request("10.0.0.5", ["6.6.6.6", "203.0.113.8"]), trusted) \
        == "203.0.113.8"
    # Ports, brackets and IPv4-mapped IPv6 are taken apart.
    assert client_address(_request("10.0.0.5", ["203.0.113.9:5555"]), trusted) == "203.0.113.9"
    assert client_address(_request("10.0.0.5", ["[2001:db8::1]:443"]), trusted) == "2001:db8::1"
    assert client_address(_request("::ffff:10.0.0.5", ["203.0.113.10"]), trusted) \
        == "203.0.113.10"
    # Every hop trusted: the leftmost.
    assert client_address(_request("10.0.0.5", ["10.2.2.2, 10.3.3.3"]), trusted) == "10.2.2.2"
    # No header: the proxy itself.
    assert client_address(_request("10.0.0.5"), trusted) == "10.0.0.5"


def test_garbage_stops_at_the_last_trusted_hop() -> None:
    trusted = ["10.0.0.0/8"]
    assert client_address(_request("10.0.0.5", ["203.0.113.7, nonsense"]), trusted) \
        == "10.0.0.5"
    assert client_address(_request("10.0.0.5", ["1.1.1.1, bad, 10.9.9.9"]), trusted) \
        == "10.9.9.9"
    assert client_address(_request("10.0.0.5", [""]), trusted) == "10.0.0.5"
    many = ", ".join(["10.4.4.4"] * 10_000)
    assert client_address(_request("10.0.0.5", [many]), trusted) == "10.4.4.4"


# --- a real uvicorn server --------------------------------------------------------------


def _echo_app(trusted: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/who")
    async def who(request: Request) -> dict[str, str | None]:
        return {"peer": request.client.host if request.client else None,
                "address": client_address(request, trusted)}

    return app


class _Quiet(uvicorn.Server):
    """A uvicorn server that leaves the test process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_echo_app(settings.trusted_proxies), log_level="warning",
                            lifespan="off", **settings.proxy_options())
    server = _Quiet(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def test_a_local_client_cannot_pick_its_address_by_default(tmp_path: Path) -> None:
    async with _serving(Settings(data_dir=tmp_path)) as url, httpx.AsyncClient() as client:
        seen = (await client.get(f"{url}/who", headers={"X-Forwarded-For": "1.2.3.4"})).json()
    # uvicorn's own default (proxy_headers from 127.0.0.1) made both "1.2.3.4".
    assert seen == {"peer": "127.0.0.1", "address": "127.0.0.1"}


async def test_a_trusted_proxy_names_the_client(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, trusted_proxies=["127.0.0.1"])
    async with _serving(settings) as url, httpx.AsyncClient() as client:
        seen = (await client.get(f"{url}/who",
                                 headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7"})).json()
    assert seen == {"peer": "203.0.113.7", "address": "203.0.113.7"}


async def test_botsim_api_serves_with_the_settings_proxy_options(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[uvicorn.Config] = []

    async def fake_serve(self: uvicorn.Server, sockets: Any = None) -> None:
        seen.append(self.config)

    monkeypatch.setattr(uvicorn.Server, "serve", fake_serve)
    for trusted, want in (([], (False, None)), (["10.0.0.0/8"], (True, ["10.0.0.0/8"]))):
        settings = Settings(data_dir=tmp_path, secret_key=SECRET, redis_url=None,
                            trusted_proxies=trusted)
        await api_app.serve(settings, resolve_secrets(settings))
        config = seen[-1]
        assert config.proxy_headers is want[0]
        if want[1] is not None:
            assert config.forwarded_allow_ips == want[1]


# --- the login limit through a proxy ----------------------------------------------------


async def test_login_limit_counts_the_address_the_proxy_reports(
        tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    hasher = cheap_hasher()
    async with sessionmaker() as s, s.begin():
        await store.create_user(s, username="alice", role="admin",
                                password_hash=hasher.hash("right password"))
    for trusted in ([], ["10.0.0.0/8"]):
        settings = Settings(data_dir=tmp_path, secret_key=SECRET, trusted_proxies=trusted)
        app = create_app(settings, sessionmaker, hasher=hasher)
        transport = httpx.ASGITransport(app=app, client=("10.0.0.5", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for i in range(5):  # a client rotating the address it claims
                r = await c.post(LOGIN, json={"username": "alice", "password": "guess"},
                                 headers={"X-Forwarded-For": f"203.0.113.{i}"})
                assert r.status_code == 401
            r = await c.post(LOGIN, json={"username": "alice", "password": "guess"},
                             headers={"X-Forwarded-For": "203.0.113.99"})
            # Untrusted: every claim is the same peer, refused after 5. Trusted: six
            # different clients, none refused.
            assert r.status_code == (429 if not trusted else 401), (trusted, r.text)

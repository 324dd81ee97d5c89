"""Failed-login limits that cannot lock the owner out (issue 18, item 3).

Before, 5 failures on a username from any addresses refused even the right password, for
15 minutes, to everyone: anyone knowing a username locked its owner out. Now only an
address is refused (per username and address, and per address); a username failing from
many addresses only slows attempts on it down, and the right password from an address that
has not been failing logs in. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.api.app import create_app
from backend.api.security import LoginThrottle
from backend.settings import Settings
from backend.stores import users as store
from tests.conftest import cheap_hasher

LOGIN = "/api/v1/auth/login"
SECRET = "l" * 40
PASSWORD = "correct horse battery"
#: The slowdown in these tests: 0.05 s doubling, at most 0.2 s.
FIRST_DELAY_S, MAX_DELAY_S = 0.05, 0.2


class RecordingThrottle(LoginThrottle):
    """The throttle, keeping each slowdown it decided (wall-clock timing is flaky under
    load; the route's sleep itself is checked with a lower bound only)."""

    def __init__(self, **kw: float) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.delays: list[tuple[str, float]] = []

    def delay(self, username: str, *, now: float | None = None) -> float:
        found = super().delay(username, now=now)
        self.delays.append((username, found))
        return found


class Site:
    """An app, and clients that each come from an address of their own."""

    def __init__(self, app: FastAPI, throttle: RecordingThrottle) -> None:
        self.app = app
        self.throttle = throttle
        self.clients: list[httpx.AsyncClient] = []

    def from_address(self, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 50000))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        self.clients.append(client)
        return client


@pytest.fixture
async def site(tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]
               ) -> AsyncIterator[Site]:
    hasher = cheap_hasher()
    async with sessionmaker() as session, session.begin():
        await store.create_user(session, username="alice", role="admin",
                                password_hash=hasher.hash(PASSWORD))
    throttle = RecordingThrottle(user_delay_s=FIRST_DELAY_S, max_delay_s=MAX_DELAY_S)
    app = create_app(Settings(data_dir=tmp_path, secret_key=SECRET), sessionmaker,
                     hasher=hasher, throttle=throttle)
    s = Site(app, throttle)
    yield s
    for c in s.clients:
        await c.aclose()


async def _login(client: httpx.AsyncClient, password: str, username: str = "alice"
                 ) -> httpx.Response:
    return await client.post(LOGIN, json={"username": username, "password": password})


async def test_the_owner_logs_in_while_the_username_is_under_attack(site: Site) -> None:
    # 30 guesses from 10 addresses: far more than the old per-username limit of 5.
    for n in range(10):
        attacker = site.from_address(f"203.0.113.{n + 1}")
        for _ in range(3):
            assert (await _login(attacker, "guess")).status_code == 401
    owner = site.from_address("198.51.100.7")
    started = time.monotonic()
    r = await _login(owner, PASSWORD)
    assert r.status_code == 200, r.text  # the old throttle answered 429 here
    assert time.monotonic() - started >= MAX_DELAY_S * 0.9  # slowed down, not refused


async def test_an_address_failing_on_the_username_is_refused(site: Site) -> None:
    attacker = site.from_address("203.0.113.9")
    for _ in range(5):
        assert (await _login(attacker, "guess")).status_code == 401
    r = await _login(attacker, PASSWORD)  # even the right password, from there
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 900
    assert "address" in r.json()["detail"]
    assert (await _login(attacker, "guess", username="ALICE")).status_code == 429
    assert (await _login(site.from_address("198.51.100.7"), PASSWORD)).status_code == 200


async def test_an_address_trying_many_usernames_is_refused(site: Site) -> None:
    spray = site.from_address("203.0.113.10")
    for i in range(20):
        assert (await _login(spray, "guess", username=f"user{i}")).status_code == 401
    assert (await _login(spray, PASSWORD)).status_code == 429
    assert (await _login(site.from_address("198.51.100.8"), PASSWORD)).status_code == 200


async def test_attempts_on_a_username_under_attack_are_slowed_down(site: Site) -> None:
    for n in range(6):  # from 6 addresses: none is refused
        assert (await _login(site.from_address(f"203.0.113.{n + 20}"), "guess")
                ).status_code == 401
    started = time.monotonic()
    assert (await _login(site.from_address("203.0.113.40"), "guess")).status_code == 401
    assert time.monotonic() - started >= 2 * FIRST_DELAY_S * 0.9
    # Another username is not slowed down by alice's failures.
    assert (await _login(site.from_address("203.0.113.41"), "x", username="bob")
            ).status_code == 401
    assert site.throttle.delays == [
        *[("alice", 0.0)] * 5, ("alice", FIRST_DELAY_S), ("alice", 2 * FIRST_DELAY_S),
        ("bob", 0.0)]


def test_the_slowdown_grows_and_is_bounded() -> None:
    t = LoginThrottle(user_free=2, user_delay_s=0.25, max_delay_s=4.0, window_s=60)
    delays = []
    for i in range(12):
        delays.append(t.delay("alice", now=i))
        t.begin("alice", f"10.0.0.{i}", now=i)
    assert delays[:3] == [0.0, 0.0, 0.25]
    assert delays[3:7] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 4.0
    assert t.delay("alice", now=100) == 0.0  # the window slid past every failure
    assert all(t.retry_after("alice", f"10.0.0.{i}", now=11) == 0 for i in range(12))


def test_success_forgets_the_address_but_not_the_attack() -> None:
    t = LoginThrottle(per_pair=2, per_address=10, user_free=1, window_s=60)
    t.begin("a", "1.2.3.4", now=0)
    t.begin("a", "1.2.3.4", now=10)
    assert t.retry_after("a", "1.2.3.4", now=20) == 40
    assert t.retry_after("a", "1.2.3.4", now=60.5) == 0  # the first failure left the window
    t.begin("a", "5.6.7.8", now=61)
    started = t.begin("a", "1.2.3.4", now=62)
    t.succeeded("a", "1.2.3.4", started)
    assert t.retry_after("a", "1.2.3.4", now=63) == 0
    assert t.delay("a", now=63) > 0  # the other address's failure still counts


def test_memory_is_bounded() -> None:
    t = LoginThrottle(max_keys=100)
    for i in range(1000):
        t.begin(f"user{i}", f"10.0.{i // 256}.{i % 256}", now=i)
    assert len(t._hits) <= 100
    for _ in range(1000):
        t.begin("alice", "10.9.9.9", now=2000)
    assert all(len(hits) <= LoginThrottle.KEEP_PER_KEY for hits in t._hits.values())


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LoginThrottle(per_pair=0)
    with pytest.raises(ValueError, match="window_s"):
        LoginThrottle(window_s=0)

"""Admin API authentication: login, cookie sessions, CSRF, roles, API tokens, throttling,
the ``botsim admin create-user`` command and the production secret-key rule.

Runs on SQLite and PostgreSQL (the ``sessionmaker`` fixture). Most tests hash with argon2's
cheapest parameters to stay fast; the password-shape and rehash tests use the real profile.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from argon2.profiles import CHEAPEST
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.api.app import create_app
from backend.api.security import SESSION_COOKIE, LoginThrottle, make_hasher
from backend.db.models import ApiSession, ApiToken, User
from backend.db.session import make_engine, make_sessionmaker, upgrade_sync
from backend.db.types import utcnow
from backend.errors import ConfigError
from backend.settings import Settings
from backend.stores import users as store
from botsim.cli import main as cli_main

SECRET = "k" * 40
LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
LOGOUT = "/api/v1/auth/logout"
TOKENS = "/api/v1/auth/tokens"
USERS = "/api/v1/users"


class CountingHasher(PasswordHasher):
    """argon2's cheapest parameters, counting verifications."""

    def __init__(self) -> None:
        super().__init__(time_cost=CHEAPEST.time_cost, memory_cost=CHEAPEST.memory_cost,
                         parallelism=CHEAPEST.parallelism, hash_len=CHEAPEST.hash_len,
                         salt_len=CHEAPEST.salt_len)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


def _settings(tmp_path: Path, **kw: object) -> Settings:
    base: dict[str, object] = {"data_dir": tmp_path, "secret_key": SECRET}
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


async def _no_hash_in_body(response: httpx.Response) -> None:
    body = (await response.aread()).decode(errors="replace")
    assert "$argon2" not in body, f"a password hash leaked from {response.request.url}"


ClientFactory = Callable[[], httpx.AsyncClient]


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
async def new_client(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession], hasher: CountingHasher
) -> AsyncIterator[ClientFactory]:
    """Clients (each with its own cookie jar) on one app; every answer is checked for hashes."""
    app = create_app(_settings(tmp_path), sessionmaker, hasher=hasher)
    clients: list[httpx.AsyncClient] = []

    def make() -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                   base_url="http://testserver",
                                   event_hooks={"response": [_no_hash_in_body]})
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.aclose()


async def _add_user(sm: async_sessionmaker[AsyncSession], username: str, password: str,
                    role: str = "admin", hasher: PasswordHasher | None = None) -> None:
    async with sm() as session, session.begin():
        await store.create_user(session, username=username, role=role,
                                password_hash=(hasher or CountingHasher()).hash(password))


async def _login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post(LOGIN, json={"username": username, "password": password})


async def test_login_sets_a_strict_httponly_cookie_stored_as_hmac(
    new_client: ClientFactory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _add_user(sessionmaker, "alice", "correct horse battery")
    client = new_client()
    r = await _login(client, "alice", "correct horse battery")
    assert r.status_code == 200
    body = r.json()
    assert body["username"] == "alice" and body["role"] == "admin" and body["csrf_token"]
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= flags
    assert "samesite=strict" in cookie.lower()
    assert "secure" not in flags  # development serves plain http://127.0.0.1
    token = client.cookies[SESSION_COOKIE]
    async with sessionmaker() as session:
        stored = (await session.execute(select(ApiSession.token_hash))).scalars().all()
    assert stored == [store.token_digest(SECRET, token)] and token not in stored
    me = await client.get(ME)
    assert me.status_code == 200
    assert me.json()["csrf_token"] == body["csrf_token"] and me.json()["via"] == "session"


async def test_wrong_password_and_unknown_user_get_the_same_answer(
    new_client: ClientFactory, sessionmaker: async_sessionmaker[AsyncSession],
    hasher: CountingHasher,
) -> None:
    await _add_user(sessionmaker, "alice", "correct horse battery")
    client = new_client()
    wrong = await _login(client, "alice", "nope nope nope")
    before = len(hasher.verified)
    unknown = await _login(client, "mallory", "nope nope nope")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    # A real argon2id hash was verified for the unknown name: same work, similar time.
    assert len(hasher.verified) == before + 1
    assert hasher.verified[-1].startswith("$argon2id$")
    assert SESSION_COOKIE not in client.cookies
    assert (await client.get(ME)).status_code == 401


async def test_failed_logins_are_throttled_per_username(
    new_client: ClientFactory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _add_user(sessionmaker, "alice", "correct horse battery")
    await _add_user(sessionmaker, "bob", "bob's good password")
    client = new_client()
    for _ in range(5):
        assert (await _login(client, "alice", "guess")).status_code == 401
    r = await _login(client, "alice", "correct horse battery")  # even the right one waits
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 900
    assert (await _login(client, "ALICE", "guess")).status_code == 429  # case does not help
    assert (await _login(client, "bob", "bob's good password")).status_code == 200


async def test_failed_logins_are_throttled_per_address(
    new_client: ClientFactory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _add_user(sessionmaker, "alice", "correct horse battery")
    client = new_client()
    for i in range(20):
        assert (await _login(client, f"user{i}", "guess")).status_code == 401
    r = await _login(client, "alice", "correct horse battery")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_throttle_window_slides_and_success_forgets_the_username() -> None:
    t = LoginThrottle(per_pair=2, per_address=10, window_s=60)
    t.begin("a", "1.2.3.4", now=0)
    t.begin("a", "1.2.3.4", now=10)
    assert t.retry_after("a", "1.2.3.4", now=20) == 40
    assert t.retry_after("a", "1.2.3.4", now=60.5) == 0  # the first failure left the window
    started = t.begin("a", "1.2.3.4", now=61)
    t.succeeded("a", "1.2.3.4", started)
    t.begin("a", "1.2.3.4", now=62)
    assert t.retry_after("a", "1.2.3.4", now=62) == 0


async def test_logout_needs_the_csrf_token(
    new_client: ClientFactory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _add_user(sessionmaker, "alice", "correct horse battery")
    client = new_client()
    csrf = (await _login(client, "alice", "correct horse battery")).json()["csrf_token"]
    missing = await client.post(LOGOUT)
    assert missing.status_code == 403 and "X-CSRF-Token" in missing.json()["detail"]
    wrong = csrf[:-1] + ("A" if csrf[-1] != "A" else "B")
    forged = await client.post(LOGOUT, headers={"X-CSRF-Token": wrong})
    assert forged.status_code == 403 and forged.json()["detail"] == "wrong X-CSRF-Token header"
    odd = await client.post(LOGOUT, headers={"X-CSRF-Token": (csrf[:-1] + "Ä").encode("latin-1")})
    assert odd.status_code == 403
    assert (await client.get(ME)).status_code == 200  # neither ended the session
    ok = await client.post(LOGOUT, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200
    async with sessionmaker() as session:
        assert (await session.execute(select(ApiSession))).first() is None
    assert (await client.get(ME)).status_code == 401


async def test_expired_session_is_refused(
    new_client: ClientFactory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _add_user(sessionmaker, "alice", "correct horse battery")
    client = new_client()
    await _login(client, "alice", "correct horse battery")
    assert (await client.get(ME)).status_code == 200
    async with sessionmaker() as session, session.begin():
        await session.execute(update(ApiSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    r = await client.get(ME)
    assert r.status_code == 401 and "expired" in r.json()["detail"]


async def test_expired_sessions_are_purged_at_startup(
    tmp_path: Path, hasher: CountingHasher, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _add_user(sessionmaker, "alice", "correct horse battery")
    async with sessionmaker() as session, session.begin():
        user = await store.get_by_username(session, username="alice")
        assert user is not None
        for ttl in (-60.0, 3600.0):
            await store.create_session(session, user_id=user.id, secret_key="k" * 40,
                                       ttl_s=ttl)
    app = create_app(_settings(tmp_path), sessionmaker, hasher=hasher)
    async with app.router.lifespan_context(app):
        for _ in range(50):  # the purge runs as a task started with the app
            async with sessionmaker() as session:
                left = (await session.execute(select(ApiSession))).scalars().all()
            if len(left) == 1:
                break
            await asyncio.sleep(0.05)
    assert len(left) == 1 and left[0].expires_at > utcnow()


async def test_viewer_cannot_call_admin_routes(
    new_client: ClientFactory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _add_user(sessionmaker, "alice", "correct horse battery")
    await _add_user(sessionmaker, "vera", "viewer password", role="viewer")
    viewer = new_client()
    csrf = (await _login(viewer, "vera", "viewer password")).json()["csrf_token"]
    assert (await viewer.get(ME)).json()["role"] == "viewer"
    assert (await viewer.get(USERS)).status_code == 403
    r = await viewer.post(TOKENS, json={"name": "x", "scope": "admin"},
                          headers={"X-CSRF-Token": csrf})
    assert r.status_code == 422 and "read-scope" in r.json()["errors"][0]["msg"]
    admin = new_client()
    await _login(admin, "alice", "correct horse battery")
    listed = await admin.get(USERS)
    assert listed.status_code == 200
    assert [(u["username"], u["role"]) for u in listed.json()] == [("alice", "admin"),
                                                                   ("vera", "viewer")]
    assert all("password_hash" not in u for u in listed.json())


async def test_bearer_tokens_skip_csrf_and_stop_when_revoked(
    new_client: ClientFactory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _add_user(sessionmaker, "alice", "correct horse battery")
    browser = new_client()
    csrf = (await _login(browser, "alice", "correct horse battery")).json()["csrf_token"]
    assert (await browser.post(TOKENS, json={"name": "ci"})).status_code == 403  # no CSRF
    made = await browser.post(TOKENS, json={"name": "ci"}, headers={"X-CSRF-Token": csrf})
    assert made.status_code == 201
    token = made.json()["token"]
    script = new_client()
    auth = {"Authorization": f"Bearer {token}"}
    me = await script.get(ME, headers=auth)
    assert me.status_code == 200 and me.json()["via"] == "token"
    assert me.json()["csrf_token"] is None
    # No CSRF needed with a token, but a token cannot mint another (only a session can).
    second = await script.post(TOKENS, json={"name": "ci2"}, headers=auth)
    assert second.status_code == 403 and "session" in second.json()["detail"]
    async with sessionmaker() as session, session.begin():
        rows = (await session.execute(select(ApiToken).order_by(ApiToken.id))).scalars().all()
        assert rows[0].token_hash == store.token_digest(SECRET, token)
        assert rows[0].last_used_at is not None
        assert await store.revoke_api_token(session, token_id=rows[0].id)
    assert (await script.get(ME, headers=auth)).status_code == 401
    unknown = await script.get(ME, headers={"Authorization": "Bearer botsim_made_up"})
    assert unknown.status_code == 401 and unknown.headers["www-authenticate"] == "Bearer"
    assert (await script.get(ME, headers={"Authorization": f"Basic {token}"})).status_code == 401


@pytest.mark.parametrize("password", ["p" * 199 + "!", "Şifre-Ağaç-ğüşiöç-密码-🔑 x"])
async def test_long_and_non_ascii_passwords(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession], password: str
) -> None:
    real = make_hasher()
    await _add_user(sessionmaker, "alice", password, hasher=real)
    async with sessionmaker() as session:
        user = await store.get_by_username(session, username="alice")
    assert user is not None and user.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    app = create_app(_settings(tmp_path), sessionmaker, hasher=real)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        assert (await _login(client, "alice", password)).status_code == 200
        assert (await _login(client, "alice", password[:-1])).status_code == 401


async def test_login_rehashes_when_parameters_change(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _add_user(sessionmaker, "alice", "correct horse battery")  # cheapest parameters
    stronger = PasswordHasher(time_cost=2, memory_cost=1024, parallelism=1)
    app = create_app(_settings(tmp_path), sessionmaker, hasher=stronger)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        assert (await _login(client, "alice", "correct horse battery")).status_code == 200
    async with sessionmaker() as session:
        user = await store.get_by_username(session, username="alice")
    assert user is not None and "$m=1024,t=2,p=1$" in user.password_hash
    assert not stronger.check_needs_rehash(user.password_hash)


async def test_bodies_are_validated_and_bounded(new_client: ClientFactory) -> None:
    client = new_client()
    extra = await client.post(LOGIN, json={"username": "a", "password": "b", "remember": True})
    assert extra.status_code == 422
    assert any(e["loc"] == ["body", "remember"] for e in extra.json()["errors"])
    big = await client.post(LOGIN, content=b"x" * (1024 * 1024 + 1),
                            headers={"content-type": "application/json"})
    assert big.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    chunked = await client.post(LOGIN, content=chunks(),
                                headers={"content-type": "application/json"})
    assert chunked.status_code == 413


async def test_health_metrics_and_openapi(
    new_client: ClientFactory, tmp_path: Path
) -> None:
    client = new_client()
    assert (await client.get("/health/live")).json() == {"status": "live"}
    assert (await client.get("/health/ready")).status_code == 200
    assert (await client.get("/metrics/")).status_code == 200
    spec = (await client.get("/api/v1/openapi.json")).json()
    assert {LOGIN, LOGOUT, ME, TOKENS, USERS} <= set(spec["paths"])
    dead = make_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")  # nothing listens
    try:
        broken = create_app(_settings(tmp_path), make_sessionmaker(dead),
                            hasher=CountingHasher())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=broken),
                                     base_url="http://testserver") as c:
            assert (await c.get("/health/ready")).status_code == 503
    finally:
        await dead.dispose()


async def test_production_needs_a_secret_key_and_sets_secure_cookies(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    with pytest.raises(ConfigError, match="BOTSIM_SECRET_KEY"):
        create_app(Settings(env="production", data_dir=tmp_path), sessionmaker)
    with pytest.raises(ConfigError, match="BOTSIM_SECRET_KEY"):
        create_app(_settings(tmp_path, env="production", secret_key="short"), sessionmaker)
    assert not (tmp_path / "secret.key").exists()  # production never generates one
    await _add_user(sessionmaker, "alice", "correct horse battery")
    app = create_app(_settings(tmp_path, env="production"), sessionmaker,
                     hasher=CountingHasher())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://testserver") as client:
        r = await _login(client, "alice", "correct horse battery")
        assert r.status_code == 200 and "; secure" in r.headers["set-cookie"].lower()


def test_development_generates_and_reuses_a_secret_key(tmp_path: Path) -> None:
    from backend.crypto import resolve_secret_key

    settings = Settings(data_dir=tmp_path)
    key = resolve_secret_key(settings)
    assert len(key) >= 32 and resolve_secret_key(settings) == key
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated SQLite file that ``botsim`` sees through DATABASE_URL."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    upgrade_sync(url)
    for name in list(os.environ):
        if name.startswith("BOTSIM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BOTSIM_DATA_DIR", str(tmp_path))
    return url


def _stored_user(url: str, username: str) -> User | None:
    import asyncio

    async def fetch() -> User | None:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session:
                return await store.get_by_username(session, username=username)
        finally:
            await engine.dispose()

    return asyncio.run(fetch())


def test_create_user_cli_generates_a_password_and_refuses_duplicates(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["admin", "create-user", "alice", "--role", "admin"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "generated password" in x)
    password = line.rsplit(" ", 1)[1]
    assert len(password) >= 20
    user = _stored_user(cli_db, "alice")
    assert user is not None and user.role == "admin"
    assert user.password_hash.startswith("$argon2id$") and password not in user.password_hash
    assert make_hasher().verify(user.password_hash, password)
    assert cli_main(["admin", "create-user", "alice", "--role", "viewer"]) == 2
    err = capsys.readouterr().err
    assert "alice" in err and "already taken" in err


def test_create_user_cli_takes_the_password_from_the_environment(
    cli_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOTSIM_NEW_USER_PASSWORD", "çok-gizli-parola-2024")
    assert cli_main(["admin", "create-user", "vera", "--role", "viewer"]) == 0
    out = capsys.readouterr().out
    assert "çok-gizli" not in out and "generated" not in out
    user = _stored_user(cli_db, "vera")
    assert user is not None and user.role == "viewer"
    assert make_hasher().verify(user.password_hash, "çok-gizli-parola-2024")
    monkeypatch.setenv("BOTSIM_NEW_USER_PASSWORD", "short")
    assert cli_main(["admin", "create-user", "walt", "--role", "viewer"]) == 2
    assert _stored_user(cli_db, "walt") is None

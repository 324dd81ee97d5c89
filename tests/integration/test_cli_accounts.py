"""``botsim admin users|disable|enable|set-password|end-sessions|tokens|create-token|
revoke-token`` (:mod:`botsim.accounts_cli`) on a migrated SQLite file: what they change,
what they audit (user ``cli``, never a secret), and the exit code 2 of bad input."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.crypto import resolve_secret_key
from backend.db.models import ApiToken, AuditEntry, User
from backend.db.session import make_engine, make_sessionmaker
from backend.db.types import utcnow
from backend.settings import Settings
from backend.stores import users as store
from botsim.cli import main as cli_main

T = TypeVar("T")
PW = "viewer password 1"


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_template: Path) -> str:
    """A migrated SQLite file (a copy of the session's template) that ``botsim`` sees
    through DATABASE_URL, with alice (admin) and vera (viewer)."""
    shutil.copy(sqlite_template, tmp_path / "cli.db")
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    for name in list(os.environ):
        if name.startswith("BOTSIM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BOTSIM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BOTSIM_NEW_USER_PASSWORD", PW)
    assert cli_main(["admin", "create-user", "alice", "--role", "admin"]) == 0
    assert cli_main(["admin", "create-user", "vera", "--role", "viewer"]) == 0
    monkeypatch.delenv("BOTSIM_NEW_USER_PASSWORD")
    return url


def _db(url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert cli_main(["admin", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _audit(url: str) -> list[AuditEntry]:
    async def read(s: AsyncSession) -> list[AuditEntry]:
        return list((await s.execute(select(AuditEntry).order_by(AuditEntry.id))).scalars())

    return _db(url, read)


def test_tokens_created_listed_and_revoked(
    cli_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert cli_main(["admin", "create-token", "vera", "--name", "ci", "--expires", "30d"]) == 0
    out = capsys.readouterr().out
    token = next(x for x in out.splitlines() if x.startswith("token ")).rsplit(" ", 1)[1]
    assert token.startswith("botsim_")
    key = resolve_secret_key(Settings(data_dir=tmp_path))

    async def stored(s: AsyncSession) -> ApiToken:
        return (await s.execute(select(ApiToken))).scalar_one()

    row = _db(cli_db, stored)
    assert row.token_hash == store.token_digest(key, token) and row.scope == "read"
    assert abs(row.expires_at - (utcnow() + timedelta(days=30))) < timedelta(minutes=1)
    listed = _json(capsys, "tokens", "vera")
    assert [(t["name"], t["state"], t["scope"]) for t in listed] == [("ci", "active", "read")]
    assert token not in json.dumps(listed) and row.token_hash not in json.dumps(listed)
    assert _json(capsys, "tokens", "alice") == []
    assert cli_main(["admin", "revoke-token", str(row.id)]) == 0
    assert cli_main(["admin", "revoke-token", str(row.id)]) == 0  # once is enough to audit
    assert [t["state"] for t in _json(capsys, "tokens")] == ["revoked"]
    actions = [(e.action, e.username, e.entity_id) for e in _audit(cli_db)]
    assert actions == [("api_token.created", "cli", str(row.id)),
                       ("api_token.revoked", "cli", str(row.id))]
    assert token not in json.dumps([e.after for e in _audit(cli_db)])


@pytest.mark.parametrize("argv", [
    ["create-token", "vera", "--name", ""],
    ["create-token", "vera", "--name", "a\tb"],
    ["create-token", "vera", "--name", "x" * 65],
    ["create-token", "vera", "--name", "ci", "--expires", "0d"],
    ["create-token", "vera", "--name", "ci", "--expires", "366d"],
    ["create-token", "vera", "--name", "ci", "--expires", "tomorrow"],
    ["create-token", "vera", "--name", "ci", "--expires", "2001-01-01"],
    ["create-token", "nobody", "--name", "ci"],
    ["create-token", "bad name!", "--name", "ci"],
    ["revoke-token", "abc"],
    ["revoke-token", "0"],
    ["revoke-token", str(2**31)],
    ["revoke-token", "999"],
    ["disable", "nobody"],
    ["enable", "x" * 65],
    ["end-sessions", "nobody"],
    ["set-password", "nobody"],
    ["tokens", "nobody"],
])
def test_bad_input_exits_2_and_changes_nothing(
    cli_db: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert cli_main(["admin", *argv]) == 2
    assert capsys.readouterr().err.startswith("botsim: ")
    assert _audit(cli_db) == []


def test_unknown_scope_is_an_argparse_error(cli_db: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["admin", "create-token", "vera", "--name", "ci", "--scope", "root"])
    assert exc.value.code == 2


def test_disable_enable_and_the_last_admin(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["admin", "disable", "alice"]) == 2
    assert "last enabled admin" in capsys.readouterr().err
    assert cli_main(["admin", "disable", "vera"]) == 0
    assert cli_main(["admin", "disable", "vera"]) == 0  # already: not audited again
    users = {u["username"]: u for u in _json(capsys, "users")}
    assert users["vera"]["disabled"] is True and users["alice"]["disabled"] is False
    assert cli_main(["admin", "create-token", "vera", "--name", "x"]) == 2  # disabled
    assert cli_main(["admin", "enable", "vera"]) == 0
    assert [e.action for e in _audit(cli_db)] == ["user.disabled", "user.enabled"]


def test_set_password_ends_sessions_and_tokens(
    cli_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def open_session_and_token(s: AsyncSession) -> None:
        vera = await store.get_by_username(s, username="vera")
        assert vera is not None
        await store.create_session(s, user_id=vera.id, secret_key="k" * 40, ttl_s=600)
        await store.create_api_token(s, user_id=vera.id, name="t", secret_key="k" * 40)

    _db(cli_db, open_session_and_token)
    assert _json(capsys, "users")[1]["sessions"] == 1
    monkeypatch.setenv("BOTSIM_NEW_USER_PASSWORD", "short")
    assert cli_main(["admin", "set-password", "vera"]) == 2
    monkeypatch.delenv("BOTSIM_NEW_USER_PASSWORD")
    capsys.readouterr()
    assert cli_main(["admin", "set-password", "vera"]) == 0
    out = capsys.readouterr().out
    assert "1 session(s) ended, 1 API token(s) revoked" in out
    password = next(x for x in out.splitlines() if "generated password" in x).rsplit(" ", 1)[1]

    async def vera_row(s: AsyncSession) -> User:
        return (await s.execute(select(User).where(User.username == "vera"))).scalar_one()

    user = _db(cli_db, vera_row)
    assert PasswordHasher().verify(user.password_hash, password)
    assert user.credentials_version == 1
    vera = next(u for u in _json(capsys, "users") if u["username"] == "vera")
    assert (vera["sessions"], vera["tokens"]) == (0, 0)
    entries = _audit(cli_db)
    assert [e.action for e in entries] == ["user.password_changed"]
    assert password not in json.dumps([e.after for e in entries])


def test_end_sessions(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def two_sessions(s: AsyncSession) -> None:
        alice = await store.get_by_username(s, username="alice")
        assert alice is not None
        for _ in range(2):
            await store.create_session(s, user_id=alice.id, secret_key="k" * 40, ttl_s=600)

    _db(cli_db, two_sessions)
    capsys.readouterr()
    assert cli_main(["admin", "end-sessions", "alice"]) == 0
    assert "2 session(s) of 'alice' ended" in capsys.readouterr().out
    assert _json(capsys, "users")[0]["sessions"] == 0
    entry = _audit(cli_db)[0]
    assert entry.action == "user.sessions_ended" and entry.after == {"ended_sessions": 2,
                                                                     "user": "alice"}

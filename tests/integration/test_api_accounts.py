"""Token and user lifecycle through the API (issue 18): list and revoke API tokens, token
scope and expiry, disable/enable a user, change a password, end a user's sessions; each in
the audit log, and each taking effect on the very next request, for cookie sessions and
bearer tokens alike.

Runs on SQLite and PostgreSQL (the ``sessionmaker`` fixture); ``alice`` is an admin and
``vera`` a viewer (``make_env``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from backend.api.security import SESSION_COOKIE
from backend.db.models import ApiToken, AuditEntry, User
from backend.db.types import utcnow
from backend.stores import users as store
from tests.integration.test_api_ops import ADMIN_PW, API, SECRET, VIEWER_PW, Env, Sessions, make_env

TOKENS = f"{API}/auth/tokens"
ME = f"{API}/auth/me"
USERS = f"{API}/users"
PASSWORD = f"{API}/auth/password"


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions) -> AsyncIterator[Env]:
    async for e in make_env(tmp_path, sessionmaker):
        yield e


async def _uid(env: Env, name: str) -> int:
    async with env.sm() as s:
        user = await store.get_by_username(s, username=name)
    assert user is not None
    return user.id


async def _token(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post(TOKENS, json={"name": "ci", **body})
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    return dict(r.json())


def _bearer(env: Env, token: str) -> httpx.AsyncClient:
    c = env.client()
    c.headers["Authorization"] = f"Bearer {token}"
    return c


async def _audit(env: Env) -> list[AuditEntry]:
    async with env.sm() as s:
        return list((await s.execute(select(AuditEntry).order_by(AuditEntry.id))).scalars())


def _no_secrets(entries: list[AuditEntry], *secrets: str) -> None:
    text = json.dumps([[e.action, e.before, e.after] for e in entries], default=str)
    for secret in secrets:
        assert secret not in text


async def test_create_token_defaults_scope_expiry_and_audit(env: Env) -> None:
    alice = await env.login("alice")
    made = await _token(alice)
    assert made["scope"] == "read" and made["token"].startswith("botsim_")
    expires = datetime.fromisoformat(made["expires_at"])
    assert abs(expires - (utcnow() + timedelta(days=90))) < timedelta(minutes=1)
    admin = await _token(alice, name="deploy", scope="admin", expires_in="30d")
    assert admin["scope"] == "admin"
    assert abs(datetime.fromisoformat(admin["expires_at"]) - (utcnow() + timedelta(days=30))
               ) < timedelta(minutes=1)
    at = (utcnow() + timedelta(hours=5)).replace(microsecond=0)
    exact = await _token(alice, name="exact", expires_at=at.isoformat())
    assert datetime.fromisoformat(exact["expires_at"]) == at
    entries = [e for e in await _audit(env) if e.action == "api_token.created"]
    assert [e.entity_id for e in entries] == [str(made["id"]), str(admin["id"]),
                                              str(exact["id"])]
    assert entries[1].after is not None and entries[1].after["scope"] == "admin"
    assert entries[1].username == "alice" and entries[1].entity == "api_token"
    _no_secrets(entries, made["token"], admin["token"], exact["token"])
    async with env.sm() as s:
        digests = (await s.execute(select(ApiToken.token_hash))).scalars().all()
    assert store.token_digest(SECRET, made["token"]) in digests


@pytest.mark.parametrize(("body", "field"), [
    ({"expires_in": "30d", "expires_at": "2030-01-01T00:00:00Z"}, "body"),
    ({"expires_in": "0d"}, "expires"),
    ({"expires_in": "400d"}, "expires"),
    ({"expires_in": "2m"}, "expires"),
    ({"expires_in": "5x"}, "expires_in"),
    ({"expires_in": "-3d"}, "expires_in"),
    ({"expires_in": "9" * 30}, "expires_in"),
    ({"expires_at": "2020-01-01T00:00:00Z"}, "expires"),
    ({"expires_at": "9999-12-31T23:59:59Z"}, "expires"),
    ({"expires_at": "2030-01-01T00:00:00"}, "body"),
    ({"expires_at": "soon"}, "expires_at"),
    ({"scope": "root"}, "scope"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": "new\nline"}, "name"),
    ({"name": "nul\x00"}, "name"),
    ({"owner": "vera"}, "owner"),
])
async def test_bad_token_bodies_are_refused_with_422(env: Env, body: dict[str, Any],
                                                     field: str) -> None:
    alice = await env.login("alice")
    r = await alice.post(TOKENS, json={"name": "ci", **body})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    locs = [e["loc"] for e in r.json()["errors"]]
    assert any(loc[0] == "body" and (field == "body" or field in loc) for loc in locs), locs
    async with env.sm() as s:
        assert (await s.execute(select(ApiToken))).first() is None


async def test_only_a_session_mints_tokens_and_scope_caps_the_role(env: Env) -> None:
    alice = await env.login("alice")
    read = await _token(alice, name="r")
    full = await _token(alice, name="a", scope="admin")
    for token in (read, full):  # neither token can mint another, whatever its scope
        r = await _bearer(env, token["token"]).post(TOKENS, json={"name": "more"})
        assert r.status_code == 403 and "session" in r.json()["detail"]
    reader = _bearer(env, read["token"])
    me = (await reader.get(ME)).json()
    assert me["role"] == "viewer" and me["via"] == "token"
    assert (await reader.get(USERS)).status_code == 403  # an admin's read token reads only
    assert (await _bearer(env, full["token"]).get(USERS)).status_code == 200
    vera = await env.login("vera")
    r = await vera.post(TOKENS, json={"name": "v", "scope": "admin"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "scope"]
    own = await _token(vera, name="v")
    # An admin-scope token of a viewer (e.g. one demoted since) is still a viewer.
    async with env.sm() as s, s.begin():
        await s.execute(update(ApiToken).where(ApiToken.id == own["id"]).values(scope="admin"))
    vt = _bearer(env, own["token"])
    assert (await vt.get(ME)).json()["role"] == "viewer"
    assert (await vt.get(USERS)).status_code == 403
    anonymous = env.client()
    assert (await anonymous.post(TOKENS, json={"name": "x"})).status_code == 401
    no_csrf = env.client()
    no_csrf.cookies.set(SESSION_COOKIE, alice.cookies[SESSION_COOKIE])
    assert (await no_csrf.post(TOKENS, json={"name": "x"})).status_code == 403


async def test_list_tokens_never_shows_a_token_or_digest(env: Env) -> None:
    alice, vera = await env.login("alice"), await env.login("vera")
    a1 = await _token(alice, name="one")
    v1 = await _token(vera, name="vee")
    await _bearer(env, a1["token"]).get(ME)  # marks last_used_at
    mine = (await alice.get(TOKENS)).json()
    assert [t["name"] for t in mine] == ["one"]
    row = mine[0]
    assert set(row) == {"id", "user_id", "username", "name", "scope", "state", "created_at",
                        "last_used_at", "expires_at", "revoked_at"}
    assert row["state"] == "active" and row["last_used_at"] and row["revoked_at"] is None
    async with env.sm() as s:
        digests = (await s.execute(select(ApiToken.token_hash))).scalars().all()
    for listing in (await alice.get(TOKENS), await vera.get(TOKENS),
                    await alice.get(f"{USERS}/{await _uid(env, 'vera')}/tokens")):
        assert listing.status_code == 200
        for secret in [a1["token"], v1["token"], *digests]:
            assert secret not in listing.text
    assert [t["name"] for t in (await vera.get(TOKENS)).json()] == ["vee"]
    alice_id = await _uid(env, "alice")
    assert (await vera.get(f"{USERS}/{alice_id}/tokens")).status_code == 403
    assert (await vera.get(f"{USERS}/{await _uid(env, 'vera')}/tokens")).status_code == 200
    assert (await alice.get(f"{USERS}/9999/tokens")).status_code == 404
    for bad in ("0", "-1", str(2**31), "abc"):
        assert (await alice.get(f"{USERS}/{bad}/tokens")).status_code == 422


async def test_a_revoked_token_stops_on_the_next_request(env: Env) -> None:
    alice, vera = await env.login("alice"), await env.login("vera")
    tok = await _token(alice, name="ci")
    script = _bearer(env, tok["token"])
    assert (await script.get(ME)).status_code == 200
    r = await alice.delete(f"{TOKENS}/{tok['id']}")
    assert r.status_code == 200 and r.json()["state"] == "revoked" and r.json()["revoked_at"]
    gone = await script.get(ME)
    assert gone.status_code == 401 and gone.headers["www-authenticate"] == "Bearer"
    again = await alice.delete(f"{TOKENS}/{tok['id']}")  # idempotent, audited once
    assert again.status_code == 200
    revokes = [e for e in await _audit(env) if e.action == "api_token.revoked"]
    assert [e.entity_id for e in revokes] == [str(tok["id"])]
    _no_secrets(revokes, tok["token"])
    # A viewer cannot see or revoke another user's token (404: its existence stays hidden).
    other = await _token(alice, name="other")
    assert (await vera.delete(f"{TOKENS}/{other['id']}")).status_code == 404
    assert (await _bearer(env, other["token"]).get(ME)).status_code == 200
    # An admin revokes a viewer's token.
    vt = await _token(vera, name="v")
    assert (await alice.delete(f"{TOKENS}/{vt['id']}")).status_code == 200
    assert (await _bearer(env, vt["token"]).get(ME)).status_code == 401
    # A read token may revoke itself, not its user's other tokens.
    reader = await _token(alice, name="reader")
    rc = _bearer(env, reader["token"])
    r = await rc.delete(f"{TOKENS}/{other['id']}")
    assert r.status_code == 403
    assert (await rc.delete(f"{TOKENS}/{reader['id']}")).status_code == 200
    assert (await rc.get(ME)).status_code == 401
    assert (await alice.delete(f"{TOKENS}/99999")).status_code == 404
    for bad in ("0", str(2**31), "x"):
        assert (await alice.delete(f"{TOKENS}/{bad}")).status_code == 422


async def test_an_expired_token_is_refused(env: Env) -> None:
    alice = await env.login("alice")
    tok = await _token(alice, name="short", expires_in="10m")
    script = _bearer(env, tok["token"])
    assert (await script.get(ME)).status_code == 200
    async with env.sm() as s, s.begin():
        await s.execute(update(ApiToken).where(ApiToken.id == tok["id"])
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
    r = await script.get(ME)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    assert (await alice.get(TOKENS)).json()[0]["state"] == "expired"


async def test_disable_and_enable_a_user(env: Env) -> None:
    alice, vera = await env.login("alice"), await env.login("vera")
    vt = await _token(vera, name="v")
    script = _bearer(env, vt["token"])
    vera_id, alice_id = await _uid(env, "vera"), await _uid(env, "alice")
    assert (await vera.post(f"{USERS}/{alice_id}/disable")).status_code == 403
    r = await alice.post(f"{USERS}/{vera_id}/disable")
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert r.json()["sessions"] == 0 and r.json()["tokens"] == 1
    assert (await vera.get(ME)).status_code == 401  # the session: the next request
    assert (await script.get(ME)).status_code == 401  # the token too
    login = await env.client().post(f"{API}/auth/login",
                                    json={"username": "vera", "password": VIEWER_PW})
    assert login.status_code == 401
    assert (await alice.post(f"{USERS}/{vera_id}/disable")).status_code == 200  # no-op
    r = await alice.post(f"{USERS}/{vera_id}/enable")
    assert r.status_code == 200 and r.json()["disabled"] is False
    assert (await script.get(ME)).status_code == 200  # a token works again once enabled
    assert (await vera.get(ME)).status_code == 401  # the session was ended for good
    await env.login("vera")  # a new login works (asserts 200)
    self_off = await alice.post(f"{USERS}/{alice_id}/disable")
    assert self_off.status_code == 409 and "yourself" in self_off.json()["detail"]
    assert (await alice.post(f"{USERS}/424242/disable")).status_code == 404
    assert (await alice.post(f"{USERS}/0/enable")).status_code == 422
    actions = [(e.action, e.entity_id) for e in await _audit(env) if e.entity == "user"]
    assert actions == [("user.disabled", str(vera_id)), ("user.enabled", str(vera_id))]


async def test_the_last_enabled_admin_cannot_be_disabled(env: Env) -> None:
    async with env.sm() as s, s.begin():
        alice = await store.get_by_username(s, username="alice")
        assert alice is not None
        assert await store.disable_refusal(s, user=alice, actor_id=None) == (
            "the last enabled admin cannot be disabled")
        vera = await store.get_by_username(s, username="vera")
        assert vera is not None
        assert await store.disable_refusal(s, user=vera, actor_id=alice.id) is None


async def test_changing_my_password_ends_my_other_sessions_and_tokens(env: Env) -> None:
    here, there = await env.login("alice"), await env.login("alice")
    tok = await _token(here, name="ci", scope="admin")
    script = _bearer(env, tok["token"])
    new_pw = "a new long password"
    wrong = await here.post(PASSWORD, json={"current_password": "nope nope",
                                            "new_password": new_pw})
    assert wrong.status_code == 403 and "current password" in wrong.json()["detail"]
    same = await here.post(PASSWORD, json={"current_password": ADMIN_PW,
                                           "new_password": ADMIN_PW})
    assert same.status_code == 422 and same.json()["errors"][0]["loc"] == ["body",
                                                                           "new_password"]
    short = await here.post(PASSWORD, json={"current_password": ADMIN_PW,
                                            "new_password": "short"})
    assert short.status_code == 422
    extra = await here.post(PASSWORD, json={"current_password": ADMIN_PW,
                                            "new_password": new_pw, "user": "vera"})
    assert extra.status_code == 422
    by_token = await script.post(PASSWORD, json={"current_password": ADMIN_PW,
                                                 "new_password": new_pw})
    assert by_token.status_code == 403
    assert (await there.get(ME)).status_code == 200  # nothing changed so far
    r = await here.post(PASSWORD, json={"current_password": ADMIN_PW, "new_password": new_pw})
    assert r.status_code == 200
    assert r.json() == {"status": "password changed", "sessions_ended": 1, "tokens_revoked": 1}
    assert (await there.get(ME)).status_code == 401  # the other session: next request
    assert (await script.get(ME)).status_code == 401  # the token too
    assert (await here.get(ME)).status_code == 200  # this session stays, CSRF as before
    assert (await here.post(TOKENS, json={"name": "after"})).status_code == 201
    assert [t["state"] for t in (await here.get(TOKENS)).json()] == ["active", "revoked"]
    client = env.client()
    old = await client.post(f"{API}/auth/login", json={"username": "alice",
                                                       "password": ADMIN_PW})
    assert old.status_code == 401
    new = await client.post(f"{API}/auth/login", json={"username": "alice",
                                                       "password": new_pw})
    assert new.status_code == 200
    entries = [e for e in await _audit(env) if e.action == "user.password_changed"]
    assert len(entries) == 1 and entries[0].after == {
        "changed_by": "self", "ended_sessions": 1, "revoked_credentials": 1}
    _no_secrets(await _audit(env), ADMIN_PW, new_pw, tok["token"])


async def test_wrong_current_passwords_are_throttled(env: Env) -> None:
    vera = await env.login("vera")
    codes = []
    for _ in range(6):
        r = await vera.post(PASSWORD, json={"current_password": "guess guess",
                                            "new_password": "whatever long"})
        codes.append(r.status_code)
    assert codes[:5] == [403] * 5 and codes[5] == 429
    assert int(r.headers["retry-after"]) >= 1


async def test_an_admin_sets_another_users_password(env: Env) -> None:
    alice, vera = await env.login("alice"), await env.login("vera")
    vt = await _token(vera, name="v")
    vera_id, alice_id = await _uid(env, "vera"), await _uid(env, "alice")
    body = {"new_password": "reset by alice 1"}
    assert (await vera.post(f"{USERS}/{alice_id}/password", json=body)).status_code == 403
    mine = await alice.post(f"{USERS}/{alice_id}/password", json=body)
    assert mine.status_code == 403 and "/auth/password" in mine.json()["detail"]
    at = await _token(alice, name="a", scope="admin")
    by_token = await _bearer(env, at["token"]).post(f"{USERS}/{vera_id}/password", json=body)
    assert by_token.status_code == 403
    assert (await alice.post(f"{USERS}/{vera_id}/password",
                             json={"new_password": "short"})).status_code == 422
    assert (await alice.post(f"{USERS}/{vera_id}/password", json={})).status_code == 422
    assert (await alice.post(f"{USERS}/777/password", json=body)).status_code == 404
    r = await alice.post(f"{USERS}/{vera_id}/password", json=body)
    assert r.status_code == 200 and r.json()["sessions_ended"] == 1
    assert r.json()["tokens_revoked"] == 1
    assert (await vera.get(ME)).status_code == 401
    assert (await _bearer(env, vt["token"]).get(ME)).status_code == 401
    assert (await alice.get(ME)).status_code == 200
    login = await env.client().post(f"{API}/auth/login",
                                    json={"username": "vera", "password": body["new_password"]})
    assert login.status_code == 200
    entry = next(e for e in await _audit(env) if e.action == "user.password_changed")
    assert entry.entity_id == str(vera_id) and entry.username == "alice"
    _no_secrets(await _audit(env), body["new_password"], vt["token"])


async def test_end_all_sessions_of_a_user(env: Env) -> None:
    alice, vera1, vera2 = await env.login("alice"), await env.login("vera"), await env.login(
        "vera")
    vt = await _token(vera1, name="v")
    vera_id, alice_id = await _uid(env, "vera"), await _uid(env, "alice")
    assert (await vera1.delete(f"{USERS}/{alice_id}/sessions")).status_code == 403
    mine = await vera1.delete(f"{USERS}/{vera_id}/sessions")  # log out my other sessions
    assert mine.status_code == 200 and mine.json()["sessions_ended"] == 1
    assert (await vera2.get(ME)).status_code == 401
    assert (await vera1.get(ME)).status_code == 200
    r = await alice.delete(f"{USERS}/{vera_id}/sessions")
    assert r.status_code == 200 and r.json()["sessions_ended"] == 1
    assert (await vera1.get(ME)).status_code == 401
    assert (await _bearer(env, vt["token"]).get(ME)).status_code == 200  # tokens untouched
    read = await _token(alice, name="r")
    r = await _bearer(env, read["token"]).delete(f"{USERS}/{alice_id}/sessions")
    assert r.status_code == 403
    assert (await alice.delete(f"{USERS}/31337/sessions")).status_code == 404
    ended = [e for e in await _audit(env) if e.action == "user.sessions_ended"]
    assert [(e.username, e.entity_id) for e in ended] == [("vera", str(vera_id)),
                                                          ("alice", str(vera_id))]


async def test_a_session_or_token_issued_under_the_old_password_is_refused(
    env: Env,
) -> None:
    """A login or a token creation racing a password change: the row is written after the
    change deleted the others, but carries the old credentials version, so it is refused."""
    vera_id = await _uid(env, "vera")
    async with env.sm() as s:
        old_version = (await store.get_user(s, user_id=vera_id)).credentials_version
    async with env.sm() as s, s.begin():
        await store.change_password(s, user_id=vera_id, password_hash="$argon2id$x")
    async with env.sm() as s, s.begin():
        late = await store.create_session(s, user_id=vera_id, secret_key=SECRET, ttl_s=600,
                                          credentials_version=old_version)
        _, late_token = await store.create_api_token(s, user_id=vera_id, name="late",
                                                     secret_key=SECRET,
                                                     credentials_version=old_version)
    c = env.client()
    c.cookies.set(SESSION_COOKIE, late.token)
    assert (await c.get(ME)).status_code == 401
    assert (await _bearer(env, late_token).get(ME)).status_code == 401
    alice = await env.login("alice")
    listed = (await alice.get(f"{USERS}/{vera_id}/tokens")).json()
    assert [t["state"] for t in listed] == ["revoked"]


async def test_users_list_counts_sessions_and_tokens(env: Env) -> None:
    alice = await env.login("alice")
    await env.login("vera")
    await _token(alice, name="t")
    rows = {u["username"]: u for u in (await alice.get(USERS)).json()}
    assert (rows["alice"]["sessions"], rows["alice"]["tokens"]) == (1, 1)
    assert (rows["vera"]["sessions"], rows["vera"]["tokens"]) == (1, 0)
    async with env.sm() as s:
        users = (await s.execute(select(User))).scalars().all()
    assert all(u.credentials_version == 0 for u in users)


async def test_a_login_racing_a_password_change_opens_no_session(
    env: Env, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old password is verified, then the password changes before the login writes its
    session: the session is born with the old credentials version and refused."""
    vera_id = await _uid(env, "vera")
    verify = env.state.verify

    async def verify_then_change(password_hash: str, password: str) -> bool:
        ok = await verify(password_hash, password)
        async with env.sm() as s, s.begin():  # an admin changes it meanwhile
            await store.change_password(s, user_id=vera_id, password_hash="$argon2id$x")
        return ok

    monkeypatch.setattr(env.state, "verify", verify_then_change)
    c = env.client()
    r = await c.post(f"{API}/auth/login", json={"username": "vera", "password": VIEWER_PW})
    assert r.status_code == 200, r.text  # the password was right when it was checked
    assert (await c.get(ME)).status_code == 401  # but the session it opened is not

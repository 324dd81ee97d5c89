"""The panel's account page ``/account`` (:mod:`backend.api.pages_accounts`): the caller's
password form and tokens for everyone, every user and token for admins; names escaped;
never a token or digest in the HTML.

Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.db.models import ApiToken
from tests.integration.test_api_ops import API, Env, Sessions, make_env

XSS = "<script>alert(1)</script>"


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions) -> AsyncIterator[Env]:
    async for e in make_env(tmp_path, sessionmaker):
        yield e


async def test_page_needs_a_login(env: Env) -> None:
    r = await env.client().get("/account")
    assert r.status_code == 303 and r.headers["location"] == "/login"


async def test_admin_sees_forms_users_and_every_token(env: Env) -> None:
    alice, vera = await env.login("alice"), await env.login("vera")
    a = (await alice.post(f"{API}/auth/tokens", json={"name": f"ci {XSS}"})).json()
    v = (await vera.post(f"{API}/auth/tokens", json={"name": "vera's"})).json()
    r = await alice.get("/account")
    assert r.status_code == 200
    html = r.text
    assert 'href="/account" aria-current="page"' in html
    assert 'src="/static/accounts.js"' in html
    assert 'id="password-form"' in html and 'id="token-form"' in html
    assert '<option value="admin">' in html
    assert XSS not in html and "ci &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert re.findall(r'<tr data-user="(\d+)"', html) == ["1", "2"]
    assert 'class="disable-user" data-id="2"' in html
    assert 'class="disable-user" data-id="1"' not in html  # not yourself
    assert 'class="set-password" data-id="2"' in html
    assert f'class="revoke-token" data-id="{v["id"]}"' in html  # every user's token
    async with env.sm() as s:
        digests = (await s.execute(select(ApiToken.token_hash))).scalars().all()
    for secret in (a["token"], v["token"], *digests):
        assert secret not in html
    js = await alice.get("/static/accounts.js")
    assert js.status_code == 200 and "initAccount" in js.text


async def test_viewer_sees_only_their_own(env: Env) -> None:
    alice, vera = await env.login("alice"), await env.login("vera")
    a = (await alice.post(f"{API}/auth/tokens", json={"name": "alice-token"})).json()
    await vera.post(f"{API}/auth/tokens", json={"name": "vera-token"})
    html = (await vera.get("/account")).text
    assert 'id="password-form"' in html and 'id="token-form"' in html
    assert '<option value="admin">' not in html  # a viewer makes read tokens only
    assert "vera-token" in html and "alice-token" not in html
    assert 'id="users"' not in html and f'data-id="{a["id"]}"' not in html


async def test_with_a_token_no_password_or_token_form(env: Env) -> None:
    alice = await env.login("alice")
    token = (await alice.post(f"{API}/auth/tokens", json={"name": "t"})).json()["token"]
    c = env.client()
    html = (await c.get("/account", headers={"Authorization": f"Bearer {token}"})).text
    assert 'id="account-token-only"' in html and 'id="password-form"' not in html
    assert 'id="users"' not in html  # a read token acts as a viewer


async def test_disabled_user_and_changed_password_lose_the_page_at_once(env: Env) -> None:
    alice, vera = await env.login("alice"), await env.login("vera")
    assert (await vera.get("/account")).status_code == 200
    assert (await alice.post(f"{API}/users/2/disable")).status_code == 200
    r = await vera.get("/account")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    other = await env.login("alice")
    ok = await alice.post(f"{API}/auth/password", json={
        "current_password": "admin password 123", "new_password": "brand new password"})
    assert ok.status_code == 200
    assert (await other.get("/account")).status_code == 303
    assert (await alice.get("/account")).status_code == 200

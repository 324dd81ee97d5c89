"""The admin panel's pages and its sandbox-post route (:mod:`backend.api.pages`; the audit
page: ``test_pages_audit``).

Runs on SQLite and PostgreSQL (the ``sessionmaker`` fixture); users hash with argon2's
cheapest parameters. The sandbox Telegram is replaced by an ``httpx.MockTransport``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.api import pages
from backend.api.app import create_app
from backend.api.security import SESSION_COOKIE
from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from backend.schemas import MessageMeta
from backend.settings import Settings
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import messages as message_store
from backend.stores import users as user_store
from behavior_engine.reads import CachedReads
from bots.personas import load_persona_dir
from tests.conftest import cheap_hasher as _hasher

Sessions = async_sessionmaker[AsyncSession]
SECRET = "k" * 40
ADMIN_PW = "admin password 123"
VIEWER_PW = "viewer password 123"
XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
PAGES = ["/", "/personas", "/personas/1", "/settings", "/costs", "/audit"]


class Env:
    """An app with an admin (alice) and a viewer (vera), and clients on it."""

    def __init__(self, app: FastAPI, sm: Sessions) -> None:
        self.app, self.sm = app, sm
        self.clients: list[httpx.AsyncClient] = []

    def client(self) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                              base_url="http://testserver")
        self.clients.append(c)
        return c

    async def login(self, who: str) -> tuple[httpx.AsyncClient, str]:
        c = self.client()
        pw = ADMIN_PW if who == "alice" else VIEWER_PW
        r = await c.post("/api/v1/auth/login", json={"username": who, "password": pw})
        assert r.status_code == 200, r.text
        return c, str(r.json()["csrf_token"])


async def make_env(tmp_path: Path, sm: Sessions, cache: TwoLayerCache,
                    **settings: Any) -> Env:
    hasher = _hasher()
    app = create_app(Settings(data_dir=tmp_path, secret_key=SECRET, **settings), sm,
                     hasher=hasher, reads=CachedReads(cache, sm))
    async with sm() as s, s.begin():
        if await user_store.get_by_username(s, username="alice") is None:
            await user_store.create_user(s, username="alice", role="admin",
                                         password_hash=hasher.hash(ADMIN_PW))
            await user_store.create_user(s, username="vera", role="viewer",
                                         password_hash=hasher.hash(VIEWER_PW))
    return Env(app, sm)


@pytest.fixture
async def cache() -> AsyncIterator[TwoLayerCache]:
    c = TwoLayerCache(redis_url=None)
    await c.start()
    yield c
    await c.close()


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions,
              cache: TwoLayerCache) -> AsyncIterator[Env]:
    e = await make_env(tmp_path, sessionmaker, cache)
    yield e
    for c in e.clients:
        await c.aclose()


async def seed(sm: Sessions, cipher: TokenCipher) -> tuple[int, int]:
    """A chat with one bot whose bio holds a script tag; a human message with a script tag
    and the bot's answer to it. Returns (chat id, bot id)."""
    persona = load_persona_dir()[0]
    persona = persona.model_copy(update={"bio": f"Trader. {XSS} bio-marker"})
    async with sm() as s, s.begin():
        chat = await chat_store.upsert_chat(s, telegram_chat_id=-100777, title="Piyasa <i>",
                                            topics={"btc": 1.0})
        bot = await bot_store.upsert_persona_bot(s, persona=persona,
                                                 token=f"7300000001:AAH{'y' * 34}",
                                                 cipher=cipher)
        await message_store.record_incoming(
            s, chat_id=chat.id, telegram_message_id=1, text=f"human says {XSS}",
            sender_id=901, sender_name="Deniz <b>", meta=MessageMeta(), created_at=START)
        await message_store.record_sent(
            s, chat_id=chat.id, bot_id=bot.id, turn_id="t-1", telegram_message_id=2,
            text=f"bot answers {XSS}", meta=MessageMeta(topic="btc"),
            reply_to_telegram_message_id=1, created_at=START + timedelta(seconds=5))
        return chat.id, bot.id


def _assert_escaped(html: str) -> None:
    assert XSS not in html
    assert "<script>alert" not in html
    assert ESCAPED in html


async def test_pages_redirect_to_login_without_a_session(env: Env) -> None:
    anon = env.client()
    for path in PAGES:
        r = await anon.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"] == "/login", path
    anon.cookies.set(SESSION_COOKIE, "made-up-session")
    assert (await anon.get("/")).headers.get("location") == "/login"
    login = await anon.get("/login")
    assert login.status_code == 200
    assert 'id="login-form"' in login.text and 'type="password"' in login.text
    assert "script-src 'self'" in login.headers["content-security-policy"]


async def test_bot_page_shows_what_telegram_said_of_its_membership(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher,
) -> None:
    # issue 15: a 403 or a my_chat_member update left the bot out of a chat; the operator
    # sees it on the bot's page, with what told us (escaped)
    from backend.stores import members as member_store

    env.app.state.api.cipher = cipher
    chat_id, bot_id = await seed(sessionmaker, cipher)
    client, _ = await env.login("vera")
    page = (await client.get(f"/personas/{bot_id}")).text
    assert 'class="telegram-state' not in page  # nothing heard yet
    async with sessionmaker() as s, s.begin():
        await member_store.set_bot_member(s, chat_id=chat_id, bot_id=bot_id, status="kicked",
                                          reason="403 Forbidden: bot was kicked <b>")
    page = (await client.get(f"/personas/{bot_id}")).text
    assert 'data-status="kicked"' in page and "takes no turns there" in page
    assert "bot was kicked &lt;b&gt;" in page and "kicked <b>" not in page


async def test_logged_in_pages_render_and_escape_telegram_and_persona_text(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher,
) -> None:
    env.app.state.api.cipher = cipher
    chat_id, bot_id = await seed(sessionmaker, cipher)
    for who in ("alice", "vera"):  # viewers see every page too
        client, _ = await env.login(who)
        for path in ["/", f"/?chat_id={chat_id}", "/personas", f"/personas/{bot_id}",
                     "/settings", "/costs", "/costs?since=all&by=bot"]:
            r = await client.get(path)
            assert r.status_code == 200, (who, path)
            assert r.headers["content-type"].startswith("text/html")
            assert "<script>" not in r.text.replace(
                '<script src="/static/panel.js" defer></script>', "").replace(
                '<script type="application/json" id="bot-names">', ""), path
    client, _ = await env.login("alice")

    live = (await client.get(f"/?chat_id={chat_id}")).text
    _assert_escaped(live)
    assert "human says " + ESCAPED in live and "bot answers " + ESCAPED in live
    assert "Deniz &lt;b&gt;" in live and "Piyasa &lt;i&gt;" in live
    human = re.findall(r'<li class="msg( human)?"', live)
    assert human == [" human", ""]  # the human first, then the bot
    assert "↪ answers Deniz &lt;b&gt;: human says " + ESCAPED in live
    last_id = re.search(r'data-last-id="(\d+)"', live)
    assert last_id is not None and int(last_id.group(1)) > 0
    names = re.search(r'<script type="application/json" id="bot-names">(.*?)</script>', live)
    assert names is not None and json.loads(names.group(1)) == {
        str(bot_id): load_persona_dir()[0].name}

    listing = (await client.get("/personas")).text
    _assert_escaped(listing)
    assert f'href="/personas/{bot_id}"' in listing

    editor = (await client.get(f"/personas/{bot_id}")).text
    _assert_escaped(editor)
    area = re.search(r'<textarea id="persona-json"[^>]*>(.*?)</textarea>', editor, re.S)
    assert area is not None
    import html as html_lib

    fields = json.loads(html_lib.unescape(area.group(1)))
    assert fields["bio"] == f"Trader. {XSS} bio-marker" and "token" not in fields
    assert f'data-bot-id="{bot_id}"' in editor

    assert (await client.get("/personas/9999")).status_code == 404
    settings = (await client.get("/settings")).text
    assert "scale_factor" in settings and "max_msgs_per_min" in settings
    bad = await client.get("/costs", params={"since": XSS})
    assert bad.status_code == 422
    _assert_escaped(bad.text)


async def test_static_files_are_served(env: Env) -> None:
    anon = env.client()
    js = await anon.get("/static/panel.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "EventSource" in js.text and "textContent" in js.text
    assert "innerHTML" not in js.text and "insertAdjacentHTML" not in js.text
    css = await anon.get("/static/panel.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert ".msg.human" in css.text
    assert (await anon.get("/static/missing.js")).status_code == 404
    assert (await anon.get("/static/../pages.py")).status_code == 404


def _sandbox(calls: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"ok": True, "result": {"message_id": 42}})

    return httpx.MockTransport(handle)


async def test_sandbox_post_needs_an_admin_and_csrf_and_posts_to_the_sandbox(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[httpx.Request] = []
    monkeypatch.setattr(pages, "sandbox_transport", _sandbox(calls))
    chat_id, _ = await seed(sessionmaker, cipher)
    url = "/panel/sandbox/post"
    body = {"chat_id": chat_id, "text": "selam <b>", "reply_to_message_id": 2}
    assert (await env.client().post(url, json=body)).status_code == 401
    viewer, viewer_csrf = await env.login("vera")
    r = await viewer.post(url, json=body, headers={"X-CSRF-Token": viewer_csrf})
    assert r.status_code == 403 and r.json()["detail"] == "admin role required"
    admin, csrf = await env.login("alice")
    assert (await admin.post(url, json=body)).status_code == 403  # no CSRF header
    assert calls == []
    r = await admin.post(url, json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert r.json() == {"telegram_message_id": 42}
    assert len(calls) == 1
    assert str(calls[0].url) == "http://127.0.0.1:8081/sandbox/chats/-100777/messages"
    sent = json.loads(calls[0].content)
    assert sent["text"] == "selam <b>" and sent["reply_to_message_id"] == 2
    assert sent["first_name"] == "alice" and isinstance(sent["user_id"], int)
    unknown = await admin.post(url, json={**body, "chat_id": 9999},
                               headers={"X-CSRF-Token": csrf})
    assert unknown.status_code == 404 and len(calls) == 1


async def test_sandbox_post_refuses_a_real_telegram(
    tmp_path: Path, sessionmaker: Sessions, cipher: TokenCipher, cache: TwoLayerCache,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[httpx.Request] = []
    monkeypatch.setattr(pages, "sandbox_transport", _sandbox(calls))
    chat_id, _ = await seed(sessionmaker, cipher)
    env = await make_env(tmp_path, sessionmaker, cache,
                          telegram_api_url="https://api.telegram.org/bot")
    try:
        admin, csrf = await env.login("alice")
        r = await admin.post("/panel/sandbox/post", json={"chat_id": chat_id, "text": "hi"},
                             headers={"X-CSRF-Token": csrf})
        assert r.status_code == 409 and r.json()["detail"] == "not a sandbox"
        assert calls == []
    finally:
        for c in env.clients:
            await c.aclose()


@pytest.mark.parametrize(("url", "base"), [
    ("http://127.0.0.1:8081/bot", "http://127.0.0.1:8081"),
    ("http://localhost:9000/bot/", "http://localhost:9000"),
    ("http://[::1]:8081/bot", "http://[::1]:8081"),
    ("https://api.telegram.org/bot", None),
    ("http://127.0.0.1.example.com/bot", None),
    ("http://user@evil.example/bot?x=127.0.0.1", None),
    ("file://localhost/bot", None),
])
def test_sandbox_base_url(url: str, base: str | None) -> None:
    assert pages.sandbox_base_url(url) == base


# --- new persona page and group membership ----------------------------------------------

NEW_TOKEN = f"7300000002:AAH{'z' * 34}"


def _textarea(html: str) -> dict[str, Any]:
    import html as html_lib

    area = re.search(r'<textarea id="persona-json"[^>]*>(.*?)</textarea>', html, re.S)
    assert area is not None
    data = json.loads(html_lib.unescape(area.group(1)))
    assert isinstance(data, dict)
    return data


async def test_new_persona_page_needs_a_login(env: Env) -> None:
    anon = env.client()
    r = await anon.get("/personas/new")
    assert r.status_code == 303 and r.headers["location"] == "/login"


async def test_new_persona_page_renders_for_admin_and_viewer(env: Env) -> None:
    for who in ("alice", "vera"):
        client, _ = await env.login(who)
        r = await client.get("/personas/new")
        assert r.status_code == 200, (who, r.text)
        assert "script-src 'self'" in r.headers["content-security-policy"]
        page = r.text
        assert re.search(r'<input id="token" name="token" type="password"', page)
        assert 'id="persona-json"' in page and 'id="errors"' in page
        assert re.search(r'<button type="submit" id="create">', page)
        assert "<script>" not in page.replace(
            '<script src="/static/panel.js" defer></script>', "")
        assert ("needs the admin role" in page) is (who == "vera")
        listing = (await client.get("/personas")).text
        assert 'href="/personas/new"' in listing


async def test_new_persona_example_validates_and_creates_a_bot(
    env: Env, cipher: TokenCipher,
) -> None:
    from backend.api_schemas import BotCreate

    env.app.state.api.cipher = cipher
    admin, csrf = await env.login("alice")
    example = _textarea((await admin.get("/personas/new")).text)
    assert "token" not in example
    assert example["username"] == pages.EXAMPLE_USERNAME
    assert example["username"] not in {p.username for p in load_persona_dir()}
    body = {**example, "token": NEW_TOKEN}
    BotCreate.model_validate(body)  # raises when the example is not a valid persona

    viewer, viewer_csrf = await env.login("vera")
    refused = await viewer.post("/api/v1/bots", json=body,
                                headers={"X-CSRF-Token": viewer_csrf})
    assert refused.status_code == 403  # what the page shows a viewer
    made = await admin.post("/api/v1/bots", json=body, headers={"X-CSRF-Token": csrf})
    assert made.status_code == 201, made.text
    editor = await admin.get(f"/personas/{made.json()['id']}")  # where the page goes next
    assert editor.status_code == 200
    assert _textarea(editor.text)["username"] == pages.EXAMPLE_USERNAME


async def test_persona_editor_lists_groups_with_membership(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher,
) -> None:
    env.app.state.api.cipher = cipher
    chat_id, bot_id = await seed(sessionmaker, cipher)
    async with sessionmaker() as s, s.begin():
        other = await chat_store.upsert_chat(s, telegram_chat_id=-100888, title=f"Grup {XSS}",
                                             topics={"btc": 1.0})
        await chat_store.add_bot(s, chat_id=other.id, bot_id=bot_id)
        other_id = other.id
    admin, csrf = await env.login("alice")

    def rows(html: str) -> dict[int, str]:
        found = re.findall(r'<li class="chat-membership" data-chat-id="(\d+)" '
                           r'data-member="(true|false)">', html)
        return {int(c): m for c, m in found}

    editor = (await admin.get(f"/personas/{bot_id}")).text
    _assert_escaped(editor)
    assert 'id="groups"' in editor and "Groups</h2>" in editor
    assert "Piyasa &lt;i&gt;" in editor and f"Grup {ESCAPED}" in editor
    assert rows(editor) == {chat_id: "false", other_id: "true"}
    for c in (chat_id, other_id):
        assert f'<button type="button" data-chat-id="{c}">' in editor
    assert 'id="membership-status"' in editor

    r = await admin.put(f"/api/v1/chats/{chat_id}/bots/{bot_id}",
                        headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and bot_id in r.json()["bot_ids"]
    r = await admin.delete(f"/api/v1/chats/{other_id}/bots/{bot_id}",
                           headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and bot_id not in r.json()["bot_ids"]
    assert rows((await admin.get(f"/personas/{bot_id}")).text) == {
        chat_id: "true", other_id: "false"}


async def test_panel_js_drives_the_new_pages_without_inner_html(env: Env) -> None:
    js = (await env.client().get("/static/panel.js")).text
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js
    assert "outerHTML" not in js and "document.write" not in js
    for needle in ('getElementById("new-persona-form")', 'getElementById("token")',
                   'getElementById("errors")', ".chat-membership button[data-chat-id]",
                   '"X-CSRF-Token"', 'API + "/bots"', '"/bots/"',
                   'getElementById("settings-form")', 'getElementById("settings-json")',
                   'getElementById("settings-errors")', 'getElementById("settings-status")',
                   'getElementById("sim-state")', 'getElementById("sim-start")',
                   'getElementById("sim-stop")', 'send("PATCH", API + "/settings", body)',
                   'API + "/simulation/" + action', "initSettings();"):
        assert needle in js, needle


# --- settings page ----------------------------------------------------------------------


def _settings_area(html: str) -> dict[str, Any]:
    import html as html_lib

    area = re.search(r'<textarea id="settings-json"[^>]*>(.*?)</textarea>', html, re.S)
    assert area is not None
    data = json.loads(html_lib.unescape(area.group(1)))
    assert isinstance(data, dict)
    return data


def _sim_state(html: str) -> str:
    found = re.search(r'<span id="sim-state"[^>]*>([a-z]+)</span>', html)
    assert found is not None
    return found.group(1)


async def test_settings_page_is_an_editor_with_simulation_buttons(env: Env) -> None:
    for who in ("alice", "vera"):
        client, _ = await env.login(who)
        r = await client.get("/settings")
        assert r.status_code == 200, (who, r.text)
        page = r.text
        assert re.search(r'<form id="settings-form"', page)
        assert 'id="settings-errors"' in page and 'id="settings-status"' in page
        assert re.search(r'<button type="submit" id="settings-save">Save</button>', page)
        assert '<button type="button" id="sim-start">' in page
        assert '<button type="button" id="sim-stop">' in page
        shown = _settings_area(page)
        assert set(shown) == {"simulation_active", "bot_hourly_msg_limit", "max_msgs_per_min",
                              "prime_hours", "scale_factor",
                              # who answers (issue 14)
                              "second_answer_p", "expertise_weight", "thread_max_depth",
                              "reply_p",
                              # -- voice (issue 14) --
                              "reading_wpm", "reading_cap_s", "typing_cpm_default",
                              "typing_jitter", "typing_cap_s", "writing_lead_s",
                              # timing, pacing and participation (issue 14)
                              "budget_use", "burst_mean_msgs", "burst_gap_median_s",
                              "lull_sigma", "human_reply_reserve", "chatter_pacing",
                              "bot_daily_profile", "quiet_boost", "budget_evening"}
        assert shown["simulation_active"] is True and shown["scale_factor"] == 1.0
        assert shown["bot_hourly_msg_limit"] == {"min": 6, "max": 12}
        assert _sim_state(page) == "running"
        assert "<script>" not in page.replace(
            '<script src="/static/panel.js" defer></script>', "")
        assert ("needs the admin role" in page) is (who == "vera")
        assert '<a href="/audit">Audit</a>' in page


async def test_settings_page_shows_what_the_api_saved(env: Env) -> None:
    admin, csrf = await env.login("alice")
    edited = {**_settings_area((await admin.get("/settings")).text), "scale_factor": 2.5}
    saved = await admin.patch("/api/v1/settings", json=edited, headers={"X-CSRF-Token": csrf})
    assert saved.status_code == 200, saved.text
    assert saved.json()["scale_factor"] == 2.5  # what panel.js puts back in the textarea
    stopped = await admin.post("/api/v1/simulation/stop", headers={"X-CSRF-Token": csrf})
    assert stopped.status_code == 200 and stopped.json()["simulation_active"] is False
    page = (await admin.get("/settings")).text
    assert _settings_area(page)["scale_factor"] == 2.5
    assert _settings_area(page)["simulation_active"] is False
    assert _sim_state(page) == "stopped"

    bad = await admin.patch("/api/v1/settings", json={**edited, "max_msgs_per_min": 99},
                            headers={"X-CSRF-Token": csrf})
    assert bad.status_code == 422  # listed by panel.js under #settings-errors
    assert any("max_msgs_per_min" in ".".join(map(str, p["loc"])) for p in bad.json()["errors"])
    viewer, viewer_csrf = await env.login("vera")
    refused = await viewer.patch("/api/v1/settings", json=edited,
                                 headers={"X-CSRF-Token": viewer_csrf})
    assert refused.status_code == 403 and refused.json()["detail"] == "admin role required"
    assert _sim_state((await viewer.get("/settings")).text) == "stopped"


async def test_costs_page_shows_each_workers_breakers_and_budgets(
    tmp_path: Path, sessionmaker: Sessions, cache: TwoLayerCache
) -> None:
    guards = {"name": "groq", "breaker": "open", "retry_in_s": 12.5,
              "budget_left": {"requests/min": 28, "tokens/min": None, "tokens/day": 90_125},
              "tokens_today": 4_000}
    env = await make_env(tmp_path, sessionmaker, cache)
    env.app.state.api.local_workers = lambda: [
        ("w-1", {"name": XSS, "providers": [guards],
                 "guards": {"repeat:passed": 40, "repeat:dropped": 3,
                            "safety:guaranteed_returns": 1}}),
        ("w-2", {"name": "bare"})]
    try:
        viewer, _ = await env.login("vera")
        r = await viewer.get("/costs")
    finally:
        for c in env.clients:
            await c.aclose()
    assert r.status_code == 200
    table = r.text[r.text.index('id="worker-guards"'):]
    _assert_escaped(table)
    assert 'class="breaker-open">open<' in table and "12.5" in table
    assert ">28<" in table and ">no limit<" in table and ">90125<" in table
    assert "bare" in table and "offline generator only" in table
    assert "No provider call in that window." in r.text
    text_guards = r.text[r.text.index('id="text-guards"'):]  # issue 16: guard outcomes
    assert "<td>repeat</td><td>dropped</td><td>3</td>" in text_guards
    assert "<td>safety</td><td>guaranteed_returns</td><td>1</td>" in text_guards

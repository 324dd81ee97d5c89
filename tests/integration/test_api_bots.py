"""Admin API bots, personas, prompt preview and chats (``backend.api.routes_bots``).

Runs on SQLite and PostgreSQL (the ``sessionmaker`` fixture). Every answer of every client
made here is checked for the plain bot tokens used (none may appear); the audit rows are
checked for them too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.api.app import create_app
from backend.api.security import ApiState
from backend.cache import TwoLayerCache
from backend.crypto import Secrets
from backend.db.models import AuditEntry, Bot
from backend.settings import Settings
from backend.stores import users as user_store
from behavior_engine.reads import CachedReads
from tests.conftest import cheap_hasher as _cheap_hasher

Sessions = async_sessionmaker[AsyncSession]
SECRET = "k" * 40
API = "/api/v1"
TOKEN_A = "7100000001:AAHsecretPartOfTokenA_0123456789abcd"
TOKEN_B = "7100000002:AAHsecretPartOfTokenB_0123456789efgh"
TOKEN_C = "7100000003:AAHsecretPartOfTokenC_0123456789ijkl"
PLAIN_TOKENS = (TOKEN_A, TOKEN_B, TOKEN_C)
#: The secret parts alone must not appear either (a token split or re-encoded).
SECRET_PARTS = tuple(t.split(":", 1)[1] for t in PLAIN_TOKENS)


def persona(username: str = "deniz_trader_bot", **changes: Any) -> dict[str, Any]:
    """A valid persona body."""
    body: dict[str, Any] = {
        "name": "Deniz Trader",
        "username": username,
        "role": "day trader",
        "language": "tr",
        "bio": "Borsayı her gün izler, kısa vadeli işlem yapar.",
        "style": {"formality": "casual", "emoji_rate": 0.5, "length": "short"},
        "topics": {"bist100": 2.0, "btc": 1.0},
        "talkativeness": 1.0,
        "mood_baseline": 0.1,
        "stances": [{"topic": "btc", "view": "bullish", "conviction": 0.6,
                     "reason": "Uzun vadede yükselir."}],
        "holdings": [{"symbol": "BTC", "quantity": 0.5, "avg_cost": 60000.0}],
    }
    return {**body, **changes}


@dataclass
class World:
    app: FastAPI
    admin: httpx.AsyncClient  # bearer token of an admin
    viewer: httpx.AsyncClient  # bearer token of a viewer
    anon: httpx.AsyncClient
    sm: Sessions
    bodies: list[str]

    @property
    def state(self) -> ApiState:
        state: ApiState = self.app.state.api
        return state

    @property
    def reads(self) -> CachedReads:
        assert self.state.reads is not None
        return self.state.reads

    def client(self) -> httpx.AsyncClient:
        """A new client without credentials (own cookie jar); answers are checked."""

        async def no_token(response: httpx.Response) -> None:
            body = (await response.aread()).decode(errors="replace")
            self.bodies.append(body)
            for secret in SECRET_PARTS:
                assert secret not in body, f"a bot token leaked from {response.request.url}"

        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                 base_url="http://testserver",
                                 event_hooks={"response": [no_token]})

    async def create_bot(self, username: str = "deniz_trader_bot", token: str = TOKEN_A,
                         **changes: Any) -> dict[str, Any]:
        r = await self.admin.post(f"{API}/bots", json={**persona(username, **changes),
                                                       "token": token})
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    async def create_chat(self, telegram_chat_id: int = -100123) -> dict[str, Any]:
        r = await self.admin.post(f"{API}/chats", json={
            "telegram_chat_id": telegram_chat_id, "title": "Piyasa", "topics": {"btc": 1.0}})
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    async def audit(self) -> list[AuditEntry]:
        async with self.sm() as session:
            return list((await session.execute(
                select(AuditEntry).order_by(AuditEntry.id))).scalars().all())


async def _bearer(sm: Sessions, username: str, role: str) -> str:
    async with sm() as session, session.begin():
        user = await user_store.create_user(session, username=username, role=role,
                                            password_hash=_cheap_hasher().hash("pw-" + username))
        _, token = await user_store.create_api_token(session, user_id=user.id, name="t",
                                                     secret_key=SECRET)
    return token


@pytest.fixture
async def world(tmp_path: Path, sessionmaker: Sessions) -> AsyncIterator[World]:
    cache = TwoLayerCache(redis_url=None)
    await cache.start()
    settings = Settings(data_dir=tmp_path, secret_key=SECRET)
    secrets = Secrets(fernet_key=Fernet.generate_key().decode(), webhook_secret="w" * 40)
    app = create_app(settings, sessionmaker, hasher=_cheap_hasher(), secrets=secrets,
                     reads=CachedReads(cache, sessionmaker))
    w = World(app=app, admin=None, viewer=None, anon=None,  # type: ignore[arg-type]
              sm=sessionmaker, bodies=[])
    clients = [w.client() for _ in range(3)]
    w.admin, w.viewer, w.anon = clients
    w.admin.headers["Authorization"] = f"Bearer {await _bearer(sessionmaker, 'alice', 'admin')}"
    w.viewer.headers["Authorization"] = f"Bearer {await _bearer(sessionmaker, 'vera', 'viewer')}"
    yield w
    for c in clients:
        await c.aclose()
    await cache.close()


def _fields(response: httpx.Response) -> set[str]:
    """The refused body fields of a 422 problem-details answer, as dotted paths ("body":
    the whole body)."""
    assert response.headers["content-type"] == "application/problem+json", response.text
    problem = response.json()
    assert problem["status"] == 422 and problem["title"] == "Unprocessable Content"
    assert all(p["loc"][0] == "body" for p in problem["errors"]), problem
    return {".".join(map(str, p["loc"][1:])) or "body" for p in problem["errors"]}


# --- bots -------------------------------------------------------------------------------


async def test_create_read_and_list_bots_by_role(world: World) -> None:
    created = await world.create_bot()
    assert created["username"] == "deniz_trader_bot" and created["enabled"] is True
    assert created["token_masked"] == "7100000001:****abcd"
    assert created["telegram_user_id"] == 7100000001 and "token" not in created
    assert created["mood"] == pytest.approx(0.1)
    second = await world.create_bot("ayse_scalp_bot", TOKEN_B)

    for client in (world.admin, world.viewer):
        one = await client.get(f"{API}/bots/{created['id']}")
        assert one.status_code == 200 and one.json() == created
        listed = await client.get(f"{API}/bots")
        assert listed.status_code == 200
        assert [b["id"] for b in listed.json()["items"]] == [second["id"], created["id"]]
        assert listed.json()["next_cursor"] is None
    page1 = (await world.viewer.get(f"{API}/bots", params={"limit": 1})).json()
    assert [b["id"] for b in page1["items"]] == [second["id"]]
    assert page1["next_cursor"] == second["id"]
    page2 = (await world.viewer.get(f"{API}/bots", params={"limit": 1,
                                                           "cursor": page1["next_cursor"]})).json()
    assert [b["id"] for b in page2["items"]] == [created["id"]] and page2["next_cursor"] is None
    assert (await world.viewer.get(f"{API}/bots", params={"limit": 0})).status_code == 422

    denied = await world.viewer.post(f"{API}/bots", json={**persona("other_one_bot"),
                                                          "token": TOKEN_C})
    assert denied.status_code == 403
    for method, path in (("GET", "/bots"), ("GET", f"/bots/{created['id']}"),
                         ("POST", "/bots")):
        assert (await world.anon.request(method, API + path)).status_code == 401
    missing = await world.viewer.get(f"{API}/bots/999999")
    assert missing.status_code == 404 and "999999" in missing.json()["detail"]
    async with world.sm() as session:  # stored encrypted, never plain
        stored = (await session.execute(select(Bot.token_encrypted))).scalars().all()
    assert all(TOKEN_A.encode() not in s and TOKEN_B.encode() not in s for s in stored)


async def test_create_refuses_duplicates_and_bad_input(world: World) -> None:
    await world.create_bot()
    same_name = await world.admin.post(f"{API}/bots", json={**persona("Deniz_Trader_BOT"),
                                                            "token": TOKEN_B})
    assert same_name.status_code == 409 and "username" in same_name.json()["detail"]
    same_token = await world.admin.post(f"{API}/bots", json={**persona("other_one_bot"),
                                                             "token": TOKEN_A})
    assert same_token.status_code == 409 and "token" in same_token.json()["detail"]

    bad_token = await world.admin.post(f"{API}/bots", json={
        **persona("other_one_bot"), "token": "7100000003:" + SECRET_PARTS[2][:10]})
    assert bad_token.status_code == 422 and _fields(bad_token) == {"token"}
    no_colon = await world.admin.post(f"{API}/bots", json={
        **persona("other_one_bot"), "token": SECRET_PARTS[2]})
    assert no_colon.status_code == 422 and _fields(no_colon) == {"token"}
    bad_persona = await world.admin.post(f"{API}/bots", json={
        **persona("other_one_bot", style={"formality": "casual", "emoji_rate": 9,
                                          "length": "short"}), "token": TOKEN_C})
    assert bad_persona.status_code == 422 and _fields(bad_persona) == {"style.emoji_rate"}
    extra = await world.admin.post(f"{API}/bots", json={**persona("other_one_bot"),
                                                        "token": TOKEN_C, "secret": "x"})
    assert extra.status_code == 422 and _fields(extra) == {"secret"}
    not_object = await world.admin.post(f"{API}/bots", json=[TOKEN_C])
    assert not_object.status_code == 422 and _fields(not_object) == {"body"}
    assert len((await world.viewer.get(f"{API}/bots")).json()["items"]) == 1
    assert [e.action for e in await world.audit()] == ["bot.create"]


async def test_nul_characters_are_refused_by_field_not_a_server_error(world: World) -> None:
    """PostgreSQL text cannot hold NUL: a body carrying one got a 500 there, now a 422."""
    for field, value in (("name", "Deniz\x00"), ("bio", "a\x00b"),
                         ("stances", [{"topic": "btc", "view": "bullish", "conviction": 0.5,
                                       "reason": "\x00"}])):
        r = await world.admin.post(f"{API}/bots", json={**persona(), field: value,
                                                         "token": TOKEN_A})
        assert r.status_code == 422, (field, r.text)
        assert {f.split(".")[0] for f in _fields(r)} == {field}
        assert "NUL" in r.text
    r = await world.admin.post(f"{API}/chats", json={"telegram_chat_id": -1001,
                                                      "title": "P\x00", "topics": {"btc": 1}})
    assert r.status_code == 422, r.text
    r = await world.admin.post(f"{API}/auth/tokens", json={"name": "n\x00"})
    assert r.status_code == 422, r.text
    r = await world.anon.post(f"{API}/auth/login", json={"username": "a\x00", "password": "x"})
    assert r.status_code == 422, r.text
    assert (await world.viewer.get(f"{API}/bots")).json()["items"] == []
    assert await world.audit() == []


async def test_patch_merges_audits_and_reaches_the_cached_bot(world: World) -> None:
    bot = await world.create_bot()
    path = f"{API}/bots/{bot['id']}"
    cached = await world.reads.bot(bot["id"])  # warm the workers' cache
    assert cached.persona.bio.startswith("Borsayı")

    r = await world.admin.patch(path, json={"bio": "Artık uzun vadeli yatırımcı.",
                                            "talkativeness": 2.5})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["persona"]["bio"] == "Artık uzun vadeli yatırımcı."
    assert out["persona"]["talkativeness"] == 2.5
    assert out["persona"]["role"] == "day trader" and out["stances"] == bot["stances"]
    for _ in range(100):  # the invalidation runs right after the commit
        cached = await world.reads.bot(bot["id"])
        if cached.persona.bio != bot["persona"]["bio"]:
            break
        await asyncio.sleep(0.01)
    assert cached.persona.bio == "Artık uzun vadeli yatırımcı."
    assert cached.persona.talkativeness == 2.5

    entry = (await world.audit())[-1]
    assert (entry.action, entry.entity, entry.entity_id) == ("bot.update", "bot",
                                                             str(bot["id"]))
    assert entry.username == "alice" and entry.user_id is not None
    assert entry.before == {"bio": bot["persona"]["bio"], "talkativeness": 1.0}
    assert entry.after == {"bio": "Artık uzun vadeli yatırımcı.", "talkativeness": 2.5}

    replaced = await world.admin.patch(path, json={"token": TOKEN_B, "mood": -0.5})
    assert replaced.status_code == 200
    assert replaced.json()["token_masked"] == "7100000002:****efgh"
    assert replaced.json()["telegram_user_id"] == 7100000002
    entry = (await world.audit())[-1]
    assert entry.before["token"] == entry.after["token"] == "***"
    assert entry.after["telegram_user_id"] == 7100000002 and entry.after["mood"] == -0.5


async def test_patch_refusals(world: World) -> None:
    bot = await world.create_bot()
    await world.create_bot("other_one_bot", TOKEN_B)
    path = f"{API}/bots/{bot['id']}"
    out_of_range = await world.admin.patch(path, json={"talkativeness": 99})
    assert out_of_range.status_code == 422 and _fields(out_of_range) == {"talkativeness"}
    merged = await world.admin.patch(path, json={"stances": [
        {"topic": "btc", "view": "bullish", "conviction": 0.5, "reason": "a"},
        {"topic": "btc", "view": "bearish", "conviction": 0.5, "reason": "b"}]})
    assert merged.status_code == 422 and _fields(merged) == {"stances"}
    null = await world.admin.patch(path, json={"bio": None})
    assert null.status_code == 422
    bad_token = await world.admin.patch(path, json={"token": "1:" + SECRET_PARTS[2]})
    assert bad_token.status_code == 422 and _fields(bad_token) == {"token"}
    taken_name = await world.admin.patch(path, json={"username": "OTHER_one_bot"})
    assert taken_name.status_code == 409
    taken_token = await world.admin.patch(path, json={"token": TOKEN_B})
    assert taken_token.status_code == 409
    assert (await world.viewer.patch(path, json={"bio": "x"})).status_code == 403
    assert (await world.anon.patch(path, json={"bio": "x"})).status_code == 401
    missing = await world.admin.patch(f"{API}/bots/424242", json={"bio": "x"})
    assert missing.status_code == 404 and "424242" in missing.json()["detail"]
    assert (await world.viewer.get(path)).json() == bot  # nothing changed
    assert [e.action for e in await world.audit()] == ["bot.create", "bot.create"]


async def test_enable_and_disable(world: World) -> None:
    bot = await world.create_bot()
    assert (await world.reads.bot(bot["id"])).enabled is True
    off = await world.admin.post(f"{API}/bots/{bot['id']}/disable")
    assert off.status_code == 200 and off.json()["enabled"] is False
    again = await world.admin.post(f"{API}/bots/{bot['id']}/disable")  # no-op, no entry
    assert again.status_code == 200 and again.json()["enabled"] is False
    for _ in range(100):
        if not (await world.reads.bot(bot["id"])).enabled:
            break
        await asyncio.sleep(0.01)
    assert (await world.reads.bot(bot["id"])).enabled is False
    on = await world.admin.post(f"{API}/bots/{bot['id']}/enable")
    assert on.status_code == 200 and on.json()["enabled"] is True
    entries = [(e.action, e.before, e.after) for e in await world.audit()][1:]
    assert entries == [("bot.disable", {"enabled": True}, {"enabled": False}),
                       ("bot.enable", {"enabled": False}, {"enabled": True})]
    assert (await world.viewer.post(f"{API}/bots/{bot['id']}/disable")).status_code == 403
    assert (await world.anon.post(f"{API}/bots/{bot['id']}/enable")).status_code == 401
    assert (await world.admin.post(f"{API}/bots/31337/enable")).status_code == 404


# --- personas and preview ---------------------------------------------------------------


async def test_validate_persona(world: World) -> None:
    ok = await world.viewer.post(f"{API}/personas/validate", json=persona())
    assert ok.status_code == 200 and ok.json() == {"ok": True}
    bad = await world.viewer.post(f"{API}/personas/validate", json=persona(
        "nobotname", language="de", topics={"btc": -1.0}))
    assert bad.status_code == 422
    assert _fields(bad) == {"username", "language", "topics"}
    assert all(p["msg"] for p in bad.json()["errors"])
    missing = await world.admin.post(f"{API}/personas/validate", json={"name": "x"})
    assert missing.status_code == 422 and {"bio", "username", "style"} <= _fields(missing)
    assert (await world.anon.post(f"{API}/personas/validate", json=persona())).status_code == 401


async def test_preview(world: World) -> None:
    bot = await world.create_bot()
    chat = await world.create_chat()
    r = await world.viewer.get(f"{API}/bots/{bot['id']}/preview",
                               params={"chat_id": chat["id"]})
    assert r.status_code == 200, r.text
    got = r.json()
    assert [layer["name"] for layer in got["layers"]] == [
        "persona_core", "stances_and_holdings", "mood", "memory", "history", "instruction"]
    assert "Deniz Trader" in "\n".join(m["content"] for m in got["messages"])
    assert got["tokens_estimate"] > 0 and got["topic"] in {"btc", "bist100"}
    no_chat = await world.viewer.get(f"{API}/bots/{bot['id']}/preview",
                                     params={"chat_id": 5555})
    assert no_chat.status_code == 404 and "5555" in no_chat.json()["detail"]
    no_bot = await world.viewer.get(f"{API}/bots/6666/preview", params={"chat_id": chat["id"]})
    assert no_bot.status_code == 404 and "6666" in no_bot.json()["detail"]
    assert (await world.viewer.get(f"{API}/bots/{bot['id']}/preview")).status_code == 422
    assert (await world.anon.get(f"{API}/bots/{bot['id']}/preview",
                                 params={"chat_id": chat["id"]})).status_code == 401


# --- chats ------------------------------------------------------------------------------


async def test_chats_and_members(world: World) -> None:
    bot = await world.create_bot()
    chat = await world.create_chat()
    assert chat["bot_ids"] == [] and chat["topics"] == {"btc": 1.0}
    dup = await world.admin.post(f"{API}/chats", json={
        "telegram_chat_id": -100123, "title": "again", "topics": {"btc": 1.0}})
    assert dup.status_code == 409
    bad = await world.admin.post(f"{API}/chats", json={
        "telegram_chat_id": -1, "title": "", "topics": {"btc": 0}})
    assert bad.status_code == 422
    assert _fields(bad) == {"title", "topics"}
    viewer_post = await world.viewer.post(f"{API}/chats", json={
        "telegram_chat_id": -2, "title": "t", "topics": {"btc": 1.0}})
    assert viewer_post.status_code == 403

    member = f"{API}/chats/{chat['id']}/bots/{bot['id']}"
    assert (await world.viewer.put(member)).status_code == 403
    added = await world.admin.put(member)
    assert added.status_code == 200 and added.json()["bot_ids"] == [bot["id"]]
    assert (await world.admin.put(member)).json()["bot_ids"] == [bot["id"]]  # idempotent
    assert [c.id for c in await world.reads.chats() if bot["id"] in c.bot_ids] == [chat["id"]]
    for client in (world.admin, world.viewer):
        one = await client.get(f"{API}/chats/{chat['id']}")
        assert one.status_code == 200 and one.json()["bot_ids"] == [bot["id"]]
        listed = (await client.get(f"{API}/chats")).json()
        assert [(c["id"], c["bot_ids"]) for c in listed["items"]] == [(chat["id"], [bot["id"]])]
    second = await world.create_chat(-100456)
    page = (await world.viewer.get(f"{API}/chats", params={"limit": 1})).json()
    assert [c["id"] for c in page["items"]] == [second["id"]]
    assert page["next_cursor"] == second["id"]

    assert (await world.viewer.delete(member)).status_code == 403
    removed = await world.admin.delete(member)
    assert removed.status_code == 200 and removed.json()["bot_ids"] == []
    for _ in range(100):
        if not any(bot["id"] in c.bot_ids for c in await world.reads.chats()):
            break
        await asyncio.sleep(0.01)
    assert not any(bot["id"] in c.bot_ids for c in await world.reads.chats())

    for path in (f"/chats/777/bots/{bot['id']}", f"/chats/{chat['id']}/bots/888"):
        for method in ("PUT", "DELETE"):
            r = await world.admin.request(method, API + path)
            assert r.status_code == 404 and path.split("/")[2 if "777" in path else 4] in (
                r.json()["detail"])
    assert (await world.viewer.get(f"{API}/chats/999")).status_code == 404
    assert (await world.anon.get(f"{API}/chats")).status_code == 401
    assert (await world.anon.put(member)).status_code == 401

    entries = [(e.action, e.entity, e.entity_id, e.before, e.after)
               for e in await world.audit() if e.entity == "chat"]
    assert entries[0][:4] == ("chat.create", "chat", str(chat["id"]), None)
    assert entries[0][4]["title"] == "Piyasa"
    assert entries[1:3] == [
        ("chat.add_bot", "chat", str(chat["id"]), {"bot_ids": []}, {"bot_ids": [bot["id"]]}),
        ("chat.create", "chat", str(second["id"]), None, entries[2][4]),
    ]
    assert entries[3] == ("chat.remove_bot", "chat", str(chat["id"]),
                          {"bot_ids": [bot["id"]]}, {"bot_ids": []})
    assert len(entries) == 4


async def test_member_talkativeness_per_chat(world: World) -> None:
    """``PUT …/chats/{id}/bots/{id}?talkativeness=`` sets the bot's share weight in that chat
    (issue 14: loud in one group, quiet in another); out of range is a 422 naming it."""
    bot = await world.create_bot()
    chat = await world.create_chat()
    member = f"{API}/chats/{chat['id']}/bots/{bot['id']}"
    assert (await world.admin.put(member, params={"talkativeness": 7.5})).status_code == 200
    for _ in range(100):
        if any(c.talkativeness == {bot["id"]: 7.5} for c in await world.reads.chats()):
            break
        await asyncio.sleep(0.01)
    [seen] = [c for c in await world.reads.chats() if c.id == chat["id"]]
    assert seen.talkativeness == {bot["id"]: 7.5}
    for bad in ("0", "10.5", "lots"):
        r = await world.admin.put(member, params={"talkativeness": bad})
        assert r.status_code == 422 and "talkativeness" in r.text
    assert (await world.viewer.put(member, params={"talkativeness": 2})).status_code == 403
    entries = [(e.action, e.after) for e in await world.audit() if e.entity == "chat"]
    assert ("chat.bot_talkativeness", {"bot_id": bot["id"], "talkativeness": 7.5}) in entries


# --- cross-cutting ----------------------------------------------------------------------


async def test_cookie_session_patch_needs_csrf(world: World, sessionmaker: Sessions) -> None:
    bot = await world.create_bot()
    browser = world.client()
    try:
        login = await browser.post(f"{API}/auth/login",
                                   json={"username": "alice", "password": "pw-alice"})
        assert login.status_code == 200
        csrf = login.json()["csrf_token"]
        path = f"{API}/bots/{bot['id']}"
        no_header = await browser.patch(path, json={"bio": "cookie edit"})
        assert no_header.status_code == 403 and "X-CSRF-Token" in no_header.json()["detail"]
        assert (await browser.post(f"{API}/bots/{bot['id']}/disable")).status_code == 403
        assert (await browser.get(path)).json()["persona"]["bio"] == bot["persona"]["bio"]
        ok = await browser.patch(path, json={"bio": "cookie edit"},
                                 headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 200 and ok.json()["persona"]["bio"] == "cookie edit"
    finally:
        await browser.aclose()


async def test_oversized_body_is_refused(world: World) -> None:
    big = persona(bio="x" * (1024 * 1024 + 1))
    r = await world.admin.post(f"{API}/bots", json={**big, "token": TOKEN_A})
    assert r.status_code == 413 and "detail" in r.json()
    r = await world.admin.patch(f"{API}/bots/1", json=big)
    assert r.status_code == 413
    assert (await world.viewer.get(f"{API}/bots")).json()["items"] == []


async def test_no_answer_or_audit_entry_carries_a_token(world: World) -> None:
    bot = await world.create_bot()
    chat = await world.create_chat()
    await world.admin.put(f"{API}/chats/{chat['id']}/bots/{bot['id']}")
    await world.admin.patch(f"{API}/bots/{bot['id']}", json={"token": TOKEN_B, "bio": "yeni"})
    await world.admin.patch(f"{API}/bots/{bot['id']}", json={"token": "bad:" + TOKEN_C})
    await world.admin.post(f"{API}/bots", json={**persona("x_bad_bot", language="xx"),
                                                "token": TOKEN_C})
    await world.admin.post(f"{API}/bots", json={**persona("other_one_bot"), "token": TOKEN_B})
    for path in ("/bots", f"/bots/{bot['id']}", f"/bots/{bot['id']}/preview?chat_id="
                 f"{chat['id']}", "/chats", f"/chats/{chat['id']}", "/openapi.json"):
        assert (await world.viewer.get(API + path)).status_code == 200
    assert len(world.bodies) >= 12
    for body in world.bodies:  # the hook checked each already; check the whole tokens too
        assert not any(t in body for t in PLAIN_TOKENS)
    for entry in await world.audit():
        text = f"{entry.before} {entry.after}"
        assert not any(s in text for s in SECRET_PARTS)


async def test_openapi_documents_the_routes(world: World) -> None:
    spec = (await world.viewer.get(f"{API}/openapi.json")).json()
    paths = spec["paths"]
    assert {f"{API}/bots", f"{API}/bots/{{bot_id}}", f"{API}/bots/{{bot_id}}/enable",
            f"{API}/bots/{{bot_id}}/disable", f"{API}/bots/{{bot_id}}/preview",
            f"{API}/personas/validate", f"{API}/chats", f"{API}/chats/{{chat_id}}",
            f"{API}/chats/{{chat_id}}/bots/{{bot_id}}"} <= set(paths)
    create = paths[f"{API}/bots"]["post"]
    body_schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert "token" in body_schema["properties"] and "style" in body_schema["properties"]
    assert "$defs" not in str(body_schema)
    assert create["description"].startswith("Create a bot")
    assert "token" not in spec["components"]["schemas"]["BotOut"]["properties"]
    assert "token" in paths[f"{API}/bots/{{bot_id}}"]["patch"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]

"""Admin API operations routes: settings, start/stop, messages, costs, provider health and
the audit log (:mod:`backend.api.routes_ops`; its Server-Sent Events: ``test_api_events``).

Runs on SQLite and PostgreSQL (the ``sessionmaker`` fixture); users hash with argon2's
cheapest parameters. :class:`Env` and :func:`make_env` serve the other ``test_api_*``
modules too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import keys
from backend.api.app import create_app
from backend.api.security import ApiState
from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from backend.db.models import AuditEntry
from backend.schemas import MessageMeta
from backend.settings import Settings
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import llm_calls as llm_store
from backend.stores import messages as message_store
from backend.stores import users as user_store
from behavior_engine.reads import CachedReads
from bots.personas import load_persona_dir
from tests.conftest import cheap_hasher as _hasher

Sessions = async_sessionmaker[AsyncSession]
SECRET = "k" * 40
API = "/api/v1"
ADMIN_PW = "admin password 123"
VIEWER_PW = "viewer password 123"
START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


# --- fixtures ---------------------------------------------------------------------------


class Env:
    """The app, its state, and logged-in clients."""

    def __init__(self, app: FastAPI, sm: Sessions) -> None:
        self.app = app
        self.sm = sm
        self.state: ApiState = app.state.api
        self.clients: list[httpx.AsyncClient] = []
        self.csrf: dict[int, str] = {}

    def client(self, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=transport or httpx.ASGITransport(app=self.app),
                              base_url="http://testserver")
        self.clients.append(c)
        return c

    async def login(self, who: str, transport: httpx.AsyncBaseTransport | None = None
                    ) -> httpx.AsyncClient:
        c = self.client(transport)
        pw = ADMIN_PW if who == "alice" else VIEWER_PW
        r = await c.post(f"{API}/auth/login", json={"username": who, "password": pw})
        assert r.status_code == 200, r.text
        c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        return c


async def make_env(tmp_path: Path, sm: Sessions, **settings: Any) -> AsyncIterator[Env]:
    cache = TwoLayerCache(redis_url=None)
    await cache.start()
    hasher = _hasher()
    app = create_app(Settings(data_dir=tmp_path, secret_key=SECRET, **settings), sm,
                     hasher=hasher, reads=CachedReads(cache, sm))
    async with sm() as s, s.begin():
        await user_store.create_user(s, username="alice", role="admin",
                                     password_hash=hasher.hash(ADMIN_PW))
        await user_store.create_user(s, username="vera", role="viewer",
                                     password_hash=hasher.hash(VIEWER_PW))
    env = Env(app, sm)
    yield env
    for c in env.clients:
        await c.aclose()
    await cache.close()


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions) -> AsyncIterator[Env]:
    async for e in make_env(tmp_path, sessionmaker):
        yield e


async def seed_chat(sm: Sessions, cipher: TokenCipher) -> tuple[int, list[int], list[int]]:
    """A chat with two bots; messages bot0, human, bot1, human, bot0 (ids returned in order)."""
    personas = load_persona_dir()[:2]
    async with sm() as s, s.begin():
        chat = await chat_store.upsert_chat(s, telegram_chat_id=-100555, title="Piyasa",
                                            topics={"btc": 1.0})
        other = await chat_store.upsert_chat(s, telegram_chat_id=-100556, title="Other",
                                             topics={"btc": 1.0})
        bot_ids = []
        for n, persona in enumerate(personas):
            bot = await bot_store.upsert_persona_bot(
                s, persona=persona, token=f"{7300000000 + n}:AAH{'y' * 30}{n:04d}",
                cipher=cipher)
            bot_ids.append(bot.id)
        ids = []
        for i in range(5):
            at = START + timedelta(seconds=10 * i)
            if i % 2 == 0:
                m = await message_store.record_sent(
                    s, chat_id=chat.id, bot_id=bot_ids[i % 4 // 2], turn_id=f"t-{i}",
                    telegram_message_id=i + 1, text=f"bot says <b>{i}</b>",
                    meta=MessageMeta(topic="btc"), created_at=at)
                ids.append(m.id)
            else:
                got = await message_store.record_incoming(
                    s, chat_id=chat.id, telegram_message_id=i + 1, text=f"human {i}",
                    sender_id=900 + i, sender_name="Deniz", meta=MessageMeta(), created_at=at)
                assert got is not None
                ids.append(got)
        await message_store.record_incoming(
            s, chat_id=other.id, telegram_message_id=1, text="elsewhere", sender_id=1,
            sender_name="X", meta=MessageMeta(), created_at=START)
        return chat.id, bot_ids, ids


# --- auth on every route ----------------------------------------------------------------

VIEWER_ROUTES = [("GET", "/settings"), ("GET", "/messages"), ("GET", "/costs"),
                 ("GET", "/providers/health")]
ADMIN_ROUTES = [("PATCH", "/settings"), ("POST", "/simulation/start"),
                ("POST", "/simulation/stop"), ("GET", "/audit")]


async def test_routes_need_a_login_and_admin_routes_an_admin(env: Env) -> None:
    anon = env.client()
    # /events is checked with a streaming transport (test_events_need_a_login): here a
    # stream that failed to refuse would never end.
    for method, path in [*VIEWER_ROUTES, *ADMIN_ROUTES]:
        body = {"scale_factor": 2.0} if method == "PATCH" else None
        r = await anon.request(method, API + path, json=body)
        assert r.status_code == 401, (method, path)
    viewer = await env.login("vera")
    admin = await env.login("alice")
    for method, path in VIEWER_ROUTES:
        assert (await viewer.request(method, API + path)).status_code == 200, path
        assert (await admin.request(method, API + path)).status_code == 200, path
    for method, path in ADMIN_ROUTES:
        body = {"scale_factor": 2.0} if method == "PATCH" else None
        r = await viewer.request(method, API + path, json=body)
        assert r.status_code == 403 and r.json()["detail"] == "admin role required", path
        assert (await admin.request(method, API + path, json=body)).status_code == 200, path
    # Cookie sessions must send the CSRF token on changes.
    del admin.headers["X-CSRF-Token"]
    assert (await admin.post(f"{API}/simulation/stop")).status_code == 403
    spec = (await anon.get(f"{API}/openapi.json")).json()
    for _, path in [*VIEWER_ROUTES, *ADMIN_ROUTES, ("GET", "/events")]:
        assert API + path in spec["paths"]
    assert "text/event-stream" in spec["paths"][f"{API}/events"]["get"]["responses"]["200"][
        "content"]
    patch = spec["paths"][f"{API}/settings"]["patch"]
    assert patch["description"] and "200" in patch["responses"]


# --- settings ---------------------------------------------------------------------------


async def test_patch_settings_validates_audits_and_reaches_the_cache(env: Env) -> None:
    assert env.state.reads is not None
    assert (await env.state.reads.settings()).max_msgs_per_min == 6  # now cached
    admin = await env.login("alice")
    bad = await admin.patch(f"{API}/settings", json={"max_msgs_per_min": 50})
    assert bad.status_code == 422
    assert [e["loc"] for e in bad.json()["errors"]] == [["body", "max_msgs_per_min"]]
    unknown = await admin.patch(f"{API}/settings", json={"max_msgs_per_minute": 5})
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["loc"] == ["body", "max_msgs_per_minute"]
    null = await admin.patch(f"{API}/settings", json={"scale_factor": None})
    assert null.status_code == 422 and "scale_factor" in null.text
    order = await admin.patch(f"{API}/settings",
                              json={"bot_hourly_msg_limit": {"min": 9, "max": 3}})
    assert order.status_code == 422
    assert order.json()["errors"][0]["loc"][:2] == ["body", "bot_hourly_msg_limit"]
    async with env.sm() as s:
        assert (await s.execute(select(AuditEntry))).first() is None  # nothing refused counts

    ok = await admin.patch(f"{API}/settings",
                           json={"max_msgs_per_min": 9, "prime_hours": {"boost": 3.0}})
    assert ok.status_code == 200, ok.text
    assert ok.json()["max_msgs_per_min"] == 9 and ok.json()["prime_hours"]["boost"] == 3.0
    got = await env.state.reads.settings()
    assert got.max_msgs_per_min == 9 and got.prime_hours.boost == 3.0
    viewer = await env.login("vera")
    assert (await viewer.get(f"{API}/settings")).json()["max_msgs_per_min"] == 9

    same = await admin.patch(f"{API}/settings", json={"max_msgs_per_min": 9})
    assert same.status_code == 200  # no change: no audit entry
    audit = (await admin.get(f"{API}/audit", params={"entity": "settings"})).json()
    assert len(audit["items"]) == 1 and audit["next_cursor"] is None
    entry = audit["items"][0]
    assert entry["action"] == "settings.update" and entry["username"] == "alice"
    assert entry["before"]["max_msgs_per_min"] == 6 and entry["after"]["max_msgs_per_min"] == 9
    assert entry["before"]["prime_hours"]["boost"] != 3.0
    assert entry["after"]["prime_hours"]["boost"] == 3.0
    assert "scale_factor" not in entry["after"]


async def test_start_and_stop_are_audited_and_paged(env: Env) -> None:
    admin = await env.login("alice")
    assert env.state.reads is not None
    assert (await env.state.reads.settings()).simulation_active
    r = await admin.post(f"{API}/simulation/stop")
    assert r.status_code == 200 and r.json()["simulation_active"] is False
    assert (await env.state.reads.settings()).simulation_active is False
    assert (await admin.post(f"{API}/simulation/stop")).json()["simulation_active"] is False
    r = await admin.post(f"{API}/simulation/start")
    assert r.json()["simulation_active"] is True
    await admin.post(f"{API}/simulation/stop")
    first = (await admin.get(f"{API}/audit", params={"limit": 2})).json()
    assert [e["action"] for e in first["items"]] == ["simulation.stop", "simulation.start"]
    assert first["items"][0]["after"] == {"simulation_active": False}
    second = (await admin.get(f"{API}/audit",
                              params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [e["action"] for e in second["items"]] == ["simulation.stop"]
    assert second["next_cursor"] is None
    assert (await admin.get(f"{API}/audit", params={"limit": 0})).status_code == 422
    none = await admin.get(f"{API}/audit", params={"entity": "bot"})
    assert none.json() == {"items": [], "next_cursor": None}
    for name in ("entity", "entity_id"):  # NUL reached PostgreSQL as a 500 (schemathesis)
        r = await admin.get(f"{API}/audit", params={name: "bot\x00"})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", name], r.text


# --- messages ---------------------------------------------------------------------------


async def test_messages_filter_and_page_newest_first(env: Env, cipher: TokenCipher) -> None:
    chat_id, bot_ids, ids = await seed_chat(env.sm, cipher)
    viewer = await env.login("vera")

    async def get(**params: Any) -> httpx.Response:
        return await viewer.get(f"{API}/messages", params=params)

    page = (await get(chat_id=chat_id, limit=2)).json()
    assert [m["id"] for m in page["items"]] == [ids[4], ids[3]]
    assert page["next_cursor"] == ids[3]
    page2 = (await get(chat_id=chat_id, limit=2, cursor=page["next_cursor"])).json()
    assert [m["id"] for m in page2["items"]] == [ids[2], ids[1]]
    page3 = (await get(chat_id=chat_id, limit=2, cursor=page2["next_cursor"])).json()
    assert [m["id"] for m in page3["items"]] == [ids[0]] and page3["next_cursor"] is None
    exact = (await get(chat_id=chat_id, limit=5)).json()
    assert len(exact["items"]) == 5 and exact["next_cursor"] is None

    humans = (await get(chat_id=chat_id, human="true")).json()["items"]
    assert [m["id"] for m in humans] == [ids[3], ids[1]]
    assert all(m["bot_id"] is None and m["sender_name"] == "Deniz" for m in humans)
    bots = (await get(chat_id=chat_id, human="false")).json()["items"]
    assert [m["id"] for m in bots] == [ids[4], ids[2], ids[0]]
    assert bots[0]["text"] == "bot says <b>4</b>" and bots[0]["topic"] == "btc"  # unescaped
    one_bot = (await get(bot_id=bot_ids[1])).json()["items"]
    assert [m["id"] for m in one_bot] == [ids[2]]
    assert len((await get()).json()["items"]) == 6  # both chats

    for bad in ({"limit": 0}, {"limit": 201}, {"human": "maybe"}, {"chat_id": "x"}):
        r = await get(**bad)
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", *bad], bad


# --- costs ------------------------------------------------------------------------------


def _call(provider: str, *, at: datetime, outcome: str = "ok", cost: float | None = 0.01,
          latency: float = 100.0, error: str | None = None, bot_id: int | None = None,
          prompt: int = 100) -> dict[str, Any]:
    return {"created_at": at, "provider": provider, "model": "m", "bot_id": bot_id,
            "outcome": outcome, "error": error, "prompt_tokens": prompt,
            "completion_tokens": 10, "cached_tokens": 0, "latency_ms": latency,
            "cost_usd": cost}


async def test_costs_totals_from_the_ledger(env: Env) -> None:
    now = datetime.now(UTC)
    async with env.sm() as s, s.begin():
        await llm_store.record_calls(s, rows=[
            _call("groq", at=now - timedelta(hours=1), cost=0.25),
            _call("groq", at=now - timedelta(hours=2), cost=0.5, prompt=300),
            _call("groq", at=now - timedelta(hours=3), outcome="timeout", cost=None),
            _call("openai", at=now - timedelta(hours=1), cost=1.0),
            _call("openai", at=now - timedelta(days=3), cost=8.0),  # outside 24h
        ])
    viewer = await env.login("vera")
    day = (await viewer.get(f"{API}/costs")).json()
    assert day["by"] == "provider"
    assert [(r["key"], r["calls"], r["ok"], r["failed"]) for r in day["rows"]] == [
        ("openai", 1, 1, 0), ("groq", 3, 2, 1)]
    groq = day["rows"][1]
    assert groq["cost_usd"] == pytest.approx(0.75) and groq["unpriced"] == 1
    assert groq["prompt_tokens"] == 500
    assert day["total"]["calls"] == 4 and day["total"]["cost_usd"] == pytest.approx(1.75)
    week = (await viewer.get(f"{API}/costs", params={"since": "7d", "by": "day"})).json()
    assert week["total"]["cost_usd"] == pytest.approx(9.75) and len(week["rows"]) >= 2
    everything = (await viewer.get(f"{API}/costs", params={"since": "all"})).json()
    assert everything["since"] is None and everything["total"]["calls"] == 5
    by_bot = (await viewer.get(f"{API}/costs", params={"by": "bot"})).json()
    assert [r["key"] for r in by_bot["rows"]] == ["(no bot)"]
    for params, field in (({"since": "yesterday"}, "since"), ({"by": "model"}, "by"),
                          ({"since": "99999999d"}, "since")):  # was an OverflowError, a 500
        r = await viewer.get(f"{API}/costs", params=params)
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", field]


# --- provider health --------------------------------------------------------------------


async def _seed_health(sm: Sessions) -> None:
    now = datetime.now(UTC)
    async with sm() as s, s.begin():
        await llm_store.record_calls(s, rows=[
            _call("groq", at=now - timedelta(minutes=5), latency=100.0),
            _call("groq", at=now - timedelta(minutes=4), latency=300.0),
            _call("groq", at=now - timedelta(minutes=3), latency=200.0),
            _call("groq", at=now - timedelta(minutes=2), outcome="error", error="HTTP 500",
                  latency=5000.0),
            _call("gemini", at=now - timedelta(minutes=40), outcome="error", error="old"),
            _call("openai", at=now - timedelta(minutes=1), outcome="rate_limited",
                  error="HTTP 429"),
            _call("openai", at=now - timedelta(seconds=30), outcome="timeout", error="slow"),
        ])


async def test_provider_health_without_redis(env: Env) -> None:
    await _seed_health(env.sm)
    viewer = await env.login("vera")
    body = (await viewer.get(f"{API}/providers/health")).json()
    assert body["redis_configured"] is False
    assert body["workers"] is None and body["workers_error"] is None
    by_name = {p["provider"]: p for p in body["providers"]}
    assert set(by_name) == {"groq", "openai"}  # gemini's call is older than 15 min
    groq = by_name["groq"]
    assert (groq["calls"], groq["errors"], groq["error_rate"]) == (4, 1, 0.25)
    assert groq["p50_latency_ms"] == 200.0  # the answered calls only
    assert groq["last_error"]["error"] == "HTTP 500"
    openai = by_name["openai"]
    assert openai["error_rate"] == 1.0 and openai["p50_latency_ms"] is None
    assert openai["last_error"]["outcome"] == "timeout" and openai["last_error"]["error"] == "slow"


async def test_provider_health_reports_an_unreachable_redis(
    tmp_path: Path, sessionmaker: Sessions
) -> None:
    async for env in make_env(tmp_path, sessionmaker, redis_url="redis://127.0.0.1:1/0"):
        await _seed_health(env.sm)
        viewer = await env.login("vera")
        r = await viewer.get(f"{API}/providers/health")
        assert r.status_code == 200
        body = r.json()
        assert body["redis_configured"] is True and body["workers"] is None
        assert body["workers_error"] and "Redis unreachable" in body["workers_error"]
        assert {p["provider"] for p in body["providers"]} == {"groq", "openai"}


async def test_provider_health_lists_live_workers(
    tmp_path: Path, sessionmaker: Sessions, redis_url: str
) -> None:
    import redis.asyncio as aioredis

    ns = "opstest"
    client = aioredis.Redis.from_url(redis_url)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    await client.set(keys.worker_key("w-b", ns),
                     json.dumps({"name": "b", "bots": 3, "in_flight": 1, "sent": 7,
                                 "at_ms": now_ms}), px=10_000)
    await client.set(keys.worker_key("w-a", ns), json.dumps({"bots": 0}), px=10_000)
    await client.zadd(keys.workers_key(ns), {"w-a": now_ms, "w-b": now_ms, "w-dead": 1})
    await client.aclose()
    async for env in make_env(tmp_path, sessionmaker, redis_url=redis_url,
                               redis_namespace=ns):
        viewer = await env.login("vera")
        body = (await viewer.get(f"{API}/providers/health")).json()
        assert body["workers_error"] is None
        assert [w["id"] for w in body["workers"]] == ["w-a", "w-b"]  # w-dead has no beat
        b = body["workers"][1]
        assert (b["name"], b["bots"], b["in_flight"], b["sent"]) == ("b", 3, 1, 7)
        assert b["heartbeat_at"] is not None and b["info"]["sent"] == 7
        assert body["workers"][0]["in_flight"] is None


async def test_provider_health_shows_the_local_workers_breakers_and_budgets(
    tmp_path: Path, sessionmaker: Sessions
) -> None:
    status = {"name": "demo", "bots": 4, "sent": 12, "in_flight": 1, "providers": [
        {"name": "groq", "breaker": "open", "retry_in_s": 12.5,
         "budget_left": {"requests/min": 28, "tokens/min": None, "tokens/day": 90_000},
         "tokens_today": 4_000}]}
    cache = TwoLayerCache(redis_url=None)
    await cache.start()
    app = create_app(Settings(data_dir=tmp_path, secret_key=SECRET), sessionmaker,
                     hasher=_hasher(), reads=CachedReads(cache, sessionmaker),
                     local_workers=lambda: [("w-local", status),
                                            ("w-odd", {"providers": [{"name": 3}]})])
    async with sessionmaker() as s, s.begin():
        await user_store.create_user(s, username="vera", role="viewer",
                                     password_hash=_hasher().hash(VIEWER_PW))
    env = Env(app, sessionmaker)
    try:
        viewer = await env.login("vera")
        body = (await viewer.get(f"{API}/providers/health")).json()
    finally:
        for c in env.clients:
            await c.aclose()
        await cache.close()
    assert body["redis_configured"] is False and body["workers_error"] is None
    local, odd = body["workers"]
    assert (local["id"], local["bots"], local["sent"]) == ("w-local", 4, 12)
    assert local["providers"] == status["providers"]
    assert odd["providers"] is None  # malformed guards are dropped, not a 500

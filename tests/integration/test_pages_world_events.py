"""World events in the panel: the ``/world-events`` page (:mod:`backend.api.pages_events`)
and their rows in the live view, sent over the live stream as ``event: world_event``
(``GET /api/v1/events``, :mod:`backend.api.routes_ops`).

Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.api import routes_events, routes_ops
from backend.schemas import WorldEventIn
from backend.stores import events as event_store
from behavior_engine.events import PRESETS
from tests.integration.test_api_events import SseReader, StreamingTransport
from tests.integration.test_api_ops import API, Env, Sessions, make_env

XSS = "<script>alert(1)</script>"


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions) -> AsyncIterator[Env]:
    async for e in make_env(tmp_path, sessionmaker):
        yield e


async def _add(sm: Sessions, headline: str, at: datetime, **fields: object) -> int:
    async with sm() as s, s.begin():
        stored = await event_store.add_event(
            s, event=WorldEventIn.model_validate({"headline": headline, "at": at, **fields}),
            created_by="alice")
    return stored.id


async def test_page_needs_a_login(env: Env) -> None:
    r = await env.client().get("/world-events")
    assert r.status_code == 303 and r.headers["location"] == "/login"


async def test_admin_sees_events_form_presets_and_cancel(env: Env) -> None:
    now = datetime.now(UTC)
    past = await _add(env.sm, f"Kur şoku {XSS}", now - timedelta(minutes=3),
                      shocks={"BIST100": -2.5, "USDTRY": 1.5}, views={"usdtry": "bearish"},
                      topics=["usdtry"])
    later = await _add(env.sm, "Planlı haber", now + timedelta(hours=2))
    admin = await env.login("alice")
    r = await admin.get("/world-events")
    assert r.status_code == 200
    html = r.text
    assert XSS not in html and "Kur şoku &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="/world-events" aria-current="page"' in html  # the nav link
    assert 'id="world-event-form"' in html
    for name in PRESETS:
        assert f'data-preset="{name}"' in html
    rows = re.findall(r'<tr data-id="(\d+)"', html)
    assert rows == [str(later), str(past)]  # newest first
    assert "BIST100 −2.5 %, USDTRY +1.5 %" in html and "usdtry bearish" in html
    assert f'class="cancel-event" data-id="{later}"' in html
    assert f'class="cancel-event" data-id="{past}"' not in html  # it happened


async def test_viewer_sees_the_list_but_no_form(env: Env) -> None:
    await _add(env.sm, "Bitcoin düştü", datetime.now(UTC) + timedelta(hours=1))
    viewer = await env.login("vera")
    html = (await viewer.get("/world-events")).text
    assert "Bitcoin düştü" in html and 'id="world-events-readonly"' in html
    assert 'id="world-event-form"' not in html and "data-preset=" not in html
    assert "cancel-event" not in html
    empty = await env.login("alice")
    async with env.sm() as s, s.begin():
        await event_store.cancel_event(s, event_id=1)
    assert 'id="world-events-empty"' in (await empty.get("/world-events")).text


async def test_panel_js_renders_world_events_as_text(env: Env) -> None:
    js = (await env.client().get("/static/panel.js")).text
    assert 'addEventListener("world_event"' in js and "world_since=" in js
    assert 'send("POST", API + "/world-events"' in js  # with the CSRF header
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js


@pytest.fixture
def fast_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes_ops, "EVENTS_POLL_S", 0.02)
    monkeypatch.setattr(routes_events, "STREAM_POLL_S", 0.05)


async def test_live_stream_sends_world_events_when_they_happen(env: Env,
                                                              fast_stream: None) -> None:
    now = datetime.now(UTC)
    await _add(env.sm, "çok eski", now - timedelta(hours=3))
    recent = await _add(env.sm, f"TCMB faizi artırdı {XSS}", now - timedelta(minutes=20),
                        shocks={"BIST100": -2.5})
    soon = await _add(env.sm, "birazdan", now + timedelta(seconds=1))
    transport = StreamingTransport(env.app)
    viewer = await env.login("vera", transport)
    async with viewer.stream("GET", f"{API}/events", params={"after_id": 0}) as r:
        assert r.status_code == 200
        events = SseReader(r)
        first = await events.next_event()
        assert first["event"] == "world_event" and "id" not in first
        data = json.loads(first["data"])
        assert (data["id"], data["headline"]) == (recent, f"TCMB faizi artırdı {XSS}")
        assert data["shocks"] == {"BIST100": -2.5}
        second = await events.next_event()  # the scheduled one, once its time came
        assert json.loads(second["data"])["id"] == soon
        assert datetime.now(UTC) >= now + timedelta(seconds=1)
        injected = await _add(env.sm, "şimdi", datetime.now(UTC))
        third = await events.next_event()
        assert json.loads(third["data"])["id"] == injected  # each once, none again

    # world_since reaches further back (the oldest message the page shows).
    since = (now - timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    async with viewer.stream("GET", f"{API}/events",
                             params={"after_id": 0, "world_since": since}) as r:
        events = SseReader(r)
        got = [json.loads((await events.next_event())["data"])["headline"] for _ in range(4)]
        assert got == ["çok eski", f"TCMB faizi artırdı {XSS}", "birazdan", "şimdi"]
    bad = await viewer.get(f"{API}/events", params={"world_since": "yesterday"})
    assert bad.status_code == 422
    assert ["query", "world_since"] in [e["loc"] for e in bad.json()["errors"]]
    await asyncio.sleep(0)
    assert all(t.done() for t in transport.tasks)


def test_stream_since_is_bounded() -> None:
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert routes_events.stream_since(None, now) == now - timedelta(hours=1)
    assert routes_events.stream_since(datetime(2000, 1, 1, tzinfo=UTC), now) == \
        now - timedelta(days=7)
    assert routes_events.stream_since(datetime(2030, 1, 1, tzinfo=UTC), now) == now
    aware = datetime(2026, 5, 1, 11, 30, tzinfo=UTC)
    assert routes_events.stream_since(aware.replace(tzinfo=None), now) == aware

"""``/api/v1/world-events`` (:mod:`backend.api.routes_events`): list, inject (fields or a
preset), cancel a scheduled one, presets; auth, 422s naming the field, audit entries.

Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.db.models import AuditEntry
from backend.stores import events as event_store
from behavior_engine.events import PRESETS
from tests.integration.test_api_ops import API, Env, Sessions, make_env

URL = f"{API}/world-events"


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions) -> AsyncIterator[Env]:
    async for e in make_env(tmp_path, sessionmaker):
        yield e


def _locs(body: dict[str, object]) -> list[list[object]]:
    errors = body["errors"]
    assert isinstance(errors, list)
    return [e["loc"] for e in errors]


async def _audit(env: Env) -> list[AuditEntry]:
    async with env.sm() as s:
        return list((await s.scalars(select(AuditEntry).where(
            AuditEntry.entity == "world_event").order_by(AuditEntry.id))).all())


async def test_reads_need_a_login_and_writes_an_admin(env: Env) -> None:
    anon = env.client()
    for method, path in (("GET", URL), ("GET", f"{URL}/presets"), ("POST", URL),
                         ("DELETE", f"{URL}/1")):
        r = await anon.request(method, path, json={"headline": "x y z"}
                               if method == "POST" else None)
        assert r.status_code == 401, (method, path)
        assert r.headers["content-type"] == "application/problem+json"
    viewer = await env.login("vera")
    assert (await viewer.get(URL)).status_code == 200
    assert (await viewer.get(f"{URL}/presets")).status_code == 200
    assert (await viewer.post(URL, json={"preset": "rate_hike"})).status_code == 403
    assert (await viewer.delete(f"{URL}/1")).status_code == 403
    admin = await env.login("alice")
    del admin.headers["X-CSRF-Token"]  # a cookie session without its CSRF token
    assert (await admin.post(URL, json={"preset": "rate_hike"})).status_code == 403
    assert await _audit(env) == []


async def test_create_list_and_audit(env: Env) -> None:
    admin = await env.login("alice")
    r = await admin.post(URL, json={"headline": "TCMB faizi 250 baz puan artırdı",
                                    "shocks": {"BIST100": -2.5}, "views": {"usdtry": "bearish"},
                                    "topics": ["rates"]})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["headline"] == "TCMB faizi 250 baz puan artırdı"
    assert first["shocks"] == {"BIST100": -2.5} and first["views"] == {"usdtry": "bearish"}
    assert first["created_by"] == "alice"
    at = datetime.fromisoformat(first["at"])
    assert abs((at - datetime.now(UTC)).total_seconds()) < 30  # none given: now

    later = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=0)
    r = await admin.post(URL, json={"preset": "btc_crash", "at": later.isoformat()})
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["headline"] == PRESETS["btc_crash"].headline
    assert second["shocks"] == {"BTC": -8.0}
    assert datetime.fromisoformat(second["at"]) == later

    viewer = await env.login("vera")
    page = (await viewer.get(URL)).json()
    assert [e["id"] for e in page["items"]] == [first["id"], second["id"]]
    assert page["next_after_id"] is None
    page = (await viewer.get(URL, params={"limit": 1})).json()
    assert [e["id"] for e in page["items"]] == [first["id"]]
    assert page["next_after_id"] == first["id"]
    page = (await viewer.get(URL, params={"after_id": first["id"]})).json()
    assert [e["id"] for e in page["items"]] == [second["id"]]

    entries = await _audit(env)
    assert [(e.action, e.entity_id, e.username) for e in entries] == [
        ("world_event.created", str(first["id"]), "alice"),
        ("world_event.created", str(second["id"]), "alice")]
    assert entries[0].before is None
    assert entries[0].after is not None and entries[0].after["shocks"] == {"BIST100": -2.5}


@pytest.mark.parametrize(("body", "loc"), [
    ({"shocks": {"BIST100": -2}}, ["body", "headline"]),
    ({"headline": "ab"}, ["body", "headline"]),
    ({"headline": "a shock", "shocks": {"BIST100": 0}}, ["body", "shocks"]),
    ({"headline": "a shock", "shocks": {"BIST100": 80}}, ["body", "shocks"]),
    ({"headline": "a shock", "shocks": {"bist": 1}}, ["body", "shocks", "bist", "[key]"]),
    ({"headline": "a view", "views": {"usdtry": "up"}}, ["body", "views", "usdtry"]),
    ({"headline": "a view", "views": {"weather": "bullish"}}, ["body", "views"]),
    ({"headline": "topics", "topics": ["weather"]}, ["body", "topics"]),
    ({"headline": "naive", "at": "2030-01-01T10:00:00"}, ["body", "at"]),
    ({"headline": "far", "at": "2099-01-01T10:00:00Z"}, ["body", "at"]),
    ({"headline": "old", "at": "2001-01-01T10:00:00Z"}, ["body", "at"]),
    ({"headline": "edge", "at": "0001-01-01T00:00:00+05:00"}, ["body", "at"]),
    ({"preset": "no_such_preset"}, ["body", "preset"]),
    ({"preset": "rate_hike", "headline": "also this"}, ["body", "preset"]),
    ({"headline": "extra", "colour": "red"}, ["body", "colour"]),
])
async def test_bad_bodies_get_422_naming_the_field(env: Env, body: dict[str, object],
                                                   loc: list[object]) -> None:
    admin = await env.login("alice")
    r = await admin.post(URL, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert loc in _locs(r.json()), r.json()
    assert await _audit(env) == []


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 201}, {"after_id": -1},
                                   {"after_id": 2**40}, {"limit": "x"}])
async def test_bad_list_queries_get_422(env: Env, query: dict[str, int | str]) -> None:
    viewer = await env.login("vera")
    r = await viewer.get(URL, params=query)
    assert r.status_code == 422
    assert ["query", next(iter(query))] in _locs(r.json())


async def test_cancel_a_scheduled_event_but_not_a_past_one(env: Env) -> None:
    admin = await env.login("alice")
    later = datetime.now(UTC) + timedelta(hours=1)
    scheduled = (await admin.post(URL, json={"preset": "gold_spike",
                                             "at": later.isoformat()})).json()
    past = (await admin.post(URL, json={"headline": "olmuş bir şey"})).json()

    r = await admin.delete(f"{URL}/{scheduled['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == scheduled["id"]
    async with env.sm() as s:
        left = await event_store.list_events(s)
    assert [e.id for e in left] == [past["id"]]

    r = await admin.delete(f"{URL}/{scheduled['id']}")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    r = await admin.delete(f"{URL}/{past['id']}")
    assert r.status_code == 409
    assert "already happened" in r.json()["detail"]
    for bad in ("0", "-1", str(2**40), "x"):
        assert (await admin.delete(f"{URL}/{bad}")).status_code == 422

    actions = [(e.action, e.entity_id) for e in await _audit(env)]
    assert actions[-1] == ("world_event.cancelled", str(scheduled["id"]))
    assert len([a for a in actions if a[0] == "world_event.cancelled"]) == 1
    entry = (await _audit(env))[-1]
    assert entry.after is None and entry.before is not None
    assert entry.before["headline"] == PRESETS["gold_spike"].headline


async def test_presets(env: Env) -> None:
    viewer = await env.login("vera")
    r = await viewer.get(f"{URL}/presets")
    assert r.status_code == 200
    got = {p["name"]: p for p in r.json()}
    assert set(got) == set(PRESETS)
    assert got["rate_hike"]["shocks"] == PRESETS["rate_hike"].shocks
    assert got["rate_hike"]["headline"] == PRESETS["rate_hike"].headline

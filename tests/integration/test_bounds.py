"""No input reaches a 500, and no 422 echoes a secret (issue 18, item 6).

Out-of-range ids, durations and cursors once reached the database driver or ``datetime``
and answered 500: ``/personas/9223372036854775808``, an ISO ``since`` whose offset takes it
past year 9999 or before year 1 in UTC, a 5,000-digit or out-of-range ``Last-Event-ID``.
Each is now refused with a 422 that names what is wrong and where (a problem details
answer for the API, a page for the panel). A 422's messages never quote a secret field's
value and quote no value at length. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.api.problems import MSG_MAX, REDACTED, field_problems, safe_msg
from backend.errors import ValidationFailed
from backend.timewindow import parse_since
from tests.integration.test_api_events import StreamingTransport
from tests.integration.test_api_ops import API, Env, Sessions, make_env

HUGE = 2**63  # 9223372036854775808: past int64 (SQLite) and int32 (PostgreSQL INTEGER)
#: ``since`` values an operator could type that were 500s or must stay 422s.
BAD_SINCE = [
    "99999999d",
    "9999-12-31T23:59:59-23:59",  # year 10000 in UTC
    "0001-01-01T00:00:00+23:00",  # year 0 in UTC
    "36501d",
]


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions) -> AsyncIterator[Env]:
    async for e in make_env(tmp_path, sessionmaker):
        yield e


def _errors(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert r.headers["content-type"] == "application/problem+json"
    errors: list[dict[str, Any]] = r.json()["errors"]
    return errors


# --- ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bot_id", [str(HUGE), "0", "-1", "2147483648"])
async def test_persona_page_refuses_an_id_out_of_range(env: Env, bot_id: str) -> None:
    viewer = await env.login("vera")
    r = await viewer.get(f"/personas/{bot_id}")
    assert r.status_code == 422, r.text[:300]
    assert "text/html" in r.headers["content-type"]
    assert f"bot_id (in the path): &#39;{bot_id}&#39; is not a bot id" in r.text
    assert "2147483647" in r.text


async def test_persona_page_in_range_but_unknown_is_a_404_page(env: Env) -> None:
    viewer = await env.login("vera")
    r = await viewer.get("/personas/2147483647")
    assert r.status_code == 404 and "No bot 2147483647" in r.text


async def test_page_int_params_far_out_of_range_get_no_server_error(env: Env) -> None:
    viewer = await env.login("vera")
    digits = "9" * 5000
    for url in (f"/personas/{digits}", f"/?chat_id={digits}", f"/?chat_id={HUGE}",
                f"/realism?chat_id={HUGE}", f"/audit?cursor={digits}",
                f"/audit?limit={HUGE}"):
        r = await viewer.get(url)
        assert r.status_code < 500, (url[:60], r.status_code)


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize("since", BAD_SINCE)
async def test_costs_refuse_a_since_out_of_range(env: Env, since: str) -> None:
    viewer = await env.login("vera")
    errors = _errors(await viewer.get(f"{API}/costs", params={"since": since}))
    assert [e["loc"] for e in errors] == [["query", "since"]]
    assert since in errors[0]["msg"]
    page = await viewer.get("/costs", params={"since": since})
    assert page.status_code == 422 and "text/html" in page.headers["content-type"]
    realism = await viewer.get("/realism", params={"since": since})
    assert realism.status_code == 422 and "text/html" in realism.headers["content-type"]


async def test_costs_say_why_a_time_is_out_of_range(env: Env) -> None:
    viewer = await env.login("vera")
    msg = _errors(await viewer.get(f"{API}/costs",
                                   params={"since": "0001-01-01T00:00:00+23:00"}))[0]["msg"]
    assert "years 1 to 9999" in msg


async def test_costs_take_times_at_the_ends_of_the_range(env: Env) -> None:
    viewer = await env.login("vera")
    for since in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "36500d", "all"):
        r = await viewer.get(f"{API}/costs", params={"since": since})
        assert r.status_code == 200, (since, r.text[:300])


def test_parse_since_gives_utc_and_names_the_value() -> None:
    assert parse_since("2026-01-01T03:00:00+03:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since("2026-01-01T03:00:00+03:00").tzinfo is UTC  # type: ignore[union-attr]
    for bad in BAD_SINCE:
        with pytest.raises(ValidationFailed) as caught:
            parse_since(bad)
        assert bad[:40] in str(caught.value)


# --- Last-Event-ID ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "9" * 5000, str(HUGE), "2147483648", "-1", "+5", "1e3", "0x10", b"\xc2\xb2",
])
async def test_events_refuse_a_bad_last_event_id(env: Env, value: str | bytes) -> None:
    transport = StreamingTransport(env.app)
    viewer = await env.login("vera", transport)
    raw = value if isinstance(value, bytes) else value.encode()
    async with viewer.stream("GET", f"{API}/events",
                             headers={b"Last-Event-ID": raw}) as r:
        body = (await r.aread()).decode()
        assert r.status_code == 422, body[:300]
    errors = json.loads(body)["errors"]
    assert [e["loc"] for e in errors] == [["header", "last-event-id"]]
    assert "2147483647" in errors[0]["msg"] and len(errors[0]["msg"]) < MSG_MAX


async def test_events_take_a_last_event_id_in_range(env: Env) -> None:
    transport = StreamingTransport(env.app)
    viewer = await env.login("vera", transport)
    for value in ("0", "2147483647", " 7 "):
        async with viewer.stream("GET", f"{API}/events",
                                 headers={"Last-Event-ID": value}) as r:
            assert r.status_code == 200


# --- 422s never echo secrets --------------------------------------------------------------


def test_a_message_quoting_a_secret_value_has_it_cut_out() -> None:
    password = "correct horse battery staple"
    for loc in (("body", "password"), ("body", "token"), ("body", "llm", 0, "api_key"),
                ("body", "fernet_key"), ("header", "authorization")):
        for msg in (f"{password} is too weak", f"value {password!r} refused"):
            out = safe_msg({"loc": loc, "msg": msg, "input": password})
            assert password not in out and REDACTED in out, (loc, out)


def test_a_message_quoting_a_long_value_is_shortened() -> None:
    value = "Europe/" + "x" * 100_000
    out = safe_msg({"loc": ("body", "timezone"), "msg": f"unknown time zone {value!r}",
                    "input": value})
    assert len(out) <= MSG_MAX and "x" * 50 not in out
    short = safe_msg({"loc": ("body", "timezone"), "msg": "unknown time zone 'Mars/Base'",
                      "input": "Mars/Base"})
    assert short == "unknown time zone 'Mars/Base'"  # a short, non-secret value stays
    long_msg = field_problems([{"loc": ("query", "x"), "msg": "y" * 5000, "type": "t"}])
    assert len(long_msg[0].msg) <= MSG_MAX


async def test_a_refused_login_never_echoes_the_password(env: Env) -> None:
    anon = env.client()
    password = "hunter2-" + "p" * 300
    for body in ({"username": "alice", "password": password + "\x00"},
                 {"username": "alice", "password": password, "extra": 1},
                 {"username": "", "password": password},
                 {"username": "alice", "password": [password]}):
        r = await anon.post(f"{API}/auth/login", json=body)
        assert r.status_code == 422, r.text[:300]
        assert "hunter2" not in r.text, r.text[:300]


async def test_a_refused_settings_value_is_quoted_short(env: Env) -> None:
    admin = await env.login("alice")
    zone = "Mars/" + "z" * 5000
    r = await admin.patch(f"{API}/settings", json={"prime_hours": {"timezone": zone}})
    errors = _errors(r)
    assert all(len(e["msg"]) <= MSG_MAX for e in errors)
    assert "z" * 100 not in r.text

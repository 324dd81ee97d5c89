"""Schemathesis against the admin API's own OpenAPI spec: no generated request gets a 5xx.

Every operation of ``/api/v1/openapi.json`` (loaded in-process from the ASGI app) runs with
Hypothesis-generated data on PostgreSQL (:data:`POSTGRESQL_ONLY`), valid and invalid
(schemathesis' positive and negative modes), twice: as an admin with a Bearer API token (no
CSRF needed, so bodies reach the handlers) and unauthenticated. Every answer goes through
schemathesis' ``not_a_server_error`` and ``response_schema_conformance`` checks (a documented
status matches its declared schema), invalid (negative) cases included: every error answer is
RFC 9457 problem details (``application/problem+json``, :mod:`backend.api.problems`), FastAPI's
own 422 for a body that is not JSON at all as much as a route's own refusals, and the spec says
so.

Beside the generated cases: inputs that once answered 500 (issue 18: a huge persona id, an
out-of-range ``since``, a 5,000-digit ``Last-Event-ID``) are pinned as 422s, and the panel's
pages, which are outside the spec, get Hypothesis-generated ids and query values with no
5xx either.

The database holds the four persona bots and a chat with them, and path and query ids are
sometimes those real rows, so id-taking routes get past their 404s.

Nothing here touches the app from a loop other than the test's: the database engine (the
``sessionmaker`` fixture, aiosqlite or asyncpg) belongs to the test's loop, and an asyncpg
connection driven from a second loop corrupts memory. So the spec is fetched over the test's
own client and loaded with ``from_dict`` (not ``from_asgi``, whose TestClient runs the app and
its lifespan on a loop of its own in a thread), and requests are not sent with
``case.call()`` (the same TestClient): Hypothesis runs in a worker thread and each generated
case is sent through ``httpx.ASGITransport`` on the test's loop; the answer is then checked
with ``case.validate_response``.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckFunction, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.api.app import create_app
from backend.api.security import LoginThrottle
from backend.crypto import Secrets, resolve_secrets
from backend.settings import Settings
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import users as user_store
from bots.personas import load_persona_dir
from tests.conftest import cheap_hasher as _hasher

SECRET = "s" * 40
OPENAPI = "/api/v1/openapi.json"
BASE_URL = "http://testserver"
#: Generated cases per operation and pass; derandomized, so every run sends the same ones.
#: Fewer without credentials: nearly all of those stop at the 401 before any handler.
MAX_EXAMPLES = {"admin": 25, "anonymous": 5}
#: Left out of generation:
#: - ``/api/v1/events`` is a Server-Sent Events stream that ends only when the client leaves:
#:   a generated GET with valid credentials would never return.
#: - ``/metrics`` is the Prometheus app mounted beside the API, not part of its spec (so it is
#:   not generated anyway); listed so that never changes silently.
EXCLUDED_PATHS = frozenset({"/api/v1/events", "/metrics"})
CHECKS: list[CheckFunction] = [not_a_server_error, response_schema_conformance]
#: The generated cases run on PostgreSQL, the production database and the stricter of the
#: two for every value the API stores (a 32-bit INTEGER is past its range before SQLite's
#: 64 bits are; text with NUL is refused by PostgreSQL only); the pinned cases below run on
#: both. Generating on SQLite as well doubled the suite's costliest file (~60 s of CPU).
POSTGRESQL_ONLY = pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
#: Integer ids and cursors out of our columns' range (PostgreSQL INTEGER) once reached the
#: database driver and answered 500/503 (found by this test): they are now refused with 422
#: by the parameters' bounds (``backend.api.security.MAX_DB_ID``). Pinned here per route.
HUGE = 2**63
OUT_OF_RANGE = [
    ("GET", f"/api/v1/bots/{HUGE}", 503),
    ("PATCH", f"/api/v1/bots/{HUGE}", 503),
    ("POST", f"/api/v1/bots/{HUGE}/enable", 503),
    ("POST", f"/api/v1/bots/{HUGE}/disable", 503),
    ("GET", f"/api/v1/bots?cursor={HUGE}", 503),
    ("GET", f"/api/v1/bots/1/preview?chat_id={HUGE}", 500),
    ("GET", f"/api/v1/chats?cursor={HUGE}", 500),
    ("GET", f"/api/v1/chats/{HUGE}", 500),
    ("PUT", f"/api/v1/chats/{HUGE}/bots/1", 500),
    ("DELETE", f"/api/v1/chats/{HUGE}/bots/1", 500),
    ("GET", f"/api/v1/messages?cursor={HUGE}", 500),
    ("GET", f"/api/v1/audit?cursor={HUGE}", 500),
]


def _settings(data_dir: Path) -> Settings:
    # redis_url=None: the cache stays in memory and /providers/health reaches no Redis.
    return Settings(data_dir=data_dir, secret_key=SECRET, redis_url=None)


def _operation_labels() -> list[str]:
    """``"METHOD /path"`` of every operation in the spec (collected without a database)."""
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(_settings(Path(tmp)), async_sessionmaker(), hasher=_hasher())
        spec: dict[str, Any] = app.openapi()
    return [f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops
            if path not in EXCLUDED_PATHS]


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    admin_token: str
    bot_ids: list[int]
    chat_id: int


@pytest.fixture
async def api(tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]
              ) -> AsyncIterator[Api]:
    settings = _settings(tmp_path)
    secrets: Secrets = resolve_secrets(settings)
    cipher = secrets.cipher()
    hasher = _hasher()
    async with sessionmaker() as s, s.begin():
        admin = await user_store.create_user(s, username="admin", role="admin",
                                             password_hash=hasher.hash("admin password 1"))
        _, token = await user_store.create_api_token(s, user_id=admin.id, name="schemathesis",
                                                     secret_key=SECRET)
        chat = await chat_store.upsert_chat(s, telegram_chat_id=-100555, title="Fuzz grubu",
                                            topics={"usdtry": 1.0})
        bot_ids = []
        for i, persona in enumerate(load_persona_dir()):
            bot = await bot_store.upsert_persona_bot(
                s, persona=persona, token=f"{8200000000 + i}:token-for-fuzzing-{i:04d}-abcdefgh",
                cipher=cipher)
            await chat_store.add_bot(s, chat_id=chat.id, bot_id=bot.id)
            bot_ids.append(bot.id)
    # Generated logins all come from one address: keep them reaching the password check
    # instead of a 429 after the 20th failure (and unslowed when a username repeats).
    throttle = LoginThrottle(per_pair=10**6, per_address=10**6, max_delay_s=0)
    app = create_app(settings, sessionmaker, hasher=hasher, throttle=throttle, secrets=secrets)
    # raise_app_exceptions=False: an exception in the app becomes the 500 a real server
    # sends (Starlette's ServerErrorMiddleware), which not_a_server_error then reports.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport,
                                 base_url=BASE_URL) as client:
        yield Api(app=app, client=client, admin_token=token, bot_ids=bot_ids, chat_id=chat.id)


async def _load_schema(api: Api) -> Any:
    """The app's OpenAPI spec, fetched over the test's loop, as a schemathesis schema.

    Not ``schemathesis.openapi.from_asgi``: it drives the app through Starlette's TestClient
    in a thread with a loop of its own and runs the app's lifespan there, whose session purge
    then used the test's asyncpg pool from that second loop (a segmentation fault). The
    lifespan now refuses a foreign loop (``test_api_auth``); the spec needs no lifespan.
    """
    global _SCHEMA
    if _SCHEMA is None:  # once per process: the spec is the same for every test's app
        response = await api.client.get(OPENAPI)
        assert response.status_code == 200, response.text[:300]
        _SCHEMA = schemathesis.openapi.from_dict(response.json())
    return _SCHEMA


#: The parsed spec, after the first test of this process fetched it (building and parsing it
#: took 0.6 s a test, a quarter of this file's time).
_SCHEMA: Any = None


async def _send(client: httpx.AsyncClient, kwargs: dict[str, Any]) -> httpx.Response:
    """Send schemathesis' (requests-style) transport kwargs with httpx."""
    kwargs = dict(kwargs)
    extra: dict[str, Any] = {}
    headers = dict(kwargs.pop("headers", None) or {})
    cookies = kwargs.pop("cookies", None)
    if cookies:  # per-request cookies= is deprecated in httpx: send the header
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in dict(cookies).items())
    if "json" in kwargs:
        extra["json"] = kwargs.pop("json")
    if "data" in kwargs:
        data = kwargs.pop("data")
        extra["content" if isinstance(data, bytes | str) else "data"] = data
    method, url, params = kwargs.pop("method"), kwargs.pop("url"), kwargs.pop("params", None)
    kwargs.pop("timeout", None)
    assert not kwargs, f"transport arguments this test does not send: {sorted(kwargs)}"
    response = await client.request(method, url, params=params, headers=headers, **extra)
    client.cookies.clear()  # a lucky generated login must not authenticate the next case
    return response


def _strategy(api: Api, label: str, schema: Any) -> st.SearchStrategy[Case[Any]]:
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    names = {p.name for p in operation.path_parameters} | {p.name for p in operation.query}
    real: dict[str, dict[str, int]] = {"path_parameters": {}, "query": {}}
    for name, value in (("bot_id", api.bot_ids[0]), ("chat_id", api.chat_id)):
        if name in names:
            where = ("path_parameters" if name in {p.name for p in operation.path_parameters}
                     else "query")
            real[where][name] = value
    choices = [operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
               operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)]
    if real["path_parameters"] or real["query"]:
        choices.append(operation.as_strategy(
            generation_mode=GenerationMode.POSITIVE,
            path_parameters=real["path_parameters"] or None, query=real["query"] or None))
    return st.one_of(choices)


def _fuzz(strategy: st.SearchStrategy[Case[Any]], send: Callable[[Case[Any]], httpx.Response],
          max_examples: int) -> None:
    """Run the generated cases (in a worker thread: Hypothesis drives a sync test)."""

    # Slow or filtered generation is not what this test is about; the examples stay fixed.
    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(case=strategy)
    def run(case: Case[Any]) -> None:
        case.validate_response(send(case), checks=CHECKS)

    run()


@POSTGRESQL_ONLY
@pytest.mark.parametrize("who", ["admin", "anonymous"])
@pytest.mark.parametrize("label", _operation_labels())
async def test_generated_requests_get_no_server_error(api: Api, label: str, who: str) -> None:
    schema = await _load_schema(api)
    headers = {"Authorization": f"Bearer {api.admin_token}"} if who == "admin" else {}
    loop = asyncio.get_running_loop()
    sent: list[int] = []

    def send(case: Case[Any]) -> httpx.Response:
        kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=headers)
        response = asyncio.run_coroutine_threadsafe(_send(api.client, kwargs), loop).result(60)
        sent.append(response.status_code)
        return response

    await asyncio.to_thread(_fuzz, _strategy(api, label, schema), send, MAX_EXAMPLES[who])
    assert sent, "no request was generated"
    if who == "admin" and label.startswith("GET /api/v1/"):
        assert any(code < 400 for code in sent), f"no generated {label} got past validation"


@pytest.mark.parametrize(("method", "url", "status"), OUT_OF_RANGE)
async def test_out_of_range_ids_are_refused_not_a_server_error(
    api: Api, method: str, url: str, status: int
) -> None:
    r = await api.client.request(method, url, json={} if method == "PATCH" else None,
                                 headers={"Authorization": f"Bearer {api.admin_token}"})
    assert r.status_code == 422, f"{method} {url} -> {r.status_code} (was {status})"


#: Inputs that once answered 500 on authenticated routes (issue 18): each is now a 422
#: naming it. The pages are outside the OpenAPI spec, so schemathesis never generates them.
NAMED_500S: list[tuple[str, dict[str, str]]] = [
    (f"/personas/{2**63}", {}),
    ("/personas/0", {}),
    ("/api/v1/costs?since=99999999d", {}),
    ("/api/v1/costs?since=9999-12-31T23:59:59-23:59", {}),
    ("/api/v1/costs?since=0001-01-01T00:00:00%2B23:00", {}),
    ("/costs?since=0001-01-01T00:00:00%2B23:00", {}),
    ("/realism?since=9999-12-31T23:59:59-23:59", {}),
    ("/api/v1/events", {"Last-Event-ID": "9" * 5000}),
    ("/api/v1/events", {"Last-Event-ID": str(2**63)}),
]


@pytest.mark.parametrize(("url", "headers"), NAMED_500S)
async def test_named_bad_inputs_are_refused_not_a_server_error(
    api: Api, url: str, headers: dict[str, str]
) -> None:
    async with asyncio.timeout(30):  # a 200 from /events would stream for ever
        r = await api.client.get(url, headers={
            "Authorization": f"Bearer {api.admin_token}", **headers})
    assert r.status_code == 422, f"{url[:80]} -> {r.status_code}: {r.text[:200]}"


_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80)
_ANY_INT = st.integers(min_value=-(2**80), max_value=2**80).map(str)
_VALUE = st.one_of(_ANY_INT, _TEXT, st.sampled_from(["", "0", "all", "24h", "99999999d",
                                                     "0001-01-01T00:00:00+23:00"]))
#: The panel's pages (outside the OpenAPI spec) with what their parameters get.
PAGES: dict[str, st.SearchStrategy[tuple[str, dict[str, str]]]] = {
    "/personas/{bot_id}": st.tuples(
        st.one_of(_ANY_INT, st.sampled_from(["1", "new"])).map(lambda v: f"/personas/{v}"),
        st.fixed_dictionaries({}, optional={"preflight": st.just("0")})),
    "/": st.tuples(st.just("/"), st.fixed_dictionaries({}, optional={"chat_id": _VALUE})),
    "/realism": st.tuples(st.just("/realism"), st.fixed_dictionaries(
        {}, optional={"chat_id": _VALUE, "since": _VALUE})),
    "/costs": st.tuples(st.just("/costs"), st.fixed_dictionaries(
        {}, optional={"since": _VALUE, "by": _VALUE})),
    "/audit": st.tuples(st.just("/audit"), st.fixed_dictionaries(
        {}, optional={"entity": _VALUE, "entity_id": _VALUE, "limit": _VALUE,
                      "cursor": _VALUE})),
}


@POSTGRESQL_ONLY
@pytest.mark.parametrize("page", sorted(PAGES))
async def test_generated_page_requests_get_no_server_error(api: Api, page: str) -> None:
    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {api.admin_token}"}
    sent: list[int] = []

    def send(case: tuple[str, dict[str, str]]) -> None:
        path, params = case
        response = asyncio.run_coroutine_threadsafe(
            api.client.get(path, params=params, headers=headers), loop).result(60)
        sent.append(response.status_code)
        assert response.status_code < 500, (path, params, response.status_code)

    @settings(max_examples=30, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=PAGES[page])
    def run(case: tuple[str, dict[str, str]]) -> None:
        send(case)

    await asyncio.to_thread(run)
    assert any(code == 200 for code in sent), f"no generated {page} request got a page"

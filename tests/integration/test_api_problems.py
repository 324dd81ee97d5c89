"""Every error answer of the admin API is one shape: RFC 9457 problem details
(:mod:`backend.api.problems`), sent as ``application/problem+json`` and documented so.

Runs on SQLite and PostgreSQL; the app and its users come from ``test_api_ops``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from backend.api.app import create_app
from backend.api.problems import PROBLEM_JSON, invalid
from backend.settings import Settings
from tests.conftest import cheap_hasher
from tests.integration.test_api_ops import API, SECRET, Env, Sessions, make_env

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions) -> AsyncIterator[Env]:
    async for e in make_env(tmp_path, sessionmaker):
        yield e


def _problem(r: httpx.Response, status: int, title: str) -> dict[str, Any]:
    """The body of ``r`` after checking it is a problem details answer of ``status``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM_JSON, r.headers
    body: dict[str, Any] = r.json()
    assert set(body) == PROBLEM_KEYS | ({"errors"} if status == 422 else set()), body
    assert body["type"] == "about:blank" and body["title"] == title
    assert body["status"] == status and body["instance"] == r.request.url.path
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def _refused(r: httpx.Response) -> list[list[str | int]]:
    """The ``loc`` of each refused field of a 422 problem details answer."""
    body = _problem(r, 422, "Unprocessable Content")
    for error in body["errors"]:
        assert set(error) == {"loc", "msg", "type"} and error["msg"], error
        assert ".".join(map(str, error["loc"])) in body["detail"]
    return [e["loc"] for e in body["errors"]]


async def test_bad_body_query_and_path_on_different_routers_get_one_shape(env: Env) -> None:
    admin = await env.login("alice")
    chat = {"telegram_chat_id": -1001, "title": "", "topics": {"btc": 1.0}}
    assert _refused(await admin.post(f"{API}/chats", json=chat)) == [["body", "title"]]
    assert _refused(await admin.get(f"{API}/messages", params={"limit": 0})) == [
        ["query", "limit"]]
    assert _refused(await admin.get(f"{API}/bots/abc")) == [["path", "bot_id"]]
    login = await env.client().post(f"{API}/auth/login", json={"username": "", "password": "x"})
    assert _refused(login) == [["body", "username"]]


async def test_refusals_raised_inside_routes_have_the_same_shape(env: Env) -> None:
    admin = await env.login("alice")
    since = await admin.get(f"{API}/costs", params={"since": "last tuesday"})
    assert _refused(since) == [["query", "since"]]
    assert "last tuesday" in since.json()["errors"][0]["msg"]
    not_object = await admin.post(f"{API}/personas/validate", json=[1, 2])
    assert _refused(not_object) == [["body"]]
    persona = await admin.post(f"{API}/personas/validate", json={"name": "x", "language": "de"})
    assert ["body", "language"] in _refused(persona) and ["body", "bio"] in _refused(persona)
    settings = await admin.patch(f"{API}/settings", json={"max_msgs_per_min": 0})
    assert _refused(settings) == [["body", "max_msgs_per_min"]]


async def test_a_refusal_never_echoes_the_value_sent(env: Env) -> None:
    admin = await env.login("alice")
    marker = "do-not-echo-" + "x" * 300
    r = await admin.post(f"{API}/chats", json={
        "telegram_chat_id": -1002, "title": marker, "topics": {"btc": 1.0}})
    assert _refused(r) == [["body", "title"]] and "do-not-echo" not in r.text


async def test_other_errors_are_problem_details_too(env: Env) -> None:
    anon = env.client()
    unauthorized = await anon.get(f"{API}/chats")
    assert _problem(unauthorized, 401, "Unauthorized")["detail"] == "not logged in"
    assert unauthorized.headers["www-authenticate"] == "Bearer"
    viewer = await env.login("vera")
    forbidden = await viewer.post(f"{API}/chats", json={
        "telegram_chat_id": -1003, "title": "t", "topics": {"btc": 1.0}})
    assert _problem(forbidden, 403, "Forbidden")["detail"] == "admin role required"
    admin = await env.login("alice")
    assert "999" in _problem(await admin.get(f"{API}/chats/999"), 404, "Not Found")["detail"]
    chat = {"telegram_chat_id": -1004, "title": "t", "topics": {"btc": 1.0}}
    assert (await admin.post(f"{API}/chats", json=chat)).status_code == 201
    _problem(await admin.post(f"{API}/chats", json=chat), 409, "Conflict")
    big = {**chat, "title": "x" * (1024 * 1024)}
    _problem(await admin.post(f"{API}/chats", json=big), 413, "Content Too Large")
    method = await admin.delete(f"{API}/chats")
    _problem(method, 405, "Method Not Allowed")
    assert "GET" in method.headers["allow"]
    _problem(await admin.get(f"{API}/no-such-route"), 404, "Not Found")


def test_openapi_documents_every_error_as_problem_details(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, secret_key=SECRET), async_sessionmaker(),
                     hasher=cheap_hasher())
    spec = app.openapi()
    assert "HTTPValidationError" not in json.dumps(spec)
    schemas = spec["components"]["schemas"]
    assert {"errors", *PROBLEM_KEYS} <= set(schemas["ValidationProblem"]["properties"])
    seen_422 = 0
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            takes_input = bool(op.get("parameters") or op.get("requestBody"))
            assert ("422" in op["responses"]) == takes_input, (method, path)
            for code, answer in op["responses"].items():
                if int(code) >= 400:
                    model = "ValidationProblem" if code == "422" else "ProblemDetails"
                    assert answer["content"] == {PROBLEM_JSON: {"schema": {
                        "$ref": f"#/components/schemas/{model}"}}}, (method, path, code)
                    seen_422 += code == "422"
    assert seen_422 >= 15


def test_invalid_names_nested_fields_and_list_indexes() -> None:
    exc = invalid("body", [("stances.0.topic", "two stances on one topic"), ("body", "bad")])
    assert [e["loc"] for e in exc.errors()] == [("body", "stances", 0, "topic"), ("body",)]

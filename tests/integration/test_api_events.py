"""The live message stream of the admin API, ``GET /api/v1/events`` (Server-Sent Events,
:mod:`backend.api.routes_ops`).

Runs on SQLite and PostgreSQL. httpx's ``ASGITransport`` buffers a whole response, so these
tests use :class:`StreamingTransport` (below), which hands the body over chunk by chunk and
tells the app the client left when the response is closed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backend.api import routes_ops
from backend.schemas import MessageMeta
from backend.stores import chats as chat_store
from backend.stores import messages as message_store
from tests.integration.test_api_ops import API, Env, Sessions, make_env


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions) -> AsyncIterator[Env]:
    async for e in make_env(tmp_path, sessionmaker):
        yield e


# --- a transport that streams -----------------------------------------------------------


class _Body(httpx.AsyncByteStream):
    def __init__(self, chunks: asyncio.Queue[bytes | None], gone: asyncio.Event,
                 task: asyncio.Task[None]) -> None:
        self.chunks, self.gone, self.task = chunks, gone, task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self.chunks.get()) is not None:
            yield chunk

    async def aclose(self) -> None:
        self.gone.set()  # the app's next receive() is http.disconnect
        await asyncio.wait_for(asyncio.shield(self.task), 5)


class StreamingTransport(httpx.AsyncBaseTransport):
    """Runs the ASGI app in a task and streams its body; closing the response disconnects.

    Attributes:
        tasks: the app task of every request, to check that each one ended.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.tasks: list[asyncio.Task[None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        body = b"".join([part async for part in request.stream])
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": request.method, "scheme": request.url.scheme,
            "path": request.url.path, "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query, "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "server": (request.url.host, request.url.port or 80),
            "client": ("127.0.0.1", 4321),
        }
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        started = asyncio.Event()
        gone = asyncio.Event()
        head: dict[str, Any] = {}
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                head["status"], head["headers"] = message["status"], message.get("headers", [])
                started.set()
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    chunks.put_nowait(message["body"])
                if not message.get("more_body", False):
                    chunks.put_nowait(None)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                started.set()
                chunks.put_nowait(None)

        task = asyncio.create_task(run())
        self.tasks.append(task)
        await started.wait()
        if task.done() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        return httpx.Response(head["status"], headers=head["headers"],
                              stream=_Body(chunks, gone, task))


# --- Server-Sent Events -----------------------------------------------------------------


class SseReader:
    """Reads events (``{"event", "id", "data"}``) and comments off a streamed response."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next_event(self) -> dict[str, str]:
        """The next event; fails after 5 s without one."""
        event: dict[str, str] = {}
        async with asyncio.timeout(5):
            async for line in self.lines:
                if line == "":
                    if event:
                        return event
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    event[name] = value.removeprefix(" ")
        raise AssertionError("stream ended")


async def _add_human(sm: Sessions, chat_id: int, tg_id: int, text: str) -> int:
    async with sm() as s, s.begin():
        got = await message_store.record_incoming(
            s, chat_id=chat_id, telegram_message_id=tg_id, text=text, sender_id=42,
            sender_name="Ayşe", meta=MessageMeta(), created_at=datetime.now(UTC))
    assert got is not None
    return got


@pytest.fixture
def fast_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes_ops, "EVENTS_POLL_S", 0.02)
    monkeypatch.setattr(routes_ops, "EVENTS_PING_S", 0.1)


async def test_events_stream_new_messages(env: Env, fast_events: None) -> None:
    async with env.sm() as s, s.begin():
        chat = await chat_store.upsert_chat(s, telegram_chat_id=-1009, title="t",
                                            topics={"btc": 1.0})
        chat_id = chat.id
    first = await _add_human(env.sm, chat_id, 1, "merhaba </script><b>")
    second = await _add_human(env.sm, chat_id, 2, "iki\nsatır")
    transport = StreamingTransport(env.app)
    viewer = await env.login("vera", transport)
    async with viewer.stream("GET", f"{API}/events", params={"after_id": 0}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = SseReader(r)
        e1, e2 = await events.next_event(), await events.next_event()
        assert (e1["event"], e1["id"], e2["id"]) == ("message", str(first), str(second))
        assert json.loads(e1["data"])["text"] == "merhaba </script><b>"  # JSON, not HTML
        assert json.loads(e2["data"])["text"] == "iki\nsatır"  # one data line
        third = await _add_human(env.sm, chat_id, 3, "üç")
        e3 = await events.next_event()
        assert e3["id"] == str(third) and json.loads(e3["data"])["chat_id"] == chat_id
        await asyncio.sleep(0.25)
        fourth = await _add_human(env.sm, chat_id, 4, "dört")
        assert (await events.next_event())["id"] == str(fourth)
        assert "ping" in events.comments
    # Closing the response disconnected the client: the app's task ended.
    assert all(t.done() for t in transport.tasks)

    # Without after_id only messages newer than the latest one are sent.
    async with viewer.stream("GET", f"{API}/events") as r:
        events = SseReader(r)
        await asyncio.sleep(0.1)
        fifth = await _add_human(env.sm, chat_id, 5, "beş")
        assert (await events.next_event())["id"] == str(fifth)
    assert all(t.done() for t in transport.tasks)

    # A reconnecting EventSource resumes after its Last-Event-ID.
    async with viewer.stream("GET", f"{API}/events",
                             headers={"Last-Event-ID": str(third)}) as r:
        events = SseReader(r)
        assert [(await events.next_event())["id"] for _ in range(2)] == [str(fourth),
                                                                          str(fifth)]


async def test_events_need_a_login(env: Env) -> None:
    transport = StreamingTransport(env.app)
    anon = env.client(transport)
    async with anon.stream("GET", f"{API}/events", params={"after_id": 0}) as r:
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
    bad = await (await env.login("vera", transport)).get(f"{API}/events",
                                                         params={"after_id": -1})
    assert bad.status_code == 422

"""One human message and its answer are one trace across two processes (issue 17).

The listener (``botsim listener --register``) and a worker (``botsim worker``) run as
processes of their own against PostgreSQL, Redis and the sandbox Telegram, both with
``BOTSIM_TRACING=otlp`` exporting OTLP/HTTP to a small receiver this test serves on
127.0.0.1 (it decodes ``ExportTraceServiceRequest`` protobufs). A person posts in a chat of
three bots; once a bot has answered, one trace id holds the listener's ``webhook`` →
``store`` / ``dispatch`` spans (service ``botsim-listener``) and the worker's ``turn`` →
``prompt``, ``llm``, ``send``, ``commit`` spans (service ``botsim-worker``), the turn's
parent being the dispatch span whose ``traceparent`` rode in the reply stream's entry.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.crypto import TokenCipher
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import settings as settings_store
from bots.personas import load_persona_dir
from loadtest.fleet import free_port
from sandbox.telegram_api import BackgroundServer, TelegramSandbox
from tests.e2e.conftest import start_botsim, stop_all

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(90),
              pytest.mark.xdist_group("processes")]

ROOT = Path(__file__).resolve().parents[2]
CHAT = -100424242
HUMAN_ID = 901
STARTUP_S = 25.0


@dataclass(frozen=True)
class Received:
    """One span as the receiver decoded it."""

    service: str
    pid: int
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    status: int


def _value(kv: KeyValue) -> Any:
    v = kv.value
    which = v.WhichOneof("value")
    if which == "array_value":
        return tuple(getattr(x, x.WhichOneof("value")) for x in v.array_value.values)
    return getattr(v, which) if which else None


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf) keeping every span."""

    spans: list[Received] = field(default_factory=list)
    server: BackgroundServer | None = None

    async def export(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            res = {kv.key: _value(kv) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(Received(
                        service=str(res.get("service.name")), pid=int(res.get("process.pid", 0)),
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(), name=s.name, kind=s.kind,
                        attributes={kv.key: _value(kv) for kv in s.attributes},
                        status=s.status.code))
        return Response(ExportTraceServiceResponse().SerializeToString(),
                        media_type="application/x-protobuf")

    async def start(self) -> str:
        app = Starlette(routes=[Route("/v1/traces", self.export, methods=["POST"])])
        self.server = await BackgroundServer.start(app)
        return self.server.url


async def wait_for(cond: Callable[[], Awaitable[bool]], seconds: float,
                   procs: list[subprocess.Popen[bytes]], step: float = 0.1) -> bool:
    """Whether ``cond()`` came true within ``seconds``; fails at once when a process died."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if await cond():
            return True
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"process ended early: {dead}"
        await asyncio.sleep(step)
    return False


async def test_a_human_message_and_its_answer_are_one_trace_across_processes(
    pg_url: str, redis_url: str, pg_sessionmaker: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    fernet = Fernet.generate_key().decode()
    sandbox = TelegramSandbox()
    sandbox.add_chat(CHAT, "İz grubu", "supergroup")
    sandbox.add_member(CHAT, {"id": HUMAN_ID, "first_name": "Deniz", "username": "deniz"})
    tokens: list[str] = []
    async with pg_sessionmaker() as s, s.begin():
        chat = await chat_store.upsert_chat(s, telegram_chat_id=CHAT, title="İz grubu",
                                            topics={"usdtry": 1.0})
        for i, persona in enumerate(load_persona_dir()[:3]):
            token = f"{8300000000 + i}:trace-test-token-{i:04d}-abcdefghij"
            tokens.append(token)
            bot = await bot_store.upsert_persona_bot(s, persona=persona, token=token,
                                                     cipher=TokenCipher(fernet))
            await chat_store.add_bot(s, chat_id=chat.id, bot_id=bot.id)
            sandbox.add_bot(token, persona.username, persona.name)
            sandbox.add_bot_to_chat(CHAT, token)
        await settings_store.update_settings(s, changes={
            "reading_cap_s": 0.0, "typing_cap_s": 0.0, "max_msgs_per_min": 20,
            "bot_hourly_msg_limit": {"min": 600, "max": 600}})
    await sandbox.start()
    receiver = Receiver()
    otlp_url = await receiver.start()
    listener_port = free_port()
    env = {**os.environ, "DATABASE_URL": pg_url, "REDIS_URL": redis_url,
           "BOTSIM_REDIS_NAMESPACE": f"trace{os.getpid()}", "BOTSIM_FERNET_KEY": fernet,
           "BOTSIM_WEBHOOK_SECRET": "w" * 40, "BOTSIM_TELEGRAM_API_URL": sandbox.bot_api_url,
           "BOTSIM_PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{listener_port}",
           "BOTSIM_LISTENER_PORT": str(listener_port), "BOTSIM_TICK_SECONDS": "0.2",
           "BOTSIM_HEARTBEAT_TTL_S": "3", "BOTSIM_SEED": "7", "BOTSIM_LOG_LEVEL": "INFO",
           "BOTSIM_TRACING": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url,
           "OTEL_BSP_SCHEDULE_DELAY": "200", "PTB_TIMEDELTA": "true"}
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SDK_DISABLED",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_SAMPLER"):
        env.pop(name, None)
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: tmp_path / f"{name}.log" for name in ("listener", "worker")}
    try:
        (tmp_path / "listener").mkdir()
        procs.append(start_botsim(["listener", "--register"],
                            {**env, "BOTSIM_DATA_DIR": str(tmp_path / "listener")},
                            logs["listener"]))
        (tmp_path / "worker").mkdir()
        procs.append(start_botsim(["worker"], {**env, "BOTSIM_DATA_DIR": str(tmp_path / "worker"),
                                         "BOTSIM_WORKER_NAME": "tw1"}, logs["worker"]))

        async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
            async def ready() -> bool:  # webhooks are registered before it serves
                try:
                    url = f"http://127.0.0.1:{listener_port}/health/ready"
                    return (await http.get(url)).status_code == 200
                except httpx.HTTPError:
                    return False

            assert await wait_for(ready, STARTUP_S, procs), "the listener never got ready"

        human = await sandbox.post_as_human(CHAT, HUMAN_ID, "Dolar nereye gider sizce?")

        async def answered() -> bool:
            return any(m["from"]["is_bot"] and (m.get("reply_to_message") or {}).get(
                "message_id") == human["message_id"] for m in sandbox.messages(CHAT))

        assert await wait_for(answered, 30, procs), "no bot answered the person"

        def joined() -> tuple[Received, list[Received]] | None:
            """The dispatch span and its trace once the answering turn's spans arrived."""
            for d in [s for s in receiver.spans if s.name == "dispatch"]:
                trace = [s for s in receiver.spans if s.trace_id == d.trace_id]
                names = {(s.service, s.name) for s in trace}
                sent = any(s.name == "turn" and s.attributes.get("botsim.outcome") == "sent"
                           for s in trace)
                if sent and {("botsim-worker", n) for n in ("prompt", "llm", "send", "commit")
                             } <= names:
                    return d, trace
            return None

        async def exported() -> bool:
            return joined() is not None

        assert await wait_for(exported, 10, procs), sorted(
            {(s.service, s.name) for s in receiver.spans})
    except BaseException:
        stop_all(procs)
        for name, path in logs.items():
            print(f"--- {name} ---\n{path.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        stop_all(procs)
        await sandbox.stop()
        if receiver.server is not None:
            await receiver.server.stop()

    found = joined()
    assert found is not None
    dispatch, trace = found
    by_id = {s.span_id: s for s in trace}
    [webhook] = [s for s in trace if s.name == "webhook"]
    [store] = [s for s in trace if s.name == "store"]
    turns = [s for s in trace if s.name == "turn" and s.attributes.get("botsim.outcome") == "sent"]
    turn = turns[0]
    # two processes, one trace
    assert {webhook.service, store.service, dispatch.service} == {"botsim-listener"}
    assert {s.service for s in trace if s.name in ("turn", "prompt", "llm", "send", "commit")
            } == {"botsim-worker"}
    assert webhook.pid != turn.pid and webhook.pid == procs[0].pid and turn.pid == procs[1].pid
    # the listener's part: webhook → store, dispatch
    assert webhook.parent_id == ""
    assert store.parent_id == webhook.span_id and dispatch.parent_id == webhook.span_id
    # the worker's turn continues the dispatch span carried by the reply stream
    assert turn.parent_id == dispatch.span_id
    assert by_id[turn.parent_id].service == "botsim-listener"
    assert turn.attributes["botsim.reply_message_id"] == dispatch.attributes["botsim.message_id"]
    assert turn.attributes["botsim.bot_id"] in dispatch.attributes["botsim.repliers"]
    assert str(turn.attributes["botsim.worker_id"]).startswith("tw1-")
    for name in ("prompt", "llm", "send", "commit"):
        assert any(s.name == name and s.parent_id == turn.span_id for s in trace), name
    llm = next(s for s in trace if s.name == "llm" and s.parent_id == turn.span_id)
    assert any(s.name == "llm.attempt" and s.parent_id == llm.span_id for s in trace)
    # never a message text, a token or a secret as an attribute
    texts = [m["text"] for m in sandbox.messages(CHAT)]
    for s in receiver.spans:
        for value in s.attributes.values():
            for secret in (*texts, *tokens, fernet, "w" * 40):
                assert secret not in str(value), (s.name, value)

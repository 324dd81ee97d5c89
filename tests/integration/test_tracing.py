"""One OpenTelemetry trace per turn (issue 17), read with the SDK's in-memory exporter.

Each test puts a provider of its own in place (:func:`backend.tracing.install`), never the
process-wide one, so nothing leaks into other tests of the same xdist worker.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import tracing
from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from behavior_engine.membership import StreamIntake
from behavior_engine.reads import CachedReads
from behavior_engine.replies import ReplyDispatcher, ReplyStream
from behavior_engine.scheduler import Scheduler, WaitingMessage
from message_listener import ListenerState
from tests.e2e.test_loop import make_worker, make_world, wait_until
from tests.integration.test_listener import MASTER, client, post, update  # noqa: F401
from tests.unit.test_scheduler import SETTINGS, bots, chat, human, run

Sessions = async_sessionmaker[AsyncSession]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans of this test, kept in memory (a provider installed for the test only)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "botsim-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans
            if s.parent is not None and s.parent.span_id == parent.context.span_id]


def no_text(spans: Sequence[ReadableSpan], *texts: str) -> None:
    """No attribute of any span holds one of ``texts`` (message texts, tokens, secrets)."""
    for s in spans:
        for value in (s.attributes or {}).values():
            for text in texts:
                assert text not in str(value), (s.name, value)


# -- off by default ---------------------------------------------------------------------------


def test_off_by_default_spans_are_inert_and_nothing_is_injected() -> None:
    assert not tracing.active()
    with tracing.span("turn", attributes={tracing.CHAT_ID: 1}) as span:
        assert not span.is_recording()
        assert tracing.inject({}) == {}
        assert tracing.traceparent() is None
    assert not tracing.start("prompt").is_recording()


def test_a_carried_traceparent_is_the_parent_and_a_missing_one_a_new_root(
        spans: InMemorySpanExporter) -> None:
    with tracing.span("turn", context=tracing.parent_of(TRACEPARENT)) as span:
        assert span.get_span_context().trace_id == int(TRACEPARENT.split("-")[1], 16)
        carried = tracing.traceparent()
        assert carried is not None and carried.split("-")[1] == TRACEPARENT.split("-")[1]
    with tracing.span("outer"), tracing.span("turn", context=tracing.parent_of(None)) as root:
        pass  # a spontaneous turn is never a child of whatever span is current
    with tracing.span("turn", context=tracing.parent_of("00-garbage")) as bad:
        pass
    done = spans.get_finished_spans()
    turn = [s for s in named(done, "turn") if s.context.span_id == root.get_span_context().span_id]
    assert turn[0].parent is None
    assert bad.get_span_context().trace_id != int(TRACEPARENT.split("-")[1], 16)


def test_an_exception_sets_error_with_its_class_only(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), tracing.span("store"):
        raise ValueError("Deniz: dolar nereye gider?")
    [store] = spans.get_finished_spans()
    assert store.status.status_code is StatusCode.ERROR
    assert store.status.description == "ValueError"
    assert not store.events  # no exception event: its message may quote a person's text


# -- the scheduler carries the context --------------------------------------------------------


def test_the_scheduler_puts_the_human_messages_trace_on_its_reply_turn() -> None:
    waiting = WaitingMessage(message_id=7, line=human(70, "Dolar nereye gider sizce?"),
                             assigned=(1,), traceparent=TRACEPARENT)
    s = Scheduler(seed=1)
    turns = run(s, chat([waiting]), bots(), 15, SETTINGS)
    replies = [t for t in turns if t.reply_message_id == 7]
    assert replies and all(t.traceparent == TRACEPARENT for t in replies)
    assert all(t.traceparent is None for t in turns if t.reply_message_id is None)


# -- a spontaneous turn: one trace --------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_spontaneous_turn_is_one_trace(
        tmp_path: Path, sessionmaker: Sessions, spans: InMemorySpanExporter) -> None:
    async with make_world(tmp_path, sessionmaker) as world:
        worker = make_worker(world)

        async def sent() -> bool:
            return any((s.attributes or {}).get(tracing.OUTCOME) == "sent"
                       for s in named(spans.get_finished_spans(), "turn"))

        await worker.start()
        try:
            assert await wait_until(sent, 20), dict(worker.stats)
        finally:
            await worker.stop()
    done = spans.get_finished_spans()
    turn = next(s for s in named(done, "turn")
                if (s.attributes or {}).get(tracing.OUTCOME) == "sent")
    assert turn.parent is None and turn.kind is SpanKind.INTERNAL  # a trace of its own
    attrs = turn.attributes or {}
    assert attrs[tracing.WORKER_ID] == worker.worker_id
    assert attrs["botsim.turn.reason"] == "spontaneous"
    for key in (tracing.CHAT_ID, tracing.BOT_ID, tracing.TURN_ID):
        assert key in attrs
    trace = [s for s in done if s.context.trace_id == turn.context.trace_id]
    under = {s.name for s in children(trace, turn)}
    assert {"prompt", "llm", "send", "commit"} <= under, under
    llm = next(s for s in children(trace, turn) if s.name == "llm")
    attempts = children(trace, llm)
    assert [a.name for a in attempts] == ["llm.attempt"]
    assert (attempts[0].attributes or {})["gen_ai.provider.name"] == "offline"
    assert (llm.attributes or {})[tracing.OUTCOME] == "ok"
    send = next(s for s in children(trace, turn) if s.name == "send")
    assert (send.attributes or {})[tracing.OUTCOME] == "sent"
    assert send.kind is SpanKind.CLIENT
    # the spans are in order: the prompt before the model, the model before the send...
    first = {s.name: s.start_time or 0 for s in children(trace, turn)}
    assert first["prompt"] <= first["llm"] <= first["send"] <= first["commit"]
    texts = [m["text"] for m in world.sandbox.messages(world.chat)]
    no_text(done, *texts, *world.tokens, world.secrets.fernet_key)


# -- the listener: webhook → store → dispatch, the context into the stream ----------------------


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_url)
    try:
        yield r
    finally:
        await r.aclose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_listener_path_puts_its_trace_into_the_stream_entry(
        sessionmaker: Sessions, cipher: TokenCipher, redis: aioredis.Redis,
        client: tuple[httpx.AsyncClient, int, ListenerState],  # noqa: F811
        spans: InMemorySpanExporter) -> None:
    c, bot_id, state = client
    ns = f"tracetest-{uuid.uuid4().hex[:8]}"
    cache = TwoLayerCache(redis_url=None)
    await cache.start()
    try:
        reads = CachedReads(cache, sessionmaker)
        stream = ReplyStream(redis, namespace=ns)
        state.intake = StreamIntake(ReplyDispatcher(stream, reads, sessionmaker, seed=5))
        text = "Dolar nereye gider sizce?"
        r = await post(c, bot_id, update(1, 11, text))
        assert r.status_code == 200 and r.json()["stored"] is True
        [request] = await stream.read_all()
    finally:
        await cache.close()
    done = spans.get_finished_spans()
    [webhook] = named(done, "webhook")
    [store] = named(done, "store")
    [dispatch] = named(done, "dispatch")
    assert webhook.parent is None and webhook.kind is SpanKind.SERVER
    assert store.parent is not None and store.parent.span_id == webhook.context.span_id
    assert dispatch.parent is not None and dispatch.parent.span_id == webhook.context.span_id
    assert dispatch.kind is SpanKind.PRODUCER
    assert (webhook.attributes or {})["http.response.status_code"] == 200
    assert (webhook.attributes or {})[tracing.BOT_ID] == bot_id
    assert (store.attributes or {})["botsim.message_id"] == request.message_id
    assert (dispatch.attributes or {})["messaging.destination.name"] == stream.key
    assert (dispatch.attributes or {})["botsim.repliers"] == (request.bot_id,)
    # the entry carries the dispatch span's context: the worker's turn continues it
    assert request.traceparent is not None
    assert request.traceparent.startswith(
        f"00-{dispatch.context.trace_id:032x}-{dispatch.context.span_id:016x}-")
    assert request.waiting((request.bot_id,)).traceparent == request.traceparent
    no_text(done, text, MASTER)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_without_tracing_the_stream_entry_carries_no_context(
        sessionmaker: Sessions, redis: aioredis.Redis,
        client: tuple[httpx.AsyncClient, int, ListenerState]) -> None:  # noqa: F811
    c, bot_id, state = client
    cache = TwoLayerCache(redis_url=None)
    await cache.start()
    try:
        stream = ReplyStream(redis, namespace=f"tracetest-{uuid.uuid4().hex[:8]}")
        state.intake = StreamIntake(ReplyDispatcher(stream, CachedReads(cache, sessionmaker),
                                                    sessionmaker, seed=5))
        assert (await post(c, bot_id, update(1, 11))).status_code == 200
        [request] = await stream.read_all()
        raw = await redis.xrange(stream.key)
    finally:
        await cache.close()
    assert request.traceparent is None
    assert all(b"traceparent" not in fields for _id, fields in raw)

"""OpenTelemetry traces: one trace per turn, across processes (issue 17).

A human message's path is one trace: the listener's ``webhook`` → ``store`` → ``dispatch``
(the W3C ``traceparent`` of the dispatch span rides in the reply stream's entry), then the
worker's ``turn`` (a child of the carried context) → ``prompt``, ``llm`` (one ``llm.attempt``
child per provider attempt), ``send``, ``commit``. A spontaneous turn is a trace of its own,
rooted at its ``turn`` span.

Off by default: without :func:`configure_tracing` (or with ``BOTSIM_TRACING=off``) every
tracer is the API's no-op tracer, and :func:`inject` writes nothing. ``BOTSIM_TRACING=otlp``
exports over OTLP/HTTP (protobuf) through a ``BatchSpanProcessor``; the SDK reads the
standard variables itself: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (full URL) or
``OTEL_EXPORTER_OTLP_ENDPOINT`` (base URL, ``/v1/traces`` appended; default
``http://localhost:4318``), ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_SERVICE_NAME`` (overrides the process's default ``botsim-<process>``),
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_BSP_*`` and
``OTEL_SDK_DISABLED``.

The code gets its tracer through :func:`tracer` at call time, so a test can put a provider
of its own in place (:func:`install`) without touching the process-wide one, which the API
lets be set only once per process.

Attributes (never a message's text, a bot token or an API key): ``botsim.chat_id``,
``botsim.bot_id``, ``botsim.turn_id``, ``botsim.worker_id``, ``botsim.outcome`` and the
``messaging.*`` / ``gen_ai.*`` / ``http.*`` names of OpenTelemetry's semantic conventions.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from backend.settings import Settings

log = logging.getLogger("botsim.tracing")

#: The instrumentation scope of every botsim span.
TRACER_NAME = "botsim"

# Attribute names (OpenTelemetry's where one exists).
CHAT_ID = "botsim.chat_id"
BOT_ID = "botsim.bot_id"
TURN_ID = "botsim.turn_id"
WORKER_ID = "botsim.worker_id"
OUTCOME = "botsim.outcome"
#: The W3C Trace Context header name, also the reply stream's field name.
TRACEPARENT = "traceparent"
#: Longest ``traceparent`` accepted from a stream entry (version 00 is 55 characters).
TRACEPARENT_MAX = 128

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: Tracer = trace.get_tracer(TRACER_NAME)  # a proxy: the global provider, once set
_provider: TracerProvider | None = None  # the one configure_tracing made
#: False while no provider is in place: :func:`span` and :func:`inject` then do nothing at
#: all (not even the no-op tracer's context switch).
_active = False


def tracer() -> Tracer:
    """The botsim tracer now: the installed provider's (:func:`install`), else the global
    one's (the API's no-op tracer until :func:`configure_tracing` set one)."""
    return _tracer


def install(provider: trace.TracerProvider | None) -> None:
    """Make ``provider`` the source of :func:`tracer` in this process (tests: an SDK
    provider with an in-memory exporter); None goes back to the global provider.

    The global provider (``opentelemetry.trace.set_tracer_provider``) is not touched.
    """
    global _tracer, _active
    _tracer = (provider.get_tracer(TRACER_NAME) if provider is not None
               else trace.get_tracer(TRACER_NAME))
    _active = provider is not None or _provider is not None


def active() -> bool:
    """Whether spans are made in this process (a provider is configured or installed)."""
    return _active


@contextlib.contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes = None,
         context: Context | None = None) -> Iterator[Span]:
    """A span named ``name``, current inside the block (a child of the current span, or
    of ``context`` when given: an empty ``Context()`` makes a root span).

    An exception leaving the block sets the status ERROR with the exception's class name
    only (no exception event: its message may quote a text or hold a URL with a token) and
    propagates. With tracing off it yields the API's invalid span, and costs a generator.

    Yields:
        The span (``is_recording()`` False when off or sampled out).
    """
    if not _active:
        yield INVALID_SPAN
        return
    with _tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes,
                                       record_exception=False,
                                       set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as exc:
            failed(current, exc)
            raise


def enabled(settings: Settings) -> bool:
    """Whether ``settings`` ask for traces to be exported (``tracing`` is not ``off``)."""
    return settings.tracing != "off"


def start(name: str, *, attributes: Attributes = None) -> Span:
    """A span named ``name``, a child of the current span but not made current; the
    caller ends it (``span.end()``). A span never ended is never exported. With tracing
    off, the API's invalid span (whose methods do nothing)."""
    if not _active:
        return INVALID_SPAN
    return _tracer.start_span(name, attributes=attributes)


def configure_tracing(settings: Settings, service_name: str, *,
                      instance_id: str | None = None) -> bool:
    """Set up this process's tracing once, from ``settings.tracing``; later calls change
    nothing.

    ``off`` (the default): nothing is set up, the tracers stay the API's no-op ones.
    ``otlp``: an SDK ``TracerProvider`` with the resource ``service.name`` (``OTEL_SERVICE_NAME``
    or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` when set, else ``service_name``),
    ``service.instance.id`` and ``process.pid``, exporting through a ``BatchSpanProcessor``
    to an OTLP/HTTP exporter configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables;
    it becomes the global provider and is shut down (the last spans flushed) at exit, or
    earlier by :func:`shutdown_tracing`.

    Args:
        settings: the process settings (``tracing``, ``worker_name``).
        service_name: ``botsim-listener``, ``botsim-worker``, ``botsim-api`` or
            ``botsim-demo``.
        instance_id: ``service.instance.id``; default ``{worker_name or host}-{pid}``.

    Returns:
        True when this call set tracing up, False when it is off or was set up before.
    """
    global _provider
    if not enabled(settings) or _provider is not None:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = OTELResourceDetector().detect().attributes.get("service.name")
    host = settings.worker_name or socket.gethostname().split(".")[0] or "botsim"
    resource = Resource.create({
        "service.name": str(named or service_name),
        "service.instance.id": instance_id or f"{host}-{os.getpid()}",
        "process.pid": os.getpid(),
    })
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    install(provider)
    atexit.register(shutdown_tracing)
    log.info("tracing on: %s exports OTLP/HTTP spans", resource.attributes["service.name"])
    return True


def shutdown_tracing(timeout_s: float = 5.0) -> None:
    """Flush the spans still queued (at most ``timeout_s`` seconds) and stop exporting.
    Nothing to do when tracing is off; safe to call twice (the process's exit calls it)."""
    global _provider, _active
    provider, _provider = _provider, None
    if provider is None:
        return
    install(None)
    _active = False
    try:
        provider.force_flush(int(timeout_s * 1000))
        provider.shutdown()
    except Exception as exc:  # an exporter failing at exit never fails the process
        log.warning("tracing: spans not flushed at exit (%s)", type(exc).__name__)


def inject(carrier: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Write the W3C ``traceparent`` (and ``tracestate``) of ``context`` (default: the
    current one) into ``carrier``; nothing when no span is recording (tracing off).

    Returns:
        ``carrier``, for chaining.
    """
    if _active:
        _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str]) -> Context:
    """The context a ``traceparent`` in ``carrier`` names; an empty context (a new trace)
    when it has none or it is malformed."""
    return _PROPAGATOR.extract(carrier, context=Context())


def traceparent() -> str | None:
    """The current span's ``traceparent`` string, or None when none is recording."""
    return inject({}).get(TRACEPARENT)


def parent_of(carried: str | None) -> Context:
    """The parent context of a span started from a carried ``traceparent``: that span's
    context, or an empty context (a root span, never the ambient span) when ``carried`` is
    None or malformed."""
    if not carried:
        return Context()
    return extract({TRACEPARENT: carried})


def failed(span: Span, error: BaseException | str) -> None:
    """Mark ``span`` failed: status ERROR with a short description (an exception's class,
    never its message, which may quote a text or carry a URL with a token)."""
    if span.is_recording():
        what = type(error).__name__ if isinstance(error, BaseException) else error
        span.set_status(Status(StatusCode.ERROR, what[:200]))

"""The ids a log line is about: turn, chat, bot, worker, and the current trace and span.

Code that runs a turn or takes a message binds what it knows; every log line written
inside (at any depth, in any module) then carries it, through :class:`ContextFilter` on the
process's log handler (``botsim.bootstrap.configure_logging``)::

    with logcontext.bind(bot_id=12, chat_id=3, turn_id="9f1c…"):
        ...                                   # log.info(...) lines carry the three ids

    @logcontext.scoped                        # ids set inside are undone on return
    async def handle(...):
        logcontext.update(bot_id=bot_id)      # from here on, in this call only

The ids live in :mod:`contextvars`: each asyncio task starts with a copy of its creator's
values, so turns running at once in one worker never see each other's ids, and a task
created inside a ``bind`` block keeps them. ``trace_id`` and ``span_id`` come from
OpenTelemetry's current span when the ``opentelemetry-api`` package is installed and a
span is active (32 and 16 lower-case hex digits, as in W3C ``traceparent``); otherwise they
are absent.

Nothing here logs, and nothing holds a message's text: only ids.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar, Token
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_TURN_ID: ContextVar[str | None] = ContextVar("botsim_turn_id", default=None)
_CHAT_ID: ContextVar[int | None] = ContextVar("botsim_chat_id", default=None)
_BOT_ID: ContextVar[int | None] = ContextVar("botsim_bot_id", default=None)
_WORKER_ID: ContextVar[str | None] = ContextVar("botsim_worker_id", default=None)

#: The bound ids, by the name they have on a log record and in a JSON log line.
_VARS: dict[str, ContextVar[Any]] = {
    "turn_id": _TURN_ID, "chat_id": _CHAT_ID, "bot_id": _BOT_ID, "worker_id": _WORKER_ID,
}
#: Every field :class:`ContextFilter` puts on a record, in the order lines show them.
FIELDS = ("bot_id", "chat_id", "turn_id", "worker_id", "trace_id", "span_id")

_otel_trace: Any = None  # the opentelemetry.trace module; False: not installed


def current() -> dict[str, str | int]:
    """The ids bound now (turn, chat, bot, worker), without the unset ones, e.g.
    ``{"bot_id": 12, "chat_id": 3}``."""
    values = {name: var.get() for name, var in _VARS.items()}
    return {name: value for name, value in values.items() if value is not None}


def update(*, turn_id: str | None = None, chat_id: int | None = None,
           bot_id: int | None = None, worker_id: str | None = None) -> None:
    """Set the given ids (None: leave that one as it is) in the current context, until the
    enclosing :func:`bind` block or :func:`scoped` call ends, or for the rest of the task
    (and the tasks it creates afterwards) outside one."""
    given = {"turn_id": turn_id, "chat_id": chat_id, "bot_id": bot_id,
             "worker_id": worker_id}
    for name, value in given.items():
        if value is not None:
            _VARS[name].set(value)


@contextlib.contextmanager
def bind(*, turn_id: str | None = None, chat_id: int | None = None,
         bot_id: int | None = None, worker_id: str | None = None) -> Iterator[None]:
    """Bind the given ids (None: keep the outer value) for the block.

    On leaving the block (also by an exception) every id is as it was on entering it,
    including those :func:`update` changed inside. Enter and leave it in one task (an
    ordinary ``with`` in a coroutine does).
    """
    tokens: list[tuple[ContextVar[Any], Token[Any]]] = [
        (var, var.set(var.get())) for var in _VARS.values()
    ]
    try:
        update(turn_id=turn_id, chat_id=chat_id, bot_id=bot_id, worker_id=worker_id)
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def scoped(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate a coroutine function: each call runs in a :func:`bind` block of its own,
    so what it :func:`update`\\ s is undone when it returns or raises."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with bind():
            return await fn(*args, **kwargs)

    return wrapper


def trace_ids() -> tuple[str, str] | None:
    """(trace id as 32 hex digits, span id as 16) of OpenTelemetry's current span; None
    when ``opentelemetry-api`` is not installed, no span is active or reading it fails."""
    global _otel_trace
    if _otel_trace is None:
        try:
            from opentelemetry import trace
        except ImportError:
            _otel_trace = False
        else:
            _otel_trace = trace
    if _otel_trace is False:
        return None
    try:
        ctx = _otel_trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return None
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    except Exception:  # a log line must never fail for its trace ids
        return None


class ContextFilter(logging.Filter):
    """Puts :data:`FIELDS` on every record it sees (an id not bound: None), never dropping
    one. A value the caller gave in ``extra=`` is kept.

    Attach it to a handler (not a logger): a handler's filters see the records of every
    logger that reaches it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the ids to ``record``; always True (the record is kept)."""
        values: dict[str, object] = {name: var.get() for name, var in _VARS.items()}
        ids = trace_ids()
        values["trace_id"], values["span_id"] = ids if ids is not None else (None, None)
        for name, value in values.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True

"""Structured logs: the ids bound by backend.logcontext, in JSON lines and in plain lines."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from backend import logcontext
from backend.errors import ConfigError, TelegramForbidden
from backend.settings import Settings, load_settings
from botsim import bootstrap
from botsim.bootstrap import CHATTY_LOGGERS, JsonLineFormatter, log_handler, tame_chatty_loggers
from tests.unit.test_pipeline import BOT, CHAT, FakeClient, Rig, turn

log = logging.getLogger("botsim.test_logging")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@contextlib.contextmanager
def captured_logs(log_format: Literal["plain", "json"],
                  level: int = logging.DEBUG) -> Iterator[io.StringIO]:
    """Every logger's lines at ``level`` in ``log_format``, into the yielded stream, set up
    as :func:`botsim.bootstrap.configure_logging` does (the chatty loggers at WARNING);
    the root logger and the chatty loggers' levels are restored afterwards."""
    stream = io.StringIO()
    handler = log_handler(log_format, stream)
    root = logging.getLogger()
    root_level = root.level
    chatty = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    root.addHandler(handler)
    root.setLevel(level)
    tame_chatty_loggers(level)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(root_level)
        for name, was in chatty.items():
            logging.getLogger(name).setLevel(was)


def json_lines(stream: io.StringIO,
               logger: str | None = "botsim.test_logging") -> list[dict[str, Any]]:
    """Each line of ``stream`` as its JSON object (a line that is not JSON fails), those of
    ``logger`` only (None: all)."""
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if logger is None or line["logger"] == logger]


def test_json_lines_carry_the_bound_ids() -> None:
    with captured_logs("json") as out:
        log.info("before")
        with logcontext.bind(bot_id=12, chat_id=3, turn_id="turn-a", worker_id="w-1"):
            log.info("during %s", "the turn", extra={"attempt": 2})
        log.info("after")
    before, during, after = json_lines(out)
    assert during == {"time": during["time"], "level": "INFO", "logger": "botsim.test_logging",
                      "message": "during the turn", "bot_id": 12, "chat_id": 3,
                      "turn_id": "turn-a", "worker_id": "w-1", "attempt": 2}
    assert ISO_UTC.match(during["time"])
    assert list(during)[:4] == ["time", "level", "logger", "message"]
    for line in (before, after):  # nothing bound: no id keys at all
        assert set(line) == {"time", "level", "logger", "message"}


def test_an_exception_is_a_field_of_its_one_line() -> None:
    with captured_logs("json") as out, logcontext.bind(bot_id=5):
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.exception("it failed")
    [line] = json_lines(out)  # the traceback's line breaks are escaped
    assert line["level"] == "ERROR" and line["message"] == "it failed"
    assert "ZeroDivisionError" in line["exception"] and line["bot_id"] == 5


def test_plain_lines_show_the_ids_compactly() -> None:
    with captured_logs("plain") as out:
        log.warning("no ids")
        with logcontext.bind(bot_id=12, chat_id=3, turn_id="abc"):
            log.warning("three ids")
            try:
                raise ValueError("x")
            except ValueError:
                log.exception("with a traceback")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("WARNING botsim.test_logging: no ids")
    assert lines[1].endswith("WARNING botsim.test_logging: three ids [bot=12 chat=3 turn=abc]")
    assert lines[2].endswith("with a traceback [bot=12 chat=3 turn=abc]")
    assert lines[3] == "Traceback (most recent call last):"


def test_bind_restores_the_ids_on_leaving_even_by_an_exception() -> None:
    assert logcontext.current() == {}
    with logcontext.bind(worker_id="w-1"):
        with pytest.raises(RuntimeError), logcontext.bind(bot_id=1, chat_id=2):
            logcontext.update(turn_id="t-1", bot_id=9)
            assert logcontext.current() == {"worker_id": "w-1", "bot_id": 9, "chat_id": 2,
                                            "turn_id": "t-1"}
            raise RuntimeError
        assert logcontext.current() == {"worker_id": "w-1"}
        with logcontext.bind(bot_id=None):  # None keeps the outer value
            assert logcontext.current() == {"worker_id": "w-1"}
    assert logcontext.current() == {}


async def test_scoped_undoes_what_the_call_updated() -> None:
    seen: list[dict[str, str | int]] = []

    @logcontext.scoped
    async def handle(bot_id: int) -> int:
        logcontext.update(bot_id=bot_id)
        await asyncio.sleep(0)
        seen.append(logcontext.current())
        raise KeyError(bot_id)

    with logcontext.bind(worker_id="w-2"):
        with pytest.raises(KeyError):
            await handle(7)
        assert logcontext.current() == {"worker_id": "w-2"}
    assert seen == [{"worker_id": "w-2", "bot_id": 7}]


async def test_concurrent_tasks_never_see_each_others_ids() -> None:
    async def one_turn(i: int) -> None:
        with logcontext.bind(bot_id=i, chat_id=100 + i, turn_id=f"turn-{i}"):
            for step in range(3):
                await asyncio.sleep(0.001 * ((i * 7 + step) % 5))  # interleave the tasks
                log.info("turn %d step %d", i, step)

    with captured_logs("json") as out, logcontext.bind(worker_id="w-9"):
        await asyncio.gather(*(one_turn(i) for i in range(20)))
        inherited = asyncio.create_task(asyncio.sleep(0, result=logcontext.current()))
        assert await inherited == {"worker_id": "w-9"}  # a task starts with its creator's ids
    lines = json_lines(out)
    assert len(lines) == 60
    for line in lines:
        i = int(line["message"].split()[1])
        assert (line["bot_id"], line["chat_id"], line["turn_id"], line["worker_id"]) == (
            i, 100 + i, f"turn-{i}", "w-9")
    assert logcontext.current() == {}


def test_trace_and_span_ids_come_from_the_current_span() -> None:
    otel = pytest.importorskip("opentelemetry.trace")
    ctx = otel.SpanContext(trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
                           span_id=0x00F067AA0BA902B7, is_remote=False)
    with captured_logs("json") as out, captured_logs("plain") as plain:
        log.info("no span")
        with otel.use_span(otel.NonRecordingSpan(ctx)):
            log.info("in a span")
    outside, inside = json_lines(out)
    assert "trace_id" not in outside and "span_id" not in outside
    assert inside["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert inside["span_id"] == "00f067aa0ba902b7"
    assert plain.getvalue().splitlines()[1].endswith(
        "in a span [trace=4bf92f3577b34da6a3ce929d0e0e4736]")


def test_without_opentelemetry_lines_have_no_trace_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logcontext, "_otel_trace", None)  # not looked up yet
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # the import fails
    assert logcontext.trace_ids() is None
    with captured_logs("json") as out, logcontext.bind(bot_id=1):
        log.info("untraced")
    [line] = json_lines(out)
    assert line["bot_id"] == 1 and "trace_id" not in line


async def test_a_turns_lines_carry_its_ids() -> None:
    rig = Rig(FakeClient(TelegramForbidden("Forbidden: bot was kicked from the group chat")))
    with captured_logs("json") as out:
        outcome = await rig.pipeline.run(turn())
    assert outcome.status == "failed"
    lines = json_lines(out, "botsim.pipeline")
    assert lines, "the kicked bot is logged"
    for line in lines:
        assert (line["turn_id"], line["chat_id"], line["bot_id"], line["worker_id"]) == (
            "turn-1", CHAT, BOT, "w-1")
    assert logcontext.current() == {}  # undone when the turn ends


def test_a_bad_log_format_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOTSIM_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError,
                       match=r"BOTSIM_LOG_FORMAT: Input should be 'plain' or 'json' \(got 'xml'\)"):
        load_settings()
    monkeypatch.setenv("BOTSIM_LOG_FORMAT", "json")
    assert load_settings().log_format == "json"
    monkeypatch.delenv("BOTSIM_LOG_FORMAT")
    assert load_settings().log_format == "plain"


def test_configure_logging_installs_the_chosen_format(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(bootstrap, "_logging_configured", False)
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: calls.append(kw))
    chatty = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    try:
        settings = Settings(data_dir=tmp_path, log_format="json", log_level="DEBUG")
        assert bootstrap.configure_logging(settings)
        [handler] = calls[0]["handlers"]
        assert isinstance(handler.formatter, JsonLineFormatter)
        assert calls[0]["level"] == logging.DEBUG
        # aiosqlite's DEBUG lines quote SQL parameters (people's messages): never shown
        assert logging.getLogger("aiosqlite").level == logging.WARNING
    finally:
        for name, was in chatty.items():
            logging.getLogger(name).setLevel(was)


def _botsim(tmp_path: Path, log_format: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BOTSIM_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(BOTSIM_DATA_DIR=str(tmp_path), BOTSIM_LOG_FORMAT=log_format,
               BOTSIM_LOG_LEVEL="DEBUG")
    return subprocess.run([str(Path(sys.executable).with_name("botsim")), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
                          check=False)


def test_the_cli_writes_json_lines_on_standard_error(tmp_path: Path) -> None:
    done = _botsim(tmp_path, "json", "costs")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    assert any(line["logger"] == "botsim.bootstrap" and line["message"].startswith("runtime up")
               for line in lines), done.stderr
    assert all(ISO_UTC.match(line["time"]) and line["level"] for line in lines)
    bad = _botsim(tmp_path, "xml", "costs")
    assert bad.returncode == 2 and "BOTSIM_LOG_FORMAT" in bad.stderr


@pytest.mark.parametrize("sdk_logger", ["openai._base_client", "groq._base_client",
                                        "google_genai.models", "httpcore.http11"])
def test_llm_sdks_debug_lines_never_reach_the_log(sdk_logger: str) -> None:
    """At DEBUG the LLM SDKs log each request's body (the prompt quotes people's messages):
    their loggers are kept at WARNING, so nothing of a prompt is written."""
    with captured_logs("json") as stream:
        logging.getLogger(sdk_logger).debug("Request options: %s",
                                            {"messages": [{"content": "MARKER-person-text"}]})
        logging.getLogger(sdk_logger).warning("retrying")
    assert "MARKER-person-text" not in stream.getvalue()
    assert [line["message"] for line in json_lines(stream, sdk_logger)] == ["retrying"]

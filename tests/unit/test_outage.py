"""backend.outage.Outage with a fake clock: every transition, the backoff, the log lines."""

from __future__ import annotations

import logging

import pytest

from backend.outage import Outage, State

LOGGER = "botsim.test.outage"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, changes: list[bool], state: State = State.UP) -> Outage:
    return Outage(
        "thing: Redis",
        logger=logging.getLogger(LOGGER),
        while_down="serving locally",
        on_recovery="shared again",
        state=state,
        initial_s=0.05,
        max_s=0.4,
        clock=clock,
        on_change=changes.append,
    )


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def test_up_down_up_logs_one_warning_and_one_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock, changes = Clock(), []
    out = make(clock, changes)
    assert out.state is State.UP and out.is_up and out.should_probe()
    assert out.recovered() is False  # up stays up: nothing logged, no change
    assert out.failed(ConnectionError("refused")) is True
    assert out.state is State.DOWN and not out.is_up
    assert out.failed(ConnectionError("refused again")) is False  # a straggler: same outage
    assert lines(caplog, logging.WARNING) == [
        "thing: Redis unreachable (ConnectionError: refused); serving locally"
    ]
    assert out.recovered() is True
    assert out.is_up
    assert lines(caplog, logging.INFO) == ["thing: Redis answers again; shared again"]
    assert changes == [False, True]
    assert out.failed(TimeoutError("slow")) is True  # a new outage, a new warning
    assert len(lines(caplog, logging.WARNING)) == 2
    assert changes == [False, True, False]


def test_unknown_to_up_is_silent_and_unknown_to_down_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock, changes = Clock(), []
    first = make(clock, changes, state=State.UNKNOWN)
    assert not first.is_up and first.should_probe()  # not known down: try freely
    assert first.recovered() is False  # a first connection, not a recovery
    assert first.is_up and changes == [True]
    assert lines(caplog, logging.INFO) == []
    second = make(clock, changes, state=State.UNKNOWN)
    assert second.failed(OSError("no route")) is True
    assert second.state is State.DOWN and changes == [True, False]
    assert len(lines(caplog, logging.WARNING)) == 1


def test_one_probe_at_a_time_after_the_backoff() -> None:
    clock, changes = Clock(), []
    out = make(clock, changes)
    out.failed(ConnectionError("refused"))
    assert out.backoff_s == 0.05 and out.wait_s() == pytest.approx(0.05)
    assert not out.should_probe()  # within the backoff
    clock.now += 0.05
    assert out.wait_s() == 0.0
    assert out.should_probe() and out.probing  # this caller probes...
    assert not out.should_probe()  # ...and nobody else meanwhile
    out.end_probe()  # given back without a verdict (cancelled)
    assert out.should_probe()
    assert out.recovered() is True and not out.probing


def test_failed_probes_double_the_backoff_up_to_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock, changes = Clock(), []
    out = make(clock, changes)
    out.failed(ConnectionError("refused"))
    seen = []
    for _ in range(6):
        clock.now += out.wait_s()
        assert out.should_probe()
        out.failed(ConnectionError("still refused"))
        assert not out.probing
        seen.append(out.backoff_s)
    assert seen == [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
    assert len(lines(caplog, logging.WARNING)) == 1  # one outage, one warning
    assert len(lines(caplog, logging.DEBUG)) == 6
    assert changes == [False]
    out.recovered()
    out.failed(ConnectionError("again"))
    assert out.backoff_s == 0.05  # a new outage starts from the initial backoff


def test_a_straggler_failure_does_not_lengthen_the_backoff() -> None:
    clock, changes = Clock(), []
    out = make(clock, changes)
    out.failed(ConnectionError("refused"))
    out.failed(ConnectionError("a call from before the outage"))
    assert out.backoff_s == 0.05 and out.wait_s() == pytest.approx(0.05)


def test_bad_backoff_is_refused() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        Outage("x", logger=logging.getLogger(LOGGER), while_down="", on_recovery="",
               initial_s=0.0)
    with pytest.raises(ValueError, match="max_s"):
        Outage("x", logger=logging.getLogger(LOGGER), while_down="", on_recovery="",
               initial_s=2.0, max_s=1.0)

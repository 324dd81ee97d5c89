"""The chaos run's schedule and figures, as pure functions (issue 19, items 1 and 2)."""

from __future__ import annotations

import pytest

from loadtest.chaos_figures import (
    Happened,
    Send,
    Stored,
    chaos_figures,
    growth_per_hour,
    takeover_s,
    verdict,
)
from loadtest.chaos_schedule import FAULT_KINDS, make_schedule, parse_kinds

BOTS = list(range(1001, 1041))


def plan(seed: int = 1, duration: float = 300.0, **kw: object) -> list:
    args: dict = {"seed": seed, "duration_s": duration, "kinds": FAULT_KINDS, "workers": 4,
                  "bot_ids": BOTS, "providers": ("primary", "backup"), "heartbeat_ttl_s": 10.0}
    args.update(kw)
    return make_schedule(**args)


def test_a_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert plan(7) == plan(7)
    assert [e.kind for e in plan(7)] != [e.kind for e in plan(8)] or \
        [e.target for e in plan(7)] != [e.target for e in plan(8)]


def test_every_fault_once_inside_the_fault_window() -> None:
    events = plan(3, 300.0)
    assert sorted(e.kind for e in events) == sorted(FAULT_KINDS)
    assert all(60.0 <= e.at_s < 240.0 for e in events)
    assert [e.at_s for e in events] == sorted(e.at_s for e in events)
    kill = next(e for e in events if e.kind == "worker_kill")
    assert kill.detail["restart_after_s"] == 30.0  # 3 × the TTL: the others take over first
    cut = next(e for e in events if e.kind == "redis_partition")
    assert cut.lasts_s > 10.0  # longer than a lease
    storm = next(e for e in events if e.kind == "telegram_429")
    assert len(storm.detail["bot_ids"]) == 4 and set(storm.detail["bot_ids"]) <= set(BOTS)


def test_a_soak_cycles_through_the_faults() -> None:
    events = plan(1, 1800.0)
    counts = {k: sum(e.kind == k for e in events) for k in FAULT_KINDS}
    assert min(counts.values()) >= 4, counts


def test_bad_schedules_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="at least 2 workers"):
        plan(workers=1)
    with pytest.raises(ValueError, match="too short"):
        plan(duration=20.0)
    with pytest.raises(ValueError, match="unknown fault 'nap'"):
        parse_kinds("worker_kill,nap")
    assert parse_kinds("llm_outage, worker_kill") == ("llm_outage", "worker_kill")
    assert parse_kinds("all") == FAULT_KINDS


def _figures(sends: list[Send], stored: Stored, posted: list, faults: list | None = None,
             driven: list | None = None) -> dict:
    return chaos_figures(sends=sends, stored=stored, posted=posted, faults=faults or [],
                         driven=driven or [], resources={}, bots=2, bot_ids=[1, 2],
                         run_start=0.0, run_end=100.0, heartbeat_ttl_s=10.0, config={})


def _stored(bot_rows: list, humans: list, replies: dict | None = None,
            statuses: dict | None = None) -> Stored:
    return Stored(bot_messages=bot_rows, humans=humans, reply_statuses=replies or {},
                  turn_statuses=statuses or {"sent": len(bot_rows)}, duplicates_telegram=0,
                  duplicates_turn=0)


def test_a_clean_run_passes() -> None:
    sends = [Send(-1, 10 + i, 1 + i % 2, float(i * 5), f"t{i}", None) for i in range(20)]
    sends.append(Send(-1, 99, 2, 50.0, "cevap", 7))
    stored = _stored([(-1, s.message_id, f"turn{s.message_id}") for s in sends], [(-1, 7)])
    figures = _figures(sends, stored, [(-1, 7, 49.0)])
    assert figures["humans"] == {**figures["humans"], "posted": 1, "stored": 1, "answered": 1,
                                 "lost": 0, "unanswered": 0}
    result = verdict(figures)
    assert result["passed"], result


def test_a_lost_human_a_duplicate_and_an_unrecorded_send_fail_it() -> None:
    sends = [Send(-1, 10, 1, 5.0, "aynı", 7), Send(-1, 11, 1, 8.0, "aynı", 7),
             Send(-1, 12, 2, 9.0, "tek", None)]
    # 11 repeats 10 (same bot, chat, text, reply) and was not stored; 12 not stored either.
    stored = _stored([(-1, 10, "a")], [(-1, 7)], statuses={"sent": 1})
    figures = _figures(sends, stored, [(-1, 7, 4.0), (-1, 8, 6.0)])
    assert figures["humans"]["lost"] == 1
    assert figures["humans"]["examples"]["lost"] == [
        {"chat": -1, "message_id": 8, "posted_s": 6.0, "turns": [], "reply_wanted": False}]
    assert figures["sends"]["duplicates"] == 1 and figures["sends"]["unrecorded"] == 2
    checks = verdict(figures)["checks"]
    assert not checks["humans_lost"]["ok"] and not checks["duplicate_sends"]["ok"]
    assert not checks["unrecorded_within_unknown"]["ok"]
    assert not checks["producing"]["ok"]  # 91 s without a message


def test_an_answer_cut_off_mid_send_is_unknown_not_unanswered() -> None:
    stored = _stored([], [(-1, 7)], replies={(-1, 7): ["unknown"]}, statuses={"unknown": 1})
    figures = _figures([], stored, [(-1, 7, 1.0)])
    assert figures["humans"]["answer_unknown"] == 1 and figures["humans"]["unanswered"] == 0


def test_takeover_and_growth() -> None:
    driven = [(10.0, 40.0), (11.0, 30.0), (25.0, 35.0), (31.0, 40.0)]
    assert takeover_s(driven, 10.5, 40, 60.0) == 20.5
    assert takeover_s(driven, 10.5, 41, 60.0) is None
    kill = Happened({"kind": "worker_kill", "target": "worker-1", "detail":
                     {"restart_after_s": 30.0}}, 10.5, 40.5)
    figures = _figures([Send(-1, i, 1, float(i), "x", None) for i in range(100)],
                       _stored([(-1, i, None) for i in range(100)], []), [], [kill],
                       [(a, b / 20) for a, b in driven])
    assert figures["faults"][0]["takeover_s"] == 20.5
    assert not verdict(figures)["checks"]["takeover"]["ok"]  # 20.5 s > 2 × 10 s
    flat = [(float(t), 100.0) for t in range(0, 3600, 60)]
    rising = [(float(t), 100.0 + t / 360) for t in range(0, 3600, 60)]
    assert growth_per_hour(flat, 600) == 0.0
    assert growth_per_hour(rising, 600) == pytest.approx(10.0, abs=0.01)
    assert growth_per_hour(rising[:2], 0) is None

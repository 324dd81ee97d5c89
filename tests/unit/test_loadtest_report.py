"""loadtest.report: the terminal summary and the self-contained HTML report of a load test."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from loadtest.report import print_summary, summary_tables, write_report

WORKERS = ("worker-0", "worker-1", "worker-2")


def _percentiles(samples: np.ndarray) -> dict[str, Any]:
    return {
        "count": int(samples.size),
        "p50": float(np.percentile(samples, 50)),
        "p95": float(np.percentile(samples, 95)),
        "p99": float(np.percentile(samples, 99)),
        "max": float(samples.max()),
    }


def make_figures(
    seed: int = 7, workers: tuple[str, ...] = WORKERS, samples: int = 20_000
) -> dict[str, Any]:
    """A figures dict as the runner makes it, from a seeded random sample."""
    rng = np.random.default_rng(seed)
    latency = rng.lognormal(np.log(2000.0), 0.25, samples)
    overhead = rng.lognormal(np.log(4.0), 0.6, samples)
    human = rng.lognormal(np.log(9000.0), 0.4, 180)
    per_worker = {name: int(rng.integers(4000, 6000)) for name in workers}
    measured = sum(per_worker.values())
    timeline = [
        {"t_s": float(t), "messages": int(rng.poisson(60)), "phase": "warmup"}
        for t in range(0, 30, 10)
    ] + [
        {"t_s": float(t), "messages": int(rng.poisson(measured / 60)), "phase": "measure"}
        for t in range(30, 630, 10)
    ]
    return {
        "config": {
            "bots": 1000,
            "chats": 100,
            "workers": len(workers),
            "duration_s": 600.0,
            "warmup_s": 30.0,
            "llm_latency_ms": 2000.0,
            "llm_jitter_ms": 500.0,
            "human_rate_per_min": 3.0,
            "seed": seed,
            "database": "postgresql",
            "redis": True,
            "machine": {"cores": 8, "memory_gb": 15.6, "python": "3.12.3", "platform": "Linux"},
            "started_at": "2026-11-02T10:00:00+00:00",
        },
        "warmup": {"seconds": 30.0, "messages": 180, "msgs_per_min": 360.0},
        "throughput": {
            "messages": measured,
            "seconds": 600.0,
            "msgs_per_min": 1543.7,
            "target_msgs_per_min": 1500.0,
            "per_bot": {
                "mean_per_hour": 9.26,
                "max_per_hour": 18.0,
                "budget_per_hour": 20.0,
                "over_budget_bots": 0,
            },
        },
        "latency_ms": _percentiles(latency),
        "overhead_ms": _percentiles(overhead),
        "human_reply_ms": {
            "posted": 200,
            "answered": 180,
            "count": 180,
            "p50": float(np.percentile(human, 50)),
            "p95": float(np.percentile(human, 95)),
            "p99": None,
        },
        "cpu": {
            "engine_cpu_s": 93.2,
            "engine_ms_per_msg": 6.043,
            "floor_ms_per_msg": 2.517,
            "ratio": 2.4,
            "floor": {
                "llm_sdk_call": 1.2,
                "telegram_send": 0.6,
                "db_insert": 0.5,
                "redis_turn": 0.217,
                "total": 2.517,
                "samples": 500,
            },
            "per_process": {name: 30.0 + i for i, name in enumerate(workers)},
        },
        "memory": {
            "peak_rss_mb": {name: 180.0 + i for i, name in enumerate(workers)},
            "max_peak_rss_mb": 180.0 + len(workers) - 1,
        },
        "integrity": {
            "duplicates": 3,
            "duplicate_telegram_ids": 1,
            "duplicate_turn_ids": 2,
            "lost_turns": 0,
            "unrecorded_sends": 0,
            "telegram_429": 4,
            "failed_turns": 5,
            "errors": 0,
        },
        "workers": {
            "messages": per_worker,
            "max": max(per_worker.values()),
            "min": min(per_worker.values()),
        },
        "cache": {"l1_hit_rate": 0.875, "l2_hit_rate": None, "lookups": 43210},
        "db": {"queries": 98765, "queries_per_msg": 6.4},
        "targets": {
            "overhead_p99_ms": {"value": 17.25, "limit": 50.0, "ok": True},
            "cpu_ratio": {"value": 2.4, "limit": 2.0, "ok": False},
            "duplicates": {"value": 3, "limit": 0, "ok": False},
            "lost_turns": {"value": 0, "limit": 0, "ok": True},
        },
        "timeline": timeline,
        "latency_samples_ms": [float(x) for x in latency],
        "overhead_samples_ms": [float(x) for x in overhead],
    }


def _summary_text(figures: dict[str, Any], width: int = 160) -> str:
    console = Console(record=True, width=width)
    print_summary(figures, console)
    return console.export_text()


def _rows(text: str, label: str) -> list[str]:
    return [line for line in text.splitlines() if label in line]


# ------------------------------------------------------------------------------------------
# Terminal summary


def test_summary_shows_the_key_numbers() -> None:
    figures = make_figures()
    text = _summary_text(figures)
    assert "1,543.7" in text  # msgs/min
    assert "1,500.0" in text  # target msgs/min
    assert re.search(r"warm-up messages / min\s+360.0", text)
    latency_p99 = figures["latency_ms"]["p99"]
    overhead_p99 = figures["overhead_ms"]["p99"]
    assert f"{latency_p99:,.1f}" in _rows(text, "decision → Telegram answer")[0]
    overhead_row = _rows(text, "engine overhead")[0]
    assert (f"{overhead_p99:,.1f}" if overhead_p99 >= 10 else f"{overhead_p99:.2f}") in overhead_row
    assert re.search(r"duplicate messages\s+3\b", text)
    assert re.search(r"Telegram 429 responses\s+4\b", text)
    assert "2.40×" in text  # engine / floor ratio
    for name in WORKERS:
        count = figures["workers"]["messages"][name]
        assert re.search(rf"messages: {name}\s+{count:,} \(", text), name
        assert f"peak RSS: {name}" in text
    assert "87.5 %" in text  # L1 hit rate
    assert re.search(r"reply time p99\s+n/a", text)  # None → n/a
    assert re.search(r"cache L2 hit rate\s+n/a", text)


def test_summary_targets_and_verdict() -> None:
    text = _summary_text(make_figures())
    assert re.search(r"overhead_p99_ms\s+17\.25\s+50\s+✓", text)
    assert re.search(r"cpu_ratio\s+2\.4\s+2\s+✗", text)
    assert re.search(r"duplicates\s+3\s+0\s+✗", text)
    assert "2 of 4 targets missed ✗: cpu_ratio, duplicates" in text

    figures = make_figures()
    for target in figures["targets"].values():
        target["ok"] = True
    assert "all 4 targets met ✓" in _summary_text(figures)


def test_summary_tolerates_missing_optional_sections() -> None:
    figures = make_figures()
    minimal = {k: figures[k] for k in ("config", "throughput", "latency_ms")}
    del minimal["throughput"]["target_msgs_per_min"]
    text = _summary_text(minimal)
    assert "1,543.7" in text
    assert re.search(r"target messages / min\s+n/a", text)
    assert re.search(r"engine / floor\s+n/a", text)
    assert "no targets" in text
    titles = [str(t.title) for t in summary_tables(minimal)]
    assert titles == [
        "Configuration",
        "Throughput",
        "Latency (ms)",
        "Human replies",
        "CPU & memory",
        "Integrity",
        "Workers, cache & DB",
        "Targets",
    ]


def test_summary_does_not_read_names_as_markup() -> None:
    text = _summary_text(make_figures(workers=("[bold]w1[/bold]", "w2")))
    assert "messages: [bold]w1[/bold]" in text


@pytest.mark.parametrize("key", ["config", "throughput", "latency_ms"])
def test_summary_missing_required_section(key: str) -> None:
    figures = make_figures()
    del figures[key]
    with pytest.raises(ValueError, match=key):
        print_summary(figures, Console(record=True))


# ------------------------------------------------------------------------------------------
# HTML report


def _pngs(page: str) -> list[bytes]:
    encoded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [base64.b64decode(data, validate=True) for data in encoded]


def test_write_report_files(tmp_path: Path) -> None:
    figures = make_figures()
    directory = tmp_path / "reports" / "run-1"  # parents created too
    index = write_report(figures, directory)
    assert index == directory / "index.html"

    assert json.loads((directory / "figures.json").read_text(encoding="utf-8")) == figures

    page = index.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('<img src="data:image/png;base64,') == 3
    pngs = _pngs(page)
    assert len(pngs) == 3
    for png in pngs:
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(png) > 5_000  # a drawn plot, not an empty canvas
    # Self-contained: no script, no external stylesheet or image.
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(https?:)?//', page)
    # The same sections and numbers as the terminal summary.
    for title in ("Throughput", "Latency (ms)", "Human replies", "CPU &amp; memory", "Integrity"):
        assert f"<h2>{title}</h2>" in page
    assert "<td>1,543.7</td>" in page
    assert f"<td>{figures['latency_ms']['p99']:,.1f}</td>" in page
    assert "<td>2.40×</td>" in page
    assert '<tr class="fail"><td>cpu_ratio</td><td>2.4</td><td>2</td><td>✗</td></tr>' in page
    assert '<tr class="ok"><td>overhead_p99_ms</td><td>17.25</td><td>50</td><td>✓</td></tr>' in page
    for name in WORKERS:
        assert f"<td>messages: {name}</td>" in page


def test_write_report_overwrites_and_reuses_directory(tmp_path: Path) -> None:
    write_report(make_figures(seed=1), tmp_path)
    second = make_figures(seed=2)
    write_report(second, tmp_path)
    assert json.loads((tmp_path / "figures.json").read_text(encoding="utf-8")) == second


def test_write_report_escapes_text(tmp_path: Path) -> None:
    figures = make_figures(workers=("<script>x</script>", "w&1"))
    figures["config"]["machine"]["platform"] = 'Linux "<b>"'
    page = write_report(figures, tmp_path).read_text(encoding="utf-8")
    assert "<script>x</script>" not in page
    assert "<script" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert "w&amp;1" in page
    assert "Linux &quot;&lt;b&gt;&quot;" in page
    assert len(_pngs(page)) == 3


def test_write_report_without_optional_sections(tmp_path: Path) -> None:
    figures = make_figures()
    minimal = {k: figures[k] for k in ("config", "throughput", "latency_ms")}
    page = write_report(minimal, tmp_path).read_text(encoding="utf-8")
    assert len(_pngs(page)) == 3  # "no data" plots, still images
    assert "<td>n/a</td>" in page


@pytest.mark.parametrize("key", ["config", "throughput", "latency_ms"])
def test_write_report_missing_required_section(tmp_path: Path, key: str) -> None:
    figures = make_figures()
    del figures[key]
    with pytest.raises(ValueError, match=f"'{key}' is missing"):
        write_report(figures, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_write_report_section_not_a_dict(tmp_path: Path) -> None:
    figures = make_figures()
    figures["throughput"] = [1, 2]
    with pytest.raises(ValueError, match="'throughput' must be a dict"):
        write_report(figures, tmp_path)


def test_write_report_file_in_place_of_directory(tmp_path: Path) -> None:
    target = tmp_path / "report"
    target.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=re.escape(str(target))):
        write_report(make_figures(), target)
    assert target.read_text() == "not a directory"


def test_summary_shows_the_realism_of_the_run() -> None:
    from datetime import UTC, datetime, timedelta

    from behavior_engine.realism import MessageRecord, realism_report

    t0 = datetime(2026, 12, 3, tzinfo=UTC)
    clock = [MessageRecord(i, f"bot:{i % 3}", True, "bugün piyasa yine sakin görünüyor",
                           t0 + timedelta(seconds=10 * i)) for i in range(30)]
    report = realism_report({"-1": clock})
    figures = make_figures()
    figures["realism"] = {k: v for k, v in report.to_dict().items() if k != "chats"}
    titles = [str(t.title) for t in summary_tables(figures)]
    assert titles[-1] == "Realism"
    text = _summary_text(figures)
    # A 10 s clock: A_n −1 outside 0.45–0.75; every message the same: 29 of 30 repeats.
    assert re.search(r"burstiness_an\s+-1\.00\s+0\.45 – 0\.75\s+✗", text)
    assert re.search(r"exact_duplicates\s+96\.7 %\s+≤ 2\.5 %\s+✗", text)


def test_overhead_leaves_out_generation_and_the_deliberate_pauses() -> None:
    from backend.schemas import MessageMeta
    from loadtest.figures import overhead_ms

    meta = MessageMeta(latency_ms=9000.0, llm_ms=800.0, typing_ms=2500.0, pause_ms=1700.0,
                       read_ms=1200.0, due_ms=5000.0, wait_ms=100.0)
    assert overhead_ms(meta) == 300.0  # the limiter's 100 ms stay in
    # a row from before the pauses were stored: less the generation only
    assert overhead_ms(MessageMeta(latency_ms=900.0, llm_ms=800.0)) == 100.0
    assert overhead_ms(MessageMeta(latency_ms=100.0, llm_ms=800.0)) == 0.0

"""``botsim loadtest``: a short, small run whose figures must agree with its database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from backend.db.models import Message, TurnRecord
from backend.db.session import make_engine, make_sessionmaker
from backend.errors import ValidationFailed
from loadtest.runner import LoadOptions, hist_quantile, percentiles
from tests.conftest import service_missing
from tests.e2e.conftest import SmallRun

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


async def _services() -> None:
    import asyncpg
    import redis.asyncio as aioredis

    try:
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres", timeout=3)
        await conn.close()
    except Exception as exc:
        service_missing("PostgreSQL", str(exc))
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=3)
    try:
        await client.ping()
    except Exception as exc:
        service_missing("Redis", str(exc))
    finally:
        await client.aclose()


async def _check_against_database(figures: dict[str, Any]) -> None:
    kept = figures["config"]["kept"]
    engine = make_engine(kept["database_url"])
    sm = make_sessionmaker(engine)
    try:
        async with sm() as s:
            rows = (await s.execute(select(Message.bot_id, Message.meta, Message.turn_id)
                                    .where(Message.bot_id.is_not(None)))).all()
            sent_turns = dict((await s.execute(
                select(TurnRecord.worker, func.count()).where(TurnRecord.status == "sent")
                .group_by(TurnRecord.worker))).all())
            humans = (await s.execute(select(func.count()).where(
                Message.bot_id.is_(None)))).scalar_one()
    finally:
        await engine.dispose()
    window = figures["throughput"]["window"]
    start, end = (datetime.fromisoformat(window[k]) for k in ("start", "end"))
    in_window = [m for _, m, _ in rows if m.sent_at is not None and start <= m.sent_at < end]
    # the measured messages are the stored ones Telegram answered within the window
    assert len(in_window) == figures["throughput"]["messages"]
    assert figures["throughput"]["messages"] > 0
    assert figures["latency_ms"]["count"] == figures["throughput"]["messages"]
    # every stored bot message is one sent turn, counted once per worker
    assert sum(sent_turns.values()) == len(rows) == sum(figures["workers"]["messages"].values())
    assert len({t for _, _, t in rows}) == len(rows)
    assert figures["integrity"]["duplicates"] == 0
    assert figures["integrity"]["lost_turns"] == 0 and figures["integrity"]["drained"]
    assert figures["integrity"]["unrecorded_sends"] == 0
    assert figures["human_reply_ms"]["posted"] <= humans
    lat = [m.latency_ms for m in in_window]
    assert max(lat) == pytest.approx(figures["latency_ms"]["max"], abs=0.1)
    # the LLM's time is inside each latency, and the overhead is what is left
    assert all(m.llm_ms is not None and 0 <= m.llm_ms <= m.latency_ms for m in in_window)
    assert figures["latency_ms"]["p50"] >= 150  # the sandbox LLM answers in 200 ± 50 ms
    assert figures["overhead_ms"]["p99"] < figures["latency_ms"]["p99"]
    cpu = figures["cpu"]
    assert cpu["floor_ms_per_msg"] == pytest.approx(sum(
        cpu["floor"][k] for k in ("llm_sdk_call", "telegram_send", "db_insert", "redis_turn")),
        abs=0.01)
    assert cpu["ratio"] == pytest.approx(cpu["engine_ms_per_msg"] / cpu["floor_ms_per_msg"],
                                         rel=0.01)
    assert set(figures["memory"]["peak_rss_mb"]) == {"listener", "worker-1", "worker-2"}
    assert figures["db"]["queries_per_msg"] > 0
    assert 0 < figures["cache"]["l1_hit_rate"] <= 1


@pytest.mark.xdist_group("processes")  # with the other process-heavy tests (test_sharded)
async def test_a_small_run_agrees_with_its_database(small_run: SmallRun) -> None:
    figures = small_run.figures  # the session's run (tests/e2e/conftest.py), kept
    await _check_against_database(figures)
    assert figures["config"]["database"] == "postgresql" and figures["config"]["redis"]
    assert figures["human_reply_ms"]["posted"] >= 1


@pytest.mark.parametrize(("change", "named"), [
    ({"bots": 0}, "--bots"), ({"chats": 20}, "--chats"), ({"workers": 0}, "--workers"),
    ({"duration_s": float("nan")}, "--duration"), ({"warmup_s": 60}, "--warmup"),
    ({"llm_latency_ms": -1}, "--llm-latency-ms"), ({"llm_jitter_ms": 900}, "--llm-jitter-ms"),
    ({"human_rate_per_min": -2}, "--human-rate"), ({"msgs_per_hour": 0}, "--msgs-per-hour"),
    ({"in_flight": 0}, "--in-flight"),
    ({"database_url": "postgresql://postgres@db.example.com/postgres"}, "--database-url"),
    ({"redis_url": "redis://10.0.0.5:6379/0"}, "--redis-url"),
    ({"database_url": "mysql://127.0.0.1/x"}, "--database-url"),
    ({"profile_path": Path("/nonexistent-dir/profile.svg")}, "--profile"),
    ({"profile_path": Path("/tmp")}, "--profile"),
])
def test_bad_options_are_refused_by_name(change: dict[str, Any], named: str) -> None:
    base: dict[str, Any] = {"bots": 10, "chats": 2, "workers": 2, "duration_s": 30,
                            "llm_latency_ms": 800, "llm_jitter_ms": 400}
    with pytest.raises(ValidationFailed) as err:
        LoadOptions(**{**base, **change}).validate()
    assert named in str(err.value)


def test_cli_refuses_bad_input_before_starting_anything(tmp_path: Path) -> None:
    env = {**os.environ, "BOTSIM_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "botsim", "loadtest", "--bots", "5", "--chats", "9",
         "--workers", "1", "--duration", "10", "--llm-latency-ms", "100", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--chats" in done.stderr and done.stdout == ""


def test_percentiles_and_histogram_quantiles() -> None:
    p = percentiles([float(i) for i in range(1, 101)])
    assert (p["count"], p["p50"], p["p99"], p["max"]) == (100, 50.5, 99.0, 100.0)
    assert percentiles([])["p95"] is None
    samples = {("h_bucket", (("le", "0.1"),)): 50.0, ("h_bucket", (("le", "0.2"),)): 100.0,
               ("h_bucket", (("le", "+Inf"),)): 100.0}
    assert hist_quantile(samples, "h", 0.5) == pytest.approx(0.1)
    assert hist_quantile(samples, "h", 0.75) == pytest.approx(0.15)
    assert hist_quantile({}, "h", 0.5) is None


# Not in the "processes" group: one worker on SQLite, light on the cores, and its figures are
# checked for their shape only; beside the group it keeps the suite's longest chain short.
def test_json_line_is_last(tmp_path: Path) -> None:
    """The JSON summary is one object on the last line (a one-worker SQLite run)."""
    env = {**os.environ, "BOTSIM_DATA_DIR": str(tmp_path)}
    env.pop("BOTSIM_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "botsim", "loadtest", "--bots", "6", "--chats", "2",
         "--workers", "1", "--duration", "10", "--warmup", "2", "--llm-latency-ms", "100",
         "--msgs-per-hour", "600", "--floor-samples", "10", "--no-progress", "--json",
         "--report", str(tmp_path / "report"), "--profile", str(tmp_path / "worker.svg")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["config"]["database"] == "sqlite" and not figures["config"]["redis"]
    assert figures["integrity"]["duplicates"] == 0 and figures["integrity"]["lost_turns"] == 0
    assert figures["throughput"]["messages"] > 0 and "latency_samples_ms" not in figures
    assert figures["cpu"]["floor"]["redis_turn"] == 0.0
    # botsim realism over the measured window: the report's metrics and what it counted.
    realism = figures["realism"]
    assert realism["counts"]["chats"] >= 1 and realism["counts"]["bot_messages"] > 0
    assert realism["metrics"][0]["name"] == "burstiness_an"
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "<h2>Realism</h2>" in page
    saved = json.loads((tmp_path / "report" / "figures.json").read_text())
    assert saved["throughput"] == figures["throughput"]
    # --profile: py-spy's flame graph of worker-1 over the measured window (make profile)
    assert figures["config"]["profile_path"] == str(tmp_path / "worker.svg")
    flame = (tmp_path / "worker.svg").read_text()
    assert flame.startswith("<?xml") and "<svg" in flame
    assert "Wrote flamegraph data" in (tmp_path / "worker.svg.log").read_text()

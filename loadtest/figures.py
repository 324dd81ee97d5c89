"""The figures of a load-test run: from the database, the workers' ``/metrics``, ``/proc``
and the sandbox's counters (:func:`compute_figures` documents each one), and the targets.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.schemas import MessageMeta
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import figures as figures_store
from backend.stores import settings as settings_store
from backend.stores import turns as turn_store
from behavior_engine.realism import realism_report
from behavior_engine.realism_run import load_chats
from behavior_engine.scheduler import ChatView, Scheduler
from loadtest.options import LoadOptions
from loadtest.world import World

#: Width of the timeline's buckets, seconds.
BUCKET_S = 10.0


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    """Every sample of a Prometheus text page: (name, sorted labels) → value; {} when the
    page does not answer."""
    try:
        r = await client.get(url)
    except httpx.HTTPError:
        return {}
    if not r.is_success:
        return {}
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def hist_quantile(samples: Samples, name: str, q: float) -> float | None:
    """Quantile ``q`` of a Prometheus histogram (linear within the bucket, as
    ``histogram_quantile`` does), seconds; None without observations."""
    buckets: dict[float, float] = defaultdict(float)
    for (n, lab), v in samples.items():
        if n == f"{name}_bucket":
            le = dict(lab)["le"]
            buckets[math.inf if le == "+Inf" else float(le)] += v
    if not buckets or buckets.get(math.inf, 0) <= 0:
        return None
    edges = sorted(buckets)
    rank = q * buckets[math.inf]
    prev_edge, prev_count = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if math.isinf(edge):
                return prev_edge
            span = count - prev_count
            return prev_edge + (edge - prev_edge) * ((rank - prev_count) / span if span else 1)
        prev_edge, prev_count = edge, count
    return prev_edge


def percentiles(values: Sequence[float]) -> dict[str, Any]:
    """``count``, ``p50``, ``p95``, ``p99``, ``max`` of ``values`` (ms, rounded to 0.1);
    None for each when there are none."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=float)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"count": int(a.size), "p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(float(a.max()), 1)}


@dataclass
class Posted:
    """A human message the load test posted: its group, Telegram id and when (UTC)."""

    telegram_chat_id: int
    telegram_message_id: int
    at: datetime


@dataclass
class Snapshot:
    """The counters at one moment: engine processes' CPU, each worker's metrics and the
    sandbox's counters."""

    at: datetime
    cpu: dict[str, float]
    metrics: dict[str, Samples]
    sandbox: dict[str, Any]


@dataclass
class RunState:
    """What the run collects as it goes (for the figures and the live display)."""

    posted: list[Posted] = field(default_factory=list)
    post_errors: int = 0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    sent_history: list[tuple[float, int]] = field(default_factory=list)
    p95_ms: float | None = None
    errors: int = 0
    phase: str = "starting"


def _delta(a: Snapshot, b: Snapshot, name: str, **labels: str) -> dict[str, float]:
    """Per worker: ``name`` at ``b`` less at ``a``."""
    return {w: total(b.metrics.get(w, {}), name, **labels) - total(a.metrics.get(w, {}),
                                                                   name, **labels)
            for w in b.metrics}


def overhead_ms(meta: MessageMeta) -> float:
    """A sent message's engine overhead, ms: its latency less the text generation
    (regenerations the guards asked for included) and the deliberate pauses (reading,
    typing after the text was ready, the rhythm's due time: ``MessageMeta``'s ``llm_ms``,
    ``read_ms``, ``pause_ms``, ``due_ms``), as the workers'
    ``botsim_turn_overhead_seconds`` (``behavior_engine.pipeline.Timing.overhead_s``).
    Rows stored before those fields existed: less ``llm_ms`` only."""
    paused = (meta.read_ms or 0.0) + (meta.pause_ms or 0.0) + (meta.due_ms or 0.0)
    return max((meta.latency_ms or 0.0) - (meta.llm_ms or 0.0) - paused, 0.0)


def _by_label(a: Snapshot, b: Snapshot, name: str, label: str) -> dict[str, float]:
    """``name``'s growth from ``a`` to ``b`` per value of ``label``, all processes summed,
    largest first."""
    out: dict[str, float] = defaultdict(float)
    for proc, samples in b.metrics.items():
        before = a.metrics.get(proc, {})
        for (n, lab), v in samples.items():
            if n == name:
                value = dict(lab).get(label, "")
                out[value] += v - before.get((n, lab), 0.0)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den > 0 else None


def _sandbox_sent(snapshot: Snapshot) -> int:
    return sum(int(v) for v in snapshot.sandbox.get("sent", {}).values())


async def compute_figures(
    opts: LoadOptions, sm: async_sessionmaker[AsyncSession], world: World, state: RunState,
    *, floor: dict[str, Any], run_start: Snapshot, measure_start: Snapshot,
    measure_end: Snapshot, final: Snapshot, peaks: dict[str, float], drained: bool,
    database: str, redis: bool, kept: dict[str, str] | None,
) -> dict[str, Any]:
    """The figures of a run (the shape :mod:`loadtest.report` renders).

    * ``throughput``: bot messages whose send Telegram answered (``meta.sent_at``) within
      the measured window, per minute; ``per_bot``: each bot's messages over the run
      against its hourly budget (``over_budget_bots``: bots that sent more than the budget
      in the run, which is shorter than an hour, or more than budget × hours).
    * ``latency_ms``: the sent turns' ``meta.latency_ms`` (decision → Telegram's answer);
      ``overhead_ms``: the engine's own part (:func:`overhead_ms`, limiter waits included);
      ``wait_ms``: the limiter waits alone.
    * ``human_reply_ms``: from posting a human message to the ``sent_at`` of the first bot
      message replying to it, for those posted in the measured window.
    * ``cpu``: CPU seconds of the engine processes (workers and listener, from ``/proc``)
      in the window, per message delivered in it; the floor and the ratio.
    * ``integrity``: duplicates (stored rows sharing a (chat, Telegram id) or a turn id),
      ``lost_turns`` (decided by a worker but never ended, from its counters after the
      drain, plus turns left at ``intent``), ``unrecorded_sends`` (messages the sandbox
      accepted from our bots but the database does not hold), 429s from the sandbox.
    * ``workers``: messages per worker (``turns.worker``); ``cache`` and ``db``: from the
      workers' and listener's counters over the window.
    * ``overload``: the workers' ticks in the window that shed chatter
      (``botsim_overloaded_ticks_total``: the event loop lagged over ``worker.SHED_LAG_S``,
      or the room nearly full) and the chatter shed: non-zero means the run passed the
      engine's overload point, and its throughput is that point.
    * ``realism``: ``botsim realism`` over the measured window (every chat; the report's
      ``metrics``, ``counts`` and ``failed``; None when no message was stored in it).
    * ``rhythm``: the spontaneous messages the chats' rhythm planned in the window
      (:meth:`~behavior_engine.scheduler.Scheduler.planned`, the same whatever the
      workers) and the share of them sent: the figure to compare across worker counts, as
      the plan itself differs from one window to the next.
    """
    window_s = (measure_end.at - measure_start.at).total_seconds()
    async with sm() as s:
        rows = await figures_store.bot_messages(s)
        dup_tg, dup_turn = await figures_store.duplicate_groups(s)
        statuses = await turn_store.status_counts(s)
        per_worker = await figures_store.sent_per_worker(s)
        tg_to_bot = {tg: b for b, tg in (await bot_store.telegram_user_ids(s)).items()
                     if tg is not None}
        tg_of = await chat_store.telegram_chat_ids(s)
        sim = await settings_store.get_settings(s)
        chats = await chat_store.enabled_chats_with_bots(s)
        talk = {b.id: b.persona.talkativeness for b in await bot_store.list_bots(s)}
    t0, t1 = measure_start.at, measure_end.at
    planner = Scheduler(seed=opts.seed)
    planned = sum(len(planner.planned(
        ChatView(chat_id=c.id, telegram_chat_id=c.telegram_chat_id, topics={},
                 sent_last_minute=0, recent=(), members={b: talk[b] for b in ids}),
        sim, t0, t1)) for c, ids in chats if ids)
    lat, over, wait, timeline_at = [], [], [], []
    per_bot: Counter[int] = Counter()
    in_window = 0
    first_reply: dict[tuple[int, int], datetime] = {}
    for _id, bot_id, chat_id, meta, reply_to in rows:
        sent_at = meta.sent_at
        per_bot[int(bot_id or 0)] += 1
        if sent_at is None:
            continue
        timeline_at.append(sent_at)
        if reply_to is not None:
            key = (tg_of[int(chat_id)], int(reply_to))
            if key not in first_reply or sent_at < first_reply[key]:
                first_reply[key] = sent_at
        if t0 <= sent_at < t1:
            in_window += 1
            if meta.latency_ms is not None:
                lat.append(meta.latency_ms)
                over.append(overhead_ms(meta))
                wait.append(meta.wait_ms or 0.0)
    human_ms = []
    posted_in_window = [p for p in state.posted if t0 <= p.at < t1]
    for p in posted_in_window:
        got = first_reply.get((p.telegram_chat_id, p.telegram_message_id))
        if got is not None:
            human_ms.append((got - p.at).total_seconds() * 1000)

    run_s = (measure_end.at - run_start.at).total_seconds()
    hours = max(run_s / 3600, 1e-9)
    budget_cap = opts.msgs_per_hour * max(1.0, math.ceil(hours))
    rates = [per_bot.get(b, 0) / hours for b in range(1, opts.bots + 1)]
    worker_names = sorted(w for w in final.metrics if w.startswith("worker"))
    decided = _delta(run_start, final, "botsim_turns_decided_total")
    ended = _delta(run_start, final, "botsim_turns_total")
    lost_counted = sum(max(0.0, decided[w] - ended[w]) for w in worker_names)
    lost = int(lost_counted) + int(statuses.get("intent", 0))
    db_ids = Counter(int(b) for b in per_bot.elements())
    sandbox_sent = {int(k): int(v) for k, v in final.sandbox.get("sent", {}).items()}
    unrecorded = sum(max(0, n - db_ids.get(tg_to_bot.get(tg, -1), 0))
                     for tg, n in sandbox_sent.items())
    engine_names = list(measure_start.cpu)
    cpu_s = sum(measure_end.cpu.get(n, 0) - measure_start.cpu.get(n, 0) for n in engine_names)
    engine_ms = 1000 * cpu_s / in_window if in_window else None
    q = _delta(measure_start, measure_end, "botsim_db_queries_total")
    queries = sum(q.values())
    kinds = _by_label(measure_start, measure_end, "botsim_db_queries_total", "statement")
    worker_queries = sum(v for w, v in q.items() if w.startswith("worker"))
    l1 = {r: sum(_delta(measure_start, measure_end, "botsim_cache_requests_total",
                        layer="l1", result=r).values()) for r in ("hit", "miss")}
    l2 = {r: sum(_delta(measure_start, measure_end, "botsim_cache_requests_total",
                        layer="l2", result=r).values()) for r in ("hit", "miss")}
    named = {}
    for name in worker_names:  # turns.worker holds the worker id, which starts with its name
        named[name] = sum(n for w, n in per_worker.items() if w.startswith(f"{name}-")
                          or w == name)
    tl_start = run_start.at
    buckets: Counter[int] = Counter(int((t - tl_start).total_seconds() // BUCKET_S)
                                    for t in timeline_at if t >= tl_start)
    n_buckets = math.ceil((measure_end.at - tl_start).total_seconds() / BUCKET_S)
    timeline = [{"t_s": i * BUCKET_S, "messages": buckets.get(i, 0),
                 "phase": "warmup" if i * BUCKET_S < opts.warmup else "measure"}
                for i in range(n_buckets)]
    warm_msgs = sum(1 for t in timeline_at if run_start.at <= t < t0)
    warm_s = (t0 - run_start.at).total_seconds()
    target = opts.bots * opts.msgs_per_hour / 60
    floor_ms = float(floor.get("total", 0.0))
    ratio = _ratio(engine_ms, floor_ms) if engine_ms is not None else None
    latency = percentiles(lat)
    overhead = percentiles(over)
    figures: dict[str, Any] = {
        "config": {
            "bots": opts.bots, "chats": opts.chats, "workers": opts.workers,
            "duration_s": opts.duration_s, "warmup_s": opts.warmup,
            "llm_latency_ms": opts.llm_latency_ms, "llm_jitter_ms": opts.llm_jitter_ms,
            "human_rate_per_min": opts.human_rate_per_min,
            "msgs_per_hour": opts.msgs_per_hour, "seed": opts.seed,
            "in_flight": opts.in_flight, "database": database, "redis": redis,
            "machine": machine(), "started_at": run_start.at.isoformat(timespec="seconds"),
            "kept": kept,
            "profile_path": str(opts.profile_path) if opts.profile_path else None,
        },
        "warmup": {"seconds": round(warm_s, 1), "messages": warm_msgs,
                   "msgs_per_min": round(warm_msgs / warm_s * 60, 1) if warm_s > 0 else None},
        "throughput": {
            "messages": in_window, "seconds": round(window_s, 1),
            "window": {"start": t0.isoformat(), "end": t1.isoformat()},
            "msgs_per_min": round(in_window / window_s * 60, 1) if window_s > 0 else None,
            "target_msgs_per_min": round(target, 1),
            "per_bot": {"mean_per_hour": round(float(np.mean(rates)), 2),
                        "max_per_hour": round(float(np.max(rates)), 2),
                        "budget_per_hour": opts.msgs_per_hour,
                        "over_budget_bots": sum(1 for n in per_bot.values()
                                                if n > budget_cap)},
        },
        "latency_ms": latency,
        "overhead_ms": overhead,
        "wait_ms": percentiles(wait),
        "human_reply_ms": {"posted": len(posted_in_window), "answered": len(human_ms),
                           "post_errors": state.post_errors, **percentiles(human_ms)},
        "cpu": {
            "engine_cpu_s": round(cpu_s, 2),
            "engine_ms_per_msg": round(engine_ms, 3) if engine_ms is not None else None,
            "floor_ms_per_msg": round(floor_ms, 3), "ratio": ratio, "floor": floor,
            "per_process": {n: round(measure_end.cpu.get(n, 0) - measure_start.cpu.get(n, 0),
                                     2) for n in engine_names},
        },
        "memory": {"peak_rss_mb": peaks,
                   "max_peak_rss_mb": max((v for k, v in peaks.items()
                                           if k.startswith("worker")), default=None)},
        "integrity": {
            "duplicates": int(dup_tg) + int(dup_turn), "duplicate_telegram_ids": int(dup_tg),
            "duplicate_turn_ids": int(dup_turn), "lost_turns": lost,
            "drained": drained, "unrecorded_sends": unrecorded,
            "telegram_429": int(final.sandbox.get("too_many_requests", 0)),
            "failed_turns": int(statuses.get("failed", 0)),
            "unknown_turns": int(statuses.get("unknown", 0)),
            "errors": int(sum(_delta(run_start, final, "botsim_turns_total",
                                     outcome="failed").values())),
            "turn_statuses": {str(k): int(v) for k, v in statuses.items()},
        },
        "workers": {"messages": named, "max": max(named.values(), default=0),
                    "min": min(named.values(), default=0)},
        "cache": {"l1_hit_rate": _ratio(l1["hit"], l1["hit"] + l1["miss"]),
                  "l2_hit_rate": _ratio(l2["hit"], l2["hit"] + l2["miss"]),
                  "lookups": int(l1["hit"] + l1["miss"])},
        "db": {"queries": int(queries), "queries_per_msg": _ratio(queries, in_window),
               "worker_queries_per_msg": _ratio(worker_queries, in_window),
               "per_msg_by_statement": {k: _ratio(v, in_window) for k, v in
                                        kinds.items() if v > 0}},
        "timeline": timeline,
        "overload": {
            "overloaded_ticks": int(sum(_delta(measure_start, measure_end,
                                               "botsim_overloaded_ticks_total").values())),
            "chatter_shed": int(sum(_delta(measure_start, measure_end,
                                           "botsim_chatter_shed_total").values()))},
        "rhythm": {"planned": planned,
                   "planned_per_min": round(planned / window_s * 60, 1) if window_s > 0
                   else None,
                   "sent_share": _ratio(in_window - len(human_ms), planned)},
        "latency_samples_ms": [round(x, 2) for x in lat],
        "overhead_samples_ms": [round(x, 2) for x in over],
    }
    figures["targets"] = targets(figures)
    figures["realism"] = await realism_figures(sm, since=t0, until=t1)
    return figures


async def realism_figures(sm: async_sessionmaker[AsyncSession], *, since: datetime,
                          until: datetime) -> dict[str, Any] | None:
    """The realism report of every chat over [``since``, ``until``) (stored ``created_at``):
    ``metrics`` over all chats, ``counts``, ``failed`` (:mod:`behavior_engine.realism`); the
    classifier runs in a thread. None when nothing was stored in the window."""
    async with sm() as s:
        chats, members = await load_chats(s, since=since, until=until)
    if not chats:
        return None
    report = await asyncio.to_thread(realism_report, chats, bots_per_chat=members)
    return {k: v for k, v in report.to_dict().items() if k != "chats"}


def targets(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 7's targets: 0 duplicates, 0 lost turns, engine overhead p99 ≤ 250 ms, engine
    CPU per message ≤ 1.5 × the floor (and no bot over its budget)."""
    def row(value: float | None, limit: float) -> dict[str, Any]:
        return {"value": value, "limit": limit, "ok": value is not None and value <= limit}

    integ = figures["integrity"]
    return {
        "duplicates": row(integ["duplicates"], 0),
        "lost_turns": row(integ["lost_turns"] + integ["unrecorded_sends"], 0),
        "overhead_p99_ms": row(figures["overhead_ms"]["p99"], 250.0),
        "cpu_ratio": row(figures["cpu"]["ratio"], 1.5),
        "over_budget_bots": row(figures["throughput"]["per_bot"]["over_budget_bots"], 0),
    }


def machine() -> dict[str, Any]:
    """This machine: cores, memory (GiB), Python and platform."""
    return {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30,
                                                        1),
            "python": platform.python_version(), "platform": platform.platform()}


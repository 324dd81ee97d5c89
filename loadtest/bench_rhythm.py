"""A scheduler-only simulation of a few chats over hours: the rhythm a group would see.

No I/O: a fake clock steps one tick at a time, the
:class:`~behavior_engine.scheduler.Scheduler` decides (skipping chats idle until later, as
the worker's planner does), and each turn is "sent" at its due time
(``Turn.not_before``), or a slot lead after its decision when that is later (the bot
reads, writes and types first), and appended to the chat's history. A bot is busy from its
turn's decision to its send, in every chat it is in (``BotView.busy_until``, as the
worker's planner gives it). The personas' talkativeness
comes from :func:`loadtest.world.generate_personas` (the load test's world), the settings
are the production defaults (:class:`~backend.schemas.SimulationSettings`) unless given.

It prints, per chat and over all chats, the figures of ``../shared/REALISM.md`` that
timing and participation decide: the burstiness A_n of the gaps (Kim & Jo, PRE 2016), gap
p90 ÷ median, the Gini of messages per bot, the share of same-speaker pairs, messages per
hour against the chat's budget ceiling, and the largest count of any bot in any rolling
hour against its budget at that time::

    python -m loadtest.bench_rhythm --hours 12 --chats 6 --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from backend.schemas import SimulationSettings
from behavior_engine.rhythm import slot_lead
from behavior_engine.scheduler import BotView, ChatView, Scheduler
from behavior_engine.turn import ChatLine
from loadtest.world import generate_personas

#: The simulation's start: a Monday 00:00 UTC (03:00 in Istanbul).
START = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)
HISTORY = 20


@dataclass
class SimChat:
    """One simulated chat: its bots (id → talkativeness) and what was sent there."""

    chat_id: int
    members: dict[int, float]
    lines: list[ChatLine] = field(default_factory=list)


@dataclass
class RhythmRun:
    """What a simulation produced.

    Attributes:
        chats: the chats and their messages.
        sends: bot id → its send times, oldest first.
        over_budget: (bot id, time, count in the rolling hour, budget then) of every send
            above the bot's budget (empty when the budget held).
        max_budget_ratio: the largest (rolling-hour count ÷ budget at that send).
        hours: simulated hours; ceiling_per_hour: Σ of the budgets at the start.
    """

    chats: list[SimChat]
    sends: dict[int, list[datetime]]
    over_budget: list[tuple[int, datetime, int, float]]
    max_budget_ratio: float
    hours: float
    ceiling_per_hour: float


def simulate(*, hours: float = 12.0, chats: int = 4, seed: int = 7,
             settings: SimulationSettings | None = None, start: datetime = START,
             sizes: Sequence[int] = (4, 6, 8, 5), tick_s: float = 1.0,
             cast: Sequence[float] | None = None,
             groups: Sequence[Mapping[int, float]] | None = None) -> RhythmRun:
    """Run ``chats`` chats (of ``sizes`` bots, cycled) for ``hours`` on a fake clock.

    Args:
        hours: simulated time, hours.
        chats: number of chats.
        seed: the scheduler's and the personas' seed.
        settings: the simulation settings (default: production defaults).
        start: aware UTC start time.
        sizes: bots per chat, cycled over the chats.
        tick_s: the fake worker's tick, seconds.
        cast: the talkativeness of every chat's bots (each chat then has ``len(cast)``
            bots, e.g. the four demo personas'); None: the load test's generated personas.
        groups: each chat's members, bot id → talkativeness there, a bot may be in several
            (the demo's groups); overrides ``chats``, ``sizes`` and ``cast``.
    """
    sim = settings or SimulationSettings()
    if groups is not None:
        chats = len(groups)
    if cast is not None:
        sizes = (len(cast),)
    n_bots = sum(sizes[i % len(sizes)] for i in range(chats))
    personas = generate_personas(n_bots, seed=seed)
    sched = Scheduler(seed=seed, lookahead_s=tick_s)
    sim_chats: list[SimChat] = []
    next_bot = 1
    for c in range(chats):
        if groups is not None:
            sim_chats.append(SimChat(chat_id=c + 1, members=dict(groups[c])))
            continue
        size = sizes[c % len(sizes)]
        members = {next_bot + i: (cast[i] if cast is not None
                                  else personas[next_bot + i - 1].talkativeness)
                   for i in range(size)}
        next_bot += size
        sim_chats.append(SimChat(chat_id=c + 1, members=members))
    sends: dict[int, list[datetime]] = {b: [] for c in sim_chats for b in c.members}
    recent_sends: dict[int, deque[datetime]] = {b: deque() for b in sends}
    over: list[tuple[int, datetime, int, float]] = []
    worst = 0.0
    end = start + timedelta(hours=hours)
    now = start
    step = timedelta(seconds=tick_s)
    lead = slot_lead(sim)
    running: dict[int, tuple[datetime, datetime]] = {}  # bot → (due, send) of its turn
    msg_id = 0
    while now < end:
        for b in [b for b, (_, at) in running.items() if at <= now]:
            del running[b]
        for chat in sim_chats:
            if sched.idle_until(chat.chat_id, now) is not None:
                continue
            for q in recent_sends.values():
                while q and q[0] <= now - timedelta(hours=1):
                    q.popleft()
            view = ChatView(
                chat_id=chat.chat_id, telegram_chat_id=-chat.chat_id, topics={"usdtry": 1.0},
                sent_last_minute=sum(1 for m in chat.lines[-60:] if m.created_at is not None
                                     and m.created_at > now - timedelta(minutes=1)),
                recent=chat.lines[-HISTORY:], members=chat.members)
            bots = [BotView(bot_id=b, name=f"Bot{b}", username=f"bot{b}_bot",
                            talkativeness=t, topics={"usdtry": 1.0},
                            sent_last_hour=len(recent_sends[b]),
                            busy_until=running[b][0] if b in running else None)
                    for b, t in chat.members.items()]
            for turn in sched.decide(view, bots, sim, now):
                due = turn.not_before or now
                at = max(due, now + lead)  # decided late: read, written and typed first
                running[turn.bot_id] = (due, at)
                msg_id += 1
                chat.lines.append(ChatLine(telegram_message_id=msg_id, speaker=f"Bot{turn.bot_id}",
                                           speaker_username=None, is_human=False, text="",
                                           bot_id=turn.bot_id, created_at=at))
                sends[turn.bot_id].append(at)
                q = recent_sends[turn.bot_id]
                q.append(at)
                count = sum(1 for t in q if t > at - timedelta(hours=1))
                limit = sched.hourly_limit(turn.bot_id, sim, at)
                worst = max(worst, count / limit)
                if count > limit:
                    over.append((turn.bot_id, at, count, limit))
        now += step
    ceiling = sum(sched.hourly_limit(b, sim, start)
                  for b in {b for c in sim_chats for b in c.members})
    return RhythmRun(chats=sim_chats, sends=sends, over_budget=over, max_budget_ratio=worst,
                     hours=hours, ceiling_per_hour=ceiling)


def demo_cast() -> list[float]:
    """The talkativeness of the four demo personas (``bots/personas/*.yaml``)."""
    from bots.personas import load_persona_dir

    return [p.talkativeness for p in load_persona_dir()]


def demo_windows(count: int, *, minutes: float = 10.0) -> dict[str, Any]:
    """The demo world's rhythm over ``count`` windows of ``minutes`` (issue 14's ten-minute
    demo, scheduler only): the demo's groups (:data:`bots.demo_world.DEMO_CHATS`: the four
    personas in each, with each group's talkativeness, a bot busy in one group until its
    line there is sent), its settings and tick, starting 37 minutes apart from 09:00
    Istanbul time with seeds 1..count.

    No human messages and no Telegram waits: each turn is sent at its due time (or a slot
    lead after its decision, when later), so the live demo's figures (``botsim realism``
    over ``botsim demo``) scatter around these. Returns ``windows`` (per window: the mean
    A_n, gap p90 ÷ median, Gini and same-speaker share over the groups, and the messages),
    and for each figure its median, 10th percentile and the count of windows inside
    REALISM.md's band.
    """
    from bots.demo_world import DEMO_CHATS, DEMO_SETTINGS, DEMO_TICK_S

    settings = SimulationSettings.model_validate(DEMO_SETTINGS)
    names = sorted({u for c in DEMO_CHATS for u in c.talkativeness})
    groups = [{names.index(u) + 1: t for u, t in c.talkativeness.items()} for c in DEMO_CHATS]
    rows: list[dict[str, Any]] = []
    for i in range(count):
        start = START + timedelta(minutes=37 * i)
        out = figures(simulate(hours=minutes / 60, seed=1 + i, settings=settings,
                               start=start, tick_s=DEMO_TICK_S, groups=groups))
        rows.append({**{k: out["mean"][k] for k in ("A_n", "p90_over_median", "gini",
                                                     "same_speaker")},
                     "messages": sum(c["messages"] for c in out["chats"])})
    bands = {"A_n": (0.45, 0.75), "p90_over_median": (15.0, math.inf), "gini": (0.45, 0.8),
             "same_speaker": (0.10, 0.45)}
    summary: dict[str, Any] = {"windows": rows}
    for key, (lo, hi) in bands.items():
        vals = [r[key] for r in rows if r[key] is not None]
        summary[key] = {"median": round(statistics.median(vals), 3),
                        "p10": round(_quantile(vals, 0.1), 3),
                        "in_band": sum(lo <= v <= hi for v in vals)}
    summary["all_in_band"] = sum(all(bands[k][0] <= (r[k] or -1) <= bands[k][1]
                                     for k in bands) for r in rows)
    summary["messages"] = {"median": statistics.median(r["messages"] for r in rows),
                           "min": min(r["messages"] for r in rows)}
    return summary


def burstiness(gaps: Sequence[float]) -> float:
    """Kim & Jo's finite-size burstiness A_n of ``gaps`` (PRE 93, 032302, 2016):
    ``(√(n+1)·r − √(n−1)) / ((√(n+1) − 2)·r + √(n−1))``, r = σ/μ, n = number of gaps.
    1 = extremely bursty, 0 = Poisson, −1 = a clock."""
    n = len(gaps)
    if n < 2:
        return float("nan")
    mu = statistics.fmean(gaps)
    r = statistics.pstdev(gaps) / mu if mu > 0 else 0.0
    a, b = math.sqrt(n + 1), math.sqrt(n - 1)
    return (a * r - b) / ((a - 2) * r + b)


def gini(counts: Sequence[int]) -> float:
    """Gini of ``counts`` (mean absolute difference ÷ twice the mean); for K speakers at
    most (K − 1)/K."""
    n = len(counts)
    total = sum(counts)
    if n == 0 or total == 0:
        return 0.0
    diff = sum(abs(x - y) for x in counts for y in counts)
    return diff / (2 * n * total)


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def figures(run: RhythmRun) -> dict[str, Any]:
    """The run's figures: per chat and their means (module docstring)."""
    per_chat: list[dict[str, Any]] = []
    for chat in run.chats:
        times = [m.created_at for m in chat.lines if m.created_at is not None]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        counts = [sum(1 for m in chat.lines if m.bot_id == b) for b in chat.members]
        same = sum(1 for a, b in itertools.pairwise(chat.lines)
                   if a.bot_id == b.bot_id)
        median = _quantile(gaps, 0.5) if gaps else float("nan")
        per_chat.append({
            "chat": chat.chat_id, "bots": len(chat.members), "messages": len(chat.lines),
            "A_n": round(burstiness(gaps), 3),
            "p90_over_median": round(_quantile(gaps, 0.9) / median, 1) if gaps else None,
            "gap_median_s": round(median, 1),
            "gini": round(gini(counts), 3),
            "same_speaker": round(same / max(1, len(chat.lines) - 1), 3),
            "msgs_per_hour": round(len(chat.lines) / run.hours, 1),
        })
    keys = ("A_n", "p90_over_median", "gini", "same_speaker", "msgs_per_hour")
    mean = {k: round(statistics.fmean(vals), 3) if (vals := [
        c[k] for c in per_chat if c[k] is not None and not math.isnan(c[k])]) else None
        for k in keys}
    total = sum(len(c.lines) for c in run.chats)
    return {
        "hours": run.hours, "chats": per_chat, "mean": mean,
        "msgs_per_hour": round(total / run.hours, 1),
        "ceiling_per_hour": round(run.ceiling_per_hour, 1),
        "max_rolling_hour_over_budget": round(run.max_budget_ratio, 3),
        "sends_over_budget": len(run.over_budget),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.bench_rhythm``: print the figures (a table, or ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=12.0)
    parser.add_argument("--chats", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--demo-cast", action="store_true",
                        help="chats of the four demo personas (bots/personas/*.yaml)")
    parser.add_argument("--demo-windows", type=int, default=0, metavar="N",
                        help="instead: N ten-minute windows of the demo world (demo_windows)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.demo_windows:
        demo = demo_windows(args.demo_windows)
        if args.json:
            print(json.dumps(demo))
            return 0
        n = args.demo_windows
        for key in ("A_n", "p90_over_median", "gini", "same_speaker"):
            d = demo[key]
            print(f"{key:16} median {d['median']:>7} p10 {d['p10']:>7} in band {d['in_band']}/{n}")
        print(f"all four in band: {demo['all_in_band']}/{n}; messages per window: median "
              f"{demo['messages']['median']}, min {demo['messages']['min']}")
        return 0
    cast = demo_cast() if args.demo_cast else None
    out = figures(simulate(hours=args.hours, chats=args.chats, seed=args.seed, cast=cast))
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{'chat':>4} {'bots':>4} {'msgs':>5} {'A_n':>6} {'p90/med':>8} {'gini':>6} "
          f"{'same':>6} {'msg/h':>6}")
    for c in out["chats"]:
        print(f"{c['chat']:>4} {c['bots']:>4} {c['messages']:>5} {c['A_n']:>6} "
              f"{c['p90_over_median']:>8} {c['gini']:>6} {c['same_speaker']:>6} "
              f"{c['msgs_per_hour']:>6}")
    print(f"mean: {out['mean']}")
    print(f"msgs/hour {out['msgs_per_hour']} (ceiling {out['ceiling_per_hour']}); max "
          f"rolling-hour count ÷ budget {out['max_rolling_hour_over_budget']}; sends over "
          f"budget {out['sends_over_budget']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

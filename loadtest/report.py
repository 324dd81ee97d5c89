"""Render the figures of a ``botsim loadtest`` run: a terminal summary and an HTML report.

The figures dict is produced by the load-test runner (one run: configuration, throughput,
latency and overhead percentiles, human-reply latency, CPU against the CPU floor, memory,
integrity counts, per-worker messages, cache and DB figures, targets with a verdict, a
10-second timeline and the raw latency / overhead samples in milliseconds).

* :func:`summary_tables` / :func:`print_summary` — one rich table per section.
* :func:`write_report` — ``figures.json`` (the whole dict) and one self-contained
  ``index.html``: the same sections as HTML tables plus three PNG plots embedded as base64
  ``data:`` URIs (no JavaScript, no external assets; every text escaped with
  :func:`html.escape`).

Only ``config``, ``throughput`` and ``latency_ms`` are required (each a dict); any other
missing or malformed value is shown as ``n/a``. Plots are drawn on
:class:`matplotlib.figure.Figure` objects directly (Agg, no pyplot state), so rendering is
thread-safe and leaves no figure open.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from rich import box
from rich.columns import Columns
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = [
    "REQUIRED_SECTIONS",
    "plot_latency",
    "plot_throughput",
    "plot_workers",
    "print_summary",
    "summary_tables",
    "write_report",
]

#: Sections every figures dict must carry, each a dict.
REQUIRED_SECTIONS: tuple[str, ...] = ("config", "throughput", "latency_ms")

NA = "n/a"
_DPI = 110
_Status = Literal["ok", "fail", ""]
FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------
# Reading the figures leniently


def _validate(figures: object) -> Mapping[str, Any]:
    if not isinstance(figures, Mapping):
        raise ValueError(f"figures must be a dict, got {type(figures).__name__}")
    for key in REQUIRED_SECTIONS:
        if key not in figures:
            raise ValueError(f"figures: required section {key!r} is missing")
        if not isinstance(figures[key], Mapping):
            raise ValueError(
                f"figures: required section {key!r} must be a dict, "
                f"got {type(figures[key]).__name__}"
            )
    return figures


def _section(parent: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``parent[key]`` if it is a dict, else an empty dict."""
    value = parent.get(key)
    return value if isinstance(value, Mapping) else {}


def _num(value: object) -> float | None:
    """A finite number as float; None for anything else (missing, None, bool, str, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _samples(figures: Mapping[str, Any], key: str) -> FloatArray:
    """The finite numbers of the list ``figures[key]`` (empty when missing)."""
    raw = figures.get(key)
    if isinstance(raw, np.ndarray):
        values = raw
    elif isinstance(raw, list | tuple):
        values = np.asarray([v for v in raw if _num(v) is not None], dtype=np.float64)
    else:
        return np.empty(0, dtype=np.float64)
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return np.empty(0, dtype=np.float64)
    return array[np.isfinite(array)]


# --------------------------------------------------------------------------------------------
# Formatting


def _fmt(value: object, *, digits: int = 1, unit: str = "") -> str:
    """``1,234.5 unit``; integers (int type) without decimals; ``n/a`` when not a number."""
    number = _num(value)
    if number is None:
        return NA
    if isinstance(value, int | np.integer):
        text = f"{int(value):,}"
    else:
        text = f"{number:,.{digits}f}"
    return f"{text} {unit}" if unit else text


def _ms(value: object) -> str:
    """Milliseconds: two decimals below 10 ms, one above (no unit; headers carry it)."""
    number = _num(value)
    if number is None:
        return NA
    return f"{number:,.2f}" if abs(number) < 10 else f"{number:,.1f}"


def _auto(value: object) -> str:
    """A target value or limit: integral numbers as integers, else up to 3 decimals."""
    number = _num(value)
    if number is None:
        return NA
    if number.is_integer() and abs(number) < 1e15:
        return f"{int(number):,}"
    if abs(number) < 1000:
        return f"{number:,.3f}".rstrip("0").rstrip(".")
    return f"{number:,.1f}"


def _pct(value: object, *, of: object = 1.0) -> str:
    """``value / of`` as a percentage with one decimal; ``n/a`` if either is unusable."""
    number, whole = _num(value), _num(of)
    if number is None or whole is None or whole == 0:
        return NA
    return f"{100.0 * number / whole:.1f} %"


def _count(value: object) -> str:
    number = _num(value)
    if number is None:
        return NA
    return f"{int(number):,}" if number.is_integer() else f"{number:,.1f}"


def _text(value: object) -> str:
    if value is None:
        return NA
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# --------------------------------------------------------------------------------------------
# Sections (shared by the terminal and the HTML output)


@dataclass(frozen=True)
class _Row:
    cells: tuple[str, ...]
    status: _Status = ""


@dataclass
class _Section:
    title: str
    headers: tuple[str, ...]
    rows: list[_Row] = field(default_factory=list)

    def add(self, *cells: str, status: _Status = "") -> None:
        self.rows.append(_Row(tuple(cells), status))


def _kv(title: str) -> _Section:
    return _Section(title, ("Metric", "Value"))


def _config_section(figures: Mapping[str, Any]) -> _Section:
    config = _section(figures, "config")
    machine = _section(config, "machine")
    s = _kv("Configuration")
    s.add("bots", _count(config.get("bots")))
    s.add("chats", _count(config.get("chats")))
    s.add("workers", _count(config.get("workers")))
    s.add("measured duration", _fmt(config.get("duration_s"), unit="s"))
    s.add("warm-up", _fmt(config.get("warmup_s"), unit="s"))
    latency, jitter = config.get("llm_latency_ms"), config.get("llm_jitter_ms")
    s.add(
        "LLM latency (sandbox)",
        f"{_fmt(latency, digits=0, unit='ms')} ± {_fmt(jitter, digits=0, unit='ms')}",
    )
    s.add("human messages", _fmt(config.get("human_rate_per_min"), unit="/ min"))
    s.add("seed", _text(config.get("seed")))
    s.add("database", _text(config.get("database")))
    s.add("Redis", _text(config.get("redis")))
    s.add("machine: cores", _count(machine.get("cores")))
    s.add("machine: memory", _fmt(machine.get("memory_gb"), unit="GB"))
    s.add("machine: Python", _text(machine.get("python")))
    s.add("machine: platform", _text(machine.get("platform")))
    s.add("started at", _text(config.get("started_at")))
    return s


def _throughput_section(figures: Mapping[str, Any]) -> _Section:
    tp = _section(figures, "throughput")
    per_bot = _section(tp, "per_bot")
    warmup = _section(figures, "warmup")
    s = _kv("Throughput")
    s.add("messages delivered (measured)", _count(tp.get("messages")))
    s.add("measured window", _fmt(tp.get("seconds"), unit="s"))
    s.add("messages / min", _fmt(tp.get("msgs_per_min")))
    s.add("target messages / min", _fmt(tp.get("target_msgs_per_min")))
    s.add("of target", _pct(tp.get("msgs_per_min"), of=tp.get("target_msgs_per_min")))
    s.add("warm-up messages", _count(warmup.get("messages")))
    s.add("warm-up window", _fmt(warmup.get("seconds"), unit="s"))
    s.add("warm-up messages / min", _fmt(warmup.get("msgs_per_min")))
    s.add("per bot: mean / h", _fmt(per_bot.get("mean_per_hour"), digits=2))
    s.add("per bot: max / h", _fmt(per_bot.get("max_per_hour"), digits=2))
    s.add("per bot: budget / h", _fmt(per_bot.get("budget_per_hour"), digits=2))
    over = _num(per_bot.get("over_budget_bots"))
    s.add(
        "bots over budget",
        _count(per_bot.get("over_budget_bots")),
        status="" if over is None else ("fail" if over > 0 else "ok"),
    )
    return s


def _latency_section(figures: Mapping[str, Any]) -> _Section:
    s = _Section("Latency (ms)", ("Measure", "count", "p50", "p95", "p99", "max"))
    for key, label in (
        ("latency_ms", "decision → Telegram answer"),
        ("overhead_ms", "engine overhead"),
    ):
        d = _section(figures, key)
        s.add(
            label,
            _count(d.get("count")),
            *(_ms(d.get(p)) for p in ("p50", "p95", "p99", "max")),
        )
    return s


def _human_section(figures: Mapping[str, Any]) -> _Section:
    h = _section(figures, "human_reply_ms")
    s = _kv("Human replies")
    s.add("human messages posted", _count(h.get("posted")))
    s.add("answered by a bot", _count(h.get("answered")))
    s.add("answered share", _pct(h.get("answered"), of=h.get("posted")))
    s.add("replies timed", _count(h.get("count")))
    for p in ("p50", "p95", "p99"):
        value = _ms(h.get(p))
        s.add(f"reply time {p}", value if value == NA else f"{value} ms")
    return s


def _cpu_memory_section(figures: Mapping[str, Any]) -> _Section:
    cpu = _section(figures, "cpu")
    floor = _section(cpu, "floor")
    memory = _section(figures, "memory")
    s = _kv("CPU & memory")
    s.add("engine CPU", _fmt(cpu.get("engine_cpu_s"), digits=2, unit="s"))
    s.add("engine CPU / message", _fmt(cpu.get("engine_ms_per_msg"), digits=3, unit="ms"))
    s.add("CPU floor / message", _fmt(cpu.get("floor_ms_per_msg"), digits=3, unit="ms"))
    ratio = _num(cpu.get("ratio"))
    s.add("engine / floor", NA if ratio is None else f"{ratio:,.2f}×")
    for name, value in floor.items():
        if name in ("samples", "telegram_throttled"):
            s.add(f"floor {name.replace('_', ' ')}", _count(value))
        else:
            s.add(f"floor: {name}", _fmt(value, digits=3, unit="ms"))
    for name, value in _section(cpu, "per_process").items():
        s.add(f"CPU: {name}", _fmt(value, digits=2, unit="s"))
    for name, value in _section(memory, "peak_rss_mb").items():
        s.add(f"peak RSS: {name}", _fmt(value, unit="MB"))
    s.add("max peak RSS", _fmt(memory.get("max_peak_rss_mb"), unit="MB"))
    return s


_INTEGRITY_LABELS = {
    "duplicates": "duplicate messages",
    "duplicate_telegram_ids": "duplicate Telegram ids",
    "duplicate_turn_ids": "duplicate turn ids",
    "lost_turns": "lost turns",
    "unrecorded_sends": "unrecorded sends",
    "telegram_429": "Telegram 429 responses",
    "failed_turns": "failed turns",
    "errors": "errors",
}


def _integrity_section(figures: Mapping[str, Any]) -> _Section:
    integrity = _section(figures, "integrity")
    s = _kv("Integrity")
    keys = list(_INTEGRITY_LABELS) + [k for k in integrity if k not in _INTEGRITY_LABELS]
    for key in keys:
        value = _num(integrity.get(key))
        status: _Status = "" if value is None else ("fail" if value > 0 else "ok")
        s.add(_INTEGRITY_LABELS.get(key, key), _count(integrity.get(key)), status=status)
    return s


def _worker_messages(figures: Mapping[str, Any]) -> dict[str, float]:
    raw = _section(_section(figures, "workers"), "messages")
    out: dict[str, float] = {}
    for name, value in raw.items():
        number = _num(value)
        if number is not None:
            out[str(name)] = number
    return out


def _workers_section(figures: Mapping[str, Any]) -> _Section:
    workers = _section(figures, "workers")
    cache = _section(figures, "cache")
    db = _section(figures, "db")
    s = _kv("Workers, cache & DB")
    messages = _worker_messages(figures)
    total = sum(messages.values())
    for name, value in messages.items():
        s.add(f"messages: {name}", f"{_count(value)} ({_pct(value, of=total)})")
    s.add("busiest worker", _count(workers.get("max")))
    s.add("idlest worker", _count(workers.get("min")))
    hi, lo = _num(workers.get("max")), _num(workers.get("min"))
    s.add("busiest / idlest", NA if hi is None or not lo else f"{hi / lo:.2f}")
    s.add("cache L1 hit rate", _pct(cache.get("l1_hit_rate")))
    s.add("cache L2 hit rate", _pct(cache.get("l2_hit_rate")))
    s.add("cache lookups", _count(cache.get("lookups")))
    s.add("DB queries", _count(db.get("queries")))
    s.add("DB queries / message", _fmt(db.get("queries_per_msg"), digits=2))
    return s


def _targets(figures: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [
        (str(name), target)
        for name, target in _section(figures, "targets").items()
        if isinstance(target, Mapping)
    ]


def _targets_section(figures: Mapping[str, Any]) -> _Section:
    s = _Section("Targets", ("Target", "Value", "Limit", "OK"))
    for name, target in _targets(figures):
        ok = target.get("ok")
        status: _Status = "ok" if ok is True else "fail" if ok is False else ""
        mark = "✓" if ok is True else "✗" if ok is False else NA
        s.add(name, _auto(target.get("value")), _auto(target.get("limit")), mark, status=status)
    return s


def _verdict(figures: Mapping[str, Any]) -> tuple[str, _Status]:
    targets = _targets(figures)
    if not targets:
        return "no targets", ""
    missed = [name for name, t in targets if t.get("ok") is not True]
    if not missed:
        return f"all {len(targets)} targets met ✓", "ok"
    return f"{len(missed)} of {len(targets)} targets missed ✗: {', '.join(missed)}", "fail"


def _headline(figures: Mapping[str, Any]) -> str:
    config = _section(figures, "config")
    return (
        f"botsim load test: {_count(config.get('bots'))} bots, "
        f"{_count(config.get('chats'))} chats, {_count(config.get('workers'))} workers"
    )


def _sections(figures: Mapping[str, Any]) -> list[_Section]:
    return [
        _config_section(figures),
        _throughput_section(figures),
        _latency_section(figures),
        _human_section(figures),
        _cpu_memory_section(figures),
        _integrity_section(figures),
        _workers_section(figures),
        _targets_section(figures),
    ]


# --------------------------------------------------------------------------------------------
# Terminal


_RICH_STYLE = {"ok": "green", "fail": "bold red", "": ""}


def _rich_table(section: _Section) -> Table:
    table = Table(
        title=section.title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD
    )
    for i, header in enumerate(section.headers):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=i > 0)
    for row in section.rows:
        # Text, not str: names (workers, processes) must never be read as rich markup.
        table.add_row(*(Text(cell) for cell in row.cells), style=_RICH_STYLE[row.status])
    if not section.rows:
        table.add_row(Text(NA), *(Text("") for _ in section.headers[1:]))
    return table


def summary_tables(figures: Mapping[str, Any]) -> list[Table]:
    """One rich table per section of a load-test run's figures.

    Sections, in order: Configuration, Throughput, Latency (ms), Human replies,
    CPU & memory, Integrity, "Workers, cache & DB", Targets (Target / Value / Limit / OK with
    ✓ or ✗). Values carry their units (s, ms, MB, / min, %); missing or non-numeric values
    show as ``n/a``. Nonzero integrity counts and missed targets are styled red.

    Raises ValueError (naming the key) when ``config``, ``throughput`` or ``latency_ms`` is
    missing or not a dict.
    """
    return [_rich_table(section) for section in _sections(_validate(figures))]


def print_summary(figures: Mapping[str, Any], console: Console) -> None:
    """Print the headline, the targets verdict and :func:`summary_tables` on ``console``.

    The tables are laid out side by side as far as the console width allows. Raises the
    same ValueError as :func:`summary_tables`.
    """
    tables = summary_tables(figures)
    verdict, status = _verdict(figures)
    console.print(Text(_headline(figures), style="bold"))
    console.print(Text(verdict, style=_RICH_STYLE[status]))
    console.print(Columns(tables, padding=(0, 2)))


# --------------------------------------------------------------------------------------------
# Plots


def _plain(label: str, limit: int = 32) -> str:
    """A name as a matplotlib label: shortened, ``$`` escaped (no mathtext)."""
    if len(label) > limit:
        label = label[: limit - 1] + "…"
    return label.replace("$", r"\$")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    try:
        fig.savefig(
            buffer, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None}
        )
    finally:
        fig.clear()
    return buffer.getvalue()


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _timeline(figures: Mapping[str, Any]) -> tuple[FloatArray, FloatArray, list[str]]:
    raw = figures.get("timeline")
    rows: list[tuple[float, float, str]] = []
    if isinstance(raw, list):
        for bucket in raw:
            if not isinstance(bucket, Mapping):
                continue
            t, n = _num(bucket.get("t_s")), _num(bucket.get("messages"))
            if t is not None and n is not None:
                rows.append((t, n, str(bucket.get("phase", "measure"))))
    rows.sort(key=lambda r: r[0])
    t_s = np.asarray([r[0] for r in rows], dtype=np.float64)
    messages = np.asarray([r[1] for r in rows], dtype=np.float64)
    return t_s, messages, [r[2] for r in rows]


def plot_throughput(figures: Mapping[str, Any]) -> bytes:
    """PNG: delivered messages per minute in each timeline bucket, warm-up shaded.

    Bucket width is the most common spacing of ``timeline[*].t_s`` (10 s if only one
    bucket); ``t_s`` is taken as the bucket's start. The measured mean and the target
    (``throughput.msgs_per_min`` / ``target_msgs_per_min``) are drawn as horizontal lines.
    """
    t_s, messages, phases = _timeline(figures)
    tp = _section(figures, "throughput")
    fig = Figure(figsize=(9.0, 3.6))
    ax = fig.add_subplot()
    ax.set_title("Delivered messages per minute over time")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("messages / min")
    if t_s.size == 0:
        _no_data(ax, "no timeline")
        return _png(fig)
    steps = np.diff(t_s)
    steps = steps[steps > 0]
    width = float(np.median(steps)) if steps.size else 10.0
    rate = messages * 60.0 / width
    warm = np.asarray([p == "warmup" for p in phases])
    if not warm.all():
        ax.bar(
            t_s[~warm],
            rate[~warm],
            width=width,
            align="edge",
            color="#4c72b0",
            edgecolor="white",
            linewidth=0.5,
            label=f"measured, {width:g} s buckets",
        )
    if warm.any():
        ax.bar(
            t_s[warm],
            rate[warm],
            width=width,
            align="edge",
            color="#a0a0a0",
            edgecolor="white",
            linewidth=0.5,
            label="warm-up buckets",
        )
        ax.axvspan(
            float(t_s[warm].min()),
            float(t_s[warm].max()) + width,
            color="#f2c14e",
            alpha=0.25,
            zorder=0,
            label="warm-up",
        )
    mean = _num(tp.get("msgs_per_min"))
    if mean is not None:
        ax.axhline(mean, color="#2a9d8f", linewidth=1.5, label=f"measured mean {mean:,.1f} / min")
    target = _num(tp.get("target_msgs_per_min"))
    if target is not None:
        ax.axhline(
            target,
            color="#c0392b",
            linestyle="--",
            linewidth=1.2,
            label=f"target {target:,.1f} / min",
        )
    ax.set_xlim(float(t_s[0]), float(t_s[-1]) + width)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _png(fig)


_PERCENTILE_STYLES = (("p50", "--"), ("p95", "-."), ("p99", ":"))


def plot_latency(figures: Mapping[str, Any]) -> bytes:
    """PNG: histograms (60 log-spaced bins, log x, ms) of the latency and overhead samples.

    Two stacked panels, each over its own range: ``latency_samples_ms`` (decision → Telegram
    answer) and ``overhead_samples_ms`` (engine overhead), each with p50/p95/p99 as vertical
    lines (values from ``latency_ms`` / ``overhead_ms``, else computed from the samples).
    Samples ≤ 0 are counted in the first bin.
    """
    series = [
        (
            "decision → Telegram answer",
            _samples(figures, "latency_samples_ms"),
            _section(figures, "latency_ms"),
            "#4c72b0",
        ),
        (
            "engine overhead",
            _samples(figures, "overhead_samples_ms"),
            _section(figures, "overhead_ms"),
            "#dd8452",
        ),
    ]
    fig = Figure(figsize=(9.0, 6.0), layout="constrained")
    axes = fig.subplots(2, 1)
    for ax, (label, samples, stats, color) in zip(axes, series, strict=True):
        ax.set_title(f"{label} (n = {samples.size:,})", fontsize="medium")
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_ylabel("samples")
        positive = samples[samples > 0]
        if positive.size == 0:
            _no_data(ax, "no samples")
            continue
        lo, hi = float(positive.min()), float(positive.max())
        if hi <= lo * 1.01:
            lo, hi = lo / 2.0, hi * 2.0
        bins = np.geomspace(lo, hi, 61)
        ax.hist(np.clip(samples, lo, hi), bins=bins, color=color, alpha=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_ms_tick)
        ax.xaxis.set_minor_formatter(_ms_minor_tick)
        ax.grid(alpha=0.3)
        for name, style in _PERCENTILE_STYLES:
            value = _num(stats.get(name))
            if value is None:
                value = float(np.percentile(samples, float(name[1:])))
            if value > 0:
                ax.axvline(
                    value,
                    color="black",
                    linestyle=style,
                    linewidth=1.2,
                    label=f"{name} {_ms(value)} ms",
                )
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.suptitle("Latency and engine overhead (measured window)")
    return _png(fig)


def _ms_tick(value: float, _pos: int | None = None) -> str:
    """Log-axis tick label in plain numbers (0.5, 2, 1,000) instead of 10^n."""
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _ms_minor_tick(value: float, _pos: int | None = None) -> str:
    """Minor log ticks: label 2 and 5 times a power of ten only."""
    mantissa = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0.0
    return _ms_tick(value) if round(mantissa) in (2, 5) else ""


def plot_workers(figures: Mapping[str, Any]) -> bytes:
    """PNG: horizontal bars of messages delivered per worker (measured window), with shares.

    The even share (total / workers) is drawn as a dashed line.
    """
    messages = _worker_messages(figures)
    n = len(messages)
    fig = Figure(figsize=(9.0, min(max(2.4, 0.38 * n + 1.4), 24.0)))
    ax = fig.add_subplot()
    ax.set_title("Messages delivered per worker (measured window)")
    ax.set_xlabel("messages delivered")
    if not messages:
        _no_data(ax, "no per-worker figures")
        return _png(fig)
    names = [_plain(name) for name in messages]
    counts = np.asarray(list(messages.values()), dtype=np.float64)
    total = float(counts.sum())
    positions = np.arange(n)
    bars = ax.barh(positions, counts, color="#4c72b0", height=0.7)
    ax.set_yticks(positions, labels=names)
    ax.invert_yaxis()
    shares = [f"{c:,.0f} ({100 * c / total:.1f} %)" if total else f"{c:,.0f}" for c in counts]
    ax.bar_label(
        bars,
        labels=shares,
        padding=3,
        fontsize="small",
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
    )
    if total:
        ax.axvline(
            total / n,
            color="#c0392b",
            linestyle="--",
            linewidth=1.2,
            label=f"even share {total / n:,.0f}",
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_xlim(0, float(counts.max()) * 1.25 if counts.max() > 0 else 1.0)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# HTML


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; }
h2 { font-size: 1.1rem; margin: 1.4rem 0 .4rem; }
.verdict { font-weight: 600; padding: .4rem .7rem; border-radius: 4px; display: inline-block; }
.verdict.ok { background: #e3f4e8; color: #1d6b34; }
.verdict.fail { background: #fbe4e4; color: #9b1c1c; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(330px, 1fr));
        gap: 0 2rem; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: .2rem .5rem; border-bottom: 1px solid #e4e4e4; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td + td { white-space: nowrap; }
th { background: #f5f5f5; }
tr.ok td:last-child { color: #1d6b34; }
tr.fail td { color: #9b1c1c; font-weight: 600; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; }
footer { margin-top: 2rem; color: #777; font-size: .85rem; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _html_table(section: _Section) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in section.headers)
    body = []
    for row in section.rows:
        cls = f' class="{row.status}"' if row.status else ""
        cells = "".join(f"<td>{_e(c)}</td>" for c in row.cells)
        body.append(f"<tr{cls}>{cells}</tr>")
    if not section.rows:
        body.append(f'<tr><td colspan="{len(section.headers)}">{NA}</td></tr>')
    return (
        f"<section><h2>{_e(section.title)}</h2>"
        f"<table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></section>"
    )


def _html_figure(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _html_page(figures: Mapping[str, Any], plots: Iterable[tuple[bytes, str, str]]) -> str:
    sections = _sections(figures)
    config, rest = sections[0], sections[1:]
    targets = rest.pop()
    verdict, status = _verdict(figures)
    headline = _headline(figures)
    started = _section(figures, "config").get("started_at")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(headline)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_e(headline)}</h1>",
        f"<p>started at {_e(_text(started))}</p>",
        f'<p class="verdict {status}">{_e(verdict)}</p></header>',
        f'<div class="grid">{_html_table(targets)}{_html_table(config)}</div>',
        "<section><h2>Plots</h2>",
        *(_html_figure(png, alt, caption) for png, alt, caption in plots),
        "</section>",
        *(_html_table(s) for s in rest if len(s.headers) > 2),
        '<div class="grid">',
        *(_html_table(s) for s in rest if len(s.headers) <= 2),
        "</div>",
        "<footer>Generated by <code>botsim loadtest</code>. The raw figures, samples included, "
        'are in <a href="figures.json">figures.json</a>.</footer>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _json_default(value: object) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"figures: a {type(value).__name__} value is not JSON serializable")


def write_report(figures: Mapping[str, Any], directory: Path) -> Path:
    """Write ``figures.json`` and a self-contained ``index.html`` into ``directory``.

    ``figures.json`` is the whole dict, samples included (``json.dumps(indent=2,
    ensure_ascii=False)``; numpy scalars and arrays are converted). ``index.html`` shows the
    headline, the targets verdict, the same sections as :func:`summary_tables` as HTML tables,
    and three PNG plots as base64 ``data:`` URIs: messages/min over time (warm-up shaded),
    the latency and overhead histograms (ms, log x, p50/p95/p99 marked) and messages per
    worker. No JavaScript or external asset; all text escaped with :func:`html.escape`.

    ``directory`` (and its parents) is created if needed; existing report files are
    overwritten. Nothing is written unless both files could be rendered. Returns the path
    of ``index.html``.

    Raises:
        ValueError: ``config``, ``throughput`` or ``latency_ms`` is missing or not a dict
            (the message names the key).
        NotADirectoryError: ``directory`` exists and is not a directory.
        TypeError: a value in ``figures`` cannot be written as JSON.
    """
    figures = _validate(figures)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"report directory {directory} exists and is not a directory")
    document = json.dumps(figures, indent=2, ensure_ascii=False, default=_json_default)
    plots = [
        (
            plot_throughput(figures),
            "Messages per minute over time",
            "Delivered messages per minute in each timeline bucket; warm-up shaded.",
        ),
        (
            plot_latency(figures),
            "Latency and overhead histograms",
            "Decision → Telegram answer latency and engine overhead, milliseconds on a log "
            "scale; dashed/dash-dot/dotted lines mark p50/p95/p99.",
        ),
        (
            plot_workers(figures),
            "Messages per worker",
            "Messages delivered by each worker in the measured window and its share.",
        ),
    ]
    page = _html_page(figures, plots)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "figures.json").write_text(document + "\n", encoding="utf-8")
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return index

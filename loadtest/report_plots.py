"""The load-test report's plots: throughput over time, latency percentiles, messages per
worker, each a PNG (bytes) drawn on a :class:`matplotlib.figure.Figure` directly (Agg, no
pyplot state: thread-safe, leaves no figure open).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loadtest.report_tables import FloatArray, _ms, _num, _samples, _section, _worker_messages

_DPI = 110


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


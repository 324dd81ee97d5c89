"""The realism page's plots, drawn server-side with matplotlib as SVG.

Each function returns an SVG document (text) drawn on a :class:`matplotlib.figure.Figure`
directly (no pyplot state: thread-safe, leaves no figure open). Text is drawn as paths
(matplotlib's default ``svg.fonttype``), so a speaker's name never reaches the page as
markup. The page shows them as ``data:image/svg+xml`` images: its Content-Security-Policy
(``style-src 'self'``) would strip the style attributes of inline ``<svg>`` elements, while
an image keeps its own styles and runs no script.
"""

from __future__ import annotations

import base64
import io
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from behavior_engine.realism import MessageRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_COMMENT = re.compile(r"<!--.*?-->", re.S)
#: Speakers shown by name in the plots (the rest are summed as "others").
MAX_SPEAKERS = 12


def _label(name: str, limit: int = 24) -> str:
    """A name as a matplotlib label: shortened, ``$`` escaped (no mathtext)."""
    name = name if len(name) <= limit else name[: limit - 1] + "…"
    return name.replace("$", r"\$")


def _figure(width: float, height: float) -> Figure:
    """A new figure of ``width`` × ``height`` inches. matplotlib is imported here, on the
    first plot, not with the API (~0.5 s of every API process's start)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _svg(fig: Figure) -> str:
    """The figure as SVG text, without matplotlib's comments (they repeat each label's
    text, escaped; the drawing does not need them)."""
    buffer = io.StringIO()
    try:
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        fig.clear()
    return _COMMENT.sub("", buffer.getvalue())


def data_uri(svg: str) -> str:
    """``svg`` as a ``data:image/svg+xml;base64,...`` URI for an ``<img src>``."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")


def _names(messages: Sequence[MessageRecord]) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in messages:
        out.setdefault(m.sender, m.name or m.sender)
    return out


def gap_histogram(messages: Sequence[MessageRecord]) -> str:
    """The gaps between consecutive messages (seconds) on log-spaced bins, log x axis;
    the median and p90 marked (REALISM.md: a heavy tail, p90 ÷ median ≥ 15)."""
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    times = np.sort(np.asarray([m.at.timestamp() for m in messages], dtype=float))
    gaps = np.diff(times) if times.size > 1 else np.array([])
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        ax.text(0.5, 0.5, "no gaps to show", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _svg(fig)
    lo, hi = max(float(gaps.min()), 1e-2), max(float(gaps.max()), 1e-1)
    bins = np.logspace(np.log10(lo) - 0.05, np.log10(hi) + 0.05, 30)
    ax.hist(gaps, bins=bins.tolist(), color="#4c72b0")
    ax.set_xscale("log")
    med, p90 = float(np.median(gaps)), float(np.percentile(gaps, 90))
    ax.axvline(med, color="#333333", linestyle="--", label=f"median {med:.2g} s")
    ax.axvline(p90, color="#c44e52", linestyle="--", label=f"p90 {p90:.2g} s")
    ax.set_xlabel("gap between messages (s, log scale)")
    ax.set_ylabel("gaps")
    ax.legend(frameon=False)
    return _svg(fig)


def speaker_bars(messages: Sequence[MessageRecord]) -> str:
    """Messages per speaker, most first (humans in a second colour)."""
    names = _names(messages)
    counts = Counter(m.sender for m in messages)
    humans = {m.sender for m in messages if not m.is_bot}
    top = counts.most_common(MAX_SPEAKERS)
    rest = sum(counts.values()) - sum(n for _, n in top)
    labels = [_label(names[s]) for s, _ in top] + (["others"] if rest else [])
    values = [n for _, n in top] + ([rest] if rest else [])
    colours = ["#dd8452" if s in humans else "#4c72b0" for s, _ in top] + (
        ["#999999"] if rest else [])
    fig = _figure(6.4, 0.4 * len(values) + 1.0)
    ax = fig.add_subplot()
    if not values:
        ax.text(0.5, 0.5, "no messages", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _svg(fig)
    y = np.arange(len(values))
    ax.barh(y, values, color=colours)
    ax.set_yticks(y.tolist(), labels)
    ax.invert_yaxis()
    ax.set_xlabel("messages (orange: humans)")
    return _svg(fig)


def reply_matrix(messages: Sequence[MessageRecord]) -> str:
    """Who answers whom: explicit replies counted per (answering speaker, answered speaker),
    as a heatmap with the counts written in the cells."""
    names = _names(messages)
    sender_of = {m.message_id: m.sender for m in messages}
    pairs = Counter((m.sender, sender_of[m.reply_to]) for m in messages
                    if m.reply_to is not None and m.reply_to in sender_of)
    speakers = [s for s, _ in Counter(m.sender for m in messages).most_common(MAX_SPEAKERS)]
    fig = _figure(6.4, 5.2)
    ax = fig.add_subplot()
    if not pairs or not speakers:
        ax.text(0.5, 0.5, "no replies", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _svg(fig)
    index = {s: i for i, s in enumerate(speakers)}
    grid = np.zeros((len(speakers), len(speakers)), dtype=int)
    for (who, whom), n in pairs.items():
        if who in index and whom in index:
            grid[index[who], index[whom]] += n
    image = ax.imshow(grid, cmap="Blues")
    labels = [_label(names[s], 16) for s in speakers]
    ticks = list(range(len(speakers)))
    ax.set_xticks(ticks, labels, rotation=40, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("answered")
    ax.set_ylabel("answering")
    peak = grid.max() or 1
    for i in range(len(speakers)):
        for j in range(len(speakers)):
            if grid[i, j]:
                ax.text(j, i, str(grid[i, j]), ha="center", va="center",
                        color="white" if grid[i, j] > peak / 2 else "black")
    fig.colorbar(image, ax=ax, label="replies")
    return _svg(fig)

"""How a ``botsim chaos`` run is shown: the summary tables (rich), and ``--report DIR``:
``figures.json`` and ``timeline.png`` (messages per bucket, each fault marked).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from loadtest.chaos_figures import BUCKET_S


def summary_tables(figures: dict[str, Any]) -> list[Table]:
    """The verdict, the promises' figures and the faults, as rich tables."""
    v = Table(title="botsim chaos: verdict", show_header=True)
    for col in ("check", "value", "limit", "held"):
        v.add_column(col)
    for name, c in figures["verdict"]["checks"].items():
        v.add_row(name, str(c["value"]), str(c["limit"]), "yes" if c["ok"] else "NO")
    h, s, sil, tp = (figures["humans"], figures["sends"], figures["silence_s"],
                     figures["throughput"])
    f = Table(title="figures", show_header=False)
    f.add_row("human messages", f"{h['posted']} posted, {h['stored']} stored, "
              f"{h['answered']} answered, {h['answer_unknown']} answer unknown, "
              f"{h['lost']} lost, {h['unanswered']} unanswered")
    f.add_row("sends", f"{s['accepted']} accepted by Telegram, {s['stored']} stored, "
              f"{s['unrecorded']} not stored, {s['duplicates']} duplicates")
    f.add_row("turns", ", ".join(f"{k} {v}" for k, v in figures["turns"].items()))
    f.add_row("longest silence", f"bot {sil['bot_max']} s (median {sil['bot_median']} s), "
              f"chat {sil['chat_max']} s, whole run {sil['any']} s")
    f.add_row("messages/min", f"before {tp['before']}, during {tp['during']}, "
              f"after {tp['after']}")
    faults = Table(title="faults", show_header=True)
    for col in ("t (s)", "fault", "target", "held (s)", "recovery (s)", "takeover (s)",
                "error"):
        faults.add_column(col)
    for row in figures["faults"]:
        faults.add_row(str(row["started_s"]), row["kind"], row["target"], str(row["held_s"]),
                       str(row["recovery_s"]), str(row.get("takeover_s", "")),
                       row.get("error", ""))
    return [v, f, faults]


def print_summary(figures: dict[str, Any], console: Console) -> None:
    """Print :func:`summary_tables` and the resources' growth."""
    for table in summary_tables(figures):
        console.print(table)
    worst_rss = max((r["rss_growth_mb_per_h"] or 0.0
                     for r in figures["resources"].values()), default=0.0)
    worst_fds = max((r["fds_growth_per_h"] or 0.0 for r in figures["resources"].values()),
                    default=0.0)
    worst_tasks = max((r["tasks_growth_per_h"] or 0.0
                       for r in figures["resources"].values()), default=0.0)
    console.print(f"growth after warm-up, worst process: {worst_rss} MiB/h RSS, "
                  f"{worst_fds} descriptors/h, {worst_tasks} asyncio tasks/h")


def plot_timeline(figures: dict[str, Any]) -> bytes:
    """A PNG: messages per :data:`~loadtest.chaos_figures.BUCKET_S` bucket over the run,
    each fault a shaded span (a line for an instant one) labelled with its kind."""
    fig = Figure(figsize=(11, 4))
    ax = fig.add_subplot()
    points = figures["timeline"]
    ax.bar([p["t_s"] for p in points], [p["messages"] for p in points], width=BUCKET_S,
           align="edge", color="#4477aa")
    top = max((p["messages"] for p in points), default=1) or 1
    for i, row in enumerate(figures["faults"]):
        start, held = float(row["started_s"]), float(row["held_s"])
        if held > 0:
            ax.axvspan(start, start + held, color="#ee6677", alpha=0.15)
        ax.axvline(start, color="#ee6677", linewidth=0.8)
        ax.text(start, top * (1.02 + 0.07 * (i % 4)), row["kind"], fontsize=7,
                color="#aa3344")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel(f"messages per {BUCKET_S:g} s")
    ax.set_ylim(0, top * 1.35)
    ax.set_title("Messages over the run, faults marked")
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight",
                    metadata={"Software": None})
    finally:
        fig.clear()
    return buffer.getvalue()


def write_report(figures: dict[str, Any], directory: Path) -> Path:
    """Write ``figures.json`` and ``timeline.png`` into ``directory`` (created if needed);
    returns the plot's path.

    Raises:
        NotADirectoryError: ``directory`` exists and is not a directory.
    """
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"report directory {directory} exists and is not a directory")
    png = plot_timeline(figures)
    document = json.dumps(figures, indent=2, ensure_ascii=False, default=str)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "figures.json").write_text(document)
    path = directory / "timeline.png"
    path.write_bytes(png)
    return path

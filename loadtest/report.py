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
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.report_plots import plot_latency, plot_throughput, plot_workers
from loadtest.report_tables import (
    NA,
    REQUIRED_SECTIONS,
    _headline,
    _Section,
    _section,
    _sections,
    _text,
    _validate,
    _verdict,
    print_summary,
    summary_tables,
)

__all__ = [
    "REQUIRED_SECTIONS",
    "plot_latency",
    "plot_throughput",
    "plot_workers",
    "print_summary",
    "summary_tables",
    "write_report",
]


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

"""The panel's realism page: ``/realism?chat_id=ID&since=AGE``.

A chat's ``botsim realism`` table (metric, value, band, pass/FAIL/n/a, note) over a window
(``since``: an age such as ``30m``/``24h``/``7d``, an ISO date/time, or ``all``; default
``all``) and three plots drawn server-side (:mod:`backend.api.realism_plots`): the gaps
between messages on a log scale, messages per speaker, who answers whom. Read-only: any
logged-in user (viewers too); otherwise a redirect to ``/login``, as every page. A bad
``since`` gets a 422 page naming it; an unknown chat says so.

The metrics and the plots are CPU work (the separability classifier, matplotlib): they run
in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from backend.api import realism_plots
from backend.api.deps import State
from backend.api.pages import _chats, _chosen_chat, _principal, _render, _to_login
from backend.api.routes_ops import SINCE_EXPECTED, SINCE_MAX
from backend.errors import ValidationFailed
from backend.timewindow import parse_since
from behavior_engine.realism import MessageRecord, RealismReport, realism_report, rows
from behavior_engine.realism_run import load_chats

router = APIRouter(include_in_schema=False)


def _compute(messages: list[MessageRecord], members: list[str]) -> tuple[
        RealismReport, list[tuple[str, str, str]]]:
    """The report and the three plots (title, data URI, alt text) of one chat."""
    report = realism_report({"chat": messages}, bots_per_chat={"chat": members})
    plots = [
        ("Gaps between messages", realism_plots.gap_histogram(messages),
         "Histogram of the gaps between consecutive messages on a log scale"),
        ("Messages per speaker", realism_plots.speaker_bars(messages),
         "Bar chart of the number of messages of each speaker"),
        ("Who answers whom", realism_plots.reply_matrix(messages),
         "Heatmap of explicit replies: answering speaker by answered speaker"),
    ]
    return report, [(t, realism_plots.data_uri(svg), alt) for t, svg, alt in plots]


@router.get("/realism", response_class=HTMLResponse, response_model=None)
async def realism_page(request: Request, state: State, chat_id: int | None = None,
                       since: str = "all") -> Response:
    """The realism of chat ``chat_id`` (default: the first chat) since ``since``."""
    who = await _principal(request, state)
    if who is None:
        return _to_login()
    chats = await _chats(state)
    chat = _chosen_chat(chats, chat_id)
    since = since[:SINCE_MAX]
    context: dict[str, Any] = {
        "user": who, "page": "realism", "chats": chats, "chat": chat, "since": since,
        "unknown_chat": chat_id is not None and chat is None, "error": None,
        "metrics": [], "plots": [], "counts": None}
    try:
        start = None if since.strip().lower() in ("", "all") else parse_since(since)
    except ValidationFailed:
        context["error"] = f"{since!r}: {SINCE_EXPECTED}"
        return _render(request, "realism.html", context, status_code=422)
    if chat is not None:
        async with state.sessionmaker() as session:
            got, members = await load_chats(
                session, telegram_chat_ids=[chat.telegram_chat_id], since=start)
        key = str(chat.telegram_chat_id)
        if key in got:
            report, plots = await asyncio.to_thread(_compute, got[key], members[key])
            context.update(
                metrics=[dict(zip(("label", "value", "band", "verdict", "note"), r,
                                  strict=True)) for r in rows(report.metrics)],
                plots=plots, counts=report.counts)
    return _render(request, "realism.html", context)

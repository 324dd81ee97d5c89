"""``botsim realism``: the metrics of ``REALISM.md`` over a stored run, as tables and JSON.

    botsim realism [--database-url URL] [--chat TELEGRAM_CHAT_ID ...] [--since ISO|-10m]
                   [--until ISO|-2m] [--json]

One table per chat (metric, value, band, pass/FAIL/n/a, note) and one over all chats when
there are several; ``--json`` prints :meth:`RealismReport.to_dict` as one JSON object on the
last line. Bad input (an unknown chat, a bad time, a database that cannot be read, no message
in the window) raises :class:`ValidationFailed` or :class:`ConfigError`: the CLI exits 2 with
the message. Reading never writes: no migration runs, a missing SQLite file is an error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from backend.errors import ConfigError, NotFound, ValidationFailed
from backend.settings import Settings
from backend.timewindow import parse_since
from behavior_engine.realism import Metric, RealismReport, rows
from behavior_engine.realism_run import run_report

_STYLE = {"pass": "green", "FAIL": "bold red", "n/a": "yellow", "info": "dim"}


def parse_when(text: str | None, flag: str, *, now: datetime | None = None) -> datetime | None:
    """``--since``/``--until``: an ISO date or time (UTC unless it says), or an age ``10m``,
    ``2h``, ``7d`` (a leading ``-`` allowed: ``-10m`` is ten minutes ago).

    Raises:
        ValidationFailed: naming ``flag`` and the accepted forms.
    """
    if text is None:
        return None
    value = text.strip()
    if value.startswith("-") and value[1:2].isdigit() and value[-1:] in ("m", "h", "d"):
        value = value[1:]
    try:
        return parse_since(value, now=now)
    except ValidationFailed as exc:
        raise ValidationFailed(flag, exc.problems) from None


def database_url(settings: Settings, given: str | None) -> str:
    """The URL to read: ``given`` (normalised as ``BOTSIM_DATABASE_URL`` is) or the setting.

    Raises:
        ValidationFailed: ``given`` is not a SQLite/PostgreSQL URL, or names a SQLite file
            that does not exist (reading never creates one).
    """
    url = settings.effective_database_url
    if given is not None:
        try:
            url = Settings(database_url=given).effective_database_url
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            raise ValidationFailed("--database-url", [(given[:60], reason)]) from None
    if url.startswith("sqlite"):
        path = make_url(url).database
        if not path or path == ":memory:" or not Path(path).is_file():
            raise ValidationFailed("--database-url", [(str(path), "no SQLite database file")])
    return url


async def read_report(url: str, *, chats: Sequence[int] | None, since: datetime | None,
                      until: datetime | None) -> RealismReport:
    """Open ``url`` read-only (no migration), compute the report, close.

    Raises:
        ValidationFailed: an unknown chat, or no message in the window.
        ConfigError: the database cannot be reached or read (names the URL, no password).
    """
    from backend.db.session import describe_url, make_engine, make_sessionmaker

    if since is not None and until is not None and since >= until:
        raise ValidationFailed("--until", [(until.isoformat(), "must be after --since")])
    engine = make_engine(url, pool_size=1)
    try:
        async with make_sessionmaker(engine)() as session:
            report = await run_report(session, telegram_chat_ids=chats, since=since,
                                      until=until)
    except NotFound as exc:
        raise ValidationFailed("--chat", [(str(exc.key), "no such chat in the database")]
                               ) from None
    except (OSError, SQLAlchemyError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(f"--database-url {describe_url(url)}: cannot read it ({first})"
                          ) from None
    finally:
        await engine.dispose()
    if report is None:
        window = (f" since {since:%Y-%m-%d %H:%M:%S}" if since else "") + (
            f" until {until:%Y-%m-%d %H:%M:%S}" if until else "")
        what = f"chat {', '.join(map(str, chats))}" if chats else "any chat"
        raise ValidationFailed("botsim realism", [("messages", f"none in {what}{window}")])
    return report


def metrics_table(metrics: Sequence[Metric], title: str) -> Table:
    """A rich table of ``metrics``: metric, value, band, verdict, note."""
    table = Table(title=title, title_justify="left")
    for col, justify in (("metric", "left"), ("value", "right"), ("band", "right"),
                         ("", "left"), ("note", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for label, value, band, verdict, note in rows(metrics):
        style = _STYLE.get(verdict, "")
        table.add_row(escape(label), value, band, f"[{style}]{verdict}[/{style}]",
                      escape(note), style="dim" if verdict == "info" else None)
    return table


def print_report(report: RealismReport, console: Console) -> None:
    """Each chat's table, then the overall one when there are several chats, then a line."""
    for chat, metrics in report.chats.items():
        console.print(metrics_table(metrics, f"Realism of chat {chat}"))
    if len(report.chats) > 1:
        console.print(metrics_table(report.metrics, f"Realism over {len(report.chats)} chats"))
    c = report.counts
    verdicts = [m.passed for m in report.metrics if m.band is not None]
    console.print(
        f"{c.get('messages', 0)} messages ({c.get('bot_messages', 0)} from bots, "
        f"{c.get('human_messages', 0)} human) in {c.get('chats', 0)} chat(s): "
        f"{verdicts.count(True)} in band, {verdicts.count(False)} outside, "
        f"{verdicts.count(None)} n/a.", highlight=False)


async def realism_cmd(settings: Settings, *, database_url_arg: str | None,
                      chats: Sequence[int] | None, since: str | None, until: str | None,
                      as_json: bool) -> int:
    """``botsim realism``; returns the exit code (0; bad input raises, see the module)."""
    start = parse_when(since, "--since")
    end = parse_when(until, "--until")
    url = database_url(settings, database_url_arg)
    report = await read_report(url, chats=chats, since=start, until=end)
    print_report(report, Console(width=None if sys.stdout.isatty() else 160, highlight=False))
    if as_json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, allow_nan=False))
    return 0

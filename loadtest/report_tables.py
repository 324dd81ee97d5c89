"""The load-test figures read leniently and laid out as sections: rich tables for the
terminal (:func:`summary_tables`, :func:`print_summary`), the same sections for the HTML
report (:mod:`loadtest.report`). Any missing or malformed value shows as ``n/a``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from rich import box
from rich.columns import Columns
from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Sections every figures dict must carry, each a dict.
REQUIRED_SECTIONS: tuple[str, ...] = ("config", "throughput", "latency_ms")


NA = "n/a"


_Status = Literal["ok", "fail", ""]


FloatArray = npt.NDArray[np.float64]


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
    s.add("  of which workers", _fmt(db.get("worker_queries_per_msg"), digits=2))
    for kind, per_msg in list((db.get("per_msg_by_statement") or {}).items())[:8]:
        s.add(f"  {kind}", _fmt(per_msg, digits=2))
    overload = _section(figures, "overload")
    s.add("overloaded ticks (chatter shed)", _count(overload.get("overloaded_ticks")))
    s.add("chatter shed", _count(overload.get("chatter_shed")))
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


def _realism_section(figures: Mapping[str, Any]) -> _Section:
    """``figures["realism"]["metrics"]`` (``Metric.to_dict`` rows of ``botsim realism``)."""
    s = _Section("Realism", ("Metric", "Value", "Band", ""))
    for m in _section(figures, "realism").get("metrics") or []:
        if not isinstance(m, Mapping):
            continue
        band = m.get("band") if isinstance(m.get("band"), Mapping) else None
        passed = m.get("passed")
        status: _Status = "ok" if passed is True else "fail" if passed is False else ""
        value = m.get("value")
        percent = band is not None and "%" in str(band.get("text", ""))
        shown = NA if value is None else (_pct(value) if percent else _fmt(value, digits=2))
        s.add(str(m.get("name")), shown, NA if band is None else str(band.get("text")),
              "✓" if passed is True else "✗" if passed is False else NA, status=status)
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
        *([_realism_section(figures)] if isinstance(figures.get("realism"), Mapping) else []),
    ]


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
    ✓ or ✗), and Realism when the figures have a ``realism`` key (metric / value / band /
    ✓ ✗ n/a, from ``botsim realism`` over the measured window). Values carry their units
    (s, ms, MB, / min, %); missing or non-numeric values show as ``n/a``. Nonzero integrity
    counts and missed targets are styled red.

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


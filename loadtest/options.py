"""The options of one ``botsim loadtest`` run (:class:`LoadOptions`) and their checks."""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backend.errors import ValidationFailed

#: Hosts a load test may reach: it never leaves this machine.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
#: The PostgreSQL server on which the scratch database is created by default.
DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: The Redis used by default (the run takes a namespace of its own on it).
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


@dataclass
class LoadOptions:
    """One load test.

    Attributes:
        bots / chats: generated personas and the groups they are spread over (each group
            gets ``bots // chats`` or one more, and one human member).
        workers: ``botsim worker`` processes.
        duration_s: the whole run after start-up, warm-up included, seconds.
        warmup_s: the first part of the run, reported apart (default: a fifth of the run,
            30 s at most).
        llm_latency_ms / llm_jitter_ms: the sandbox LLM's answer time, uniform in
            latency ± jitter, ms.
        human_rate_per_min: human messages posted per minute over all groups (Poisson).
        msgs_per_hour: each bot's hourly budget (``bot_hourly_msg_limit`` min = max).
        seed: the world, the human messages and the workers' scheduler draw from it.
        database_url: a PostgreSQL server URL on which a scratch database is created
            (default: the local server; SQLite when one worker and none given).
        redis_url: Redis for the shared state (default: the local server; none on SQLite).
        in_flight: ``BOTSIM_MAX_TURNS_IN_FLIGHT`` of each worker (default the setting's).
        floor_samples: calls per operation of the floor micro-benchmark.
        keep: keep the scratch database and data directory (their places are reported).
        targets_dir: where to write Prometheus ``file_sd`` target files as the processes
            start (``listener.json``, ``api.json``, ``worker.json``: one per scrape job of
            ``monitoring/prometheus.yml``); with it the run also starts ``botsim api``, so a
            Prometheus scraping the run sees every job. None: no files, no API.
        progress: show the live display (on standard error).
        profile_path: record a py-spy profile of ``worker-1`` over the measured window into
            this file (a flame graph SVG, or speedscope JSON for a ``.json`` name); py-spy
            comes with ``pip install -e '.[test]'``. None: no profile.
    """

    bots: int
    chats: int
    workers: int
    duration_s: float
    llm_latency_ms: float
    llm_jitter_ms: float = 0.0
    human_rate_per_min: float = 0.0
    msgs_per_hour: float = 10.0
    seed: int = 1
    warmup_s: float | None = None
    database_url: str | None = None
    redis_url: str | None = None
    in_flight: int | None = None
    floor_samples: int = 500
    keep: bool = False
    progress: bool = True
    targets_dir: Path | None = None
    profile_path: Path | None = None

    @property
    def warmup(self) -> float:
        """The warm-up, seconds."""
        return self.warmup_s if self.warmup_s is not None else min(30.0, self.duration_s / 5)

    @property
    def sqlite(self) -> bool:
        """Whether the run is on SQLite (one worker and no database given)."""
        return self.workers == 1 and self.database_url is None

    def validate(self) -> None:
        """Raises ValidationFailed naming the option that is wrong."""
        checks: list[tuple[str, bool, str]] = [
            ("--bots", self.bots >= 1, "must be at least 1"),
            ("--chats", 1 <= self.chats <= self.bots, "must be between 1 and --bots"),
            ("--workers", 1 <= self.workers <= 64, "must be between 1 and 64"),
            ("--duration", math.isfinite(self.duration_s) and self.duration_s > 0,
             "must be a positive number of seconds"),
            ("--warmup", self.warmup_s is None or (
                math.isfinite(self.warmup_s) and 0 <= self.warmup_s < self.duration_s),
             "must be at least 0 and shorter than --duration"),
            ("--llm-latency-ms", math.isfinite(self.llm_latency_ms)
             and 0 <= self.llm_latency_ms <= 60_000, "must be between 0 and 60000"),
            ("--llm-jitter-ms", math.isfinite(self.llm_jitter_ms)
             and 0 <= self.llm_jitter_ms <= self.llm_latency_ms,
             "must be between 0 and --llm-latency-ms"),
            ("--human-rate", math.isfinite(self.human_rate_per_min)
             and 0 <= self.human_rate_per_min <= 6000, "must be between 0 and 6000 per minute"),
            ("--msgs-per-hour", math.isfinite(self.msgs_per_hour)
             and 1 <= self.msgs_per_hour <= 1000, "must be between 1 and 1000"),
            ("--floor-samples", 10 <= self.floor_samples <= 100_000,
             "must be between 10 and 100000"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValidationFailed("botsim loadtest", [(name, why)])
        if self.targets_dir is not None and not self.targets_dir.is_dir():
            raise ValidationFailed("botsim loadtest", [(
                "--prometheus-targets", f"{self.targets_dir} is not a directory")])
        if self.profile_path is not None:
            if self.profile_path.is_dir() or not self.profile_path.parent.is_dir():
                raise ValidationFailed("botsim loadtest", [(
                    "--profile", f"{self.profile_path} must be a file in an existing "
                                 "directory")])
            if py_spy() is None:
                raise ValidationFailed("botsim loadtest", [(
                    "--profile", "py-spy is not installed (pip install -e '.[test]')")])
        if self.in_flight is not None and not 1 <= self.in_flight <= 100_000:
            raise ValidationFailed("botsim loadtest",
                                   [("--in-flight", "must be between 1 and 100000")])
        for name, url in (("--database-url", self.database_url),
                          ("--redis-url", self.redis_url)):
            if url is not None and (urlsplit(url).hostname or "") not in LOOPBACK:
                raise ValidationFailed("botsim loadtest", [(
                    name, f"host {urlsplit(url).hostname!r} is not 127.0.0.1/localhost: a "
                          "load test never leaves this machine")])
        if self.database_url is not None and not self.database_url.startswith(
                ("postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ValidationFailed("botsim loadtest",
                                   [("--database-url", "must be a postgresql:// server URL")])


def options_dict(opts: LoadOptions) -> dict[str, Any]:
    """The options as a JSON-ready dict (a path as its text)."""
    out = asdict(opts)
    for name in ("targets_dir", "profile_path"):
        if out[name] is not None:
            out[name] = str(out[name])
    return out


def py_spy() -> str | None:
    """The py-spy executable: beside this Python's (the venv's ``bin``), else on ``PATH``."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.is_file() else shutil.which("py-spy")


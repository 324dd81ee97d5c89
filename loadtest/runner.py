"""``botsim loadtest``: run a whole deployment on this machine under load and measure it.

Everything runs on 127.0.0.1, each in its own process: the sandbox Telegram (loaded with a
generated world), the sandbox LLM server (a fixed latency with jitter), the webhook listener
and W ``botsim worker`` processes, against the local PostgreSQL (a scratch database, dropped
at the end) and Redis (a namespace of its own, deleted at the end). With one worker and no
``--database-url`` it runs on SQLite without Redis, as ``botsim demo`` does.

The run: a micro-benchmark of the floor first (:mod:`loadtest.floor`, against servers of its
own), then the world starts, every bot is taken on, the warm-up runs, and the measured window
follows; human messages are posted at ``--human-rate`` throughout. At the end the simulation
is paused and the workers drain (every decided turn ends), then the figures are computed
from the database, the workers' ``/metrics``, ``/proc`` and the sandbox's counters
(:func:`compute_figures` documents each one). Every process is stopped, whatever happens.

No request leaves 127.0.0.1: the database and Redis URLs are refused unless their host is
a loopback address, and every server is started here on a free local port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher
from backend.db.models import Bot, Chat, Message, TurnRecord
from backend.db.session import make_engine, make_sessionmaker, upgrade
from backend.errors import ValidationFailed
from backend.stores import settings as settings_store
from loadtest.world import World, generate_world, sandbox_world, seed_database

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
#: Width of the timeline's buckets, seconds.
BUCKET_S = 10.0
#: The live display reads the workers' /metrics every this many 2-s rounds (scraping
#: costs the workers CPU, which the figures count).
WATCH_METRICS_EVERY = 5
#: How long the workers may take to end their turns once the simulation is paused.
DRAIN_S = 60.0
#: How long the bots may take to be taken on (10,000 bots: webhooks and leases).
STARTUP_S = 300.0
HUMAN_TEXTS = (
    "Dolar bugün nereye gider sizce?", "BIST'te satış baskısı var mı?",
    "Altın almak için geç mi kaldım?", "Faiz kararı ne olur, fikri olan?",
    "Bitcoin 100 bini görür mü bu ay?", "Enflasyon verisi piyasayı nasıl etkiler?",
    "Bugün hangi hisseye bakıyorsunuz?", "Euro da dolar gibi yükselir mi?",
)


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
        progress: show the live display (on standard error).
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


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """A process of the run: its role (``worker-1``, ``listener``, ``sandbox-telegram``…),
    whether it is part of the engine (its CPU counts), and its metrics port."""

    name: str
    popen: subprocess.Popen[bytes]
    engine: bool
    metrics_url: str | None = None
    log: Path | None = None

    def cpu_s(self) -> float:
        """User + system CPU seconds so far (0 once it has exited)."""
        try:
            t = psutil.Process(self.popen.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(t.user + t.system)

    def peak_rss_mb(self) -> float:
        """Peak resident memory so far, MiB (``VmHWM`` of ``/proc/<pid>/status``; the
        current RSS where that is not available)."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        try:
            return float(psutil.Process(self.popen.pid).memory_info().rss) / 2**20
        except psutil.Error:
            return 0.0


class Fleet:
    """The processes of a run; :meth:`stop` ends them all (SIGTERM, then SIGKILL)."""

    def __init__(self, logs: Path) -> None:
        self.procs: list[Proc] = []
        self.logs = logs

    def start(self, name: str, args: list[str], env: dict[str, str], *, engine: bool,
              metrics_url: str | None = None) -> Proc:
        """Start ``python args…`` in the repository with ``env``; output to a log file."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                                     stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT)
        proc = Proc(name, popen, engine, metrics_url, log)
        self.procs.append(proc)
        return proc

    def check(self) -> None:
        """Raises RuntimeError naming a process that exited, with its log's tail."""
        for p in self.procs:
            if p.popen.poll() is not None:
                tail = p.log.read_text(errors="replace")[-2000:] if p.log else ""
                raise RuntimeError(f"{p.name} exited with code {p.popen.returncode}:\n{tail}")

    def stop(self, names: Iterable[str] | None = None, timeout: float = 30.0) -> None:
        """SIGTERM the processes (all, or those named), wait, SIGKILL what is left."""
        chosen = [p for p in self.procs if names is None or p.name in set(names)]
        for p in chosen:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for p in chosen:
            try:
                p.popen.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()


async def wait_http(url: str, seconds: float, fleet: Fleet | None = None, *,
                    any_status: bool = False) -> None:
    """Wait until ``url`` answers 2xx (any status with ``any_status``: the server is up).
    Raises RuntimeError after ``seconds``, or naming a process of ``fleet`` that exited."""
    end = time.monotonic() + seconds
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        while time.monotonic() < end:
            if fleet is not None:
                fleet.check()
            with contextlib.suppress(httpx.HTTPError):
                answer = await client.get(url)
                if any_status or answer.is_success:
                    return
            await asyncio.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


# --- metrics -----------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    """Every sample of a Prometheus text page: (name, sorted labels) → value; {} when the
    page does not answer."""
    try:
        r = await client.get(url)
    except httpx.HTTPError:
        return {}
    if not r.is_success:
        return {}
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def hist_quantile(samples: Samples, name: str, q: float) -> float | None:
    """Quantile ``q`` of a Prometheus histogram (linear within the bucket, as
    ``histogram_quantile`` does), seconds; None without observations."""
    buckets: dict[float, float] = defaultdict(float)
    for (n, lab), v in samples.items():
        if n == f"{name}_bucket":
            le = dict(lab)["le"]
            buckets[math.inf if le == "+Inf" else float(le)] += v
    if not buckets or buckets.get(math.inf, 0) <= 0:
        return None
    edges = sorted(buckets)
    rank = q * buckets[math.inf]
    prev_edge, prev_count = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if math.isinf(edge):
                return prev_edge
            span = count - prev_count
            return prev_edge + (edge - prev_edge) * ((rank - prev_count) / span if span else 1)
        prev_edge, prev_count = edge, count
    return prev_edge


def percentiles(values: Sequence[float]) -> dict[str, Any]:
    """``count``, ``p50``, ``p95``, ``p99``, ``max`` of ``values`` (ms, rounded to 0.1);
    None for each when there are none."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=float)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"count": int(a.size), "p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(float(a.max()), 1)}


# --- the run -----------------------------------------------------------------------------


@dataclass
class Posted:
    """A human message the load test posted: its group, Telegram id and when (UTC)."""

    telegram_chat_id: int
    telegram_message_id: int
    at: datetime


@dataclass
class Snapshot:
    """The counters at one moment: engine processes' CPU, each worker's metrics and the
    sandbox's counters."""

    at: datetime
    cpu: dict[str, float]
    metrics: dict[str, Samples]
    sandbox: dict[str, Any]


@dataclass
class RunState:
    """What the run collects as it goes (for the figures and the live display)."""

    posted: list[Posted] = field(default_factory=list)
    post_errors: int = 0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    sent_history: list[tuple[float, int]] = field(default_factory=list)
    p95_ms: float | None = None
    errors: int = 0
    phase: str = "starting"


async def _sandbox_stats(client: httpx.AsyncClient, base: str) -> dict[str, Any]:
    r = await client.get(f"{base}/sandbox/stats")
    r.raise_for_status()
    result: dict[str, Any] = r.json()["result"]
    return result


async def _snapshot(client: httpx.AsyncClient, fleet: Fleet, tg_base: str) -> Snapshot:
    metrics = {}
    for p in fleet.procs:
        if p.metrics_url:
            metrics[p.name] = await scrape(client, p.metrics_url)
    return Snapshot(at=datetime.now(UTC),
                    cpu={p.name: p.cpu_s() for p in fleet.procs if p.engine},
                    metrics=metrics, sandbox=await _sandbox_stats(client, tg_base))


async def _post_humans(opts: LoadOptions, world: World, tg_base: str, state: RunState,
                       stop: asyncio.Event) -> None:
    """Post human messages as a Poisson process of ``human_rate_per_min`` into random groups
    (seeded), until ``stop``. A refused post is counted, never retried."""
    if opts.human_rate_per_min <= 0:
        return
    rng = random.Random(opts.seed * 7919 + 1)
    rate_s = opts.human_rate_per_min / 60.0
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.expovariate(rate_s))
                return
            chat = rng.choice(world.chats)
            human = chat.humans[0]
            at = datetime.now(UTC)
            try:
                r = await client.post(
                    f"{tg_base}/sandbox/chats/{chat.telegram_chat_id}/messages",
                    json={"user_id": human["id"], "text": rng.choice(HUMAN_TEXTS)})
                r.raise_for_status()
                state.posted.append(Posted(chat.telegram_chat_id,
                                           int(r.json()["result"]["message_id"]), at))
            except (httpx.HTTPError, KeyError, ValueError):
                state.post_errors += 1


def _progress_table(opts: LoadOptions, state: RunState) -> Table:
    elapsed = (datetime.now(UTC) - state.started).total_seconds()
    hist = state.sent_history
    rate = None
    if len(hist) >= 2:
        recent = [h for h in hist if h[0] >= hist[-1][0] - 60] or hist
        span = hist[-1][0] - recent[0][0]
        if span > 0:
            rate = (hist[-1][1] - recent[0][1]) / span * 60
    t = Table(title="botsim loadtest", show_header=False, box=None)
    t.add_row("phase", state.phase)
    t.add_row("elapsed", f"{elapsed:,.0f} s of {opts.duration_s:,.0f} s")
    t.add_row("delivered", f"{hist[-1][1]:,}" if hist else "0")
    t.add_row("messages/min", f"{rate:,.0f}" if rate is not None else "…")
    t.add_row("p95 latency", f"{state.p95_ms:,.0f} ms" if state.p95_ms is not None else "…")
    t.add_row("errors", f"{state.errors:,}")
    t.add_row("human messages", f"{len(state.posted):,}")
    return t


async def _watch(opts: LoadOptions, fleet: Fleet, tg_base: str, state: RunState,
                 stop: asyncio.Event) -> None:
    """Refresh the live figures every 2 s (and the display, when shown) until ``stop``."""
    console = Console(stderr=True)
    live = Live(_progress_table(opts, state), console=console, refresh_per_second=2,
                transient=True) if opts.progress else None
    rounds = 0
    failed = 0.0
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        with live if live is not None else contextlib.nullcontext():
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError, KeyError):
                    if rounds % WATCH_METRICS_EVERY == 0:  # the workers' pages less often
                        merged: Samples = defaultdict(float)
                        failed = 0.0
                        for p in fleet.procs:
                            if p.metrics_url and p.name.startswith("worker"):
                                m = await scrape(client, p.metrics_url)
                                for k, v in m.items():
                                    merged[k] += v
                                failed += total(m, "botsim_turns_total", outcome="failed")
                        q = hist_quantile(merged, "botsim_turn_latency_seconds", 0.95)
                        state.p95_ms = None if q is None else q * 1000
                    stats = await _sandbox_stats(client, tg_base)
                    sent = sum(int(v) for v in stats["sent"].values())
                    state.sent_history.append((time.monotonic(), sent))
                    state.errors = int(failed + int(stats.get("too_many_requests", 0)))
                rounds += 1
                if live is not None:
                    live.update(_progress_table(opts, state))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)


@contextlib.asynccontextmanager
async def _database(opts: LoadOptions, tmp: Path) -> AsyncIterator[str]:
    """A fresh, migrated database for the run (SQLite file or PostgreSQL scratch database),
    dropped at the end unless ``keep``; yields its SQLAlchemy URL."""
    if opts.sqlite:
        url = f"sqlite+aiosqlite:///{tmp / 'loadtest.db'}"
        await upgrade(url)
        yield url
        return
    import asyncpg

    admin = (opts.database_url or DEFAULT_PG_ADMIN).replace("postgresql+asyncpg://",
                                                            "postgresql://")
    name = f"botsim_loadtest_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        conn = await asyncpg.connect(admin, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(f"PostgreSQL at {urlsplit(admin).hostname}:"
                           f"{urlsplit(admin).port or 5432} not reachable: {exc}") from exc
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(admin)
    url = parts._replace(scheme="postgresql+asyncpg", path=f"/{name}").geturl()
    try:
        await upgrade(url)
        yield url
    finally:
        if not opts.keep:
            conn = await asyncpg.connect(admin, timeout=5)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()


async def _clear_namespace(redis_url: str, ns: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{ns}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.delete(*batch)
                batch.clear()
        if batch:
            await client.delete(*batch)
    finally:
        await client.aclose()


async def run_load(opts: LoadOptions, *, out: Console | None = None) -> dict[str, Any]:
    """Run the load test of ``opts`` and return its figures (:func:`compute_figures`).

    Raises:
        ValidationFailed: an option is out of range (named).
        RuntimeError: a service is unreachable, a process exited, or the bots were not
            all taken on within :data:`STARTUP_S`; every process is stopped first.
    """
    from loadtest.floor import measure_floor

    opts.validate()
    console = out or Console(stderr=True)
    tmp = Path(tempfile.mkdtemp(prefix="botsim-loadtest-"))
    logs = tmp / "logs"
    logs.mkdir()
    fleet = Fleet(logs)
    ns = f"botsim-lt-{secrets.token_hex(4)}"
    redis_url = None if opts.sqlite else (opts.redis_url or DEFAULT_REDIS)
    if redis_url is not None:
        await _check_redis(redis_url)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSIM_")
                and k not in ("DATABASE_URL", "REDIS_URL")}
    state = RunState()
    try:
        async with _database(opts, tmp) as db_url:
            engine = make_engine(db_url, pool_size=2)
            sm = make_sessionmaker(engine)
            try:
                return await _run(opts, console, tmp, fleet, ns, redis_url, db_url, sm,
                                  base_env, state, measure_floor)
            finally:
                fleet.stop()
                await engine.dispose()
                if redis_url is not None:
                    with contextlib.suppress(Exception):
                        await _clear_namespace(redis_url, ns)
    finally:
        fleet.stop()
        if not opts.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


async def _check_redis(url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        await client.ping()
    except Exception as exc:
        raise RuntimeError(f"Redis at {url} not reachable: {exc}") from exc
    finally:
        await client.aclose()


async def _run(opts: LoadOptions, console: Console, tmp: Path, fleet: Fleet, ns: str,
               redis_url: str | None, db_url: str,
               sm: async_sessionmaker[AsyncSession], base_env: dict[str, str],
               state: RunState, measure_floor: Any) -> dict[str, Any]:
    state.phase = "seeding"
    fernet = Fernet.generate_key().decode()
    world = generate_world(opts.bots, opts.chats, seed=opts.seed)
    async with sm() as s, s.begin():
        await seed_database(s, world, cipher=TokenCipher(fernet))
        await settings_store.update_settings(s, changes={
            "bot_hourly_msg_limit": {"min": opts.msgs_per_hour, "max": opts.msgs_per_hour},
            "max_msgs_per_min": 20, "scale_factor": 1.0,
            "prime_hours": {"hours": [], "boost": 1.0, "timezone": "UTC"}})
    world_file = tmp / "world.json"
    world_file.write_text(json.dumps(sandbox_world(world)))

    # The floor first, on servers of its own, before the load starts.
    console.print("[dim]measuring the floor…[/dim]")
    state.phase = "floor"
    floor = await _measure_floor(opts, fleet, tmp, db_url, redis_url, base_env,
                                 measure_floor)

    state.phase = "starting"
    tg_port, llm_port, listener_port = free_port(), free_port(), free_port()
    tg_base = f"http://127.0.0.1:{tg_port}"
    jitter = f":{opts.llm_jitter_ms:g}" if opts.llm_jitter_ms else ""
    fleet.start("sandbox-telegram", ["-m", "sandbox.telegram_api", "--port", str(tg_port),
                                     "--world", str(world_file)], base_env, engine=False)
    fleet.start("sandbox-llm", ["-m", "sandbox.llm_api", "--port", str(llm_port),
                                "--latency", f"load={opts.llm_latency_ms:g}{jitter}"],
                base_env, engine=False)
    await wait_http(f"{tg_base}/sandbox/stats", 60, fleet)
    await wait_http(f"http://127.0.0.1:{llm_port}/", 60, fleet, any_status=True)
    providers = [{"name": "load", "kind": "openai_compatible", "model": "load-model",
                  "base_url": f"http://127.0.0.1:{llm_port}/load/v1",
                  "timeout_s": max(15.0, 3 * (opts.llm_latency_ms + opts.llm_jitter_ms) / 1000),
                  "max_tokens": 120}]
    env = {**base_env, "BOTSIM_DATABASE_URL": db_url, "BOTSIM_FERNET_KEY": fernet,
           "BOTSIM_WEBHOOK_SECRET": secrets.token_urlsafe(32),
           "BOTSIM_TELEGRAM_API_URL": f"{tg_base}/bot",
           "BOTSIM_PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{listener_port}",
           "BOTSIM_LISTENER_PORT": str(listener_port),
           "BOTSIM_LLM_PROVIDERS": json.dumps(providers),
           "BOTSIM_REDIS_NAMESPACE": ns, "BOTSIM_SEED": str(opts.seed),
           "BOTSIM_LOG_LEVEL": "WARNING", "PTB_TIMEDELTA": "true"}
    if redis_url is not None:
        env["BOTSIM_REDIS_URL"] = redis_url
    if opts.in_flight is not None:
        env["BOTSIM_MAX_TURNS_IN_FLIGHT"] = str(opts.in_flight)
    (tmp / "listener").mkdir()
    fleet.start("listener", ["-m", "botsim", "listener", "--register"],
                {**env, "BOTSIM_DATA_DIR": str(tmp / "listener")}, engine=True,
                metrics_url=f"http://127.0.0.1:{listener_port}/metrics")
    console.print(f"[dim]registering {opts.bots:,} webhooks…[/dim]")
    await wait_http(f"http://127.0.0.1:{listener_port}/health/ready", STARTUP_S, fleet)
    for i in range(1, opts.workers + 1):
        port = free_port()
        data = tmp / f"worker-{i}"
        data.mkdir()
        fleet.start(f"worker-{i}", ["-m", "botsim", "worker"],
                    {**env, "BOTSIM_DATA_DIR": str(data), "BOTSIM_METRICS_PORT": str(port),
                     "BOTSIM_WORKER_NAME": f"worker-{i}"},
                    engine=True, metrics_url=f"http://127.0.0.1:{port}/metrics")
    console.print(f"[dim]{opts.workers} workers taking on {opts.bots:,} bots…[/dim]")
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        await _wait_taken_on(client, fleet, opts.bots)

        # The run: warm-up, then the measured window.
        stop = asyncio.Event()
        state.started = datetime.now(UTC)
        state.phase = "warm-up"
        run_start = await _snapshot(client, fleet, tg_base)
        humans = asyncio.create_task(_post_humans(opts, world, tg_base, state, stop))
        watch = asyncio.create_task(_watch(opts, fleet, tg_base, state, stop))
        try:
            await _sleep_checked(opts.warmup, fleet)
            measure_start = await _snapshot(client, fleet, tg_base)
            state.phase = "measuring"
            await _sleep_checked(opts.duration_s - opts.warmup, fleet)
            measure_end = await _snapshot(client, fleet, tg_base)
            peaks = {p.name: round(p.peak_rss_mb(), 1) for p in fleet.procs if p.engine}
        finally:
            stop.set()
            await asyncio.gather(humans, watch, return_exceptions=True)
        state.phase = "draining"
        drained = await _drain(client, fleet, sm, redis_url, ns)
        final = await _snapshot(client, fleet, tg_base)
    fleet.stop([p.name for p in fleet.procs if p.name.startswith("worker")])
    fleet.stop()
    return await compute_figures(
        opts, sm, world, state, floor=floor, run_start=run_start,
        measure_start=measure_start, measure_end=measure_end, final=final, peaks=peaks,
        drained=drained, database="sqlite" if opts.sqlite else "postgresql",
        redis=redis_url is not None, kept={"data_dir": str(tmp), "database_url": db_url}
        if opts.keep else None)


async def _measure_floor(opts: LoadOptions, fleet: Fleet, tmp: Path, db_url: str,
                         redis_url: str | None, base_env: dict[str, str],
                         measure_floor: Any) -> dict[str, Any]:
    """The floor micro-benchmark against a sandbox Telegram without limits and the sandbox
    LLM without latency, in processes of their own (stopped after)."""
    tg_port, llm_port = free_port(), free_port()
    token = f"7999000001:{secrets.token_urlsafe(26)}"
    chat_id = -1009990000001
    (tmp / "floor-world.json").write_text(json.dumps({
        "bots": [{"token": token, "username": "floor_bench_bot", "first_name": "Floor"}],
        "chats": [{"id": chat_id, "title": "floor", "bots": [token]}]}))
    fleet.start("floor-telegram", ["-m", "sandbox.telegram_api", "--port", str(tg_port),
                                   "--no-limits", "--world", str(tmp / "floor-world.json")],
                base_env, engine=False)
    fleet.start("floor-llm", ["-m", "sandbox.llm_api", "--port", str(llm_port)], base_env,
                engine=False)
    try:
        await wait_http(f"http://127.0.0.1:{tg_port}/sandbox/stats", 60, fleet)
        await wait_http(f"http://127.0.0.1:{llm_port}/", 60, fleet, any_status=True)
        result = await measure_floor(
            telegram_api_url=f"http://127.0.0.1:{tg_port}/bot", bot_token=token,
            telegram_chat_ids=[chat_id], llm_base_url=f"http://127.0.0.1:{llm_port}/floor/v1",
            database_url=db_url, redis_url=redis_url, samples=opts.floor_samples,
            telegram_per_second=None)
    finally:
        fleet.stop(["floor-telegram", "floor-llm"])
        fleet.procs = [p for p in fleet.procs if not p.name.startswith("floor-")]
    floor: dict[str, Any] = result.as_dict()
    return floor


async def _sleep_checked(seconds: float, fleet: Fleet) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        fleet.check()
        await asyncio.sleep(min(1.0, left))


async def _wait_taken_on(client: httpx.AsyncClient, fleet: Fleet, bots: int) -> None:
    """Wait until the workers drive every bot (``botsim_bots_driven`` summed: lease held
    and client connected)."""
    end = time.monotonic() + STARTUP_S
    held = 0.0
    while time.monotonic() < end:
        fleet.check()
        held = 0.0
        for p in fleet.procs:
            if p.metrics_url and p.name.startswith("worker"):
                held += total(await scrape(client, p.metrics_url), "botsim_bots_driven")
        if held >= bots:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"only {held:.0f} of {bots} bots taken on after {STARTUP_S:.0f} s")


async def _drain(client: httpx.AsyncClient, fleet: Fleet,
                 sm: async_sessionmaker[AsyncSession], redis_url: str | None,
                 ns: str) -> bool:
    """Pause the simulation (the workers decide no more turns) and wait until every worker
    has ended every turn it decided. Returns whether they did within :data:`DRAIN_S`."""
    from backend.cache import TwoLayerCache

    cache = TwoLayerCache(redis_url=redis_url, namespace=ns)
    await cache.start()
    try:
        async with sm() as s, s.begin():
            await settings_store.update_settings(s, changes={"simulation_active": False},
                                                 cache=cache)
        await asyncio.sleep(0.5)
    finally:
        await cache.close()
    end = time.monotonic() + DRAIN_S
    while time.monotonic() < end:
        busy = 0.0
        for p in fleet.procs:
            if p.metrics_url and p.name.startswith("worker"):
                m = await scrape(client, p.metrics_url)
                busy += total(m, "botsim_turns_decided_total") - total(m, "botsim_turns_total")
        if busy <= 0:
            return True
        await asyncio.sleep(0.5)
    return False


# --- the figures -------------------------------------------------------------------------


def _delta(a: Snapshot, b: Snapshot, name: str, **labels: str) -> dict[str, float]:
    """Per worker: ``name`` at ``b`` less at ``a``."""
    return {w: total(b.metrics.get(w, {}), name, **labels) - total(a.metrics.get(w, {}),
                                                                   name, **labels)
            for w in b.metrics}


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den > 0 else None


def _sandbox_sent(snapshot: Snapshot) -> int:
    return sum(int(v) for v in snapshot.sandbox.get("sent", {}).values())


async def compute_figures(
    opts: LoadOptions, sm: async_sessionmaker[AsyncSession], world: World, state: RunState,
    *, floor: dict[str, Any], run_start: Snapshot, measure_start: Snapshot,
    measure_end: Snapshot, final: Snapshot, peaks: dict[str, float], drained: bool,
    database: str, redis: bool, kept: dict[str, str] | None,
) -> dict[str, Any]:
    """The figures of a run (the shape :mod:`loadtest.report` renders).

    * ``throughput``: bot messages whose send Telegram answered (``meta.sent_at``) within
      the measured window, per minute; ``per_bot``: each bot's messages over the run
      against its hourly budget (``over_budget_bots``: bots that sent more than the budget
      in the run, which is shorter than an hour, or more than budget × hours).
    * ``latency_ms``: the sent turns' ``meta.latency_ms`` (decision → Telegram's answer);
      ``overhead_ms``: the same less ``meta.llm_ms`` (the engine's own part, limiter waits
      included); ``wait_ms``: the limiter waits alone.
    * ``human_reply_ms``: from posting a human message to the ``sent_at`` of the first bot
      message replying to it, for those posted in the measured window.
    * ``cpu``: CPU seconds of the engine processes (workers and listener, from ``/proc``)
      in the window, per message delivered in it; the floor and the ratio.
    * ``integrity``: duplicates (stored rows sharing a (chat, Telegram id) or a turn id),
      ``lost_turns`` (decided by a worker but never ended, from its counters after the
      drain, plus turns left at ``intent``), ``unrecorded_sends`` (messages the sandbox
      accepted from our bots but the database does not hold), 429s from the sandbox.
    * ``workers``: messages per worker (``turns.worker``); ``cache`` and ``db``: from the
      workers' and listener's counters over the window.
    """
    window_s = (measure_end.at - measure_start.at).total_seconds()
    async with sm() as s:
        rows = (await s.execute(
            select(Message.id, Message.bot_id, Message.chat_id, Message.meta,
                   Message.reply_to_telegram_message_id)
            .where(Message.bot_id.is_not(None)))).all()
        dup_tg = (await s.execute(select(func.count()).select_from(
            select(Message.chat_id, Message.telegram_message_id)
            .group_by(Message.chat_id, Message.telegram_message_id)
            .having(func.count() > 1).subquery()))).scalar_one()
        dup_turn = (await s.execute(select(func.count()).select_from(
            select(Message.turn_id).where(Message.turn_id.is_not(None))
            .group_by(Message.turn_id).having(func.count() > 1).subquery()))).scalar_one()
        statuses = dict((await s.execute(
            select(TurnRecord.status, func.count()).group_by(TurnRecord.status))).all())
        per_worker_rows = (await s.execute(
            select(TurnRecord.worker, func.count()).where(TurnRecord.status == "sent")
            .group_by(TurnRecord.worker))).all()
        tg_to_bot = {int(tg): int(b) for b, tg in (await s.execute(
            select(Bot.id, Bot.telegram_user_id))).all() if tg is not None}
        tg_of = {int(c): int(tg) for c, tg in (await s.execute(
            select(Chat.id, Chat.telegram_chat_id))).all()}
    t0, t1 = measure_start.at, measure_end.at
    lat, over, wait, timeline_at = [], [], [], []
    per_bot: Counter[int] = Counter()
    in_window = 0
    first_reply: dict[tuple[int, int], datetime] = {}
    for _id, bot_id, chat_id, meta, reply_to in rows:
        sent_at = meta.sent_at
        per_bot[int(bot_id or 0)] += 1
        if sent_at is None:
            continue
        timeline_at.append(sent_at)
        if reply_to is not None:
            key = (tg_of[int(chat_id)], int(reply_to))
            if key not in first_reply or sent_at < first_reply[key]:
                first_reply[key] = sent_at
        if t0 <= sent_at < t1:
            in_window += 1
            if meta.latency_ms is not None:
                lat.append(meta.latency_ms)
                over.append(meta.latency_ms - (meta.llm_ms or 0.0))
                wait.append(meta.wait_ms or 0.0)
    human_ms = []
    posted_in_window = [p for p in state.posted if t0 <= p.at < t1]
    for p in posted_in_window:
        got = first_reply.get((p.telegram_chat_id, p.telegram_message_id))
        if got is not None:
            human_ms.append((got - p.at).total_seconds() * 1000)

    run_s = (measure_end.at - run_start.at).total_seconds()
    hours = max(run_s / 3600, 1e-9)
    budget_cap = opts.msgs_per_hour * max(1.0, math.ceil(hours))
    rates = [per_bot.get(b, 0) / hours for b in range(1, opts.bots + 1)]
    worker_names = sorted(w for w in final.metrics if w.startswith("worker"))
    decided = _delta(run_start, final, "botsim_turns_decided_total")
    ended = _delta(run_start, final, "botsim_turns_total")
    lost_counted = sum(max(0.0, decided[w] - ended[w]) for w in worker_names)
    lost = int(lost_counted) + int(statuses.get("intent", 0))
    db_ids = Counter(int(b) for b in per_bot.elements())
    sandbox_sent = {int(k): int(v) for k, v in final.sandbox.get("sent", {}).items()}
    unrecorded = sum(max(0, n - db_ids.get(tg_to_bot.get(tg, -1), 0))
                     for tg, n in sandbox_sent.items())
    engine_names = list(measure_start.cpu)
    cpu_s = sum(measure_end.cpu.get(n, 0) - measure_start.cpu.get(n, 0) for n in engine_names)
    engine_ms = 1000 * cpu_s / in_window if in_window else None
    q = _delta(measure_start, measure_end, "botsim_db_queries_total")
    queries = sum(q.values())
    l1 = {r: sum(_delta(measure_start, measure_end, "botsim_cache_requests_total",
                        layer="l1", result=r).values()) for r in ("hit", "miss")}
    l2 = {r: sum(_delta(measure_start, measure_end, "botsim_cache_requests_total",
                        layer="l2", result=r).values()) for r in ("hit", "miss")}
    per_worker = {str(w): int(n) for w, n in per_worker_rows}
    named = {}
    for name in worker_names:  # turns.worker holds the worker id, which starts with its name
        named[name] = sum(n for w, n in per_worker.items() if w.startswith(f"{name}-")
                          or w == name)
    tl_start = run_start.at
    buckets: Counter[int] = Counter(int((t - tl_start).total_seconds() // BUCKET_S)
                                    for t in timeline_at if t >= tl_start)
    n_buckets = math.ceil((measure_end.at - tl_start).total_seconds() / BUCKET_S)
    timeline = [{"t_s": i * BUCKET_S, "messages": buckets.get(i, 0),
                 "phase": "warmup" if i * BUCKET_S < opts.warmup else "measure"}
                for i in range(n_buckets)]
    warm_msgs = sum(1 for t in timeline_at if run_start.at <= t < t0)
    warm_s = (t0 - run_start.at).total_seconds()
    target = opts.bots * opts.msgs_per_hour / 60
    floor_ms = float(floor.get("total", 0.0))
    ratio = _ratio(engine_ms, floor_ms) if engine_ms is not None else None
    latency = percentiles(lat)
    overhead = percentiles(over)
    figures: dict[str, Any] = {
        "config": {
            "bots": opts.bots, "chats": opts.chats, "workers": opts.workers,
            "duration_s": opts.duration_s, "warmup_s": opts.warmup,
            "llm_latency_ms": opts.llm_latency_ms, "llm_jitter_ms": opts.llm_jitter_ms,
            "human_rate_per_min": opts.human_rate_per_min,
            "msgs_per_hour": opts.msgs_per_hour, "seed": opts.seed,
            "in_flight": opts.in_flight, "database": database, "redis": redis,
            "machine": machine(), "started_at": run_start.at.isoformat(timespec="seconds"),
            "kept": kept,
        },
        "warmup": {"seconds": round(warm_s, 1), "messages": warm_msgs,
                   "msgs_per_min": round(warm_msgs / warm_s * 60, 1) if warm_s > 0 else None},
        "throughput": {
            "messages": in_window, "seconds": round(window_s, 1),
            "window": {"start": t0.isoformat(), "end": t1.isoformat()},
            "msgs_per_min": round(in_window / window_s * 60, 1) if window_s > 0 else None,
            "target_msgs_per_min": round(target, 1),
            "per_bot": {"mean_per_hour": round(float(np.mean(rates)), 2),
                        "max_per_hour": round(float(np.max(rates)), 2),
                        "budget_per_hour": opts.msgs_per_hour,
                        "over_budget_bots": sum(1 for n in per_bot.values()
                                                if n > budget_cap)},
        },
        "latency_ms": latency,
        "overhead_ms": overhead,
        "wait_ms": percentiles(wait),
        "human_reply_ms": {"posted": len(posted_in_window), "answered": len(human_ms),
                           "post_errors": state.post_errors, **percentiles(human_ms)},
        "cpu": {
            "engine_cpu_s": round(cpu_s, 2),
            "engine_ms_per_msg": round(engine_ms, 3) if engine_ms is not None else None,
            "floor_ms_per_msg": round(floor_ms, 3), "ratio": ratio, "floor": floor,
            "per_process": {n: round(measure_end.cpu.get(n, 0) - measure_start.cpu.get(n, 0),
                                     2) for n in engine_names},
        },
        "memory": {"peak_rss_mb": peaks,
                   "max_peak_rss_mb": max((v for k, v in peaks.items()
                                           if k.startswith("worker")), default=None)},
        "integrity": {
            "duplicates": int(dup_tg) + int(dup_turn), "duplicate_telegram_ids": int(dup_tg),
            "duplicate_turn_ids": int(dup_turn), "lost_turns": lost,
            "drained": drained, "unrecorded_sends": unrecorded,
            "telegram_429": int(final.sandbox.get("too_many_requests", 0)),
            "failed_turns": int(statuses.get("failed", 0)),
            "unknown_turns": int(statuses.get("unknown", 0)),
            "errors": int(sum(_delta(run_start, final, "botsim_turns_total",
                                     outcome="failed").values())),
            "turn_statuses": {str(k): int(v) for k, v in statuses.items()},
        },
        "workers": {"messages": named, "max": max(named.values(), default=0),
                    "min": min(named.values(), default=0)},
        "cache": {"l1_hit_rate": _ratio(l1["hit"], l1["hit"] + l1["miss"]),
                  "l2_hit_rate": _ratio(l2["hit"], l2["hit"] + l2["miss"]),
                  "lookups": int(l1["hit"] + l1["miss"])},
        "db": {"queries": int(queries), "queries_per_msg": _ratio(queries, in_window)},
        "timeline": timeline,
        "latency_samples_ms": [round(x, 2) for x in lat],
        "overhead_samples_ms": [round(x, 2) for x in over],
    }
    figures["targets"] = targets(figures)
    return figures


def targets(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 7's targets: 0 duplicates, 0 lost turns, engine overhead p99 ≤ 250 ms, engine
    CPU per message ≤ 1.5 × the floor (and no bot over its budget)."""
    def row(value: float | None, limit: float) -> dict[str, Any]:
        return {"value": value, "limit": limit, "ok": value is not None and value <= limit}

    integ = figures["integrity"]
    return {
        "duplicates": row(integ["duplicates"], 0),
        "lost_turns": row(integ["lost_turns"] + integ["unrecorded_sends"], 0),
        "overhead_p99_ms": row(figures["overhead_ms"]["p99"], 250.0),
        "cpu_ratio": row(figures["cpu"]["ratio"], 1.5),
        "over_budget_bots": row(figures["throughput"]["per_bot"]["over_budget_bots"], 0),
    }


def machine() -> dict[str, Any]:
    """This machine: cores, memory (GiB), Python and platform."""
    return {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30,
                                                        1),
            "python": platform.python_version(), "platform": platform.platform()}


def options_dict(opts: LoadOptions) -> dict[str, Any]:
    """The options as a JSON-ready dict."""
    return asdict(opts)

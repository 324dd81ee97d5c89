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

This module runs the phases; the pieces live beside it and are re-exported here:
:mod:`loadtest.options` (:class:`LoadOptions` and its checks), :mod:`loadtest.fleet` (the
processes: start, watch, stop) and :mod:`loadtest.figures` (metrics parsing, the figures
and the targets).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.fernet import Fernet
from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher
from backend.db.session import make_engine, make_sessionmaker, upgrade
from backend.redis_client import make_redis, redacted_url
from backend.stores import settings as settings_store
from loadtest.figures import (
    BUCKET_S,
    Posted,
    RunState,
    Samples,
    Snapshot,
    compute_figures,
    hist_quantile,
    machine,
    percentiles,
    scrape,
    targets,
    total,
)
from loadtest.fleet import ROOT, Fleet, Proc, free_port, wait_http
from loadtest.options import (
    DEFAULT_PG_ADMIN,
    DEFAULT_REDIS,
    LOOPBACK,
    LoadOptions,
    options_dict,
    py_spy,
)
from loadtest.world import World, generate_world, sandbox_world, seed_database

# Re-exported: these lived here before the split, and callers import them from here.
__all__ = [
    "BUCKET_S", "DEFAULT_PG_ADMIN", "DEFAULT_REDIS", "DRAIN_S", "HUMAN_TEXTS", "LOOPBACK",
    "ROOT", "STARTUP_S", "WATCH_METRICS_EVERY", "Fleet", "LoadOptions", "Posted", "Proc",
    "RunState", "Samples", "Snapshot", "compute_figures", "free_port", "hist_quantile",
    "machine", "options_dict", "percentiles", "run_load", "scrape", "targets", "total",
    "wait_http",
]

#: The live display reads the workers' /metrics every this many 2-s rounds (scraping
#: costs the workers CPU, which the figures count).
WATCH_METRICS_EVERY = 5
#: How long the workers may take to end their turns once the simulation is paused.
DRAIN_S = 60.0
#: Seconds between two scrapes of the workers while draining.
DRAIN_POLL_S = 0.5
#: How long the bots may take to be taken on (10,000 bots: webhooks and leases).
STARTUP_S = 300.0
HUMAN_TEXTS = (
    "Dolar bugün nereye gider sizce?", "BIST'te satış baskısı var mı?",
    "Altın almak için geç mi kaldım?", "Faiz kararı ne olur, fikri olan?",
    "Bitcoin 100 bini görür mü bu ay?", "Enflasyon verisi piyasayı nasıl etkiler?",
    "Bugün hangi hisseye bakıyorsunuz?", "Euro da dolar gibi yükselir mi?",
)

#: The load test measures capacity: a steady stream at the budgets, not the bursts and lulls
#: of a believable chat (issue 14), whose rate moves from one window to the next and would
#: make runs of different length, start or worker count incomparable.
STEADY_STREAM: dict[str, Any] = {
    "budget_use": 1.0, "burst_mean_msgs": 1.0, "lull_sigma": 0.3,
    "bot_daily_profile": False, "human_reply_reserve": 0.0, "chatter_pacing": False,
}


# --- the run -----------------------------------------------------------------------------


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
    client = make_redis(redis_url, role="commands")
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


def write_targets(folder: Path, targets: dict[str, list[str]]) -> None:
    """Write one Prometheus ``file_sd`` file per job (``<folder>/<job>.json``: a list of
    ``{"targets": [host:port…], "labels": {"run": "loadtest"}}``), each replaced atomically
    (Prometheus re-reads a file when it changes; a half-written one is never seen)."""
    for job, addresses in targets.items():
        body = [{"targets": addresses, "labels": {"run": "loadtest"}}] if addresses else []
        part = folder / f".{job}.json.tmp"
        part.write_text(json.dumps(body))
        part.replace(folder / f"{job}.json")


async def _check_redis(url: str) -> None:
    client = make_redis(url, role="commands")
    try:
        await client.ping()
    except Exception as exc:
        raise RuntimeError(f"Redis at {redacted_url(url)} not reachable: {exc}") from exc
    finally:
        await client.aclose()


async def seed_run(sm: async_sessionmaker[AsyncSession], world: World, fernet: str,
                   msgs_per_hour: float) -> None:
    """Store ``world`` (tokens encrypted with the Fernet key ``fernet``) and the run's
    settings: each bot's budget ``msgs_per_hour``, the steady stream
    (:data:`STEADY_STREAM`), no prime hours, and no reading or typing pauses or slot lead
    (throughput stays comparable, and a turn's latency is the engine and the LLM: a turn
    decided a writing lead early would wait for its due time, counted as engine
    overhead). One transaction."""
    async with sm() as s, s.begin():
        await seed_database(s, world, cipher=TokenCipher(fernet))
        await settings_store.update_settings(s, changes={
            "bot_hourly_msg_limit": {"min": msgs_per_hour, "max": msgs_per_hour},
            "max_msgs_per_min": 20, "scale_factor": 1.0,
            "prime_hours": {"hours": [], "boost": 1.0, "timezone": "UTC"},
            "reading_cap_s": 0.0, "typing_cap_s": 0.0, "writing_lead_s": 0.0,
            **STEADY_STREAM})


async def _run(opts: LoadOptions, console: Console, tmp: Path, fleet: Fleet, ns: str,
               redis_url: str | None, db_url: str,
               sm: async_sessionmaker[AsyncSession], base_env: dict[str, str],
               state: RunState, measure_floor: Any) -> dict[str, Any]:
    state.phase = "seeding"
    fernet = Fernet.generate_key().decode()
    world = generate_world(opts.bots, opts.chats, seed=opts.seed)
    await seed_run(sm, world, fernet, opts.msgs_per_hour)
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
                  "max_tokens": 120,
                  # a budget never reached (its gauge, botsim_llm_budget_left_ratio, is
                  # what a scraping Prometheus sees of budgets)
                  "requests_per_min": 1_000_000}]
    env = {**base_env, "BOTSIM_DATABASE_URL": db_url, "BOTSIM_FERNET_KEY": fernet,
           "BOTSIM_WEBHOOK_SECRET": secrets.token_urlsafe(32),
           "BOTSIM_TELEGRAM_API_URL": f"{tg_base}/bot",
           "BOTSIM_PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{listener_port}",
           "BOTSIM_LISTENER_PORT": str(listener_port),
           "BOTSIM_LLM_PROVIDERS": json.dumps(providers),
           # priced like a small hosted model, so the run's cost figures are not all zero
           "BOTSIM_LLM_PRICES": json.dumps({"load-model": {"input": 0.05, "output": 0.08}}),
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
    targets: dict[str, list[str]] = {"listener": [f"127.0.0.1:{listener_port}"],
                                     "api": [], "worker": []}
    if opts.targets_dir is not None:
        # The admin API is not on the message path: not an engine process, and its
        # /metrics is left to Prometheus (it is not in the run's own figures).
        api_port = free_port()
        (tmp / "api").mkdir()
        fleet.start("api", ["-m", "botsim", "api"],
                    {**env, "BOTSIM_DATA_DIR": str(tmp / "api"),
                     "BOTSIM_API_HOST": "127.0.0.1", "BOTSIM_API_PORT": str(api_port)},
                    engine=False)
        targets["api"].append(f"127.0.0.1:{api_port}")
        write_targets(opts.targets_dir, targets)
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
        targets["worker"].append(f"127.0.0.1:{port}")
    if opts.targets_dir is not None:
        write_targets(opts.targets_dir, targets)
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
            profiler = _start_profile(opts, fleet)
            await _sleep_checked(opts.duration_s - opts.warmup, fleet)
            measure_end = await _snapshot(client, fleet, tg_base)
            if profiler is not None:
                await _end_profile(profiler, opts)
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


def _start_profile(opts: LoadOptions, fleet: Fleet) -> subprocess.Popen[bytes] | None:
    """py-spy attached to ``worker-1`` for the measured window (``opts.profile_path``), its
    output in a log beside the profile; None without ``--profile``."""
    if opts.profile_path is None:
        return None
    spy = py_spy()
    if spy is None:  # validate() refused this already
        raise RuntimeError("py-spy is not installed")
    worker = next(p for p in fleet.procs if p.name == "worker-1")
    window = max(1, round(opts.duration_s - opts.warmup))
    fmt = "speedscope" if opts.profile_path.suffix == ".json" else "flamegraph"
    log_path = opts.profile_path.with_name(opts.profile_path.name + ".log")
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [spy, "record", "--pid", str(worker.popen.pid), "--duration", str(window),
             "--rate", "100", "--nonblocking", "--format", fmt,
             "--output", str(opts.profile_path)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)


async def _end_profile(profiler: subprocess.Popen[bytes], opts: LoadOptions) -> None:
    """Wait for py-spy to write the profile (it stops after the window; 30 s more at most).

    Raises:
        RuntimeError: py-spy failed or wrote nothing (its log's tail attached).
    """
    assert opts.profile_path is not None
    for _ in range(300):
        if profiler.poll() is not None:
            break
        await asyncio.sleep(0.1)
    else:
        profiler.kill()
        profiler.wait()
    log_path = opts.profile_path.with_name(opts.profile_path.name + ".log")
    if profiler.returncode != 0 or not opts.profile_path.is_file():
        tail = log_path.read_text(errors="replace")[-1500:] if log_path.is_file() else ""
        raise RuntimeError(f"py-spy exited {profiler.returncode} without a profile: {tail}")


async def _drain(client: httpx.AsyncClient, fleet: Fleet,
                 sm: async_sessionmaker[AsyncSession], redis_url: str | None,
                 ns: str) -> bool:
    """Pause the simulation and wait until every worker has seen the pause (its
    ``botsim_simulation_active`` reads 0: it decides no more turns) and has ended every turn
    it decided. Returns whether they did within :data:`DRAIN_S`.

    Without Redis the pause reaches a worker only when its cached settings expire
    (``backend.settings.LOCAL_CACHE_TTL_S``); a worker that had not yet seen it could decide
    a turn after an idle moment, which the figures would count as lost."""
    from backend.cache import TwoLayerCache

    cache = TwoLayerCache(redis_url=redis_url, namespace=ns)
    await cache.start()
    try:
        async with sm() as s, s.begin():
            await settings_store.update_settings(s, changes={"simulation_active": False},
                                                 cache=cache)
        await asyncio.sleep(DRAIN_POLL_S)
    finally:
        await cache.close()
    end = time.monotonic() + DRAIN_S
    while time.monotonic() < end:
        busy, active = 0.0, 0.0
        for p in fleet.procs:
            if p.metrics_url and p.name.startswith("worker"):
                m = await scrape(client, p.metrics_url)
                busy += total(m, "botsim_turns_decided_total") - total(m, "botsim_turns_total")
                active += total(m, "botsim_simulation_active")
        if busy <= 0 and active <= 0:
            return True
        await asyncio.sleep(DRAIN_POLL_S)
    return False

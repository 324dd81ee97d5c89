"""``botsim chaos``: the sharded engine under load, with faults on purpose (issue 19).

Everything runs on 127.0.0.1 as in ``botsim loadtest`` (:mod:`loadtest.runner`): the sandbox
Telegram and LLM servers, the webhook listener and W workers, each its own process. What
differs is that the run owns the services it breaks: a PostgreSQL cluster and a Redis
server of its own (:mod:`loadtest.chaos_infra`), so restarting them touches nothing else on
the machine; each worker reaches Redis through a TCP proxy that can cut it off; with the
``clock_jump`` fault each worker runs under libfaketime, so its wall clock can be stepped.

The faults (:mod:`loadtest.chaos_schedule`, drawn from ``--seed`` so a failing run can be
replayed): ``kill -9`` of a worker (started again later) and of the listener (while humans
post: the sandbox Telegram retries undelivered updates with Telegram's backoff, in order);
Redis restarted with its data gone; PostgreSQL restarted (an immediate, crash-like stop);
one LLM provider failing for a minute (503s, then timeouts, then slow answers); a 429 storm
on a tenth of the bots; a worker cut off from Redis for longer than its lease, without
being killed; a worker's wall clock jumping.

At the end every fault is undone, the human messages are given time to be answered, the
simulation is paused and the workers drain; then the figures (:mod:`loadtest.chaos_figures`)
are computed from the database and the sandbox's own chat logs, and the verdict says which
promise held. Every process and service the run started is stopped, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from cryptography.fernet import Fernet
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db.session import make_engine, make_sessionmaker
from backend.errors import ValidationFailed
from backend.stores import figures as figures_store
from backend.stores import turns as turn_store
from loadtest.chaos_figures import Happened, Send, Stored, chaos_figures, verdict
from loadtest.chaos_infra import FakeClock, FaultProxy, PrivatePostgres, PrivateRedis
from loadtest.chaos_schedule import FAULT_KINDS, FaultEvent, make_schedule
from loadtest.figures import RunState, scrape, total
from loadtest.fleet import Fleet, free_port, wait_http
from loadtest.options import LoadOptions
from loadtest.runner import _database, _drain, _post_humans, _wait_taken_on, seed_run
from loadtest.world import World, generate_world, sandbox_world

#: The two providers, both served by the sandbox LLM: the outage hits the first; the chain
#: falls back to the second (and to the offline generator after it).
PROVIDERS = ("primary", "backup")
#: The processes' Redis namespace (the run's Redis is its own).
NAMESPACE = "botsim-chaos"
#: A provider's timeout in the run, seconds: a hung call gives way to the fallback this fast.
PROVIDER_TIMEOUT_S = 5.0
#: The slow answers of an outage's last third, ms (longer than the provider's timeout).
SLOW_MS = 8000.0
#: Before the run's clock starts: the turns' first slots come round (seconds, at most;
#: a tenth of the duration when that is less).
WARMUP_MAX_S = 20.0
#: After the run: how long human messages still waiting may take to be answered, seconds.
ANSWER_GRACE_S = 45.0
#: How often the runner samples the bots driven (s) and each process's memory and
#: descriptors (every this many samples).
SAMPLE_S = 1.0
RESOURCE_EVERY = 5


@dataclass
class ChaosOptions:
    """One ``botsim chaos`` run.

    Attributes:
        duration_s: the run after start-up, seconds: a quiet fifth, the faults, a quiet
            fifth (:mod:`loadtest.chaos_schedule`).
        workers / bots / chats: worker processes; generated personas; groups (default: a
            tenth of the bots, at least 2).
        seed: the world, the human messages and the fault schedule draw from it.
        kinds: the faults to inject (:data:`~loadtest.chaos_schedule.FAULT_KINDS`).
        msgs_per_hour: each bot's hourly budget.
        human_rate_per_min: human messages per minute over all groups (Poisson).
        llm_latency_ms: the sandbox LLM's answer time.
        heartbeat_ttl_s: the workers' heartbeat and lease TTL (``BOTSIM_HEARTBEAT_TTL_S``).
        keep: keep the data directory (logs) and print where it is.
        progress: print each fault as it happens (standard error).
        extra_env: more environment for the engine's processes (``BOTSIM_…`` settings).
    """

    duration_s: float = 300.0
    workers: int = 4
    bots: int = 200
    chats: int | None = None
    seed: int = 1
    kinds: tuple[str, ...] = FAULT_KINDS
    msgs_per_hour: float = 30.0
    human_rate_per_min: float = 6.0
    llm_latency_ms: float = 300.0
    heartbeat_ttl_s: float = 10.0
    keep: bool = False
    progress: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def n_chats(self) -> int:
        """The groups of the run (``chats`` or its default)."""
        return self.chats if self.chats is not None else max(2, self.bots // 10)

    def validate(self) -> None:
        """Raises ValidationFailed naming every option out of range."""
        checks = [
            ("--duration", 10 <= self.duration_s <= 24 * 3600, "from 10 s to 24 h"),
            ("--workers", 1 <= self.workers <= 64, "from 1 to 64"),
            ("--bots", 2 <= self.bots <= 20_000, "from 2 to 20,000"),
            ("--chats", 1 <= self.n_chats <= self.bots, "from 1 to the number of bots"),
            ("--msgs-per-hour", 0 < self.msgs_per_hour <= 600, "above 0, at most 600"),
            ("--human-rate", 0 <= self.human_rate_per_min <= 600, "from 0 to 600"),
            ("--llm-latency-ms", 0 <= self.llm_latency_ms <= 60_000, "from 0 to 60,000"),
            ("--heartbeat-ttl", 1 <= self.heartbeat_ttl_s <= 300, "from 1 to 300 s"),
        ]
        problems = [(name, f"must be {rule}") for name, ok, rule in checks if not ok]
        unknown = [k for k in self.kinds if k not in FAULT_KINDS]
        if unknown or not self.kinds:
            problems.append(("--faults", f"unknown or none: {unknown}; known: "
                             + ", ".join(FAULT_KINDS)))
        if problems:
            raise ValidationFailed("botsim chaos", problems)
        try:
            self.schedule()
        except ValueError as exc:
            raise ValidationFailed("botsim chaos", [("--faults", str(exc))]) from exc

    def schedule(self) -> list[FaultEvent]:
        """The run's faults (:func:`~loadtest.chaos_schedule.make_schedule`); bots are
        numbered as :func:`~loadtest.world.generate_world` numbers them."""
        world = generate_world(self.bots, self.n_chats, seed=self.seed)
        return make_schedule(seed=self.seed, duration_s=self.duration_s, kinds=self.kinds,
                             workers=self.workers, bot_ids=[b.user_id for b in world.bots],
                             providers=PROVIDERS, heartbeat_ttl_s=self.heartbeat_ttl_s)


@dataclass
class _Run:
    """What a run holds while it goes: its processes, services and samples."""

    opts: ChaosOptions
    console: Console
    tmp: Path
    fleet: Fleet
    redis: PrivateRedis
    postgres: PrivatePostgres
    proxies: dict[str, FaultProxy] = field(default_factory=dict)
    clocks: dict[str, FakeClock] = field(default_factory=dict)
    tg_base: str = ""
    llm_base: str = ""
    listener_port: int = 0
    happened: list[Happened] = field(default_factory=list)
    driven: list[tuple[float, float]] = field(default_factory=list)
    resources: dict[str, list[tuple[float, float, float, float]]] = field(
        default_factory=dict)

    def say(self, text: str) -> None:
        if self.opts.progress:
            self.console.print(f"[dim]{text}[/dim]")


async def run_chaos(opts: ChaosOptions, *, out: Console | None = None) -> dict[str, Any]:
    """Run ``opts`` and return its figures (:func:`~loadtest.chaos_figures.chaos_figures`)
    with ``schedule`` (the faults planned) and ``verdict``
    (:func:`~loadtest.chaos_figures.verdict`).

    Raises:
        ValidationFailed: an option is out of range (named).
        RuntimeError: a service could not start, a process exited when no fault was
            meant to stop it, or the bots were not all taken on; everything is stopped
            first.
    """
    opts.validate()
    console = out or Console(stderr=True)
    tmp = Path(tempfile.mkdtemp(prefix="botsim-chaos-"))
    (tmp / "logs").mkdir()
    fleet = Fleet(tmp / "logs")
    redis = PrivateRedis(log=tmp / "logs" / "redis.log")
    postgres = PrivatePostgres()
    run = _Run(opts, console, tmp, fleet, redis, postgres)
    try:
        run.say("starting PostgreSQL and Redis of the run's own…")
        await postgres.start()
        await redis.start()
        return await _with_database(run)
    finally:
        fleet.stop(timeout=10)
        for proxy in run.proxies.values():
            with contextlib.suppress(Exception):
                await proxy.stop()
        for clock in run.clocks.values():  # libfaketime's shared files in /dev/shm
            clock.close()
        with contextlib.suppress(Exception):
            await redis.stop()
        with contextlib.suppress(Exception):
            await postgres.stop()
        if opts.keep:
            console.print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


async def _with_database(run: _Run) -> dict[str, Any]:
    opts = run.opts
    lopts = LoadOptions(bots=opts.bots, chats=opts.n_chats, workers=opts.workers,
                        duration_s=opts.duration_s, llm_latency_ms=opts.llm_latency_ms,
                        human_rate_per_min=opts.human_rate_per_min,
                        msgs_per_hour=opts.msgs_per_hour, seed=opts.seed,
                        database_url=run.postgres.url, redis_url=run.redis.url,
                        keep=False, progress=False)
    async with _database(lopts, run.tmp) as db_url:
        engine = make_engine(db_url, pool_size=2)
        sm = make_sessionmaker(engine)
        try:
            return await _run(run, lopts, db_url, sm)
        finally:
            run.fleet.stop(timeout=10)  # before the database is dropped under them
            await engine.dispose()


async def _run(run: _Run, lopts: LoadOptions, db_url: str,
               sm: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    opts, fleet, tmp = run.opts, run.fleet, run.tmp
    schedule = opts.schedule()
    fernet = Fernet.generate_key().decode()
    world = generate_world(opts.bots, opts.n_chats, seed=opts.seed)
    await seed_run(sm, world, fernet, opts.msgs_per_hour)
    (tmp / "world.json").write_text(json.dumps(sandbox_world(world)))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSIM_")
                and k not in ("DATABASE_URL", "REDIS_URL")}
    tg_port, llm_port = free_port(), free_port()
    run.tg_base, run.llm_base = f"http://127.0.0.1:{tg_port}", f"http://127.0.0.1:{llm_port}"
    run.listener_port = free_port()
    fleet.start("sandbox-telegram", ["-m", "sandbox.telegram_api", "--port", str(tg_port),
                                     "--world", str(tmp / "world.json")], base_env,
                engine=False)
    latency = [a for p in PROVIDERS for a in ("--latency", f"{p}={opts.llm_latency_ms:g}")]
    fleet.start("sandbox-llm", ["-m", "sandbox.llm_api", "--port", str(llm_port), *latency],
                base_env, engine=False)
    await wait_http(f"{run.tg_base}/sandbox/stats", 60, fleet)
    await wait_http(f"{run.llm_base}/sandbox/stats", 60, fleet)
    providers = [{"name": p, "kind": "openai_compatible", "model": "chaos-model",
                  "base_url": f"{run.llm_base}/{p}/v1", "timeout_s": PROVIDER_TIMEOUT_S,
                  "max_tokens": 120, "requests_per_min": 1_000_000} for p in PROVIDERS]
    env = {**base_env, "BOTSIM_DATABASE_URL": db_url, "BOTSIM_FERNET_KEY": fernet,
           "BOTSIM_WEBHOOK_SECRET": secrets.token_urlsafe(32),
           "BOTSIM_TELEGRAM_API_URL": f"{run.tg_base}/bot",
           "BOTSIM_PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{run.listener_port}",
           "BOTSIM_LISTENER_PORT": str(run.listener_port),
           "BOTSIM_LLM_PROVIDERS": json.dumps(providers),
           "BOTSIM_REDIS_URL": run.redis.url, "BOTSIM_REDIS_NAMESPACE": NAMESPACE,
           "BOTSIM_SEED": str(opts.seed),
           "BOTSIM_HEARTBEAT_TTL_S": f"{opts.heartbeat_ttl_s:g}",
           "BOTSIM_LOG_LEVEL": "WARNING", "PTB_TIMEDELTA": "true", **opts.extra_env}
    (tmp / "listener").mkdir()
    fleet.start("listener", ["-m", "botsim", "listener", "--register"],
                {**env, "BOTSIM_DATA_DIR": str(tmp / "listener")}, engine=True,
                metrics_url=f"http://127.0.0.1:{run.listener_port}/metrics")
    await wait_http(f"http://127.0.0.1:{run.listener_port}/health/ready", 300, fleet)
    with_clock = "clock_jump" in opts.kinds and FakeClock.available()
    for i in range(1, opts.workers + 1):
        name, port = f"worker-{i}", free_port()
        proxy = FaultProxy("127.0.0.1", run.redis.port)
        await proxy.start()
        run.proxies[name] = proxy
        wenv = {**env, "BOTSIM_DATA_DIR": str(tmp / name), "BOTSIM_METRICS_PORT": str(port),
                "BOTSIM_WORKER_NAME": name,
                "BOTSIM_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}
        if with_clock:
            run.clocks[name] = FakeClock(tmp / f"{name}.faketime")
            wenv.update(run.clocks[name].env())
        (tmp / name).mkdir()
        fleet.start(name, ["-m", "botsim", "worker"], wenv, engine=True,
                    metrics_url=f"http://127.0.0.1:{port}/metrics")
    run.say(f"{opts.workers} workers taking on {opts.bots} bots…")
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        await _wait_taken_on(client, fleet, opts.bots)
        warmup = min(WARMUP_MAX_S, opts.duration_s * 0.1)
        run.say(f"warming up {warmup:g} s…")
        await _sleep_watching(run, warmup)
        state = RunState()
        stop = asyncio.Event()
        run_start = time.time()
        run.say(f"running {opts.duration_s:g} s with {len(schedule)} faults "
                f"(seed {opts.seed})")
        tasks = [asyncio.create_task(_post_humans(lopts, world, run.tg_base, state, stop)),
                 asyncio.create_task(_sample(run, client, stop))]
        faults = asyncio.create_task(_inject_all(run, schedule, run_start))
        try:
            await _sleep_watching(run, opts.duration_s)
            stop.set()
            await faults
        finally:
            stop.set()
            faults.cancel()
            await asyncio.gather(*tasks, faults, return_exceptions=True)
            await _heal_all(run, client)
        run_end = time.time()
        posted = [(p.telegram_chat_id, p.telegram_message_id, p.at.timestamp())
                  for p in state.posted]
        run.say("every fault undone; waiting for the last human messages' answers…")
        await _await_answers(run, client, world, posted)
        drained = await _drain(client, fleet, sm, run.redis.url, NAMESPACE)
        sends = await _sends(client, run.tg_base, world)
    stored = await _stored(sm)
    fleet.stop(timeout=10)
    config = {**{k: v for k, v in asdict(opts).items() if k != "extra_env"},
              "chats": opts.n_chats, "kinds": list(opts.kinds), "drained": drained,
              "post_errors": state.post_errors, "clock_faults": with_clock}
    figures = chaos_figures(
        sends=sends, stored=stored, posted=posted, faults=run.happened, driven=run.driven,
        resources=run.resources, bots=opts.bots, bot_ids=[b.user_id for b in world.bots],
        run_start=run_start, run_end=run_end, heartbeat_ttl_s=opts.heartbeat_ttl_s,
        config=config)
    figures["schedule"] = [e.as_dict() for e in schedule]
    figures["verdict"] = verdict(figures)
    return figures


async def _sleep_watching(run: _Run, seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        run.fleet.check()
        await asyncio.sleep(min(1.0, left))


async def _sample(run: _Run, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
    """Every :data:`SAMPLE_S`: the bots the live workers drive (summed); every
    :data:`RESOURCE_EVERY` samples, each engine process's RSS (MiB) and open descriptors,
    keyed ``name#pid`` (a restarted process is a new series)."""
    n = 0
    while not stop.is_set():
        driven = 0.0
        tasks: dict[str, float] = {}
        for p in run.fleet.procs:
            if p.name.startswith("worker") and not p.down and p.metrics_url:
                page = await scrape(client, p.metrics_url)
                driven += total(page, "botsim_bots_driven")
                if page:
                    tasks[p.name] = total(page, "botsim_event_loop_tasks")
        run.driven.append((time.time(), driven))
        if n % RESOURCE_EVERY == 0:
            for p in run.fleet.procs:
                if not p.engine or p.down:
                    continue
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(p.popen.pid)
                    run.resources.setdefault(f"{p.name}#{p.popen.pid}", []).append(
                        (time.time(), proc.memory_info().rss / 2**20, float(proc.num_fds()),
                         tasks.get(p.name, -1.0)))
        n += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_S)


async def _inject_all(run: _Run, schedule: list[FaultEvent], run_start: float) -> None:
    """Start each fault at its time (each in a task of its own: faults overlap); wait for
    them all."""
    running: list[asyncio.Task[None]] = []
    for event in schedule:
        delay = run_start + event.at_s - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        running.append(asyncio.create_task(_inject(run, event)))
    await asyncio.gather(*running)


async def _inject(run: _Run, event: FaultEvent) -> None:
    """Do ``event`` and undo it when its time is up; record it in ``run.happened`` (with
    the error, when it could not be done: the run goes on)."""
    start = time.time()
    run.say(f"t+{event.at_s:5.1f} s  {event.kind} on {event.target}")
    error = None
    try:
        await _FAULTS[event.kind](run, event)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        run.say(f"  {event.kind} failed: {error}")
    run.happened.append(Happened(event.as_dict(), start, time.time(), error))


async def _worker_kill(run: _Run, event: FaultEvent) -> None:
    run.fleet.kill(event.target)
    await asyncio.sleep(float(event.detail["restart_after_s"]))
    run.fleet.restart(event.target)


async def _listener_kill(run: _Run, event: FaultEvent) -> None:
    run.fleet.kill("listener")
    await asyncio.sleep(event.lasts_s)
    run.fleet.restart("listener")
    await wait_http(f"http://127.0.0.1:{run.listener_port}/health/live", 60)


async def _redis_restart(run: _Run, event: FaultEvent) -> None:
    await run.redis.restart_empty(down_s=event.lasts_s)


async def _postgres_restart(run: _Run, event: FaultEvent) -> None:
    await run.postgres.restart(down_s=event.lasts_s)


async def _llm_outage(run: _Run, event: FaultEvent) -> None:
    third = event.lasts_s / 3
    modes: list[dict[str, Any]] = [{"kind": "status", "code": 503}, {"kind": "hang"},
                                   {"kind": "ok", "latency_ms": SLOW_MS}]
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        for fault in modes:
            r = await client.post(f"{run.llm_base}/sandbox/faults", json={
                "provider": event.target, "fault": fault, "seconds": third})
            r.raise_for_status()
            await asyncio.sleep(third)


async def _telegram_429(run: _Run, event: FaultEvent) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        r = await client.post(f"{run.tg_base}/sandbox/storm", json={
            "bot_ids": event.detail["bot_ids"], "seconds": event.lasts_s,
            "retry_after": event.detail["retry_after_s"]})
        r.raise_for_status()
    await asyncio.sleep(event.lasts_s)


async def _redis_partition(run: _Run, event: FaultEvent) -> None:
    proxy = run.proxies[event.target]
    proxy.cut()
    try:
        await asyncio.sleep(event.lasts_s)
    finally:
        proxy.heal()


async def _clock_jump(run: _Run, event: FaultEvent) -> None:
    clock = run.clocks.get(event.target)
    if clock is None:
        raise RuntimeError("libfaketime is not installed (apt-get install faketime): the "
                           "workers run on the real clock")
    clock.jump(float(event.detail["jump_s"]))


_FAULTS: dict[str, Callable[[_Run, FaultEvent], Coroutine[Any, Any, None]]] = {
    "worker_kill": _worker_kill, "listener_kill": _listener_kill,
    "redis_restart": _redis_restart, "postgres_restart": _postgres_restart,
    "llm_outage": _llm_outage, "telegram_429": _telegram_429,
    "redis_partition": _redis_partition, "clock_jump": _clock_jump,
}


async def _heal_all(run: _Run, client: httpx.AsyncClient) -> None:
    """Undo whatever fault may still hold (the run was cut short, or a fault failed):
    every proxy healed, LLM faults and storms cleared, every process running."""
    for proxy in run.proxies.values():
        proxy.heal()
    for provider in PROVIDERS:
        with contextlib.suppress(httpx.HTTPError):
            await client.post(f"{run.llm_base}/sandbox/faults",
                              json={"provider": provider, "fault": None})
    with contextlib.suppress(httpx.HTTPError):
        await client.delete(f"{run.tg_base}/sandbox/storm")
    for p in run.fleet.procs:
        if p.down:
            run.fleet.restart(p.name)


async def _await_answers(run: _Run, client: httpx.AsyncClient, world: World,
                         posted: list[tuple[int, int, float]]) -> None:
    """Wait (at most :data:`ANSWER_GRACE_S`) until every posted human message has an answer
    in the sandbox's log."""
    end = time.monotonic() + ANSWER_GRACE_S
    while time.monotonic() < end:
        run.fleet.check()
        answered = {(s.chat, s.reply_to) for s in await _sends(client, run.tg_base, world)}
        if all((c, m) in answered for c, m, _a in posted):
            return
        await asyncio.sleep(2.0)


async def _sends(client: httpx.AsyncClient, tg_base: str, world: World) -> list[Send]:
    """Every message our bots got accepted, from the sandbox's chat logs."""
    ours = {b.user_id for b in world.bots}
    out = []
    for chat in world.chats:
        r = await client.get(f"{tg_base}/sandbox/chats/{chat.telegram_chat_id}/messages")
        r.raise_for_status()
        for m in r.json()["result"]:
            sender = m.get("from") or {}
            if sender.get("id") not in ours:
                continue
            reply = (m.get("reply_to_message") or {}).get("message_id")
            out.append(Send(chat.telegram_chat_id, int(m["message_id"]), int(sender["id"]),
                            float(m["date"]), str(m.get("text", "")),
                            None if reply is None else int(reply)))
    return out


async def _stored(sm: async_sessionmaker[AsyncSession]) -> Stored:
    async with sm() as s:
        rows = await figures_store.stored_messages(s)
        replies = await figures_store.reply_turn_statuses(s)
        statuses = await turn_store.status_counts(s)
        dups = await figures_store.duplicate_groups(s)
    return Stored(
        bot_messages=[(r.telegram_chat_id, r.telegram_message_id, r.turn_id) for r in rows
                      if r.bot_id is not None],
        humans=[(r.telegram_chat_id, r.telegram_message_id) for r in rows
                if r.bot_id is None],
        still_waiting={(r.telegram_chat_id, r.telegram_message_id) for r in rows
                       if r.bot_id is None and r.reply_wanted},
        reply_statuses=replies, turn_statuses={str(k): int(v) for k, v in statuses.items()},
        duplicates_telegram=dups.telegram, duplicates_turn=dups.turn)

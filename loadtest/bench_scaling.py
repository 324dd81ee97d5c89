"""Benchmark: messages per minute with 1, 2 and 4 sharded worker processes.

At a fixed sandbox LLM latency, a worker's throughput is bounded by the turns it runs at
once (``BOTSIM_MAX_TURNS_IN_FLIGHT``): about ``in_flight / latency`` turns per second. The
world is sized so the groups ask for more than four workers can deliver (the per-chat cap
times the chats is well above it), so the figure shows how throughput grows with workers.

Everything runs on 127.0.0.1 in its own process: the sandbox Telegram (with the generated
world), the sandbox LLM server (fixed latency), and W ``botsim worker`` processes against
the local PostgreSQL (a database of its own, dropped at the end) and Redis (a namespace of
its own). For each W: wait until every bot's lease is held, warm up, then count the turns
recorded ``sent`` in the measuring window, and the workers' CPU time (``/proc``).

Usage::

    python loadtest/bench_scaling.py [--workers 1,2,4] [--bots 1000] [--chats 100]
        [--latency-ms 2000] [--in-flight 8] [--warmup 20] [--measure 60] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.fernet import Fernet

from backend import keys
from backend.crypto import TokenCipher
from backend.db.session import make_engine, make_sessionmaker, upgrade
from backend.redis_client import make_redis
from backend.stores import figures as figures_store
from backend.stores import settings as settings_store
from backend.stores import turns as turn_store
from behavior_engine.leases import read_heartbeats
from loadtest.world import generate_world, sandbox_world, seed_database

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "botsim_bench_scaling"
PG_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DB_NAME}"
REDIS_URL = "redis://127.0.0.1:6379/11"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (returns at once; the process runs beside the benchmark)."""
    return subprocess.Popen(cmd, **kwargs)


async def wait_http(url: str, seconds: float = 20) -> None:
    import httpx

    end = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:
        while time.monotonic() < end:
            try:
                await client.get(url)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


async def fresh_database() -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await conn.close()
    await upgrade(PG_URL)


async def drop_database() -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    finally:
        await conn.close()


async def run_once(n_workers: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One measurement with ``n_workers`` workers; every process is stopped at the end."""
    await fresh_database()
    fernet = Fernet.generate_key().decode()
    world = generate_world(args.bots, args.chats, seed=args.seed)
    engine = make_engine(PG_URL, pool_size=5)
    sm = make_sessionmaker(engine)
    async with sm() as s, s.begin():
        await seed_database(s, world, cipher=TokenCipher(fernet))
        await settings_store.update_settings(s, changes={
            "bot_hourly_msg_limit": {"min": 600, "max": 600}, "max_msgs_per_min": 20,
            "prime_hours": {"hours": [], "boost": 1.0, "timezone": "UTC"},
            "reading_cap_s": 0.0,  # no reading/typing pauses: throughput stays comparable
            "typing_cap_s": 0.0})
    world_file = tmp / f"world-{n_workers}.json"
    world_file.write_text(json.dumps(sandbox_world(world)))
    tg_port, llm_port = free_port(), free_port()
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                             "stdin": subprocess.DEVNULL, "cwd": ROOT}
    procs = [
        spawn([sys.executable, "-m", "sandbox.telegram_api", "--port", str(tg_port),
               "--world", str(world_file)], **quiet),
        spawn([sys.executable, "-m", "sandbox.llm_api", "--port", str(llm_port),
               "--latency", f"bench={args.latency_ms}"], **quiet),
    ]
    ns = f"bench{os.getpid()}w{n_workers}"
    redis = make_redis(REDIS_URL, role="commands")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        await wait_http(f"http://127.0.0.1:{tg_port}/sandbox/stats")
        await wait_http(f"http://127.0.0.1:{llm_port}/")
        providers = [{"name": "bench", "kind": "openai_compatible", "model": "bench-model",
                      "base_url": f"http://127.0.0.1:{llm_port}/bench/v1", "timeout_s": 15,
                      "max_tokens": 120}]
        env = {**os.environ, "DATABASE_URL": PG_URL, "REDIS_URL": REDIS_URL,
               "BOTSIM_REDIS_NAMESPACE": ns, "BOTSIM_FERNET_KEY": fernet,
               "BOTSIM_WEBHOOK_SECRET": "b" * 40,
               "BOTSIM_TELEGRAM_API_URL": f"http://127.0.0.1:{tg_port}/bot",
               "BOTSIM_LLM_PROVIDERS": json.dumps(providers),
               "BOTSIM_MAX_TURNS_IN_FLIGHT": str(args.in_flight),
               "BOTSIM_HEARTBEAT_TTL_S": "6", "BOTSIM_TICK_SECONDS": "0.5",
               "BOTSIM_LOG_LEVEL": "WARNING", "PTB_TIMEDELTA": "true"}
        for i in range(n_workers):
            data = tmp / f"w{n_workers}-{i}"
            data.mkdir()
            workers.append(spawn([sys.executable, "-m", "botsim", "worker"],
                                 env={**env, "BOTSIM_DATA_DIR": str(data)}, **quiet))
        lease_keys = [keys.lease_key(i, ns) for i in range(1, args.bots + 1)]
        t0 = time.monotonic()
        while True:
            held = [v for v in await redis.mget(lease_keys) if v is not None]
            if len(held) == args.bots and len(set(held)) == n_workers:
                break
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"only {len(held)} of {args.bots} bots leased after 120 s")
            await asyncio.sleep(0.5)
        settle_s = time.monotonic() - t0
        await asyncio.sleep(args.warmup)
        start = datetime.now(UTC)
        cpu0 = sum(cpu_seconds(w.pid) for w in workers)
        samples: list[int] = []
        info0 = await read_heartbeats(redis, ns)
        t_end = time.monotonic() + args.measure
        while time.monotonic() < t_end:
            await asyncio.sleep(min(2.0, max(0.0, t_end - time.monotonic())))
            samples.extend(int(i.get("in_flight", 0)) for i in
                           (await read_heartbeats(redis, ns)).values())
        info1 = await read_heartbeats(redis, ns)
        end = datetime.now(UTC)
        cpu1 = sum(cpu_seconds(w.pid) for w in workers)
        async with sm() as s:
            per_worker = Counter(
                await figures_store.sent_per_worker(s, since=start, until=end))
            other = await turn_store.status_counts(
                s, updated_since=start - timedelta(seconds=args.warmup))
        sent = sum(per_worker.values())
        minutes = (end - start).total_seconds() / 60
        return {
            "workers": n_workers, "msgs_per_min": round(sent / minutes, 1),
            "sent": sent, "per_worker": sorted(per_worker.values()),
            "cpu_ms_per_msg": round(1000 * (cpu1 - cpu0) / max(sent, 1), 2),
            "statuses_since_warmup": {str(k): int(v) for k, v in other.items()},
            "settle_s": round(settle_s, 1),
            "mean_in_flight_per_worker": round(sum(samples) / max(len(samples), 1), 2),
            "skipped": sum(int(info1[w].get("skipped", 0)) - int(info0.get(w, {}).get(
                "skipped", 0)) for w in info1),
            "in_flight_full_ticks": sum(int(info1[w].get("in_flight_full", 0)) - int(
                info0.get(w, {}).get("in_flight_full", 0)) for w in info1),
        }
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=20)
            except subprocess.TimeoutExpired:
                w.kill()
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        await redis.aclose()
        await engine.dispose()


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for n in args.workers:
                r = await run_once(n, args, Path(tmp))
                results.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
        finally:
            await drop_database()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")],
                        default=[1, 2, 4])
    parser.add_argument("--bots", type=int, default=1000)
    parser.add_argument("--chats", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=2000.0)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--measure", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PTB_TIMEDELTA", "true")
    results = asyncio.run(main_async(args))
    base = results[0]["msgs_per_min"] or 1.0
    if args.json:
        print(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"),
                          "machine": f"{os.cpu_count()} cores, {platform.machine()}",
                          "args": vars(args), "results": results}))
        return
    print(f"LLM latency {args.latency_ms:.0f} ms, {args.in_flight} turns in flight per "
          f"worker, {args.bots} bots in {args.chats} groups, {args.measure:.0f} s window")
    print(f"{'workers':>8} {'msg/min':>9} {'× one':>7} {'per worker':>24} {'CPU ms/msg':>11}")
    for r in results:
        print(f"{r['workers']:>8} {r['msgs_per_min']:>9} {r['msgs_per_min'] / base:>7.2f} "
              f"{r['per_worker']!s:>24} {r['cpu_ms_per_msg']:>11}")


if __name__ == "__main__":
    main()

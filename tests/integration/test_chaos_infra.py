"""loadtest.chaos_infra: the chaos test's own Redis and PostgreSQL, the partitioning proxy
and the wall clock jumps, each against the real thing (redis-server, a PostgreSQL cluster in
a temporary directory, libfaketime in a child process).

A missing binary (redis-server, PostgreSQL's, libfaketime) skips its test with the reason,
unless ``CI`` is set: then it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from loadtest.chaos_infra import (
    FakeClock,
    FaultProxy,
    PrivatePostgres,
    PrivateRedis,
    postgres_bindir,
)
from tests.conftest import service_missing


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def _client(port: int, *, socket_timeout: float = 5.0) -> Redis:
    """A redis-py client of 127.0.0.1:``port`` that never retries (a failure shows)."""
    return Redis(host="127.0.0.1", port=port, socket_timeout=socket_timeout,
                 socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 0))


@pytest.fixture
async def redis_server() -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        service_missing("redis-server", "not found on PATH (apt-get install redis-server)")
    async with PrivateRedis() as server:
        yield server
    assert server.pid is None


async def test_private_redis_kill_and_restart_empty(redis_server: PrivateRedis) -> None:
    port, pid = redis_server.port, redis_server.pid
    assert pid is not None and redis_server.url == f"redis://127.0.0.1:{port}/0"
    assert port != 6379
    client = Redis.from_url(redis_server.url, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"

        await redis_server.kill()
        assert redis_server.pid is None and not _alive(pid)
        with pytest.raises(RedisConnectionError):
            await client.get("k")

        await redis_server.restart_empty(down_s=0.1)
        assert redis_server.port == port and redis_server.pid not in (None, pid)
        assert await client.get("k") is None  # the data went with the process
        assert await client.dbsize() == 0
        await client.set("k", "w")
        assert await client.get("k") == b"w"
    finally:
        await client.aclose()
    new_pid = redis_server.pid
    assert new_pid is not None
    await redis_server.stop()
    assert not _alive(new_pid)


async def test_bad_seconds_are_refused(redis_server: PrivateRedis) -> None:
    pid = redis_server.pid
    with pytest.raises(ValueError, match="down_s"):
        await redis_server.restart_empty(down_s=-1)
    assert redis_server.pid == pid  # refused before anything was killed
    with pytest.raises(ValueError, match="down_s"):
        await PrivatePostgres(bindir=Path("/nonexistent")).restart(down_s=float("nan"))
    with pytest.raises(ValueError, match="upstream_port"):
        FaultProxy("127.0.0.1", 0)


async def test_private_postgres_crash_restart() -> None:
    if postgres_bindir() is None:
        service_missing("PostgreSQL binaries", "no initdb/pg_ctl/postgres under "
                        "/usr/lib/postgresql/*/bin (apt-get install postgresql)")
    pg = PrivatePostgres(database="chaos")
    try:
        began = time.monotonic()
        await pg.start()
        print(f"\ninitdb {pg.timings['initdb']:.2f} s, first start {pg.timings['start']:.2f} s, "
              f"in all {time.monotonic() - began:.2f} s")
        assert pg.port != 5432 and pg.url.endswith(f"@127.0.0.1:{pg.port}/chaos")
        root = pg.root
        assert root is not None and root.is_dir()

        conn = await asyncpg.connect(pg.dsn, timeout=5)
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        await conn.execute("INSERT INTO t VALUES (1, 'committed')")
        assert await conn.fetchval("SHOW fsync") == "off"
        assert await conn.fetchval("SHOW max_connections") == "200"
        old = await asyncpg.connect(pg.dsn, timeout=5)  # open across the restart
        old_pid = await old.fetchval("SELECT pg_backend_pid()")
        await conn.close()

        await pg.restart(down_s=0.3)
        print(f"restart {pg.timings['restart']:.2f} s (down 0.3 s, up again "
              f"{pg.timings['restart_up']:.2f} s)")
        assert pg.timings["restart"] >= 0.3
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await old.fetchval("SELECT 1", timeout=5)
        old.terminate()

        new = await asyncpg.connect(pg.dsn, timeout=5)
        try:
            assert await new.fetchval("SELECT pg_backend_pid()") != old_pid
            assert await new.fetchval("SELECT v FROM t WHERE id = 1") == "committed"
        finally:
            await new.close()
        engine = create_async_engine(pg.url)  # the URL the engine's processes get
        try:
            async with engine.connect() as c:
                assert (await c.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
        finally:
            await engine.dispose()
        postmaster = int((root / "data" / "postmaster.pid").read_text().split()[0])
    finally:
        await pg.stop()
    assert not root.exists()
    assert not _alive(postmaster)


async def test_fault_proxy_cut_and_heal(redis_server: PrivateRedis) -> None:
    async with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        client = _client(proxy.port, socket_timeout=0.5)
        direct = _client(redis_server.port)
        try:
            assert await client.ping()
            await client.set("before", "1")
            assert await direct.get("before") == b"1"  # it went through to the server
            assert proxy.stats.connections == 1
            up, down = proxy.stats.bytes_up, proxy.stats.bytes_down
            assert up > 0 and down > 0

            proxy.cut()
            began = time.monotonic()
            with pytest.raises(RedisTimeoutError):  # a timeout, not a reset
                await client.set("during", "1")
            assert time.monotonic() - began < 3
            other = _client(proxy.port, socket_timeout=0.5)  # a new connection: accepted,
            with pytest.raises(RedisTimeoutError):  # never connected upstream
                await other.ping()
            await other.aclose()
            assert proxy.stats.bytes_up == up and proxy.stats.bytes_down == down
            assert proxy.stats.bytes_dropped > 0 and proxy.stats.connections_during_cut >= 1
            assert await direct.get("during") is None  # dropped, never reached the server

            assert proxy.heal() >= 1
            assert proxy.open_connections == 0
            assert await client.set("after", "1")
            assert await direct.get("after") == b"1"
            assert proxy.stats.bytes_up > up
        finally:
            await client.aclose()
            await direct.aclose()
    assert proxy.open_connections == 0


@pytest.fixture
def fake_clock(tmp_path: Path) -> Iterator[FakeClock]:
    if not FakeClock.available():
        service_missing("libfaketime", "no /usr/lib/*/faketime/libfaketime.so.1 "
                        "(apt-get install faketime)")
    with FakeClock(tmp_path / "faketime.rc") as clock:
        yield clock


_CHILD = """
import datetime, json, sys, time
for _ in sys.stdin:
    print(json.dumps([time.time(), datetime.datetime.now().timestamp(), time.monotonic()]),
          flush=True)
"""


def test_fake_clock_jumps_the_wall_clock_only(fake_clock: FakeClock) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env=fake_clock.env({**os.environ, "FAKETIME": "+999d"}))
    assert child.stdin is not None and child.stdout is not None

    def ask() -> tuple[float, float, float, float]:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("\n")
        child.stdin.flush()
        wall, now, mono = json.loads(child.stdout.readline())
        return wall, now, mono, time.time()

    try:
        wall0, now0, mono0, real0 = ask()
        assert abs(wall0 - real0) < 5 and abs(now0 - real0) < 5  # FAKETIME was dropped
        # the child uses the clock's shared memory, creates none of its own
        assert not {n for n in os.listdir("/dev/shm") if "faketime" in n} - shm_before

        assert fake_clock.jump(3600) == 3600
        wall1, now1, mono1, real1 = ask()
        assert abs(wall1 - real1 - 3600) < 5 and abs(now1 - real1 - 3600) < 5
        assert 0 <= mono1 - mono0 < 5  # the monotonic clock did not jump

        assert fake_clock.jump(-7200.5) == -3600.5  # an NTP step back
        wall2, _, mono2, real2 = ask()
        assert abs(wall2 - real2 + 3600.5) < 5
        assert 0 <= mono2 - mono1 < 5
        assert fake_clock.path.read_text().strip() == "-3600.500000"
    finally:
        child.stdin.close()
        child.wait(timeout=10)
        child.stdout.close()
    assert child.returncode == 0
    with pytest.raises(ValueError, match="seconds"):
        fake_clock.jump(float("inf"))
    fake_clock.close()
    ours = f"botsim_{os.getpid()}_"
    leftovers = {n for n in os.listdir("/dev/shm")
                 if "faketime" in n and (n not in shm_before or ours in n)}
    assert not leftovers and not fake_clock.path.exists()

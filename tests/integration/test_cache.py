"""The two-layer cache against real Redis: hits, invalidation across OS processes,
single-flight, Redis killed and restarted, history appends, and the Redis-less default.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel

from backend import keys
from backend.cache import PydanticCodec, TwoLayerCache

ROOT = Path(__file__).resolve().parents[2]


class Persona(BaseModel):
    name: str
    version: int


@dataclass(frozen=True)
class Msg:
    id: int
    text: str


PERSONA = PydanticCodec(Persona)
MSG = PydanticCodec(Msg)
TEXT = PydanticCodec(str)


class Loader:
    """A loader standing for the database: counts calls, optionally slow or failing."""

    def __init__(self, value: object = None, *, delay: float = 0.0, error: bool = False):
        self.value = value
        self.delay = delay
        self.error = error
        self.calls = 0

    async def __call__(self) -> object:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error:
            raise RuntimeError("database down")
        return self.value


def typed(loader: Loader) -> Callable[[], Awaitable[Persona]]:
    return loader  # type: ignore[return-value]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def ns() -> str:
    """A namespace of this test's own: its keys and its invalidation channel."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def caches(ns: str) -> AsyncIterator[Callable[..., Awaitable[TwoLayerCache]]]:
    """Makes started caches (each its own L1 and Redis connections); closes them all."""
    made: list[TwoLayerCache] = []

    async def make(url: str | None, **kwargs: object) -> TwoLayerCache:
        cache = TwoLayerCache(redis_url=url, namespace=ns, **kwargs)  # type: ignore[arg-type]
        made.append(cache)
        await cache.start()
        return cache

    yield make
    for cache in made:
        await cache.close()


@pytest.fixture(params=["redis", "no-redis"])
def any_url(request: pytest.FixtureRequest) -> str | None:
    """Real Redis, or None (the embedded L1-only default)."""
    if request.param == "no-redis":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


# --------------------------------------------------------------------------- 1. hit/miss flow


async def test_l1_hit_then_l2_hit_in_another_instance(redis_url: str, caches) -> None:
    a = await caches(redis_url)
    b = await caches(redis_url)
    assert a.redis_up and b.redis_up
    load_a, load_b = Loader(Persona(name="Ali", version=1)), Loader(Persona(name="x", version=0))
    l2_hits = sample("botsim_cache_requests_total", layer="l2", kind="persona", result="hit")

    first = await a.get("persona", "7", typed(load_a), codec=PERSONA)
    second = await a.get("persona", "7", typed(load_a), codec=PERSONA)
    assert first == second == Persona(name="Ali", version=1)
    assert load_a.calls == 1
    stats = a.stats()
    assert (stats["l1"]["persona"].hits, stats["l1"]["persona"].misses) == (1, 1)
    assert stats["l2"]["persona"].misses == 1 and stats["loader"]["persona"].hits == 1

    other = await b.get("persona", "7", typed(load_b), codec=PERSONA)
    assert other == first
    assert load_b.calls == 0, "the second instance must be served by L2, not its loader"
    assert b.stats()["l2"]["persona"].hits == 1
    assert "loader" not in b.stats()
    assert sample(
        "botsim_cache_requests_total", layer="l2", kind="persona", result="hit"
    ) == l2_hits + 1


async def test_l1_expires_after_its_ttl_then_l2_serves(redis_url: str, caches) -> None:
    now = [1000.0]
    a = await caches(redis_url, l1_ttl_s=30.0, clock=lambda: now[0])
    load = Loader(Persona(name="Ayşe", version=1))
    await a.get("persona", "1", typed(load), codec=PERSONA)
    now[0] += 29
    assert a.cached("persona", "1")
    now[0] += 2
    assert not a.cached("persona", "1")
    assert await a.get("persona", "1", typed(load), codec=PERSONA) == load.value
    assert load.calls == 1
    assert a.stats()["l2"]["persona"].hits == 1


# ------------------------------------------------------- 2. invalidation across OS processes

CHILD = r"""
import asyncio, sys, time
from pathlib import Path
from backend.cache import PydanticCodec, TwoLayerCache

async def main(url, ns, source):
    codec = PydanticCodec(str)
    async def load():
        return Path(source).read_text()
    loop = asyncio.get_running_loop()
    async with TwoLayerCache(redis_url=url, namespace=ns) as cache:
        print("ready", cache.redis_up, flush=True)
        while True:
            key = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not key:
                return
            print("got", await cache.get("persona", key, load, codec=codec), flush=True)
            deadline = time.monotonic() + 5
            while cache.cached("persona", key) and time.monotonic() < deadline:
                await asyncio.sleep(0.0002)
            dropped_at = time.monotonic()
            value = await cache.get("persona", key, load, codec=codec)
            print("dropped", repr(dropped_at), value, flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_invalidation_reaches_another_process_within_100ms(
    redis_url: str, ns: str, caches, tmp_path: Path
) -> None:
    source = tmp_path / "db.txt"  # the "database" both processes load from
    here = await caches(redis_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, redis_url, ns, str(source),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def line() -> list[str]:
        assert proc.stdout is not None
        raw = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert raw, "the child process died"
        return raw.decode().split()

    delays: list[float] = []
    try:
        assert await line() == ["ready", "True"]
        for i in range(5):
            source.write_text(f"old{i}")
            proc.stdin.write(f"k{i}\n".encode())
            assert await line() == ["got", f"old{i}"]
            source.write_text(f"new{i}")  # the operator's edit, committed
            sent_at = time.monotonic()
            await here.invalidate("persona", f"k{i}")
            word, dropped_at, value = await line()
            assert word == "dropped"
            assert value == f"new{i}", "the other process must reload the new value"
            delays.append((float(dropped_at) - sent_at) * 1000)
        proc.stdin.write(b"\n")
        await asyncio.wait_for(proc.wait(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    median = statistics.median(delays)
    print(f"invalidation delay over pub/sub, ms: {[round(d, 2) for d in delays]}")
    assert median < 100, f"median {median:.1f} ms, all {delays}"
    assert all(d > 0 for d in delays)


async def test_a_load_racing_an_invalidation_puts_nothing_stale_back(
    redis_url: str, caches
) -> None:
    a = await caches(redis_url)
    b = await caches(redis_url)
    c = await caches(redis_url)
    loading, edited = asyncio.Event(), asyncio.Event()

    async def slow_old_read() -> Persona:
        loading.set()
        await edited.wait()  # read "before" the edit, returned after it
        return Persona(name="old", version=1)

    task = asyncio.create_task(a.get("persona", "3", slow_old_read, codec=PERSONA))
    await loading.wait()
    await b.invalidate("persona", "3")
    await asyncio.sleep(0.05)  # the event reaches a
    edited.set()
    assert await task == Persona(name="old", version=1)  # asked before the edit
    assert not a.cached("persona", "3"), "a stale load must not fill L1"
    fresh = Loader(Persona(name="new", version=2))
    assert await c.get("persona", "3", typed(fresh), codec=PERSONA) == fresh.value
    assert fresh.calls == 1, "a stale load must not fill L2"
    assert await a.get("persona", "3", typed(fresh), codec=PERSONA) == fresh.value


async def test_many_keys_are_read_in_one_go_from_each_layer(any_url: str | None,
                                                             caches) -> None:
    """get_many (issue 20: the profiles of the bots a worker takes on): L1 for each key,
    then one MGET, then one loader call for the rest; a key the loader does not know is
    left out and cached nowhere."""
    a = await caches(any_url)
    asked: list[list[str]] = []

    def loader_for(version: int) -> Callable[[list[str]], Awaitable[dict[str, Persona]]]:
        async def load(keys: list[str]) -> dict[str, Persona]:
            asked.append(keys)
            return {k: Persona(name=f"bot {k}", version=version) for k in keys if k != "404"}

        return load

    assert await a.get("persona", "1", typed(Loader(Persona(name="bot 1", version=1))),
                       codec=PERSONA) == Persona(name="bot 1", version=1)
    got = await a.get_many("persona", ["1", "2", "3", "404", "2"], loader_for(1),
                           codec=PERSONA)
    assert got == {k: Persona(name=f"bot {k}", version=1) for k in ("1", "2", "3")}
    assert asked == [["2", "3", "404"]]  # "1" from L1; each missing key asked once
    assert await a.get_many("persona", ["3", "2", "1"], loader_for(9), codec=PERSONA) == {
        k: Persona(name=f"bot {k}", version=1) for k in ("3", "2", "1")}
    assert asked == [["2", "3", "404"]]  # all from L1 now
    assert await a.get_many("persona", ["404"], loader_for(9), codec=PERSONA) == {}
    assert asked[-1] == ["404"]  # not cached: asked again
    if any_url is None:
        return
    b = await caches(any_url)  # another process: served by L2 in one MGET
    assert await b.get_many("persona", ["1", "2", "3", "5"], loader_for(2), codec=PERSONA) == {
        **{k: Persona(name=f"bot {k}", version=1) for k in ("1", "2", "3")},
        "5": Persona(name="bot 5", version=2)}
    assert asked[-1] == ["5"]
    stats = b.stats()
    assert (stats["l2"]["persona"].hits, stats["l2"]["persona"].misses) == (3, 1)
    # refresh: every key loaded again and written to both layers, as if none were cached
    assert await b.get_many("persona", ["1", "5"], loader_for(7), codec=PERSONA,
                            refresh=True) == {k: Persona(name=f"bot {k}", version=7)
                                              for k in ("1", "5")}
    assert asked[-1] == ["1", "5"]
    c = await caches(any_url)
    assert await c.get("persona", "1", typed(Loader(None)), codec=PERSONA) == Persona(
        name="bot 1", version=7)  # from L2, rewritten by the refresh


async def test_a_bulk_load_racing_an_invalidation_puts_nothing_stale_back(
    redis_url: str, caches
) -> None:
    a = await caches(redis_url)
    b = await caches(redis_url)
    c = await caches(redis_url)
    loading, edited = asyncio.Event(), asyncio.Event()

    async def slow_old_read(keys: list[str]) -> dict[str, Persona]:
        loading.set()
        await edited.wait()  # read "before" the edit of "3", returned after it
        return {k: Persona(name="old", version=1) for k in keys}

    task = asyncio.create_task(a.get_many("persona", ["3", "4"], slow_old_read,
                                          codec=PERSONA))
    await loading.wait()
    await b.invalidate("persona", "3")
    await asyncio.sleep(0.05)  # the event reaches a
    edited.set()
    assert (await task)["3"] == Persona(name="old", version=1)  # asked before the edit
    assert not a.cached("persona", "3"), "a stale bulk load must not fill L1"
    assert a.cached("persona", "4"), "the keys not edited are cached"
    fresh = Loader(Persona(name="new", version=2))
    assert await c.get("persona", "3", typed(fresh), codec=PERSONA) == fresh.value
    assert fresh.calls == 1, "a stale bulk load must not fill L2"
    untouched = Loader(Persona(name="never", version=0))
    assert await c.get("persona", "4", typed(untouched), codec=PERSONA) == Persona(
        name="old", version=1)
    assert untouched.calls == 0, "the keys not edited are in L2"


# ----------------------------------------------------------------------- 3. single-flight


async def test_single_flight_runs_the_loader_once(any_url: str | None, caches) -> None:
    cache = await caches(any_url)
    load = Loader(Persona(name="Zeynep", version=1), delay=0.05)
    results = await asyncio.gather(
        *(cache.get("persona", "9", typed(load), codec=PERSONA) for _ in range(100))
    )
    assert load.calls == 1
    assert all(r is results[0] for r in results) and results[0] == load.value


async def test_single_flight_error_reaches_every_waiter_and_nothing_is_cached(
    any_url: str | None, caches
) -> None:
    cache = await caches(any_url)
    failing = Loader(delay=0.05, error=True)
    results = await asyncio.gather(
        *(cache.get("persona", "9", typed(failing), codec=PERSONA) for _ in range(100)),
        return_exceptions=True,
    )
    assert failing.calls == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    assert not cache.cached("persona", "9")
    assert cache.stats()["loader"]["persona"].errors == 1
    good = Loader(Persona(name="Ali", version=1))
    assert await cache.get("persona", "9", typed(good), codec=PERSONA) == good.value
    assert good.calls == 1


# --------------------------------------------------------- 4. Redis killed and restarted


async def start_redis(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        "redis-server", "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline or proc.returncode is not None:
                proc.kill()
                await proc.wait()
                pytest.fail(f"redis-server did not start on port {port}")
            await asyncio.sleep(0.02)
        else:
            writer.close()
            await writer.wait_closed()
            return proc


async def test_redis_killed_then_restarted(
    caches, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="botsim.cache")
    port = spare_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = await start_redis(port)
    try:
        cache = await caches(url)
        assert cache.redis_up
        cached = Loader(Persona(name="Mehmet", version=1))
        for i in range(10):
            await cache.get("persona", f"c{i}", typed(cached), codec=PERSONA)
        errors_before = sample("botsim_cache_redis_errors_total")
        caplog.clear()

        server.kill()  # SIGKILL
        await server.wait()
        fresh = Loader(Persona(name="Ayşe", version=1))
        for i in range(50):  # half from L1, half from the loader; none may raise
            if i % 2:
                got = await cache.get("persona", f"c{i % 10}", typed(cached), codec=PERSONA)
                assert got == cached.value
            else:
                got = await cache.get("persona", f"n{i}", typed(fresh), codec=PERSONA)
                assert got == fresh.value
        assert fresh.calls == 25 and cached.calls == 10
        await cache.invalidate("persona", "c0")  # 7. does not raise with Redis down
        await cache.append("history", "1", Msg(1, "hi"), codec=MSG, max_len=5)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "unreachable" in warnings[0].getMessage()
        assert sample("botsim_cache_redis_errors_total") > errors_before
        assert not cache.redis_up and sample("botsim_cache_redis_up") == 0

        server = await start_redis(port)
        restarted = time.monotonic()
        while not cache.redis_up:
            assert time.monotonic() - restarted < 5, "no reconnect within 5 s"
            await asyncio.sleep(0.02)
        assert sample("botsim_cache_redis_up") == 1
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1

        after = Loader(Persona(name="Ali", version=3))
        await cache.get("persona", "after", typed(after), codec=PERSONA)
        other = await caches(url)
        untouched = Loader(Persona(name="x", version=0))
        got = await other.get("persona", "after", typed(untouched), codec=PERSONA)
        assert got == after.value and untouched.calls == 0, "L2 must be in use again"
        # L1 was cleared on reconnect (invalidations may have been missed while down).
        assert not cache.cached("persona", "c1")
    finally:
        if server.returncode is None:
            server.kill()
        await server.wait()


# ------------------------------------------------------------------- 5. history appends


async def test_append_keeps_order_caps_and_reaches_other_instances(
    any_url: str | None, caches
) -> None:
    a = await caches(any_url)
    b = await caches(any_url)
    history = [Msg(1, "selam"), Msg(2, "dolar?")]

    async def from_db() -> list[Msg]:
        return list(history)

    assert await a.get_list("history", "chat", from_db, codec=MSG, max_len=4) == history
    for m in (Msg(3, "yükselir"), Msg(4, "bence düşer"), Msg(5, "altın")):
        history.append(m)  # the message store commits first, then the cache is told
        await a.append("history", "chat", m, codec=MSG, max_len=4)
    expected = [Msg(2, "dolar?"), Msg(3, "yükselir"), Msg(4, "bence düşer"), Msg(5, "altın")]

    def never() -> Awaitable[list[Msg]]:
        raise AssertionError("must be served from the cache")

    assert await a.get_list("history", "chat", never, codec=MSG, max_len=4) == expected
    if any_url is None:
        return  # no shared layer: b has its own L1 only
    assert await b.get_list("history", "chat", never, codec=MSG, max_len=4) == expected

    history.append(Msg(6, "borsa"))
    await a.append("history", "chat", Msg(6, "borsa"), codec=MSG, max_len=4)
    deadline = time.monotonic() + 1
    while b.cached("history", "chat"):  # the append event drops b's L1 list
        assert time.monotonic() < deadline, "b never heard of the append"
        await asyncio.sleep(0.001)
    assert await b.get_list("history", "chat", never, codec=MSG, max_len=4) == [
        *expected[1:], Msg(6, "borsa")
    ]


async def test_append_to_an_uncached_list_does_not_start_a_partial_one(
    redis_url: str, caches
) -> None:
    a = await caches(redis_url)
    b = await caches(redis_url)
    history = [Msg(1, "eski"), Msg(2, "yeni")]
    await a.append("history", "c2", Msg(2, "yeni"), codec=MSG, max_len=10)

    async def from_db() -> list[Msg]:
        return history

    assert await b.get_list("history", "c2", from_db, codec=MSG, max_len=10) == history


async def test_appends_without_redis_keep_the_lists_expiry(caches) -> None:
    """Without Redis, another process's writes reach this one through L1's TTL only: a
    process appending its own items more often than the TTL must still read the list again
    (a worker chatting fast once never saw the human messages the listener stored)."""
    now = [0.0]
    cache = await caches(None, l1_ttl_s=2.0, clock=lambda: now[0])
    stored = [Msg(1, "selam")]
    loads: list[float] = []

    async def from_db() -> list[Msg]:
        loads.append(now[0])
        return list(stored)

    assert await cache.get_list("history", "c", from_db, codec=MSG, max_len=10) == stored
    for t, n in ((0.7, 2), (1.4, 3), (1.9, 4)):  # this process appends every 0.7 s or less
        now[0] = t
        stored.append(Msg(n, "bot"))
        await cache.append("history", "c", Msg(n, "bot"), codec=MSG, max_len=10)
        assert await cache.get_list("history", "c", from_db, codec=MSG, max_len=10) == stored
    stored.append(Msg(5, "human, stored by the listener process"))
    now[0] = 2.01  # the TTL of the load at 0.0 is over, appends or not
    assert await cache.get_list("history", "c", from_db, codec=MSG, max_len=10) == stored
    assert loads == [0.0, 2.01]


# ---------------------------------------------------------------- 6, 7. without Redis


async def test_no_redis_configured_same_api(caches) -> None:
    cache = await caches(None)
    assert not cache.redis_up
    load = Loader(Persona(name="Ali", version=1))
    assert await cache.get("persona", "1", typed(load), codec=PERSONA) == load.value
    assert await cache.get("persona", "1", typed(load), codec=PERSONA) == load.value
    assert load.calls == 1
    await cache.invalidate("persona", "1")
    assert not cache.cached("persona", "1")
    assert await cache.get("persona", "1", typed(load), codec=PERSONA) == load.value
    assert load.calls == 2
    assert "l2" not in cache.stats()


async def test_redis_down_from_the_start_never_fails_a_call(
    caches, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="botsim.cache")
    cache = await caches(f"redis://127.0.0.1:{spare_port()}/0")  # nothing listens there
    assert not cache.redis_up
    load = Loader(Persona(name="Ali", version=1))
    for _ in range(3):
        assert await cache.get("persona", "1", typed(load), codec=PERSONA) == load.value
    await cache.invalidate("persona", "1")
    await cache.append("history", "1", Msg(1, "hi"), codec=MSG, max_len=5)
    assert await cache.get("persona", "1", typed(load), codec=PERSONA) == load.value
    assert load.calls == 2
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_keys_are_versioned_and_namespaced() -> None:
    assert keys.cache_key("persona", "42") == "botsim:cache:v1:persona:42"
    assert keys.generation_key("persona", "42", namespace="x") == "x:cache:gen:persona:42"
    assert keys.INVALIDATION_CHANNEL == "botsim:cache:invalidate"

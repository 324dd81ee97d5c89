"""One small sharded load run, shared by the tests that read it.

``small_run`` runs ``botsim loadtest`` once per test session (12 bots in 3 groups, two
workers, the listener and the admin API, humans posting) with a real Prometheus scraping
every process when Debian's ``prometheus`` is installed. ``test_loadtest`` checks the run's
figures against its database; ``test_prometheus`` checks what Prometheus saw of it. One run
instead of two keeps the process-heavy tests' xdist group (and the suite) short.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db.models import Base
from backend.db.session import make_engine, make_sessionmaker

ROOT = Path(__file__).resolve().parents[2]
#: Prometheus's scrape jobs (as in monitoring/prometheus.yml).
JOBS = ("listener", "api", "worker")
SCRAPE_S = 1


@dataclass
class SmallRun:
    """The shared run: its figures (``keep``: its database and data directory are kept
    until the session ends), the wall-clock window it ran in (Unix seconds), and the
    Prometheus that scraped it (None when the binary is missing: ``missing`` says why)."""

    figures: dict[str, Any]
    started: float
    ended: float
    prometheus: str | None
    missing: str | None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_prometheus(folder: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A Prometheus on 127.0.0.1 scraping the job files in ``folder/targets`` every second,
    with the repository's alert rules. Returns the process, its base URL, the targets dir.

    Raises:
        RuntimeError: it did not become ready within 30 s (its log's tail attached).
    """
    binary = shutil.which("prometheus")
    assert binary is not None
    targets = folder / "targets"
    targets.mkdir()
    for job in JOBS:
        (targets / f"{job}.json").write_text("[]")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s",
                   "scrape_timeout": f"{SCRAPE_S}s"},
        "rule_files": [str(ROOT / "monitoring" / "alerts.yml")],
        "scrape_configs": [
            {"job_name": job, "file_sd_configs": [
                {"files": [str(targets / f"{job}.json")], "refresh_interval": "1s"}]}
            for job in JOBS],
    }
    cfg = folder / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    port = _free_port()
    log_path = folder / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/-/ready", timeout=1, trust_env=False).status_code == 200:
                return proc, base, targets
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError("prometheus did not start:\n"
                               + log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _drop(url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres", timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallRun]:
    """The session's one small sharded load run (see the module docstring).

    Runs in an event loop of its own (``asyncio.run``): everything the run opens is made
    and closed on that loop. Fails (CI) or skips (a laptop) when PostgreSQL or Redis is
    down, through the tests' ``service_missing``.
    """
    from loadtest.options import LoadOptions
    from loadtest.runner import run_load
    from tests.e2e.test_loadtest import _services

    asyncio.run(_services())
    folder = tmp_path_factory.mktemp("small-run")
    prometheus: subprocess.Popen[bytes] | None = None
    base = targets = None
    missing = None
    if shutil.which("prometheus") is None:
        missing = "Debian's prometheus package is not installed (.ci/run installs it)"
    else:
        prometheus, base, targets = _start_prometheus(folder)
    # 12 bots at 240 an hour offer 16 messages a minute per chat (under its cap of 20):
    # ~16 in the 20 s window, and ~15 people's messages: enough for every figure checked,
    # and for Prometheus (1 s scrapes, 15 s rate windows) to see each panel move.
    opts = LoadOptions(bots=12, chats=3, workers=2, duration_s=24, warmup_s=4,
                       llm_latency_ms=200, llm_jitter_ms=50, human_rate_per_min=40,
                       msgs_per_hour=240, floor_samples=20, keep=True, progress=False,
                       targets_dir=targets)
    started = time.time()
    try:
        figures = asyncio.run(asyncio.wait_for(run_load(opts), 110))
    except BaseException:
        if prometheus is not None:
            _stop(prometheus)
        raise
    run = SmallRun(figures=figures, started=started, ended=time.time(), prometheus=base,
                   missing=missing)
    try:
        yield run
    finally:
        if prometheus is not None:
            _stop(prometheus)
        kept = figures["config"]["kept"]
        asyncio.run(_drop(kept["database_url"]))
        shutil.rmtree(kept["data_dir"], ignore_errors=True)


@pytest.fixture
async def pg_sessionmaker(pg_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the worker's PostgreSQL test database, every table emptied first (the
    processes of a test share it with the test)."""
    engine = make_engine(pg_url)
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    yield make_sessionmaker(engine)
    await engine.dispose()


def start_botsim(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m botsim <args>`` in the repository with ``env``, its output to ``log``."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "botsim", *args], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process, wait up to 15 s, then SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

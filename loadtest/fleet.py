"""The processes of a load test: start them on free local ports, watch them, stop them all."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]


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
    #: how it was started (``python args…`` with ``env``), so :meth:`Fleet.restart` can
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    #: killed on purpose (a chaos fault): :meth:`Fleet.check` does not report its exit
    down: bool = False

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
        proc = Proc(name, self._spawn(args, env, log, "wb"), engine, metrics_url, log,
                    tuple(args), dict(env))
        self.procs.append(proc)
        return proc

    @staticmethod
    def _spawn(args: Iterable[str], env: dict[str, str], log: Path,
               mode: str) -> subprocess.Popen[bytes]:
        with log.open(mode) as out:
            return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)

    def get(self, name: str) -> Proc:
        """The process called ``name``. Raises KeyError when there is none."""
        for p in self.procs:
            if p.name == name:
                return p
        raise KeyError(name)

    def kill(self, name: str) -> None:
        """``kill -9`` the process ``name`` (no chance to clean up) and wait for it; from
        now on its exit is expected (:meth:`check` leaves it alone until
        :meth:`restart`)."""
        proc = self.get(name)
        proc.down = True
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()

    def restart(self, name: str) -> Proc:
        """Start ``name`` again as it was first started (its log goes on in the same
        file). Raises RuntimeError when it is still running."""
        proc = self.get(name)
        if proc.popen.poll() is None:
            raise RuntimeError(f"{name} is still running")
        assert proc.log is not None and proc.env is not None
        proc.popen = self._spawn(proc.args, proc.env, proc.log, "ab")
        proc.down = False
        return proc

    def check(self) -> None:
        """Raises RuntimeError naming a process that exited (unless killed on purpose),
        with its log's tail."""
        for p in self.procs:
            if not p.down and p.popen.poll() is not None:
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


"""Infrastructure of the chaos test (``botsim chaos``): services of the run's own and faults.

Everything listens on 127.0.0.1 only and is stopped by its owner (``async with``, or an
explicit ``stop()``/``close()``); a process still running when the interpreter exits (an
owner that crashed) is killed by an ``atexit`` hook, so nothing is left behind.

- :class:`PrivateRedis`: a redis-server of the run's own (no persistence), to kill and
  restart empty without touching the machine's shared Redis on 6379;
- :class:`PrivatePostgres`: a PostgreSQL cluster of the run's own in a temporary directory,
  to restart (crash-like, ``-m immediate``) without touching the shared cluster on 5432;
- :class:`FaultProxy`: a TCP proxy between one process and its upstream (Redis) that can cut
  the link (a network partition: bytes silently dropped) and heal it;
- :class:`FakeClock`: wall clock jumps for child processes through libfaketime (the wall
  clock only, as an NTP step does: ``time.monotonic()`` keeps running undisturbed).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import glob
import math
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg

from loadtest.fleet import free_port

#: Seconds a service gets to come up (``start()``) before RuntimeError.
START_TIMEOUT_S = 60.0


def _check_seconds(name: str, value: float, *, negative: bool = False) -> float:
    """``value`` as a float; ValueError naming ``name`` when it is not finite (or negative,
    unless ``negative``)."""
    seconds = float(value)
    if not math.isfinite(seconds) or (seconds < 0 and not negative):
        kind = "a finite number" if negative else "a finite number >= 0"
        raise ValueError(f"{name} must be {kind} of seconds, got {value!r}")
    return seconds


def _tail(path: Path, chars: int = 2000) -> str:
    """The last ``chars`` characters of a log file ('' when it does not exist)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _run(cmd: list[str], *, cwd: Path | None = None, timeout_s: float = 120.0) -> str:
    """Run ``cmd`` to its end without blocking the loop; its output (stdout + stderr).
    RuntimeError with the output when it exits non-zero; killed after ``timeout_s``.

    The output goes to a temporary file, not a pipe: ``pg_ctl start`` leaves the postmaster
    running, and under uvloop the postmaster inherited the pipe, so reading it to its end
    never finished."""
    with tempfile.TemporaryFile() as out:
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with code {proc.returncode}:\n{text}")
    return text


# ---------------------------------------------------------------------------------- Redis


class _Service:
    """``async with`` for a service with ``start()`` and ``stop()``: stopped on the way out,
    and also when ``start()`` itself fails (``__aexit__`` is not called then)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # __aexit__ is not called when __aenter__ fails
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


class PrivateRedis(_Service):
    """A redis-server of the run's own on 127.0.0.1 (no RDB, no AOF), as a subprocess whose
    output goes to a log file.

    ``port``: the TCP port (a free one by default), kept across :meth:`restart_empty`.
    ``log``: the log file (``redis.log`` in a temporary directory by default; appended to by
    every start). ``binary``: the redis-server executable.
    """

    def __init__(self, *, port: int | None = None, log: Path | None = None,
                 binary: str = "redis-server") -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port!r}")
        self.port = port if port is not None else free_port()
        self.binary = binary
        self._log = log
        self._dir: Path | None = None  # made by the first start, removed by stop()
        self._popen: subprocess.Popen[bytes] | None = None
        #: Seconds the last :meth:`start` took until PING answered.
        self.start_s = 0.0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        """The log file (RuntimeError before :meth:`start` when none was given)."""
        if self._log is not None:
            return self._log
        if self._dir is None:
            raise RuntimeError("redis-server was not started")
        return self._dir / "redis.log"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        if self._popen is None or self._popen.poll() is not None:
            return None
        return self._popen.pid

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until PING answers (at most ``timeout_s`` seconds).
        RuntimeError with the log's tail when it exits first (e.g. the port is taken) or
        does not answer in time; it is then killed."""
        timeout_s = _check_seconds("timeout_s", timeout_s)
        if self.pid is not None:
            raise RuntimeError(f"redis-server already runs on port {self.port}")
        began = time.monotonic()
        popen = self._popen = self._spawn()
        atexit.register(self._kill_at_exit)
        end = began + timeout_s
        while True:
            if popen.poll() is not None:
                code = popen.returncode
                self._popen = None
                raise RuntimeError(f"redis-server on port {self.port} exited with code {code}:\n"
                                   f"{_tail(self.log)}")
            if await self._pong():
                self.start_s = time.monotonic() - began
                return
            if time.monotonic() > end:
                await self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING "
                                   f"within {timeout_s:.0f} s:\n{_tail(self.log)}")
            await asyncio.sleep(0.02)

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start redis-server (it does not block: the caller waits for PING)."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="botsim-redis-"))
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(self._dir)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    async def _pong(self) -> bool:
        """Whether the server answers PING now."""
        writer: asyncio.StreamWriter | None = None
        try:
            reader, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 1.0)
            writer = w
            w.write(b"PING\r\n")
            answer = await asyncio.wait_for(reader.readline(), 1.0)
            return answer.startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def kill(self) -> None:
        """SIGKILL the server (a crash: whatever it held is lost) and wait for its exit.
        Nothing happens when it does not run."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            popen.kill()
            await asyncio.to_thread(popen.wait)
        self._popen = None
        atexit.unregister(self._kill_at_exit)

    async def restart_empty(self, down_s: float = 0.0) -> None:
        """Kill the server, stay down ``down_s`` seconds, start it again on the same port
        with no data (a Redis that lost its memory)."""
        down_s = _check_seconds("down_s", down_s)
        await self.kill()
        await asyncio.sleep(down_s)
        await self.start()

    async def stop(self) -> None:
        """SIGTERM the server (SIGKILL after 10 s) and remove its temporary directory (the
        log too, unless it was given). Idempotent."""
        popen = self._popen
        if popen is not None and popen.poll() is None:
            popen.terminate()
            try:
                await asyncio.to_thread(popen.wait, 10.0)
            except subprocess.TimeoutExpired:
                popen.kill()
                await asyncio.to_thread(popen.wait)
        self._popen = None
        atexit.unregister(self._kill_at_exit)
        self._remove_dir()

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _kill_at_exit(self) -> None:
        """atexit: the owner never stopped the server; kill it."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()
        self._remove_dir()



# ----------------------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb, pg_ctl and postgres
    (else ``pg_config --bindir`` when it holds them); None when there is none."""
    need = ("initdb", "pg_ctl", "postgres")
    candidates: list[tuple[float, Path]] = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        try:
            version = float(d.parent.name)
        except ValueError:
            continue
        candidates.append((version, d))
    for _, d in sorted(candidates, reverse=True):
        if all((d / n).is_file() for n in need):
            return d
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        if out and all((Path(out) / n).is_file() for n in need):
            return Path(out)
    return None


class PrivatePostgres(_Service):
    """A PostgreSQL cluster of the run's own in a temporary directory, on 127.0.0.1 only,
    ``fsync=off`` and ``full_page_writes=off`` (a crash of the machine would lose data, a
    crash of PostgreSQL does not), trust authentication, ``max_connections=200``, with one
    database ``database``.

    ``synchronous_commit``: on by default, so that a commit survives :meth:`restart` (the
    WAL is in the kernel's page cache when COMMIT returns; with ``fsync=off`` it costs a
    write(), no flush). Off, COMMIT returns before the WAL writer has written it, and an
    immediate stop up to ~0.6 s later loses it (committed data vanishing would look like a
    bug of the engine to the chaos test).

    ``port``: the TCP port (a free one by default), kept across restarts. ``bindir``: where
    initdb, pg_ctl and postgres are (:func:`postgres_bindir` by default). As root the
    cluster runs as the ``postgres`` OS user (initdb refuses root), through ``runuser``.
    :attr:`timings` holds the seconds of the last ``initdb``, ``start``, ``restart`` (down
    time included), ``restart_up`` (its start only) and ``stop``.
    """

    def __init__(self, *, port: int | None = None, database: str = "botsim",
                 bindir: Path | None = None, os_user: str = "postgres",
                 synchronous_commit: bool = True) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port!r}")
        if not database or not database.replace("_", "").isalnum():
            raise ValueError(f"database must be a non-empty [A-Za-z0-9_] name, got {database!r}")
        found = bindir if bindir is not None else postgres_bindir()
        if found is None:
            raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl, postgres) under "
                               "/usr/lib/postgresql/*/bin or pg_config --bindir")
        self.bindir = found
        self.port = port if port is not None else free_port()
        self.database = database
        self.os_user = os_user
        self.synchronous_commit = synchronous_commit
        self.root: Path | None = None
        self.timings: dict[str, float] = {}
        self._running = False

    @property
    def url(self) -> str:
        """SQLAlchemy URL: ``postgresql+asyncpg://postgres@127.0.0.1:<port>/<database>``."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """asyncpg/libpq DSN: ``postgresql://postgres@127.0.0.1:<port>/<database>``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        """The data directory (RuntimeError before :meth:`start`)."""
        if self.root is None:
            raise RuntimeError("the cluster was not started")
        return self.root / "data"

    @property
    def log(self) -> Path:
        """The server's log file (appended to by every start)."""
        if self.root is None:
            raise RuntimeError("the cluster was not started")
        return self.root / "postgres.log"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        """``cmd`` run as the cluster's OS user when we are root, else as is."""
        if os.geteuid() == 0:
            return ["runuser", "-u", self.os_user, "--", *cmd]
        return cmd

    def _options(self) -> str:
        assert self.root is not None
        sync = "on" if self.synchronous_commit else "off"
        # DSM segments in the data directory, not /dev/shm: nothing is left there even
        # when the postmaster is SIGKILLed
        return (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root / 'sock'} "
                f"-c fsync=off -c synchronous_commit={sync} -c full_page_writes=off "
                "-c max_connections=200 -c dynamic_shared_memory_type=mmap")

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Create the cluster (``initdb``, first call only), start it, wait until it accepts
        connections on 127.0.0.1, and create the database (first call only). RuntimeError
        with the log's tail when it does not come up within ``timeout_s`` seconds."""
        timeout_s = _check_seconds("timeout_s", timeout_s)
        if self._running:
            raise RuntimeError(f"the cluster on port {self.port} already runs")
        first = self.root is None
        if first:
            await self._initdb()
        began = time.monotonic()
        await self._pg_ctl_start(timeout_s)
        if first:
            await self._create_database()
        self.timings["start"] = time.monotonic() - began

    async def _initdb(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="botsim-pg-"))
        self.root = root
        (root / "sock").mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam(self.os_user)
            for p in (root, root / "sock"):
                os.chown(p, user.pw_uid, user.pw_gid)
        atexit.register(self._kill_at_exit)
        began = time.monotonic()
        await _run(self._as_owner(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]),
            cwd=root)
        self.timings["initdb"] = time.monotonic() - began

    async def _pg_ctl_start(self, timeout_s: float) -> None:
        assert self.root is not None
        try:
            await _run(self._as_owner(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                 "-t", str(max(1, math.ceil(timeout_s))), "-o", self._options(), "start"]),
                cwd=self.root, timeout_s=timeout_s + 10)
        except RuntimeError as e:
            await self._force_down()
            raise RuntimeError(f"PostgreSQL on port {self.port} did not start: {e}\n"
                               f"{_tail(self.log)}") from None
        self._running = True
        await self._wait_accepting(timeout_s)

    async def _wait_accepting(self, timeout_s: float) -> None:
        """Wait until a TCP connection to the ``postgres`` database succeeds."""
        end = time.monotonic() + timeout_s
        while True:
            try:
                conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                             database="postgres", timeout=2)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                if time.monotonic() > end:
                    raise RuntimeError(f"PostgreSQL on port {self.port} accepts no connection "
                                       f"within {timeout_s:.0f} s:\n{_tail(self.log)}") from None
                await asyncio.sleep(0.05)
            else:
                await conn.close()
                return

    async def _create_database(self) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                     database="postgres", timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()

    async def _pg_ctl_stop(self, mode: str) -> None:
        assert self.root is not None
        await _run(self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                                   mode, "-w", "-t", "30", "stop"]),
                   cwd=self.root, timeout_s=40)
        self._running = False

    async def restart(self, down_s: float = 3.0, timeout_s: float = START_TIMEOUT_S) -> None:
        """A crash-like restart: stop with ``-m immediate`` (every connection is cut, no
        checkpoint; committed data survives through WAL recovery), stay down ``down_s``
        seconds, start again on the same port and wait until it accepts connections."""
        down_s = _check_seconds("down_s", down_s)
        timeout_s = _check_seconds("timeout_s", timeout_s)
        if not self._running:
            raise RuntimeError("the cluster does not run: start() it first")
        began = time.monotonic()
        await self._pg_ctl_stop("immediate")
        await asyncio.sleep(down_s)
        up = time.monotonic()
        await self._pg_ctl_start(timeout_s)
        self.timings["restart"] = time.monotonic() - began
        self.timings["restart_up"] = time.monotonic() - up

    async def stop(self) -> None:
        """Stop the server (``-m fast``; immediate, then SIGKILL, when that fails) and
        remove the temporary directory. Idempotent."""
        if self.root is None:
            return
        began = time.monotonic()
        if self._running:
            try:
                await self._pg_ctl_stop("fast")
            except RuntimeError:
                await self._force_down()
        await asyncio.to_thread(self._kill_at_exit)  # whatever is left; removes the directory
        atexit.unregister(self._kill_at_exit)
        self.root = None
        self.timings["stop"] = time.monotonic() - began

    async def _force_down(self) -> None:
        """Immediate stop; SIGKILL of the postmaster when even that fails."""
        with contextlib.suppress(RuntimeError):
            await self._pg_ctl_stop("immediate")
        await asyncio.to_thread(self._kill_postmaster)
        self._running = False

    def _kill_postmaster(self) -> None:
        """SIGQUIT the postmaster of ``postmaster.pid`` (immediate shutdown), SIGKILL it
        after 5 s."""
        if self.root is None:
            return
        try:
            pid = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if pid <= 1 or not _pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        end = time.monotonic() + 5
        while _pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _kill_at_exit(self) -> None:
        """atexit (and the end of :meth:`stop`): end the postmaster if it still runs, remove
        the temporary directory."""
        self._kill_postmaster()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)



# ----------------------------------------------------------------------------- TCP proxy


@dataclass
class ProxyStats:
    """Counters of a :class:`FaultProxy` (bytes and connections since it started)."""

    #: Connections accepted, in all.
    connections: int = 0
    #: Connections accepted during a cut (never connected upstream).
    connections_during_cut: int = 0
    #: Connections closed by :meth:`FaultProxy.heal`.
    connections_healed: int = 0
    #: Connections whose upstream connect failed (closed at once).
    upstream_failures: int = 0
    #: Bytes forwarded client → upstream.
    bytes_up: int = 0
    #: Bytes forwarded upstream → client.
    bytes_down: int = 0
    #: Bytes dropped during cuts (both directions).
    bytes_dropped: int = 0


class _Link:
    """One client connection and its upstream connection, if any."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.closed = False

    def abort(self) -> None:
        """Close both sides at once (pending bytes are lost)."""
        self.closed = True
        for w in (self.client, self.upstream):
            if w is not None:
                w.transport.abort()
                w.close()


class FaultProxy(_Service):
    """An asyncio TCP proxy on 127.0.0.1:<free port> to ``upstream_host:upstream_port``,
    that can simulate a network partition.

    :meth:`cut`: from then on bytes in both directions are silently dropped (connections
    stay open, so clients see timeouts, not resets) and new connections are accepted but
    never connected upstream. :meth:`heal`: every connection opened before or during the
    cut is closed (its state is lost), and forwarding is normal again. :attr:`stats` counts
    bytes and connections. ``connect_timeout_s``: seconds an upstream connect may take.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *,
                 connect_timeout_s: float = 5.0) -> None:
        if not 0 < upstream_port < 65536:
            raise ValueError(f"upstream_port must be in 1..65535, got {upstream_port!r}")
        self.connect_timeout_s = _check_seconds("connect_timeout_s", connect_timeout_s)
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.stats = ProxyStats()
        self._cut = False
        self._server: asyncio.Server | None = None
        self._port = 0
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port the proxy listens on (RuntimeError before :meth:`start`)."""
        if not self._port:
            raise RuntimeError("the proxy was not started")
        return self._port

    @property
    def is_cut(self) -> bool:
        """Whether the link is cut now."""
        return self._cut

    @property
    def open_connections(self) -> int:
        """Client connections open now."""
        return len(self._links)

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a free port (:attr:`port`)."""
        if self._server is not None:
            raise RuntimeError("the proxy already runs")
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._port = int(self._server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        """Partition: drop every byte in both directions from now on, keep connections
        open, accept new ones without connecting them upstream."""
        self._cut = True

    def heal(self) -> int:
        """End the partition: close every connection opened before or during the cut and
        forward normally again. Returns how many connections were closed (0, and nothing
        happens, when the link is not cut)."""
        if not self._cut:
            return 0
        self._cut = False
        links = list(self._links)
        for link in links:
            link.abort()
        self._links.clear()  # their handlers end on the next loop iterations
        self.stats.connections_healed += len(links)
        return len(links)

    async def stop(self) -> None:
        """Stop listening and close every connection. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.abort()
        if server is not None:
            await server.wait_closed()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link = _Link(writer)
        self._links.add(link)
        self.stats.connections += 1
        try:
            if self._cut:
                self.stats.connections_during_cut += 1
                await self._pump(reader, None, link)
                return
            try:
                up_reader, link.upstream = await asyncio.wait_for(
                    asyncio.open_connection(self.upstream_host, self.upstream_port),
                    self.connect_timeout_s)
            except (OSError, TimeoutError):
                self.stats.upstream_failures += 1
                return
            if link.closed:  # healed or stopped while connecting
                return
            await asyncio.gather(self._pump(reader, link.upstream, link),
                                 self._pump(up_reader, writer, link))
        finally:
            link.abort()
            self._links.discard(link)
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None,
                    link: _Link) -> None:
        """Copy ``src`` to ``dst`` (upstream when ``dst`` is the upstream writer), dropping
        the bytes while cut. At the end of ``src`` the link is closed, unless cut (a
        partition carries no FIN either: the link then stays open until :meth:`heal`)."""
        up = dst is not None and dst is link.upstream
        while not link.closed:
            try:
                data = await src.read(65536)
            except (OSError, asyncio.IncompleteReadError):
                data = b""
            if not data:
                if not self._cut:
                    link.abort()
                return
            if link.closed:
                return
            if self._cut or dst is None:
                self.stats.bytes_dropped += len(data)
                continue
            dst.write(data)
            if up:
                self.stats.bytes_up += len(data)
            else:
                self.stats.bytes_down += len(data)
            try:
                await dst.drain()
            except OSError:
                link.abort()
                return



# -------------------------------------------------------------------------------- clock

_O_CREAT_EXCL = os.O_CREAT | os.O_EXCL


class FakeClock:
    """Wall clock jumps for child processes, through libfaketime (Debian package
    ``faketime``).

    ``path``: the file holding the offset (libfaketime's ``FAKETIME_TIMESTAMP_FILE``,
    e.g. ``+120``: seconds ahead of the real clock; written ``+0`` now). Children started
    with :meth:`env` read their wall clock (``time.time()``, ``datetime.now()``) as real
    time + offset, re-read at every call (``FAKETIME_NO_CACHE``); their monotonic clock is
    left alone (``FAKETIME_DONT_FAKE_MONOTONIC``), as after an NTP step. File timestamps
    (``stat``) are not faked (``NO_FAKE_STAT``).

    libfaketime 0.9.10 creates a POSIX semaphore and shared memory in ``/dev/shm`` for each
    process that loads it, and leaks them when the process is killed: the clock creates one
    pair that all its children share (``FAKETIME_SHARED``), removed by :meth:`close`. The
    pair is the current user's (mode 0600): children must run as the same user.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset_s = 0.0
        self._write()
        self._shared: tuple[str, str] | None = self._create_shared()

    @staticmethod
    def library() -> Path | None:
        """The path of ``libfaketime.so.1`` (``/usr/lib/<arch>/faketime/``,
        ``/usr/lib/faketime/``, ``/usr/local/lib/faketime/``), or None."""
        for pattern in ("/usr/lib/*/faketime/libfaketime.so.1",
                        "/usr/lib/faketime/libfaketime.so.1",
                        "/usr/local/lib/faketime/libfaketime.so.1"):
            for found in sorted(glob.glob(pattern)):
                return Path(found)
        return None

    @classmethod
    def available(cls) -> bool:
        """Whether libfaketime is installed."""
        return cls.library() is not None

    @property
    def offset_s(self) -> float:
        """Seconds the children's wall clock is ahead of the real one (negative: behind)."""
        return self._offset_s

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment variables that put a child on this clock: ``LD_PRELOAD``,
        ``FAKETIME_TIMESTAMP_FILE``, ``FAKETIME_NO_CACHE``, ``FAKETIME_DONT_FAKE_MONOTONIC``,
        ``NO_FAKE_STAT`` (and ``FAKETIME_SHARED``). With ``base``, a copy of ``base`` with
        those added (an ``LD_PRELOAD`` of ``base`` kept after libfaketime) and without
        ``FAKETIME`` (it would override the file). RuntimeError without libfaketime."""
        lib = self.library()
        if lib is None:
            raise RuntimeError("libfaketime is not installed (apt-get install faketime)")
        extra = {"LD_PRELOAD": str(lib), "FAKETIME_TIMESTAMP_FILE": str(self.path),
                 "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                 "NO_FAKE_STAT": "1"}
        if self._shared is not None:
            extra["FAKETIME_SHARED"] = " ".join(self._shared)
        if base is None:
            return extra
        env = {k: v for k, v in base.items() if k not in ("FAKETIME", "FAKETIME_SHARED")}
        if env.get("LD_PRELOAD"):
            extra["LD_PRELOAD"] = f"{lib}:{env['LD_PRELOAD']}"
        env.update(extra)
        return env

    def jump(self, seconds: float) -> float:
        """Step the children's wall clock by ``seconds`` (negative: back in time), at once
        for all of them. Returns the new offset in seconds."""
        seconds = _check_seconds("seconds", seconds, negative=True)
        self._offset_s += seconds
        self._write()
        return self._offset_s

    def set_offset(self, seconds: float) -> None:
        """Set the offset to ``seconds`` from the real clock (0: back to real time)."""
        self._offset_s = _check_seconds("seconds", seconds, negative=True)
        self._write()

    def _write(self) -> None:
        """Write the offset atomically (a child reading it never sees half a file)."""
        value = self._offset_s
        text = f"{value:+.0f}" if value == int(value) else f"{value:+.6f}"
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, self.path)

    @staticmethod
    def _create_shared() -> tuple[str, str] | None:
        """Create the semaphore and shared memory libfaketime's children share; their
        names (``/faketime_sem_…``, ``/faketime_shm_…``), or None where that fails (the
        children then create their own)."""
        shm_dir = Path("/dev/shm")
        if not shm_dir.is_dir():
            return None
        stem = f"botsim_{os.getpid()}_{time.monotonic_ns()}"
        sem_name, shm_name = f"/faketime_sem_{stem}", f"/faketime_shm_{stem}"
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.sem_open.restype = ctypes.c_void_p
            sem = libc.sem_open(sem_name.encode(), ctypes.c_int(_O_CREAT_EXCL),
                                ctypes.c_uint(0o600), ctypes.c_uint(1))
        except (OSError, AttributeError):
            return None
        if not sem:
            return None
        libc.sem_close(ctypes.c_void_p(sem))
        try:
            # shm_open() is open() under /dev/shm on Linux; zeros are a valid state (no
            # ticks, start time 0, which the offset arithmetic cancels out)
            fd = os.open(shm_dir / shm_name[1:], _O_CREAT_EXCL | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, 4096)
            finally:
                os.close(fd)
        except OSError:
            FakeClock._unlink_shared((sem_name, shm_name))
            return None
        return sem_name, shm_name

    @staticmethod
    def _unlink_shared(names: tuple[str, str]) -> None:
        sem_name, shm_name = names
        for p in (Path("/dev/shm") / f"sem.{sem_name[1:]}", Path("/dev/shm") / shm_name[1:]):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def close(self) -> None:
        """Remove the offset file and the shared semaphore and memory: children still
        running go back to the real clock (the file is gone; they keep the shared memory
        they mapped). Idempotent."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._shared is not None:
            self._unlink_shared(self._shared)
            self._shared = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

"""Serve an ASGI app with uvicorn inside the running event loop (for in-process use)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the host process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class InProcessServer:
    """An ASGI app served by uvicorn in a background task of the current loop.

    Attributes:
        url: ``http://host:port`` (the port the OS picked when 0 was asked).
    """

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], url: str) -> None:
        self._server = server
        self._task = task
        self.url = url

    @classmethod
    async def start(cls, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> InProcessServer:
        """Bind ``host:port`` and serve ``app``.

        Raises:
            OSError: when the port is taken.
            RuntimeError: when uvicorn exits during start-up.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, timeout_graceful_shutdown=2
        )
        server = _QuietServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                sock.close()
                task.result()
                raise RuntimeError("uvicorn exited during start-up")
            await asyncio.sleep(0.01)
        return cls(server, task, f"http://{host}:{sock.getsockname()[1]}")

    async def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        self._server.should_exit = True
        await self._task

"""The admin API's FastAPI app and its process (``botsim api``).

Routes: ``GET /health/live``, ``GET /health/ready`` (503 when the database does not answer),
``/metrics`` (Prometheus), and under ``/api/v1`` the routes of :mod:`backend.api.routes_auth`,
:mod:`~backend.api.routes_bots`, :mod:`~backend.api.routes_chats` and
:mod:`~backend.api.routes_ops`. OpenAPI: ``/api/v1/openapi.json``. Every error answer is an
RFC 9457 problem details body (:mod:`backend.api.problems`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from argon2 import PasswordHasher
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api import (
    pages,
    pages_accounts,
    pages_events,
    pages_realism,
    problems,
    routes_auth,
    routes_bots,
    routes_chats,
    routes_events,
    routes_ops,
)
from backend.api.problems import PROBLEM_JSON, problem_bytes
from backend.api.security import (
    MAX_CONCURRENT_HASHES,
    ApiState,
    LoginThrottle,
    hash_password,
    make_hasher,
)
from backend.crypto import Secrets, resolve_secret_key
from backend.db.session import check_loop
from backend.metrics import init_series, metrics_app
from backend.settings import Settings
from backend.stores import health
from behavior_engine.reads import CachedReads

log = logging.getLogger(__name__)

#: Largest request body accepted, bytes (1 MiB); larger ones get 413 before any parsing.
MAX_BODY_BYTES = 1024 * 1024


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413.

    Checks ``Content-Length`` first, and counts the bytes of bodies sent without one
    (chunked): past the limit it answers 413 (problem details) itself, tells the app the client left
    (``http.disconnect``) and drops whatever the app still sends.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _too_large(self, scope: Scope, send: Send) -> None:
        body = problem_bytes(413, f"request body over {self.max_bytes} bytes", scope["path"])
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", PROBLEM_JSON.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    await self._too_large(scope, send)
                    return
        seen = 0
        started = False
        rejected = False

        async def counting_receive() -> Message:
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not started:
                    rejected = True
                    await self._too_large(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not rejected:
                raise


#: Seconds between purges of expired browser sessions (the first runs at startup).
SESSION_PURGE_EVERY_S = 3600.0


async def purge_sessions_forever(state: ApiState, every_s: float = SESSION_PURGE_EVERY_S
                                 ) -> None:
    """Delete expired browser sessions now and every ``every_s`` seconds, until cancelled.
    A failed purge (database down) is logged and tried again at the next round."""
    from backend.stores import users as user_store

    while True:
        try:
            async with state.sessionmaker() as session, session.begin():
                n = await user_store.purge_expired_sessions(session)
            if n:
                log.info("purged %d expired sessions", n)
        except Exception as exc:  # keep purging after a database outage
            log.warning("purging expired sessions failed: %s", exc)
        await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the session purge on this loop, which must own the app's database engine.

    Raises:
        WrongEventLoop: the lifespan runs on another loop than the engine's (a test client
            driving the app from a thread of its own); nothing is started then.
    """
    state: ApiState = app.state.api
    bind = state.sessionmaker.kw.get("bind")
    if isinstance(bind, AsyncEngine):
        check_loop(bind)
    task = asyncio.create_task(purge_sessions_forever(state, app.state.session_purge_every_s))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_app(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], *,
    hasher: PasswordHasher | None = None, throttle: LoginThrottle | None = None,
    secrets: Secrets | None = None, reads: CachedReads | None = None,
    local_workers: Callable[[], list[tuple[str, dict[str, Any]]]] | None = None,
    session_purge_every_s: float = SESSION_PURGE_EVERY_S,
) -> FastAPI:
    """The admin API app.

    Its lifespan purges expired browser sessions at start and every
    ``session_purge_every_s`` seconds, on the loop that serves it: that loop must own
    ``sessionmaker``'s engine (serve the app where the engine was made).

    Args:
        secrets: the process secrets (bot tokens are encrypted with their Fernet key).
        reads: the cached reads whose cache carries edits to the running workers (default:
            an in-memory cache over ``sessionmaker``, which reaches no other process).
        hasher: the password hasher (default :func:`make_hasher`; tests pass cheaper ones).
        throttle: the failed-login limiter (default :class:`LoginThrottle` with its limits).
        local_workers: the (id, status) of workers running in this process, shown in the
            provider health (``botsim demo`` passes its worker's).
        session_purge_every_s: seconds between purges of expired sessions (> 0).

    Raises:
        ConfigError: in production without ``BOTSIM_SECRET_KEY`` (or with one shorter than
            32 characters); see :func:`backend.crypto.resolve_secret_key`.
    """
    secret_key = resolve_secret_key(settings)
    hasher = hasher or make_hasher()
    dev = settings.env == "development"
    app = FastAPI(
        title="botsim admin API", version="1",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs" if dev else None, redoc_url=None, lifespan=_lifespan,
    )
    if not session_purge_every_s > 0:
        raise ValueError(f"session_purge_every_s must be > 0, got {session_purge_every_s!r}")
    app.state.session_purge_every_s = session_purge_every_s
    app.state.api = ApiState(
        settings=settings, sessionmaker=sessionmaker, secret_key=secret_key, hasher=hasher,
        throttle=throttle or LoginThrottle(),
        # An unknown username is verified against this, so it costs what a real user costs.
        dummy_hash=hash_password(hasher, "botsim-dummy-password"),
        hash_slots=asyncio.Semaphore(MAX_CONCURRENT_HASHES),
        cipher=secrets.cipher() if secrets is not None else None,
        reads=reads or CachedReads(settings.make_cache(), sessionmaker),
        local_workers=local_workers or (lambda: []),
    )

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        """The process answers."""
        return {"status": "live"}

    @app.get("/health/ready", tags=["health"], response_model=None)
    async def ready(request: Request) -> JSONResponse | dict[str, str]:
        """The database answers (503 otherwise)."""
        state: ApiState = request.app.state.api
        try:
            async with state.sessionmaker() as session:
                await health.ping(session)
        except Exception as exc:  # readiness reports any failure
            return JSONResponse({"status": "not ready", "reason": type(exc).__name__},
                                status_code=503)
        return {"status": "ready"}

    app.include_router(routes_auth.router, prefix="/api/v1")
    app.include_router(routes_bots.router, prefix="/api/v1")
    app.include_router(routes_chats.router, prefix="/api/v1")
    app.include_router(routes_ops.router, prefix="/api/v1")
    app.include_router(routes_events.router, prefix="/api/v1")
    app.include_router(pages.router)
    app.include_router(pages_realism.router)
    app.include_router(pages_events.router)
    app.include_router(pages_accounts.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    app.mount("/metrics", metrics_app())
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    problems.install(app)
    return app


async def serve(settings: Settings, secrets: Secrets) -> None:
    """Run the admin API on ``api_host:api_port`` until cancelled (migrates first).

    The process starts through :func:`botsim.bootstrap.runtime` (migrations, engine, cache,
    reads; no Redis client of its own).

    Args:
        secrets: the process secrets (bot tokens written through the API).

    Raises:
        ConfigError: see :func:`create_app`.
        StorageError: the database cannot be reached or migrated.
    """
    import uvicorn

    from botsim.bootstrap import runtime

    resolve_secret_key(settings)  # refuse before touching the database
    init_series("api")
    async with runtime(settings, redis=False) as rt:
        app = create_app(settings, rt.sessionmaker, secrets=secrets, reads=rt.reads)
        config = uvicorn.Config(app, host=settings.api_host, port=settings.api_port,
                                log_level="warning", access_log=False,
                                log_config=None,  # its lines go through ours (JSON or plain)
                                **settings.proxy_options())
        log.info("admin API on http://%s:%s", settings.api_host, settings.api_port)
        await uvicorn.Server(config).serve()

"""Authentication of the admin API: password hashing, principals, roles, CSRF, login throttle.

Two ways in:

- a browser session: the ``botsim_session`` cookie (HttpOnly, SameSite=Strict, Secure
  outside development) whose HMAC-SHA256 digest names a row of ``api_sessions``. Requests
  that change state (POST/PUT/PATCH/DELETE) must echo the session's CSRF token in the
  ``X-CSRF-Token`` header (:func:`csrf_protect`).
- an API token: ``Authorization: Bearer <token>``, digest in ``api_tokens``. No cookie is
  involved, so no CSRF check.

Routes depend on :func:`require_viewer` or :func:`require_admin`; both include
:func:`csrf_protect`, so no state-changing route can forget it.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import Depends, HTTPException, Path, Request, status
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.api_schemas import Role
from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from backend.settings import Settings
from backend.stores import users as store
from behavior_engine.reads import CachedReads

SESSION_COOKIE = "botsim_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: Concurrent argon2 computations per process: each takes 64 MiB (the parameters below),
#: so this bounds the memory a burst of logins can take to 256 MiB.
MAX_CONCURRENT_HASHES = 4


def make_hasher() -> PasswordHasher:
    """The password hasher: argon2id with argon2-cffi's default profile.

    That profile is RFC 9106's second recommended option ("low memory", §4): t=3 passes,
    m=64 MiB, p=4 lanes, 16-byte salt, 32-byte tag. argon2 takes passwords of any length
    and any bytes (UTF-8 here), unlike bcrypt's 72-byte limit.
    """
    return PasswordHasher()  # type ID is the default


def hash_password(hasher: PasswordHasher, password: str) -> str:
    """The argon2id PHC string (``$argon2id$v=19$m=...``) of ``password``."""
    return hasher.hash(password)


def verify_password(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; False on a mismatch or bad hash."""
    try:
        return hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Principal:
    """Who is calling.

    Attributes:
        via: ``session`` (browser cookie; CSRF applies) or ``token`` (bearer API token).
        csrf_token: the session's CSRF token; None for API tokens.
        session_hash: the session's token digest (for logout); None for API tokens.
    """

    user_id: int
    username: str
    role: Role
    via: Literal["session", "token"]
    csrf_token: str | None = None
    session_hash: str | None = field(default=None, repr=False)


class LoginThrottle:
    """Sliding-window limit on failed logins, per username and per client address.

    Defaults: 5 failures per 15 minutes per username, 20 per address (OWASP Authentication
    Cheat Sheet advises limiting per account and per source; the figures are ours). The
    windows live in this process's memory: each API process counts on its own, and a
    restart forgets them. Run one API process, or accept N × the limit with N processes.

    An attempt counts as a failure from the moment it starts (:meth:`begin`) and is taken
    back on success (:meth:`succeeded`), so a burst of concurrent guesses cannot all pass
    the check before the first failure is recorded.

    Args:
        max_keys: keys remembered at most (oldest dropped first): bounds memory under a
            flood of made-up usernames.
    """

    def __init__(self, *, per_user: int = 5, per_address: int = 20, window_s: float = 900.0,
                 max_keys: int = 100_000) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.window_s = window_s
        self.max_keys = max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def _live(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            return deque()
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if not hits:
            del self._hits[key]
        return hits

    def _keys(self, username: str, address: str) -> tuple[tuple[str, int], tuple[str, int]]:
        return (f"u:{username.casefold()}", self.per_user), (f"a:{address}", self.per_address)

    def retry_after(self, username: str, address: str, *, now: float | None = None) -> int:
        """Seconds until another attempt is allowed; 0 when allowed now."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key, limit in self._keys(username, address):
            hits = self._live(key, now)
            if len(hits) >= limit:
                wait = max(wait, hits[len(hits) - limit] + self.window_s - now)
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def begin(self, username: str, address: str, *, now: float | None = None) -> float:
        """Count an attempt as failed; returns its timestamp for :meth:`succeeded`."""
        now = time.monotonic() if now is None else now
        for key, _ in self._keys(username, address):
            self._hits.setdefault(key, deque()).append(now)
            self._hits.move_to_end(key)
        while len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)
        return now

    def succeeded(self, username: str, address: str, started: float) -> None:
        """Take back the attempt begun at ``started`` and forget the username's failures
        (the address keeps its count: a success must not launder other guesses)."""
        user_key, _ = self._keys(username, address)[0]
        self._hits.pop(user_key, None)
        hits = self._hits.get(f"a:{address}")
        if hits is not None:
            try:
                hits.remove(started)
            except ValueError:
                pass


#: Largest id of our tables: their ids are PostgreSQL INTEGER (int32). Ids and cursors
#: outside 1..MAX_DB_ID are refused with 422 before they reach the database driver (which
#: would fail on them: asyncpg refuses values beyond int32, SQLite beyond int64).
MAX_DB_ID = 2**31 - 1
#: Pattern of a free-text query value: anything but NUL, which PostgreSQL text cannot hold
#: (asyncpg fails on it), so such a value is refused with 422 before it reaches the driver.
NO_NUL = r"^[^\x00]*$"
#: A path parameter naming a row of ours.
DbId = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="our id (1 to 2^31-1)")]


@dataclass
class ApiState:
    """What the routes need, kept on ``app.state.api``.

    Attributes:
        cipher: encrypts bot tokens written through the API (None: bot-token routes
            answer 503).
        reads: the process's cached reads; its cache carries the stores' invalidations to
            the running workers (over Redis pub/sub when ``REDIS_URL`` is set).
        local_workers: (worker id, :meth:`worker.Worker.status`) of the workers running in
            this process (``botsim demo``'s), for the provider health.
    """

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    secret_key: str
    hasher: PasswordHasher
    throttle: LoginThrottle
    dummy_hash: str
    hash_slots: asyncio.Semaphore
    cipher: TokenCipher | None = None
    reads: CachedReads | None = None
    local_workers: Callable[[], list[tuple[str, dict[str, Any]]]] = field(
        default=lambda: [])

    @property
    def cache(self) -> TwoLayerCache | None:
        """The cache the stores invalidate after a change commits (None: no cached reads)."""
        return self.reads.cache if self.reads is not None else None

    @property
    def secure_cookies(self) -> bool:
        """Secure cookies everywhere except development (plain http://127.0.0.1)."""
        return self.settings.env != "development"

    async def verify(self, password_hash: str, password: str) -> bool:
        """:func:`verify_password` in a thread, at most :data:`MAX_CONCURRENT_HASHES` at once."""
        async with self.hash_slots:
            return await asyncio.to_thread(verify_password, self.hasher, password_hash, password)

    async def hash(self, password: str) -> str:
        """:func:`hash_password` in a thread, bounded like :meth:`verify`."""
        async with self.hash_slots:
            return await asyncio.to_thread(hash_password, self.hasher, password)


def api_state(request: Request) -> ApiState:
    """The app's :class:`ApiState`."""
    state: ApiState = request.app.state.api
    return state


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})


async def current_principal(
    request: Request, state: Annotated[ApiState, Depends(api_state)]
) -> Principal:
    """The caller, from ``Authorization: Bearer`` (tried first) or the session cookie.

    Raises:
        HTTPException: 401 when neither names a live session or unrevoked token.
    """
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("expected 'Authorization: Bearer <token>'")
        digest = store.token_digest(state.secret_key, token.strip())
        async with state.sessionmaker() as session, session.begin():
            found = await store.principal_for_token(session, token_hash=digest)
            if found is None:
                raise _unauthorized("unknown or revoked API token")
            _, user = found
            return Principal(user_id=user.id, username=user.username,
                             role=user.role,  # type: ignore[arg-type]
                             via="token")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise _unauthorized("not logged in")
    digest = store.token_digest(state.secret_key, cookie)
    async with state.sessionmaker() as session:
        live = await store.session_for(session, token_hash=digest)
        if live is None:
            raise _unauthorized("session expired or unknown; log in again")
        api_session, user = live
        return Principal(user_id=user.id, username=user.username,
                         role=user.role,  # type: ignore[arg-type]
                         via="session", csrf_token=api_session.csrf_token,
                         session_hash=digest)


async def csrf_protect(
    request: Request, principal: Annotated[Principal, Depends(current_principal)]
) -> Principal:
    """For a cookie session and an unsafe method, require ``X-CSRF-Token`` to equal the
    session's CSRF token (compared in constant time). Bearer tokens pass unchecked.

    Raises:
        HTTPException: 403 when the header is missing or wrong.
    """
    if principal.via != "session" or request.method.upper() in SAFE_METHODS:
        return principal
    sent = request.headers.get(CSRF_HEADER)
    if not sent:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"missing {CSRF_HEADER} header")
    expected = (principal.csrf_token or "").encode()
    if not expected or not hmac.compare_digest(sent.encode(), expected):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"wrong {CSRF_HEADER} header")
    return principal


async def require_viewer(
    principal: Annotated[Principal, Depends(csrf_protect)],
) -> Principal:
    """Any logged-in user (viewers read; both roles may call); CSRF-checked."""
    return principal


async def require_admin(
    principal: Annotated[Principal, Depends(csrf_protect)],
) -> Principal:
    """An admin; CSRF-checked.

    Raises:
        HTTPException: 403 for a viewer.
    """
    if principal.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="admin role required")
    return principal


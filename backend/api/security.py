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
import functools
import hmac
import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
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
        role: what the caller may do: the user's role, but ``viewer`` for a ``read``-scope
            token whatever the user's role (an ``admin``-scope token of a viewer is a viewer).
        via: ``session`` (browser cookie; CSRF applies) or ``token`` (bearer API token).
        csrf_token: the session's CSRF token; None for API tokens.
        session_hash: the session's token digest (for logout); None for API tokens.
        token_id: the API token's id; None for a session.
        scope: the API token's scope (``read`` or ``admin``); None for a session.
        credentials_version: the user's ``credentials_version`` the session or token was
            issued under (a token this session creates carries it; see
            :func:`backend.stores.users.change_password`).
    """

    user_id: int
    username: str
    role: Role
    via: Literal["session", "token"]
    csrf_token: str | None = None
    session_hash: str | None = field(default=None, repr=False)
    token_id: int | None = None
    scope: Literal["read", "admin"] | None = None
    credentials_version: int = 0


class LoginThrottle:
    """Failed-login limits that slow guessing down without locking the owner out.

    Three counts of failed logins, each over a sliding window (15 minutes):

    - per (username, client address): 5 failures, then that address gets 429 with
      ``Retry-After`` for that username (someone guessing from one place);
    - per client address: 20 failures, then that address gets 429 for every username
      (one place trying many usernames);
    - per username, from any address: never a refusal. From the 6th failure in the window
      on, every attempt on that username waits before its password is checked: 0.25 s,
      doubling with each further failure, at most 4 s (an ``asyncio.sleep``: the event
      loop serves others meanwhile).

    So an attacker who knows a username cannot lock its owner out: the right password
    from an address that has not been failing logs in (at most 4 s late) even while the
    username is under attack from many others. What the attacker gets is at most 5
    guesses per address per username per window, each one slowed down, and 20 per
    address over all usernames. The OWASP Authentication Cheat Sheet advises limiting per
    account and per source and warns that an account lockout is itself a denial of
    service; the figures are ours.

    The client address is :func:`client_address`: the TCP peer, or what a trusted proxy
    (``BOTSIM_TRUSTED_PROXIES``) says in ``X-Forwarded-For``; a client cannot pick it.

    An attempt counts as a failure from the moment it starts (:meth:`begin`) and is taken
    back on success (:meth:`succeeded`), so a burst of concurrent guesses cannot all pass
    the check before the first failure is recorded.

    The windows live in this process's memory: each API process counts on its own, and a
    restart forgets them. Memory is bounded: at most ``max_keys`` counters (the oldest
    dropped first, under a flood of made-up usernames or addresses), each holding at most
    :data:`KEEP_PER_KEY` timestamps.

    Args:
        per_pair: failures per (username, address) before 429.
        per_address: failures per address (any username) before 429.
        user_free: failures per username (any address) before attempts on it are slowed.
        user_delay_s: the first slowdown, seconds; doubles with each further failure.
        max_delay_s: the longest slowdown, seconds.
        window_s: the sliding window, seconds.
        max_keys: counters remembered at most.

    Raises:
        ValueError: a limit below 1, a negative delay or a window that is not positive.
    """

    #: Timestamps kept per counter at most (the per-username count needs no more to reach
    #: its longest delay; the refusing counts are capped by their limits anyway).
    KEEP_PER_KEY = 64

    def __init__(self, *, per_pair: int = 5, per_address: int = 20, user_free: int = 5,
                 user_delay_s: float = 0.25, max_delay_s: float = 4.0,
                 window_s: float = 900.0, max_keys: int = 100_000) -> None:
        if min(per_pair, per_address, user_free + 1, max_keys) < 1:
            raise ValueError("login limits and max_keys must be at least 1")
        if user_delay_s < 0 or max_delay_s < 0 or not window_s > 0:
            raise ValueError("delays must be >= 0 and window_s > 0")
        self.per_pair = per_pair
        self.per_address = per_address
        self.user_free = user_free
        self.user_delay_s = user_delay_s
        self.max_delay_s = max_delay_s
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

    @staticmethod
    def _user_key(username: str) -> str:
        return f"u:{username.casefold()}"

    @staticmethod
    def _pair_key(username: str, address: str) -> str:
        return f"p:{address}\x00{username.casefold()}"

    @staticmethod
    def _address_key(address: str) -> str:
        return f"a:{address}"

    def retry_after(self, username: str, address: str, *, now: float | None = None) -> int:
        """Seconds until ``address`` may try ``username`` again; 0 when it may now.

        Only the per-(username, address) and per-address counts refuse; the per-username
        count never does (see :meth:`delay`).
        """
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key, limit in ((self._pair_key(username, address), self.per_pair),
                           (self._address_key(address), self.per_address)):
            hits = self._live(key, now)
            if len(hits) >= limit:
                wait = max(wait, hits[len(hits) - limit] + self.window_s - now)
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def delay(self, username: str, *, now: float | None = None) -> float:
        """Seconds an attempt on ``username`` waits before its password is checked: 0 up
        to ``user_free`` failures in the window, then ``user_delay_s`` doubling with each
        further failure, at most ``max_delay_s``."""
        now = time.monotonic() if now is None else now
        over = len(self._live(self._user_key(username), now)) - self.user_free
        if over < 0:
            return 0.0
        return float(min(self.max_delay_s, self.user_delay_s * 2.0 ** min(over, 32)))

    def begin(self, username: str, address: str, *, now: float | None = None) -> float:
        """Count an attempt as failed; returns its timestamp for :meth:`succeeded`."""
        now = time.monotonic() if now is None else now
        for key in (self._user_key(username), self._pair_key(username, address),
                    self._address_key(address)):
            self._hits.setdefault(key, deque(maxlen=self.KEEP_PER_KEY)).append(now)
            self._hits.move_to_end(key)
        while len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)
        return now

    def succeeded(self, username: str, address: str, started: float) -> None:
        """Take back the attempt begun at ``started`` and forget this address's failures
        on ``username``. The address and the username keep their other failures: a
        success must not launder other guesses, nor end the slowdown of an attack."""
        self._hits.pop(self._pair_key(username, address), None)
        for key in (self._address_key(address), self._user_key(username)):
            hits = self._hits.get(key)
            if hits is not None:
                try:
                    hits.remove(started)
                except ValueError:
                    pass


#: Most ``X-Forwarded-For`` entries read (right to left) from a trusted proxy: a chain of
#: proxies is short; whatever lies further left was written by the client.
MAX_FORWARDED_HOPS = 16

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=16)
def _networks(trusted: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in trusted)


def _ip(text: str) -> _Address | None:
    """An address from a forwarded entry (``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:80``,
    ``::1``); None when it is none (``unknown``, a hostname, garbage)."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def client_address(request: Request, trusted_proxies: Sequence[str] = ()) -> str:
    """The client's address, as the failed-login limits count it.

    The TCP peer, unless the peer is one of ``trusted_proxies`` (``BOTSIM_TRUSTED_PROXIES``:
    addresses or CIDR networks; empty by default, so no forwarded header is believed).
    From a trusted peer, ``X-Forwarded-For`` (every such header, joined) is read right to
    left: the first address that is not a trusted proxy is the client; entries further
    left were written by the client and prove nothing. When every entry is a trusted
    proxy, the leftmost one; an entry that is not an address ends the walk at the last
    trusted hop (which reported it). At most :data:`MAX_FORWARDED_HOPS` entries are read.

    Returns:
        An IP address as text (IPv4-mapped IPv6 as IPv4), or the peer's host as given when
        it is not an IP address, or ``"unknown"`` without a peer.
    """
    peer = request.client.host if request.client else None
    if peer is None:
        return "unknown"
    peer_ip = _ip(peer)
    if peer_ip is None or not trusted_proxies:
        return str(peer_ip) if peer_ip is not None else peer
    networks = _networks(tuple(trusted_proxies))

    def trusted(ip: _Address) -> bool:
        return any(ip.version == n.version and ip in n for n in networks)

    if not trusted(peer_ip):
        return str(peer_ip)
    header = ",".join(request.headers.getlist("x-forwarded-for"))
    hop = peer_ip
    for entry in reversed(header.split(",")[-MAX_FORWARDED_HOPS:] if header.strip() else []):
        found = _ip(entry)
        if found is None:
            break
        hop = found
        if not trusted(found):
            break
    return str(hop)


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

    Every request reads the session or token and its user from the database, so a revoked
    or expired token, a disabled user, ended sessions and a changed password are refused
    from the very next request on.

    Raises:
        HTTPException: 401 when neither names a live session or an active token (unknown,
            revoked, expired, issued before a password change, or its user disabled).
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
                raise _unauthorized("unknown, revoked or expired API token")
            row, user = found
            scope: Literal["read", "admin"] = "admin" if row.scope == "admin" else "read"
            role: Role = "admin" if user.role == "admin" and scope == "admin" else "viewer"
            return Principal(user_id=user.id, username=user.username, role=role,
                             via="token", token_id=row.id, scope=scope,
                             credentials_version=row.credentials_version)
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
                         role="admin" if user.role == "admin" else "viewer",
                         via="session", csrf_token=api_session.csrf_token,
                         session_hash=digest,
                         credentials_version=api_session.credentials_version)


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


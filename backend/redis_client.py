"""Every Redis client of botsim is made here, with one timeout and retry policy.

One policy, two roles (:data:`RedisRole`):

* ``"commands"``: request/reply commands (GET, EVALSHA, pipelines...). Connect, read and
  write time out after :data:`backend.keys.SOCKET_TIMEOUT_S` seconds, and a command that
  fails on a connection error or a timeout is retried **once, immediately** (no backoff):
  the usual cause is a pooled connection the server closed while it sat idle, and a fresh
  connection fixes that at once. A Redis that accepts connections and never answers
  costs one command 4 socket timeouts (2.0 s; redis-py 8.1 also retries the connection
  handshake, measured in ``tests/integration/test_redis_client.py``); whoever called then
  decides (the cache and the limiter switch to their degraded modes, see
  :class:`backend.outage.Outage`).
* ``"subscriber"``: the connection of a pub/sub subscriber. Same timeouts, **no retry**:
  a subscriber that silently reconnected would miss the messages published while it was
  away, with nobody told. A break must surface to its owner, which re-subscribes and makes
  up for what it missed (the cache clears its L1).

Both roles PING a pooled connection that sat idle more than
:data:`backend.keys.HEALTH_CHECK_INTERVAL_S` seconds before using it, so a connection
dropped by a firewall or a Redis restart is found before a command is lost on it.

:func:`make_redis` makes an asyncio client (``redis.asyncio.Redis``), :func:`make_sync_redis`
its blocking twin for the one synchronous use (``botsim worker --check``). Neither connects
until the first command: an unreachable Redis raises then, not here.

This module is on the ground floor: it imports only redis-py and :mod:`backend.keys`.
"""

from __future__ import annotations

from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

from backend import keys

#: What a client is for; it decides the retry policy (module docstring).
RedisRole = Literal["commands", "subscriber"]

#: Retries per role after the first attempt (connection errors and timeouts only).
RETRIES: dict[RedisRole, int] = {"commands": 1, "subscriber": 0}

#: URL schemes redis-py accepts (TCP, TLS, Unix socket).
SCHEMES = frozenset({"redis", "rediss", "unix"})


def redacted_url(url: str) -> str:
    """``scheme://host:port/path`` of a URL, without user, password or query (for logs).

    Never raises: a URL that does not parse comes back as ``"<unparseable URL>"``.
    """
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
    except ValueError:  # e.g. a port that is not a number
        return "<unparseable URL>"


def _check(url: object, role: object) -> None:
    if not isinstance(url, str) or urlsplit(url).scheme not in SCHEMES:
        shown = redacted_url(url) if isinstance(url, str) else type(url).__name__
        raise ValueError(
            f"not a Redis URL: {shown!r}; expected redis://host:port/db "
            "(or rediss:// for TLS, unix:///path/to/socket)"
        )
    if role not in get_args(RedisRole):
        raise ValueError(f"unknown Redis client role {role!r}; one of {get_args(RedisRole)}")


def _timeouts() -> dict[str, Any]:
    return {
        "socket_timeout": keys.SOCKET_TIMEOUT_S,
        "socket_connect_timeout": keys.SOCKET_TIMEOUT_S,
        "health_check_interval": keys.HEALTH_CHECK_INTERVAL_S,
    }


def make_redis(url: str, *, role: RedisRole) -> redis.asyncio.Redis:
    """An asyncio Redis client on ``url`` with botsim's policy for ``role``.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS) or
            ``unix:///path``.
        role: ``"commands"`` (one immediate retry) or ``"subscriber"`` (no retry); the
            timeouts are the same for both (module docstring).

    Returns:
        A client with its own connection pool; the caller closes it (``await aclose()``).
        Nothing is connected yet.

    Raises:
        ValueError: ``url`` is not a Redis URL (named without its credentials), or
            ``role`` is unknown.
    """
    _check(url, role)
    retry = redis.asyncio.retry.Retry(NoBackoff(), RETRIES[role])
    return redis.asyncio.Redis.from_url(url, retry=retry, **_timeouts())


def make_sync_redis(url: str, *, role: RedisRole = "commands") -> redis.Redis:
    """The blocking twin of :func:`make_redis` (same arguments, same policy).

    For synchronous code only (``botsim worker --check``); close it with ``close()``.

    Raises:
        ValueError: as :func:`make_redis`.
    """
    _check(url, role)
    retry = redis.retry.Retry(NoBackoff(), RETRIES[role])
    return redis.Redis.from_url(url, retry=retry, **_timeouts())

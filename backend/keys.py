"""Every Redis key, channel and TTL of botsim, in one place (arq's ``constants.py`` habit).

Key layout of the two-layer cache (``backend.cache``), for namespace ``ns`` (default
``botsim``), cache kind ``kind`` and entity key ``key``::

    {ns}:cache:v{schema}:{kind}:{key}   the cached value: a string (``get``) or a list
                                        (``get_list``/``append``: element 0 is a header,
                                        the items follow, oldest first); TTL ``L2_TTL_S``
    {ns}:cache:gen:{kind}:{key}         generation counter of that entry (INCR on every
                                        invalidate and append); TTL ``GEN_TTL_S``
    {ns}:cache:invalidate               pub/sub channel: JSON events
                                        ``{"op", "kind", "key", "origin"}``

``schema`` is the per-kind schema version in :data:`SCHEMA_VERSIONS`: bump it when the
shape of a cached value changes, and a new deployment never reads values written by the
old one (they expire by TTL). The generation counter guards fills: a process that missed
reads the generation together with the value, and writes what its loader returned only if
the generation is unchanged, so a load that raced with an invalidation never puts the old
value back. Pub/sub channels are global to a Redis server (not per database index): two
deployments sharing one server must use different namespaces.
"""

from __future__ import annotations

#: Element 0 of every cached list: marks the list as cached even when it has no items
#: (Redis deletes empty lists). Readers skip it by position, never by content.
LIST_HEADER = b"botsim-list"

#: Default namespace (first segment of every key and channel).
DEFAULT_NAMESPACE = "botsim"

#: Per-kind schema version of cached values; kinds not listed are at version 1.
#: The kinds are named in ``backend.invalidation`` (``bot``, ``chats``, ``history``,
#: ``settings``).
SCHEMA_VERSIONS: dict[str, int] = {
    "bot": 1,
    "chats": 1,
    "history": 1,
    "settings": 1,
}

#: Seconds a value lives in L1 (the process's memory). Also the staleness bound while
#: Redis is unreachable (no invalidations arrive then).
L1_TTL_S = 30.0
#: Entries held in L1 (LRU beyond this).
L1_SIZE = 10_000
#: Seconds a value lives in L2 (Redis); invalidations delete it sooner.
L2_TTL_S = 600.0
#: Seconds a generation counter lives after its last bump. It must outlast the slowest
#: loader by far: a counter that expired mid-load could let one stale fill through.
GEN_TTL_S = 86_400.0

#: Redis socket read/write and connect timeouts, seconds: a hung Redis costs one call at
#: most twice this (one immediate retry), then the cache runs degraded until the
#: background reconnect succeeds.
SOCKET_TIMEOUT_S = 0.5
#: Seconds a pooled connection may sit idle before redis-py PINGs it before use.
HEALTH_CHECK_INTERVAL_S = 5
#: Background reconnect backoff: first wait and cap, seconds (doubling in between).
RECONNECT_INITIAL_S = 0.05
RECONNECT_MAX_S = 1.0


def schema_version(kind: str) -> int:
    """The schema version of ``kind`` (1 for kinds not in :data:`SCHEMA_VERSIONS`)."""
    return SCHEMA_VERSIONS.get(kind, 1)


def cache_key(kind: str, key: str, *, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The L2 key of a cached value, e.g. ``botsim:cache:v1:persona:42``."""
    return f"{namespace}:cache:v{schema_version(kind)}:{kind}:{key}"


def generation_key(kind: str, key: str, *, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The generation counter of a cached value, e.g. ``botsim:cache:gen:persona:42``."""
    return f"{namespace}:cache:gen:{kind}:{key}"


def invalidation_channel(namespace: str = DEFAULT_NAMESPACE) -> str:
    """The pub/sub channel carrying cache invalidations, e.g. ``botsim:cache:invalidate``."""
    return f"{namespace}:cache:invalidate"


#: The invalidation channel of the default namespace.
INVALIDATION_CHANNEL = invalidation_channel()

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

Key layout of the shared send limiter (``bots.ratelimit.SharedLimiter``); ``{rl}`` is
literal, a Redis Cluster hash tag that puts every limiter key in one slot, because one
script call touches a bot's, a chat's and a (bot, chat)'s keys together::

    {ns}:{rl}:block:{bot}          the bot's 429 block: a string whose PTTL is the rest of
                                   ``retry_after``
    {ns}:{rl}:chat:{bot}:{chat}    sliding-window log of (bot, chat) sends (sorted set,
                                   score = Redis time in ms): Telegram's 1 message/s
    {ns}:{rl}:group:{bot}:{chat}   the same for Telegram's 20 messages/min per group
    {ns}:{rl}:bot:{bot}            the bot's sends to any chat: Telegram's ~30 messages/s
    {ns}:{rl}:cap:{chat}           every bot's sends to the chat: the operator's cap per min

Each log expires one window after its newest send.
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
    "chats": 2,  # 2: ChatInfo.member_talk
    "history": 1,
    "settings": 1,
    "events": 1,
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

#: Redis socket read/write and connect timeouts, seconds, of every client
#: (``backend.redis_client``). A Redis that accepts connections and never answers costs a
#: command 4 times this (2.0 s, measured with redis-py 8.1: the connection handshake and the
#: command are each tried twice, the command's one immediate retry), a pub/sub subscriber
#: once; the cache and the limiter then serve locally until a probe succeeds
#: (``backend.outage``). Short because the callers have a local answer to fall back on.
SOCKET_TIMEOUT_S = 0.5
#: Seconds a pooled connection may sit idle before redis-py PINGs it before use (finds a
#: connection dropped by a firewall or a Redis restart before a command is lost on it).
HEALTH_CHECK_INTERVAL_S = 5
#: Outage probe backoff (``backend.outage.Outage``): first wait and cap, seconds (doubling
#: after each failed probe).
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


# -- sharding: membership, leases, reply requests (behavior_engine.leases, .replies) -------
#
#     {ns}:workers                  sorted set: worker id → last heartbeat (Unix ms, the
#                                   worker's clock; informative: liveness is the key below)
#     {ns}:worker:{id}              heartbeat of one worker (JSON info); TTL = heartbeat TTL
#     {ns}:lease:{bot_id}           the bot's lease: the holder's worker id; TTL = lease TTL
#                                   (the fencing token lives in the database, bot_leases)
#     {ns}:floor:{chat_id}          who holds the floor of a chat for a spontaneous turn
#     {ns}:replies                  stream of reply requests (human message → chosen bot)
#     {ns}:replied:{message_id}     the bots a human message was dispatched to (JSON)
#     {ns}:sweeper                  lock of the re-dispatch sweep (one worker at a time)

#: Seconds a worker's heartbeat and its leases live without renewal (default setting).
HEARTBEAT_TTL_S = 10.0
#: Seconds a chat's floor is held at most by one spontaneous turn.
FLOOR_TTL_S = 30.0


def workers_key(namespace: str = DEFAULT_NAMESPACE) -> str:
    """The sorted set of known workers, e.g. ``botsim:workers``."""
    return f"{namespace}:workers"


def worker_key(worker_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """One worker's heartbeat key, e.g. ``botsim:worker:host-12-ab3f``."""
    return f"{namespace}:worker:{worker_id}"


def lease_key(bot_id: int, namespace: str = DEFAULT_NAMESPACE) -> str:
    """A bot's lease, e.g. ``botsim:lease:42``."""
    return f"{namespace}:lease:{bot_id}"


def floor_key(chat_id: int, namespace: str = DEFAULT_NAMESPACE) -> str:
    """A chat's floor for spontaneous turns, e.g. ``botsim:floor:7``."""
    return f"{namespace}:floor:{chat_id}"


def replies_stream(namespace: str = DEFAULT_NAMESPACE) -> str:
    """The stream of reply requests, e.g. ``botsim:replies``."""
    return f"{namespace}:replies"


def replied_key(message_id: int, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Which bots a human message was dispatched to, e.g. ``botsim:replied:981``."""
    return f"{namespace}:replied:{message_id}"


def sweeper_key(namespace: str = DEFAULT_NAMESPACE) -> str:
    """The lock of the reply re-dispatch sweep, e.g. ``botsim:sweeper``."""
    return f"{namespace}:sweeper"


def ratelimit_block_key(bot_id: int, *, namespace: str = DEFAULT_NAMESPACE) -> str:
    """A bot's 429 block (PTTL = ms left), e.g. ``botsim:{rl}:block:7``."""
    return f"{namespace}:{{rl}}:block:{bot_id}"


def ratelimit_chat_key(bot_id: int, chat_id: int, *, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Send log of one bot in one chat (per-second limit), e.g. ``botsim:{rl}:chat:7:-100``."""
    return f"{namespace}:{{rl}}:chat:{bot_id}:{chat_id}"


def ratelimit_group_key(bot_id: int, chat_id: int, *, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Send log of one bot in one group (per-minute limit), e.g. ``botsim:{rl}:group:7:-100``."""
    return f"{namespace}:{{rl}}:group:{bot_id}:{chat_id}"


def ratelimit_bot_key(bot_id: int, *, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Send log of one bot across chats (per-second limit), e.g. ``botsim:{rl}:bot:7``."""
    return f"{namespace}:{{rl}}:bot:{bot_id}"


def ratelimit_chat_cap_key(chat_id: int, *, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Send log of all bots in one chat (operator's cap), e.g. ``botsim:{rl}:cap:-100``."""
    return f"{namespace}:{{rl}}:cap:{chat_id}"

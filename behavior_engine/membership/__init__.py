"""Which bots this worker holds, and how human messages reach it: one interface, two kinds.

:class:`Membership` is chosen once at start-up (:func:`membership_for`):

* :class:`InProcessMembership`: one worker, no Redis. It holds every enabled bot of an
  enabled chat under fencing tokens from the database, reads waiting human messages from
  the chats' history, and enforces Telegram's limits in this process.
* :class:`SharedMembership`: many workers over Redis. A heartbeat key with a TTL lists the
  live workers; the consistent-hash ring (:mod:`behavior_engine.sharding`) gives each its
  bots, held under leases (:mod:`behavior_engine.leases`); human messages arrive on the
  reply stream (:mod:`behavior_engine.replies`); one spontaneous turn at a time per chat
  across workers (the chat's floor); Telegram's limits are Redis token buckets.

The worker calls the same methods on either, in this order: :meth:`~Membership.join` once,
:meth:`~Membership.rebalance` every heartbeat (then connects the bots won and
:meth:`~Membership.confirm` s them), :meth:`~Membership.poll` every tick,
:meth:`~Membership.leave` at the end. The same contract tests run against both
(``tests/integration/test_membership.py``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.settings import Settings
from behavior_engine.leases import new_worker_id
from behavior_engine.membership.base import Membership, Rebalance, waiting_messages
from behavior_engine.membership.in_process import InProcessMembership
from behavior_engine.membership.intake import HistoryIntake, ReplyIntake, StreamIntake
from behavior_engine.membership.shared import (
    JOIN_SETTLE_S,
    RELEASE_FLOOR_LUA,
    SWEEP_EVERY_S,
    SharedMembership,
)
from behavior_engine.reads import CachedReads
from behavior_engine.replies import ReplyDispatcher, ReplyStream
from bots.ratelimit import TelegramLimiter

__all__ = [
    "JOIN_SETTLE_S", "RELEASE_FLOOR_LUA", "SWEEP_EVERY_S", "HistoryIntake", "InProcessMembership",
    "Membership", "Rebalance", "ReplyIntake", "SharedMembership", "StreamIntake",
    "membership_for", "membership_kind", "reply_intake_for", "waiting_messages",
]


def membership_kind(settings: Settings) -> type[InProcessMembership] | type[SharedMembership]:
    """The kind of membership ``settings`` call for: shared with ``REDIS_URL``, else
    in-process (the one place the choice is made)."""
    return SharedMembership if settings.redis_url else InProcessMembership


def membership_for(settings: Settings, reads: CachedReads,
                   sessionmaker: async_sessionmaker[AsyncSession], *,
                   worker_id: str | None = None, limiter: TelegramLimiter | None = None,
                   stats: Counter[str] | None = None, redis: Any = None) -> Membership:
    """The membership ``settings`` call for, chosen once: shared with ``REDIS_URL`` (on
    ``redis``, the process's client, if given), else in-process (``limiter`` is used
    in-process only)."""
    if membership_kind(settings) is SharedMembership:
        return SharedMembership.build(settings, reads, sessionmaker, worker_id=worker_id,
                                      stats=stats, redis=redis)
    return InProcessMembership(reads, sessionmaker,
                               worker_id or new_worker_id(settings.worker_name),
                               limiter=limiter, stats=stats)


def reply_intake_for(settings: Settings, reads: CachedReads,
                     sessionmaker: async_sessionmaker[AsyncSession], *,
                     redis: Any = None) -> ReplyIntake:
    """The intake matching :func:`membership_for`: the reply stream on ``redis`` (the
    process's client) with ``REDIS_URL``, else the history.

    Raises:
        ValueError: ``REDIS_URL`` is set but no ``redis`` client was given.
    """
    if membership_kind(settings) is SharedMembership:
        if redis is None:
            raise ValueError("the reply stream needs the process's Redis client")
        stream = ReplyStream(redis, namespace=settings.redis_namespace)
        return StreamIntake(ReplyDispatcher(stream, reads, sessionmaker, seed=settings.seed))
    return HistoryIntake()

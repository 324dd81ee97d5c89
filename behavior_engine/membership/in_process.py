"""One worker, no Redis: :class:`InProcessMembership` (see :mod:`behavior_engine.membership`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import metrics
from backend.outage import Outage
from backend.settings import Settings
from backend.stores import turns as turn_store
from behavior_engine.membership.base import Rebalance, waiting_messages
from behavior_engine.pipeline import LocalLimits, SendLimits
from behavior_engine.reads import CachedReads, HistoryItem
from behavior_engine.scheduler import WaitingMessage
from behavior_engine.turn import Outcome, Turn
from bots.ratelimit import TelegramLimiter

log = logging.getLogger("botsim.membership")

class InProcessMembership:
    """One worker drives every enabled bot of an enabled chat, without Redis.

    Fencing tokens come from the database (:func:`backend.stores.turns.issue_fencing_tokens`);
    intents an earlier run left are reconciled (``unknown``, never resent). Human messages
    wait in the chats' history (``reply_wanted``).

    Args:
        reads: the cached reads (chat histories).
        sessionmaker: database sessions (fencing tokens).
        worker_id: this worker's id.
        limiter: Telegram's limits in this process (default: a new one).
        stats: counters updated in place: ``acquired``, ``released``.
    """

    def __init__(self, reads: CachedReads, sessionmaker: async_sessionmaker[AsyncSession],
                 worker_id: str, *, limiter: TelegramLimiter | None = None,
                 stats: Counter[str] | None = None) -> None:
        self.reads = reads
        self.sessionmaker = sessionmaker
        self.worker_id = worker_id
        self.limits: SendLimits = LocalLimits(limiter)
        self.tokens: dict[int, int] = {}
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._outage = Outage(f"worker {worker_id}: the database", logger=log,
                              while_down="the bots held are driven on; new ones wait",
                              on_recovery="bots are read again")

    @staticmethod
    def check(settings: Settings, worker_id: str, id_file_age_s: float) -> tuple[bool, str]:
        """``botsim worker --check`` alone: fresh when the id file (touched every heartbeat)
        is at most ``heartbeat_ttl_s`` old. Returns (healthy, one line saying why)."""
        if id_file_age_s <= settings.heartbeat_ttl_s:
            return True, f"worker {worker_id}, heartbeat {id_file_age_s:.1f} s ago"
        return False, f"worker {worker_id}, last heartbeat {id_file_age_s:.1f} s ago"

    def valid(self, bot_id: int) -> bool:
        """Held: one worker per database, so a held token stays valid."""
        return bot_id in self.tokens

    async def join(self, status: Mapping[str, Any]) -> None:
        """Nothing to join alone."""

    async def rebalance(self, universe: Collection[int], keep: Collection[int],
                        status: Mapping[str, Any]) -> Rebalance:
        """Every bot of ``universe`` is this worker's; the others are let go once idle
        (``keep``: bots in use or being connected, neither given up nor taken again)."""
        wanted = set(universe)
        released = [b for b in self.tokens if b not in wanted and b not in keep]
        for b in released:
            del self.tokens[b]
        self.stats["released"] += len(released)
        metrics.LEASES_HELD.set(len(self.tokens))
        return Rebalance(released=released,
                         won=sorted(wanted - set(self.tokens) - set(keep)))

    def outage(self, exc: BaseException | None) -> None:
        """A failed heartbeat here is a failed read of the bots
        (:class:`backend.outage.Outage`: one warning per outage)."""
        if exc is None:
            self._outage.recovered()
        else:
            self._outage.should_probe()
            self._outage.failed(exc)

    async def confirm(self, won: Sequence[int], connected: Sequence[int]) -> list[int]:
        """Issue fencing tokens to the connected bots and reconcile their earlier intents."""
        if not connected:
            return []
        async with self.sessionmaker() as session, session.begin():
            tokens = await turn_store.issue_fencing_tokens(
                session, bot_ids=connected, holder=self.worker_id)
            stale = await turn_store.reconcile(session, tokens=tokens)
        self.tokens.update(tokens)
        self.stats["acquired"] += len(tokens)
        metrics.LEASES_HELD.set(len(self.tokens))
        for r in stale:
            metrics.SEND_UNKNOWN.labels(reason="reconciled").inc()
            log.error("turn %s of bot %s: left between intent and outcome by an earlier "
                      "run; recorded unknown, not resent", r.turn_id, r.bot_id)
        return sorted(tokens)

    def forget(self, bot_id: int) -> None:
        """Drop the bot's token."""
        self.tokens.pop(bot_id, None)

    async def leave(self) -> None:
        """Drop every token (the database keeps them; the next run issues newer ones)."""
        self.tokens.clear()

    async def poll(self) -> None:
        """Human messages are read from the history: nothing to take."""

    async def wants_reply(self, chat_id: int) -> bool:
        """True when the chat's history holds a message marked ``reply_wanted``."""
        return any(i.reply_wanted for i in await self.reads.history(chat_id))

    def waiting(self, chat_id: int, history: Sequence[HistoryItem], now: datetime,
                members: Collection[int]) -> list[WaitingMessage]:
        """See :func:`waiting_messages` (none without ``members``)."""
        return waiting_messages(history, now) if members else []

    async def drop_stale(self, now: datetime) -> None:
        """The history ages out by itself."""

    async def settle(self, turn: Turn, outcome: Outcome) -> None:
        """The answered flag is the record (committed with the reply)."""

    def floor_held(self, chat_id: int) -> bool:
        """No floors: this process's scheduler is the only one speaking."""
        return False

    async def take_floor(self, turn: Turn) -> bool:
        """Always granted (see :meth:`floor_held`)."""
        return True

    async def give_floor(self, turn: Turn) -> None:
        """Nothing to give back."""

    async def close(self) -> None:
        """Nothing opened."""

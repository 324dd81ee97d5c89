"""The membership interface and what both kinds share (see :mod:`behavior_engine.membership`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from behavior_engine.context import to_line
from behavior_engine.pipeline import SendLimits
from behavior_engine.reads import HistoryItem
from behavior_engine.scheduler import HUMAN_WAIT_MAX, WaitingMessage
from behavior_engine.turn import Outcome, Turn


@dataclass
class Rebalance:
    """What a heartbeat changed: ``lost`` (leases gone: stop now), ``released`` (given up),
    ``won`` (to connect, then :meth:`Membership.confirm`)."""

    lost: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    won: list[int] = field(default_factory=list)


def waiting_messages(history: Sequence[HistoryItem], now: datetime) -> list[WaitingMessage]:
    """Human messages of ``history`` (oldest first) that want an answer none of our bots has
    given yet, at most ``HUMAN_WAIT_MAX`` old at ``now`` (aware UTC)."""
    answered = {i.reply_to for i in history if i.bot_id is not None and i.reply_to is not None}
    bot_of = {i.telegram_message_id: i.bot_id for i in history if i.bot_id is not None}
    return [
        WaitingMessage(
            message_id=i.message_id,
            line=to_line(i),
            reply_to_bot_id=bot_of.get(i.reply_to) if i.reply_to is not None else None,
        )
        for i in history
        if i.reply_wanted and i.telegram_message_id not in answered
        and i.created_at >= now - HUMAN_WAIT_MAX
    ]


class Membership(Protocol):
    """The bots this worker holds and the human messages addressed to them.

    Attributes:
        worker_id: this worker's id.
        limits: Telegram's send limits as this kind shares them.
        tokens: bot id → fencing token of every bot held now.
    """

    worker_id: str
    limits: SendLimits

    @property
    def tokens(self) -> dict[int, int]:
        """Bot id → fencing token of every bot held now."""

    def valid(self, bot_id: int) -> bool:
        """True while this worker may act for ``bot_id`` (held, lease not expired)."""

    async def join(self, status: Mapping[str, Any]) -> None:
        """Enter the set of workers (``status``: the worker's report). Never raises."""

    async def rebalance(self, universe: Collection[int], keep: Collection[int],
                        status: Mapping[str, Any]) -> Rebalance:
        """One heartbeat over the bots ``universe`` (every enabled bot of an enabled chat):
        give up the bots no longer this worker's, except those in ``keep`` (busy); say which
        to take on. Raises when the shared state cannot be reached (held bots stay valid
        until their leases expire)."""

    def outage(self, exc: BaseException | None) -> None:
        """Note a heartbeat that failed with ``exc`` (logged) or succeeded (None)."""

    async def confirm(self, won: Sequence[int], connected: Sequence[int]) -> list[int]:
        """After connecting: the bots of ``won`` now held and driven (a subset of
        ``connected``); those not connected are given up."""

    def forget(self, bot_id: int) -> None:
        """Stop holding ``bot_id`` here at once (fenced out, or its token refused)."""

    async def leave(self) -> None:
        """Give up every bot and leave the set of workers (a clean stop). Never raises."""

    async def poll(self) -> None:
        """Take the human messages addressed to the bots held since the last poll."""

    async def wants_reply(self, chat_id: int) -> bool:
        """True when a human message of ``chat_id`` may wait for a held bot's answer."""

    def waiting(self, chat_id: int, history: Sequence[HistoryItem], now: datetime,
                members: Collection[int]) -> list[WaitingMessage]:
        """The human messages of ``chat_id`` the held ``members`` should answer."""

    async def drop_stale(self, now: datetime) -> None:
        """Forget human messages too old to answer at ``now``."""

    async def settle(self, turn: Turn, outcome: Outcome) -> None:
        """A reply turn ended: its request is done (or handed back)."""

    def floor_held(self, chat_id: int) -> bool:
        """True while a spontaneous turn of this worker holds ``chat_id``'s floor."""

    async def take_floor(self, turn: Turn) -> bool:
        """Take the floor of ``turn``'s chat (False: another turn has it)."""

    async def give_floor(self, turn: Turn) -> None:
        """Give back the floor ``turn`` took. Never raises."""

    async def close(self) -> None:
        """Close what this membership opened (its Redis client)."""

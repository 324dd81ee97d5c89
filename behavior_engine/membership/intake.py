"""How a stored human message reaches the workers: the listener's side of the membership."""

from __future__ import annotations

from typing import Protocol

from behavior_engine.reads import HistoryItem
from behavior_engine.replies import ReplyDispatcher


class ReplyIntake(Protocol):
    """How a stored human message reaches the workers that will answer it (the listener's
    side of the membership)."""

    async def announce(self, chat_id: int, item: HistoryItem) -> list[int]:
        """Tell the workers that ``item`` (stored, committed, ``reply_wanted``) waits in
        ``chat_id``; returns the bots asked to answer (empty: the workers find it).

        Raises:
            Exception: it could not be told now (the message stays stored and waiting).
        """


class HistoryIntake:
    """In-process: the worker finds waiting messages in the chat's history itself."""

    async def announce(self, chat_id: int, item: HistoryItem) -> list[int]:
        """Nothing to tell: returns []."""
        return []


class StreamIntake:
    """Shared: the repliers are chosen once, here, and their requests put on the reply
    stream for the workers holding them (:class:`ReplyDispatcher`; a request lost on the
    way is dispatched again by the workers' sweep)."""

    def __init__(self, dispatcher: ReplyDispatcher) -> None:
        self.dispatcher = dispatcher

    async def announce(self, chat_id: int, item: HistoryItem) -> list[int]:
        """See :meth:`ReplyDispatcher.dispatch` (raises ``redis.RedisError``)."""
        return await self.dispatcher.dispatch(chat_id, item)

"""The writes of a turn, over ``backend.stores`` (:class:`StoreTurnRecords`).

Each method is one transaction; the SQL is the stores'. The cache is told what changed
after each commit (``backend.invalidation``). A bot removed from a chat (403) or disabled
(401) is also told to the operator: an audit entry in the same transaction (the engine as
actor, ``backend.stores.audit``'s table) and, once committed, a metric
(``botsim_bot_membership_lost_total{reason}``, ``botsim_bots_disabled_total{reason}``); the
panel reads a bot's memberships with their status, reason and time in one store call,
:func:`backend.stores.members.bot_memberships`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import metrics
from backend.cache import TwoLayerCache
from backend.db.models import BotReflection
from backend.db.session import database_unreachable
from backend.schemas import MessageMeta
from backend.stores import audit as audit_store
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import members as member_store
from backend.stores import memories as memory_store
from backend.stores import messages as message_store
from backend.stores import turns as turn_store
from behavior_engine.llm.ledger import Ledger
from behavior_engine.memory import MemoryItem
from behavior_engine.pipeline import Sent, message_time
from behavior_engine.reads import HistoryItem, item_from_row
from behavior_engine.recall import MemorySeed
from behavior_engine.turn import Turn

log = logging.getLogger(__name__)

#: Attempts at storing a sent message when the database cannot be reached, and the first
#: pause between them (doubling: 0.5 + 1 + 2 + 4 + 8 = 15.5 s in all).
COMMIT_ATTEMPTS = 6
COMMIT_BACKOFF_S = 0.5


class StoreTurnRecords:
    """:class:`behavior_engine.pipeline.TurnRecords` over the database.

    Args:
        sessionmaker: database sessions.
        cache: the cache to invalidate after chat and bot changes (None: none).
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession],
                 cache: TwoLayerCache | None = None, ledger: Ledger | None = None) -> None:
        self.sessionmaker = sessionmaker
        self.cache = cache
        #: the LLM calls' recorder: a turn's commit writes the turn's own buffered ledger
        #: rows in its statement (:meth:`Ledger.take`)
        self.ledger = ledger

    async def record_intent(self, turn: Turn, *, token: int, worker: str) -> bool:
        """See :func:`backend.stores.turns.record_intent` (raises ``FencedOut``)."""
        async with self.sessionmaker() as session, session.begin():
            return await turn_store.record_intent(
                session, turn_id=turn.turn_id, bot_id=turn.bot_id, chat_id=turn.chat_id,
                token=token, worker=worker, reply_to_message_id=turn.reply_message_id)

    async def finish(self, turn: Turn, status: str, error: str | None = None) -> None:
        """See :func:`backend.stores.turns.finish_turn`."""
        async with self.sessionmaker() as session, session.begin():
            await turn_store.finish_turn(session, turn_id=turn.turn_id, status=status,
                                         error=error)

    async def commit_sent(self, sent: Sent) -> HistoryItem:
        """One transaction (:func:`backend.stores.turns.commit_sent`): part 1 (or the whole
        text), the turn's ``sent`` outcome, the answered flag of the human message the turn
        answers (by our id, ``turn.reply_message_id``, whatever Telegram showed) and the
        mood; returns the history item of the stored message.

        The message is on Telegram already, so a database that cannot be reached (a
        restart; a pooled connection it dropped, which no pre-ping replaces on the hot path)
        is tried again, :data:`COMMIT_ATTEMPTS` times in all with doubling pauses from
        :data:`COMMIT_BACKOFF_S` (~15 s). A retry that finds the turn stored (the lost
        attempt did commit) returns that message.

        Raises:
            sqlalchemy.exc.IntegrityError: the first attempt found the turn stored (a
                duplicate, which the intent record prevents).
            Exception: the database's error after the last attempt.
        """
        turn = sent.turn
        pause = COMMIT_BACKOFF_S
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            rows = self.ledger.take(turn.turn_id) if self.ledger is not None else []
            try:
                try:
                    async with self.sessionmaker() as session, session.begin():
                        msg = await turn_store.commit_sent(
                            session, turn_id=turn.turn_id, chat_id=turn.chat_id,
                            bot_id=turn.bot_id, telegram_message_id=sent.message.message_id,
                            text=sent.sent_text, meta=_meta(sent),
                            created_at=message_time(sent.message),
                            reply_to_telegram_message_id=sent.reply_to,
                            answered_human=(turn.reply_to is not None
                                            and turn.reply_to.is_human),
                            mood=sent.mood, answered_message_id=turn.reply_message_id,
                            ledger_rows=rows)
                except BaseException:
                    if self.ledger is not None:  # not written: the next flush writes them
                        self.ledger.put_back(rows)
                    raise
                return item_from_row(msg, sent.bot.name, sent.bot.username)
            except IntegrityError:
                if attempt == 1:
                    raise
                async with self.sessionmaker() as session:
                    stored = await message_store.by_turn_id(session, turn_id=turn.turn_id)
                if stored is None:
                    raise
                return item_from_row(stored, sent.bot.name, sent.bot.username)
            except Exception as exc:
                if attempt == COMMIT_ATTEMPTS or not database_unreachable(exc):
                    raise
                log.warning("turn %s: sent, but the database could not be reached to store "
                            "it (%s); trying again in %.1f s", turn.turn_id,
                            type(exc).__name__, pause)
                await asyncio.sleep(pause)
                pause *= 2
        raise AssertionError("unreachable")  # the loop returns or raises

    async def commit_part(self, sent: Sent) -> HistoryItem:
        """One transaction (:func:`backend.stores.turns.commit_part`): part ``sent.part`` >= 2
        of the turn's text; returns the history item of the stored message."""
        turn = sent.turn
        async with self.sessionmaker() as session, session.begin():
            msg = await turn_store.commit_part(
                session, turn_id=turn.turn_id, part=sent.part, chat_id=turn.chat_id,
                bot_id=turn.bot_id, telegram_message_id=sent.message.message_id,
                text=sent.sent_text, meta=_meta(sent), created_at=message_time(sent.message))
        return item_from_row(msg, sent.bot.name, sent.bot.username)

    async def memory_seed(self, bot_id: int, *, since: datetime, limit: int
                          ) -> list[tuple[HistoryItem, int, bool]]:
        """See :func:`backend.stores.memories.bot_memory_seed`: ``(line, chat id, own)``,
        newest first."""
        async with self.sessionmaker() as session:
            rows = await memory_store.bot_memory_seed(session, bot_id=bot_id, since=since,
                                                      limit=limit)
        return [_seed_line(r) for r in rows]

    async def reflections(self, bot_id: int, *, now: datetime, limit: int
                          ) -> list[MemoryItem]:
        """See :func:`backend.stores.memories.recent_reflections`."""
        async with self.sessionmaker() as session:
            rows = await memory_store.recent_reflections(session, bot_id=bot_id, limit=limit,
                                                         now=now)
        return [_reflection(r) for r in rows]

    async def memory_refill(self, bot_ids: Sequence[int], *, since: datetime, now: datetime,
                            limit: int, reflections: int) -> dict[int, MemorySeed]:
        """Bot id → its :class:`~behavior_engine.recall.MemorySeed` for every bot of
        ``bot_ids``, in two statements whatever their number
        (:func:`backend.stores.memories.bot_memory_seeds` and
        :func:`~backend.stores.memories.recent_reflections_of`): at most ``limit`` lines
        since ``since`` and ``reflections`` reflections not expired at ``now`` each."""
        async with self.sessionmaker() as session:
            lines = await memory_store.bot_memory_seeds(session, bot_ids=bot_ids, since=since,
                                                        limit=limit)
            kept = await memory_store.recent_reflections_of(session, bot_ids=bot_ids,
                                                            limit=reflections, now=now)
        return {b: MemorySeed(lines=[_seed_line(r) for r in lines[b]],
                              reflections=[_reflection(r) for r in kept[b]])
                for b in bot_ids}

    async def save_reflection(self, bot_id: int, item: MemoryItem,
                              expires_at: datetime) -> None:
        """See :func:`backend.stores.memories.add_reflection`."""
        async with self.sessionmaker() as session, session.begin():
            await memory_store.add_reflection(session, bot_id=bot_id, text=item.text,
                                              importance=item.importance,
                                              created_at=item.at, expires_at=expires_at)

    async def expire_reflections(self, now: datetime) -> int:
        """See :func:`backend.stores.memories.expire_reflections`."""
        async with self.sessionmaker() as session, session.begin():
            return await memory_store.expire_reflections(session, now=now)

    async def note_partial(self, turn: Turn, error: str) -> None:
        """See :func:`backend.stores.turns.note_partial`."""
        async with self.sessionmaker() as session, session.begin():
            await turn_store.note_partial(session, turn_id=turn.turn_id, error=error)

    async def leave_chat(self, turn: Turn, *, status: str, reason: str) -> None:
        """Telegram refused the bot in the turn's chat (403): its membership there becomes
        ``status`` (``kicked`` or ``left``), so it takes no more turns there until Telegram
        reports it back; its configuration (``chat_bots``) is kept
        (:func:`backend.stores.members.set_bot_member`). When that changed the membership,
        the audit entry ``bot.membership_lost`` commits with it and
        ``botsim_bot_membership_lost_total{reason=status}`` counts it."""
        async with self.sessionmaker() as session, session.begin():
            changed = await member_store.set_bot_member(
                session, chat_id=turn.chat_id, bot_id=turn.bot_id, status=status,
                reason=reason, cache=self.cache)
            if changed:
                await audit_store.record(
                    session, user_id=None, username=audit_store.ENGINE,
                    action=audit_store.MEMBERSHIP_LOST, entity="bot", entity_id=turn.bot_id,
                    before=None, after={"chat_id": turn.chat_id,
                                        "telegram_chat_id": turn.telegram_chat_id,
                                        "status": status, "description": reason})
        if changed:
            metrics.BOT_MEMBERSHIP_LOST.labels(reason=status).inc()

    async def disable_bot(self, bot_id: int, *, description: str = "401 Unauthorized") -> None:
        """Telegram refused the bot's token (401, to a send or to getMe): disable it
        (:func:`backend.stores.bots.disable_bot`). When it was enabled, the audit entry
        ``bot.disabled`` (``reason`` token_refused, Telegram's ``description`` with any
        token redacted) commits with it and ``botsim_bots_disabled_total{reason=
        "token_refused"}`` counts it.

        Raises:
            NotFound: there is no such bot.
        """
        async with self.sessionmaker() as session, session.begin():
            was_enabled = (await bot_store.get_bot(session, bot_id=bot_id)).enabled
            await bot_store.disable_bot(session, bot_id=bot_id, cache=self.cache)
            if was_enabled:
                await audit_store.record(
                    session, user_id=None, username=audit_store.ENGINE,
                    action=audit_store.BOT_DISABLED, entity="bot", entity_id=bot_id,
                    before={"enabled": True},
                    after={"enabled": False, "reason": "token_refused",
                           "description": audit_store.redact_tokens(description)})
        if was_enabled:
            metrics.BOTS_DISABLED.labels(reason="token_refused").inc()

    async def safety_blocked(self, turn: Turn, *, rule: str, part: str, text: str) -> None:
        """A draft of the turn broke a content-safety rule and was not sent: one audit entry
        (``safety.blocked``; the engine as actor), which the panel's audit page lists."""
        async with self.sessionmaker() as session, session.begin():
            await audit_store.record(
                session, user_id=None, username=audit_store.ENGINE,
                action=audit_store.SAFETY_BLOCKED, entity="bot", entity_id=turn.bot_id,
                before=None, after={"chat_id": turn.chat_id, "turn_id": turn.turn_id,
                                    "rule": rule, "part": part[:200], "draft": text[:1000]})

    async def migrate_chat(self, turn: Turn, new_telegram_chat_id: int) -> bool:
        """See :func:`backend.stores.chats.migrate_chat`."""
        async with self.sessionmaker() as session, session.begin():
            return await chat_store.migrate_chat(
                session, chat_id=turn.chat_id, new_telegram_chat_id=new_telegram_chat_id,
                cache=self.cache)


def _seed_line(row: memory_store.SeedMessage) -> tuple[HistoryItem, int, bool]:
    """A refill's message as ``(line, chat id, own)``."""
    return (item_from_row(row.message, row.bot_name, row.bot_username), row.message.chat_id,
            row.own)


def _reflection(row: BotReflection) -> MemoryItem:
    """A stored reflection as a memory."""
    return MemoryItem(kind="reflection", text=row.text, importance=row.importance,
                      at=row.created_at)


def _meta(sent: Sent) -> MessageMeta:
    """The stored metadata of a sent message (provider, timings, the forum topic it went
    into: its reply target's)."""
    gen, timing = sent.generation, sent.timing
    return MessageMeta(provider=gen.provider, model=gen.model, topic=sent.turn.topic,
                       sender_is_bot=True, sender_username=sent.bot.username,
                       sent_at=timing.sent_at,
                       latency_ms=round(timing.latency_s * 1000, 3),
                       llm_ms=round(timing.llm_s * 1000, 3),
                       wait_ms=round(timing.wait_s * 1000, 3),
                       read_ms=round(timing.read_s * 1000, 3),
                       typing_ms=round(timing.typing_s * 1000, 3),
                       due_ms=round(timing.due_s * 1000, 3),
                       pause_ms=round(timing.pause_s * 1000, 3),
                       views=sent.views, event_id=sent.event_id)

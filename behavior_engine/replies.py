"""Human messages to the worker that owns the chosen replier, through a Redis stream.

With several workers each driving a shard of the bots, a human message must be answered by
the bots chosen for it, once, whichever workers are alive. The flow:

1. the listener stores the message (``reply_wanted``) and then calls
   :meth:`ReplyDispatcher.dispatch`: the repliers are chosen once (the scheduler's rule,
   :func:`~behavior_engine.scheduler.choose_repliers`, seeded by the message id, so a
   repeated dispatch, and a lone worker's scheduler, choose the same bots), and one entry
   per chosen bot is added to the stream ``{ns}:replies`` (XADD, trimmed to
   :data:`~behavior_engine.scheduler.HUMAN_WAIT_MAX` by MINID);
2. every worker reads the stream (XREAD from its last id; the whole stream again when it
   takes new leases) and keeps the entries of the bots it holds: whoever holds the bot's
   lease at that moment gets it, so nothing has to be re-routed when the ring changes
   (a consumer group would hand an entry to one arbitrary worker, which would then have to
   forward it to the owner);
3. the owner plans the reply; its turn id is derived from (chat, message, bot), so a second
   delivery finds the turn record and is not acted on again (at least once delivered,
   acted on once); the entry is deleted (XDEL) once the reply is sent, recorded ``unknown``
   or failed for good;
4. a sweep (one worker at a time, under a Redis lock) dispatches again the human messages
   still waiting in the database whose dispatch record is gone (Redis restarted without
   persistence): the database is the system of record, so no human message is dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import keys, metrics, tracing
from backend.db.types import utcnow
from backend.stores import messages as message_store
from behavior_engine.context import to_line
from behavior_engine.reads import CachedReads, HistoryItem, item_from_row
from behavior_engine.scheduler import HUMAN_WAIT_MAX, BotView, WaitingMessage, choose_repliers
from behavior_engine.turn import ChatLine

log = logging.getLogger("botsim.replies")

#: A human message still waiting this long after it arrived is dispatched again by the sweep
#: when its dispatch record is gone (seconds).
SWEEP_AFTER_S = 20.0


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    """One stream entry: ``bot_id`` should answer the human message ``message_id``.

    Attributes:
        entry_id: the stream entry id (``ms-seq``).
        message_id: our ``messages.id`` of the human message.
        chat_id: our chat id.
        bot_id: the chosen replier.
        line: the human message as the scheduler and the prompt read it.
        reply_to_bot_id: our bot whose message the human replied to, if any.
        traceparent: the W3C ``traceparent`` of the listener's ``dispatch`` span (the reply
            turn's span is its child: one trace), or None (tracing off).
    """

    entry_id: str
    message_id: int
    chat_id: int
    bot_id: int
    line: ChatLine
    reply_to_bot_id: int | None
    traceparent: str | None = None

    def waiting(self, bots: tuple[int, ...]) -> WaitingMessage:
        """The request as the scheduler's :class:`WaitingMessage` assigned to ``bots``."""
        return WaitingMessage(message_id=self.message_id, line=self.line,
                              reply_to_bot_id=self.reply_to_bot_id, assigned=bots,
                              traceparent=self.traceparent)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _parse(entry_id: Any, fields: dict[Any, Any]) -> ReplyRequest | None:
    data = {_s(k): _s(v) for k, v in fields.items()}
    try:
        body = json.loads(data["line"])
        line = ChatLine(
            telegram_message_id=int(body["tg"]), speaker=str(body["speaker"]),
            speaker_username=body.get("username"), is_human=True, text=str(body["text"]),
            bot_id=None, created_at=datetime.fromisoformat(body["at"]),
        )
        rtb = data.get("reply_to_bot")
        carried = data.get(tracing.TRACEPARENT)
        return ReplyRequest(
            entry_id=_s(entry_id), message_id=int(data["message"]), chat_id=int(data["chat"]),
            bot_id=int(data["bot"]), line=line, reply_to_bot_id=int(rtb) if rtb else None,
            traceparent=carried if carried and len(carried) <= tracing.TRACEPARENT_MAX
            else None,
        )
    except (KeyError, ValueError, TypeError) as exc:
        log.error("reply stream entry %s unreadable (%s): dropped from the stream; the sweep "
                  "dispatches its message again from the database", _s(entry_id), exc)
        return None


class ReplyStream:
    """The Redis stream of reply requests.

    Args:
        redis: the Redis client.
        namespace: Redis key namespace.
    """

    def __init__(self, redis: aioredis.Redis, *, namespace: str = keys.DEFAULT_NAMESPACE):
        self.redis = redis
        self.namespace = namespace
        self.key = keys.replies_stream(namespace)
        self._last = "0-0"

    async def add(self, item: HistoryItem, chat_id: int, bot_ids: Sequence[int],
                  reply_to_bot_id: int | None) -> list[str]:
        """Add one entry per bot for the human message ``item``; record the dispatch.

        Each entry carries the current span's ``traceparent`` (and ``tracestate``) when a
        span is recording (:func:`backend.tracing.inject`), so the reply turn continues the
        human message's trace.

        Returns:
            The new entry ids.
        """
        line = json.dumps({"tg": item.telegram_message_id, "speaker": item.speaker,
                           "username": item.speaker_username, "text": item.text,
                           "at": item.created_at.isoformat()})
        min_id = int((datetime.now(UTC) - HUMAN_WAIT_MAX).timestamp() * 1000)
        carried = tracing.inject({})  # empty unless a span is recording
        async with self.redis.pipeline(transaction=True) as pipe:
            for bot in bot_ids:
                fields: dict[str, str | int] = {
                    "message": item.message_id, "chat": chat_id, "bot": bot, "line": line,
                    **carried}
                if reply_to_bot_id is not None:
                    fields["reply_to_bot"] = reply_to_bot_id
                pipe.xadd(self.key, fields, minid=min_id, approximate=True)  # type: ignore[arg-type]
            pipe.set(keys.replied_key(item.message_id, self.namespace),
                     json.dumps(list(bot_ids)), ex=int(HUMAN_WAIT_MAX.total_seconds()))
            got = await pipe.execute()
        return [_s(x) for x in got[: len(bot_ids)]]

    async def read_new(self, count: int = 1000) -> list[ReplyRequest]:
        """Entries added since the last read (none: an empty list; never blocks).

        Also sets ``botsim_reply_stream_pending`` to the stream's length (entries are deleted
        once acted on, so the length is what waits for an answer), in the same round trip.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xread({self.key: self._last}, count=count)
            pipe.xlen(self.key)
            got, length = await pipe.execute()
        metrics.REPLY_STREAM_PENDING.set(int(length))
        out: list[ReplyRequest] = []
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                self._last = _s(entry_id)
                req = _parse(entry_id, fields)
                if req is None:
                    await self.redis.xdel(self.key, entry_id)
                else:
                    out.append(req)
        return out

    async def read_all(self) -> list[ReplyRequest]:
        """Every entry still in the stream (after taking new leases); resets the cursor."""
        out: list[ReplyRequest] = []
        start = "-"
        while True:
            batch: Any = await self.redis.xrange(self.key, min=start, count=1000)
            if not batch:
                break
            for entry_id, fields in batch:
                self._last = max(self._last, _s(entry_id), key=_id_key)
                req = _parse(entry_id, fields)
                if req is None:
                    await self.redis.xdel(self.key, entry_id)
                else:
                    out.append(req)
            start = "(" + _s(batch[-1][0])
        return out

    async def done(self, entry_ids: Sequence[str]) -> None:
        """Delete entries that were acted on (sent, unknown, failed for good, or stale)."""
        if entry_ids:
            await self.redis.xdel(self.key, *entry_ids)

    async def forget_dispatch(self, message_id: int) -> None:
        """Drop the dispatch record of a message so the sweep chooses its repliers again
        (its replier failed for good, e.g. was removed from the chat)."""
        await self.redis.delete(keys.replied_key(message_id, self.namespace))

    async def undispatched(self, message_ids: Sequence[int]) -> list[int]:
        """The ids among ``message_ids`` that have no dispatch record."""
        if not message_ids:
            return []
        got = await self.redis.mget([keys.replied_key(m, self.namespace) for m in message_ids])
        return [m for m, g in zip(message_ids, got, strict=True) if g is None]


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class ReplyDispatcher:
    """Chooses the repliers of a human message and puts the requests on the stream.

    Args:
        stream: the reply stream.
        reads: cached reads (chats and their members, bot profiles, history, settings).
        sessionmaker: database sessions (each member bot's messages in the last hour).
        seed: the scheduler's seed (hourly budgets).
    """

    def __init__(self, stream: ReplyStream, reads: CachedReads,
                 sessionmaker: async_sessionmaker[AsyncSession], *, seed: int) -> None:
        self.stream = stream
        self.reads = reads
        self.sessionmaker = sessionmaker
        self.seed = seed

    async def dispatch(self, chat_id: int, item: HistoryItem) -> list[int]:
        """Choose the repliers of the human message ``item`` of ``chat_id`` and add the
        requests to the stream, in a ``dispatch`` span (a producer span: its context rides
        in the entries, :meth:`ReplyStream.add`).

        Returns:
            The chosen bot ids (empty when the chat has no enabled member bot, or the
            simulation is paused: the sweep dispatches it later).

        Raises:
            redis.RedisError: the stream is unreachable (the message stays stored and
                waiting; the sweep dispatches it again).
        """
        with tracing.span(
                "dispatch", kind=SpanKind.PRODUCER,
                attributes={tracing.CHAT_ID: chat_id, "messaging.system": "redis",
                            "messaging.operation.type": "send",
                            "messaging.destination.name": self.stream.key,
                            "botsim.message_id": item.message_id},
        ) as span:
            chosen = await self._dispatch(chat_id, item)
            if span.is_recording():
                span.set_attribute("messaging.batch.message_count", len(chosen))
                span.set_attribute("botsim.repliers", chosen)
            return chosen

    async def _dispatch(self, chat_id: int, item: HistoryItem) -> list[int]:
        """:meth:`dispatch`'s body."""
        sim = await self.reads.settings()
        chat = next((c for c in await self.reads.chats() if c.id == chat_id), None)
        if chat is None or not chat.bot_ids or not sim.simulation_active:
            return []
        now = utcnow()
        async with self.sessionmaker() as session:
            sent = await message_store.bot_message_counts(
                session, since=now - timedelta(hours=1), bot_ids=list(chat.bot_ids))
        views = []
        for b in chat.bot_ids:
            bot = await self.reads.bot(b)
            views.append(BotView(bot_id=bot.id, name=bot.name, username=bot.username,
                                 talkativeness=bot.persona.talkativeness,
                                 topics=bot.persona.topics, sent_last_hour=sent.get(b, 0),
                                 expertise=bot.persona.expertise))
        reply_to_bot = None
        if item.reply_to is not None:
            reply_to_bot = next((h.bot_id for h in await self.reads.history(chat_id)
                                 if h.telegram_message_id == item.reply_to), None)
        waiting = WaitingMessage(message_id=item.message_id, line=to_line(item),
                                 reply_to_bot_id=reply_to_bot)
        # seeded by the message (scheduler.replier_rng): a lone worker chooses the same bots
        chosen = [b.bot_id for b in choose_repliers(waiting, views, sim, now, seed=self.seed)]
        await self.stream.add(item, chat_id, chosen, reply_to_bot)
        return chosen

    async def sweep(self, *, older_than_s: float = SWEEP_AFTER_S, limit: int = 500) -> int:
        """Dispatch again the waiting human messages whose dispatch record is gone.

        Returns:
            How many messages were dispatched again.
        """
        async with self.sessionmaker() as session:
            # The later of this worker's clock and the database's: a worker whose wall clock
            # stepped back (botsim chaos, clock_jump -90 s) found no message old enough and
            # swept nothing while it held the sweep lock. Ahead, it only sweeps early
            # (a message dispatched twice is acted on once).
            now = max(utcnow(), await message_store.database_now(session))
            rows = await message_store.waiting_human_messages(
                session, since=now - HUMAN_WAIT_MAX,
                until=now - timedelta(seconds=older_than_s), limit=limit)
        lost = set(await self.stream.undispatched([r.id for r in rows]))
        n = 0
        for r in rows:
            if r.id not in lost:
                continue
            if await self.dispatch(r.chat_id, item_from_row(r, None, None)):
                n += 1
        if n:
            log.warning("sweep: %d waiting human messages dispatched again", n)
        return n

"""The long-term memory in a worker's turns (issue 16, item 4; :mod:`behavior_engine.memory`).

:class:`MemoryKeeper` keeps one :class:`~behavior_engine.memory.MemoryStream` per bot the
worker drives:

* **refill**: when the worker takes bots on, their streams are refilled from the database
  in bulk (:meth:`MemoryKeeper.prefill`: :data:`PREFILL_BATCH` bots per two statements,
  :meth:`MemoryRecords.memory_refill`): each bot's own messages and those said to it over
  the last :data:`SEED_SPAN`, at most :data:`SEED_LIMIT`, and its reflections, so a bot
  taken over from a dead worker remembers what it remembered there. A bot whose stream is
  not there at its turn (the bulk refill failed, or the book let it go) is refilled alone
  (two statements, :meth:`MemoryKeeper.prepare`);
* **observe**: every turn observes the chat's history lines (the bot's own sends arrive this
  way too, once stored), so what it said and what was said or asked to it are remembered;
* **events**: a world event the bot reacted to is noted (kind ``event``);
* **recall**: the prompt's memory layer is the top :data:`~behavior_engine.memory.RECALL_K`
  memories by recency + importance + relevance to the turn's query (the replied message,
  else the topic and the last line; Park et al., UIST 2023);
* **reflect**: :meth:`MemoryKeeper.reflect_due`, a periodic job, asks at most a few bots a
  run for a reflection, through the provider chain and so within its budgets; an answer of
  the offline generator is no reflection and is not kept;
* **forget**: a bot the worker lets go of is dropped (:meth:`MemoryKeeper.forget`).

A failed refill or reflection is logged and the turn goes on without it.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from behavior_engine.context import turn_context
from behavior_engine.llm.chain import ProviderChain
from behavior_engine.market import MarketFeed
from behavior_engine.memory import (
    REFLECTION_MAX_CHARS,
    MemoryBook,
    MemoryItem,
    memory_lines,
    needs_reflection,
    reflect,
)
from behavior_engine.reads import BotProfile, HistoryItem
from behavior_engine.turn import GenerationRequest

#: The offline generator's provider name (its text is no reflection).
OFFLINE = "offline"

log = logging.getLogger(__name__)

#: How far back a refill reads.
SEED_SPAN = timedelta(days=7)
#: Messages a refill reads at most.
SEED_LIMIT = 200
#: Reflections a refill reads at most.
SEED_REFLECTIONS = 5
#: Bots refilled per bulk read (:meth:`MemoryKeeper.prefill`): two statements each batch,
#: at most ``PREFILL_BATCH × SEED_LIMIT`` message rows at once.
PREFILL_BATCH = 250
#: Bots asked for a reflection per run of :meth:`MemoryKeeper.reflect_due` at most.
REFLECT_PER_RUN = 3


@dataclasses.dataclass(frozen=True, slots=True)
class MemorySeed:
    """What one bot's stream is refilled from.

    Attributes:
        lines: ``(line, chat id, own)`` of its messages and those said to it, newest first.
        reflections: its reflections not expired, newest first.
    """

    lines: list[tuple[HistoryItem, int, bool]]
    reflections: list[MemoryItem]


class MemoryRecords(Protocol):
    """The database side of the memory (implemented by
    :class:`~behavior_engine.records.StoreTurnRecords`)."""

    async def memory_seed(self, bot_id: int, *, since: datetime, limit: int
                          ) -> list[tuple[HistoryItem, int, bool]]:
        """``(line, chat id, own)`` of the bot's messages and those said to it, newest
        first."""

    async def reflections(self, bot_id: int, *, now: datetime, limit: int
                          ) -> list[MemoryItem]:
        """The bot's reflections not expired at ``now``, newest first."""

    async def memory_refill(self, bot_ids: Sequence[int], *, since: datetime, now: datetime,
                            limit: int, reflections: int) -> dict[int, MemorySeed]:
        """Bot id → its :class:`MemorySeed`, for many bots in a fixed number of
        statements."""

    async def save_reflection(self, bot_id: int, item: MemoryItem,
                              expires_at: datetime) -> None:
        """Store a reflection."""


#: Makes the ``generate`` of :func:`~behavior_engine.memory.reflect` for a bot.
GenerateFor = Callable[[BotProfile], Callable[[list[dict[str, str]]], Awaitable[str | None]]]


class MemoryKeeper:
    """Every driven bot's memory stream, refilled, fed, recalled and reflected on.

    Args:
        records: the database side (None: no refill, reflections not stored).
        book: the streams (default: a :class:`~behavior_engine.memory.MemoryBook` with its
            defaults).
    """

    def __init__(self, records: MemoryRecords | None = None,
                 book: MemoryBook | None = None) -> None:
        self.records = records
        self.book = book or MemoryBook()

    async def prefill(self, bot_ids: Iterable[int], now: datetime,
                      batch: int = PREFILL_BATCH) -> int:
        """Refill the streams of ``bot_ids`` (bots this worker just took on) from the
        database, ``batch`` bots per :meth:`MemoryRecords.memory_refill` (two statements), so
        their turns need no read of their own. A bot whose stream exists by the time its
        batch is read (a turn refilled it meanwhile) is left as it is; past the book's
        ``max_bots``, the least recently used streams go as ever.

        Returns:
            How many streams were refilled. Never raises for a failed read (logged): the
            bots of that batch are refilled one by one at their turns instead.

        Raises:
            ValueError: ``batch`` below 1.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if self.records is None:
            return 0
        todo = [b for b in dict.fromkeys(bot_ids) if b not in self.book]
        filled = 0
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            try:
                seeds = await self.records.memory_refill(
                    chunk, since=now - SEED_SPAN, now=now, limit=SEED_LIMIT,
                    reflections=SEED_REFLECTIONS)
            except Exception as exc:  # each bot's first turn refills it instead
                log.warning("memory of %d bots not refilled in bulk (%s)", len(chunk),
                            type(exc).__name__)
                continue
            for bot_id in chunk:
                if bot_id not in self.book:
                    self._fill(bot_id, seeds.get(bot_id, MemorySeed([], [])), now)
                    filled += 1
        return filled

    def _fill(self, bot_id: int, seed: MemorySeed, now: datetime) -> None:
        """Add ``seed`` to the bot's stream (created if need be): its lines oldest first
        (each the bot's own, or said to it), then its reflections."""
        stream = self.book.stream(bot_id)
        for line, chat, own in reversed(seed.lines):
            # to_bot settles the kind, so neither the username nor the name is read
            self.book.observe(bot_id, line, chat_id=chat, bot_username="", now=now,
                              to_bot=None if own else True)
        for item in seed.reflections:
            stream.add(item, now=now)

    async def prepare(self, bot: BotProfile, chat_id: int, history: Sequence[HistoryItem],
                      now: datetime) -> None:
        """Refill the bot's stream if it has none here (not taken on through
        :meth:`prefill`), then observe ``history`` (the chat's lines, oldest first). Never
        raises for a failed refill (logged)."""
        if bot.id not in self.book:
            self.book.stream(bot.id)  # from here on, a prefill leaves this bot alone
            if self.records is not None:
                try:
                    seed = MemorySeed(
                        lines=await self.records.memory_seed(bot.id, since=now - SEED_SPAN,
                                                             limit=SEED_LIMIT),
                        reflections=await self.records.reflections(
                            bot.id, now=now, limit=SEED_REFLECTIONS))
                    self._fill(bot.id, seed, now)
                except Exception as exc:  # the turn goes on with what the chat shows
                    log.warning("bot %s: memory not refilled (%s)", bot.id,
                                type(exc).__name__)
        for line in history:
            self.book.observe(bot.id, line, chat_id=chat_id, bot_username=bot.username,
                              now=now, bot_name=bot.name)

    def recall(self, bot: BotProfile, query: str, now: datetime) -> tuple[str, ...]:
        """The memory layer's lines for ``query``, oldest first (empty when the bot
        remembers nothing)."""
        stream = self.book.stream(bot.id)
        if not len(stream):
            return ()
        found = sorted(stream.recall(query, now), key=lambda i: i.at)
        return tuple(memory_lines(found, bot.persona.language, now=now))

    def note_event(self, bot_id: int, headline: str, at: datetime) -> None:
        """Remember a world event the bot reacted to."""
        self.book.note(bot_id, "event", headline, at=at)

    def forget(self, bot_ids: Iterable[int]) -> None:
        """Drop the streams of bots this worker no longer drives."""
        for bot_id in bot_ids:
            self.book.forget(bot_id)

    def due(self, bot_ids: Iterable[int], now: datetime,
            limit: int = REFLECT_PER_RUN) -> list[int]:
        """At most ``limit`` of ``bot_ids`` whose streams call for a reflection now."""
        out: list[int] = []
        for bot_id in bot_ids:
            if len(out) >= limit:
                break
            if bot_id in self.book and needs_reflection(self.book.stream(bot_id), now=now):
                out.append(bot_id)
        return out

    async def reflect_due(self, bots: Iterable[BotProfile], generate_for: GenerateFor,
                          now: datetime, limit: int = REFLECT_PER_RUN) -> int:
        """Ask at most ``limit`` of ``bots`` whose streams call for it
        (:func:`~behavior_engine.memory.needs_reflection`) for a reflection, and store each.
        Returns how many were drawn. Never raises for a provider or database error."""
        drawn = 0
        for bot in bots:
            if drawn >= limit:
                break
            if bot.id not in self.book:
                continue
            stream = self.book.stream(bot.id)
            if not needs_reflection(stream, now=now):
                continue
            item = await reflect(stream, generate_for(bot), now=now,
                                 persona_language=bot.persona.language, persona_name=bot.name)
            if item is None:
                continue
            drawn += 1
            if self.records is not None:
                try:
                    await self.records.save_reflection(bot.id, item, stream.expires_at(item))
                except Exception as exc:
                    log.warning("bot %s: reflection not stored (%s)", bot.id,
                                type(exc).__name__)
        return drawn


def recall_query(topic: str, reply_to_text: str | None,
                 history: Sequence[HistoryItem]) -> str:
    """What a turn recalls by: the replied message, else its topic and the chat's last
    line."""
    if reply_to_text:
        return reply_to_text
    last = history[-1].text if history else ""
    return f"{topic} {last}".strip()


def chain_generator(chain: ProviderChain, market: MarketFeed, *, seed: int,
                    clock: Callable[[], datetime]) -> GenerateFor:
    """Reflections through the provider chain (its budgets, breakers and ledger), in each
    bot's provider order; the offline generator's answer is no reflection (None)."""

    def generate_for(bot: BotProfile) -> Callable[[list[dict[str, str]]], Awaitable[str | None]]:
        async def generate(messages: list[dict[str, str]]) -> str | None:
            now = clock()
            topic = max(bot.persona.topics, key=bot.persona.topics.__getitem__, default="")
            ctx = turn_context(bot, [], market.snapshot(now), turn_id=str(uuid.uuid4()),
                               topic=topic, chat_id=0, seed=seed)
            request = GenerationRequest(messages=messages,
                                        context=dataclasses.replace(ctx, chat_id=None),
                                        max_chars=REFLECTION_MAX_CHARS)
            result = await chain.generate(request, order=bot.persona.llm_providers)
            gen = result.generation
            return None if gen.provider == OFFLINE else gen.text

        return generate

    return generate_for

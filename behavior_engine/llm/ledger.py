"""The chain's recorder: every provider call into the ``llm_calls`` ledger and the metrics.

Metrics are updated at once; rows are buffered and written in batches (one INSERT per
``batch_size`` calls or per :meth:`Ledger.flush`), so the ledger adds no database round trip
to the per-message path: a turn's commit takes the rows buffered so far into its own
statement (:meth:`Ledger.take`, group commit), the worker's tick flushes what is older than
``flush_every_s`` (:meth:`Ledger.flush_due`; flushing every 1-s tick cost one INSERT a
message at 200 bots, issue 20), and the worker flushes all on stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import metrics
from backend.db.types import utcnow
from backend.schemas import ModelPrice
from backend.stores import llm_calls as ledger_store
from behavior_engine.llm.chain import CallRecord

log = logging.getLogger("botsim.llm")


class _Series:
    """One provider's labelled metric series, resolved once."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.latency = metrics.LLM_LATENCY.labels(provider)
        self.prompt = metrics.LLM_TOKENS.labels(provider, "prompt")
        self.completion = metrics.LLM_TOKENS.labels(provider, "completion")
        self.cached = metrics.LLM_TOKENS.labels(provider, "cached")
        self.cost = metrics.LLM_COST.labels(provider)
        self._calls: dict[str, Any] = {}

    def calls(self, outcome: str) -> Any:
        child = self._calls.get(outcome)
        if child is None:
            child = self._calls[outcome] = metrics.LLM_CALLS.labels(self.provider, outcome)
        return child


class Ledger:
    """Records :class:`CallRecord` s (use an instance as the chain's ``recorder``).

    Args:
        sessionmaker: database sessions.
        prices: model name → price; a model without a price gets ``cost_usd`` None (logged
            once per model).
        batch_size: rows buffered before a write.
        flush_every_s: the most seconds :meth:`flush_due` lets a buffered row wait (the
            panel's costs are that late at most).
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        prices: Mapping[str, ModelPrice],
        *,
        batch_size: int = 100,
        flush_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.prices = prices
        self.batch_size = batch_size
        self.flush_every_s = flush_every_s
        self.clock = clock
        self._first_at: float | None = None  # when the oldest buffered row came
        self._rows: list[dict[str, Any]] = []
        self._unpriced: set[str] = set()
        self._series: dict[str, _Series] = {}

    def cost(self, record: CallRecord) -> float | None:
        """USD of ``record`` from the price table, or None when its model has no price."""
        price = self.prices.get(record.model or "")
        if price is None:
            if record.model not in self._unpriced and record.outcome == "ok":
                self._unpriced.add(record.model or "")
                log.warning("no price for model %r of %s: its calls are unpriced",
                            record.model, record.provider)
            return None
        return price.cost_usd(record.prompt_tokens, record.completion_tokens,
                              record.cached_tokens)

    async def __call__(self, record: CallRecord) -> None:
        """Count ``record`` in the metrics and buffer its ledger row."""
        cost = self.cost(record)
        p = record.provider
        m = self._series.get(p)
        if m is None:  # resolve each provider's labelled series once (labels() is not free)
            m = self._series[p] = _Series(p)
        m.calls(record.outcome).inc()
        m.latency.observe(record.latency_ms / 1000.0)
        if record.outcome == "ok":
            m.prompt.inc(record.prompt_tokens)
            m.completion.inc(record.completion_tokens)
            m.cached.inc(record.cached_tokens)
        if cost:
            m.cost.inc(cost)
        self._rows.append({
            "created_at": utcnow(),
            "provider": p,
            "model": record.model,
            "bot_id": record.bot_id,
            "chat_id": record.chat_id,
            "turn_id": record.turn_id,
            "attempt": record.attempt,
            "outcome": record.outcome,
            "error": record.error,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "cached_tokens": record.cached_tokens,
            "latency_ms": record.latency_ms,
            "cost_usd": cost,
        })
        if self._first_at is None:
            self._first_at = self.clock()
        if len(self._rows) >= self.batch_size:
            await self.flush()

    def take(self, turn_id: str) -> list[dict[str, Any]]:
        """Hand the buffered rows of turn ``turn_id`` over to its commit, which writes them
        in its own statement (group commit, issue 20: the ledger costs no statement of its
        own while turns are committed); give them back with :meth:`put_back` if it fails.
        Only the turn's own rows: their bot and chat are the committed message's, so they
        cannot fail that commit (another turn's chat may have been deleted meanwhile)."""
        mine = [r for r in self._rows if r["turn_id"] == turn_id]
        if mine:
            self._rows = [r for r in self._rows if r["turn_id"] != turn_id]
            if not self._rows:
                self._first_at = None
        return mine

    def put_back(self, rows: list[dict[str, Any]]) -> None:
        """Buffer again rows :meth:`take` handed over and the caller could not write (the
        next flush or commit writes them)."""
        if rows:
            self._rows = rows + self._rows
            if self._first_at is None:
                self._first_at = self.clock()

    async def flush_due(self) -> None:
        """:meth:`flush` when the oldest buffered row is ``flush_every_s`` old or more."""
        if self._first_at is not None and self.clock() - self._first_at >= self.flush_every_s:
            await self.flush()

    async def flush(self) -> None:
        """Write the buffered rows (kept for the next flush if the database refuses)."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        self._first_at = None
        try:
            async with self.sessionmaker() as session, session.begin():
                await ledger_store.record_calls(session, rows=rows)
        except Exception:
            self._rows = rows + self._rows
            self._first_at = self.clock()  # tried again after another flush_every_s
            log.exception("ledger write failed; %d rows kept for the next flush", len(rows))

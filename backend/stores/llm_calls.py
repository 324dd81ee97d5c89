"""The LLM cost ledger: one row per provider call, and the totals ``botsim costs`` prints."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Date, cast, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db.models import Bot, LLMCall

GroupBy = Literal["provider", "bot", "day"]


async def record_calls(session: AsyncSession, *, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ledger rows in one statement (keys: the ``llm_calls`` columns)."""
    if rows:
        await session.execute(insert(LLMCall), list(rows))


async def cost_totals(
    session: AsyncSession, *, since: datetime | None = None, by: GroupBy = "provider"
) -> list[dict[str, Any]]:
    """Totals of the ledger since ``since``, one row per group.

    Returns:
        Dicts with ``key`` (provider name, bot name or ``YYYY-MM-DD``), ``calls``, ``ok``,
        ``failed``, ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``,
        ``cost_usd`` and ``unpriced`` (calls of models without a price), largest cost first.
    """
    key: Any
    if by == "provider":
        key = LLMCall.provider
    elif by == "bot":
        key = func.coalesce(Bot.name, "(no bot)")
    elif session.get_bind().dialect.name == "postgresql":
        key = cast(func.timezone("UTC", LLMCall.created_at), Date)  # the UTC day
    else:
        key = func.date(LLMCall.created_at)  # SQLite keeps UTC wall time
    stmt = select(
        key.label("key"),
        func.count().label("calls"),
        func.count().filter(LLMCall.outcome == "ok").label("ok"),
        func.coalesce(func.sum(LLMCall.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(LLMCall.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(LLMCall.cached_tokens), 0).label("cached_tokens"),
        func.coalesce(func.sum(LLMCall.cost_usd), 0.0).label("cost_usd"),
        func.count().filter(LLMCall.cost_usd.is_(None)).label("unpriced"),
    )
    if by == "bot":
        stmt = stmt.select_from(LLMCall).outerjoin(Bot, Bot.id == LLMCall.bot_id)
    if since is not None:
        stmt = stmt.where(LLMCall.created_at >= since)
    stmt = stmt.group_by(key)
    rows = []
    for r in (await session.execute(stmt)).mappings():
        row = dict(r)
        row["key"] = str(row["key"])
        row["failed"] = int(row["calls"]) - int(row["ok"])
        row["cost_usd"] = float(row["cost_usd"])
        rows.append(row)
    rows.sort(key=lambda r: (-r["cost_usd"], r["key"]))
    return rows


async def provider_health(session: AsyncSession, *, since: datetime) -> list[dict[str, Any]]:
    """Per-provider figures of the ledger's calls since ``since``, by provider name.

    Returns:
        One dict per provider with at least one call: ``provider``, ``calls``, ``errors``
        (calls whose outcome is not ``ok``), ``error_rate`` (errors / calls, 0-1, rounded
        to 4 places), ``p50_latency_ms`` (median latency of the ``ok`` calls, ms; None
        without any) and ``last_error`` (None, or a dict of the latest failed call's
        ``at``, ``outcome``, ``model`` and ``error``).
    """
    rows = (
        await session.execute(
            select(
                LLMCall.provider,
                LLMCall.outcome,
                LLMCall.latency_ms,
                LLMCall.created_at,
                LLMCall.model,
                LLMCall.error,
            )
            .where(LLMCall.created_at >= since)
            .order_by(LLMCall.id)
        )
    ).all()
    grouped: dict[str, list[Any]] = {}
    for row in rows:
        grouped.setdefault(row.provider, []).append(row)
    out = []
    for provider in sorted(grouped):
        calls = grouped[provider]
        failed = [c for c in calls if c.outcome != "ok"]
        latencies = [float(c.latency_ms) for c in calls if c.outcome == "ok"]
        last = failed[-1] if failed else None
        out.append({
            "provider": provider,
            "calls": len(calls),
            "errors": len(failed),
            "error_rate": round(len(failed) / len(calls), 4),
            "p50_latency_ms": statistics.median(latencies) if latencies else None,
            "last_error": None if last is None else {
                "at": last.created_at, "outcome": last.outcome, "model": last.model,
                "error": last.error,
            },
        })
    return out

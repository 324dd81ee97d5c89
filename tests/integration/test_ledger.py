"""The cost ledger: every call recorded, priced, and totalled by ``botsim costs``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher
from backend.db.models import LLMCall
from backend.errors import ValidationFailed
from backend.schemas import ModelPrice
from backend.stores import llm_calls as ledger_store
from backend.timewindow import parse_since
from behavior_engine.llm.chain import CallRecord
from behavior_engine.llm.ledger import Ledger
from tests.integration.test_storage import seed

ROOT = Path(__file__).resolve().parents[2]
PRICES = {"m-a": ModelPrice(input=1.0, cached_input=0.5, output=2.0),
          "m-b": ModelPrice(input=0.1, output=0.2)}


def record(provider: str, model: str | None, outcome: str = "ok", *, bot_id: int | None,
           chat_id: int | None, prompt: int = 1000, completion: int = 100,
           cached: int = 0) -> CallRecord:
    ok = outcome == "ok"
    return CallRecord(provider=provider, model=model, bot_id=bot_id, chat_id=chat_id,
                      turn_id="t1", outcome=outcome, error=None if ok else "HTTP 500",  # type: ignore[arg-type]
                      attempt=1, prompt_tokens=prompt if ok else 0,
                      completion_tokens=completion if ok else 0, cached_tokens=cached if ok else 0,
                      latency_ms=12.5)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def fill(sm: async_sessionmaker[AsyncSession], cipher: TokenCipher) -> list[CallRecord]:
    bot_id, chat_id = await seed(sm, cipher)
    records = [
        record("a", "m-a", bot_id=bot_id, chat_id=chat_id, cached=400),
        record("a", "m-a", "unavailable", bot_id=bot_id, chat_id=chat_id),
        record("a", "m-a", bot_id=bot_id, chat_id=chat_id, prompt=2000, completion=50),
        record("b", "m-b", bot_id=None, chat_id=None),
        record("b", "unpriced-model", bot_id=bot_id, chat_id=chat_id),
    ]
    ledger = Ledger(sm, PRICES, batch_size=3)
    for r in records:
        await ledger(r)
    await ledger.flush()
    return records


async def test_every_call_is_a_priced_row(sessionmaker: async_sessionmaker[AsyncSession],
                                          cipher: TokenCipher) -> None:
    before = metric("botsim_llm_calls_total", provider="a", outcome="unavailable")
    records = await fill(sessionmaker, cipher)
    async with sessionmaker() as s:
        rows = (await s.execute(select(LLMCall).order_by(LLMCall.id))).scalars().all()
    assert len(rows) == len(records)
    assert [r.outcome for r in rows] == [r.outcome for r in records]
    assert rows[0].cost_usd == pytest.approx((600 * 1.0 + 400 * 0.5 + 100 * 2.0) / 1e6)
    assert rows[1].cost_usd == 0.0 and rows[1].error == "HTTP 500"
    assert rows[4].cost_usd is None  # no price for that model
    assert rows[0].created_at.tzinfo is not None
    after = metric("botsim_llm_calls_total", provider="a", outcome="unavailable")
    assert after - before == 1


async def test_the_tick_writes_rows_once_the_oldest_is_old_enough(
        sessionmaker: async_sessionmaker[AsyncSession], cipher: TokenCipher) -> None:
    bot_id, chat_id = await seed(sessionmaker, cipher)
    now = [100.0]
    ledger = Ledger(sessionmaker, PRICES, flush_every_s=5.0, clock=lambda: now[0])

    async def stored() -> int:
        async with sessionmaker() as s:
            return len((await s.execute(select(LLMCall))).scalars().all())

    await ledger.flush_due()  # nothing buffered: nothing written
    await ledger(record("a", "m-a", bot_id=bot_id, chat_id=chat_id))
    now[0] += 3.0
    await ledger(record("a", "m-a", bot_id=bot_id, chat_id=chat_id))
    now[0] += 1.9  # the oldest row is 4.9 s old
    await ledger.flush_due()
    assert await stored() == 0
    now[0] += 0.1
    await ledger.flush_due()
    assert await stored() == 2  # both, in one INSERT
    await ledger(record("a", "m-a", bot_id=bot_id, chat_id=chat_id))
    now[0] += 4.0
    await ledger.flush_due()
    assert await stored() == 2  # the clock restarts with the next buffered row
    await ledger.flush()
    assert await stored() == 3


async def test_a_turns_commit_takes_its_own_rows_and_gives_them_back_on_failure(
        sessionmaker: async_sessionmaker[AsyncSession], cipher: TokenCipher) -> None:
    """Group commit (issue 20): a turn's commit writes the turn's buffered ledger rows in
    its statement; the other turns' rows wait for the flush; rows of a failed commit are
    buffered again, in order, and the flush clock runs for them."""
    import dataclasses

    bot_id, chat_id = await seed(sessionmaker, cipher)
    now = [100.0]
    ledger = Ledger(sessionmaker, PRICES, flush_every_s=5.0, clock=lambda: now[0])
    for turn_id, attempt in (("t1", 1), ("t2", 1), ("t1", 2)):
        await ledger(dataclasses.replace(record("a", "m-a", bot_id=bot_id, chat_id=chat_id),
                                         turn_id=turn_id, attempt=attempt))
    mine = ledger.take("t1")
    assert [(r["turn_id"], r["attempt"]) for r in mine] == [("t1", 1), ("t1", 2)]
    assert ledger.take("t1") == [] and ledger.take("t9") == []
    ledger.put_back(mine)  # the commit failed
    assert [(r["turn_id"], r["attempt"]) for r in ledger.take("t1")] == [("t1", 1), ("t1", 2)]
    assert [r["turn_id"] for r in ledger.take("t2")] == ["t2"]
    ledger.put_back([])
    await ledger.flush_due()  # nothing left: nothing due, nothing written
    ledger.put_back(mine)
    now[0] += 5.0
    await ledger.flush_due()  # given back rows are flushed in flush_every_s like any
    async with sessionmaker() as s:
        assert sorted((r.turn_id, r.attempt) for r in (await s.execute(select(LLMCall))
                                                      ).scalars()) == [("t1", 1), ("t1", 2)]


@pytest.mark.parametrize("by", ["provider", "bot", "day"])
async def test_totals_match_rows(sessionmaker: async_sessionmaker[AsyncSession],
                                 cipher: TokenCipher, by: str) -> None:
    await fill(sessionmaker, cipher)
    async with sessionmaker() as s:
        rows = (await s.execute(select(LLMCall))).scalars().all()
        totals = await ledger_store.cost_totals(s, by=by)  # type: ignore[arg-type]
    assert sum(t["calls"] for t in totals) == len(rows)
    assert sum(t["ok"] for t in totals) == sum(r.outcome == "ok" for r in rows)
    assert sum(t["prompt_tokens"] for t in totals) == sum(r.prompt_tokens for r in rows)
    assert sum(t["cached_tokens"] for t in totals) == sum(r.cached_tokens for r in rows)
    assert sum(t["cost_usd"] for t in totals) == pytest.approx(
        sum(r.cost_usd or 0.0 for r in rows))
    assert sum(t["unpriced"] for t in totals) == 1
    if by == "provider":
        a = next(t for t in totals if t["key"] == "a")
        assert (a["calls"], a["ok"], a["failed"]) == (3, 2, 1)
    if by == "day":
        assert [t["key"] for t in totals] == [datetime.now(UTC).strftime("%Y-%m-%d")]
    if by == "bot":
        assert {t["key"] for t in totals} == {"Mehmet Yatırımcı", "(no bot)"}
    async with sessionmaker() as s:
        later = await ledger_store.cost_totals(s, since=datetime.now(UTC) + timedelta(hours=1))
    assert later == []


def test_costs_cli_matches_rows(tmp_path: Path) -> None:
    import asyncio

    from backend.db.session import make_engine, make_sessionmaker, upgrade_sync

    url = f"sqlite+aiosqlite:///{tmp_path / 'costs.db'}"
    upgrade_sync(url)

    async def prepare() -> float:
        engine = make_engine(url)
        sm = make_sessionmaker(engine)
        from cryptography.fernet import Fernet
        records = await fill(sm, TokenCipher(Fernet.generate_key().decode()))
        assert records
        async with sm() as s:
            total = sum(r.cost_usd or 0 for r in (await s.execute(select(LLMCall))).scalars())
        await engine.dispose()
        return total

    expected = asyncio.run(prepare())
    env = {**os.environ, "DATABASE_URL": url}
    out = subprocess.run([sys.executable, "-m", "botsim", "costs", "--json", "--since", "1h"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                         check=True, stdin=subprocess.DEVNULL).stdout
    totals = json.loads(out)
    assert sum(t["cost_usd"] for t in totals) == pytest.approx(expected)
    assert sum(t["calls"] for t in totals) == 5
    table = subprocess.run([sys.executable, "-m", "botsim", "costs", "--by", "day"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                           check=True, stdin=subprocess.DEVNULL).stdout
    assert "total" in table and f"{expected:.6f}" in table


def test_parse_since() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now=now) == now - timedelta(minutes=90)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    assert parse_since("2026-11-01", now=now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since(None) is None
    with pytest.raises(ValidationFailed, match="expected an age"):
        parse_since("yesterday")
    # an age past datetime's range was an OverflowError (a 500 on /costs?since=99999999d)
    assert parse_since("36500d", now=now) == now - timedelta(days=36500)
    for huge in ("36501d", "99999999d", "876001h", "9" * 5000 + "d"):
        with pytest.raises(ValidationFailed):
            parse_since(huge, now=now)

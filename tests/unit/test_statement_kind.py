"""``botsim_db_queries_total{statement}``: each statement counted by its kind
(:func:`backend.db.session.statement_kind`), over a real engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from backend.db.session import make_engine, statement_kind


@pytest.mark.parametrize(("sql", "kind"), [
    ("INSERT INTO turns (turn_id) VALUES ($1) RETURNING turns.turn_id", "INSERT turns"),
    ('UPDATE "bot_leases" SET fencing_token=1 WHERE bot_id = 2', "UPDATE bot_leases"),
    ("DELETE FROM llm_calls WHERE id < 5", "DELETE llm_calls"),
    ("SELECT messages.id, messages.text \nFROM messages WHERE chat_id = $1", "SELECT messages"),
    ("  select count(*) from \"chats\" join bots on true", "SELECT chats"),
    ("SELECT 1", "SELECT"),
    ("WITH turn_intent AS (UPDATE bot_leases SET x = 1 RETURNING bot_id) SELECT 1",
     "WITH turn_intent"),
    ("/* a note */ UPDATE bots SET mood = 0", "UPDATE bots"),
    ("PRAGMA foreign_keys=ON", "PRAGMA"),
    ("", "empty"),
])
def test_a_statement_is_named_by_its_verb_and_table(sql: str, kind: str) -> None:
    assert statement_kind(sql) == kind


def _count(kind: str) -> float:
    return REGISTRY.get_sample_value("botsim_db_queries_total", {"statement": kind}) or 0.0


async def test_each_statement_counts_under_its_kind(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE kinds_probe (n INTEGER)"))
            before = (_count("INSERT kinds_probe"), _count("SELECT kinds_probe"))
            for n in range(3):
                await conn.execute(text("INSERT INTO kinds_probe (n) VALUES (:n)"), {"n": n})
            await conn.execute(text("SELECT n FROM kinds_probe"))
    finally:
        await engine.dispose()
    assert (_count("INSERT kinds_probe"), _count("SELECT kinds_probe")) == (
        before[0] + 3, before[1] + 1)

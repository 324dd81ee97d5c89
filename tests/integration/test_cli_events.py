"""``botsim event add|list|cancel|presets`` (:mod:`botsim.events_cli`) against a test
database (SQLite file or PostgreSQL), each command in a thread with its own event loop, as
in its own process."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db.models import AuditEntry
from backend.stores import events as event_store
from behavior_engine.events import PRESETS
from botsim.cli import main as cli_main

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BOTSIM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("BOTSIM_DATA_DIR", str(tmp_path / "data"))


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(cli_main, ["event", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_add_list_cancel(sessionmaker: Sessions,
                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await cli(capsys, "add", "TCMB faizi 250 baz puan artırdı",
                               "--shock", "BIST100=-2.5", "--shock", "usdtry=+1",
                               "--view", "usdtry=bearish", "--topic", "rates", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["shocks"] == {"BIST100": -2.5, "USDTRY": 1.0}
    assert first["views"] == {"usdtry": "bearish"} and first["topics"] == ["rates"]
    assert first["created_by"] == "cli"

    code, out, err = await cli(capsys, "add", "--preset", "rate_hike", "--at", "+5m")
    assert code == 0, err
    assert out.startswith("scheduled #") and PRESETS["rate_hike"].headline in out
    assert "BIST100 −2.5 %" in out

    async with sessionmaker() as s:
        stored = await event_store.list_events(s)
    assert [e.headline for e in stored] == ["TCMB faizi 250 baz puan artırdı",
                                           PRESETS["rate_hike"].headline]
    wait = stored[1].at - datetime.now(UTC)
    assert timedelta(minutes=4) < wait <= timedelta(minutes=5)

    code, out, _ = await cli(capsys, "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"#{first['id']} ")
    assert "by cli" in lines[0] and "views usdtry=bearish" in lines[0]
    code, out, _ = await cli(capsys, "list", "--json")
    assert [e["id"] for e in json.loads(out)] == [e.id for e in stored]

    code, out, err = await cli(capsys, "cancel", str(stored[1].id))
    assert code == 0, err
    assert out.startswith(f"cancelled #{stored[1].id}")
    code, _, err = await cli(capsys, "cancel", str(stored[1].id))
    assert code == 2 and f"no world event {stored[1].id}" in err
    code, _, err = await cli(capsys, "cancel", str(stored[0].id))
    assert code == 2 and "already happened" in err

    async with sessionmaker() as s:
        audit = (await s.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()
    assert [(a.action, a.username, a.entity_id) for a in audit] == [
        ("world_event.created", "cli", str(stored[0].id)),
        ("world_event.created", "cli", str(stored[1].id)),
        ("world_event.cancelled", "cli", str(stored[1].id))]


@pytest.mark.parametrize(("argv", "named"), [
    (["add", "x y z", "--shock", "BIST100"], "'BIST100'"),
    (["add", "x y z", "--shock", "BIST100=abc"], "'abc' is not a percent"),
    (["add", "x y z", "--shock", "BIST100=90"], "--shock"),
    (["add", "x y z", "--view", "usdtry=up"], "'usdtry=up'"),
    (["add", "x y z", "--topic", "weather"], "--topic"),
    (["add", "ab"], "headline"),
    (["add"], "give a HEADLINE or --preset"),
    (["add", "--preset", "nope"], "'nope' is not a preset"),
    (["add", "--preset", "rate_hike", "--shock", "BTC=1"], "a preset takes only --at"),
    (["add", "x y z", "--at", "tomorrow"], "'tomorrow'"),
    (["add", "x y z", "--at", "+90d"], "--at"),
    (["add", "x y z", "--at", "2001-01-01T00:00:00Z"], "--at"),
    (["cancel", "abc"], "'abc' is not an event id"),
    (["cancel", "0"], "'0' is not an event id"),
])
async def test_bad_input_exits_2_naming_it(sessionmaker: Sessions,
                                           capsys: pytest.CaptureFixture[str],
                                           argv: list[str], named: str) -> None:
    code, out, err = await cli(capsys, *argv)
    assert code == 2, (out, err)
    assert named in err
    async with sessionmaker() as s:
        assert await event_store.list_events(s) == []


async def test_presets_and_an_empty_list(sessionmaker: Sessions,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await cli(capsys, "presets")
    assert code == 0
    assert [line.split()[0] for line in out.strip().splitlines()] == list(PRESETS)
    code, out, _ = await cli(capsys, "presets", "--json")
    assert json.loads(out)["btc_crash"]["shocks"] == {"BTC": -8.0}
    code, out, _ = await cli(capsys, "list")
    assert (code, out.strip()) == (0, "no world events")

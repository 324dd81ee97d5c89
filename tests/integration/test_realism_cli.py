"""``botsim realism`` on a stored run: the table and the JSON line, and exit 2 with a message
naming what is wrong for bad input (a bad time, an unknown chat, a missing or unreachable
database, no message in the window)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.crypto import TokenCipher
from backend.db.session import make_engine, make_sessionmaker
from backend.schemas import MessageMeta, Persona, Style
from backend.stores import bulk as bulk_store
from botsim.cli import main as cli_main

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def persona(i: int) -> Persona:
    return Persona(
        name=f"Bot{i}", username=f"bot_{i}_bot", role="newcomer", language="tr",
        bio="Yeni başladı.", style=Style(formality="casual", emoji_rate=0.5, length="short"),
        topics={"btc": 1.0},
    )


async def _seed(url: str, cipher: TokenCipher) -> None:
    """Chat -1001: 30 bot messages from 3 bots every 10 s (a clock), one human question."""
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as s, s.begin():
            ids = await bulk_store.upsert_persona_bots(s, bots=[
                (persona(i), f"72000000{i:02d}:AAsecretsecret{i}") for i in range(3)],
                cipher=cipher)
            chats = await bulk_store.upsert_chats(s, chats=[(-1001, "Bir", {"btc": 1.0}),
                                                            (-1002, "Boş", {"btc": 1.0})])
            bots = [ids[f"bot_{i}_bot"] for i in range(3)]
            rows: list[dict[str, object]] = [{
                "chat_id": chats[-1001], "bot_id": None, "sender_id": 9, "sender_name": "Deniz",
                "telegram_message_id": 1, "reply_to_telegram_message_id": None,
                "text": "Arkadaşlar altın alınır mı?", "meta": MessageMeta(), "turn_id": None,
                "reply_wanted": False, "created_at": T0}]
            for i in range(30):
                at = T0 + timedelta(seconds=10 * (i + 1))
                rows.append({
                    "chat_id": chats[-1001], "bot_id": bots[i % 3], "sender_id": None,
                    "sender_name": None, "telegram_message_id": i + 2,
                    "reply_to_telegram_message_id": 1 if i == 0 else None,
                    "text": f"mesaj {i} bugün piyasa için birkaç farklı kelime",
                    "meta": MessageMeta(sent_at=at), "turn_id": f"t{i}", "reply_wanted": False,
                    "created_at": at})
            await bulk_store.insert_messages(s, rows=rows)
    finally:
        await engine.dispose()


@pytest.fixture
def run_db(tmp_path: Path, sqlite_template: Path, cipher: TokenCipher,
           monkeypatch: pytest.MonkeyPatch) -> str:
    """A stored run in a SQLite file; ``botsim``'s own settings point elsewhere."""
    path = tmp_path / "run.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite+aiosqlite:///{path}"
    asyncio.run(_seed(url, cipher))
    for name in list(os.environ):
        if name.startswith("BOTSIM_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("BOTSIM_DATA_DIR", str(tmp_path / "elsewhere"))
    return url


def test_realism_prints_tables_and_a_json_line(
    run_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["realism", "--database-url", run_db, "--chat", "-1001", "--since",
                     "2026-12-03T11:00", "--json"]) == 0
    out = capsys.readouterr().out
    assert "Realism of chat -1001" in out and "burstiness A_n" in out and "FAIL" in out
    data = json.loads(out.strip().splitlines()[-1])
    metrics = {m["name"]: m for m in data["metrics"]}
    assert metrics["burstiness_an"]["value"] == pytest.approx(-1.0)  # a 10 s clock
    assert metrics["burstiness_an"]["passed"] is False
    assert metrics["human_answer_delay_p95_s"]["value"] == pytest.approx(10.0)
    assert data["counts"] == {"chats": 1, "messages": 31, "bot_messages": 30,
                              "human_messages": 1, "speakers": 4}


@pytest.mark.parametrize(("args", "named"), [
    (["--since", "yesterday"], "--since"),
    (["--until", "-5x"], "--until"),
    (["--since", "2026-12-03T13:00", "--until", "2026-12-03T12:00"], "--until"),
    (["--chat", "-4242"], "-4242"),
    (["--since", "2026-12-04"], "none in any chat"),
    (["--chat", "-1002"], "none in chat -1002"),
])
def test_realism_bad_input_exits_2_naming_it(
    run_db: str, capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    assert cli_main(["realism", "--database-url", run_db, *args]) == 2
    assert named in capsys.readouterr().err


def test_realism_missing_or_unreachable_database_exits_2(
    run_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.db"
    assert cli_main(["realism", "--database-url", f"sqlite:///{missing}"]) == 2
    assert "no SQLite database file" in capsys.readouterr().err
    assert not missing.exists()  # reading never creates a database
    assert cli_main(["realism", "--database-url",
                     "postgresql://postgres@127.0.0.1:1/nothing"]) == 2
    assert "cannot read it" in capsys.readouterr().err
    assert cli_main(["realism", "--database-url", "mysql://x@y/z"]) == 2
    assert "--database-url" in capsys.readouterr().err


def test_ages_may_start_with_a_dash() -> None:
    from botsim.cli import _join_dash_values
    from botsim.realism_cli import parse_when

    assert parse_when("-10m", "--since", now=T0) == T0 - timedelta(minutes=10)
    assert parse_when("2h", "--until", now=T0) == T0 - timedelta(hours=2)
    assert _join_dash_values(["realism", "--since", "-10m", "--chat", "-1001"]) == [
        "realism", "--since=-10m", "--chat", "-1001"]

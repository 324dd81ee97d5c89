"""``botsim interview BOT "question"`` (issue 16, item 8): the bot answers in persona, with
what it said lately, and nothing is posted or stored."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from backend.db.types import utcnow
from behavior_engine.interview import ASKER, interview
from behavior_engine.llm.factory import build_chain
from behavior_engine.market import MarketFeed
from behavior_engine.reads import HistoryItem
from tests.unit.test_pipeline import profile

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "7500000009:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def botsim(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BOTSIM_") and k != "DATABASE_URL"}
    env["BOTSIM_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run([str(ROOT / ".venv/bin/botsim"), *args], env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def test_cli_interview_answers_in_persona_and_posts_nothing(tmp_path: Path) -> None:
    rows = tmp_path / "bots.csv"
    rows.write_text(f"token,persona,groups\n{TOKEN},ayse_scalper_bot,-1001\n", encoding="utf-8")
    assert botsim(tmp_path, "bots", "import", str(rows)).returncode == 0
    done = botsim(tmp_path, "interview", "@ayse_scalper_bot", "Altın neden düşüyor sence?",
                  "--llm", "offline", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["bot"] == "@ayse_scalper_bot" and answer["provider"] == "offline"
    assert answer["answer"].strip() and answer["question"] == "Altın neden düşüyor sence?"
    db = sqlite3.connect(tmp_path / "data" / "botsim.db")
    assert db.execute("select count(*) from messages").fetchone() == (0,)  # nothing stored
    bad = botsim(tmp_path, "interview", "@nobody_bot", "Altın?")
    assert bad.returncode == 2 and "no bot '@nobody_bot'" in bad.stderr
    empty = botsim(tmp_path, "interview", "@ayse_scalper_bot", " ")
    assert empty.returncode == 2 and "1-4096 characters" in empty.stderr


async def test_the_answer_reads_the_question_and_the_bots_memory() -> None:
    bot = profile()
    said = HistoryItem(message_id=1, telegram_message_id=1, bot_id=bot.id, speaker=bot.name,
                       speaker_username=bot.username, is_human=False,
                       text="Dün BIST 100'den biraz aldım.", created_at=utcnow())
    seen: list[object] = []
    chain = build_chain([])
    real = chain.generate

    async def spy(request, **kw):  # type: ignore[no-untyped-def]
        seen.append(request)
        return await real(request, **kw)

    chain.generate = spy  # type: ignore[method-assign]
    answer = await interview(bot, "Borsa için ne düşünüyorsun?", recent=[said], chain=chain,
                             market=MarketFeed(seed=1, start=utcnow()),
                             now=datetime.now(UTC))
    assert answer.text.strip() and answer.provider == "offline"
    ctx = seen[0].context  # type: ignore[attr-defined]
    assert ctx.reply_to.speaker == ASKER and ctx.reply_to.text == "Borsa için ne düşünüyorsun?"
    assert ctx.memories == ("Dün BIST 100'den biraz aldım.",) and ctx.topic == "bist100"

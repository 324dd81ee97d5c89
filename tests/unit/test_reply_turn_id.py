"""Reply turn ids are derived from (chat, message, bot); assigned repliers are kept."""

from __future__ import annotations

import itertools
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

from backend.schemas import SimulationSettings
from behavior_engine.scheduler import (
    BotView,
    ChatView,
    Scheduler,
    WaitingMessage,
    reply_turn_id,
)
from behavior_engine.turn import ChatLine, Turn

NOW = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
SETTINGS = SimulationSettings.model_validate(
    {"bot_hourly_msg_limit": {"min": 60, "max": 60}, "max_msgs_per_min": 6}
)
NAMES = ["Mehmet Yatırımcı", "Ayşe Scalper", "Ali Hoca", "Zeynep"]
CHAT = 4
TG = 70
MESSAGE_ID = 7


def test_reply_turn_id_is_a_stable_uuid() -> None:
    got = reply_turn_id(1, 70, 3)
    assert isinstance(got, str)
    assert str(uuid.UUID(got)) == got and uuid.UUID(got).version == 5
    assert reply_turn_id(1, 70, 3) == got
    # the same in another process (no per-process salt such as hash randomization)
    other = subprocess.run(
        [sys.executable, "-c",
         "from behavior_engine.scheduler import reply_turn_id; print(reply_turn_id(1, 70, 3))"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    assert other == got


def test_reply_turn_id_differs_by_chat_message_and_bot() -> None:
    combos = list(itertools.product([1, 2, -100], [70, 71, 7], [3, 4, 10]))
    ids = {reply_turn_id(c, m, b) for c, m, b in combos}
    assert len(ids) == len(combos)
    # no ambiguity from joining the numbers ("1:23" vs "12:3")
    assert reply_turn_id(1, 23, 4) != reply_turn_id(12, 3, 4)
    assert reply_turn_id(1, 2, 34) != reply_turn_id(1, 23, 4)


def bots(ids: list[int] | None = None) -> list[BotView]:
    all_bots = [
        BotView(bot_id=i + 1, name=n, username=f"{n.split()[0].lower()}_bot",
                talkativeness=1.0, topics={"usdtry": 1.0}, sent_last_hour=0)
        for i, n in enumerate(NAMES)
    ]
    return [b for b in all_bots if ids is None or b.bot_id in ids]


def waiting(text: str, assigned: tuple[int, ...] | None) -> WaitingMessage:
    line = ChatLine(telegram_message_id=TG, speaker="Deniz", speaker_username="deniz",
                    is_human=True, text=text, created_at=NOW)
    return WaitingMessage(message_id=MESSAGE_ID, line=line, assigned=assigned)


def view(w: WaitingMessage) -> ChatView:
    return ChatView(chat_id=CHAT, telegram_chat_id=-100, topics={"usdtry": 1.0},
                    sent_last_minute=0, recent=[], waiting=[w])


def replies(s: Scheduler, w: WaitingMessage, bv: list[BotView], seconds: float,
            start: datetime = NOW) -> list[Turn]:
    out: list[Turn] = []
    for t in range(int(seconds) + 1):
        out += s.decide(view(w), bv, SETTINGS, start + timedelta(seconds=t))
    return [t for t in out if t.reply_to is not None and t.reply_to.telegram_message_id == TG]


def test_assigned_reply_planned_for_that_bot_only() -> None:
    for b in (1, 2, 3, 4):
        s = Scheduler(seed=b)
        got = replies(s, waiting("Dolar nereye gider sizce?", (b,)), bots(), 30)
        assert [t.bot_id for t in got] == [b]
        [turn] = got
        assert turn.turn_id == reply_turn_id(CHAT, TG, b)
        assert turn.reply_message_id == MESSAGE_ID
        assert turn.chat_id == CHAT and turn.reason == "human"


def test_assigned_wins_over_a_mention() -> None:
    # the text addresses bot 1, but the dispatch chose bot 3: the scheduler keeps that
    s = Scheduler(seed=1)
    got = replies(s, waiting("@mehmet_bot dolar ne olur?", (3,)), bots(), 30)
    assert [(t.bot_id, t.turn_id) for t in got] == [(3, reply_turn_id(CHAT, TG, 3))]


def test_two_assigned_both_planned() -> None:
    s = Scheduler(seed=2)
    got = replies(s, waiting("Dolar?", (4, 2)), bots(), 30)
    assert sorted((t.bot_id, t.turn_id) for t in got) == sorted(
        (b, reply_turn_id(CHAT, TG, b)) for b in (2, 4))


def test_assigned_bot_absent_is_not_planned_until_it_is_there() -> None:
    s = Scheduler(seed=3)
    w = waiting("Dolar nereye gider sizce?", (2,))
    assert replies(s, w, bots([1, 3, 4]), 30) == []  # bot 2 is another worker's
    later = NOW + timedelta(seconds=60)
    got = replies(s, w, bots(), 30, start=later)  # bot 2 is here now
    assert [(t.bot_id, t.turn_id, t.reply_message_id) for t in got] == [
        (2, reply_turn_id(CHAT, TG, 2), MESSAGE_ID)]


def test_unassigned_reply_also_uses_the_derived_turn_id() -> None:
    s = Scheduler(seed=4)
    got = replies(s, waiting("Dolar nereye gider sizce?", None), bots(), 30)
    assert got
    for t in got:
        assert t.turn_id == reply_turn_id(CHAT, TG, t.bot_id)
        assert t.reply_message_id == MESSAGE_ID


def test_assigned_bot_arriving_later_is_planned_too() -> None:
    s = Scheduler(seed=3)
    w = waiting("Dolar nereye gider sizce?", (2, 4))
    first = replies(s, w, bots([1, 2, 3]), 30)  # bot 4 is another worker's for now
    assert [t.bot_id for t in first] == [2]
    # this worker takes bot 4's lease (its worker died) and reads its request: bot 4 is
    # among the assigned repliers and present now, so its reply is due
    later = replies(s, w, bots(), 30, start=NOW + timedelta(seconds=60))
    assert [(t.bot_id, t.turn_id) for t in later] == [(4, reply_turn_id(CHAT, TG, 4))]

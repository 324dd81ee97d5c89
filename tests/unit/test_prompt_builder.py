"""The layered prompt: each layer, the stable prefix, and the history token budget."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from backend.schemas import Holding, PersonaProfile, Stance, Style
from behavior_engine.prompt_builder import (
    build_request,
    count_tokens,
    history_layer,
    instruction,
    memory_layer,
    mood_layer,
    persona_core,
    stances_and_holdings,
    trim_history,
)
from behavior_engine.turn import ChatLine, MarketSnapshot, TurnContext

SNAP = MarketSnapshot(at=datetime(2026, 1, 1, tzinfo=UTC),
                      prices={"BTC": 95000.0, "USDTRY": 42.5},
                      change_pct={"BTC": 1.25, "USDTRY": -0.1})


def line(i: int, text: str = "mesaj", human: bool = False) -> ChatLine:
    return ChatLine(telegram_message_id=i, speaker="Deniz" if human else "Zeynep",
                    speaker_username=None if human else "zeynep_bot", is_human=human,
                    text=f"{text} {i}", bot_id=None if human else 4)


def ctx(**changes: object) -> TurnContext:
    base = TurnContext(
        turn_id="t-1", bot_name="Ayşe Scalper", bot_username="ayse_bot",
        profile=PersonaProfile(role="scalper", language="tr", bio="Gün içi işlem yapar.",
                               style=Style(formality="casual", emoji_rate=1.5, length="short"),
                               topics={"btc": 1.0}),
        stances=(Stance(topic="btc", view="bullish", conviction=0.8, reason="Talep güçlü."),),
        holdings=(Holding(symbol="BTC", quantity=0.1, avg_cost=90000),),
        mood=0.35, pnl_pct=5.6, topic="btc", market=SNAP,
        history=tuple(line(i) for i in range(1, 6)), reply_to=None, seed=7,
        memories=("btc 100 bini görür", "stop 94 bin"),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_persona_core_is_stable_and_has_no_volatile_parts() -> None:
    a = persona_core(ctx())
    b = persona_core(ctx(turn_id="t-2", mood=-0.9, seed=99, topic="usdtry",
                         market=replace(SNAP, prices={"BTC": 1.0}), history=(),
                         reply_to=line(9, human=True), memories=()))
    assert a == b
    assert "Ayşe Scalper (@ayse_bot)" in a and "Turkish" in a and "at most 8 words" in a
    assert "95000" not in a and "t-1" not in a and "0.35" not in a


def test_build_request_prefix_byte_identical_between_turns() -> None:
    first = build_request(ctx())
    second = build_request(ctx(turn_id="t-2", mood=0.9, history=(line(7),),
                               reply_to=line(7)))
    assert first.messages[0] == second.messages[0]
    assert first.messages[0]["content"].encode() == second.messages[0]["content"].encode()
    assert first.messages[2] != second.messages[2]
    assert [m["role"] for m in first.messages] == ["system", "system", "user"]


def test_stances_and_holdings_show_pnl_and_prices() -> None:
    text = stances_and_holdings(ctx())
    assert "btc: bullish (conviction 0.8) — Talep güçlü." in text
    assert "BTC 0.1 @ 90000 (now 95000)" in text and "P&L +5.6 %" in text
    assert "none" in stances_and_holdings(ctx(stances=(), holdings=()))


def test_mood_layer() -> None:
    assert "+0.35" in mood_layer(ctx()) and "-0.90" in mood_layer(ctx(mood=-0.9))


def test_memory_layer_newest_items_or_nothing() -> None:
    text = memory_layer(ctx(memories=("a", "b", "c", "d")))
    assert "- a" not in text and text.endswith("- b\n- c\n- d")
    assert memory_layer(ctx(memories=())) == ""
    assert "You said lately" not in build_request(ctx(memories=())).messages[1]["content"]


def test_history_layer_oldest_first_with_market() -> None:
    text = history_layer(ctx())
    assert text.index("#1 Zeynep [bot]: mesaj 1") < text.index("#5 Zeynep [bot]: mesaj 5")
    assert "BTC 95000 (+1.25 %)" in text
    assert "(none)" in history_layer(ctx(history=()))
    assert "#3 Deniz: soru 3" in history_layer(ctx(history=(line(3, "soru", human=True),)))


def test_token_budget_trims_the_oldest() -> None:
    history = tuple(line(i, "uzun bir mesaj " * 5) for i in range(1, 41))
    kept = trim_history(history, budget_tokens=200)
    assert kept and kept[-1].startswith("#40 ")  # the newest is always kept first
    first_kept = int(kept[0].split()[0][1:])
    assert first_kept > 1  # the oldest were dropped
    assert [int(k.split()[0][1:]) for k in kept] == list(range(first_kept, 41))
    assert sum(count_tokens(k) + 1 for k in kept) <= 200
    assert len(trim_history(history, budget_tokens=10_000)) == 40
    assert trim_history(history, budget_tokens=5) == []


def test_count_tokens_estimate() -> None:
    assert count_tokens("") == 0
    assert count_tokens("abcd" * 10) == 10
    assert count_tokens("ğüşıöç") == 3  # 12 UTF-8 bytes: Turkish letters cost more
    assert count_tokens("a b c d e") == 5  # at least one per word


def test_instruction_reply_or_fresh() -> None:
    reply = instruction(ctx(reply_to=line(12, "Dolar?", human=True)))
    assert reply.startswith('Reply to #12 from Deniz: "Dolar? 12"')
    assert instruction(ctx()) == "Write one new message about btc. Write only the message text."

"""Against drift into agreement (behavior_engine.agreement and its use in the pipeline)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from backend.schemas import Stance
from behavior_engine.agreement import RATIO_BAND, AgreementWatch, adds_agreement, markers
from behavior_engine.reads import HistoryItem
from tests.unit.test_pipeline import NOW, FakeClient, Rig, turn
from tests.unit.test_stances import Script


def bot_line(i: int, text: str, bot_id: int = 99) -> HistoryItem:
    return HistoryItem(message_id=i, telegram_message_id=i, bot_id=bot_id, speaker="Başka",
                       speaker_username=None, is_human=False, text=text,
                       created_at=NOW - timedelta(minutes=30 - i))


AGREEING = [bot_line(i, t) for i, t in enumerate([
    "Aynen, dolar yükselecek.", "Katılıyorum, kur yükselecek bence.",
    "Kesinlikle, dolar çıkacak.", "Haklısın, dolar uçacak.", "Bence de kur yükselecek.",
    "Ama biraz da temkinli olalım."])]


def test_markers_and_adds_agreement() -> None:
    assert markers("Aynen katılıyorum ama acele etme.") == (2, 1)
    assert adds_agreement("Aynen, haklısın.") and adds_agreement("Aynen ama emin değilim.")
    assert not adds_agreement("Dolar 42.") and not adds_agreement("Ama hayır, bence değil.")


def test_the_ratio_is_counted_once_per_message_over_a_window() -> None:
    watch = AgreementWatch(window=10)
    watch.observe(1, AGREEING)
    watch.observe(1, AGREEING)  # seen: not counted again
    assert watch.ratio(1) == 5.0 and watch.drifting(1)
    watch.observe(1, [bot_line(100 + i, "Ama hayır, bence değil.") for i in range(10)])
    assert watch.ratio(1) is None and not watch.drifting(1)  # the agreeing ones left
    assert watch.ratio(2) is None and not watch.drifting(2)


def test_a_differing_view_gets_a_reason_to_say_so() -> None:
    watch = AgreementWatch()
    watch.observe(1, AGREEING)
    bear = [Stance(topic="usdtry", view="bearish", conviction=0.5, reason="x")]
    bull = [Stance(topic="usdtry", view="bullish", conviction=0.5, reason="x")]
    line = watch.line(1, topic="usdtry", stances=bear, history=AGREEING)
    assert line is not None and "bearish" in line and "bullish" in line
    assert watch.line(1, topic="usdtry", stances=bull, history=AGREEING) is None
    calm = AgreementWatch()
    calm.observe(1, AGREEING[-1:])
    assert calm.line(1, topic="usdtry", stances=bear, history=AGREEING) is None
    assert RATIO_BAND == 0.15


async def test_a_drifting_chat_gets_contrast_in_the_prompt_and_no_mere_agreement() -> None:
    """The demo persona is bullish on usdtry; a chat agreeing that the dollar falls gives
    it the contrast line, and its draft that only agrees is asked for again (without the
    guard, "Aynen, haklısın." would be sent)."""
    falling = [bot_line(i, t) for i, t in enumerate([
        "Aynen, dolar düşecek.", "Katılıyorum, kur gerileyecek.", "Kesinlikle, dolar düşecek.",
        "Haklısın, kur düşecek.", "Ama bakalım."])]
    provider = Script("Aynen, haklısın.", "Bence değil, kur yükselecek.")
    rig = Rig(FakeClient(), providers=(provider,))
    rig.reads.items = list(falling)
    out = await rig.pipeline.run(dataclasses.replace(turn(), topic="usdtry"))
    assert out.status == "sent"
    prompt = provider.asked[0].messages[-1]["content"]
    assert "agreeing too much" in prompt and "bullish" in prompt
    assert [s.generation.text for s in rig.records.committed] == [
        "Bence değil, kur yükselecek."]
    assert rig.pipeline.guard_counts["agreement:regenerated"] == 1

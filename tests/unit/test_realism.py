"""The realism metrics (behavior_engine.realism) on hand-made logs whose values are worked
out by hand in each test."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from behavior_engine import realism as r
from behavior_engine.realism import MessageRecord

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def msg(i: int, sender: str, at_s: float, text: str = "bir iki üç dört beş altı yedi",
        reply_to: int | None = None, *, bot: bool = True, name: str = "") -> MessageRecord:
    return MessageRecord(message_id=i, sender=sender, is_bot=bot, text=text,
                         at=T0 + timedelta(seconds=at_s), reply_to=reply_to,
                         name=name or sender)


def by_name(metrics: list[r.Metric]) -> dict[str, r.Metric]:
    return {m.name: m for m in metrics}


# --------------------------------------------------------------------- formulas


def test_a_clock_has_burstiness_minus_one() -> None:
    # σ = 0 → r = 0 → A_n = −√(n−1)/√(n−1) = −1 (REALISM.md: a clock gives ≤ 0).
    assert r.burstiness_an([10.0] * 30) == pytest.approx(-1.0)


def test_burstiness_by_hand() -> None:
    # gaps 1, 1, 4: μ 2, σ √2, r = √2/2; n = 3: (2·r − √2) / (0·r + √2) = 0.
    assert r.burstiness_an([1.0, 1.0, 4.0]) == pytest.approx(0.0, abs=1e-12)
    # gaps 1, 1, 1, 9: μ 3, σ √12, r = 2/√3 ≈ 1.1547; n = 4: √5 ≈ 2.2361, √3 ≈ 1.7321.
    rr = 2 / math.sqrt(3)
    expected = (math.sqrt(5) * rr - math.sqrt(3)) / ((math.sqrt(5) - 2) * rr + math.sqrt(3))
    assert r.burstiness_an([1.0, 1.0, 1.0, 9.0]) == pytest.approx(expected)
    # (2.5820 − 1.7321) / (0.2726 + 1.7321) = 0.8499 / 2.0047 ≈ 0.424
    assert expected == pytest.approx(0.424, abs=1e-3)


def test_gini_by_hand() -> None:
    assert r.gini([1, 1, 1, 1]) == 0.0
    # Σ|xi−xj| = 2·3·10 = 60; 2 n² μ = 2·16·2.5 = 80 → 0.75 = (K−1)/K.
    assert r.gini([10, 0, 0, 0]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        r.gini([0, 0])


def test_tokens_are_unicode_words_and_single_marks() -> None:
    assert r.tokens("Altın, BUGÜN düşer mi?!") == ["altın", ",", "bugün", "düşer", "mi", "?",
                                                  "!"]
    assert r.tokens("İYİ") == ["iyi"]  # Turkish capital İ folds to a plain i
    assert r.words("don't panic: 3 gün") == ["don't", "panic", "3", "gün"]


def test_distinct_n_by_hand_and_the_token_limit() -> None:
    # a b a b: 2 of 4 words distinct; bigrams ab ba ab: 2 of 3.
    assert r.distinct_n(["a b a b"], 1) == (0.5, 4)
    assert r.distinct_n(["a b a b"], 2)[0] == pytest.approx(2 / 3)
    # 1,500 different words, then the same again: the first 2,000 tokens hold 1,500 kinds.
    text = " ".join(f"w{i}" for i in range(1500))
    assert r.distinct_n([text, text], 1) == (0.75, 2000)


def test_jaccard_of_character_5_grams() -> None:
    # abcdef → {abcde, bcdef}; abcdeg → {abcde, bcdeg}: 1 shared of 3.
    assert r.jaccard(r.char_ngrams("abcdef"), r.char_ngrams("ABCDEG")) == pytest.approx(1 / 3)


def test_near_duplicate_flags() -> None:
    texts = ["dolar bugün yine yükseldi arkadaşlar",
             "kısa mesaj",  # under 4 words: not counted
             "dolar bugün yine yükseldi arkadaşlar!",  # same 5-grams plus two
             "altın için tamamen başka bir şey söylüyorum"]
    assert r.near_duplicate_flags(texts) == [False, None, True, False]


def test_markers_are_whole_words() -> None:
    texts = ["Katılıyorum, aynen öyle.", "Ama hayır, amaç bu değil", "But no, I agree"]
    assert r.count_markers(texts, r.AGREEMENT_MARKERS) == 3  # katılıyorum, aynen, i agree
    assert r.count_markers(texts, r.CONTRAST_MARKERS) == 4  # ama, hayır, but, no (not amaç)


# --------------------------------------------------------------------- metrics


def test_timing_metrics_clock_fails_heavy_tail_passes_the_ratio() -> None:
    clock = [msg(i, f"bot:{i % 3}", 10.0 * i) for i in range(1, 31)]
    an, ratio = r.timing_metrics([clock])
    assert an.value == pytest.approx(-1.0) and an.passed is False
    assert ratio.value == pytest.approx(1.0) and ratio.passed is False
    # gaps: 17 of 1 s, 100, 100, 1000 → sorted[17] = sorted[18] = 100: p90 (index 17.1) is
    # 100, the median 1 → 100 ≥ 15.
    gaps = [1.0] * 17 + [100.0, 100.0, 1000.0]
    t, heavy = 0.0, [msg(0, "bot:0", 0.0)]
    for i, g in enumerate(gaps, start=1):
        t += g
        heavy.append(msg(i, f"bot:{i % 3}", t))
    _, ratio = r.timing_metrics([heavy])
    assert ratio.value == pytest.approx(100.0) and ratio.passed is True


def test_too_few_messages_is_na_not_a_pass() -> None:
    few = [msg(i, "bot:1", float(i)) for i in range(1, 5)]
    for m in r.chat_metrics([few]):
        if m.band is not None and m.name not in ("agreement_over_contrast",):
            assert m.passed is not True, m
    an = by_name(r.chat_metrics([few]))["burstiness_an"]
    assert an.value is None and an.passed is None and "gaps" in an.note


def test_answered_shares_leave_the_last_ten_out() -> None:
    # 20 messages by four speakers; the first ten are counted.
    chat = [msg(i, f"bot:{i % 4}", float(i)) for i in range(1, 21)]
    chat[1] = msg(2, "bot:2", 2.0, reply_to=1)    # 1 answered by bot:2 ... (prev: not far)
    chat[2] = msg(3, "bot:3", 3.0, reply_to=1)    # ... and bot:3: by two others (far)
    chat[5] = msg(6, "bot:1", 6.0, reply_to=5)    # 5 is bot:1's own: not answered
    chat[14] = msg(15, "bot:3", 15.0, reply_to=4)  # 4 answered once (far)
    chat[19] = msg(20, "bot:0", 20.0, reply_to=12)  # 12 is among the last ten (far)
    got = by_name(r.answered_metrics([chat]))
    # counted 1..10: answered 1 (two others) and 4 → 8 of 10 unanswered, 1 of 10 by ≥ 2.
    assert got["share_unanswered"].value == pytest.approx(0.8)
    assert got["share_answered_by_2plus"].value == pytest.approx(0.1)
    # replies 2→1 (previous), 3→1, 6→5 (previous), 15→4, 20→12: 3 of 5 further back.
    assert got["share_replies_further_back"].value == pytest.approx(0.6)
    assert got["share_replies_further_back"].passed is True


def test_same_speaker_and_addressing() -> None:
    speakers = ["bot:1", "bot:1", "bot:2", "bot:1", "bot:2", "bot:2", "bot:1", "bot:2",
                "bot:1", "bot:2", "bot:1"]
    chat = [msg(i, s, float(i), "merhaba arkadaşlar nasılsınız", name=s.replace(":", ""))
            for i, s in enumerate(speakers, start=1)]
    # consecutive pairs: 10, same speaker at 1→2 and 5→6: 2 of 10.
    same = r.same_speaker_metric([chat])
    assert same.value == pytest.approx(0.2) and same.passed is True
    chat[3] = msg(4, "bot:1", 4.0, "@ayse_bot ne dersin", name="bot1")  # an @mention
    chat[4] = msg(5, "bot:2", 5.0, "Bot1 haklı olabilir", name="bot2")  # another's name
    chat[6] = msg(7, "bot:1", 7.0, "bot1 olarak söylüyorum", name="bot1")  # own name: no
    chat[8] = msg(9, "bot:1", 9.0, "evet", reply_to=3, name="bot1")  # a reply
    addressing = r.addressing_metric([chat])
    assert addressing.value == pytest.approx(3 / 11)


def test_gini_metric_counts_silent_bots() -> None:
    chat = [msg(i, "bot:1", float(i)) for i in range(1, 11)]
    assert r.gini_metric([chat]).passed is None  # one speaker: n/a
    got = r.gini_metric([chat], [["bot:1", "bot:2", "bot:3", "bot:4"]])
    assert got.value == pytest.approx(0.75) and got.passed is True  # 10, 0, 0, 0


def test_human_replies_delay_and_number_of_bots() -> None:
    chat = [msg(1, "human:9", 0.0, "Arkadaşlar altın alınır mı?", bot=False),
            msg(2, "bot:1", 4.0, "bence beklemek lazım", reply_to=1),
            msg(3, "bot:2", 10.0, "ben alırım", reply_to=1),
            msg(4, "human:9", 20.0, "peki ya dolar?", bot=False),
            msg(5, "bot:1", 26.0, "dolar yatay", reply_to=4)]
    got = by_name(r.human_reply_metrics([chat]))
    # first answers: 4 s and 6 s → p50 5, p95 4 + 0.95·2 = 5.9.
    assert got["human_answer_delay_p50_s"].value == pytest.approx(5.0)
    assert got["human_answer_delay_p95_s"].value == pytest.approx(5.9)
    assert got["human_answer_delay_p95_s"].passed is True
    assert got["bots_per_human_message"].value == pytest.approx(1.5)
    assert got["bots_per_human_message"].passed is False  # one message answered by two
    assert got["human_answered_by_2plus"].value == pytest.approx(0.5)


def test_an_unanswered_human_message_counts_its_wait_unless_too_recent() -> None:
    chat = [msg(1, "human:9", 0.0, "Zeynep, ne dersin?", bot=False),
            msg(2, "bot:1", 6.0, "bence yükselir", reply_to=1),
            msg(3, "human:9", 10.0, "kimse yok mu?", bot=False),  # never answered
            msg(4, "bot:2", 30.0, "piyasa sakin"),
            msg(5, "human:9", 50.0, "son soru?", bot=False),  # 10 s before the end
            msg(6, "bot:1", 60.0, "bugün de böyle")]
    got = by_name(r.human_reply_metrics([chat]))
    # delays: 6 s, and 50 s (10 → 60, the end: a lower bound); the last one left out.
    assert got["human_answer_delay_p95_s"].value == pytest.approx(6 + 0.95 * 44)
    assert got["human_answer_delay_p95_s"].passed is False
    assert "1 unanswered" in got["human_answer_delay_p95_s"].note
    assert "1 too recent" in got["human_answer_delay_p95_s"].note
    assert got["bots_per_human_message"].value == pytest.approx(0.5)  # 1 and 0 bots
    assert got["bots_per_human_message"].passed is False


def test_text_metrics_duplicates() -> None:
    texts = [f"mesaj numarası {i} için farklı kelimeler burada" for i in range(10)]
    texts += [texts[0], texts[1]]  # 2 exact repeats of 12
    chat = [msg(i, f"bot:{i % 2}", float(i), t) for i, t in enumerate(texts, start=1)]
    got = by_name(r.text_metrics([chat]))
    assert got["exact_duplicates"].value == pytest.approx(2 / 12)
    assert got["exact_duplicates"].passed is False
    assert got["distinct_1"].passed is None  # far fewer than 2,000 tokens: not judged
    assert got["distinct_1"].value is not None and "2,000" in got["distinct_1"].note


def test_separability_tells_caricatures_apart() -> None:
    a = [f"faiz kararı merkez bankası enflasyon beklentisi {i} puan" for i in range(12)]
    b = [f"lol btc to the moon 🚀 {i} x kaldıraç" for i in range(12)]
    chat = [msg(i, "bot:a" if i % 2 else "bot:b", float(i), (a if i % 2 else b)[i // 2])
            for i in range(24)]
    got = r.separability_metric([chat])
    assert got.value is not None and got.value > 0.9  # κ near 1: caricatures
    assert got.passed is False


def test_markers_metric_only_agreement_fails() -> None:
    chat = [msg(i, "bot:1", float(i), "Katılıyorum, kesinlikle öyle") for i in range(3)]
    got = r.markers_metric([chat])
    assert got.passed is False and got.value is None


def test_report_json_and_multi_chat_means() -> None:
    a = [msg(i, f"bot:{i % 2}", 10.0 * i) for i in range(1, 31)]
    b = [msg(i, f"bot:{i % 2}", 5.0 * i) for i in range(1, 31)]
    rep = r.realism_report({"-1": a, "-2": b})
    data = json.loads(rep.to_json())
    assert [m["name"] for m in data["metrics"]] == list(r.METRIC_NAMES)
    assert set(data["chats"]) == {"-1", "-2"} and data["counts"]["messages"] == 60
    an = by_name(rep.metrics)["burstiness_an"]
    assert an.value == pytest.approx(-1.0) and "mean over 2" in an.note
    assert "burstiness_an" in rep.failed
    assert len(r.rows(rep.metrics)) == len(r.METRIC_NAMES)

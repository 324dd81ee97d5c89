"""Views that move with the market and events (behavior_engine.stances), world events in
the engine (behavior_engine.events), and the stance guard (behavior_engine.consistency and
the pipeline's use of it)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from backend.schemas import Holding, Stance, WorldEvent
from behavior_engine.consistency import check_consistency, expected_direction, holding_claims
from behavior_engine.events import EventBook, event_topics, parse_shocks, parse_views
from behavior_engine.market import MarketFeed
from behavior_engine.stances import StanceBook, change_lines, threshold_pct
from behavior_engine.turn import Generation, GenerationRequest
from tests.unit.test_pipeline import HUMAN, FakeClient, Rig, turn

START = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def event(i: int, at: datetime, **kw: object) -> WorldEvent:
    fields: dict[str, object] = {"headline": f"haber {i}", "created_by": "t",
                                 "created_at": START, **kw}
    return WorldEvent(id=i, at=at, **fields)  # type: ignore[arg-type]


def stance(topic: str, view: str, conviction: float = 0.5) -> Stance:
    return Stance(topic=topic, view=view, conviction=conviction,  # type: ignore[arg-type]
                  reason="ilk görüş")


def flat_feed() -> MarketFeed:
    """A feed that does not move unless shocked (volatility 0)."""
    return MarketFeed(seed=1, start=START,
                      volatility=dict.fromkeys(("BIST100", "USDTRY", "BTC", "GOLD"), 0.0))


# -- the feed's shocks ---------------------------------------------------------------------
def test_a_shock_steps_the_price_from_its_time_on() -> None:
    feed = flat_feed()
    before = feed.snapshot(START + timedelta(minutes=1)).prices["BIST100"]
    assert feed.add_shock("e1", START + timedelta(minutes=2), {"BIST100": -3.0})
    assert not feed.add_shock("e1", START + timedelta(minutes=2), {"BIST100": -3.0})
    assert feed.snapshot(START + timedelta(minutes=1, seconds=30)).prices["BIST100"] == before
    after = feed.snapshot(START + timedelta(minutes=3))
    assert after.prices["BIST100"] == pytest.approx(before * 0.97)
    assert after.change_pct["BIST100"] == pytest.approx(-3.0)
    grid = feed.prices_at_ticks([60, 180])
    assert grid[:, feed.symbols.index("BIST100")] == pytest.approx([before, before * 0.97])
    with pytest.raises(ValueError, match="-100"):
        feed.add_shock("bad", START, {"BTC": -100.0})


def test_a_shock_learnt_late_moves_the_latest_snapshot() -> None:
    feed = flat_feed()
    feed.snapshot(START + timedelta(minutes=5))
    feed.add_shock("late", START + timedelta(minutes=1), {"GOLD": 4.0})
    assert feed.snapshot(START + timedelta(minutes=5)).change_pct["GOLD"] == pytest.approx(4.0)


# -- views ---------------------------------------------------------------------------------
def test_a_flat_market_never_changes_a_view() -> None:
    book = StanceBook(flat_feed())
    views = book.views([stance("btc", "bearish", 0.0)], START + timedelta(hours=24))
    assert views.changes == () and views.view_map() == {"btc": "bearish"}


def test_views_follow_the_market_with_hysteresis() -> None:
    """A random walk, against a plain loop over the minute grid: a move of the threshold
    since the reference steps the view (or, at its end, trails the reference); every change
    resets the reference, so no view flips back on noise."""
    feed = MarketFeed(seed=3, start=START)
    book = StanceBook(feed)
    end = START + timedelta(hours=12)
    views = book.views([stance("btc", "neutral", 0.2)], end)
    assert len(views.changes) >= 2
    col = feed.symbols.index("BTC")
    prices = feed.prices_at_ticks(list(range(0, 12 * 3600 + 1, 60)))[:, col]
    order, view, ref, expected = ["bearish", "neutral", "bullish"], 1, prices[0], []
    for i, p in enumerate(prices):
        move = (p / ref - 1) * 100
        if abs(move) >= threshold_pct(0.2):
            ref = p
            step = 1 if move > 0 else -1
            if 0 <= view + step <= 2:
                expected.append((i, order[view], order[view + step]))
                view += step
    assert [(int((c.at - START).total_seconds() // 60), c.old, c.new)
            for c in views.changes] == expected
    assert all(c.cause == "market" and abs(c.move_pct) >= threshold_pct(0.2)
               for c in views.changes)
    # ... and the reason says why, in the persona's language
    assert "BTC" in views.stances[0].reason and "%" in views.stances[0].reason


def test_a_stronger_conviction_changes_less() -> None:
    feed = MarketFeed(seed=3, start=START)
    book = StanceBook(feed)
    end = START + timedelta(hours=24)
    weak = book.views([stance("btc", "neutral", 0.0)], end).changes
    strong = book.views([stance("btc", "neutral", 1.0)], end).changes
    assert len(strong) < len(weak)


def test_an_event_pushes_views_and_explains_the_moves_it_made() -> None:
    feed = flat_feed()
    events = EventBook(feed)
    book = StanceBook(feed, events)
    stances = [stance("usdtry", "bullish", 0.6), stance("bist100", "bullish", 0.3),
               stance("gold", "bullish", 0.99)]
    at = START + timedelta(minutes=10)
    assert book.views(stances, at + timedelta(minutes=5)).changes == ()
    events.add([event(1, at, headline="TCMB faizi 250 baz puan artırdı",
                      shocks={"BIST100": -3.0, "USDTRY": -1.5},
                      views={"usdtry": "bearish", "gold": "bearish"})])
    views = book.views(stances, at + timedelta(minutes=5))
    by_topic = {c.topic: c for c in views.changes}
    assert by_topic["usdtry"].new == "neutral" and by_topic["usdtry"].cause == "event"
    assert by_topic["bist100"].new == "neutral" and by_topic["bist100"].event_id == 1
    assert "gold" not in by_topic  # conviction 0.99: immovable by news
    assert views.view_map() == {"usdtry": "neutral", "bist100": "neutral", "gold": "bullish"}
    assert {s.topic: s.reason for s in views.stances}["usdtry"] == (
        "TCMB faizi 250 baz puan artırdı")
    lines = change_lines(views, at + timedelta(minutes=5), "tr")
    assert len(lines) == 2 and all("say why" in line for line in lines)
    # before the event's time nothing had changed
    assert book.views(stances, at - timedelta(minutes=1)).changes == ()


def test_every_worker_finds_the_same_views() -> None:
    a, b = MarketFeed(seed=9, start=START), MarketFeed(seed=9, start=START)
    stances = [stance("btc", "bullish", 0.1), stance("gold", "bearish", 0.2)]
    book_a, book_b = StanceBook(a), StanceBook(b)
    book_a.views(stances, START + timedelta(hours=3))  # asked at another time first
    end = START + timedelta(hours=6)
    assert book_a.views(stances, end) == book_b.views(stances, end)


# -- events --------------------------------------------------------------------------------
def test_event_book_news_and_topic_boost() -> None:
    feed = flat_feed()
    book = EventBook(feed)
    at = START + timedelta(minutes=1)
    assert book.add([event(1, at, shocks={"BTC": 6.0})]) != []
    assert book.add([event(1, at, shocks={"BTC": 6.0})]) == []  # known: ignored
    assert feed.snapshot(at + timedelta(seconds=1)).change_pct["BTC"] == pytest.approx(6.0)
    [note] = book.recent(at + timedelta(minutes=3))
    assert note.topics == ("btc",) and note.age_min == pytest.approx(3.0)
    assert book.recent(at + timedelta(hours=1)) == ()
    weights = {"btc": 1.0, "gold": 3.0}
    fresh = book.topic_weights(weights, at)
    later = book.topic_weights(weights, at + timedelta(minutes=20))
    assert fresh["btc"] > later["btc"] > weights["btc"] and fresh["gold"] == 3.0


def test_event_topics_and_parsers() -> None:
    ev = event(1, START, headline="Altın rekor kırdı", shocks={"USDTRY": 1.0})
    assert event_topics(ev) == ("usdtry", "gold")
    assert parse_shocks(["bist100=-3", "USDTRY=+1.5%"]) == {"BIST100": -3.0, "USDTRY": 1.5}
    for bad in ("BIST100", "BIST100=abc", "BIST100=0", "BIST100=80", "B-1=2"):
        with pytest.raises(ValueError, match="shock"):
            parse_shocks([bad])
    assert parse_views(["usdtry=bearish"]) == {"usdtry": "bearish"}
    for bad in ("usdtry", "nope=bullish", "usdtry=up"):
        with pytest.raises(ValueError, match="view"):
            parse_views([bad])


# -- the stance guard ----------------------------------------------------------------------
@pytest.mark.parametrize(("text", "want"), [
    ("Bence BTC yükselecek, alım fırsatı.", "bullish"),
    ("Altın buradan düşer, balon.", "bearish"),
    ("BIST düşmez, merak etmeyin.", "bullish"),
    ("I think bitcoin will go up from here.", "bullish"),
    ("Gold is a bubble, it will fall.", "bearish"),
    ("BIST100 bugün %2 düştü.", None),  # a fact, not a view
    ("Düşer mi çıkar mı bilemem.", None),  # both
    ("Altın için ben o kadar iyimser değilim.", "bearish"),
    ("I'm not that bullish on gold.", "bearish"),
    ("Kötümser değilim, BIST toparlar.", "bullish"),
])
def test_expected_direction(text: str, want: str | None) -> None:
    assert expected_direction(text) == want


def test_holding_claims() -> None:
    assert holding_claims("Elimdeki altınların hepsini sattım.")[1] == {"gold"}
    assert holding_claims("I don't own any bitcoin.")[1] == {"btc"}
    assert holding_claims("Portföyümdeki bitcoin beni üzüyor.")[0] == {"btc"}
    assert holding_claims("Altın fiyatı ilginç.") == (set(), set())


def test_check_consistency() -> None:
    stances = [stance("btc", "bearish"), stance("gold", "neutral")]
    holdings = [Holding(symbol="GOLD", quantity=1, avg_cost=1)]
    kw = {"stances": stances, "holdings": holdings}
    clash = check_consistency("Bitcoin yükselecek bence.", topic="btc", **kw)
    assert clash is not None and (clash.kind, clash.expected, clash.said) == (
        "view", "bearish", "bullish")
    assert "bearish" in clash.hint("tr")
    assert check_consistency("Bitcoin düşecek bence.", topic="btc", **kw) is None
    # a neutral view: only a reversal of what the bot last said counts
    assert check_consistency("Altın yükselecek.", topic="gold", **kw) is None
    flip = check_consistency("Altın düşecek.", topic="gold", last_said={"gold": "bullish"},
                             **kw)
    assert flip is not None and flip.expected == "bullish"
    held = check_consistency("Altınlarımın hepsini sattım.", topic="gold", **kw)
    assert held is not None and held.kind == "holding"
    assert check_consistency("Portföyümdeki bitcoin eridi.", topic="btc", **kw) is not None


class Script:
    """A provider that writes its texts in turn (the last one again when out)."""

    name = "script"
    model = None

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)
        self.asked: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> Generation:
        self.asked.append(request)
        text = self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]
        return Generation(text=text, provider=self.name)


def sent_texts(rig: Rig) -> Sequence[str]:
    return [s.generation.text for s in rig.records.committed]


async def test_the_pipeline_asks_again_for_a_draft_that_contradicts_a_view() -> None:
    """The demo persona is bullish on usdtry: a bearish draft is asked for again with the
    guard's hint, and the consistent one is sent (without the guard: the first)."""
    provider = Script("Dolar düşecek, kur gerileyecek bence.", "Kur yükselecek bence.")
    rig = Rig(FakeClient(), providers=(provider,))
    out = await rig.pipeline.run(turn())
    assert out.status == "sent"
    assert sent_texts(rig) == ["Kur yükselecek bence."]
    assert "your view is bullish" in provider.asked[1].messages[-1]["content"]
    assert rig.pipeline.guard_counts["stance:view"] == 1
    assert rig.pipeline.guard_counts["stance:regenerated"] == 1
    [sent] = rig.records.committed
    assert sent.views is not None and sent.views["usdtry"] == "bullish"


async def test_chatter_that_keeps_contradicting_is_dropped_but_a_person_is_answered() -> None:
    rig = Rig(FakeClient(), providers=(Script("Dolar düşecek bence."),))
    out = await rig.pipeline.run(turn())
    assert out.status == "skipped" and rig.records.committed == []
    assert rig.pipeline.guard_counts["stance:dropped"] == 1
    answer = Rig(FakeClient(), providers=(Script("Dolar düşecek bence.", "Bekleyelim."),))
    assert (await answer.pipeline.run(turn(reply_to=HUMAN))).status == "sent"
    assert sent_texts(answer) == ["Bekleyelim."]


async def test_news_reaches_the_prompt_and_the_message_records_its_event() -> None:
    provider = Script("Bu faiz kararı önemli, bekleyelim.")
    rig = Rig(FakeClient(), providers=(provider,))
    events = EventBook(rig.pipeline.market)
    rig.pipeline.events = events
    rig.pipeline.stance_book.events = events
    now = rig.pipeline.clock()
    events.add([event(5, now - timedelta(minutes=2), headline="TCMB faizi artırdı",
                      topics=["btc"], shocks={"BTC": -5.0})])
    await rig.pipeline.run(turn())
    prompt = "\n".join(m["content"] for m in provider.asked[0].messages)
    assert "News: TCMB faizi artırdı (2 dk önce; BTC -5 %)" in prompt
    assert "React to the news" in prompt
    assert rig.records.committed[0].event_id == 5
    assert rig.pipeline.market.snapshot(now).change_pct["BTC"] < -4.0


def test_grid_prices_match_snapshots() -> None:
    feed = MarketFeed(seed=4, start=START)
    grid = feed.prices_at_ticks([0, 60, 3600, 7260])
    snap = feed.snapshot(START + timedelta(seconds=7260))
    assert np.allclose(grid[-1], [snap.prices[s] for s in feed.symbols])

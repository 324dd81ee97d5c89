"""An injected world event visibly moves the chat (issue 16, item 5): the topics drawn, what
the offline generator writes, the moods, and the figures the demo reports. Each test fails
when its part of the reaction is taken out."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from backend.schemas import WorldEvent
from behavior_engine.context import turn_context
from behavior_engine.events import NEWS_WORDS, EventBook, event_effect
from behavior_engine.llm.offline import write_message
from behavior_engine.market import MarketFeed
from behavior_engine.scheduler import draw_topic
from tests.unit.test_pipeline import profile
from tests.unit.test_prompt_builder import ctx

START = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
AT = START + timedelta(minutes=30)
HIKE = WorldEvent(id=1, headline="TCMB politika faizini 250 baz puan artırdı",
                  shocks={"USDTRY": -1.5, "BIST100": -2.5}, views={"usdtry": "bearish"},
                  topics=["rates", "usdtry"], at=AT, created_by="test", created_at=START)
CHAT_TOPICS = {"bist100": 3.0, "gold": 2.0, "btc": 1.0, "usdtry": 0.5}
BOT_TOPICS = {"bist100": 3.0, "gold": 2.0, "inflation": 1.0, "usdtry": 0.7, "btc": 0.4,
              "rates": 0.3}


def share_on(topics: set[str], weights: dict[str, float], n: int = 4000) -> float:
    rng = random.Random(1)
    return sum(draw_topic(weights, BOT_TOPICS, rng) in topics for _ in range(n)) / n


def test_the_chat_turns_to_the_events_topics_then_back() -> None:
    book = EventBook(MarketFeed(seed=1, start=START))
    book.add([HIKE])
    topics = {"rates", "usdtry"}
    before = share_on(topics, book.topic_weights(CHAT_TOPICS, AT - timedelta(minutes=1)))
    fresh = share_on(topics, book.topic_weights(CHAT_TOPICS, AT + timedelta(minutes=1)))
    later = share_on(topics, book.topic_weights(CHAT_TOPICS, AT + timedelta(minutes=25)))
    assert before < 0.1 and fresh > 0.45 and before < later < fresh


def test_the_offline_generator_opens_on_the_news() -> None:
    news = ("TCMB faizi artırdı (2 dk önce; USDTRY -1,5 %)",)
    with_news = [write_message(ctx(turn_id=f"t{i}", topic="rates", news=news,
                                   news_topics=("rates",), event_id=1)) for i in range(60)]
    without = [write_message(ctx(turn_id=f"t{i}", topic="rates")) for i in range(60)]
    other_topic = [write_message(ctx(turn_id=f"t{i}", topic="btc", news=news,
                                     news_topics=("rates",), event_id=1)) for i in range(60)]

    def mentioning(texts: list[str]) -> int:
        return sum(bool(NEWS_WORDS.search(t.lower())) or "TCMB faizi" in t for t in texts)

    # rates talk says "karar" (decision) anyway: the news adds to that
    assert mentioning(with_news) >= mentioning(without) + 20
    assert mentioning(other_topic) <= mentioning(without)
    assert sum("TCMB faizi artırdı" in t for t in with_news) >= 5  # the headline itself


def test_a_shock_moves_the_moods_of_those_who_hold() -> None:
    feed = MarketFeed(seed=1, start=START, volatility=dict.fromkeys(
        ("BIST100", "USDTRY", "BTC", "GOLD"), 0.0))
    bot = profile()  # holds GOLD and USDTRY
    calm = turn_context(bot, [], feed.snapshot(AT - timedelta(seconds=1)), turn_id="a",
                        topic="usdtry", chat_id=1, seed=1)
    EventBook(feed).add([HIKE.model_copy(update={"shocks": {"USDTRY": -4.0, "GOLD": -4.0}})])
    shaken = turn_context(bot, [], feed.snapshot(AT + timedelta(seconds=1)), turn_id="b",
                          topic="usdtry", chat_id=1, seed=1)
    assert shaken.pnl_pct < calm.pnl_pct - 3.0 and shaken.mood < calm.mood


def test_event_effect_counts_before_and_after() -> None:
    rows = [(AT - timedelta(minutes=5), "BIST bugün sakin.", None),
            (AT - timedelta(minutes=2), "Altın nereye?", None),
            (AT + timedelta(minutes=1), "Faiz kararı sert geldi, dolar geriledi.", 1),
            (AT + timedelta(minutes=2), "Bu haberden sonra kur düşer.", 1),
            (AT + timedelta(minutes=3), "Altın sakin.", None),
            (AT + timedelta(minutes=30), "Dolar yine 42.", None)]  # outside the window
    got = event_effect(rows, HIKE)
    assert got["before"] == {"messages": 2, "on_topic": 0.0}
    assert got["after"] == {"messages": 3, "on_topic": 0.667, "reacted": 2, "mentions": 2}
    assert got["before_mentions"] == 0 and got["topics"] == ["rates", "usdtry"]

"""World events in the engine (issue 16, item 5): the market, moods, stances and topics react.

An operator injects an event (panel, API, ``botsim event``) or schedules one; it is stored
(:mod:`backend.stores.events`) and every worker's :class:`EventBook` loads it at its next
tick, told by the cache (the newest event's id, invalidated over Redis when one is stored;
no statement per tick otherwise), or, without Redis, within :data:`REFRESH_S` seconds. From
the event's time on:

* **market**: its ``shocks`` are a step in the feed's prices
  (:meth:`~behavior_engine.market.MarketFeed.add_shock`), so holdings' P&L, and with it
  each persona's mood (:func:`~behavior_engine.market.mood_from_pnl`), move at once;
* **stances**: its ``views`` push personas one step towards them, and its shocks count as
  market moves (:mod:`behavior_engine.stances`), each change with the event as its reason;
* **topics**: the chat turns to the event's topics: their weight in the chat's topic draw is
  multiplied by ``1 + TOPIC_BOOST × exp(-age / TOPIC_HALF_LIFE × ln 2)``
  (:meth:`EventBook.topic_weights`), so about half the fresh messages are about it at
  first (each persona's own interests still count), and it fades over the next half hour;
* **prompts**: a turn within :data:`NEWS_WINDOW` of the event carries it as news
  (:meth:`EventBook.recent`), and a message that reacts to it records the event's id.

Events are global (one world, many groups): a chat-only event would give one bot two
markets. Every worker applies the same events to the same seeded feed, so their prices
agree when their feeds share a start.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.schemas import KNOWN_TOPICS, MAX_SHOCK_PCT, WorldEvent, WorldEventIn
from backend.stores import events as event_store
from behavior_engine.market import MarketFeed
from behavior_engine.topics import detect_topic

#: Seconds between a worker's reads of new events (one indexed query).
REFRESH_S = 5.0
#: How long an event is news in the bots' prompts.
NEWS_WINDOW = timedelta(minutes=30)
#: Multiplier of a fresh event's topics in the chat's topic draw (see the module docstring):
#: in the demo's "Borsa & Altın" group, Mehmet's fresh messages on rates or USD/TRY go from
#: 4 % to about half (tests/unit/test_world_events_move_the_chat.py).
TOPIC_BOOST = 15.0
#: Half-life of that boost.
TOPIC_HALF_LIFE = timedelta(minutes=10)

#: Words that speak of news (Turkish and English), for :func:`event_effect`.
NEWS_WORDS = re.compile(r"(?<!\w)(?:haber\w*|karar\w*|gelişme\w*|açıklama\w*|news|headline"
                        r"|announcement|decision)(?!\w)")

#: Ready-made events for the CLI, the panel and the demo (Turkish headlines: the demo world).
PRESETS: dict[str, WorldEventIn] = {
    "rate_hike": WorldEventIn(
        headline="TCMB politika faizini 250 baz puan artırdı",
        shocks={"USDTRY": -1.5, "BIST100": -2.5, "GOLD": -1.0},
        views={"usdtry": "bearish"}, topics=["rates", "usdtry"]),
    "rate_cut": WorldEventIn(
        headline="TCMB politika faizini 250 baz puan indirdi",
        shocks={"USDTRY": 1.5, "BIST100": 2.5, "GOLD": 1.0},
        views={"usdtry": "bullish", "bist100": "bullish"}, topics=["rates", "bist100"]),
    "lira_selloff": WorldEventIn(
        headline="Türk lirası sert değer kaybetti, dolar/TL rekor kırdı",
        shocks={"USDTRY": 4.0, "GOLD": 3.0, "BIST100": -2.0},
        views={"usdtry": "bullish", "gold": "bullish"}, topics=["usdtry", "gold"]),
    "btc_crash": WorldEventIn(
        headline="Bitcoin bir saatte yüzde 8 değer kaybetti",
        shocks={"BTC": -8.0}, views={"btc": "bearish"}, topics=["btc"]),
    "btc_rally": WorldEventIn(
        headline="Bitcoin ETF'lerine rekor giriş oldu",
        shocks={"BTC": 6.0}, views={"btc": "bullish"}, topics=["btc"]),
    "gold_spike": WorldEventIn(
        headline="Ons altın tüm zamanların zirvesini gördü",
        shocks={"GOLD": 4.0}, views={"gold": "bullish"}, topics=["gold"]),
    "inflation_surprise": WorldEventIn(
        headline="Enflasyon beklentilerin çok üzerinde geldi",
        shocks={"USDTRY": 1.0, "BIST100": -1.5, "GOLD": 1.5},
        views={"gold": "bullish"}, topics=["inflation", "gold"]),
}


def parse_shocks(pairs: Iterable[str]) -> dict[str, float]:
    """``["BIST100=-3", "usdtry=+1.5"]`` → ``{"BIST100": -3.0, "USDTRY": 1.5}``.

    Raises:
        ValueError: a pair without ``=``, a symbol that is not letters and digits, a percent
            that is not a number, 0, or beyond ±:data:`~backend.schemas.MAX_SHOCK_PCT`;
            the message names the pair.
    """
    out: dict[str, float] = {}
    for pair in pairs:
        sym, sep, value = pair.partition("=")
        sym = sym.strip().upper()
        if not sep or not sym.isalnum():
            raise ValueError(f"shock {pair!r}: write SYMBOL=PERCENT, e.g. BIST100=-3")
        try:
            pct = float(value.strip().rstrip("%"))
        except ValueError:
            raise ValueError(f"shock {pair!r}: {value!r} is not a percent") from None
        if not math.isfinite(pct) or pct == 0 or abs(pct) > MAX_SHOCK_PCT:
            raise ValueError(f"shock {pair!r}: the percent must be non-zero and within "
                             f"±{MAX_SHOCK_PCT:g}")
        out[sym] = pct
    return out


def parse_views(pairs: Iterable[str]) -> dict[str, str]:
    """``["usdtry=bearish"]`` → ``{"usdtry": "bearish"}``.

    Raises:
        ValueError: a pair without ``=``, an unknown topic, or a view other than ``bullish``
            / ``bearish``; the message names the pair.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        topic, sep, view = (p.strip().lower() for p in pair.partition("="))
        if not sep or topic not in KNOWN_TOPICS or view not in ("bullish", "bearish"):
            raise ValueError(f"view {pair!r}: write TOPIC=bullish|bearish with a topic of "
                             f"{', '.join(KNOWN_TOPICS)}")
        out[topic] = view
    return out


def event_topics(event: WorldEventIn) -> tuple[str, ...]:
    """The topics an event is about: its ``topics``, else those of its shocks' symbols,
    its views and its headline's keywords (:func:`~behavior_engine.topics.detect_topic`),
    in that order, without repeats."""
    found: list[str] = list(event.topics)
    if not found:
        found += [s.lower() for s in event.shocks if s.lower() in KNOWN_TOPICS]
        found += list(event.views)
        topic = detect_topic(event.headline)
        if topic is not None:
            found.append(topic)
    return tuple(dict.fromkeys(found))


@dataclass(frozen=True, slots=True)
class EventNote:
    """An event as a turn sees it: ``id``, ``headline``, ``topics``, ``at`` (aware UTC),
    ``age_min`` (minutes since it happened, ≥ 0) and ``shocks`` (symbol → percent)."""

    id: int
    headline: str
    topics: tuple[str, ...]
    at: datetime
    age_min: float
    shocks: Mapping[str, float]


class EventBook:
    """The world events one worker knows, applied to its market feed.

    Args:
        feed: the market feed the events' shocks are applied to (None: no prices move).

    Attributes:
        version: bumped whenever an event is added (a cache key for views derived from
            the events, :class:`~behavior_engine.stances.StanceBook`).
    """

    def __init__(self, feed: MarketFeed | None = None) -> None:
        self.feed = feed
        self._events: list[WorldEvent] = []
        self._last_id = 0
        self._read_at = -math.inf
        self.version = 0

    @property
    def events(self) -> tuple[WorldEvent, ...]:
        """Every event known, by time."""
        return tuple(self._events)

    def add(self, events: Iterable[WorldEvent]) -> list[WorldEvent]:
        """Take ``events`` in (those already known are ignored), apply their shocks to the
        feed, and return the new ones."""
        known = {e.id for e in self._events}
        new = [e for e in events if e.id not in known]
        for e in new:
            if self.feed is not None and e.shocks:
                self.feed.add_shock(("event", e.id), e.at, e.shocks)
            self._last_id = max(self._last_id, e.id)
        if new:
            self._events = sorted([*self._events, *new], key=lambda e: (e.at, e.id))
            self.version += 1
        return new

    async def refresh(self, sessionmaker: async_sessionmaker[AsyncSession], *,
                      force: bool = False, latest: int | None = None) -> list[WorldEvent]:
        """Read events stored since the last read. Returns the new ones.

        Args:
            force: read now.
            latest: the newest stored event's id, when known without the database (the
                cache's ``events``/``latest``, invalidated when an event is stored): the
                events are read only when it is past the newest known (issue 20: no
                statement per tick). None: at most every :data:`REFRESH_S` seconds.

        Raises:
            Exception: the database read failed (the caller's tick counts it; the next
                refresh tries again).
        """
        now = time.monotonic()
        if not force and (now - self._read_at < REFRESH_S if latest is None
                          else latest <= self._last_id):
            return []
        self._read_at = now
        async with sessionmaker() as session:
            found = await event_store.list_events(session, after_id=self._last_id)
        return self.add(found)

    def happened(self, now: datetime) -> list[WorldEvent]:
        """The events at or before ``now``, oldest first."""
        return [e for e in self._events if e.at <= now]

    def recent(self, now: datetime, within: timedelta = NEWS_WINDOW) -> tuple[EventNote, ...]:
        """The events of the last ``within`` before ``now``, newest first."""
        return tuple(
            EventNote(id=e.id, headline=e.headline, topics=event_topics(e), at=e.at,
                      age_min=(now - e.at).total_seconds() / 60.0, shocks=dict(e.shocks))
            for e in reversed(self._events) if now - within <= e.at <= now)

    def topic_weights(self, weights: Mapping[str, float], now: datetime) -> dict[str, float]:
        """The chat's topic weights with recent events' topics boosted (module docstring):
        a topic the chat has no weight for gets the mean weight before the boost."""
        out = dict(weights)
        base = sum(out.values()) / len(out) if out else 1.0
        for note in self.recent(now):
            fade = math.exp(-note.age_min * 60.0 / TOPIC_HALF_LIFE.total_seconds() * math.log(2))
            for topic in note.topics:
                out[topic] = out.get(topic, base) * (1.0 + TOPIC_BOOST * fade)
        return out


def notes_text(notes: Sequence[EventNote], language: str) -> list[str]:
    """News lines for a prompt, newest first: ``"TCMB ... (12 min ago; USDTRY -1.5 %)"``."""
    lines = []
    for n in notes:
        moves = ", ".join(f"{s} {p:+g} %" for s, p in n.shocks.items())
        ago = (f"{n.age_min:.0f} dk önce" if language == "tr" else f"{n.age_min:.0f} min ago")
        lines.append(f"{n.headline} ({ago}{'; ' + moves if moves else ''})")
    return lines


def event_effect(messages: Sequence[tuple[datetime, str, int | None]], event: WorldEvent,
                 window: timedelta = timedelta(minutes=10)) -> dict[str, object]:
    """How an event moved a chat: bot messages in the ``window`` before and after it.

    Args:
        messages: ``(time, text, event id it reacted to)`` of the bots' messages.
        event: the event.
        window: the span compared on each side.

    Returns:
        ``{"event": id, "headline", "topics", "before": {"messages", "on_topic"},
        "after": {"messages", "on_topic", "reacted"}}``: ``on_topic`` is the share of
        messages whose detected topic is one of the event's (0.0 without messages),
        ``reacted`` the messages that carried the event as news on its topic,
        ``mentions`` (and ``before_mentions``) the messages that speak of news (a word of
        :data:`NEWS_WORDS`, or two words of five letters or more from the headline).
    """
    topics = set(event_topics(event))
    words = set(re.findall(r"\w{5,}", event.headline.lower()))

    def mentions(text: str) -> bool:
        low = text.lower()
        return bool(NEWS_WORDS.search(low)) or sum(w in low for w in words) >= 2

    def side(rows: list[tuple[datetime, str, int | None]]) -> dict[str, float | int]:
        on = sum(1 for _, text, _ in rows if detect_topic(text) in topics)
        return {"messages": len(rows), "on_topic": round(on / len(rows), 3) if rows else 0.0}

    before = [m for m in messages if event.at - window <= m[0] < event.at]
    after = [m for m in messages if event.at <= m[0] < event.at + window]
    return {"event": event.id, "headline": event.headline, "topics": sorted(topics),
            "before": side(before),
            "after": {**side(after), "reacted": sum(1 for m in after if m[2] == event.id),
                      "mentions": sum(1 for m in after if mentions(m[1]))},
            "before_mentions": sum(1 for m in before if mentions(m[1]))}

"""Views that move with the market and with events, with hysteresis (issue 16, item 2).

A persona's stances (``bots.stances``) are its views at the market's open. From then on each
view is re-examined every :data:`STEP_S` seconds on the feed's prices (a fixed grid from the
feed's start, so every worker with the same feed and events finds the same views):

* **Market** (topics with a symbol: ``usdtry``, ``bist100``, ``btc``, ``gold``): the price
  is compared with its *reference*, the price when the view last changed (at first the
  open's). A move of ``r`` percent with ``|r| ≥ T`` moves the view one step in the move's
  direction (bearish → neutral → bullish, or back), or, for a view already at that end,
  only moves the reference there (a trailing reference). ``T = MOVE_PCT × (1 + 2 ×
  conviction)``: 1 % for a conviction of 0, 2.6 % at 0.8. Every change resets the
  reference, so a view changes back only after a move of ``T`` the other way: this is the
  hysteresis (a Schmitt trigger), and no view flips on noise around one level.
* **Events** (:mod:`behavior_engine.events`): an event's ``views`` move a differing view
  one step towards the event's at its time (not a view with conviction ≥
  :data:`IMMOVABLE`), the reference reset there; a market move at the grid point of an
  event that shocked the symbol is the event's doing, and says so.

Each change keeps its cause (the move in percent, or the event's headline), and the changed
stance's ``reason`` says it in the persona's language, so a bot that changes its mind says
why (prompts carry :func:`change_lines`). With the demo feed's volatility
(:mod:`behavior_engine.market`) a conviction-0.8 view on BIST100 (T = 2.6 %, σ ≈ 0.72 % an
hour) changes about never in an hour without an event; a conviction-0.3 view on BTC
(T = 1.6 %, σ ≈ 1.5 % an hour) about once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from backend.schemas import Stance, WorldEvent
from behavior_engine.events import EventBook
from behavior_engine.market import MarketFeed
from behavior_engine.topics import TOPIC_SYMBOLS

#: Seconds between two examinations of a view (the grid's step).
STEP_S = 60
#: Percent move that changes a view of conviction 0 (``T`` in the module docstring).
MOVE_PCT = 1.0
#: A view of at least this conviction is not moved by events (the market still moves it).
IMMOVABLE = 0.95
ORDER = ("bearish", "neutral", "bullish")
#: How long a change stays in the prompt ("you changed your mind 12 min ago because ...").
RECENT_CHANGE = timedelta(minutes=60)

_WORDS = {
    "tr": {"bullish": "iyimser", "bearish": "kötümser", "neutral": "nötr",
           "up": "yükseldi", "down": "düştü"},
    "en": {"bullish": "bullish", "bearish": "bearish", "neutral": "neutral",
           "up": "has risen", "down": "has fallen"},
}


def threshold_pct(conviction: float) -> float:
    """The move, in percent, that changes a view of ``conviction`` (0–1):
    ``MOVE_PCT × (1 + 2 × conviction)``."""
    return MOVE_PCT * (1.0 + 2.0 * conviction)


@dataclass(frozen=True, slots=True)
class ViewChange:
    """One change of a view.

    Attributes:
        topic: the topic id.
        old, new: ``bullish`` / ``bearish`` / ``neutral``.
        at: aware UTC time of the grid point where it changed.
        cause: ``market`` or ``event``.
        detail: the move (``"BIST100 -2.7 %"``) or the event's headline.
        move_pct: the price move since the reference, percent (0 for a pure event push).
        event_id: the event, for cause ``event``.
    """

    topic: str
    old: str
    new: str
    at: datetime
    cause: str
    detail: str
    move_pct: float = 0.0
    event_id: int | None = None


@dataclass(frozen=True, slots=True)
class BotViews:
    """A bot's views now: ``stances`` (the persona's, each view and reason as it stands now)
    and ``changes`` (every change since the open, oldest first)."""

    stances: tuple[Stance, ...]
    changes: tuple[ViewChange, ...]

    def view_map(self) -> dict[str, str]:
        """Topic → view now."""
        return {s.topic: s.view for s in self.stances}


@dataclass
class _Path:
    """A view's path over the grid, for one (topic, view at open, conviction)."""

    view: str
    ref: float
    ref_index: int = 0  # grid index where the reference was set
    upto: int = -1  # last grid index examined
    changes: list[ViewChange] = field(default_factory=list)


def _reason(change: ViewChange, language: str) -> str:
    words = _WORDS.get(language, _WORDS["en"])
    if change.cause == "event":
        return change.detail
    sym, pct = change.detail.split(" ")[0], change.move_pct
    way = words["up"] if pct > 0 else words["down"]
    amount = f"{abs(pct):.1f}".replace(".", ",") if language == "tr" else f"{abs(pct):.1f}"
    if language == "tr":
        return f"{sym} kısa sürede %{amount} {way}"
    return f"{sym} {way} {amount} % in a short time"


class StanceBook:
    """Every bot's views now, from its stances at the open, the feed and the events.

    Args:
        feed: the market feed (its start is the grid's origin; the events' shocks are in it).
        events: the world events (None: the market alone moves views).
        step_s: the grid's step, seconds.
    """

    def __init__(self, feed: MarketFeed, events: EventBook | None = None, *,
                 step_s: int = STEP_S) -> None:
        if step_s < 1:
            raise ValueError(f"step_s must be >= 1, got {step_s}")
        self.feed = feed
        self.events = events
        self.step_s = step_s
        self._grid = np.zeros((0, len(feed.symbols)))
        self._paths: dict[tuple[str, str, float], _Path] = {}
        self._version = -1

    def _index(self, at: datetime) -> int:
        """The grid index of the first point at or after ``at`` (≥ 0)."""
        s = (at - self.feed.start).total_seconds()
        return max(0, math.ceil(s / self.step_s))

    def _time(self, index: int) -> datetime:
        return self.feed.start + timedelta(seconds=index * self.step_s)

    def _prices(self, upto: int) -> np.ndarray:
        """The grid's prices up to index ``upto`` inclusive."""
        version = self.events.version if self.events is not None else 0
        if version != self._version:  # an event came: its shock may lie in the past
            self._version = version
            self._grid = np.zeros((0, len(self.feed.symbols)))
            self._paths.clear()
        have = len(self._grid)
        if upto >= have:
            ticks = [i * self.step_s for i in range(have, upto + 1)]
            self._grid = np.vstack([self._grid, self.feed.prices_at_ticks(ticks)])
        return self._grid

    def views(self, stances: Sequence[Stance], now: datetime, language: str = "tr"
              ) -> BotViews:
        """The views now of a bot whose stances at the open are ``stances``.

        Args:
            stances: the persona's stances (``bots.stances``).
            now: aware UTC now (a time before the feed's start: the open's views).
            language: the persona's language (``tr`` / ``en``) for the changed reasons.

        Returns:
            The stances as they stand now and their changes, oldest first.
        """
        upto = max(0, math.floor((now - self.feed.start).total_seconds() / self.step_s))
        grid = self._prices(upto)
        events = self.events.happened(now) if self.events is not None else []
        out: list[Stance] = []
        changes: list[ViewChange] = []
        for st in stances:
            path = self._path(st, grid, upto, events)
            seen = [c for c in path.changes if c.at <= now]
            changes += seen
            if seen:
                last = seen[-1]
                st = Stance(topic=st.topic, view=last.new,
                            conviction=st.conviction, reason=_reason(last, language)[:300])
            out.append(st)
        changes.sort(key=lambda c: c.at)
        return BotViews(stances=tuple(out), changes=tuple(changes))

    def _path(self, st: Stance, grid: np.ndarray, upto: int,
              events: Sequence[WorldEvent]) -> _Path:
        key = (st.topic, st.view, round(st.conviction, 3))
        sym = TOPIC_SYMBOLS.get(st.topic)
        col = self.feed.symbols.index(sym) if sym in self.feed.symbols else None
        path = self._paths.get(key)
        if path is None:
            ref = float(grid[0, col]) if col is not None else 0.0
            path = self._paths[key] = _Path(view=st.view, ref=ref)
        if path.upto >= upto:
            return path
        threshold = threshold_pct(st.conviction)
        pushes = sorted(((self._index(e.at), e) for e in events if st.topic in e.views),
                        key=lambda p: (p[0], p[1].id))
        shocked = [(self._index(e.at), e) for e in events
                   if sym is not None and sym in e.shocks]
        i = path.upto + 1
        while i <= upto:
            for idx, event in pushes:
                if idx == i:
                    self._push(path, st, event, i, col, grid)
            stop = min([idx for idx, _ in pushes if idx > i] + [upto + 1])
            if col is not None and path.ref > 0:
                moves = (grid[i:stop, col] / path.ref - 1.0) * 100.0
                hits = np.flatnonzero(np.abs(moves) >= threshold)
                if hits.size:
                    j = i + int(hits[0])
                    move = float(moves[hits[0]])
                    self._move(path, st, move, j, float(grid[j, col]), sym or "",
                               _explaining(shocked, sym or "", path.ref_index, j, move))
                    i = j + 1
                    continue
            i = stop
        path.upto = upto
        return path

    def _push(self, path: _Path, st: Stance, event: WorldEvent, i: int, col: int | None,
              grid: np.ndarray) -> None:
        """An event's view on the topic: one step towards it (module docstring)."""
        if col is not None:
            path.ref, path.ref_index = float(grid[i, col]), i
        want = event.views[st.topic]
        if st.conviction >= IMMOVABLE or path.view == want:
            return
        new = ORDER[ORDER.index(path.view) + (1 if want == "bullish" else -1)]
        path.changes.append(ViewChange(topic=st.topic, old=path.view, new=new,
                                       at=self._time(i), cause="event",
                                       detail=event.headline, event_id=event.id))
        path.view = new

    def _move(self, path: _Path, st: Stance, move: float, j: int, price: float, sym: str,
              event: WorldEvent | None) -> None:
        """A market move past the threshold at grid index ``j`` (module docstring)."""
        path.ref, path.ref_index = price, j
        step = 1 if move > 0 else -1
        k = ORDER.index(path.view) + step
        if not 0 <= k < len(ORDER):
            return  # already at that end: the reference trails the price
        new = ORDER[k]
        if event is not None:
            change = ViewChange(topic=st.topic, old=path.view, new=new, at=self._time(j),
                                cause="event", detail=event.headline, move_pct=move,
                                event_id=event.id)
        else:
            change = ViewChange(topic=st.topic, old=path.view, new=new, at=self._time(j),
                                cause="market", detail=f"{sym} {move:+.1f} %", move_pct=move)
        path.changes.append(change)
        path.view = new


def _explaining(shocked: Sequence[tuple[int, WorldEvent]], sym: str, since: int, j: int,
                move: float) -> WorldEvent | None:
    """The event that explains a move of ``move`` percent at grid index ``j``: the latest one
    since the reference (index ``since``) that shocked ``sym`` the same way by at least half
    the move; None when none did (the market did it)."""
    found = None
    for idx, event in shocked:
        pct = event.shocks[sym]
        if since < idx <= j and pct * move > 0 and abs(pct) >= abs(move) / 2:
            found = event
    return found


def change_lines(views: BotViews, now: datetime, language: str,
                 within: timedelta = RECENT_CHANGE) -> list[str]:
    """Prompt lines for the changes of the last ``within``: what changed, when, and why,
    asking the bot to say why if it talks about it (English: the prompt's language)."""
    words = _WORDS["en"]
    lines = []
    for c in views.changes:
        if now - c.at > within:
            continue
        ago = max(0, round((now - c.at).total_seconds() / 60))
        lines.append(
            f"Your view on {c.topic} changed from {words[c.old]} to {words[c.new]} {ago} min "
            f"ago ({'news: ' if c.cause == 'event' else 'market: '}{c.detail}). If you talk "
            "about it, say why you changed your mind.")
    return lines

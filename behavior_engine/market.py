"""A simulated market feed, holdings P&L and the mood it puts a persona in.

The feed is a seeded geometric random walk (zero drift in log price) that ticks once a
second. For each symbol::

    log(price(t)) = log(price(start)) + sigma * W(t)

where ``W`` is a standard Gaussian random walk with one N(0, 1) step per elapsed second, and
``sigma`` is the symbol's volatility **per sqrt(second)** (the standard deviation of the log
return over one second). Over ``s`` seconds the log return has standard deviation
``sigma * sqrt(s)``. The defaults are chosen so that a demo shows moves within minutes:

=========  ===========  =========================  ============  ==========  ===========
symbol     start        quote currency             sigma/sqrt s  1 minute    1 hour
=========  ===========  =========================  ============  ==========  ===========
BIST100    10,500 pts   TRY (index points)         1.2e-4        ~0.09 %     ~0.72 %
USDTRY     42.5         TRY per USD                5.0e-5        ~0.04 %     ~0.30 %
BTC        95,000       USD                        2.5e-4        ~0.19 %     ~1.5 %
GOLD       5,600        TRY per gram               1.0e-4        ~0.08 %     ~0.60 %
=========  ===========  =========================  ============  ==========  ===========

(roughly 3-7 times real intraday volatility: the demo runs for minutes, not months).

Determinism: the path depends only on ``seed``, ``start`` and the symbols, not on which
times were queried before. Time is cut in blocks of one hour; the sum of each block's steps
is drawn first (from its own seeded stream), and the steps inside a block are then drawn as a
Gaussian random-walk bridge to that sum only when a time inside the block is asked for. So a
query a year ahead costs a few thousand draws, not thirty million, and asking for ``t1`` then
``t2`` gives the same prices as asking for ``t2`` directly. Each symbol has its own stream,
keyed by a CRC-32 of its name, so adding a symbol does not change the others.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from backend.schemas import Holding
from behavior_engine.turn import MarketSnapshot

#: Start prices of the demo world, in each symbol's quote currency.
DEFAULT_PRICES: dict[str, float] = {
    "BIST100": 10_500.0,
    "USDTRY": 42.5,
    "BTC": 95_000.0,
    "GOLD": 5_600.0,
}
#: Volatility per sqrt(second) of the log price (see the module docstring).
DEFAULT_VOLATILITY: dict[str, float] = {
    "BIST100": 1.2e-4,
    "USDTRY": 5.0e-5,
    "BTC": 2.5e-4,
    "GOLD": 1.0e-4,
}
#: Volatility of a symbol with no default and none given.
FALLBACK_VOLATILITY = 1.0e-4
#: Quote currency of each known symbol; other symbols are taken to be quoted in TRY.
QUOTE_CURRENCY: dict[str, str] = {"BIST100": "TRY", "USDTRY": "TRY", "BTC": "USD", "GOLD": "TRY"}
#: Percent of P&L that moves mood by one unit in atanh space (see :func:`mood_from_pnl`).
PNL_MOOD_SCALE = 5.0

_BLOCK = 3600  # ticks (seconds) per block
_CHUNK = 256  # block sums drawn per generator call


def _require_aware(at: datetime, what: str) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime (UTC), got naive {at.isoformat()}")
    return at.astimezone(UTC)


class MarketFeed:
    """A deterministic simulated market: one geometric random walk per symbol.

    Args:
        seed: seed of the walk (any int; same seed and start → same prices).
        start: aware datetime of the session open; ``change_pct`` is measured from here.
        symbols: symbol → start price (quote currency). Defaults to :data:`DEFAULT_PRICES`.
        volatility: symbol → sigma per sqrt(second) of the log price, overriding
            :data:`DEFAULT_VOLATILITY` (:data:`FALLBACK_VOLATILITY` for unknown symbols).

    Raises:
        ValueError: naive ``start``, no symbols, a price that is not finite and > 0, a
            volatility that is not finite and >= 0, or a volatility for an unknown symbol.
    """

    def __init__(
        self,
        *,
        seed: int,
        start: datetime,
        symbols: Mapping[str, float] | None = None,
        volatility: Mapping[str, float] | None = None,
    ) -> None:
        self._start = _require_aware(start, "start")
        self._seed = int(seed) % 2**64
        prices = dict(DEFAULT_PRICES if symbols is None else symbols)
        if not prices:
            raise ValueError("symbols must not be empty")
        for sym, p in prices.items():
            if not (math.isfinite(p) and p > 0):
                raise ValueError(f"start price of {sym!r} must be finite and > 0, got {p}")
        vols = {s: DEFAULT_VOLATILITY.get(s, FALLBACK_VOLATILITY) for s in prices}
        for sym, v in (volatility or {}).items():
            if sym not in prices:
                raise ValueError(f"volatility given for unknown symbol {sym!r}")
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"volatility of {sym!r} must be finite and >= 0, got {v}")
            vols[sym] = float(v)
        self._symbols: tuple[str, ...] = tuple(prices)
        self._p0 = np.array([float(prices[s]) for s in self._symbols])
        self._sigma = np.array([vols[s] for s in self._symbols])
        self._keys = [zlib.crc32(s.encode("utf-8")) for s in self._symbols]
        # _starts[k] = W at the start of block k, per symbol.
        self._starts: list[np.ndarray] = [np.zeros(len(self._symbols))]
        self._chunks: dict[int, np.ndarray] = {}
        self._bridge_cache: tuple[int, np.ndarray] | None = None
        #: price shocks: (tick from which it holds, log factor per symbol), by tick
        self._shocks: list[tuple[int, np.ndarray]] = []
        self._shock_keys: set[object] = set()
        self._latest = self._snapshot_at(self._start, 0)

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols of the feed, in the order given."""
        return self._symbols

    @property
    def start(self) -> datetime:
        """The session open (aware UTC)."""
        return self._start

    def add_shock(self, key: object, at: datetime, shocks: Mapping[str, float]) -> bool:
        """Apply a price shock (a world event's) from ``at`` on: each symbol's price times
        ``1 + pct / 100`` at every tick from ``at`` (rounded up to a tick), the walk
        unchanged. ``change_pct`` includes the shock (it is a move since the open).

        A shock at or before the latest snapshot moves that snapshot too (prices never
        go back in time, but a shock learnt late is not lost).

        Args:
            key: the shock's identity (an event id): a key seen before is ignored.
            at: aware datetime it takes effect.
            shocks: symbol → percent (-100 < pct); symbols not in the feed are ignored.

        Returns:
            True when applied, False for a key already applied.

        Raises:
            ValueError: naive ``at`` or a percent not finite or ≤ -100.
        """
        at = _require_aware(at, "at")
        if key in self._shock_keys:
            return False
        factor = np.zeros(len(self._symbols))
        for sym, pct in shocks.items():
            if not (math.isfinite(pct) and pct > -100.0):
                raise ValueError(f"shock of {sym!r} must be finite and > -100 %, got {pct}")
            if sym in self._symbols:
                factor[self._symbols.index(sym)] = math.log1p(pct / 100.0)
        self._shock_keys.add(key)
        tick = max(0, math.ceil((at - self._start).total_seconds()))
        self._shocks.append((tick, factor))
        self._shocks.sort(key=lambda s: s[0])
        latest = self._latest
        if tick <= math.floor((latest.at - self._start).total_seconds()):
            self._latest = self._snapshot_at(
                latest.at, math.floor((latest.at - self._start).total_seconds()))
        return True

    def prices_at_ticks(self, ticks: Sequence[int]) -> np.ndarray:
        """Prices at each tick (seconds since ``start``, ascending, ≥ 0), shocks included,
        without moving :meth:`snapshot`'s latest time: shape (len(ticks), len(symbols)),
        columns in :attr:`symbols` order."""
        rows = [self._p0 * np.exp(self._sigma * self._walk(t) + self._shocked(t))
                for t in ticks]
        return np.array(rows).reshape(len(rows), len(self._symbols))

    def _shocked(self, tick: int) -> np.ndarray:
        total = np.zeros(len(self._symbols))
        for at, factor in self._shocks:
            if at > tick:
                break
            total = total + factor
        return total

    def snapshot(self, at: datetime) -> MarketSnapshot:
        """Advance the walk to ``at`` and return the prices then.

        Time never goes backwards: an ``at`` not later than the latest one asked for (or
        before ``start``) returns the latest snapshot unchanged. Prices tick once a second.

        Args:
            at: aware datetime; converted to UTC.

        Returns:
            The snapshot at ``at`` (``change_pct`` since ``start``).

        Raises:
            ValueError: ``at`` is naive.
        """
        at = _require_aware(at, "at")
        if at <= self._latest.at:
            return self._latest
        tick = math.floor((at - self._start).total_seconds())
        self._latest = self._snapshot_at(at, tick)
        return self._latest

    def _snapshot_at(self, at: datetime, tick: int) -> MarketSnapshot:
        rel = np.exp(self._sigma * self._walk(tick) + self._shocked(tick))
        prices = self._p0 * rel
        return MarketSnapshot(
            at=at,
            prices={s: float(p) for s, p in zip(self._symbols, prices, strict=True)},
            change_pct={
                s: float((r - 1.0) * 100.0) for s, r in zip(self._symbols, rel, strict=True)
            },
        )

    def _walk(self, tick: int) -> np.ndarray:
        block, offset = divmod(tick, _BLOCK)
        while len(self._starts) <= block:
            k = len(self._starts) - 1
            self._starts.append(self._starts[k] + self._block_sum(k))
        walk: np.ndarray = self._starts[block]
        if offset:
            walk = walk + self._bridge(block)[offset]
        return walk

    def _block_sum(self, k: int) -> np.ndarray:
        chunk, idx = divmod(k, _CHUNK)
        sums = self._chunks.get(chunk)
        if sums is None:
            sums = np.stack(
                [
                    np.random.default_rng([self._seed, key, 0, chunk]).standard_normal(_CHUNK)
                    for key in self._keys
                ],
                axis=1,
            ) * math.sqrt(_BLOCK)
            self._chunks = {chunk: sums}  # blocks are visited in order: keep one chunk
        row: np.ndarray = sums[idx]
        return row

    def _bridge(self, k: int) -> np.ndarray:
        """W inside block ``k`` relative to its start, shape (_BLOCK + 1, n symbols)."""
        if self._bridge_cache is not None and self._bridge_cache[0] == k:
            return self._bridge_cache[1]
        total = self._block_sum(k)
        steps = np.stack(
            [
                np.random.default_rng([self._seed, key, 1, k]).standard_normal(_BLOCK)
                for key in self._keys
            ],
            axis=1,
        )
        walk = np.vstack([np.zeros((1, len(self._keys))), np.cumsum(steps, axis=0)])
        frac = (np.arange(_BLOCK + 1) / _BLOCK)[:, None]
        path: np.ndarray = walk - frac * walk[-1] + frac * total
        self._bridge_cache = (k, path)
        return path


def holdings_pnl_pct(holdings: Sequence[Holding], snapshot: MarketSnapshot) -> float:
    """Profit or loss of a set of holdings against their average cost, in percent.

    Each holding's P&L is taken in its own quote currency (``avg_cost`` is in that
    currency); holdings are weighted by their cost converted to TRY at the snapshot's
    ``USDTRY`` rate (the default start rate if the snapshot has none), so the result is
    ``sum(quantity * price * fx) / sum(quantity * avg_cost * fx) - 1`` with the same ``fx``
    above and below the line: no currency P&L is invented.

    Args:
        holdings: the positions.
        snapshot: current prices.

    Returns:
        P&L in percent (+2.0 = up 2 %); 0.0 when no holding's symbol is in the snapshot.
    """
    fx = snapshot.prices.get("USDTRY", DEFAULT_PRICES["USDTRY"])
    cost = value = 0.0
    for h in holdings:
        price = snapshot.prices.get(h.symbol)
        if price is None:
            continue
        rate = fx if QUOTE_CURRENCY.get(h.symbol, "TRY") == "USD" else 1.0
        cost += h.quantity * h.avg_cost * rate
        value += h.quantity * price * rate
    if cost <= 0.0:
        return 0.0
    return (value / cost - 1.0) * 100.0


def mood_from_pnl(baseline: float, pnl_pct: float) -> float:
    """Mood after a P&L, around the persona's resting mood.

    ``mood = tanh(atanh(b) + pnl_pct / PNL_MOOD_SCALE)`` with ``b`` = ``baseline`` clipped
    to [-0.95, 0.95] and ``PNL_MOOD_SCALE`` = 5 %. A flat P&L gives the baseline back; each
    5 % of gain (loss) moves mood one unit up (down) in atanh space, so it saturates smoothly
    towards ±1 and never leaves [-1, 1].

    Args:
        baseline: resting mood, -1.0 – 1.0.
        pnl_pct: holdings P&L in percent.

    Returns:
        Mood in [-1.0, 1.0].

    Raises:
        ValueError: ``baseline`` outside [-1, 1] or either argument not finite.
    """
    if not (math.isfinite(baseline) and -1.0 <= baseline <= 1.0):
        raise ValueError(f"baseline must be in [-1, 1], got {baseline}")
    if not math.isfinite(pnl_pct):
        raise ValueError(f"pnl_pct must be finite, got {pnl_pct}")
    b = min(0.95, max(-0.95, baseline))
    return max(-1.0, min(1.0, math.tanh(math.atanh(b) + pnl_pct / PNL_MOOD_SCALE)))


_MOOD_LABELS: dict[str, tuple[str, str, str, str, str]] = {
    "tr": ("karamsar", "gergin", "sakin", "keyifli", "coşkulu"),
    "en": ("gloomy", "tense", "calm", "cheerful", "euphoric"),
}


def mood_label(mood: float, language: str) -> str:
    """A word for a mood, in the persona's language.

    Bands: ``< -0.6`` gloomy, ``< -0.2`` tense, ``<= 0.2`` calm, ``<= 0.6`` cheerful, else
    euphoric (tr: karamsar, gergin, sakin, keyifli, coşkulu).

    Args:
        mood: -1.0 – 1.0 (values outside are clipped).
        language: ``tr`` or ``en``.

    Raises:
        ValueError: unknown language or a NaN mood.
    """
    labels = _MOOD_LABELS.get(language)
    if labels is None:
        raise ValueError(f"no mood labels for language {language!r} (have: tr, en)")
    if math.isnan(mood):
        raise ValueError("mood is NaN")
    if mood < -0.6:
        return labels[0]
    if mood < -0.2:
        return labels[1]
    if mood <= 0.2:
        return labels[2]
    if mood <= 0.6:
        return labels[3]
    return labels[4]

"""The simulated market feed, holdings P&L and mood."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from backend.schemas import Holding
from behavior_engine.market import (
    DEFAULT_PRICES,
    DEFAULT_VOLATILITY,
    MarketFeed,
    holdings_pnl_pct,
    mood_from_pnl,
    mood_label,
)
from behavior_engine.turn import MarketSnapshot

START = datetime(2025, 3, 3, 7, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def test_starts_at_start_prices_with_zero_change() -> None:
    snap = MarketFeed(seed=1, start=START).snapshot(START)
    assert snap.prices == DEFAULT_PRICES
    assert snap.change_pct == dict.fromkeys(DEFAULT_PRICES, 0.0)
    assert snap.at == START


def test_same_seed_same_prices_different_seed_different_prices() -> None:
    times = [_at(s) for s in (1, 30, 61, 3599, 3600, 3601, 7200.5, 86_400 * 3 + 17)]
    a = [MarketFeed(seed=7, start=START).snapshot(t).prices for t in times]
    b_feed = MarketFeed(seed=7, start=START)
    b = [b_feed.snapshot(t).prices for t in times]
    c_feed = MarketFeed(seed=8, start=START)
    c = [c_feed.snapshot(t).prices for t in times]
    assert a == b
    for pa, pc in zip(a, c, strict=True):
        assert all(pa[s] != pc[s] for s in DEFAULT_PRICES)


def test_path_does_not_depend_on_query_pattern() -> None:
    dense = MarketFeed(seed=3, start=START)
    for s in range(0, 9000, 97):
        dense.snapshot(_at(s))
    last_dense = dense.snapshot(_at(9000))
    direct = MarketFeed(seed=3, start=START).snapshot(_at(9000))
    assert last_dense.prices == direct.prices


def test_adding_a_symbol_keeps_the_others() -> None:
    base = MarketFeed(seed=5, start=START).snapshot(_at(4000)).prices
    more = MarketFeed(seed=5, start=START, symbols={**DEFAULT_PRICES, "EURTRY": 49.0})
    snap = more.snapshot(_at(4000))
    assert {s: snap.prices[s] for s in DEFAULT_PRICES} == base
    assert "EURTRY" in snap.prices


def test_time_never_goes_backwards() -> None:
    feed = MarketFeed(seed=2, start=START)
    late = feed.snapshot(_at(600))
    assert feed.snapshot(_at(10)) is late
    assert feed.snapshot(START - timedelta(days=1)) is late
    assert feed.snapshot(_at(600)) is late
    later = feed.snapshot(_at(601))
    assert later.at == _at(601)
    assert later.prices != late.prices


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        MarketFeed(seed=1, start=datetime(2025, 1, 1))  # noqa: DTZ001
    feed = MarketFeed(seed=1, start=START)
    with pytest.raises(ValueError, match="naive"):
        feed.snapshot(datetime(2025, 3, 3, 8, 0))  # noqa: DTZ001


def test_other_time_zones_are_converted_to_utc() -> None:
    istanbul = timezone(timedelta(hours=3))
    feed = MarketFeed(seed=1, start=START.astimezone(istanbul))
    snap = feed.snapshot(_at(120).astimezone(istanbul))
    assert snap.at.utcoffset() == timedelta(0)
    assert snap.prices == MarketFeed(seed=1, start=START).snapshot(_at(120)).prices


def test_change_pct_is_since_start() -> None:
    feed = MarketFeed(seed=11, start=START)
    snap = feed.snapshot(_at(5000))
    for sym, p0 in DEFAULT_PRICES.items():
        assert snap.change_pct[sym] == pytest.approx((snap.prices[sym] / p0 - 1) * 100)


def test_minute_moves_match_the_documented_volatility() -> None:
    # Log return over 60 s has std sigma * sqrt(60); check across many seeds.
    rets: dict[str, list[float]] = {s: [] for s in DEFAULT_PRICES}
    for seed in range(300):
        feed = MarketFeed(seed=seed, start=START)
        a = feed.snapshot(_at(1200)).prices
        b = feed.snapshot(_at(1260)).prices
        for s in DEFAULT_PRICES:
            rets[s].append(math.log(b[s] / a[s]))
    for s, r in rets.items():
        expected = DEFAULT_VOLATILITY[s] * math.sqrt(60)
        assert float(np.std(r)) == pytest.approx(expected, rel=0.15), s
        assert abs(float(np.mean(r))) < 4 * expected / math.sqrt(len(r)), s
        # visible in a demo: a typical minute moves the price by more than a rounding step
        assert float(np.median(np.abs(r))) * DEFAULT_PRICES[s] > 0.005


def test_block_boundary_is_continuous() -> None:
    feed = MarketFeed(seed=4, start=START, volatility={"BTC": 0.0})
    steps = []
    prev = feed.snapshot(_at(3590)).prices
    for s in range(3591, 3611):
        cur = feed.snapshot(_at(s)).prices
        steps.append(abs(math.log(cur["BIST100"] / prev["BIST100"])))
        prev = cur
    # one-second steps: none bigger than 6 sigma
    assert max(steps) < 6 * DEFAULT_VOLATILITY["BIST100"]
    assert cur["BTC"] == DEFAULT_PRICES["BTC"]  # zero volatility: flat


def test_far_future_is_cheap_and_finite() -> None:
    feed = MarketFeed(seed=9, start=START)
    t0 = time.perf_counter()
    snap = feed.snapshot(START + timedelta(days=365, seconds=123))
    assert time.perf_counter() - t0 < 2.0
    assert all(math.isfinite(p) and p > 0 for p in snap.prices.values())


def test_custom_symbols_and_bad_arguments() -> None:
    feed = MarketFeed(seed=1, start=START, symbols={"EURTRY": 49.0}, volatility={"EURTRY": 0.0})
    assert feed.snapshot(_at(100)).prices == {"EURTRY": 49.0}
    with pytest.raises(ValueError):
        MarketFeed(seed=1, start=START, symbols={})
    with pytest.raises(ValueError):
        MarketFeed(seed=1, start=START, symbols={"X": -1.0})
    with pytest.raises(ValueError):
        MarketFeed(seed=1, start=START, volatility={"NOPE": 1e-4})
    with pytest.raises(ValueError):
        MarketFeed(seed=1, start=START, volatility={"BTC": float("nan")})
    assert MarketFeed(seed=-5, start=START).snapshot(_at(10)).prices  # negative seeds work


def _snap(**prices: float) -> MarketSnapshot:
    return MarketSnapshot(at=START, prices=prices, change_pct=dict.fromkeys(prices, 0.0))


def test_holdings_pnl_is_cost_weighted_in_a_common_currency() -> None:
    snap = _snap(USDTRY=40.0, BTC=110_000.0, GOLD=5_000.0)
    btc = Holding(symbol="BTC", quantity=0.1, avg_cost=100_000.0)  # 10,000 USD cost, +10 %
    gold = Holding(symbol="GOLD", quantity=100, avg_cost=4_000.0)  # 400,000 TRY cost, +25 %
    assert holdings_pnl_pct([btc], snap) == pytest.approx(10.0)
    assert holdings_pnl_pct([gold], snap) == pytest.approx(25.0)
    # 10,000 USD = 400,000 TRY at 40: equal weights
    assert holdings_pnl_pct([btc, gold], snap) == pytest.approx(17.5)


def test_holdings_pnl_edge_cases() -> None:
    snap = _snap(USDTRY=42.0)
    assert holdings_pnl_pct([], snap) == 0.0
    unknown = Holding(symbol="AAPL", quantity=3, avg_cost=200.0)
    assert holdings_pnl_pct([unknown], snap) == 0.0
    usd = Holding(symbol="USDTRY", quantity=1000, avg_cost=42.0 * 1.05)
    assert holdings_pnl_pct([usd, unknown], snap) == pytest.approx((1 / 1.05 - 1) * 100)


def test_pnl_moves_with_the_feed() -> None:
    feed = MarketFeed(seed=21, start=START)
    holdings = [Holding(symbol="BTC", quantity=0.2, avg_cost=DEFAULT_PRICES["BTC"])]
    assert holdings_pnl_pct(holdings, feed.snapshot(START)) == 0.0
    later = feed.snapshot(_at(3600))
    assert holdings_pnl_pct(holdings, later) == pytest.approx(later.change_pct["BTC"])


def test_mood_from_pnl() -> None:
    for baseline in (-0.9, -0.3, 0.0, 0.4, 0.9):
        assert mood_from_pnl(baseline, 0.0) == pytest.approx(baseline)
        assert mood_from_pnl(baseline, 3.0) > baseline
        assert mood_from_pnl(baseline, -3.0) < baseline
    moods = [mood_from_pnl(0.2, p) for p in np.linspace(-50, 50, 201)]
    assert all(-1.0 <= m <= 1.0 for m in moods)
    assert moods == sorted(moods)
    assert mood_from_pnl(1.0, 0.0) == pytest.approx(0.95)
    with pytest.raises(ValueError):
        mood_from_pnl(1.5, 0.0)
    with pytest.raises(ValueError):
        mood_from_pnl(0.0, float("inf"))


def test_mood_labels() -> None:
    assert [mood_label(m, "tr") for m in (-0.9, -0.4, 0.0, 0.4, 0.9)] == [
        "karamsar",
        "gergin",
        "sakin",
        "keyifli",
        "coşkulu",
    ]
    assert mood_label(0.5, "en") == "cheerful"
    assert mood_label(-0.5, "en") == "tense"
    assert len({mood_label(m, "en") for m in np.linspace(-1, 1, 41)}) == 5
    with pytest.raises(ValueError):
        mood_label(0.0, "de")

"""What keeps the chain off a failing or spent provider: a circuit breaker and token budgets.

Both are in-process, per provider, and cost nothing on the per-call path but a few
arithmetic operations (no locks: the worker is one asyncio thread).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    """closed → open after ``failure_threshold`` consecutive failures, or when at least
    ``rate_min_calls`` of the last ``rate_window`` calls include a share of failures ≥
    ``failure_rate``; open → half_open after ``cooldown_s``; half_open lets one probe call
    through: success closes, failure opens again (Nygard, *Release It!*, "Circuit Breaker").

    Our own small breaker rather than a library: the maintained asyncio ones (aiobreaker,
    purgatory, circuitbreaker) wrap the call as a decorator, while the chain must ask
    "may I call?" without calling (an open provider is skipped with no network call), trip on
    a failure *rate* as well as a streak, and hold a long open period for a bad key.

    Args:
        failure_threshold: consecutive failures that open the breaker.
        failure_rate: share of failures in the window that opens it (0–1).
        rate_window: calls remembered for the rate.
        rate_min_calls: fewest calls in the window before the rate counts.
        cooldown_s: seconds open before a half-open probe.
        clock: monotonic seconds.
    """

    failure_threshold: int = 5
    failure_rate: float = 0.5
    rate_window: int = 20
    rate_min_calls: int = 10
    cooldown_s: float = 30.0
    clock: Callable[[], float] = monotonic
    state: BreakerState = "closed"
    _streak: int = 0
    _recent: deque[bool] = field(default_factory=deque)
    _open_until: float = 0.0
    _probing: bool = False

    def allow(self) -> bool:
        """True if a call may go out now (in half_open: only the one probe)."""
        if self.state == "open":
            if self.clock() < self._open_until:
                return False
            self.state = "half_open"
            self._probing = False
        if self.state == "half_open":
            if self._probing:
                return False
            self._probing = True
        return True

    def success(self) -> None:
        """Record a successful call (closes a half-open breaker)."""
        self._streak = 0
        self._remember(True)
        if self.state != "closed":
            self.state = "closed"
            self._recent.clear()
        self._probing = False

    def failure(self) -> None:
        """Record a failed call; may open the breaker."""
        self._streak += 1
        self._remember(False)
        failures = sum(1 for ok in self._recent if not ok)
        rate_trip = (
            len(self._recent) >= self.rate_min_calls
            and failures / len(self._recent) >= self.failure_rate
        )
        if self.state == "half_open" or self._streak >= self.failure_threshold or rate_trip:
            self.trip(self.cooldown_s)

    def trip(self, seconds: float) -> None:
        """Open now for ``seconds`` (a bad key: long; a failure streak: ``cooldown_s``)."""
        self.state = "open"
        self._open_until = self.clock() + seconds
        self._probing = False

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0.0 when not open)."""
        return max(0.0, self._open_until - self.clock()) if self.state == "open" else 0.0

    def _remember(self, ok: bool) -> None:
        self._recent.append(ok)
        if len(self._recent) > self.rate_window:
            self._recent.popleft()


@dataclass
class WindowCounter:
    """Sum of amounts in the last ``window_s`` seconds, kept in ``bucket_s`` buckets.

    Memory is ``window_s / bucket_s`` buckets at most, whatever the call rate (a day in
    one-minute buckets: 1,440 numbers).
    """

    window_s: float
    bucket_s: float
    _buckets: deque[tuple[float, float]] = field(default_factory=deque)
    _total: float = 0.0

    def total(self, now: float) -> float:
        """Sum of the amounts added in the window ending at ``now``."""
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._total -= self._buckets.popleft()[1]
        return self._total

    def add(self, now: float, amount: float) -> None:
        """Add ``amount`` at ``now``."""
        start = now - (now % self.bucket_s)
        if self._buckets and self._buckets[-1][0] == start:
            last_start, last = self._buckets.pop()
            self._buckets.append((last_start, last + amount))
        else:
            self._buckets.append((start, amount))
        self._total += amount

    def next_free(self, now: float) -> float:
        """Seconds until the oldest bucket leaves the window."""
        if not self._buckets:
            return 0.0
        return max(0.0, self._buckets[0][0] + self.window_s - now)


@dataclass
class Budget:
    """A provider's quotas: requests/min, tokens/min, tokens/day (rolling windows).

    The chain moves on *before* a budget runs out: a call is allowed only if its estimated
    tokens fit under ``(1 - headroom)`` of each limit. Groq's free tier, for one, stops at
    a daily token cap (console.groq.com/docs/rate-limits); the prototype died on it.

    Args:
        requests_per_min / tokens_per_min / tokens_per_day: limits, None for none.
        headroom: share of each limit kept unused (0–0.5).
        clock: monotonic seconds.
    """

    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    tokens_per_day: int | None = None
    headroom: float = 0.05
    clock: Callable[[], float] = monotonic
    _rpm: WindowCounter = field(default_factory=lambda: WindowCounter(60.0, 1.0))
    _tpm: WindowCounter = field(default_factory=lambda: WindowCounter(60.0, 1.0))
    _tpd: WindowCounter = field(default_factory=lambda: WindowCounter(86_400.0, 60.0))

    def blocked(self, tokens: int) -> str | None:
        """Why a call of ``tokens`` estimated tokens may not go out now, or None if it may."""
        now = self.clock()
        keep = 1.0 - self.headroom
        checks = (
            ("requests/min", self.requests_per_min, self._rpm, 1),
            ("tokens/min", self.tokens_per_min, self._tpm, tokens),
            ("tokens/day", self.tokens_per_day, self._tpd, tokens),
        )
        for label, limit, counter, cost in checks:
            if limit is not None and counter.total(now) + cost > limit * keep:
                return f"{label} budget: {counter.total(now):.0f}+{cost} of {limit}"
        return None

    def spend(self, tokens: int) -> None:
        """Count one request of ``tokens`` tokens (the provider's reported usage)."""
        now = self.clock()
        self._rpm.add(now, 1)
        self._tpm.add(now, tokens)
        self._tpd.add(now, tokens)

    def left(self) -> dict[str, float | None]:
        """What each limit has left now before its headroom: ``{"requests/min",
        "tokens/min", "tokens/day"}`` → requests or tokens (never below 0), None where
        there is no limit."""
        now = self.clock()
        keep = 1.0 - self.headroom
        return {
            label: None if limit is None else max(0.0, limit * keep - counter.total(now))
            for label, limit, counter in (
                ("requests/min", self.requests_per_min, self._rpm),
                ("tokens/min", self.tokens_per_min, self._tpm),
                ("tokens/day", self.tokens_per_day, self._tpd),
            )
        }

    def left_ratio(self) -> dict[str, float]:
        """Share of each set limit left now before its headroom, 0–1, keyed
        ``requests_per_min``, ``tokens_per_min``, ``tokens_per_day`` (the metric's labels);
        limits that are not set are left out."""
        now = self.clock()
        keep = 1.0 - self.headroom
        return {
            label: max(0.0, 1.0 - counter.total(now) / (limit * keep))
            for label, limit, counter in (
                ("requests_per_min", self.requests_per_min, self._rpm),
                ("tokens_per_min", self.tokens_per_min, self._tpm),
                ("tokens_per_day", self.tokens_per_day, self._tpd),
            )
            if limit is not None and limit > 0
        }

    def used_today(self) -> float:
        """Tokens counted in the last 24 h."""
        return self._tpd.total(self.clock())

"""Telegram's sending limits as token buckets, checked before every send (in-process).

Limits per bot token (core.telegram.org/bots/faq, "My bot is hitting limits"):

* 1 message per second per chat,
* 20 messages per minute per group,
* about 30 messages per second across all chats,
* after a 429, nothing for ``retry_after`` seconds.

The 1/s limit is a token bucket of capacity 1. "N per minute" is a sliding window (at most
N sends in any 60 s): a bucket of capacity N refilled at N/60 s would allow almost 2N in the
first minute. This limiter is per process; limits that must hold across workers need the
shared (Redis) limiter that sharding brings.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic


@dataclass(slots=True)
class TokenBucket:
    """A token bucket: ``capacity`` tokens, refilled at ``rate`` tokens per second."""

    capacity: float
    rate: float
    tokens: float = -1.0
    stamp: float = 0.0

    def wait_time(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are available (0.0 if now)."""
        self._refill(now)
        if self.tokens >= cost:
            return 0.0
        return (cost - self.tokens) / self.rate

    def take(self, now: float, cost: float = 1.0) -> None:
        """Remove ``cost`` tokens (call after :meth:`wait_time` returned 0)."""
        self._refill(now)
        self.tokens -= cost

    def _refill(self, now: float) -> None:
        if self.tokens < 0:
            self.tokens, self.stamp = self.capacity, now
            return
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


@dataclass(slots=True)
class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds (a log of event times)."""

    limit: int
    window: float
    events: deque[float] = field(default_factory=deque)

    def wait_time(self, now: float) -> float:
        """Seconds until one more event fits (0.0 if now)."""
        while self.events and self.events[0] <= now - self.window:
            self.events.popleft()
        if len(self.events) < self.limit:
            return 0.0
        return self.events[0] + self.window - now

    def take(self, now: float) -> None:
        """Record an event at ``now`` (call after :meth:`wait_time` returned 0)."""
        self.events.append(now)


@dataclass
class TelegramLimiter:
    """Every Telegram send limit of every bot this process drives.

    Args:
        clock: monotonic seconds (injectable for tests).
        per_chat_per_sec: messages per second per (bot, chat); Telegram: 1.
        per_group_per_min: messages per minute per (bot, group); Telegram: 20.
        per_bot_per_sec: messages per second per bot across chats; Telegram: about 30.
    """

    clock: Callable[[], float] = monotonic
    per_chat_per_sec: float = 1.0
    per_group_per_min: int = 20
    per_bot_per_sec: int = 30
    _chat: dict[tuple[int, int], TokenBucket] = field(default_factory=dict)
    _group: dict[tuple[int, int], SlidingWindow] = field(default_factory=dict)
    _bot: dict[int, SlidingWindow] = field(default_factory=dict)
    _blocked_until: dict[int, float] = field(default_factory=dict)

    def _buckets(self, bot_id: int, chat_id: int) -> list[TokenBucket | SlidingWindow]:
        chat = self._chat.setdefault(
            (bot_id, chat_id), TokenBucket(capacity=1, rate=self.per_chat_per_sec)
        )
        group = self._group.setdefault(
            (bot_id, chat_id), SlidingWindow(limit=int(self.per_group_per_min), window=60.0)
        )
        bot = self._bot.setdefault(
            bot_id, SlidingWindow(limit=int(self.per_bot_per_sec), window=1.0)
        )
        return [chat, group, bot]

    def wait_time(self, bot_id: int, chat_id: int) -> float:
        """Seconds before ``bot_id`` may send to ``chat_id`` (0.0 = now)."""
        now = self.clock()
        blocked = self._blocked_until.get(bot_id, 0.0) - now
        return max([blocked, *(b.wait_time(now) for b in self._buckets(bot_id, chat_id))])

    def try_acquire(self, bot_id: int, chat_id: int) -> float:
        """Take a send slot if one is free.

        Returns:
            0.0 when the slot was taken (send now), else the seconds to wait (nothing taken).
        """
        wait = self.wait_time(bot_id, chat_id)
        if wait > 0:
            return wait
        now = self.clock()
        for bucket in self._buckets(bot_id, chat_id):
            bucket.take(now)
        return 0.0

    def block(self, bot_id: int, seconds: float) -> None:
        """Stop ``bot_id`` from sending for ``seconds`` (a 429's ``retry_after``)."""
        until = self.clock() + max(0.0, seconds)
        self._blocked_until[bot_id] = max(self._blocked_until.get(bot_id, 0.0), until)

    def blocked_for(self, bot_id: int) -> float:
        """Seconds ``bot_id`` still has to wait after a 429 (0.0 if none)."""
        return max(0.0, self._blocked_until.get(bot_id, 0.0) - self.clock())

"""Telegram's limits as token buckets (bots/ratelimit.py)."""

from __future__ import annotations

import itertools

from bots.ratelimit import TelegramLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_refills_at_rate() -> None:
    b = TokenBucket(capacity=2, rate=0.5)
    assert b.wait_time(0.0) == 0.0
    b.take(0.0)
    b.take(0.0)
    assert b.wait_time(0.0) == 2.0
    assert b.wait_time(1.0) == 1.0
    assert b.wait_time(2.0) == 0.0


def test_one_message_per_second_per_chat() -> None:
    clock = Clock()
    lim = TelegramLimiter(clock=clock)
    assert lim.try_acquire(1, -100) == 0.0
    assert lim.try_acquire(1, -100) > 0.0
    assert lim.try_acquire(1, -200) == 0.0  # another chat is free
    assert lim.try_acquire(2, -100) == 0.0  # another bot is free
    clock.t += 1.0
    assert lim.try_acquire(1, -100) == 0.0


def test_twenty_per_minute_per_group() -> None:
    clock = Clock()
    lim = TelegramLimiter(clock=clock)
    sent = 0
    for _ in range(120):  # two minutes, one attempt per second
        if lim.try_acquire(1, -100) == 0.0:
            sent += 1
        clock.t += 1.0
    assert sent == 40  # 20 in each minute, never more
    lim2 = TelegramLimiter(clock=clock)
    times = []
    for _ in range(600):  # ten attempts a second for a minute
        if lim2.try_acquire(1, -100) == 0.0:
            times.append(clock.t)
        clock.t += 0.1
    assert len(times) == 20
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))


def test_retry_after_blocks_the_bot_everywhere() -> None:
    clock = Clock()
    lim = TelegramLimiter(clock=clock)
    lim.block(1, 7)
    assert lim.try_acquire(1, -100) == 7.0
    assert lim.try_acquire(1, -200) == 7.0
    assert lim.try_acquire(2, -100) == 0.0
    clock.t += 7.0
    assert lim.blocked_for(1) == 0.0
    assert lim.try_acquire(1, -100) == 0.0

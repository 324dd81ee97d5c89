"""A chat's rhythm: bursts and lulls, each bot's day, pacing under the per-chat cap.

Human group chats are bursty: a few messages seconds apart, then minutes or hours of
silence (REALISM.md: burstiness A_n 0.60–0.69, gap p90 ÷ median 28–77; a clock gives
A_n ≤ 0, a Poisson stream A_n ≈ 0 and p90 ÷ median ≈ 3.3). This module draws a chat's
spontaneous *slots* (the times a bot may start talking) from a burst/lull mixture:

* a burst holds ``N`` messages, ``N`` geometric with mean ``burst_mean_msgs``;
* gaps inside a burst are log-normal, median ``burst_gap_median_s``, σ :data:`BURST_GAP_SIGMA`,
  shortened in a chat so lively that the median lull would be under
  :data:`BURST_CONTRAST` times a burst's mean gap (the contrast that makes gaps
  heavy-tailed: p90 ÷ median ≥ 15);
* lulls between bursts are log-normal with σ ``lull_sigma`` and the mean that makes the
  chat's expected rate λ: one cycle of mean length ``E[L] + (m − 1)·E[g]`` carries ``m``
  messages, so ``E[L] = m/λ − (m − 1)·E[g]``.

The slots of a chat depend only on (seed, chat id, window index), a window being one epoch
hour: every worker driving some of the chat's bots computes the same slots, whenever it
started (``random.Random`` seeded with a string is stable across processes: it hashes the
string with SHA-512).

The rate λ of a window is ``budget_use × Σ_b limit_b × activity_b / 3600`` messages per
second over the chat's member bots, with ``limit_b`` the bot's hourly budget and
``activity_b`` ≤ 1 its daily profile (:func:`daily_activity`), both taken at the window's
start. The budget is thus a ceiling: on average a share ``budget_use`` of it is spent.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from backend.schemas import SimulationSettings

#: σ of the log-normal gaps inside a burst.
BURST_GAP_SIGMA = 0.8
#: The median lull is at least this many times a burst's mean gap (burst gaps shrink to
#: keep it).
BURST_CONTRAST = 10.0
#: Length of a rhythm window (one epoch hour), seconds.
WINDOW_S = 3600
#: A slot not taken this long after it was due is dropped (the rate is a ceiling).
SLOT_STALE = timedelta(seconds=90)
#: Lowest activity of a bot's daily profile (its quietest hour), as a share of its peak.
DAILY_FLOOR = 0.5
#: Peak hours (local) of the chronotypes a bot may have: morning, midday, afternoon,
#: evening, night owl; each bot's peak is one of them ± 1.5 h (a stable hash).
CHRONOTYPE_PEAKS = (8.5, 12.5, 16.5, 20.5, 23.0)


def stable_unit(*parts: object) -> float:
    """A number in [0, 1) that depends only on ``parts`` (stable across processes): the
    first 8 bytes of BLAKE2b over ``":".join(map(str, parts))``, big-endian, ÷ 2⁶⁴."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class StableUnits:
    """``stable_unit(*prefix, last)`` for many ``last``, the prefix hashed once (BLAKE2b
    reads its input as a stream, so the values are exactly :func:`stable_unit`'s).

    A slot's ranking draws one number per member bot (``Scheduler._rank``); hashing its
    shared prefix once roughly halves that work.
    """

    __slots__ = ("_prefix",)

    def __init__(self, *prefix: object) -> None:
        self._prefix = hashlib.blake2b((":".join(map(str, prefix)) + ":").encode(),
                                       digest_size=8)

    def many(self, lasts: Sequence[bytes]) -> list[float]:
        """The numbers of ``(*prefix, last)`` for each ``last`` given as ``str(last)``
        encoded (UTF-8), in order."""
        copy = self._prefix.copy
        out: list[float] = []
        for last in lasts:
            h = copy()
            h.update(last)
            out.append(int.from_bytes(h.digest(), "big") / 2**64)
        return out


@dataclass(frozen=True, slots=True)
class Slot:
    """A time the chat's next spontaneous message is due.

    Attributes:
        due: aware UTC due time.
        window: the epoch hour the slot belongs to (``int(due.timestamp()) // 3600`` of the
            window's start).
        index: the slot's number inside its window, from 0.
        burst: the number of the slot's burst inside its window, from 0 (a burst's slots
            share it; :meth:`Scheduler._spaced` ends a burst at the chatter cap).
    """

    due: datetime
    window: int
    index: int
    burst: int = 0

    def turn_id(self, seed: int, chat_id: int) -> str:
        """The turn id of this slot's message: the same in every process (UUID5), so a slot
        two workers both act on is sent once (the turn record's primary key)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL,
                              f"botsim:slot:{seed}:{chat_id}:{self.window}:{self.index}"))


def window_of(at: datetime) -> int:
    """The rhythm window (epoch hour) holding ``at``."""
    return int(at.timestamp()) // WINDOW_S


def window_start(window: int) -> datetime:
    """The aware UTC start of ``window``."""
    return datetime.fromtimestamp(window * WINDOW_S, tz=UTC)


def _lognormal_mean(rng: random.Random, mean: float, sigma: float) -> float:
    return math.exp(rng.gauss(math.log(mean) - sigma**2 / 2, sigma))


def window_slots(*, seed: int, chat_id: int, window: int, rate: float,
                 settings: SimulationSettings) -> list[Slot]:
    """The chat's slots in ``window`` (module docstring), oldest first.

    Args:
        seed: the simulation's seed.
        chat_id: our chat id.
        window: the epoch hour.
        rate: λ, the chat's expected spontaneous messages per second in the window.
        settings: ``burst_mean_msgs``, ``burst_gap_median_s``, ``lull_sigma``.

    Returns:
        The slots; empty when ``rate`` ≤ 0.
    """
    if rate <= 0:
        return []
    rng = random.Random(f"botsim:rhythm:{seed}:{chat_id}:{window}")
    m = settings.burst_mean_msgs
    spread = math.exp(BURST_GAP_SIGMA**2 / 2)  # mean ÷ median of a log-normal
    # median L = E[L]·e^(−σ²/2) ≥ C·E[g], E[L] = m/λ − (m−1)·E[g]
    #   ⇔  E[g] ≤ m / (λ·(m − 1 + C·e^(σ²/2)))
    contrast = BURST_CONTRAST * math.exp(settings.lull_sigma**2 / 2)
    gap_mean = min(settings.burst_gap_median_s * spread, m / (rate * (m - 1 + contrast)))
    gap_median = gap_mean / spread
    lull_mean = m / rate - (m - 1) * gap_mean
    stay = 1.0 - 1.0 / m  # geometric burst length: P(another message) = 1 − 1/m
    start = window_start(window)
    offsets: list[tuple[float, int]] = []  # (seconds into the window, burst number)
    # Enter the window part-way through a lull (a uniform share of one), so a window's
    # start is no special moment.
    t = rng.random() * _lognormal_mean(rng, lull_mean, settings.lull_sigma)
    burst = 0
    while t < WINDOW_S:
        offsets.append((t, burst))
        while rng.random() < stay:
            t += math.exp(rng.gauss(math.log(gap_median), BURST_GAP_SIGMA))
            if t >= WINDOW_S:
                break
            offsets.append((t, burst))
        t += _lognormal_mean(rng, lull_mean, settings.lull_sigma)
        burst += 1
    return [Slot(due=start + timedelta(seconds=o), window=window, index=i, burst=b)
            for i, (o, b) in enumerate(offsets)]


def daily_activity(seed: int, bot_id: int, settings: SimulationSettings, at: datetime) -> float:
    """How active ``bot_id`` is at ``at`` on its own day, in [:data:`DAILY_FLOOR`, 1].

    A raised cosine over the 24 hours (local to ``prime_hours.timezone``) peaking at the
    bot's hour: one of :data:`CHRONOTYPE_PEAKS` ± 1.5 h, from a stable hash of (seed, bot),
    so a morning person stays one in every process. 1.0 when ``bot_daily_profile`` is off.
    """
    if not settings.bot_daily_profile:
        return 1.0
    return activity_at(peak_hour(seed, bot_id), local_hour(settings, at))


@functools.lru_cache(maxsize=1 << 16)
def peak_hour(seed: int, bot_id: int) -> float:
    """The local hour at which ``bot_id`` is most active (:func:`daily_activity`): one of
    :data:`CHRONOTYPE_PEAKS` ± 1.5 h, from two stable hashes of (seed, bot). Kept for the
    last 65,536 bots: a ranking asks for it once per slot and member."""
    peaks = CHRONOTYPE_PEAKS
    peak = peaks[int(stable_unit(seed, "chronotype", bot_id) * len(peaks))]
    peak += 3.0 * stable_unit(seed, "peak", bot_id) - 1.5
    return peak


def local_hour(settings: SimulationSettings, at: datetime) -> float:
    """``at`` (aware) as hours since local midnight in ``prime_hours.timezone``, whole
    minutes only (``14:30:59`` → 14.5)."""
    local = at.astimezone(ZoneInfo(settings.prime_hours.timezone))
    return local.hour + local.minute / 60


def activity_at(peak: float, hour: float) -> float:
    """The daily profile's raised cosine: 1 at ``peak`` (hours), :data:`DAILY_FLOOR` twelve
    hours away; both in local hours (:func:`peak_hour`, :func:`local_hour`)."""
    shape = (1.0 + math.cos(2 * math.pi * (hour - peak) / 24)) / 2
    return DAILY_FLOOR + (1.0 - DAILY_FLOOR) * shape


def slot_lead(settings: SimulationSettings) -> timedelta:
    """How long before its due time a slot's turn is decided: ``reading_cap_s`` +
    ``typing_cap_s`` + ``writing_lead_s`` (the text's writing and the worker's tick; a
    slower provider's turn types for less of its typing time, see
    ``TurnPipeline._generate``), so the bot reads, writes and types ahead and the message
    is sent at the slot's due time, not that long after it."""
    return timedelta(seconds=settings.reading_cap_s + settings.typing_cap_s
                     + settings.writing_lead_s)


def chatter_cap(settings: SimulationSettings) -> int:
    """Bot messages per rolling minute chatter may use in one chat: ``max_msgs_per_min``
    less the ``human_reply_reserve`` share kept for answers to humans (at least 1)."""
    return max(1, math.floor(settings.max_msgs_per_min * (1.0 - settings.human_reply_reserve)))


def paced_from(sent: Iterable[datetime], cap_per_min: int) -> datetime | None:
    """The earliest time the next chatter message may go out under pacing, or None (now).

    A token bucket (GCRA, ITU-T I.371) refilled at ``cap_per_min`` per minute and holding a
    third of it (at least 1): a small burst goes out at once, the rest of the minute's
    share is spread over it instead of being spent in one burst that then blocks the chat.

    Args:
        sent: aware UTC times of the chat's recent bot messages (any order).
        cap_per_min: the chatter's per-minute cap (:func:`chatter_cap`).
    """
    period = 60.0 / max(cap_per_min, 1)
    tolerance = (max(1, math.ceil(cap_per_min / 3)) - 1) * period
    tat: datetime | None = None  # theoretical arrival time of the next conforming message
    for t in sorted(sent):
        tat = max(tat or t, t) + timedelta(seconds=period)
    return None if tat is None else tat - timedelta(seconds=tolerance)

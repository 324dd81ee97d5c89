"""The fault schedule of a ``botsim chaos`` run: which faults, when, on what, for how long.

Drawn from a seed, so a failing run can be replayed with ``--seed``. A run has three parts:
a quiet first part (``QUIET_SHARE`` of the duration: the baseline throughput), the faults
(one slot per fault, in a seeded order, cycling again through every kind while the run
lasts: a 30-minute soak meets each fault several times) and a quiet last part
(``RECOVER_SHARE``: the recovery). Faults overlap when their effects last longer than a
slot, as they do in production (an LLM outage goes on while a worker dies).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Every fault ``botsim chaos`` can inject (issue 19, item 1).
FAULT_KINDS: tuple[str, ...] = (
    "worker_kill", "listener_kill", "redis_restart", "postgres_restart", "llm_outage",
    "telegram_429", "redis_partition", "clock_jump",
)
#: Share of the run before the first fault (the baseline) and after the last slot.
QUIET_SHARE = 0.2
RECOVER_SHARE = 0.2
#: The longest slot between two fault starts, seconds (a long run cycles the faults).
MAX_SLOT_S = 30.0
#: The LLM outage: one provider fails for this long (5xx, then timeouts, then slow answers,
#: a third each), capped by the run's fault window.
LLM_OUTAGE_S = 60.0
#: How long a 429 storm lasts (at most: in a short run, as the LLM outage, no longer than
#: what is left of the run less its recovery) and what ``retry_after`` it tells the bots
#: (Telegram sends ``retry_after`` in seconds; core.telegram.org/bots/faq, "My bot is
#: hitting limits").
STORM_S = 30.0
STORM_RETRY_AFTER_S = 3
#: Share of the bots a storm hits.
STORM_SHARE = 0.1
#: How far one clock jump moves a worker's wall clock, seconds (an NTP step).
CLOCK_JUMP_S = 90.0
#: How long a killed listener stays down; Telegram retries its updates meanwhile.
LISTENER_DOWN_S = 5.0
#: Redis and PostgreSQL restart: seconds down.
REDIS_DOWN_S = 2.0
POSTGRES_DOWN_S = 3.0


@dataclass(frozen=True)
class FaultEvent:
    """One fault of the schedule.

    Attributes:
        at_s: when it starts, seconds after the run's start.
        kind: one of :data:`FAULT_KINDS`.
        target: what it hits: ``worker-2``, ``listener``, ``redis``, ``postgres``, a
            provider's name, ``bots``.
        lasts_s: how long the fault holds (a process down, an outage, a storm, a cut);
            0 for a clock jump (instant, never undone).
        detail: the kind's own parameters (``bot_ids`` of a storm, ``jump_s`` of a clock
            jump, ``restart_after_s`` of a killed worker).
    """

    at_s: float
    kind: str
    target: str
    lasts_s: float
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ends_s(self) -> float:
        """When the fault is over, seconds after the run's start."""
        return self.at_s + self.lasts_s

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"at_s", "kind", "target", "lasts_s", "detail"}``."""
        return {"at_s": round(self.at_s, 1), "kind": self.kind, "target": self.target,
                "lasts_s": round(self.lasts_s, 1), "detail": self.detail}


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma list of :data:`FAULT_KINDS` → the kinds, in the given order.

    Raises:
        ValueError: an unknown kind (named, with the known ones) or an empty list.
    """
    if text.strip() == "all":
        return FAULT_KINDS
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(FAULT_KINDS)} or all")
    if not kinds:
        raise ValueError("no fault named; give all or some of " + ", ".join(FAULT_KINDS))
    return tuple(dict.fromkeys(kinds))


def make_schedule(*, seed: int, duration_s: float, kinds: Sequence[str], workers: int,
                  bot_ids: Sequence[int], providers: Sequence[str],
                  heartbeat_ttl_s: float) -> list[FaultEvent]:
    """The faults of a run of ``duration_s`` seconds, sorted by start.

    Each kind of ``kinds`` comes once per cycle, cycles in a seeded order, one slot
    apart (the fault window split evenly, at most :data:`MAX_SLOT_S`). Durations:
    a killed worker comes back after 3 × ``heartbeat_ttl_s`` (so the others take its
    bots first: within 2 × the TTL); a partition lasts 2.5 × the TTL (longer than a lease);
    an LLM outage :data:`LLM_OUTAGE_S` and a storm :data:`STORM_S` (each at most what is
    left of the run less its recovery share); the rest as their constants say. Targets
    (the worker, the bots of a storm, the provider) come from ``seed``.

    Raises:
        ValueError: no kind, fewer than 2 workers for a worker fault (a killed lone worker
            leaves nobody to take its bots), no bots or providers, or a run too short to
            hold one slot per kind (named, with the shortest that fits).
    """
    if not kinds:
        raise ValueError("kinds: at least one fault kind")
    if not bot_ids or not providers:
        raise ValueError("bot_ids and providers must not be empty")
    worker_faults = {"worker_kill", "redis_partition", "clock_jump"} & set(kinds)
    if worker_faults and workers < 2:
        raise ValueError(f"{', '.join(sorted(worker_faults))} need at least 2 workers")
    window = duration_s * (1 - QUIET_SHARE - RECOVER_SHARE)
    slot = min(MAX_SLOT_S, window / len(kinds))
    if slot < 3.0:
        shortest = 3.0 * len(kinds) / (1 - QUIET_SHARE - RECOVER_SHARE)
        raise ValueError(f"duration {duration_s:g} s is too short for {len(kinds)} faults"
                         f" (at least {shortest:.0f} s)")
    rng = random.Random(seed)
    events: list[FaultEvent] = []
    start = duration_s * QUIET_SHARE
    end = duration_s * (1 - RECOVER_SHARE)
    order: list[str] = []
    at = start
    while at + 1e-9 < end:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        kind = order.pop(0)
        events.append(_event(kind, at, rng, workers=workers, bot_ids=bot_ids,
                             providers=providers, ttl=heartbeat_ttl_s,
                             room=duration_s - at))
        at += slot
    return events


def _event(kind: str, at: float, rng: random.Random, *, workers: int,
           bot_ids: Sequence[int], providers: Sequence[str], ttl: float,
           room: float) -> FaultEvent:
    worker = f"worker-{rng.randint(1, workers)}"
    if kind == "worker_kill":
        return FaultEvent(at, kind, worker, 3 * ttl, {"restart_after_s": 3 * ttl})
    if kind == "listener_kill":
        return FaultEvent(at, kind, "listener", LISTENER_DOWN_S)
    if kind == "redis_restart":
        return FaultEvent(at, kind, "redis", REDIS_DOWN_S)
    if kind == "postgres_restart":
        return FaultEvent(at, kind, "postgres", POSTGRES_DOWN_S)
    if kind == "llm_outage":
        lasts = max(3.0, min(LLM_OUTAGE_S, room * (1 - RECOVER_SHARE)))
        return FaultEvent(at, kind, providers[0], lasts,
                          {"modes": ["status_503", "timeout", "slow"]})
    if kind == "telegram_429":
        n = max(1, round(len(bot_ids) * STORM_SHARE))
        chosen = sorted(rng.sample(list(bot_ids), n))
        lasts = max(3.0, min(STORM_S, room * (1 - RECOVER_SHARE)))
        return FaultEvent(at, kind, "bots", lasts,
                          {"bot_ids": chosen, "retry_after_s": STORM_RETRY_AFTER_S})
    if kind == "redis_partition":
        return FaultEvent(at, kind, worker, 2.5 * ttl)
    if kind == "clock_jump":
        jump = CLOCK_JUMP_S if rng.random() < 0.5 else -CLOCK_JUMP_S
        return FaultEvent(at, kind, worker, 0.0, {"jump_s": jump})
    raise ValueError(f"unknown fault kind {kind!r}")

"""A worker's first ticks decide at most NEW_CHATS_PER_TICK new chats each (issue 20), so
taking on thousands of bots neither stalls the first tick nor sends a backlog at once; a
chat where a person waits is decided at once whatever the quota."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest

from backend.schemas import SimulationSettings
from behavior_engine import planner as planner_module
from behavior_engine.planner import TurnPlanner
from behavior_engine.reads import BotProfile, ChatInfo, HistoryItem
from behavior_engine.scheduler import Scheduler
from tests.unit.test_pipeline import NOW, profile

CHATS = 25


class Reads:
    def __init__(self) -> None:
        self.histories = 0

    async def settings(self) -> SimulationSettings:
        return SimulationSettings()

    async def chats(self) -> list[ChatInfo]:
        return [ChatInfo(id=c, telegram_chat_id=-1000 - c, title=f"g{c}", topics={"btc": 1.0},
                         bot_ids=[3 * c, 3 * c + 1, 3 * c + 2],
                         member_talk={3 * c + i: 1.0 for i in range(3)})
                for c in range(1, CHATS + 1)]

    async def history(self, chat_id: int) -> list[HistoryItem]:
        self.histories += 1
        return []

    async def bot(self, bot_id: int) -> BotProfile:
        return profile().model_copy(update={"id": bot_id})


class Membership:
    limits = SimpleNamespace(wait_time=lambda bot_id, chat_id: 0.0)

    def __init__(self, asking: set[int]) -> None:
        self.asking = asking

    async def drop_stale(self, now: datetime) -> None:
        return None

    def floor_held(self, chat_id: int) -> bool:
        return False

    async def wants_reply(self, chat_id: int) -> bool:
        return chat_id in self.asking

    def waiting(self, *args: Any) -> list[Any]:
        return []

    async def take_floor(self, turn: Any) -> bool:
        return True

    async def give_floor(self, turn: Any) -> None:
        return None


async def test_new_chats_are_decided_a_quota_per_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner_module, "NEW_CHATS_PER_TICK", 10)
    scheduler, reads = Scheduler(seed=1, lookahead_s=1.0), Reads()
    planner = TurnPlanner(scheduler=scheduler, reads=reads,  # type: ignore[arg-type]
                          membership=Membership(asking={CHATS}),  # type: ignore[arg-type]
                          clients=SimpleNamespace(sent_last_hour=lambda b, now: 0),  # type: ignore[arg-type]
                          clock=lambda: NOW, stats=Counter())
    driven = {b for c in range(1, CHATS + 1) for b in (3 * c, 3 * c + 1, 3 * c + 2)}

    async def tick(n: int) -> set[int]:
        await planner.decide(driven=driven, busy={}, in_flight=Counter(), room=1000, tick=n)
        return {c for c in range(1, CHATS + 1) if scheduler.knows(c)}

    first = await tick(0)
    assert len(first) == 11 and CHATS in first  # 10, and the one where a person waits
    assert reads.histories == 11
    assert len(await tick(1)) == 21
    assert len(await tick(2)) == CHATS
    assert len(await tick(3)) == CHATS


async def test_the_planner_reports_the_pause_it_has_read() -> None:
    """``botsim_simulation_active`` follows what the tick read (the load test's drain waits
    for 0 before it counts the turns left)."""
    from backend import metrics

    class Paused(Reads):
        active = True

        async def settings(self) -> SimulationSettings:
            return SimulationSettings(simulation_active=self.active)

    reads = Paused()
    planner = TurnPlanner(scheduler=Scheduler(seed=1, lookahead_s=1.0),
                          reads=reads,  # type: ignore[arg-type]
                          membership=Membership(asking=set()),  # type: ignore[arg-type]
                          clients=SimpleNamespace(sent_last_hour=lambda b, now: 0),  # type: ignore[arg-type]
                          clock=lambda: NOW, stats=Counter())
    await planner.decide(driven={3, 4, 5}, busy={}, in_flight=Counter(), room=10, tick=0)
    assert metrics.SIMULATION_ACTIVE._value.get() == 1
    reads.active = False
    assert await planner.decide(driven={3, 4, 5}, busy={}, in_flight=Counter(), room=10,
                                tick=1) == []
    assert metrics.SIMULATION_ACTIVE._value.get() == 0


async def test_a_tick_asks_once_per_chat_whether_a_person_waits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks of one chat in one tick (new chat quota, shedding, idle) share one
    ``wants_reply`` (it scans the pending requests, or reads the chat's history)."""
    monkeypatch.setattr(planner_module, "NEW_CHATS_PER_TICK", 0)

    class Counting(Membership):
        def __init__(self) -> None:
            super().__init__(asking=set())
            self.asked: Counter[int] = Counter()

        async def wants_reply(self, chat_id: int) -> bool:
            self.asked[chat_id] += 1
            return True

    membership = Counting()
    planner = TurnPlanner(scheduler=Scheduler(seed=1, lookahead_s=1.0),
                          reads=Reads(),  # type: ignore[arg-type]
                          membership=membership,  # type: ignore[arg-type]
                          clients=SimpleNamespace(sent_last_hour=lambda b, now: 0),  # type: ignore[arg-type]
                          clock=lambda: NOW, stats=Counter())
    driven = {b for c in range(1, CHATS + 1) for b in (3 * c, 3 * c + 1, 3 * c + 2)}
    # new chats past the quota, where a person waits, while shedding: each check asks
    await planner.decide(driven=driven, busy={}, in_flight=Counter(), room=1000, tick=0,
                         shed_chatter=True)
    assert set(membership.asked) == set(range(1, CHATS + 1))
    assert max(membership.asked.values()) == 1

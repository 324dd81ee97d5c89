"""The load test's drain waits until every worker has seen the pause, not only until it is
idle: without Redis a worker reads the pause only when its cached settings expire
(``LOCAL_CACHE_TTL_S``), and a turn it decided after an idle moment was counted as lost
(``test_json_line_is_last``, 2026-12-06: ``lost_turns`` 1 in a one-worker SQLite run)."""

from __future__ import annotations

from collections import Counter as Counted
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.stores import settings as settings_store
from loadtest import runner


def _page(decided: int, ended: int, active: int) -> bytes:
    """A worker's /metrics page with these counters, as prometheus_client writes it."""
    reg = CollectorRegistry()
    Counter("botsim_turns_decided", "decided", registry=reg).inc(decided)
    Counter("botsim_turns", "ended", ["outcome"], registry=reg).labels(outcome="sent").inc(ended)
    Gauge("botsim_simulation_active", "active", registry=reg).set(active)
    return generate_latest(reg)


@pytest.mark.parametrize("pages", [
    # idle while it has not yet seen the pause, then a turn decided, then ended
    [(5, 5, 1), (6, 5, 0), (6, 6, 0)],
    # sees the pause with a turn in flight
    [(5, 4, 0), (5, 5, 0)],
])
async def test_drain_waits_for_the_pause_to_be_seen_and_every_turn_to_end(
        sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch,
        pages: list[tuple[int, int, int]]) -> None:
    monkeypatch.setattr(runner, "DRAIN_POLL_S", 0.01)
    served: Counted[str] = Counted()

    def handler(request: httpx.Request) -> httpx.Response:
        n = served[request.url.host]
        served[request.url.host] += 1
        return httpx.Response(200, content=_page(*pages[min(n, len(pages) - 1)]))

    fleet = SimpleNamespace(procs=[
        SimpleNamespace(name="worker-1", metrics_url="http://w1/metrics"),
        SimpleNamespace(name="listener", metrics_url="http://l/metrics"),
    ])
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        drained = await runner._drain(client, fleet, sessionmaker,  # type: ignore[arg-type]
                                      None, "drain-test")
    assert drained
    assert served == {"w1": len(pages)}  # it read every page up to the drained one
    async with sessionmaker() as s:
        assert (await settings_store.get_settings(s)).simulation_active is False


async def test_drain_gives_up_on_a_worker_that_never_sees_the_pause(
        sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "DRAIN_POLL_S", 0.01)
    monkeypatch.setattr(runner, "DRAIN_S", 0.2)
    fleet = SimpleNamespace(procs=[SimpleNamespace(name="worker-1", metrics_url="http://w/m")])
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=_page(3, 3, 1)))
    async with httpx.AsyncClient(transport=transport) as client:
        assert not await runner._drain(client, fleet, sessionmaker,  # type: ignore[arg-type]
                                       None, "drain-test")

"""World events stored on SQLite and PostgreSQL alike (the ``db_url`` fixture runs each test
on both)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.errors import NotFound, ValidationFailed
from backend.schemas import WorldEventIn
from backend.stores import events as event_store

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


async def test_events_round_trip_in_id_order(sessionmaker: Sessions) -> None:
    hike = WorldEventIn(headline="TCMB faizi 250 baz puan artırdı",
                        shocks={"USDTRY": -1.5, "BIST100": -2.0}, views={"usdtry": "bearish"},
                        topics=["rates"])
    later = WorldEventIn(headline="Bitcoin ETF onaylandı", shocks={"BTC": 6.0},
                         at=NOW + timedelta(minutes=5))
    async with sessionmaker() as s, s.begin():
        first = await event_store.add_event(s, event=hike, created_by="op", now=NOW)
        second = await event_store.add_event(s, event=later, created_by="cli", now=NOW)
    assert first.at == NOW and second.at == NOW + timedelta(minutes=5)
    async with sessionmaker() as s:
        got = await event_store.list_events(s)
        assert [e.id for e in got] == [first.id, second.id]
        assert got[0].shocks == {"USDTRY": -1.5, "BIST100": -2.0}
        assert got[0].views == {"usdtry": "bearish"} and got[0].topics == ["rates"]
        assert got[0].at.tzinfo is not None and got[0].created_by == "op"
        assert [e.id for e in await event_store.list_events(s, after_id=first.id)] == [
            second.id]
        assert [e.id for e in await event_store.list_events(
            s, since=NOW + timedelta(minutes=1))] == [second.id]
        with pytest.raises(ValueError, match="limit"):
            await event_store.list_events(s, limit=0)


async def test_only_a_scheduled_event_can_be_cancelled(sessionmaker: Sessions) -> None:
    async with sessionmaker() as s, s.begin():
        past = await event_store.add_event(
            s, event=WorldEventIn(headline="Altın rekor kırdı", shocks={"GOLD": 3.0}),
            created_by="op", now=NOW)
        future = await event_store.add_event(
            s, event=WorldEventIn(headline="Fed kararı", at=NOW + timedelta(hours=1)),
            created_by="op", now=NOW)
    async with sessionmaker() as s, s.begin():
        with pytest.raises(ValidationFailed, match="already happened"):
            await event_store.cancel_event(s, event_id=past.id, now=NOW + timedelta(minutes=1))
        gone = await event_store.cancel_event(s, event_id=future.id,
                                              now=NOW + timedelta(minutes=1))
        assert gone.headline == "Fed kararı"
        with pytest.raises(NotFound):
            await event_store.cancel_event(s, event_id=future.id)
    async with sessionmaker() as s:
        assert [e.id for e in await event_store.list_events(s)] == [past.id]


async def test_workers_read_the_events_only_when_the_cache_says_one_was_stored(
        sessionmaker: Sessions, redis_url: str) -> None:
    """Issue 20: with Redis, a worker's tick asks the cache for the newest event's id (no
    statement) and reads the events only when an event was stored, which invalidates that
    id in every process; without it, the events were read every 5 s."""
    import asyncio
    import uuid

    from backend.cache import TwoLayerCache
    from behavior_engine.events import EventBook
    from behavior_engine.reads import CachedReads
    from tests.integration.test_turns_store import _statements

    ns = f"t-{uuid.uuid4().hex[:8]}"
    async with TwoLayerCache(redis_url=redis_url, namespace=ns) as panel, \
            TwoLayerCache(redis_url=redis_url, namespace=ns) as worker:
        reads, book = CachedReads(worker, sessionmaker), EventBook()

        async def tick() -> list[int]:
            return [e.id for e in await book.refresh(sessionmaker,
                                                     latest=await reads.latest_event_id())]

        assert await tick() == []  # the first: one query for the newest id, then cached
        before = _statements()
        assert [await tick() for _ in range(20)] == [[]] * 20
        assert _statements() - before == 0
        async with sessionmaker() as s, s.begin():
            stored = await event_store.add_event(
                s, event=WorldEventIn(headline="Altın rekor kırdı", shocks={"GOLD": 3.0}),
                created_by="op", now=NOW, cache=panel)
        before = _statements()
        for _ in range(200):  # the invalidation crosses Redis pub/sub (about 1 ms)
            if await reads.latest_event_id() == stored.id:
                break
            await asyncio.sleep(0.01)
        assert await tick() == [stored.id]
        assert _statements() - before == 2  # the newest id once, then the new events
        before = _statements()
        assert [await tick() for _ in range(20)] == [[]] * 20
        assert _statements() - before == 0
        assert [e.id for e in book.events] == [stored.id]

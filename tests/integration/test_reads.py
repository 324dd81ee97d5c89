"""Cached reads stay true: writes through the stores invalidate after commit, appends land."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from backend.schemas import MessageMeta
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import messages as message_store
from backend.stores import settings as settings_store
from behavior_engine.membership import waiting_messages
from behavior_engine.reads import CachedReads, HistoryItem
from tests.integration.test_storage import TOKEN, make_persona, seed

Sessions = async_sessionmaker[AsyncSession]


class Queries:
    def __init__(self, engine: AsyncEngine) -> None:
        self.n = 0
        event.listen(engine.sync_engine, "before_cursor_execute", self._count)

    def _count(self, *_: Any) -> None:
        self.n += 1


@pytest.fixture
async def reads(sessionmaker: Sessions) -> AsyncIterator[CachedReads]:
    cache = TwoLayerCache(redis_url=None)
    await cache.start()
    yield CachedReads(cache, sessionmaker)
    await cache.close()


async def settle() -> None:
    for _ in range(5):  # invalidations run as tasks right after the commit
        await asyncio.sleep(0)


async def test_bot_profile_cached_and_invalidated_after_commit(
    reads: CachedReads, sessionmaker: Sessions, engine: AsyncEngine, cipher: TokenCipher
) -> None:
    bot_id, _ = await seed(sessionmaker, cipher)
    queries = Queries(engine)
    first = await reads.bot(bot_id)
    loaded = queries.n
    for _ in range(20):
        assert await reads.bot(bot_id) == first
    assert queries.n == loaded  # served from memory
    edited = make_persona().model_copy(update={"bio": "Yeni biyografi."})
    async with sessionmaker() as s:
        async with s.begin():
            await bot_store.upsert_persona_bot(s, persona=edited, token=TOKEN, cipher=cipher,
                                               cache=reads.cache)
            assert (await reads.bot(bot_id)).persona.bio != "Yeni biyografi."  # not yet
    await settle()
    assert (await reads.bot(bot_id)).persona.bio == "Yeni biyografi."


async def test_rollback_does_not_invalidate(
    reads: CachedReads, sessionmaker: Sessions, engine: AsyncEngine, cipher: TokenCipher
) -> None:
    await seed(sessionmaker, cipher)
    before = await reads.settings()
    async with sessionmaker() as s:
        with pytest.raises(RuntimeError):
            async with s.begin():
                await settings_store.update_settings(s, changes={"max_msgs_per_min": 3},
                                                     cache=reads.cache)
                raise RuntimeError("abort")
    await settle()
    queries = Queries(engine)
    assert await reads.settings() == before and queries.n == 0  # still cached, not reloaded
    async with sessionmaker() as s, s.begin():
        await settings_store.update_settings(s, changes={"max_msgs_per_min": 3},
                                             cache=reads.cache)
    await settle()
    assert (await reads.settings()).max_msgs_per_min == 3


async def test_membership_change_reaches_chat_list(
    reads: CachedReads, sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    bot_id, chat_id = await seed(sessionmaker, cipher)
    assert (await reads.chats())[0].bot_ids == [bot_id]
    async with sessionmaker() as s, s.begin():
        await chat_store.remove_bot(s, chat_id=chat_id, bot_id=bot_id, cache=reads.cache)
    await settle()
    assert (await reads.chats())[0].bot_ids == []


async def test_history_appends_without_a_query(
    reads: CachedReads, sessionmaker: Sessions, engine: AsyncEngine, cipher: TokenCipher
) -> None:
    bot_id, chat_id = await seed(sessionmaker, cipher)
    assert await reads.history(chat_id) == []
    queries = Queries(engine)
    now = datetime.now(UTC)
    async with sessionmaker() as s, s.begin():
        new_id = await message_store.record_incoming(
            s, chat_id=chat_id, telegram_message_id=5, text="Dolar?", sender_id=42,
            sender_name="Deniz", meta=MessageMeta(), created_at=now, reply_wanted=True)
    assert new_id is not None
    item = HistoryItem(message_id=new_id, telegram_message_id=5, bot_id=None, speaker="Deniz",
                       speaker_username=None, is_human=True, text="Dolar?", created_at=now,
                       reply_wanted=True)
    await reads.appended(chat_id, item)
    writes = queries.n
    history = await reads.history(chat_id)
    assert queries.n == writes  # no read query
    assert [h.text for h in history] == ["Dolar?"]
    assert [w.line.telegram_message_id for w in waiting_messages(history, now)] == [5]
    reply = item.model_copy(update={"message_id": new_id + 1, "telegram_message_id": 6,
                                    "bot_id": bot_id, "is_human": False, "reply_to": 5,
                                    "reply_wanted": False, "speaker": "Mehmet"})
    await reads.appended(chat_id, reply)
    assert waiting_messages(await reads.history(chat_id), now) == []  # answered
    late = now + timedelta(hours=1)
    assert waiting_messages([item], late) == []  # too old to answer now


async def test_single_flight_100_misses_one_query(
    reads: CachedReads, sessionmaker: Sessions, engine: AsyncEngine, cipher: TokenCipher
) -> None:
    bot_id, chat_id = await seed(sessionmaker, cipher)
    queries = Queries(engine)
    profiles = await asyncio.gather(*(reads.bot(bot_id) for _ in range(100)))
    assert len({p.id for p in profiles}) == 1
    assert queries.n == 1  # one SELECT for 100 concurrent misses
    histories = await asyncio.gather(*(reads.history(chat_id) for _ in range(100)))
    assert queries.n == 2 and all(h == histories[0] for h in histories)


async def test_the_bots_a_worker_takes_on_are_read_in_one_query(
    reads: CachedReads, sessionmaker: Sessions, engine: AsyncEngine, cipher: TokenCipher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 20: the profiles of the bots taken on are read in bulk (one query per batch),
    then each turn's read of its bot is served from memory."""
    import behavior_engine.reads as reads_module

    first, _chat = await seed(sessionmaker, cipher)
    async with sessionmaker() as s, s.begin():
        ids = [first] + [(await bot_store.upsert_persona_bot(
            s, persona=make_persona(f"bot_{n}_test_bot"),
            token=f"71000000{n:02d}:AAHsecretpartofthetoken_abcdefghij", cipher=cipher)).id
            for n in range(10, 15)]
    monkeypatch.setattr(reads_module, "BOTS_BATCH", 4)
    queries = Queries(engine)
    got = await reads.bots([*ids, 999_999])
    assert sorted(got) == sorted(ids) and got[ids[3]].username == "bot_12_test_bot"
    assert queries.n == 2  # 6 bots and one that does not exist: 2 batches of 4
    assert [await reads.bot(b) for b in ids] == [got[b] for b in ids]
    assert queries.n == 2  # every turn's read from memory


async def test_talkativeness_per_chat_overrides_the_personas(
    reads: CachedReads, sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    """A bot loud in one group may lurk in another (issue 14): the membership's
    talkativeness reaches the planner's shares (``member_talk``, read with the chats: a
    tick reads no profile for it, issue 20), and so does a persona edit; a bad one is
    refused, naming the field."""
    from backend.errors import ValidationFailed

    bot_id, chat_id = await seed(sessionmaker, cipher)
    [chat] = await reads.chats()
    assert chat.talkativeness == {}  # the persona's
    profile = await reads.bot(bot_id)
    assert chat.member_talk == {bot_id: profile.persona.talkativeness}
    async with sessionmaker() as s, s.begin():  # the operator edits the persona
        louder = make_persona().model_copy(update={"talkativeness": 3.25})
        await bot_store.upsert_persona_bot(s, persona=louder, token=TOKEN, cipher=cipher,
                                           cache=reads.cache)
    await settle()
    [chat] = await reads.chats()
    assert chat.talkativeness == {} and chat.member_talk == {bot_id: 3.25}
    async with sessionmaker() as s, s.begin():
        await chat_store.add_bot(s, chat_id=chat_id, bot_id=bot_id, talkativeness=7.5,
                                 cache=reads.cache)
    await settle()
    [chat] = await reads.chats()
    assert chat.talkativeness == {bot_id: 7.5} and chat.member_talk == {bot_id: 7.5}
    for bad in (0.0, 11.0, -1.0):
        with pytest.raises(ValidationFailed) as err:
            async with sessionmaker() as s, s.begin():
                await chat_store.add_bot(s, chat_id=chat_id, bot_id=bot_id, talkativeness=bad)
        assert "talkativeness" in str(err.value) and repr(bad) in str(err.value)
    async with sessionmaker() as s, s.begin():  # re-adding without one keeps the override
        await chat_store.add_bot(s, chat_id=chat_id, bot_id=bot_id, cache=reads.cache)
    await settle()
    assert (await reads.chats())[0].talkativeness == {bot_id: 7.5}

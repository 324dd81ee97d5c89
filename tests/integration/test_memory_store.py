"""The long-term memory's store (issue 16, item 4) on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher
from backend.db.models import Bot, BotReflection
from backend.schemas import MessageMeta, Persona, Style
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import memories as memory_store
from backend.stores import messages as message_store

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def persona(username: str, n: int) -> tuple[Persona, str]:
    return Persona(
        name=f"Bot {n}", username=username, role="trader", language="tr", bio="Deneme.",
        style=Style(formality="casual", emoji_rate=0.0, length="short"),
        topics={"gold": 1.0}, stances=[], holdings=[],
    ), f"71000000{n:02d}:AAHsecretpartofthetoken_abcdefghij"


async def seed(sm: Sessions, cipher: TokenCipher) -> tuple[int, int, int, int]:
    """Two bots (Ayse_Bot, ours under test; other_bot) in one chat; a second chat where
    only the other bot is. Returns (bot, other bot, chat, other chat)."""
    async with sm() as s, s.begin():
        ids = []
        for n, name in enumerate(("Ayse_Bot", "other_bot"), start=1):
            p, token = persona(name, n)
            ids.append((await bot_store.upsert_persona_bot(s, persona=p, token=token,
                                                           cipher=cipher)).id)
        chat, other = [await chat_store.upsert_chat(s, telegram_chat_id=tg, title=title,
                                                    topics={"gold": 1.0})
                       for tg, title in ((-1001, "A"), (-1002, "B"))]
        for bot_id in ids:
            await chat_store.add_bot(s, chat_id=chat.id, bot_id=bot_id)
        await chat_store.add_bot(s, chat_id=other.id, bot_id=ids[1])
        return ids[0], ids[1], chat.id, other.id


async def human(s: AsyncSession, chat_id: int, tg: int, text: str, at: datetime, *,
                reply_to: int | None = None, mentions: tuple[str, ...] = ()) -> None:
    await message_store.record_incoming(
        s, chat_id=chat_id, telegram_message_id=tg, text=text, sender_id=500 + tg,
        sender_name="Deniz", meta=MessageMeta(sender_username="deniz", mentions=mentions),
        created_at=at, reply_to_telegram_message_id=reply_to)


async def sent(s: AsyncSession, chat_id: int, bot_id: int, tg: int, text: str, at: datetime,
               *, reply_to: int | None = None) -> None:
    await message_store.record_sent(
        s, chat_id=chat_id, bot_id=bot_id, turn_id=f"t-{chat_id}-{tg}",
        telegram_message_id=tg, text=text, meta=MessageMeta(provider="offline"),
        created_at=at, reply_to_telegram_message_id=reply_to)


async def test_seed_reads_own_messages_and_those_said_to_the_bot(
        sessionmaker: Sessions, cipher: TokenCipher) -> None:
    bot, other, chat, other_chat = await seed(sessionmaker, cipher)
    t = NOW - timedelta(hours=10)
    async with sessionmaker() as s, s.begin():
        await sent(s, chat, bot, 1, "Altın bence yükselecek", t)
        await human(s, chat, 2, "Neden öyle düşünüyorsun?", t + timedelta(minutes=1),
                    reply_to=1)                                              # replies to bot
        await human(s, chat, 3, "@ayse_bot dolar ne olur?", t + timedelta(minutes=2))  # text
        await human(s, chat, 4, "bence de", t + timedelta(minutes=3),
                    mentions=("ayse_bot",))                                  # entity only
        await human(s, chat, 5, "hava güzel", t + timedelta(minutes=4))      # not to the bot
        await sent(s, chat, other, 6, "Katılıyorum", t + timedelta(minutes=5), reply_to=1)
        await sent(s, chat, other, 7, "Ben satıyorum", t + timedelta(minutes=6))  # not to it
        await human(s, chat, 8, "@other_bot sen?", t + timedelta(minutes=7))      # other's
        await human(s, chat, 9, "eski soru @ayse_bot?", NOW - timedelta(days=9))  # too old
        await human(s, chat, 10, "", t + timedelta(minutes=8), reply_to=1)   # anonymised
        # a chat the bot is not in: a reply to the other bot's message 1 there is not ours
        await sent(s, other_chat, other, 1, "Başka grup", t)
        await human(s, other_chat, 2, "cevap", t + timedelta(minutes=1), reply_to=1)
    async with sessionmaker() as s:
        rows = await memory_store.bot_memory_seed(s, bot_id=bot, since=NOW - timedelta(days=7),
                                                  limit=50)
    got = [(r.message.chat_id, r.message.telegram_message_id, r.own) for r in rows]
    assert got == [(chat, 6, False), (chat, 4, False), (chat, 3, False), (chat, 2, False),
                   (chat, 1, True)]  # newest first
    by_tg = {r.message.telegram_message_id: r for r in rows}
    assert (by_tg[6].bot_name, by_tg[6].bot_username) == ("Bot 2", "other_bot")
    assert (by_tg[2].bot_name, by_tg[2].bot_username) == (None, None)
    async with sessionmaker() as s:
        top = await memory_store.bot_memory_seed(s, bot_id=bot, since=NOW - timedelta(days=7),
                                                 limit=2)
    assert [r.message.telegram_message_id for r in top] == [6, 4]


async def test_many_bots_are_refilled_in_one_statement_each_as_one_by_one(
        sessionmaker: Sessions, cipher: TokenCipher) -> None:
    """Issue 20: the bulk refill of the bots a worker takes on reads, for each bot, what
    the one-bot refill reads (its limit per bot), in one statement for the messages and one
    for the reflections, however many bots."""
    from tests.integration.test_turns_store import _statements

    bot, other, chat, other_chat = await seed(sessionmaker, cipher)
    t = NOW - timedelta(hours=10)
    async with sessionmaker() as s, s.begin():
        await sent(s, chat, bot, 1, "Altın bence yükselecek", t)
        await human(s, chat, 2, "@ayse_bot @other_bot ikiniz de ne dersiniz?",
                    t + timedelta(minutes=1), reply_to=1)        # to both bots
        await sent(s, chat, other, 3, "Katılıyorum", t + timedelta(minutes=2), reply_to=1)
        await human(s, chat, 4, "bence de", t + timedelta(minutes=3), mentions=("other_bot",))
        await sent(s, other_chat, other, 1, "Başka grup", t)
        await human(s, other_chat, 2, "cevap", t + timedelta(minutes=4), reply_to=1)
        for i, who in enumerate((bot, bot, other, bot)):
            await memory_store.add_reflection(
                s, bot_id=who, text=f"İçgörü {i}", importance=0.7,
                created_at=t + timedelta(minutes=i), expires_at=NOW + timedelta(days=1))
    since = NOW - timedelta(days=7)
    ghost = 987654  # no such bot: an empty refill, not an error
    for limit in (50, 2):
        async with sessionmaker() as s:
            before = _statements()
            bulk = await memory_store.bot_memory_seeds(s, bot_ids=[bot, other, ghost],
                                                       since=since, limit=limit)
            kept = await memory_store.recent_reflections_of(
                s, bot_ids=[bot, other, ghost], limit=limit, now=NOW)
            assert _statements() - before == 2
            for b in (bot, other):
                alone = await memory_store.bot_memory_seed(s, bot_id=b, since=since,
                                                           limit=limit)
                assert ([(r.message.id, r.own) for r in bulk[b]]
                        == [(r.message.id, r.own) for r in alone])
                assert ([r.id for r in kept[b]] == [r.id for r in await
                        memory_store.recent_reflections(s, bot_id=b, limit=limit, now=NOW)])
        assert bulk[ghost] == [] and kept[ghost] == []
        assert len(bulk[bot]) == min(limit, 3) and len(kept[bot]) == min(limit, 3)
    got = {b: [(r.message.chat_id, r.message.telegram_message_id, r.own) for r in rows]
           for b, rows in bulk.items()}
    assert got[bot] == [(chat, 3, False), (chat, 2, False)]  # limit 2, newest first
    assert got[other] == [(other_chat, 2, False), (chat, 4, False)]
    with pytest.raises(ValueError, match="limit must be at least 1"):
        async with sessionmaker() as s:
            await memory_store.bot_memory_seeds(s, bot_ids=[bot], since=since, limit=0)
    async with sessionmaker() as s:
        assert await memory_store.bot_memory_seeds(s, bot_ids=[], since=since, limit=5) == {}


async def test_seed_keeps_own_messages_of_chats_the_bot_left(
        sessionmaker: Sessions, cipher: TokenCipher) -> None:
    bot, _other, _chat, other_chat = await seed(sessionmaker, cipher)
    async with sessionmaker() as s, s.begin():
        await sent(s, other_chat, bot, 40, "Eskiden buradaydım", NOW - timedelta(hours=1))
    async with sessionmaker() as s:
        rows = await memory_store.bot_memory_seed(s, bot_id=bot, since=NOW - timedelta(days=1),
                                                  limit=10)
    assert [(r.message.telegram_message_id, r.own) for r in rows] == [(40, True)]


async def test_reflections_are_stored_listed_and_expired(
        sessionmaker: Sessions, cipher: TokenCipher) -> None:
    bot, other, _chat, _ = await seed(sessionmaker, cipher)
    async with sessionmaker() as s, s.begin():
        for i in range(4):
            await memory_store.add_reflection(
                s, bot_id=bot, text=f"İçgörü {i}", importance=0.7,
                created_at=NOW - timedelta(days=i * 10),
                expires_at=NOW - timedelta(days=i * 10) + timedelta(days=30))
        await memory_store.add_reflection(s, bot_id=other, text="Başkasının", importance=0.5,
                                          created_at=NOW, expires_at=NOW + timedelta(days=1))
    async with sessionmaker() as s:
        last2 = await memory_store.recent_reflections(s, bot_id=bot, limit=2)
        live = await memory_store.recent_reflections(s, bot_id=bot, limit=10, now=NOW)
    assert [r.text for r in last2] == ["İçgörü 0", "İçgörü 1"]
    assert last2[0].created_at == NOW and last2[0].created_at.tzinfo is not None
    assert [r.text for r in live] == ["İçgörü 0", "İçgörü 1", "İçgörü 2"]  # 3 ended at NOW
    async with sessionmaker() as s, s.begin():
        assert await memory_store.expire_reflections(s, now=NOW) == 1
    async with sessionmaker() as s, s.begin():
        assert await memory_store.expire_reflections(s, now=NOW) == 0
        assert await memory_store.expire_reflections(s, now=NOW + timedelta(days=2)) == 1
    async with sessionmaker() as s:
        left = (await s.execute(select(BotReflection.text).order_by(BotReflection.id))).all()
    assert [t for (t,) in left] == ["İçgörü 0", "İçgörü 1", "İçgörü 2"]


async def test_a_reflection_is_checked_and_goes_with_its_bot(
        sessionmaker: Sessions, cipher: TokenCipher) -> None:
    bot, _other, _chat, _ = await seed(sessionmaker, cipher)
    async with sessionmaker() as s, s.begin():
        for bad in ({"text": " "}, {"importance": 1.5}, {"expires_at": NOW}):
            args = {"text": "x", "importance": 0.5, "created_at": NOW,
                    "expires_at": NOW + timedelta(days=1), **bad}
            with pytest.raises(ValueError):
                await memory_store.add_reflection(s, bot_id=bot, **args)  # type: ignore[arg-type]
        await memory_store.add_reflection(s, bot_id=bot, text="kalır mı", importance=0.5,
                                          created_at=NOW, expires_at=NOW + timedelta(days=1))
    async with sessionmaker() as s, s.begin():
        await s.execute(delete(Bot).where(Bot.id == bot))
    async with sessionmaker() as s:
        assert (await s.execute(select(BotReflection))).scalars().all() == []

"""seed_database stores a generated world as the stores would, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher
from backend.db.models import Bot, Chat, ChatBot
from backend.schemas import HoldingList, StanceList
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores.bots import bot_id_from_token
from bots.personas import load_persona_dir
from loadtest.world import World, generate_world, seed_database

Sessions = async_sessionmaker[AsyncSession]


async def counts(sessionmaker: Sessions) -> tuple[int, int, int]:
    async with sessionmaker() as s:
        return (
            (await s.execute(select(func.count()).select_from(Bot))).scalar_one(),
            (await s.execute(select(func.count()).select_from(Chat))).scalar_one(),
            (await s.execute(select(func.count()).select_from(ChatBot))).scalar_one(),
        )


async def check_stored(sessionmaker: Sessions, world: World, ids: dict[str, int],
                       cipher: TokenCipher) -> None:
    """Every bot, chat and membership of ``world`` is in the database as the stores see it."""
    assert set(ids) == {b.token for b in world.bots}
    assert len(set(ids.values())) == len(world.bots)
    async with sessionmaker() as s:
        for wb in world.bots:
            bot = await bot_store.get_bot(s, bot_id=ids[wb.token])
            p = wb.persona
            assert bot.username == p.username and bot.name == p.name
            assert bot.telegram_user_id == bot_id_from_token(wb.token)
            assert wb.token.encode() not in bot.token_encrypted  # stored encrypted
            assert cipher.decrypt(bot.token_encrypted) == wb.token
            assert bot.persona == p.profile()
            assert bot.stances == StanceList(items=p.stances)
            assert bot.holdings == HoldingList(items=p.holdings)
            assert bot.enabled and bot.created_at is not None
        for wc in world.chats:
            chat = await chat_store.get_chat_by_telegram_id(s, telegram_chat_id=wc.telegram_chat_id)
            assert chat is not None and chat.enabled
            assert chat.title == wc.title and chat.topics.weights == wc.topics
            members = await chat_store.chat_bots(s, chat_id=chat.id)
            assert sorted(b.id for b in members) == sorted(ids[t] for t in wc.bot_tokens)


async def test_seed_stores_bots_chats_and_memberships(
    sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    world = generate_world(45, 6, seed=31, humans_per_chat=2)
    async with sessionmaker() as s, s.begin():
        ids = await seed_database(s, world, cipher=cipher)
    assert await counts(sessionmaker) == (45, 6, 45)
    await check_stored(sessionmaker, world, ids, cipher)
    async with sessionmaker() as s:
        moods = {b.username: b.mood for b in await bot_store.list_bots(s)}
    assert moods == {b.persona.username: b.persona.mood_baseline for b in world.bots}


async def test_seeding_again_updates_in_place(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    world = generate_world(20, 3, seed=5)
    async with sessionmaker() as s, s.begin():
        first = await seed_database(s, world, cipher=cipher)
    async with sessionmaker() as s, s.begin():
        again = await seed_database(s, world, cipher=cipher)
    assert again == first
    assert await counts(sessionmaker) == (20, 3, 20)
    await check_stored(sessionmaker, world, again, cipher)


async def test_seed_joins_rows_the_stores_made(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    """A bot and a chat already stored (same username / chat id) are updated, not duplicated;
    their existing membership stays single; unrelated rows are left alone."""
    world = generate_world(12, 3, seed=77)
    known, chat0 = world.bots[0], world.chats[0]
    demo = load_persona_dir()[0]
    async with sessionmaker() as s, s.begin():
        old = await bot_store.upsert_persona_bot(
            s, persona=known.persona, token="7000000001:old-token-abcdefgh", cipher=cipher)
        chat = await chat_store.upsert_chat(s, telegram_chat_id=chat0.telegram_chat_id,
                                            title="eski başlık", topics={"gold": 1.0})
        await chat_store.add_bot(s, chat_id=chat.id, bot_id=old.id)
        other = await bot_store.upsert_persona_bot(
            s, persona=demo, token="7000000002:demo-token-abcdefgh", cipher=cipher)
        old_id, chat_id, other_id = old.id, chat.id, other.id
    async with sessionmaker() as s, s.begin():
        ids = await seed_database(s, world, cipher=cipher)
    assert ids[known.token] == old_id
    assert await counts(sessionmaker) == (13, 3, 12)
    await check_stored(sessionmaker, world, ids, cipher)
    async with sessionmaker() as s:
        kept = await bot_store.get_bot(s, bot_id=other_id)
        assert kept.username == demo.username
        assert cipher.decrypt(kept.token_encrypted) == "7000000002:demo-token-abcdefgh"
        assert (await chat_store.get_chat(s, chat_id=chat_id)).title == chat0.title

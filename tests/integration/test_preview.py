"""The prompt preview: the worker's layered request for a bot in a chat, right now."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from backend.errors import NotFound
from backend.schemas import MessageMeta, Persona
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import messages as message_store
from behavior_engine.market import MarketFeed
from behavior_engine.preview import preview_prompt
from behavior_engine.reads import CachedReads
from bots.personas import load_persona_dir

Sessions = async_sessionmaker[AsyncSession]
START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
LAST_TEXT = "Dolar bugün yine 42 üstünde, siz ne düşünüyorsunuz?"


@pytest.fixture
async def reads(sessionmaker: Sessions) -> AsyncIterator[CachedReads]:
    cache = TwoLayerCache(redis_url=None)
    await cache.start()
    yield CachedReads(cache, sessionmaker)
    await cache.close()


async def seed_world(sm: Sessions, cipher: TokenCipher) -> tuple[list[Persona], list[int], int]:
    """The demo personas in one chat; a bot message from the first persona, then a human's."""
    personas = load_persona_dir()
    bot_ids: list[int] = []
    async with sm() as s, s.begin():
        chat = await chat_store.upsert_chat(s, telegram_chat_id=-100777, title="Piyasa",
                                            topics={"usdtry": 2.0, "btc": 1.0})
        for n, persona in enumerate(personas):
            token = f"{7200000000 + n}:AAH{'x' * 30}{n:04d}"
            bot = await bot_store.upsert_persona_bot(s, persona=persona, token=token,
                                                     cipher=cipher)
            await chat_store.add_bot(s, chat_id=chat.id, bot_id=bot.id)
            bot_ids.append(bot.id)
        await message_store.record_sent(
            s, chat_id=chat.id, bot_id=bot_ids[0], turn_id="t-1", telegram_message_id=1,
            text="Borsa uzun vadede kazandırır.", meta=MessageMeta(topic="bist100"),
            created_at=START,
        )
        await message_store.record_sent(
            s, chat_id=chat.id, bot_id=bot_ids[1], turn_id="t-2", telegram_message_id=2,
            text="Kısa vadede BTC oynak.", meta=MessageMeta(topic="btc"),
            created_at=START + timedelta(seconds=30),
        )
        await message_store.record_incoming(
            s, chat_id=chat.id, telegram_message_id=3, text=LAST_TEXT, sender_id=555,
            sender_name="Deniz", meta=MessageMeta(), created_at=START + timedelta(seconds=60),
        )
        chat_id = chat.id
    return personas, bot_ids, chat_id


async def test_preview_has_persona_and_last_message(
    reads: CachedReads, sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    personas, bot_ids, chat_id = await seed_world(sessionmaker, cipher)
    now = START + timedelta(minutes=5)
    got = await preview_prompt(reads, bot_id=bot_ids[0], chat_id=chat_id,
                               market=MarketFeed(seed=1, start=START), now=now)
    names = [layer["name"] for layer in got["layers"]]
    assert names == ["persona_core", "stances_and_holdings", "mood", "memory", "history",
                     "instruction"]
    text = "\n".join(m["content"] for m in got["messages"])
    assert personas[0].name in text
    assert LAST_TEXT in text
    layers = {layer["name"]: layer["text"] for layer in got["layers"]}
    assert LAST_TEXT in layers["history"]
    assert "Borsa uzun vadede kazandırır." in layers["memory"]  # its own earlier message
    assert "Kısa vadede BTC oynak." not in layers["memory"]  # another bot's
    # The messages are the worker's: persona prefix first, then layers 2-4, then 5-6.
    assert got["messages"][0] == {"role": "system", "content": layers["persona_core"]}
    assert layers["mood"] in got["messages"][1]["content"]
    assert got["messages"][2]["content"].endswith(layers["instruction"])
    assert got["tokens_estimate"] > 50
    assert got["topic"] in layers["instruction"]


async def test_persona_prefix_byte_identical(
    reads: CachedReads, sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    _, bot_ids, chat_id = await seed_world(sessionmaker, cipher)
    market = MarketFeed(seed=2, start=START)
    first = await preview_prompt(reads, bot_id=bot_ids[2], chat_id=chat_id, market=market,
                                 now=START + timedelta(minutes=1), seed=1)
    second = await preview_prompt(reads, bot_id=bot_ids[2], chat_id=chat_id, market=market,
                                  now=START + timedelta(hours=3), seed=2)
    a = first["messages"][0]["content"].encode()
    b = second["messages"][0]["content"].encode()
    assert a == b
    assert first["layers"][0]["text"].encode() == a
    # ...while the market-dependent part moved with time.
    assert first["layers"][4]["text"] != second["layers"][4]["text"]


async def test_preview_is_of_the_bot_asked_for(
    reads: CachedReads, sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    personas, bot_ids, chat_id = await seed_world(sessionmaker, cipher)
    got = await preview_prompt(reads, bot_id=bot_ids[3], chat_id=chat_id,
                               market=MarketFeed(seed=3, start=START), now=START)
    assert personas[3].username in got["layers"][0]["text"]
    assert personas[0].name not in got["layers"][0]["text"]
    # The topic is drawn from the chat's and the bot's topics, the same for the same seed.
    assert got["topic"] in {"usdtry", "btc"} | set(personas[3].topics)
    again = await preview_prompt(reads, bot_id=bot_ids[3], chat_id=chat_id,
                                 market=MarketFeed(seed=3, start=START), now=START)
    assert again == got
    topics: set[str] = set()
    for seed in range(30):
        other = await preview_prompt(reads, bot_id=bot_ids[3], chat_id=chat_id,
                                     market=MarketFeed(seed=3, start=START), now=START,
                                     seed=seed)
        topics.add(other["topic"])
    assert len(topics) > 1


async def test_unknown_ids_not_found(
    reads: CachedReads, sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    _, bot_ids, chat_id = await seed_world(sessionmaker, cipher)
    market = MarketFeed(seed=1, start=START)
    with pytest.raises(NotFound) as exc:
        await preview_prompt(reads, bot_id=999_999, chat_id=chat_id, market=market, now=START)
    assert exc.value.kind == "bot"
    with pytest.raises(NotFound) as exc:
        await preview_prompt(reads, bot_id=bot_ids[0], chat_id=999_999, market=market,
                             now=START)
    assert exc.value.kind == "chat"

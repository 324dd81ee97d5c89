"""The stores added when every SQL statement moved into backend/stores (issue 13): the
read-only figures (stores.figures and friends), the scratch-row cleanup of stores.bulk and
the enable/disable writes. On SQLite and PostgreSQL (the ``sessionmaker`` fixture)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher
from backend.db.models import TurnRecord
from backend.errors import NotFound
from backend.schemas import MessageMeta, Persona, Style
from backend.stores import bots as bot_store
from backend.stores import bulk as bulk_store
from backend.stores import chats as chat_store
from backend.stores import figures as figures_store
from backend.stores import messages as message_store
from backend.stores import turns as turn_store

Sessions = async_sessionmaker[AsyncSession]

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def persona(username: str, name: str) -> Persona:
    return Persona(
        name=name, username=username, role="newcomer", language="tr", bio="Yeni başladı.",
        style=Style(formality="casual", emoji_rate=0.5, length="short"), topics={"btc": 1.0},
    )


async def seed(sm: Sessions, cipher: TokenCipher) -> tuple[int, int, int, int]:
    """Two bots (the second silent since T0), two chats; bot messages in both chats with the
    same Telegram id 1, two without a turn id, one before T0; one human message."""
    async with sm() as s, s.begin():
        ids = await bulk_store.upsert_persona_bots(s, bots=[
            (persona("ali_1_bot", "Ali"), "7200000001:AAsecretsecret1"),
            (persona("veli_2_bot", "Veli"), "7200000002:AAsecretsecret2"),
        ], cipher=cipher)
        chats = await bulk_store.upsert_chats(s, chats=[
            (-1001, "Bir", {"btc": 1.0}), (-1002, "İki", {"gold": 2.0})])
        b1, b2 = ids["ali_1_bot"], ids["veli_2_bot"]
        c1, c2 = chats[-1001], chats[-1002]

        def row(chat: int, bot: int | None, tg: int, turn: str | None, at: datetime,
                **extra: object) -> dict[str, object]:
            return {"chat_id": chat, "bot_id": bot, "sender_id": None if bot else 55,
                    "sender_name": None if bot else "İnsan", "telegram_message_id": tg,
                    "reply_to_telegram_message_id": extra.get("reply_to"), "text": "x",
                    "meta": MessageMeta(provider=None if bot is None else "offline",
                                            latency_ms=extra.get("latency_ms")),
                    "turn_id": turn, "reply_wanted": False, "created_at": at}

        await bulk_store.insert_messages(s, rows=[
            row(c1, None, 100, None, T0 + timedelta(seconds=1)),
            row(c1, b1, 1, "t1", T0 + timedelta(seconds=2), reply_to=100, latency_ms=40.0),
            row(c2, b1, 1, "t2", T0 + timedelta(seconds=3)),
            row(c1, b1, 2, None, T0 + timedelta(seconds=4)),
            row(c2, b1, 2, None, T0 + timedelta(seconds=5)),
            row(c1, b2, 3, "t0", T0 - timedelta(minutes=5)),
        ])
    return b1, b2, c1, c2


async def test_message_figures(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    b1, b2, c1, c2 = await seed(sessionmaker, cipher)
    async with sessionmaker() as s:
        rows = await figures_store.bot_messages(s)
        dups = await figures_store.duplicate_groups(s)
        tg_ids = await figures_store.bot_telegram_message_ids(s)
        per_bot = await figures_store.messages_per_bot(s, since=T0)
        metas = await figures_store.bot_message_metas(s, since=T0)
        tg_of = await chat_store.telegram_chat_ids(s)
        every = await message_store.messages_after(s, after_id=0, limit=None)
        two = await message_store.messages_after(s, after_id=0, limit=2)
    assert len(rows) == 5 and {r.bot_id for r in rows} == {b1, b2}
    replying = [r for r in rows if r.reply_to_telegram_message_id is not None]
    assert [(r.chat_id, r.reply_to_telegram_message_id, r.meta.latency_ms)
            for r in replying] == [(c1, 100, 40.0)]
    # The same Telegram id in two chats and NULL turn ids are no duplicates.
    assert dups == figures_store.Duplicates(telegram=0, turn=0)
    assert tg_ids == {1, 2, 3}
    assert per_bot == [("Ali", 4), ("Veli", 0)]
    assert len(metas) == 4 and {m.provider for m in metas} == {"offline"}
    assert tg_of == {c1: -1001, c2: -1002}
    assert len(every) == 6 and [m.id for m in every] == sorted(m.id for m in every)
    assert [m.id for m in two] == [m.id for m in every[:2]]


async def test_turn_figures_by_worker_status_and_window(
    sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    b1, _, c1, _ = await seed(sessionmaker, cipher)
    turns = [("a", "w1", "sent", T0), ("b", "w1", "sent", T0 + timedelta(seconds=10)),
             ("c", "w2", "sent", T0 + timedelta(seconds=20)),
             ("d", "w2", "failed", T0 + timedelta(seconds=5)),
             ("e", "w3", "intent", T0 - timedelta(seconds=1))]
    async with sessionmaker() as s, s.begin():
        s.add_all(TurnRecord(turn_id=t, bot_id=b1, chat_id=c1, fencing_token=1, worker=w,
                             status=st, created_at=at, updated_at=at) for t, w, st, at in turns)
    async with sessionmaker() as s:
        assert await figures_store.sent_per_worker(s) == {"w1": 2, "w2": 1}
        # [since, until): T0 counts, T0 + 20 s does not.
        assert await figures_store.sent_per_worker(
            s, since=T0, until=T0 + timedelta(seconds=20)) == {"w1": 2}
        assert await figures_store.sent_per_worker(
            s, since=T0 + timedelta(seconds=1)) == {"w1": 1, "w2": 1}
        assert await turn_store.status_counts(s) == {"sent": 3, "failed": 1, "intent": 1}
        assert await turn_store.status_counts(s, updated_since=T0) == {"sent": 3, "failed": 1}


async def test_delete_bot_and_chat_leaves_the_others(
    sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    b1, b2, c1, c2 = await seed(sessionmaker, cipher)
    async with sessionmaker() as s, s.begin():
        await chat_store.add_bot(s, chat_id=c2, bot_id=b1)
        await chat_store.add_bot(s, chat_id=c1, bot_id=b2)
    async with sessionmaker() as s, s.begin():
        await bulk_store.delete_bot_and_chat(s, bot_id=b1, chat_id=c2)
    async with sessionmaker() as s:
        assert {b.id for b in await bot_store.list_bots(s)} == {b2}
        assert {c.id for c in await chat_store.list_chats(s)} == {c1}
        left = await message_store.messages_after(s, after_id=0, limit=None)
        # b1's messages in c1 go too; the human's and b2's stay.
        assert sorted((m.chat_id, m.bot_id or 0) for m in left) == sorted([(c1, 0), (c1, b2)])
        assert await chat_store.member_ids(s, chat_ids=[c1]) == {c1: [b2]}


async def test_set_enabled_reports_a_change_once(
    sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    b1, _, c1, _ = await seed(sessionmaker, cipher)
    async with sessionmaker() as s, s.begin():
        bot, changed = await bot_store.set_enabled(s, bot_id=b1, enabled=False)
        assert (bot.id, bot.enabled, changed) == (b1, False, True)
        _, again = await bot_store.set_enabled(s, bot_id=b1, enabled=False)
        assert again is False
        chat, changed = await chat_store.set_enabled(s, chat_id=c1, enabled=False)
        assert (chat.id, chat.enabled, changed) == (c1, False, True)
        _, again = await chat_store.set_enabled(s, chat_id=c1, enabled=False)
        assert again is False
    async with sessionmaker() as s:
        assert (await bot_store.get_bot(s, bot_id=b1)).enabled is False
        assert (await chat_store.get_chat(s, chat_id=c1)).enabled is False
        with pytest.raises(NotFound):
            await bot_store.set_enabled(s, bot_id=999_999, enabled=True)
        with pytest.raises(NotFound):
            await chat_store.set_enabled(s, chat_id=999_999, enabled=True)


async def test_update_bot_writes_only_what_is_given(
    sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    b1, _, _, _ = await seed(sessionmaker, cipher)
    new_token = "7200000009:AAanothersecret"
    async with sessionmaker() as s, s.begin():
        bot = await bot_store.get_bot(s, bot_id=b1)
        mood = bot.mood
        await bot_store.update_bot(s, bot=bot, persona=persona("ali_1_bot", "Ali Bey"),
                                   enabled=False, token=new_token, cipher=cipher)
    async with sessionmaker() as s:
        bot = await bot_store.get_bot(s, bot_id=b1)
        assert (bot.name, bot.enabled, bot.mood) == ("Ali Bey", False, mood)
        assert bot.telegram_user_id == 7200000009
        assert cipher.decrypt(bot.token_encrypted) == new_token
        with pytest.raises(ValueError, match="cipher"):
            await bot_store.update_bot(s, bot=bot, persona=persona("ali_1_bot", "Ali"),
                                       token=new_token)

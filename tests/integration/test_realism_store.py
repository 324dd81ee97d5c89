"""stores.figures.chat_messages / chats_with_messages: what `botsim realism` reads, on SQLite
and PostgreSQL (the ``sessionmaker`` fixture)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher
from backend.schemas import MessageMeta, Persona, Style
from backend.stores import bulk as bulk_store
from backend.stores import figures as figures_store

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def persona(username: str, name: str) -> Persona:
    return Persona(
        name=name, username=username, role="newcomer", language="tr", bio="Yeni başladı.",
        style=Style(formality="casual", emoji_rate=0.5, length="short"), topics={"btc": 1.0},
    )


async def test_chat_messages_in_a_window_by_telegram_id(
    sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    sent_at = T0 + timedelta(seconds=2, microseconds=250_000)
    async with sessionmaker() as s, s.begin():
        ids = await bulk_store.upsert_persona_bots(
            s, bots=[(persona("ali_1_bot", "Ali"), "7200000001:AAsecretsecret1")],
            cipher=cipher)
        chats = await bulk_store.upsert_chats(
            s, chats=[(-1001, "Bir", {"btc": 1.0}), (-1002, "İki", {"gold": 1.0})])
        bot, c1, c2 = ids["ali_1_bot"], chats[-1001], chats[-1002]

        def row(chat: int, bot_id: int | None, tg: int, at: datetime, text: str,
                meta: MessageMeta, reply_to: int | None = None) -> dict[str, object]:
            return {"chat_id": chat, "bot_id": bot_id, "sender_id": None if bot_id else 55,
                    "sender_name": None if bot_id else "Deniz", "telegram_message_id": tg,
                    "reply_to_telegram_message_id": reply_to, "text": text, "meta": meta,
                    "turn_id": None, "reply_wanted": False, "created_at": at}

        await bulk_store.insert_messages(s, rows=[
            row(c1, bot, 7, T0 + timedelta(seconds=2), "cevap", MessageMeta(sent_at=sent_at),
                reply_to=5),
            row(c1, None, 5, T0 + timedelta(seconds=1), "soru",
                MessageMeta(sender_username="deniz_trader")),
            row(c1, bot, 9, T0 + timedelta(seconds=4), "sent_at yok", MessageMeta()),
            row(c1, bot, 3, T0 - timedelta(minutes=5), "eski", MessageMeta()),
            row(c2, bot, 1, T0 + timedelta(seconds=3), "öteki sohbet", MessageMeta()),
        ])
    async with sessionmaker() as s:
        got = await figures_store.chat_messages(
            s, telegram_chat_id=-1001, since=T0, until=T0 + timedelta(seconds=10))
        everything = await figures_store.chat_messages(s, telegram_chat_id=-1001)
        unknown = await figures_store.chat_messages(s, telegram_chat_id=-5)
        in_window = await figures_store.chats_with_messages(s, since=T0)
        before = await figures_store.chats_with_messages(s, until=T0)
    # In Telegram id order, the old message out of the window, the other chat's out.
    assert [m.telegram_message_id for m in got] == [5, 7, 9]
    human, answer, plain = got
    assert (human.bot_id, human.sender_id, human.sender_name, human.username) == (
        None, 55, "Deniz", "deniz_trader")
    assert human.at == T0 + timedelta(seconds=1)  # a human's time: Telegram's date
    assert (answer.bot_id, answer.sender_name, answer.username) == (bot, "Ali", "ali_1_bot")
    assert answer.at == sent_at  # a bot's: when Telegram accepted it (meta.sent_at) ...
    assert answer.reply_to_telegram_message_id == 5
    assert plain.at == T0 + timedelta(seconds=4)  # ... else created_at
    assert [m.telegram_message_id for m in everything] == [3, 5, 7, 9]
    assert unknown == []
    assert in_window == [-1002, -1001] and before == [-1001]

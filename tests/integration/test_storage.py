"""Storage on SQLite and PostgreSQL alike (the ``db_url`` fixture runs each test on both)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher
from backend.db.models import Bot, Message
from backend.errors import ValidationFailed
from backend.schemas import MessageMeta, Persona, Style
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import messages as message_store
from backend.stores import settings as settings_store

TOKEN = "7100000001:AAHsecretpartofthetoken_abcdefghij"

Sessions = async_sessionmaker[AsyncSession]


def make_persona(username: str = "mehmet_test_bot") -> Persona:
    return Persona(
        name="Mehmet Yatırımcı",
        username=username,
        role="long-term investor",
        language="tr",
        bio="Uzun vadeli yatırımcı.",
        style=Style(formality="formal", emoji_rate=0.1, length="medium"),
        topics={"bist100": 2.0, "gold": 1.0},
        stances=[{"topic": "bist100", "view": "bullish", "conviction": 0.8,
                  "reason": "Şirket kârları büyüyor."}],
        holdings=[{"symbol": "BIST100", "quantity": 10, "avg_cost": 10000}],
    )


async def seed(sm: Sessions, cipher: TokenCipher) -> tuple[int, int]:
    async with sm() as s, s.begin():
        bot = await bot_store.upsert_persona_bot(s, persona=make_persona(), token=TOKEN,
                                                 cipher=cipher)
        chat = await chat_store.upsert_chat(s, telegram_chat_id=-100123, title="Grup",
                                            topics={"usdtry": 1.0})
        await chat_store.add_bot(s, chat_id=chat.id, bot_id=bot.id)
        return bot.id, chat.id


async def test_token_encrypted_at_rest(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    bot_id, _ = await seed(sessionmaker, cipher)
    async with sessionmaker() as s:
        raw = (await s.execute(text("SELECT token_encrypted FROM bots"))).scalar_one()
        bot = await bot_store.get_bot(s, bot_id=bot_id)
    assert TOKEN.encode() not in bytes(raw)
    assert cipher.decrypt(bot.token_encrypted) == TOKEN
    assert bot.telegram_user_id == 7100000001


async def test_json_columns_typed_both_ways(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    bot_id, chat_id = await seed(sessionmaker, cipher)
    async with sessionmaker() as s:
        bot = await bot_store.get_bot(s, bot_id=bot_id)
        # Read back as models, not dicts or strings (the prototype's trap).
        assert bot.persona.style.formality == "formal"
        assert bot.stances.items[0].view == "bullish"
        assert bot.holdings.items[0].avg_cost == 10000
        chat = await chat_store.get_chat(s, chat_id=chat_id)
        assert chat.topics.weights == {"usdtry": 1.0}
    async with sessionmaker() as s:
        bot = await bot_store.get_bot(s, bot_id=bot_id)
        bot.persona = '{"role": "x"}'  # type: ignore[assignment]
        with pytest.raises(StatementError, match="pass the typed value"):
            await s.flush()


async def test_timestamps_aware_utc(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    _, chat_id = await seed(sessionmaker, cipher)
    when = datetime(2026, 5, 1, 15, 30, tzinfo=UTC) + timedelta(hours=3)
    async with sessionmaker() as s, s.begin():
        await message_store.record_incoming(
            s, chat_id=chat_id, telegram_message_id=1, text="selam", sender_id=42,
            sender_name="Deniz", meta=MessageMeta(), created_at=when,
        )
    async with sessionmaker() as s:
        msg = (await s.execute(select(Message))).scalar_one()
    assert msg.created_at == when
    assert msg.created_at.tzinfo is not None and msg.created_at.utcoffset() == timedelta(0)
    async with sessionmaker() as s:
        s.add(Message(chat_id=chat_id, sender_id=1, telegram_message_id=2, text="x",
                      created_at=datetime(2026, 1, 1)))  # noqa: DTZ001 - the point of the test
        with pytest.raises(StatementError, match="naive datetime"):
            await s.flush()


async def test_human_message_has_no_bot_and_is_stored_once(
    sessionmaker: Sessions, cipher: TokenCipher
) -> None:
    _, chat_id = await seed(sessionmaker, cipher)
    now = datetime.now(UTC)
    results = []
    for _ in range(3):  # the same group message reaches three bots
        async with sessionmaker() as s, s.begin():
            results.append(await message_store.record_incoming(
                s, chat_id=chat_id, telegram_message_id=10, text="Dolar ne olur?",
                sender_id=99, sender_name="Deniz", meta=MessageMeta(), created_at=now,
                reply_wanted=True,
            ))
    assert results[0] is not None and results[1:] == [None, None]
    async with sessionmaker() as s:
        rows = (await s.execute(select(Message))).scalars().all()
        waiting = await message_store.waiting_for_reply(
            s, chat_id=chat_id, since=now - timedelta(minutes=1)
        )
    assert len(rows) == 1 and rows[0].bot_id is None and rows[0].sender_id == 99
    assert [m.telegram_message_id for m in waiting] == [10]


async def test_message_needs_a_sender(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    _, chat_id = await seed(sessionmaker, cipher)
    async with sessionmaker() as s:
        s.add(Message(chat_id=chat_id, telegram_message_id=5, text="?",
                      created_at=datetime.now(UTC)))
        with pytest.raises(IntegrityError):
            await s.flush()


async def test_take_update_once(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    bot_id, _ = await seed(sessionmaker, cipher)
    async with sessionmaker() as s, s.begin():
        assert await message_store.take_update(s, bot_id=bot_id, update_id=7) is True
    async with sessionmaker() as s, s.begin():
        assert await message_store.take_update(s, bot_id=bot_id, update_id=7) is False
        assert await message_store.take_update(s, bot_id=bot_id, update_id=8) is True


async def test_sent_message_and_summary(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    bot_id, chat_id = await seed(sessionmaker, cipher)
    start = datetime.now(UTC) - timedelta(seconds=1)
    async with sessionmaker() as s, s.begin():
        await message_store.record_incoming(
            s, chat_id=chat_id, telegram_message_id=1, text="Altın?", sender_id=5,
            sender_name="Deniz", meta=MessageMeta(), created_at=datetime.now(UTC),
            reply_wanted=True,
        )
        await message_store.record_incoming(
            s, chat_id=chat_id, telegram_message_id=3, text="kimse yok mu", sender_id=5,
            sender_name="Deniz", meta=MessageMeta(), created_at=datetime.now(UTC),
        )
        await message_store.record_sent(
            s, chat_id=chat_id, bot_id=bot_id, turn_id="t-1", telegram_message_id=2,
            text="Altın uzun vadede korur.", meta=MessageMeta(provider="offline"),
            created_at=datetime.now(UTC), reply_to_telegram_message_id=1,
        )
        await message_store.mark_answered(s, chat_id=chat_id, telegram_message_ids=[1])
    async with sessionmaker() as s:
        summary = await message_store.run_summary(s, since=start)
        counts = await message_store.bot_message_counts(s, since=start)
        waiting = await message_store.waiting_for_reply(s, chat_id=chat_id, since=start)
    assert summary == {"messages": 1, "bots_spoken": 1, "human_messages": 2,
                       "human_replies": 1, "duplicates": 0}
    assert counts == {bot_id: 1}
    assert waiting == []
    async with sessionmaker() as s:
        with pytest.raises(IntegrityError):
            async with s.begin():
                await message_store.record_sent(
                    s, chat_id=chat_id, bot_id=bot_id, turn_id="t-1", telegram_message_id=9,
                    text="again", meta=MessageMeta(), created_at=datetime.now(UTC),
                )


async def test_summary_counts_a_message_dated_in_the_second_the_run_started(
        sessionmaker: Sessions, cipher: TokenCipher) -> None:
    # Telegram dates are whole seconds: a human line posted 0.5 s into a run that started at
    # hh:mm:ss.7 is dated hh:mm:ss (it was a demo summary's "0 human messages")
    _, chat_id = await seed(sessionmaker, cipher)
    start = datetime(2026, 12, 4, 12, 0, 0, 700_000, tzinfo=UTC)
    async with sessionmaker() as s, s.begin():
        await message_store.record_incoming(
            s, chat_id=chat_id, telegram_message_id=1, text="Altın?", sender_id=5,
            sender_name="Deniz", meta=MessageMeta(), created_at=start.replace(microsecond=0))
        await message_store.record_incoming(
            s, chat_id=chat_id, telegram_message_id=2, text="eski", sender_id=5,
            sender_name="Deniz", meta=MessageMeta(),
            created_at=start.replace(microsecond=0) - timedelta(seconds=1))
    async with sessionmaker() as s:
        summary = await message_store.run_summary(s, since=start)
    assert summary["human_messages"] == 1


async def test_settings_validated_and_atomic(sessionmaker: Sessions) -> None:
    async with sessionmaker() as s, s.begin():
        first = await settings_store.get_settings(s)
        assert first.max_msgs_per_min == 6
        new = await settings_store.update_settings(
            s, changes={"max_msgs_per_min": 9, "bot_hourly_msg_limit": {"min": 2, "max": 4}}
        )
        assert new.max_msgs_per_min == 9
    async with sessionmaker() as s:
        with pytest.raises(ValidationFailed) as err:
            async with s.begin():
                await settings_store.update_settings(
                    s, changes={"max_msgs_per_min": 50, "scale_factor": 2.0}
                )
        assert "max_msgs_per_min" in str(err.value)
        with pytest.raises(ValidationFailed, match=r"min .* must not exceed max"):
            async with s.begin():
                await settings_store.update_settings(
                    s, changes={"bot_hourly_msg_limit": {"min": 9, "max": 3}}
                )
        with pytest.raises(ValidationFailed, match="no_such_key: unknown setting"):
            async with s.begin():
                await settings_store.update_settings(s, changes={"no_such_key": 1})
    async with sessionmaker() as s:
        kept = await settings_store.get_settings(s)
    assert kept.max_msgs_per_min == 9 and kept.scale_factor == 1.0
    assert kept.bot_hourly_msg_limit.max == 4


async def test_upsert_persona_keeps_one_row(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    await seed(sessionmaker, cipher)
    await seed(sessionmaker, cipher)
    async with sessionmaker() as s:
        bots = (await s.execute(select(Bot))).scalars().all()
    assert len(bots) == 1


async def test_retention_anonymises_peoples_old_messages_only(
        sessionmaker: Sessions, cipher: TokenCipher) -> None:
    # issue 16, item 7: a person's text and name go after N days; bots' messages stay
    from backend.db.models import ChatMember
    from backend.stores import members as member_store

    bot_id, chat_id = await seed(sessionmaker, cipher)
    now = datetime.now(UTC)
    old, new = now - timedelta(days=40), now - timedelta(days=1)
    async with sessionmaker() as s, s.begin():
        for tg, when, sender_is_bot in ((1, old, False), (2, new, False), (3, old, True)):
            await message_store.record_incoming(
                s, chat_id=chat_id, telegram_message_id=tg, text=f"Deniz yazdı {tg}",
                sender_id=5 + tg, sender_name="Deniz Kaya",
                meta=MessageMeta(sender_username="deniz", mentions=("ayse",),
                                 sender_is_bot=sender_is_bot),
                created_at=when, reply_wanted=True)
        await message_store.record_sent(
            s, chat_id=chat_id, bot_id=bot_id, turn_id="t-9", telegram_message_id=4,
            text="Bot cevabı", meta=MessageMeta(provider="offline"), created_at=old,
            reply_to_telegram_message_id=1)
        await member_store.set_member(s, chat_id=chat_id, user_id=6, status="member",
                                      name="Deniz Kaya", at=old)
    for _ in range(2):  # idempotent
        async with sessionmaker() as s, s.begin():
            done = await message_store.anonymise_people(s, before=now - timedelta(days=30))
        assert done in (1, 0)
    async with sessionmaker() as s:
        rows = {m.telegram_message_id: m for m in (await s.execute(select(Message))).scalars()}
        person = await s.get(ChatMember, (chat_id, 6))
    gone = rows[1]
    assert (gone.text, gone.sender_id, gone.sender_name, gone.reply_wanted) == (
        "", 0, message_store.ANONYMISED, False)
    assert gone.meta.sender_username is None and gone.meta.mentions == ()
    assert rows[2].text == "Deniz yazdı 2" and rows[2].sender_name == "Deniz Kaya"  # recent
    assert rows[3].text == "Deniz yazdı 3"  # another bot's message is no person's
    assert rows[4].text == "Bot cevabı" and rows[4].reply_to_telegram_message_id == 1
    assert person is not None and person.name == ""

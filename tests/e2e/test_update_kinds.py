"""Every update kind, delivered by the sandbox Telegram over webhooks to the listener
(issue 15, items 1 and 4): the sandbox speaks Telegram's wire format, the listener acts.

The worker's sends go through python-telegram-bot (``test_forum_topic_answered_inside_it``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx
import pytest
import telegram
from prometheus_client import REGISTRY
from sqlalchemy import select

from backend.crypto import webhook_secret_for
from backend.db.models import Chat, ChatMember, Message, WebhookUpdate
from backend.db.types import utcnow
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from bots.telegram import BotClient
from tests.e2e.test_loop import CHAT, HUMAN_ID, World, make_worker, wait_until, world

__all__ = ["world"]  # the fixture
pytestmark = pytest.mark.e2e
FIRST_BOT = 8100000000  # the first persona's Telegram id in the world fixture


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 15) -> None:
    assert await wait_until(check, seconds), check.__name__


async def rows(w: World, model: type) -> list:  # type: ignore[type-arg]
    async with w.sessionmaker() as s:
        return list((await s.execute(select(model))).scalars().all())


async def stored(w: World, tg_id: int) -> Message | None:
    return next((m for m in await rows(w, Message) if m.telegram_message_id == tg_id), None)


async def member(w: World, user_id: int) -> ChatMember | None:
    return next((m for m in await rows(w, ChatMember) if m.user_id == user_id), None)


async def talkers(w: World) -> set[int]:
    async with w.sessionmaker() as s:
        chats = await chat_store.enabled_chats_with_talkativeness(s)
    return {b for c, t in chats if c.telegram_chat_id == CHAT for b in t}


async def test_a_bot_kicked_and_added_back(world: World) -> None:
    w = world
    async with w.sessionmaker() as s:
        kicked = await bot_store.bot_with_telegram_user_id(s, telegram_user_id=FIRST_BOT)
    assert kicked is not None and kicked.id in await talkers(w)
    w.sandbox.kick_bot(CHAT, FIRST_BOT, by_user_id=HUMAN_ID)

    async def out() -> bool:
        row = await member(w, FIRST_BOT)
        return row is not None and row.status == "kicked" and row.bot_id == kicked.id

    await until(out)
    assert kicked.id not in await talkers(w)
    w.sandbox.add_bot_to_chat(CHAT, FIRST_BOT, notify=True)

    async def back() -> bool:
        row = await member(w, FIRST_BOT)
        return row is not None and row.status == "member"

    await until(back)
    assert kicked.id in await talkers(w)
    assert await rows(w, Message) == []  # the service messages entered no history


async def test_restricted_then_promoted_and_chat_member_for_an_administrator(
        world: World) -> None:
    w = world
    async with w.sessionmaker() as s:
        bot = await bot_store.bot_with_telegram_user_id(s, telegram_user_id=FIRST_BOT)
    assert bot is not None
    w.sandbox.restrict_bot(CHAT, FIRST_BOT)

    async def restricted() -> bool:
        row = await member(w, FIRST_BOT)
        return row is not None and row.status == "restricted" and not row.can_send

    await until(restricted)
    assert bot.id not in await talkers(w)  # it may not send: no turns there
    w.sandbox.promote_bot(CHAT, FIRST_BOT)

    async def promoted() -> bool:
        row = await member(w, FIRST_BOT)
        return row is not None and row.status == "administrator"

    await until(promoted)
    assert bot.id in await talkers(w)
    # An administrator that asked for chat_member (bots.telegram.ALLOWED_UPDATES) hears of
    # every member: a person who joins is recorded from it as well as from the service
    # message, and stays "member" once.
    before = _counted("chat_member")
    w.sandbox.human_joins(CHAT, {"id": 902, "first_name": "Ece"})

    async def joined() -> bool:
        row = await member(w, 902)
        return (row is not None and row.status == "member" and row.name == "Ece"
                and _counted("chat_member") == before + 1)

    await until(joined)


async def test_people_joining_leaving_and_a_new_title(world: World) -> None:
    w = world
    w.sandbox.human_joins(CHAT, {"id": 901, "first_name": "Can"})
    w.sandbox.set_title(CHAT, "Yeni ad")
    w.sandbox.human_leaves(CHAT, 901)

    async def done() -> bool:
        row = await member(w, 901)
        chat = next(c for c in await rows(w, Chat) if c.telegram_chat_id == CHAT)
        return row is not None and row.status == "left" and chat.title == "Yeni ad"

    await until(done)
    assert await rows(w, Message) == []


@pytest.mark.parametrize("order", ["to_first", "from_first"])
async def test_a_group_migrated_to_a_supergroup_is_one_chat(world: World, order: str) -> None:
    w = world
    before = await w.sandbox.post_as_human(CHAT, HUMAN_ID, "Göç öncesi bir soru?")
    await until(lambda: _is_stored(w, before["message_id"]))
    new_id = -100778
    w.sandbox.migrate_chat(CHAT, new_id, order=order)

    async def mapped() -> bool:
        chats = await rows(w, Chat)
        return len(chats) == 1 and chats[0].telegram_chat_id == new_id

    await until(mapped)
    after = await w.sandbox.post_as_human(new_id, HUMAN_ID, "Süpergruptan merhaba")
    await until(lambda: _is_stored(w, after["message_id"]))
    (chat,) = await rows(w, Chat)
    assert chat.migrated_from_telegram_chat_id == CHAT and chat.enabled
    ids = sorted(m.telegram_message_id for m in await rows(w, Message) if m.bot_id is None)
    assert ids == sorted([-before["message_id"], after["message_id"]])


async def _is_stored(w: World, tg_id: int) -> bool:
    return any(abs(m.telegram_message_id) == tg_id for m in await rows(w, Message))


@pytest.mark.parametrize("who", ["anonymous admin", "linked channel"])
async def test_people_speaking_as_a_chat_are_answered_as_people(world: World, who: str) -> None:
    w = world
    if who == "anonymous admin":
        msg = await w.sandbox.post_as_anonymous_admin(CHAT, "Altın nereye?", "Yönetici")
    else:
        msg = await w.sandbox.post_as_channel(CHAT, {"id": -100500, "title": "Kanal"},
                                              "Günün notu: dolar sakin")
    await until(lambda: _is_stored(w, msg["message_id"]))
    row = await stored(w, msg["message_id"])
    assert row is not None and row.reply_wanted and row.meta.sender_chat
    assert not row.meta.sender_is_bot
    if who == "linked channel":
        assert row.meta.forwarded_from == "Kanal"


async def test_mentions_forwards_photos_and_edits(world: World) -> None:
    w = world
    text = "📈 @ayse_scalper_bot bak buna"  # an astral emoji: 2 UTF-16 units
    m1 = await w.sandbox.post_as_human(CHAT, HUMAN_ID, text)
    m2 = await w.sandbox.post_as_human(
        CHAT, HUMAN_ID, "iletiyorum", forward_from={"id": 77, "is_bot": False,
                                                   "first_name": "Can"})
    m3 = await w.sandbox.post_photo_as_human(CHAT, HUMAN_ID, caption="grafik")
    await until(lambda: _is_stored(w, m3["message_id"]))
    await w.sandbox.edit_as_human(CHAT, m2["message_id"], "iletiyorum (düzeltme)")

    async def edited() -> bool:
        row = await stored(w, m2["message_id"])
        return row is not None and row.text == "iletiyorum (düzeltme)"

    await until(edited)
    r1, r2, r3 = [await stored(w, m["message_id"]) for m in (m1, m2, m3)]
    assert r1 is not None and r1.meta.mentions == ("ayse_scalper_bot",)
    assert r2 is not None and r2.meta.forwarded_from == "Can" and r2.meta.edited
    assert r3 is not None and r3.meta.kind == "photo" and r3.text == "grafik"


async def test_kinds_we_do_not_use_are_taken_and_counted(world: World) -> None:
    w = world
    async with w.sessionmaker() as s:
        bot = await bot_store.bot_with_telegram_user_id(s, telegram_user_id=FIRST_BOT)
    assert bot is not None
    kinds = ["callback_query", "poll", "message_reaction"]
    # Our setWebhook does not ask for these (bots.telegram.ALLOWED_UPDATES): Telegram
    # holds them back. An operator who subscribes to them gets them answered and counted.
    w.sandbox.deliver_raw(FIRST_BOT, {"poll": {"id": "0"}})
    info = await _webhook_info(w, bot.id)
    assert info.pending_update_count == 0 and "poll" not in (info.allowed_updates or ())
    await asyncio.sleep(1.1)  # Telegram: one setWebhook per second per bot
    client = BotClient(bot_id=bot.id, token=w.secrets.cipher().decrypt(bot.token_encrypted),
                       base_url=w.sandbox.bot_api_url)
    try:
        await client.set_webhook(url=f"{w.listener.url}/webhook/{bot.id}",
                                 secret_token=webhook_secret_for(w.secrets.webhook_secret,
                                                                 bot.id),
                                 allowed_updates=["message", *kinds])
    finally:
        await client.close()
    before = {k: _counted(k) for k in kinds}
    for kind in kinds:
        w.sandbox.deliver_raw(FIRST_BOT, {kind: {"id": "1"}})

    async def delivered() -> bool:
        return w.sandbox.pending_updates(FIRST_BOT) == [] and len(
            await rows(w, WebhookUpdate)) >= 3

    await until(delivered)
    assert w.sandbox.stats["webhook_failed"] == 0
    assert await rows(w, Message) == []
    async with httpx.AsyncClient() as http:  # and the listener's /metrics shows them
        text = (await http.get(f"{w.listener.url}/metrics/")).text
    for kind in kinds:
        assert _counted(kind) == before[kind] + 1
        assert f'botsim_listener_updates_total{{kind="{kind}"}} {_counted(kind)}' in text


def _counted(kind: str) -> float:
    return REGISTRY.get_sample_value("botsim_listener_updates_total", {"kind": kind}) or 0.0


async def _webhook_info(w: World, bot_id: int) -> telegram.WebhookInfo:
    async with w.sessionmaker() as s:
        bot = await bot_store.get_bot(s, bot_id=bot_id)
    tg = telegram.Bot(w.secrets.cipher().decrypt(bot.token_encrypted),
                      base_url=w.sandbox.bot_api_url)
    async with tg:
        return await tg.get_webhook_info()


async def test_a_forum_topic_is_kept_and_answered_inside_it(world: World) -> None:
    w = world
    forum = -100779
    w.sandbox.add_chat(forum, "Forum", is_forum=True)
    w.sandbox.add_member(forum, {"id": HUMAN_ID, "first_name": "Deniz", "username": "deniz"})
    async with w.sessionmaker() as s, s.begin():
        chat = await chat_store.upsert_chat(s, telegram_chat_id=forum, title="Forum",
                                            topics={"gold": 1.0})
        for bot in await bot_store.list_bots(s):
            await chat_store.add_bot(s, chat_id=chat.id, bot_id=bot.id)
            assert bot.telegram_user_id is not None
            w.sandbox.add_bot_to_chat(forum, bot.telegram_user_id)
    thread = w.sandbox.create_topic(forum, "Altın")
    asked = await w.sandbox.post_as_human(forum, HUMAN_ID, "@ayse_scalper_bot altın ne olur?",
                                          message_thread_id=thread)
    assert asked["reply_to_message"]["message_id"] == thread  # Telegram's topic-root link
    await until(lambda: _is_stored(w, asked["message_id"]))
    row = await stored(w, asked["message_id"])
    assert row is not None and row.meta.thread_id == thread
    assert row.reply_to_telegram_message_id is None  # the topic root is no reply
    worker = make_worker(w)
    await worker.start()
    try:
        async def answered() -> bool:
            return any(m["from"]["is_bot"] and m.get("message_thread_id") == thread
                       for m in w.sandbox.messages(forum))

        await until(answered, 30)
    finally:
        await worker.stop()
    answer = next(m for m in w.sandbox.messages(forum) if m["from"]["is_bot"]
                  and m.get("reply_to_message", {}).get("message_id") == asked["message_id"])
    assert answer["message_thread_id"] == thread and answer["is_topic_message"]


async def test_each_demo_bot_answers_privacy_through_the_sandbox(world: World) -> None:
    # issue 16, item 7: the listener answers in its webhook reply; the sandbox makes that
    # sendMessage for the bot, as Telegram does
    w = world
    async with w.sessionmaker() as s:
        bots = await bot_store.list_bots(s)
    asked = {}
    for bot in bots:
        msg = await w.sandbox.post_as_human(CHAT, HUMAN_ID, f"/privacy@{bot.username}")
        asked[msg["message_id"]] = bot

    async def answered() -> bool:
        got = {m["reply_to_message"]["message_id"]: m for m in w.sandbox.messages(CHAT)
               if m["from"]["is_bot"] and "reply_to_message" in m}
        return set(asked) <= set(got)

    await until(answered)
    for m in w.sandbox.messages(CHAT):
        if m["from"]["is_bot"]:
            bot = asked[m["reply_to_message"]["message_id"]]
            assert m["from"]["username"] == bot.username
            assert bot.name in m["text"] and "simüle edilmiş" in m["text"]
            assert "Gizlilik" in m["text"]
    assert w.sandbox.stats["webhook_replies"] == len(bots) == 4
    stored = [m for m in await rows(w, Message) if m.text.startswith("/privacy")]
    assert len(stored) == 4 and not any(m.reply_wanted for m in stored)


async def test_the_workers_retention_job_anonymises_old_messages(world: World) -> None:
    w = world
    old = await w.sandbox.post_as_human(CHAT, HUMAN_ID, "Eski bir soru: altın?")
    await until(lambda: _is_stored(w, old["message_id"]))
    async with w.sessionmaker() as s, s.begin():
        row = await stored(w, old["message_id"])
        assert row is not None
        (await s.get(Message, row.id)).created_at = utcnow() - timedelta(days=31)  # type: ignore[union-attr]
    w.settings = w.settings.model_copy(update={"retention_days": 30})
    worker = make_worker(w)
    await worker.start()
    try:
        jobs = worker._periodic.jobs()  # type: ignore[union-attr]
        assert worker.apply_retention in jobs  # scheduled, and run at start

        async def anonymised() -> bool:
            row = await stored(w, old["message_id"])
            return row is not None and row.text == "" and row.sender_id == 0

        await until(anonymised)
    finally:
        await worker.stop()
    assert await worker.apply_retention() == 0  # idempotent

"""Every update kind handled on purpose (issue 15, item 1), from Telegram's wire format.

Bodies are written as Telegram sends them (Bot API, Update/Message/ChatMemberUpdated); the
same kinds are delivered by the sandbox Telegram in tests/e2e/test_update_kinds.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from backend.db.models import Chat, ChatMember, Message
from backend.stores import chats as chat_store
from backend.stores import members as member_store
from bots.updates import TgMessage, utf16_slice
from message_listener import ListenerState
from tests.integration.test_listener import CHAT, Sessions, client, post, update

__all__ = ["client"]  # the fixture, shared with test_listener.py
Client = tuple[httpx.AsyncClient, int, ListenerState]
BOT_TG = 7100000001  # the client fixture's bot
ADMIN = {"id": 42, "is_bot": False, "first_name": "Admin"}


def service(update_id: int, message_id: int, chat: dict[str, Any] | None = None,
            **fields: Any) -> dict[str, Any]:
    """A service message: no text, one service field."""
    body = update(update_id, message_id, user=ADMIN, **fields)
    body["message"].pop("text")
    if chat is not None:
        body["message"]["chat"] = chat
    return body


def member_update(update_id: int, kind: str, user: dict[str, Any], old: str, new: str,
                  chat_id: int = CHAT, **new_fields: Any) -> dict[str, Any]:
    return {"update_id": update_id, kind: {
        "chat": {"id": chat_id, "type": "supergroup", "title": "Grup"},
        "from": ADMIN, "date": 1_790_000_100,
        "old_chat_member": {"status": old, "user": user},
        "new_chat_member": {"status": new, "user": user, **new_fields},
    }}


async def messages(sm: Sessions) -> list[Message]:
    async with sm() as s:
        return list((await s.execute(select(Message).order_by(Message.id))).scalars())


async def our_chat(sm: Sessions, telegram_chat_id: int = CHAT) -> Chat:
    async with sm() as s:
        chat = await chat_store.get_chat_by_telegram_id(s, telegram_chat_id=telegram_chat_id)
    assert chat is not None
    return chat


async def members(sm: Sessions) -> dict[int, ChatMember]:
    async with sm() as s:
        rows = (await s.execute(select(ChatMember))).scalars().all()
    return {r.user_id: r for r in rows}


async def talkers(sm: Sessions) -> dict[int, set[int]]:
    async with sm() as s:
        return {c.telegram_chat_id: set(t) for c, t in
                await chat_store.enabled_chats_with_talkativeness(s)}


async def test_service_messages_change_state_and_never_enter_the_history(
    client: Client, sessionmaker: Sessions
) -> None:
    c, bot_id, state = client
    deniz = {"id": 501, "is_bot": False, "first_name": "Deniz"}
    r = await post(c, bot_id, service(1, 10, new_chat_members=[deniz]))
    assert r.json() == {"ok": True, "service": "new_chat_members"}
    await post(c, bot_id, service(2, 11, new_chat_title="Yeni Başlık"))
    await post(c, bot_id, service(3, 12, left_chat_member=deniz))
    await post(c, bot_id, service(4, 13, pinned_message={"message_id": 5}))
    assert await messages(sessionmaker) == []
    assert (await our_chat(sessionmaker)).title == "Yeni Başlık"
    row = (await members(sessionmaker))[501]
    assert row.status == "left" and row.bot_id is None and row.name == "Deniz"
    assert state.kinds["service:pinned_message"] == 1 and state.stats["service"] == 4


async def test_my_chat_member_keeps_the_bots_membership_and_its_turns(
    client: Client, sessionmaker: Sessions
) -> None:
    c, bot_id, state = client
    me = {"id": BOT_TG, "is_bot": True, "first_name": "Mehmet", "username": "m_bot"}
    chat = await our_chat(sessionmaker)
    assert bot_id in (await talkers(sessionmaker))[CHAT]
    r = await post(c, bot_id, member_update(1, "my_chat_member", me, "member", "kicked"))
    assert r.json() == {"ok": True, "membership": "kicked"}
    row = (await members(sessionmaker))[BOT_TG]
    assert (row.chat_id, row.bot_id, row.status) == (chat.id, bot_id, "kicked")
    assert bot_id not in (await talkers(sessionmaker))[CHAT]
    await post(c, bot_id, member_update(2, "my_chat_member", me, "kicked", "restricted",
                                        can_send_messages=False))
    assert bot_id not in (await talkers(sessionmaker))[CHAT]
    await post(c, bot_id, member_update(3, "my_chat_member", me, "restricted", "member"))
    assert bot_id in (await talkers(sessionmaker))[CHAT]
    assert state.kinds["my_chat_member"] == 3


async def test_chat_member_records_anyone_and_refuses_an_unknown_status(
    client: Client, sessionmaker: Sessions
) -> None:
    c, bot_id, _ = client
    ayse = {"id": 777, "is_bot": False, "first_name": "Ayşe"}
    await post(c, bot_id, member_update(1, "chat_member", ayse, "left", "member"))
    assert (await members(sessionmaker))[777].status == "member"
    r = await post(c, bot_id, member_update(2, "chat_member", ayse, "member", "emperor"))
    assert r.status_code == 400 and "emperor" in r.json()["description"]
    assert (await members(sessionmaker))[777].status == "member"


@pytest.mark.parametrize("order", ["to_first", "from_first"])
async def test_a_migration_maps_the_group_to_its_supergroup_keeping_history(
    client: Client, sessionmaker: Sessions, order: str
) -> None:
    c, bot_id, _ = client
    await post(c, bot_id, update(1, 7, "eski grupta bir soru?"))
    new_id = -1009876
    to = service(2, 8, migrate_to_chat_id=new_id)
    frm = service(3, 1, chat={"id": new_id, "type": "supergroup", "title": "Grup"},
                  migrate_from_chat_id=CHAT)
    for body in ([to, frm] if order == "to_first" else [frm, to]):
        assert (await post(c, bot_id, body)).status_code == 200
    after = update(4, 1, "süpergrupta ilk mesaj")
    after["message"]["chat"] = {"id": new_id, "type": "supergroup", "title": "Grup"}
    assert (await post(c, bot_id, after)).json()["stored"] is True
    chat = await our_chat(sessionmaker, new_id)
    assert chat.migrated_from_telegram_chat_id == CHAT and chat.enabled
    assert (await our_chat(sessionmaker, CHAT)).id == chat.id
    async with sessionmaker() as s:
        assert len((await s.execute(select(Chat))).scalars().all()) == 1
    rows = await messages(sessionmaker)
    assert [(m.chat_id, m.telegram_message_id) for m in rows] == [(chat.id, -7), (chat.id, 1)]


async def test_a_supergroup_message_before_the_migration_news_is_merged(
    client: Client, sessionmaker: Sessions
) -> None:
    c, bot_id, _ = client
    new_id = -1009877
    await post(c, bot_id, update(1, 7, "eski"))
    early = update(2, 1, "erken")
    early["message"]["chat"] = {"id": new_id, "type": "supergroup", "title": "Grup"}
    await post(c, bot_id, early)  # an unknown chat: added disabled
    await post(c, bot_id, service(3, 8, migrate_to_chat_id=new_id))
    chat = await our_chat(sessionmaker, new_id)
    assert chat.enabled and chat.migrated_from_telegram_chat_id == CHAT
    assert sorted(m.telegram_message_id for m in await messages(sessionmaker)) == [-7, 1]
    assert {m.chat_id for m in await messages(sessionmaker)} == {chat.id}


@pytest.mark.parametrize("who", ["anonymous admin", "linked channel", "as channel"])
async def test_people_speaking_as_a_chat_are_people(
    client: Client, sessionmaker: Sessions, who: str
) -> None:
    c, bot_id, _ = client
    group = {"id": CHAT, "type": "supergroup", "title": "Grup"}
    channel = {"id": -100111, "type": "channel", "title": "Piyasa Kanalı"}
    sender, chat, extra = {
        "anonymous admin": ({"id": 1087968824, "is_bot": True, "first_name": "Group",
                             "username": "GroupAnonymousBot"}, group, {}),
        "linked channel": ({"id": 777000, "is_bot": False, "first_name": "Telegram"}, channel,
                           {"is_automatic_forward": True, "forward_origin": {
                               "type": "channel", "chat": channel, "message_id": 3,
                               "date": 1_790_000_000}}),
        "as channel": ({"id": 136817688, "is_bot": True, "first_name": "Channel",
                        "username": "Channel_Bot"}, channel, {}),
    }[who]
    body = update(1, 40, "Altın neden düşüyor?", user=sender, sender_chat=chat, **extra)
    assert (await post(c, bot_id, body)).json()["stored"] is True
    (msg,) = await messages(sessionmaker)
    assert msg.reply_wanted and not msg.meta.sender_is_bot and msg.meta.sender_chat
    assert msg.sender_id == chat["id"] and msg.sender_name == chat["title"]
    if who == "linked channel":
        assert msg.meta.forwarded_from == "Piyasa Kanalı"


async def test_a_forum_topic_keeps_its_thread_and_its_root_is_no_reply(
    client: Client, sessionmaker: Sessions
) -> None:
    c, bot_id, _ = client
    root = {"message_id": 100, "forum_topic_created": {"name": "Altın", "icon_color": 1}}
    first = update(1, 101, "konu açıldı", message_thread_id=100, is_topic_message=True,
                   reply_to_message=root)
    second = update(2, 102, "katılıyorum", message_thread_id=100, is_topic_message=True,
                    reply_to_message={"message_id": 101})
    for body in (first, second):
        assert (await post(c, bot_id, body)).status_code == 200
    a, b = await messages(sessionmaker)
    assert (a.reply_to_telegram_message_id, a.meta.thread_id) == (None, 100)
    assert (b.reply_to_telegram_message_id, b.meta.thread_id) == (101, 100)


async def test_mentions_come_from_entities_at_utf16_offsets(
    client: Client, sessionmaker: Sessions
) -> None:
    c, bot_id, _ = client
    text = "📈📈 @m_bot ve Ayşe: toplantı?"  # two astral emoji: 4 UTF-16 units before " @"
    ents = [{"type": "mention", "offset": 5, "length": 6},
            {"type": "text_mention", "offset": 15, "length": 4,
             "user": {"id": 9, "is_bot": False, "first_name": "Ayşe"}}]
    assert utf16_slice(text, 5, 6) == "@m_bot"
    await post(c, bot_id, update(1, 50, text, entities=ents))
    (msg,) = await messages(sessionmaker)
    assert msg.meta.mentions == ("m_bot", "id:9")


def test_mentions_without_entities_fall_back_to_the_username_in_the_text() -> None:
    msg = TgMessage.model_validate({
        "message_id": 1, "date": 0, "chat": {"id": 1, "type": "group"},
        "text": "@ayse_bot ne dersin? mail@example.com değil"})
    assert msg.mentions() == ("ayse_bot",)


async def test_a_forward_keeps_its_origin(client: Client, sessionmaker: Sessions) -> None:
    c, bot_id, _ = client
    origin = {"type": "user", "date": 1_789_999_000,
              "sender_user": {"id": 8, "is_bot": False, "first_name": "Can", "last_name": "B"}}
    await post(c, bot_id, update(1, 60, "bunu okuyun", forward_origin=origin))
    (msg,) = await messages(sessionmaker)
    assert msg.meta.forwarded_from == "Can B"


@pytest.mark.parametrize("kind", ["callback_query", "channel_post", "poll", "message_reaction",
                                  "chat_join_request", "inline_query"])
async def test_kinds_we_do_not_use_are_answered_200_and_counted(
    client: Client, sessionmaker: Sessions, kind: str
) -> None:
    c, bot_id, state = client
    r = await post(c, bot_id, {"update_id": 1, kind: {"id": "1"}})
    assert r.status_code == 200 and r.json()["kind"] == kind
    assert state.kinds[kind] == 1 and await messages(sessionmaker) == []


async def test_membership_store_refuses_an_unknown_status(sessionmaker: Sessions) -> None:
    from backend.errors import ValidationFailed

    async with sessionmaker() as s, s.begin():
        chat = await chat_store.upsert_chat(s, telegram_chat_id=-5, title="x",
                                            topics={"general": 1.0})
        with pytest.raises(ValidationFailed, match="status"):
            await member_store.set_member(s, chat_id=chat.id, user_id=1, status="owner")


@pytest.mark.parametrize("text", ["/privacy@mehmet_test_bot", "/privacy", "/start",
                                  "/help@MEHMET_TEST_BOT bu ne"])
async def test_privacy_start_and_help_are_answered_in_the_webhooks_answer(
    client: Client, sessionmaker: Sessions, text: str
) -> None:
    # issue 16, item 7: every bot says what it is (a simulated persona) and the privacy text
    c, bot_id, state = client
    r = await post(c, bot_id, update(1, 70, text))
    body = r.json()
    assert r.status_code == 200 and body["method"] == "sendMessage"
    assert body["chat_id"] == CHAT and body["reply_parameters"]["message_id"] == 70
    assert "simüle edilmiş bir karakterim" in body["text"] and "Mehmet" in body["text"]
    if "help" in text:
        assert "/privacy" in body["text"]
    else:
        assert "Gizlilik" in body["text"]
    (msg,) = await messages(sessionmaker)
    assert msg.text == text and not msg.reply_wanted  # kept, but no chat reply wanted
    assert state.stats["commands"] == 1


async def test_a_command_for_another_bot_or_a_second_copy_is_not_answered(
    client: Client, sessionmaker: Sessions
) -> None:
    c, bot_id, state = client
    r = await post(c, bot_id, update(1, 71, "/privacy@ayse_scalper_bot"))
    assert r.json() == {"ok": True, "stored": True}
    state.privacy_text = "Verileriniz 30 gün sonra silinir."
    first = await post(c, bot_id, update(2, 72, "/privacy"))
    assert "30 gün sonra silinir" in first.json()["text"]
    again = await post(c, bot_id, update(3, 72, "/privacy"))  # another bot's copy
    assert again.json() == {"ok": True, "stored": False}
    assert "Merhaba /privacy" not in [m.text for m in await messages(sessionmaker)]
    assert (await post(c, bot_id, update(4, 73, "Merhaba /privacy"))).json()["stored"]

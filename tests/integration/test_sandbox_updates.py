"""Sandbox events and their updates/errors, seen through python-telegram-bot and webhooks.

Every update is parsed with ``telegram.Update.de_json``: what PTB parses is the wire format.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import telegram
from telegram.error import BadRequest, Forbidden, InvalidToken

from sandbox.telegram_api import TelegramSandbox
from tests.integration.test_sandbox_telegram import receiver

TOKEN_A = "1001:AAA-token_a"
TOKEN_B = "1002:BBB-token_b"
TOKEN_C = "1003:CCC-token_c"  # in no chat
GROUP = -100500
HUMAN = 42
HANNA = {"id": HUMAN, "is_bot": False, "first_name": "Hanna", "username": "hanna"}
OWNER = 41


@pytest.fixture(autouse=True)
def _ptb_timedelta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # see test_sandbox_telegram.py


@pytest.fixture
async def sandbox() -> AsyncIterator[TelegramSandbox]:
    sb = TelegramSandbox(retry_base_delay=0.05, retry_max_delay=0.2, max_poll_timeout=2.0)
    sb.add_bot(TOKEN_A, "alice_bot", "Alice")
    sb.add_bot(TOKEN_B, "bob_bot", "Bob")
    sb.add_bot(TOKEN_C, "carol_bot", "Carol")
    sb.add_chat(GROUP, "Lounge")
    sb.add_member(GROUP, {"id": OWNER, "first_name": "Olga"}, status="creator")
    sb.add_member(GROUP, HANNA)
    sb.add_bot_to_chat(GROUP, TOKEN_A)
    sb.add_bot_to_chat(GROUP, TOKEN_B)
    await sb.start()
    yield sb
    await sb.stop()


@asynccontextmanager
async def ptb(sandbox: TelegramSandbox, token: str) -> AsyncIterator[telegram.Bot]:
    async with telegram.Bot(token, base_url=sandbox.bot_api_url) as bot:
        yield bot


@asynccontextmanager
async def raw(sandbox: TelegramSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.base_url, trust_env=False) as client:
        yield client


def parsed(sandbox: TelegramSandbox, token: str) -> list[telegram.Update]:
    """The bot's pending updates, parsed by PTB (fails on anything PTB cannot read)."""
    bot = telegram.Bot(token)
    return [telegram.Update.de_json(u, bot) for u in sandbox.pending_updates(token)]


def kinds(sandbox: TelegramSandbox, token: str) -> list[str]:
    return [next(k for k in u if k != "update_id") for u in sandbox.pending_updates(token)]


# ------------------------------------------------------------------------ phase 1
async def test_privacy_mode_filters_group_messages(sandbox: TelegramSandbox) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        me = await bot.get_me()
        assert me.can_read_all_group_messages is True and me.can_join_groups is True
        sandbox.set_privacy(TOKEN_A, True)
        me = await bot.get_me()
        assert me.can_read_all_group_messages is False and me.can_join_groups is True
        own = await bot.send_message(GROUP, "I am Alice")
    texts = ["just chatting", "hey @alice_bot 😀", "hey @ALICE_BOT", "/help@alice_bot",
             "/help@bob_bot", "/start", "mail me@alice_bot.com", "@alice_botx"]
    for text in texts:
        await sandbox.post_as_human(GROUP, HUMAN, text)
    await sandbox.post_as_human(GROUP, HUMAN, "reply to Alice", own.message_id)
    await sandbox.post_as_human(GROUP, HUMAN, "named", entities=[
        {"type": "text_mention", "offset": 0, "length": 5, "user": {
            "id": 1001, "is_bot": True, "first_name": "Alice"}}])
    seen = [u.message.text for u in parsed(sandbox, TOKEN_A) if u.message]
    assert seen == ["hey @alice_bot 😀", "hey @ALICE_BOT", "/help@alice_bot", "/start",
                    "reply to Alice", "named"]
    assert len(parsed(sandbox, TOKEN_B)) == len(texts) + 2  # privacy off: everything
    # An administrator bot sees every message despite privacy mode.
    sandbox.promote_bot(GROUP, TOKEN_A)
    await sandbox.post_as_human(GROUP, HUMAN, "admins see all")
    assert parsed(sandbox, TOKEN_A)[-1].message.text == "admins see all"
    # Over HTTP.
    async with raw(sandbox) as client:
        r = await client.post("/sandbox/bots/1002/privacy", json={"enabled": True})
        assert r.json() == {"ok": True, "result": True}
        r = await client.post("/sandbox/bots/1002/privacy", json={"enabled": "yes"})
        assert r.status_code == 400 and "'enabled'" in r.json()["description"]
        r = await client.post("/sandbox/bots/9/privacy", json={"enabled": True})
        assert r.status_code == 404
    async with ptb(sandbox, TOKEN_B) as bot:
        assert (await bot.get_me()).can_read_all_group_messages is False


async def test_auto_entities_count_utf16(sandbox: TelegramSandbox) -> None:
    msg = await sandbox.post_as_human(GROUP, HUMAN, "/cmd@alice_bot 😀 @bob_bot!")
    assert msg["entities"] == [{"offset": 0, "length": 14, "type": "bot_command"},
                               {"offset": 18, "length": 8, "type": "mention"}]
    update = parsed(sandbox, TOKEN_A)[-1]
    assert update.message is not None
    assert update.message.parse_entities() == {
        telegram.MessageEntity("bot_command", 0, 14): "/cmd@alice_bot",
        telegram.MessageEntity("mention", 18, 8): "@bob_bot"}
    plain = await sandbox.post_as_human(GROUP, HUMAN, "no entities here")
    assert "entities" not in plain


async def test_revoke_token(sandbox: TelegramSandbox) -> None:
    async with receiver() as (rec, url):
        async with ptb(sandbox, TOKEN_A) as bot:
            await bot.set_webhook(f"{url}/hook/a")
        new = sandbox.revoke_token(1001)
        assert new.startswith("1001:") and new != TOKEN_A
        old = telegram.Bot(TOKEN_A, base_url=sandbox.bot_api_url)
        with pytest.raises(InvalidToken):
            await old.initialize()
        await old.shutdown()
        await sandbox.post_as_human(GROUP, HUMAN, "after revoke")
        await asyncio.sleep(0.2)
        assert rec.calls == []  # the webhook went with the old token
        async with ptb(sandbox, new) as bot:
            assert (await bot.get_me()).id == 1001
            assert (await bot.get_webhook_info()).url == ""
            assert [u.message.text for u in await bot.get_updates()
                    if u.message] == ["after revoke"]
            assert (await bot.send_message(GROUP, "new token works")).text == "new token works"
    async with raw(sandbox) as client:
        r = await client.post(f"/bot{TOKEN_A}/sendMessage", json={"chat_id": GROUP, "text": "x"})
        assert (r.status_code, r.json()) == (
            401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        r = await client.post("/sandbox/bots/1002/revoke")
        token = r.json()["result"]["token"]
        assert r.status_code == 200 and token.startswith("1002:")
        r = await client.post(f"/bot{TOKEN_B}/getMe")
        assert r.status_code == 401
        assert (await client.post(f"/bot{token}/getMe")).json()["result"]["id"] == 1002
        r = await client.post("/sandbox/bots/77/revoke")
        assert r.status_code == 404 and "unknown bot 77" in r.json()["description"]
        r = await client.post("/sandbox/bots/x/revoke")
        assert r.status_code == 400 and "bot_id" in r.json()["description"]


async def test_get_chat_member_and_get_chat(sandbox: TelegramSandbox) -> None:
    sandbox.promote_bot(GROUP, TOKEN_B)
    async with ptb(sandbox, TOKEN_A) as bot:
        me = await bot.get_chat_member(GROUP, 1001)
        assert isinstance(me, telegram.ChatMemberMember) and me.user.username == "alice_bot"
        admin = await bot.get_chat_member(GROUP, 1002)
        assert isinstance(admin, telegram.ChatMemberAdministrator)
        assert admin.can_manage_chat and admin.can_delete_messages
        assert admin.can_restrict_members and not admin.can_be_edited and not admin.is_anonymous
        owner = await bot.get_chat_member(GROUP, OWNER)
        assert isinstance(owner, telegram.ChatMemberOwner)
        assert isinstance(await bot.get_chat_member(GROUP, HUMAN), telegram.ChatMemberMember)
        assert isinstance(await bot.get_chat_member(GROUP, 1003), telegram.ChatMemberLeft)
        with pytest.raises(BadRequest, match=r"(?i)user not found"):
            await bot.get_chat_member(GROUP, 999)
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await bot.get_chat_member(-1, 1001)
        chat = await bot.get_chat(GROUP)
        assert (chat.id, chat.type, chat.title, chat.is_forum) == (
            GROUP, "supergroup", "Lounge", None)
    sandbox.restrict_bot(GROUP, TOKEN_A)
    async with ptb(sandbox, TOKEN_A) as bot:
        restricted = await bot.get_chat_member(GROUP, 1001)
        assert isinstance(restricted, telegram.ChatMemberRestricted)
        assert restricted.can_send_messages is False and restricted.is_member is True
        with pytest.raises(BadRequest, match=r"(?i)not enough rights to send text messages"):
            await bot.send_message(GROUP, "muted")
    sandbox.kick_bot(GROUP, TOKEN_A)
    async with ptb(sandbox, TOKEN_A) as bot:
        kicked = await bot.get_chat_member(GROUP, 1001)
        assert isinstance(kicked, telegram.ChatMemberBanned)
        with pytest.raises(Forbidden, match=r"(?i)bot was kicked from the supergroup chat"):
            await bot.get_chat_member(GROUP, HUMAN)
        with pytest.raises(Forbidden, match=r"(?i)bot was kicked"):
            await bot.get_chat(GROUP)
    async with raw(sandbox) as client:
        r = await client.post(f"/bot{TOKEN_A}/getChatMember",
                              json={"chat_id": GROUP, "user_id": 1001})
        assert r.json()["result"] == {"status": "kicked", "until_date": 0, "user": {
            "id": 1001, "is_bot": True, "first_name": "Alice", "username": "alice_bot"}}
        r = await client.post(f"/bot{TOKEN_C}/getChatMember",
                              json={"chat_id": GROUP, "user_id": 1003})
        assert r.json()["result"]["status"] == "left"
    sandbox.add_bot_to_chat(GROUP, TOKEN_A)  # re-adding after a kick works
    async with ptb(sandbox, TOKEN_A) as bot:
        assert isinstance(await bot.get_chat_member(GROUP, 1001), telegram.ChatMemberMember)
        assert (await bot.send_message(GROUP, "back")).text == "back"


async def test_delete_message(sandbox: TelegramSandbox) -> None:
    human = await sandbox.post_as_human(GROUP, HUMAN, "oops")
    sandbox.delete_message(GROUP, human["message_id"])
    async with ptb(sandbox, TOKEN_A) as bot:
        with pytest.raises(BadRequest, match=r"(?i)message to be replied not found"):
            await bot.send_message(GROUP, "re", reply_parameters=telegram.ReplyParameters(
                human["message_id"]))
        sent = await bot.send_message(GROUP, "re", reply_parameters=telegram.ReplyParameters(
            human["message_id"], allow_sending_without_reply=True))
    assert sent.reply_to_message is None
    log = sandbox.messages(GROUP)
    assert [(m["text"], m.get("deleted", False)) for m in log] == [("oops", True), ("re", False)]
    with pytest.raises(ValueError, match="not found"):
        sandbox.delete_message(GROUP, 99)


async def test_parse_mode_validation(sandbox: TelegramSandbox) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        ok = await bot.send_message(GROUP, "<b>bold</b> &amp; <i>it</i>", parse_mode="HTML")
        assert ok.text == "bold & it"
        for bad, fragment in [("<b>open", 'start tag "b"'), ("<blink>x</blink>", '"blink"'),
                              ("<b>x</i>", "Unmatched end tag"), ("x</b>", "Unexpected end")]:
            with pytest.raises(BadRequest, match=r"(?i)can.t parse entities") as info:
                await bot.send_message(GROUP, bad, parse_mode="HTML")
            assert fragment.lower() in str(info.value).lower()
        ok = await bot.send_message(GROUP, r"*bold* _it_ 1\.5 \(ok\)", parse_mode="MarkdownV2")
        assert ok.text == "bold it 1.5 (ok)"
        with pytest.raises(BadRequest) as info:
            await bot.send_message(GROUP, "Done.", parse_mode="MarkdownV2")
        assert info.value.message == ("Can't parse entities: character '.' is reserved and "
                                      "must be escaped with the preceding '\\'")
        with pytest.raises(BadRequest, match=r"(?i)bold entity"):
            await bot.send_message(GROUP, "*open", parse_mode="MarkdownV2")
        verbatim = await bot.send_message(GROUP, "<b>1.5*</b>")
        assert verbatim.text == "<b>1.5*</b>"
    async with raw(sandbox) as client:
        r = await client.post(f"/bot{TOKEN_A}/sendMessage", json={
            "chat_id": GROUP, "text": "Done.", "parse_mode": "MarkdownV2"})
    assert r.json()["description"] == (
        "Bad Request: can't parse entities: Character '.' is reserved and must be escaped "
        "with the preceding '\\'")


async def test_message_thread_id_in_a_forum(sandbox: TelegramSandbox) -> None:
    forum = sandbox.add_chat(-100900, "Forum", is_forum=True)
    assert forum == {"id": -100900, "title": "Forum", "type": "supergroup", "is_forum": True}
    sandbox.add_bot_to_chat(-100900, TOKEN_A)
    async with ptb(sandbox, TOKEN_A) as bot:
        with pytest.raises(BadRequest, match=r"(?i)message thread not found"):
            await bot.send_message(-100900, "x", message_thread_id=5)
        assert (await bot.get_chat(-100900)).is_forum is True
        plain = await bot.send_message(GROUP, "no forum", message_thread_id=5)
    assert plain.message_thread_id is None  # outside forums the thread id is ignored


async def test_default_allowed_updates_skip_opt_in_kinds(sandbox: TelegramSandbox) -> None:
    reaction = {"chat": {"id": GROUP, "type": "supergroup", "title": "Lounge"},
                "message_id": 1, "date": 1, "old_reaction": [], "new_reaction": []}
    sandbox.deliver_raw(TOKEN_A, {"message_reaction": reaction})
    await sandbox.post_as_human(GROUP, HUMAN, "hi")
    async with ptb(sandbox, TOKEN_A) as bot:
        assert [u.message is not None for u in await bot.get_updates()] == [True]
    sandbox.deliver_raw(TOKEN_B, {"message_reaction": reaction})
    sandbox.deliver_raw(TOKEN_B, {"chat_member": {}})
    async with ptb(sandbox, TOKEN_B) as bot:
        updates = await bot.get_updates(allowed_updates=["message_reaction"])
        assert [u.message_reaction is not None for u in updates] == [True]


# ------------------------------------------------------------------------ phase 2
ALICE = {"id": 1001, "is_bot": True, "first_name": "Alice", "username": "alice_bot"}
OLGA = {"id": OWNER, "is_bot": False, "first_name": "Olga"}


async def test_kick_delivers_my_chat_member_service_message_and_chat_member(
        sandbox: TelegramSandbox) -> None:
    sandbox.promote_bot(GROUP, TOKEN_B)
    sandbox.kick_bot(GROUP, TOKEN_A)
    [kicked] = sandbox.pending_updates(TOKEN_A)
    change = kicked["my_chat_member"]
    assert change["chat"] == {"id": GROUP, "title": "Lounge", "type": "supergroup"}
    assert change["from"] == OLGA and isinstance(change["date"], int)
    assert change["old_chat_member"] == {"status": "member", "user": ALICE}
    assert change["new_chat_member"] == {"status": "kicked", "user": ALICE, "until_date": 0}
    async with ptb(sandbox, TOKEN_A) as bot:
        [update] = await bot.get_updates()
        assert update.my_chat_member is not None
        assert update.my_chat_member.new_chat_member.status == "kicked"
        assert update.my_chat_member.from_user.id == OWNER
    assert kinds(sandbox, TOKEN_B) == ["my_chat_member", "chat_member", "message"]
    async with ptb(sandbox, TOKEN_B) as bot:
        promoted, left = await bot.get_updates()  # chat_member is opt-in
        assert promoted.my_chat_member is not None
        assert promoted.my_chat_member.new_chat_member.status == "administrator"
        assert left.message is not None and left.message.left_chat_member is not None
        assert left.message.left_chat_member.id == 1001 and left.message.from_user.id == OWNER
        assert left.message.message_id == 1
        sandbox.kick_bot(GROUP, TOKEN_A, by_user_id=HUMAN)  # again: no status change
        sandbox.add_bot_to_chat(GROUP, TOKEN_C)
        sandbox.kick_bot(GROUP, TOKEN_C, by_user_id=HUMAN)
        updates = await bot.get_updates(offset=left.update_id + 1,
                                        allowed_updates=["message", "chat_member"])
    assert [u.chat_member is not None for u in updates] == [True, False]
    member = updates[0].chat_member
    assert member is not None and member.from_user.id == HUMAN
    assert (member.old_chat_member.user.id, member.new_chat_member.status) == (1003, "kicked")


async def test_add_bot_with_notify_and_over_http(sandbox: TelegramSandbox) -> None:
    async with raw(sandbox) as client:
        r = await client.post(f"/sandbox/chats/{GROUP}/bots", json={"bot_id": 1003})
        assert r.json() == {"ok": True, "result": True}
    assert kinds(sandbox, TOKEN_C) == ["my_chat_member", "message"]
    async with ptb(sandbox, TOKEN_C) as bot:
        joined, service = await bot.get_updates()
    assert joined.my_chat_member is not None
    assert (joined.my_chat_member.old_chat_member.status,
            joined.my_chat_member.new_chat_member.status) == ("left", "member")
    assert service.message is not None
    assert [u.id for u in service.message.new_chat_members] == [1003]
    for token in (TOKEN_A, TOKEN_B):
        [update] = parsed(sandbox, token)
        assert update.message is not None and update.message.new_chat_members[0].id == 1003
    sandbox.restrict_bot(GROUP, TOKEN_C)
    restricted = parsed(sandbox, TOKEN_C)[-1].my_chat_member
    assert restricted is not None and restricted.new_chat_member.status == "restricted"
    sandbox.add_bot_to_chat(-100500, TOKEN_C)  # silent by default
    assert len(sandbox.pending_updates(TOKEN_C)) == 3


async def test_humans_join_leave_and_title(sandbox: TelegramSandbox) -> None:
    sandbox.promote_bot(GROUP, TOKEN_B)
    sandbox.set_privacy(TOKEN_A, True)  # service messages pass privacy mode
    sandbox.human_joins(GROUP, {"id": 7, "first_name": "Nina", "username": "nina"})
    sandbox.human_leaves(GROUP, HUMAN)
    sandbox.set_title(GROUP, "Salon")
    await sandbox.post_as_human(GROUP, 7, "hello @alice_bot")
    messages = [u.message for u in parsed(sandbox, TOKEN_A)]
    assert all(m is not None for m in messages)
    joined, left, title, hello = (m for m in messages if m is not None)
    assert [u.username for u in joined.new_chat_members] == ["nina"]
    assert joined.from_user.id == 7
    assert left.left_chat_member.id == HUMAN and left.from_user.id == HUMAN
    assert title.new_chat_title == "Salon" and title.from_user.id == OWNER
    assert hello.chat.title == "Salon"
    assert [m.message_id for m in (joined, left, title, hello)] == [1, 2, 3, 4]
    assert kinds(sandbox, TOKEN_B) == ["my_chat_member", "chat_member", "message",
                                       "chat_member", "message", "message", "message"]
    changes = [u.chat_member for u in parsed(sandbox, TOKEN_B) if u.chat_member]
    assert [(c.old_chat_member.status, c.new_chat_member.status) for c in changes] == [
        ("left", "member"), ("member", "left")]
    with pytest.raises(ValueError, match="not a member"):
        await sandbox.post_as_human(GROUP, HUMAN, "gone")


@pytest.mark.parametrize("order", ["to_first", "from_first"])
async def test_migrate_delivers_both_service_messages(
        sandbox: TelegramSandbox, order: str) -> None:
    sandbox.add_chat(-500, "Small", "group")
    sandbox.add_member(-500, HANNA)
    sandbox.add_bot_to_chat(-500, TOKEN_A)
    await sandbox.post_as_human(-500, HUMAN, "before")
    sandbox.migrate_chat(-500, -100777, order=order)
    async with ptb(sandbox, TOKEN_A) as bot:
        updates = await bot.get_updates()
        with pytest.raises(telegram.error.ChatMigrated) as info:
            await bot.send_message(-500, "hi")
        assert info.value.new_chat_id == -100777
    messages = [u.message for u in updates if u.message]
    assert messages[0].text == "before"
    to = next(m for m in messages if m.migrate_to_chat_id)
    came = next(m for m in messages if m.migrate_from_chat_id)
    assert (to.chat.id, to.chat.type, to.migrate_to_chat_id, to.message_id) == (
        -500, "group", -100777, 2)
    assert (came.chat.id, came.chat.type, came.migrate_from_chat_id, came.message_id) == (
        -100777, "supergroup", -500, 1)
    assert messages.index(to) < messages.index(came) if order == "to_first" else (
        messages.index(came) < messages.index(to))
    assert [u.update_id for u in updates] == [1, 2, 3]


async def test_forum_topics(sandbox: TelegramSandbox) -> None:
    forum = -100900
    sandbox.add_chat(forum, "Forum", is_forum=True)
    sandbox.add_member(forum, HANNA)
    sandbox.add_bot_to_chat(forum, TOKEN_A)
    general = await sandbox.post_as_human(forum, HUMAN, "in General")
    assert "message_thread_id" not in general and "is_topic_message" not in general
    thread = sandbox.create_topic(forum, "Rates", by_user_id=HUMAN)
    assert thread == 2
    first = await sandbox.post_as_human(forum, HUMAN, "topic post", message_thread_id=thread)
    reply = await sandbox.post_as_human(forum, HUMAN, "in reply", first["message_id"])
    async with ptb(sandbox, TOKEN_A) as bot:
        g, created, post, re_post = (u.message for u in await bot.get_updates())
        sent = await bot.send_message(forum, "bot in topic", message_thread_id=thread)
        answer = await bot.send_message(forum, "bot reply", reply_parameters=(
            telegram.ReplyParameters(reply["message_id"])))
    assert g is not None and g.message_thread_id is None and g.is_topic_message is None
    assert created is not None and created.forum_topic_created is not None
    assert (created.forum_topic_created.name, created.message_thread_id) == ("Rates", 2)
    assert created.forum_topic_created.icon_color == 7322096
    assert post is not None and (post.message_thread_id, post.is_topic_message) == (2, True)
    # Real Telegram: a topic message replying to nothing replies to the topic's creation.
    assert post.reply_to_message is not None
    assert post.reply_to_message.forum_topic_created is not None
    assert re_post is not None and re_post.message_thread_id == 2
    assert re_post.reply_to_message is not None and re_post.reply_to_message.text == "topic post"
    assert (sent.message_thread_id, sent.is_topic_message) == (2, True)
    assert sent.reply_to_message is not None and sent.reply_to_message.message_id == 2
    assert (answer.message_thread_id, answer.reply_to_message.text) == (2, "in reply")
    with pytest.raises(ValueError, match="not a topic"):
        await sandbox.post_as_human(forum, HUMAN, "x", message_thread_id=99)
    with pytest.raises(ValueError, match="not a forum"):
        sandbox.create_topic(GROUP, "nope")


async def test_anonymous_admin_and_channel_posts(sandbox: TelegramSandbox) -> None:
    await sandbox.post_as_anonymous_admin(GROUP, "admin speaking", author_signature="Mod")
    channel = {"id": -1009999, "title": "News"}
    await sandbox.post_as_channel(GROUP, channel, "breaking")
    await sandbox.post_as_channel(GROUP, channel, "more news")
    await sandbox.post_as_channel(GROUP, channel, "as channel", automatic_forward=False)
    async with ptb(sandbox, TOKEN_A) as bot:
        anon, auto, auto2, as_channel = (u.message for u in await bot.get_updates())
    assert anon is not None and anon.from_user is not None and anon.sender_chat is not None
    assert (anon.from_user.id, anon.from_user.username) == (1087968824, "GroupAnonymousBot")
    assert (anon.sender_chat.id, anon.author_signature) == (GROUP, "Mod")
    assert auto is not None and auto.from_user is not None and auto.sender_chat is not None
    assert (auto.from_user.id, auto.from_user.first_name) == (777000, "Telegram")
    assert (auto.sender_chat.id, auto.sender_chat.type) == (-1009999, "channel")
    assert auto.is_automatic_forward is True
    origin = auto.forward_origin
    assert isinstance(origin, telegram.MessageOriginChannel)
    assert (origin.chat.id, origin.message_id) == (-1009999, 1)
    assert auto2 is not None and isinstance(auto2.forward_origin, telegram.MessageOriginChannel)
    assert auto2.forward_origin.message_id == 2
    assert as_channel is not None and as_channel.from_user is not None
    assert (as_channel.from_user.id, as_channel.from_user.username) == (136817688, "Channel_Bot")
    assert as_channel.sender_chat is not None and as_channel.sender_chat.id == -1009999
    assert as_channel.is_automatic_forward is None and as_channel.forward_origin is None


async def test_forward_edit_and_photo(sandbox: TelegramSandbox) -> None:
    sandbox.set_privacy(TOKEN_B, True)
    source = {"id": 5, "is_bot": False, "first_name": "Sam"}
    first = await sandbox.post_as_human(GROUP, HUMAN, "fwd", forward_from=source)
    await sandbox.edit_as_human(GROUP, first["message_id"], "fwd @bob_bot")
    await sandbox.post_photo_as_human(GROUP, HUMAN, caption="look @bob_bot")
    await sandbox.post_photo_as_human(GROUP, HUMAN)
    async with ptb(sandbox, TOKEN_A) as bot:
        fwd, edited, photo, bare = await bot.get_updates()
    assert fwd.message is not None
    assert isinstance(fwd.message.forward_origin, telegram.MessageOriginUser)
    assert fwd.message.forward_origin.sender_user.id == 5
    assert edited.edited_message is not None and edited.edited_message.edit_date is not None
    assert edited.edited_message.text == "fwd @bob_bot"
    assert photo.message is not None and photo.message.caption == "look @bob_bot"
    assert [p.width for p in photo.message.photo] == [90, 320, 800]
    assert photo.message.caption_entities[0].type == "mention"
    assert bare.message is not None and bare.message.caption is None
    # Privacy mode: Bob sees the edit and the photo that mention him only.
    assert kinds(sandbox, TOKEN_B) == ["edited_message", "message"]


async def test_raw_updates_reach_a_webhook_receiver(sandbox: TelegramSandbox) -> None:
    chat = {"id": -1009999, "type": "channel", "title": "News"}
    payloads: list[dict[str, Any]] = [
        {"callback_query": {"id": "1", "from": HANNA, "chat_instance": "ci", "data": "x"}},
        {"channel_post": {"message_id": 1, "date": 1, "chat": chat, "text": "post"}},
        {"poll": {"id": "p", "question": "q?", "options": [
            {"text": "a", "voter_count": 0, "persistent_id": "a"},
            {"text": "b", "voter_count": 1, "persistent_id": "b"}],
            "total_voter_count": 1, "is_closed": False, "is_anonymous": True,
            "type": "regular", "allows_multiple_answers": False, "allows_revoting": False,
                  "members_only": False}},
        {"message_reaction": {"chat": {"id": GROUP, "type": "supergroup"}, "message_id": 1,
                              "date": 1, "user": HANNA, "old_reaction": [],
                              "new_reaction": [{"type": "emoji", "emoji": "👍"}]}},
    ]
    async with receiver() as (rec, url):
        async with ptb(sandbox, TOKEN_A) as a, ptb(sandbox, TOKEN_B) as b:
            await a.set_webhook(f"{url}/hook/a")
            await b.set_webhook(f"{url}/hook/b", allowed_updates=[
                "callback_query", "channel_post", "poll", "message_reaction"])
        for payload in payloads:
            sandbox.deliver_raw(TOKEN_A, payload)
            sandbox.deliver_raw(TOKEN_B, payload)
        async with raw(sandbox) as client:
            r = await client.post("/sandbox/bots/1002/updates", json=payloads[0])
            assert r.json() == {"ok": True, "result": {"update_id": 5}}
        await rec.wait_for(3 + 5)
        await asyncio.sleep(0.1)
    got: dict[str, list[str]] = {}
    for name, _headers, update in rec.calls:
        parsed_update = telegram.Update.de_json(update, telegram.Bot(TOKEN_A))
        assert parsed_update.update_id == update["update_id"]
        got.setdefault(name, []).append(next(k for k in update if k != "update_id"))
    assert got["a"] == ["callback_query", "channel_post", "poll"]  # reactions are opt-in
    assert got["b"] == ["callback_query", "channel_post", "poll", "message_reaction",
                        "callback_query"]


async def test_live_event_endpoints(sandbox: TelegramSandbox) -> None:
    sandbox.add_chat(-100900, "Forum", is_forum=True)
    sandbox.add_bot_to_chat(-100900, TOKEN_A)
    sandbox.add_chat(-500, "Small", "group")
    sandbox.add_bot_to_chat(-500, TOKEN_A)
    async with raw(sandbox) as client:
        async def post(path: str, body: Any = None) -> Any:
            r = await client.post(path, json={} if body is None else body)
            assert r.status_code == 200, r.text
            return r.json()["result"]

        topic = await post("/sandbox/chats/-100900/topics", {"name": "Rates"})
        assert topic == {"message_thread_id": 1}
        msg = await post("/sandbox/chats/-100900/messages", {
            "user_id": 9, "first_name": "Ida", "text": "hi", "message_thread_id": 1})
        assert (msg["message_thread_id"], msg["is_topic_message"]) == (1, True)
        anon = await post("/sandbox/chats/-100900/anonymous", {"text": "mods here"})
        assert anon["from"]["id"] == 1087968824
        ch = await post(f"/sandbox/chats/{GROUP}/channel_posts",
                        {"channel": {"id": -1001, "title": "C"}, "text": "post"})
        assert ch["is_automatic_forward"] is True
        joined = await post(f"/sandbox/chats/{GROUP}/members", {"id": 8, "first_name": "Ed"})
        assert joined["new_chat_members"][0]["id"] == 8
        left = await post(f"/sandbox/chats/{GROUP}/members/8/leave")
        assert left["left_chat_member"]["id"] == 8
        assert (await post(f"/sandbox/chats/{GROUP}/title", {"title": "T"}))[
            "new_chat_title"] == "T"
        edited = await post(f"/sandbox/chats/-100900/messages/{msg['message_id']}/edit",
                            {"text": "hello"})
        assert edited["text"] == "hello" and "edit_date" in edited
        assert await post(f"/sandbox/chats/-100900/messages/{msg['message_id']}/delete")
        assert await post(f"/sandbox/chats/{GROUP}/promote", {"bot_id": 1002})
        assert await post(f"/sandbox/chats/{GROUP}/restrict", {"bot_id": 1002})
        assert await post(f"/sandbox/chats/{GROUP}/kick", {"bot_id": 1001, "by_user_id": 42})
        new = await post("/sandbox/chats/-500/migrate", {"new_chat_id": -100501,
                                                        "order": "from_first"})
        assert new == {"id": -100501, "title": "Small", "type": "supergroup"}
        bad = [
            (f"/sandbox/chats/{GROUP}/kick", {}, 400, "'bot_id'"),
            (f"/sandbox/chats/{GROUP}/kick", {"bot_id": "1"}, 400, "'bot_id'"),
            (f"/sandbox/chats/{GROUP}/kick", {"bot_id": 5}, 404, "unknown bot 5"),
            (f"/sandbox/chats/{GROUP}/kick", {"bot_id": 1002, "by_user_id": 3}, 404,
             "by_user_id"),
            ("/sandbox/chats/-1/kick", {"bot_id": 1002}, 404, "chat -1"),
            (f"/sandbox/chats/{GROUP}/migrate", {"new_chat_id": GROUP}, 400, "already exists"),
            (f"/sandbox/chats/{GROUP}/migrate", {"new_chat_id": -3, "order": "x"}, 400,
             "order"),
            (f"/sandbox/chats/{GROUP}/topics", {"name": "x"}, 400, "not a forum"),
            ("/sandbox/chats/-100900/topics", {}, 400, "'name'"),
            ("/sandbox/chats/-100900/anonymous", {"text": 5}, 400, "'text'"),
            (f"/sandbox/chats/{GROUP}/channel_posts", {"text": "x"}, 400, "'channel'"),
            (f"/sandbox/chats/{GROUP}/channel_posts", {"text": "x", "channel": {"id": 1}},
             400, "'title'"),
            (f"/sandbox/chats/{GROUP}/messages", {"user_id": 42, "text": "x",
                                                  "message_thread_id": "1"}, 400,
             "'message_thread_id'"),
            (f"/sandbox/chats/{GROUP}/teleport", {}, 404, "unknown action"),
            (f"/sandbox/chats/{GROUP}/members/99/leave", None, 404, "user_id 99"),
            ("/sandbox/bots/1001/updates", {"a": 1, "b": 2}, 400, "payload"),
        ]
        for path, body, status, fragment in bad:
            r = await client.post(path, json={} if body is None else body)
            assert r.status_code == status, (path, body, r.text)
            assert fragment in r.json()["description"], (path, body, r.text)

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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from telegram.error import BadRequest, Forbidden, InvalidToken

from sandbox.telegram_api import BackgroundServer, TelegramSandbox

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


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every POSTed update per bot name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.got = asyncio.Event()
        self.app = Starlette(routes=[Route("/hook/{name}", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> JSONResponse:
        self.calls.append((request.path_params["name"], await request.json()))
        self.got.set()
        return JSONResponse({})

    async def wait_for(self, count: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while len(self.calls) < count:
                self.got.clear()
                await self.got.wait()


@asynccontextmanager
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    server = await BackgroundServer.start(rec.app)
    try:
        yield rec, server.url
    finally:
        await server.stop()


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

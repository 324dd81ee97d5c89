"""Drive sandbox.telegram_api with the real python-telegram-bot client and raw httpx."""

from __future__ import annotations

import asyncio
import datetime as dtm
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import telegram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from telegram.error import BadRequest, ChatMigrated, Conflict, Forbidden, InvalidToken, RetryAfter

from sandbox.telegram_api import (
    SECRET_HEADER,
    BackgroundServer,
    Limits,
    SandboxError,
    TelegramSandbox,
)

TOKEN_A = "1001:AAA-token_a"
TOKEN_B = "1002:BBB-token_b"
TOKEN_C = "1003:CCC-token_c"  # not a member of the group
GROUP = -100500
OTHER_GROUP = -100600
HUMAN = 42


class FakeClock:
    """Monotonic clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def _ptb_timedelta(monkeypatch: pytest.MonkeyPatch) -> None:
    # PTB 22 warns (PTBDeprecationWarning, an error under filterwarnings=error) when
    # RetryAfter.retry_after is read as int -- even inside RetryAfter.__init__. Opting in to
    # timedelta values is the non-deprecated way.
    monkeypatch.setenv("PTB_TIMEDELTA", "true")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sandbox(clock: FakeClock) -> AsyncIterator[TelegramSandbox]:
    sb = TelegramSandbox(clock=clock, retry_base_delay=0.05, retry_max_delay=0.2,
                         webhook_timeout=2.0, max_poll_timeout=3.0)
    sb.add_bot(TOKEN_A, "alice_bot", "Alice")
    sb.add_bot(TOKEN_B, "bob_bot", "Bob")
    sb.add_bot(TOKEN_C, "carol_bot", "Carol")
    sb.add_chat(GROUP, "Lounge")
    sb.add_chat(OTHER_GROUP, "Other")
    sb.add_member(GROUP, {"id": HUMAN, "first_name": "Hanna", "username": "hanna"})
    for token in (TOKEN_A, TOKEN_B):
        sb.add_bot_to_chat(GROUP, token)
    sb.add_bot_to_chat(OTHER_GROUP, TOKEN_A)
    await sb.start()
    yield sb
    await sb.stop()


@asynccontextmanager
async def ptb(sandbox: TelegramSandbox, token: str) -> AsyncIterator[telegram.Bot]:
    bot = telegram.Bot(token, base_url=sandbox.bot_api_url)
    async with bot:
        yield bot


@asynccontextmanager
async def raw(sandbox: TelegramSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.base_url, trust_env=False) as client:
        yield client


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within} s")


def seconds(value: int | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


class Receiver:
    """A real webhook receiver on 127.0.0.1; answers with ``statuses`` then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.calls: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.got = asyncio.Event()
        self.app = Starlette(routes=[Route("/hook/{name}", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> JSONResponse:
        self.calls.append((request.path_params["name"], dict(request.headers),
                           await request.json()))
        self.got.set()
        return JSONResponse({}, status_code=self.statuses.pop(0) if self.statuses else 200)

    async def wait_for(self, count: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while len(self.calls) < count:
                self.got.clear()
                await self.got.wait()


@asynccontextmanager
async def receiver(statuses: list[int] | None = None) -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver(statuses)
    server = await BackgroundServer.start(rec.app)
    try:
        yield rec, server.url
    finally:
        await server.stop()


# ----------------------------------------------------------------------------- basics
async def test_get_me(sandbox: TelegramSandbox) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        me = await bot.get_me()
    assert (me.id, me.username, me.first_name, me.is_bot) == (1001, "alice_bot", "Alice", True)


async def test_send_message_returns_full_message_and_is_logged(
        sandbox: TelegramSandbox) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        msg = await bot.send_message(GROUP, "hello group")
    assert msg.message_id == 1
    assert msg.text == "hello group"
    assert (msg.chat.id, msg.chat.title, msg.chat.type) == (GROUP, "Lounge", "supergroup")
    assert msg.from_user is not None and msg.from_user.id == 1001 and msg.from_user.is_bot
    assert abs(msg.date.timestamp() - dtm.datetime.now(dtm.UTC).timestamp()) < 5
    log = sandbox.messages(GROUP)
    assert [(m["message_id"], m["from"]["id"], m["text"]) for m in log] == [
        (1, 1001, "hello group")]
    assert sandbox.stats["sent"] == {1001: 1}


async def test_reply_parameters_and_reply_to_message_id(sandbox: TelegramSandbox) -> None:
    human = await sandbox.post_as_human(GROUP, HUMAN, "anyone here?")
    async with ptb(sandbox, TOKEN_A) as bot:
        reply = await bot.send_message(
            GROUP, "yes", reply_parameters=telegram.ReplyParameters(human["message_id"]))
    assert reply.reply_to_message is not None
    assert reply.reply_to_message.message_id == human["message_id"]
    assert reply.reply_to_message.text == "anyone here?"
    # Older flat wire parameter, form-encoded like PTB sends.
    async with raw(sandbox) as client:
        r = await client.post(f"/bot{TOKEN_B}/sendMessage", data={
            "chat_id": str(GROUP), "text": "me too", "reply_to_message_id": str(reply.message_id)})
    body = r.json()
    assert r.status_code == 200 and body["ok"] is True
    assert body["result"]["reply_to_message"]["message_id"] == reply.message_id
    assert "reply_to_message" not in body["result"]["reply_to_message"]  # not nested further
    assert [m["message_id"] for m in sandbox.messages(GROUP)] == [1, 2, 3]


async def test_reply_to_unknown_message(sandbox: TelegramSandbox) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        with pytest.raises(BadRequest, match=r"(?i)message to be replied not found"):
            await bot.send_message(GROUP, "hm", reply_parameters=telegram.ReplyParameters(77))
        msg = await bot.send_message(GROUP, "hm", reply_parameters=telegram.ReplyParameters(
            77, allow_sending_without_reply=True))
    assert msg.reply_to_message is None
    assert len(sandbox.messages(GROUP)) == 1


async def test_text_validation(sandbox: TelegramSandbox) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        with pytest.raises(BadRequest, match=r"(?i)message is too long"):
            await bot.send_message(GROUP, "x" * 4097)
        with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
            await bot.send_message(GROUP, "   \n ")
        ok = await bot.send_message(GROUP, "y" * 4096)
    assert len(ok.text or "") == 4096
    assert len(sandbox.messages(GROUP)) == 1


async def test_chat_errors(sandbox: TelegramSandbox) -> None:
    async with ptb(sandbox, TOKEN_C) as bot:
        with pytest.raises(Forbidden, match=r"(?i)bot is not a member of the supergroup chat"):
            await bot.send_message(GROUP, "hi")
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await bot.send_message(-999, "hi")
    sandbox.kick_bot(GROUP, TOKEN_B)
    sandbox.migrate_chat(OTHER_GROUP, -100700)
    async with ptb(sandbox, TOKEN_B) as bot:
        with pytest.raises(Forbidden, match=r"(?i)bot was kicked from the supergroup chat"):
            await bot.send_message(GROUP, "hi")
    async with ptb(sandbox, TOKEN_A) as bot:
        with pytest.raises(ChatMigrated) as info:
            await bot.send_message(OTHER_GROUP, "hi")
        assert info.value.new_chat_id == -100700
        assert (await bot.send_message(-100700, "moved")).chat.id == -100700


async def test_unknown_token_is_401(sandbox: TelegramSandbox) -> None:
    bot = telegram.Bot("999:not-registered", base_url=sandbox.bot_api_url)
    with pytest.raises(InvalidToken):
        await bot.initialize()
    await bot.shutdown()
    async with raw(sandbox) as client:
        r = await client.post("/bot999:not-registered/getMe")
    assert (r.status_code, r.json()) == (
        401, {"ok": False, "error_code": 401, "description": "Unauthorized"})


async def test_unknown_method_is_404_and_methods_are_case_insensitive(
        sandbox: TelegramSandbox) -> None:
    async with raw(sandbox) as client:
        r = await client.post(f"/bot{TOKEN_A}/sendTelepathy", json={"chat_id": GROUP})
        assert (r.status_code, r.json()) == (
            404, {"ok": False, "error_code": 404, "description": "Not Found"})
        r = await client.get(f"/bot{TOKEN_A}/GETME")
        assert r.status_code == 200 and r.json()["result"]["username"] == "alice_bot"
        # JSON body with a nested object, and query-string parameters.
        human = await sandbox.post_as_human(GROUP, HUMAN, "q")
        r = await client.post(f"/bot{TOKEN_A}/sendmessage", json={
            "chat_id": GROUP, "text": "a", "reply_parameters": {"message_id": human["message_id"]}})
        assert r.json()["result"]["reply_to_message"]["message_id"] == human["message_id"]
        r = await client.get(f"/bot{TOKEN_A}/sendMessage",
                             params={"chat_id": GROUP, "text": "from query"})
        assert r.json()["result"]["text"] == "from query"
        # multipart/form-data, as PTB sends when a request carries files.
        r = await client.post(f"/bot{TOKEN_A}/sendMessage",
                              data={"chat_id": str(OTHER_GROUP), "text": "multi part ✓"},
                              files={"unused": ("a.txt", b"file", "text/plain")})
        assert r.json()["result"]["text"] == "multi part ✓"


# ------------------------------------------------------------------------ updates
async def test_get_updates_confirms_by_offset_and_expires(
        sandbox: TelegramSandbox, clock: FakeClock) -> None:
    await sandbox.post_as_human(GROUP, HUMAN, "one")
    await sandbox.post_as_human(GROUP, HUMAN, "two")
    async with ptb(sandbox, TOKEN_B) as bot:
        updates = await bot.get_updates()
        assert [(u.update_id, u.message.text) for u in updates if u.message] == [
            (1, "one"), (2, "two")]
        assert len(await bot.get_updates(offset=2)) == 1
        assert await bot.get_updates(offset=3) == ()
    async with ptb(sandbox, TOKEN_C) as bot:  # not in the group: nothing queued
        assert await bot.get_updates() == ()
    await sandbox.post_as_human(GROUP, HUMAN, "old")
    clock.advance(24 * 3600 + 1)
    async with ptb(sandbox, TOKEN_A) as bot:
        assert await bot.get_updates() == ()
    assert sandbox.stats["updates_expired"] >= 1


async def test_bot_messages_not_delivered_to_bots(sandbox: TelegramSandbox) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        await bot.send_message(GROUP, "from a bot")
    await sandbox.post_as_human(GROUP, HUMAN, "from a human")
    for token in (TOKEN_A, TOKEN_B):
        assert [u["message"]["text"] for u in sandbox.pending_updates(token)] == ["from a human"]


async def test_get_updates_conflicts(sandbox: TelegramSandbox) -> None:
    async with raw(sandbox) as client:
        first = asyncio.create_task(
            client.post(f"/bot{TOKEN_A}/getUpdates", json={"timeout": 3}))
        await asyncio.sleep(0.2)
        second = await client.post(f"/bot{TOKEN_A}/getUpdates", json={"timeout": 0})
        old = await first
    assert second.status_code == 200 and second.json()["result"] == []
    assert old.status_code == 409
    assert old.json()["description"] == ("Conflict: terminated by other getUpdates request; "
                                         "make sure that only one bot instance is running")
    async with ptb(sandbox, TOKEN_A) as bot:
        assert await bot.set_webhook("http://127.0.0.1:9/hook")
        with pytest.raises(Conflict, match="can't use getUpdates method while webhook is active"):
            await bot.get_updates()
        assert await bot.delete_webhook()
        assert await bot.get_updates() == ()


async def test_long_poll_returns_when_a_human_posts(sandbox: TelegramSandbox) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        poll = asyncio.create_task(bot.get_updates(timeout=3))
        await asyncio.sleep(0.2)
        await sandbox.post_as_human(GROUP, HUMAN, "wake up")
        updates = await asyncio.wait_for(poll, 2)
    assert [u.message.text for u in updates if u.message] == ["wake up"]


# ------------------------------------------------------------------------- limits
async def test_429_for_two_plus_messages_per_second_in_one_chat(
        sandbox: TelegramSandbox, clock: FakeClock) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        for i in range(3):  # burst capacity 3
            await bot.send_message(GROUP, f"burst {i}")
        with pytest.raises(RetryAfter) as info:
            await bot.send_message(GROUP, "one too many")
        assert seconds(info.value.retry_after) == 1
        assert "Too Many Requests: retry after 1" in str(
            (await _raw_send(sandbox, TOKEN_A, GROUP))["description"])
        assert sandbox.stats["ignored_retry_after"] == 1  # the raw retry ignored the penalty
        await bot.send_message(OTHER_GROUP, "other chats are not limited")
        clock.advance(1)
        await bot.send_message(GROUP, "after waiting")
    assert sandbox.stats["too_many_requests"] == 2
    assert sandbox.stats["sent"] == {1001: 5}


async def _raw_send(sandbox: TelegramSandbox, token: str, chat_id: int) -> dict[str, Any]:
    async with raw(sandbox) as client:
        r = await client.post(f"/bot{token}/sendMessage", json={"chat_id": chat_id, "text": "x"})
    body: dict[str, Any] = r.json()
    assert r.status_code == body.get("error_code", 200)
    return body


async def test_429_when_exceeding_20_per_minute_in_a_group(
        sandbox: TelegramSandbox, clock: FakeClock) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        for i in range(20):
            await bot.send_message(GROUP, f"msg {i}")
            clock.advance(1)
        with pytest.raises(RetryAfter) as info:
            await bot.send_message(GROUP, "21st within a minute")
        assert seconds(info.value.retry_after) == 40  # first send was at t=0, now t=20
        body = await _raw_send(sandbox, TOKEN_A, GROUP)
        assert body["error_code"] == 429 and body["parameters"]["retry_after"] == 40
        assert sandbox.stats["ignored_retry_after"] == 1
        await bot.send_message(OTHER_GROUP, "another group has its own budget")
        clock.advance(39)
        with pytest.raises(RetryAfter):
            await bot.send_message(GROUP, "still under the penalty")
        clock.advance(1)
        await bot.send_message(GROUP, "window moved on")
    async with ptb(sandbox, TOKEN_B) as other:  # limits are per bot token
        await other.send_message(GROUP, "bob has his own budget")


async def test_global_30_per_second(sandbox: TelegramSandbox) -> None:
    for i in range(11):
        sandbox.add_chat(-200 - i, f"room {i}")
        sandbox.add_bot_to_chat(-200 - i, TOKEN_A)
    sent = 0
    async with raw(sandbox) as client:
        for i in range(11):
            for _ in range(3):
                r = await client.post(f"/bot{TOKEN_A}/sendMessage",
                                      json={"chat_id": -200 - i, "text": "bulk"})
                sent += r.status_code == 200
    assert sent == 30
    assert sandbox.stats["too_many_requests"] == 3


async def test_chat_action_limits(sandbox: TelegramSandbox, clock: FakeClock) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        for _ in range(20):
            assert await bot.send_chat_action(GROUP, "typing")
        with pytest.raises(RetryAfter) as info:
            await bot.send_chat_action(GROUP, "typing")
        assert seconds(info.value.retry_after) == 5
        clock.advance(5)
        for _ in range(20):
            assert await bot.send_chat_action(GROUP, "typing")
        clock.advance(5)
        with pytest.raises(RetryAfter) as info:  # 40 per 30 s
            await bot.send_chat_action(GROUP, "typing")
        assert seconds(info.value.retry_after) == 20
    assert sandbox.stats["chat_actions"] == 40


async def test_limits_are_configurable(clock: FakeClock) -> None:
    sb = TelegramSandbox(clock=clock, limits=Limits(chat_burst=1, group_per_minute=2))
    sb.add_bot(TOKEN_A, "alice_bot", "Alice")
    sb.add_chat(GROUP, "Lounge", "group")
    sb.add_bot_to_chat(GROUP, 1001)
    await sb.start()
    try:
        assert (await _raw_send(sb, TOKEN_A, GROUP))["ok"]
        assert (await _raw_send(sb, TOKEN_A, GROUP))["parameters"] == {"retry_after": 1}
        clock.advance(1)
        assert (await _raw_send(sb, TOKEN_A, GROUP))["ok"]
        clock.advance(1)
        assert (await _raw_send(sb, TOKEN_A, GROUP))["parameters"] == {"retry_after": 58}
    finally:
        await sb.stop()


# ----------------------------------------------------------------------- webhooks
async def test_set_webhook_validation_and_rate(
        sandbox: TelegramSandbox, clock: FakeClock) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        for secret in ("has space", "ünïcode", "x" * 257):
            with pytest.raises(BadRequest, match=r"(?i)secret token contains unallowed characters"):
                await bot.set_webhook("http://127.0.0.1:9/hook", secret_token=secret)
        with pytest.raises(BadRequest, match=r"(?i)https url must be provided"):
            await bot.set_webhook("http://example.com/hook")
        with pytest.raises(BadRequest, match="ports 80, 88, 443 or 8443"):
            await bot.set_webhook("https://example.com:9999/hook")
        assert await bot.set_webhook("https://example.com/hook", secret_token="Ab_-9" * 10,
                                     max_connections=5, allowed_updates=["message"])
        with pytest.raises(RetryAfter) as info:
            await bot.set_webhook("https://example.com/other")
        assert seconds(info.value.retry_after) == 1
        info_ = await bot.get_webhook_info()
        assert (info_.url, info_.max_connections, info_.allowed_updates) == (
            "https://example.com/hook", 5, ("message",))
        clock.advance(1)
        assert await bot.set_webhook("https://example.com/other")
        assert (await bot.get_webhook_info()).url == "https://example.com/other"


async def test_webhook_delivers_human_messages_to_each_member_bot(
        sandbox: TelegramSandbox) -> None:
    async with (
        receiver() as (rec, url),
        ptb(sandbox, TOKEN_A) as a,
        ptb(sandbox, TOKEN_B) as b,
        ptb(sandbox, TOKEN_C) as c,
    ):
        await a.set_webhook(f"{url}/hook/a", secret_token="secret-a")
        await b.set_webhook(f"{url}/hook/b")
        await c.set_webhook(f"{url}/hook/c", secret_token="secret-c")
        await sandbox.post_as_human(GROUP, HUMAN, "hello bots")
        await rec.wait_for(2)
        await a.send_message(GROUP, "a bot speaks")
        await sandbox.post_as_human(GROUP, HUMAN, "second")
        await rec.wait_for(4)
        await asyncio.sleep(0.1)
        info = await a.get_webhook_info()
    by_bot: dict[str, list[tuple[int, str]]] = {}
    for name, headers, update in rec.calls:
        by_bot.setdefault(name, []).append((update["update_id"], update["message"]["text"]))
        expected = {"a": "secret-a", "b": None}[name]
        assert headers.get(SECRET_HEADER.lower()) == expected
        assert update["message"]["from"] == {"id": HUMAN, "is_bot": False,
                                             "first_name": "Hanna", "username": "hanna"}
    assert by_bot == {"a": [(1, "hello bots"), (2, "second")],
                      "b": [(1, "hello bots"), (2, "second")]}
    assert info.pending_update_count == 0 and info.last_error_message is None
    assert sandbox.stats["webhook_ok"] == 4 and sandbox.stats["webhook_failed"] == 0


async def test_webhook_retries_failed_delivery_in_order(sandbox: TelegramSandbox) -> None:
    async with receiver(statuses=[500, 503]) as (rec, url), ptb(sandbox, TOKEN_A) as bot:
        sandbox.retry_base_delay = 0.3  # 0.3 s, then 0.6 s: room to inspect between tries
        await bot.set_webhook(f"{url}/hook/a", secret_token="s3cret")
        await sandbox.post_as_human(GROUP, HUMAN, "first")
        await sandbox.post_as_human(GROUP, HUMAN, "second")
        await until(lambda: sandbox.stats["webhook_failed"] >= 2)
        info = await bot.get_webhook_info()
        assert info.pending_update_count == 2
        assert info.last_error_message == "Wrong response from the webhook: 503 Service Unavailable"
        assert info.last_error_date is not None
        await rec.wait_for(4)
    texts = [update["message"]["text"] for _, _, update in rec.calls]
    assert all(headers[SECRET_HEADER.lower()] == "s3cret" for _, headers, _ in rec.calls)
    assert texts == ["first", "first", "first", "second"]
    assert sandbox.stats["webhook_failed"] == 2 and sandbox.stats["webhook_ok"] == 2
    assert sandbox.pending_updates(TOKEN_A) == []


async def test_webhook_connection_error_and_drop_pending(sandbox: TelegramSandbox) -> None:
    async with ptb(sandbox, TOKEN_A) as bot:
        await bot.set_webhook("http://127.0.0.1:9/unreachable")
        await sandbox.post_as_human(GROUP, HUMAN, "lost")
        await until(lambda: sandbox.stats["webhook_failed"] >= 1)
        info = await bot.get_webhook_info()
        assert info.last_error_message == "Connection refused"
        assert info.pending_update_count == 1
        assert await bot.delete_webhook(drop_pending_updates=True)
        assert (await bot.get_webhook_info()).pending_update_count == 0


# ----------------------------------------------------------------- human endpoint
async def test_human_endpoint(sandbox: TelegramSandbox) -> None:
    path = f"/sandbox/chats/{GROUP}/messages"
    async with raw(sandbox) as client:
        r = await client.post(path, json={"user_id": 7, "text": "new here",
                                          "first_name": "Nina", "username": "nina"})
        assert r.status_code == 200
        first = r.json()["result"]
        assert first["from"] == {"id": 7, "is_bot": False, "first_name": "Nina",
                                 "username": "nina"}
        r = await client.post(path, json={"user_id": HUMAN, "text": "welcome",
                                          "reply_to_message_id": first["message_id"]})
        assert r.json()["result"]["reply_to_message"]["text"] == "new here"
        bad = [
            (path, {"user_id": HUMAN}, 400, "'text'"),
            (path, {"text": "x"}, 400, "'user_id'"),
            (path, {"user_id": 8, "text": "x"}, 404, "first_name"),
            (path, {"user_id": HUMAN, "text": "x", "reply_to_message_id": 99}, 400,
             "reply_to_message_id 99"),
            ("/sandbox/chats/-1/messages", {"user_id": HUMAN, "text": "x"}, 404, "chat -1"),
            ("/sandbox/chats/abc/messages", {"user_id": HUMAN, "text": "x"}, 400, "chat_id"),
        ]
        for url, payload, status, fragment in bad:
            r = await client.post(url, json=payload)
            assert r.status_code == status, (payload, r.text)
            assert fragment in r.json()["description"], (payload, r.text)
        log = (await client.get(path)).json()["result"]
        stats = (await client.get("/sandbox/stats")).json()["result"]
    assert [m["text"] for m in log] == ["new here", "welcome"]
    assert stats["updates_queued"] == 4  # 2 messages x 2 member bots


async def test_new_bot_and_adding_it_to_a_chat(sandbox: TelegramSandbox) -> None:
    async with raw(sandbox) as client:
        r = await client.post("/sandbox/bots", json={"username": "dave_bot",
                                                     "first_name": "Dave"})
        assert r.status_code == 200, r.text
        token, user = r.json()["result"]["token"], r.json()["result"]["user"]
        assert user == {"id": int(token.split(":")[0]), "is_bot": True, "first_name": "Dave",
                        "username": "dave_bot"}
        async with ptb(sandbox, token) as bot:
            assert (await bot.get_me()).username == "dave_bot"
            with pytest.raises(telegram.error.Forbidden):
                await bot.send_message(GROUP, "not yet a member")
            r = await client.post(f"/sandbox/chats/{GROUP}/bots", json={"bot_id": user["id"]})
            assert r.status_code == 200, r.text
            sent = await bot.send_message(GROUP, "now a member")
        assert sent.text == "now a member"
        second = await client.post("/sandbox/bots", json={"username": "erin_bot",
                                                          "first_name": "Erin"})
        assert second.json()["result"]["user"]["id"] == user["id"] + 1
        bad = [
            ("/sandbox/bots", {"username": "dave_bot", "first_name": "D"}, 400, "taken"),
            ("/sandbox/bots", {"username": "dave", "first_name": "D"}, 400, "end in 'bot'"),
            ("/sandbox/bots", {"username": "x" * 40 + "bot", "first_name": "D"}, 400, "5-32"),
            ("/sandbox/bots", {"username": "fred_bot", "first_name": " "}, 400, "first_name"),
            ("/sandbox/bots", {"username": "fred_bot"}, 400, "'first_name'"),
            ("/sandbox/bots", [1], 400, "JSON object"),
            (f"/sandbox/chats/{GROUP}/bots", {"bot_id": 12345}, 404, "unknown bot 12345"),
            (f"/sandbox/chats/{GROUP}/bots", {"bot_id": "1"}, 400, "'bot_id'"),
            ("/sandbox/chats/-5/bots", {"bot_id": user["id"]}, 404, "chat -5"),
            ("/sandbox/chats/x/bots", {"bot_id": user["id"]}, 400, "chat_id"),
        ]
        for url, payload, status, fragment in bad:
            r = await client.post(url, json=payload)
            assert r.status_code == status, (url, payload, r.text)
            assert fragment in r.json()["description"], (url, payload, r.text)


async def test_world_validation() -> None:
    sb = TelegramSandbox()
    with pytest.raises(SandboxError, match="not of the form"):
        sb.add_bot("no-colon", "x_bot", "X")
    with pytest.raises(SandboxError, match="not of the form"):
        sb.add_bot("12:bad token", "x_bot", "X")
    sb.load_world({"bots": [{"token": TOKEN_A, "username": "alice_bot", "first_name": "A"}],
                   "chats": [{"id": GROUP, "title": "L", "members": [{"id": 1, "first_name": "H"}],
                              "bots": [TOKEN_A]}]})
    with pytest.raises(ValueError, match="not a member"):
        await sb.post_as_human(GROUP, 2, "hi")
    with pytest.raises(ValueError, match="not found"):
        await sb.post_as_human(-5, 1, "hi")
    message = await sb.post_as_human(GROUP, 1, "hi")
    assert sb.pending_updates(1001) == [{"update_id": 1, "message": message}]

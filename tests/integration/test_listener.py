"""The webhook listener: secret token, deduplication, human messages, malformed updates."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher, webhook_secret_for
from backend.db.models import Chat, Message, WebhookUpdate
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from message_listener import SECRET_HEADER, ListenerState, create_app
from tests.integration.test_storage import make_persona

MASTER = "test-master-secret-0123456789abcdefghijkl"
TOKEN = "7100000001:AAHsecretpartofthetoken_abcdefghij"
CHAT = -100555

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def client(
    sessionmaker: Sessions, cipher: TokenCipher
) -> AsyncIterator[tuple[httpx.AsyncClient, int, ListenerState]]:
    async with sessionmaker() as s, s.begin():
        bot = await bot_store.upsert_persona_bot(s, persona=make_persona(), token=TOKEN,
                                                 cipher=cipher)
        chat = await chat_store.upsert_chat(s, telegram_chat_id=CHAT, title="Grup",
                                            topics={"usdtry": 1.0})
        await chat_store.add_bot(s, chat_id=chat.id, bot_id=bot.id)
        bot_id = bot.id
    state = ListenerState(sessionmaker=sessionmaker, webhook_secret=MASTER)
    await state.refresh_bots()
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://listener") as c:
        yield c, bot_id, state


def update(update_id: int, message_id: int, text: str = "Dolar nereye gider?",
           user: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "date": 1_790_000_000,
            "chat": {"id": CHAT, "type": "supergroup", "title": "Grup"},
            "from": user or {"id": 501, "is_bot": False, "first_name": "Deniz",
                             "username": "deniz"},
            "text": text,
            **extra,
        },
    }


async def count(sm: Sessions, model: Any) -> int:
    async with sm() as s:
        return int((await s.execute(select(func.count()).select_from(model))).scalar_one())


async def post(c: httpx.AsyncClient, bot_id: int, body: Any, secret: str | None = "ok",
               raw: bytes | None = None) -> httpx.Response:
    headers = {}
    if secret == "ok":
        headers[SECRET_HEADER] = webhook_secret_for(MASTER, bot_id)
    elif secret is not None:
        headers[SECRET_HEADER] = secret
    content = raw if raw is not None else json.dumps(body).encode()
    return await c.post(f"/webhook/{bot_id}", content=content, headers=headers)


@pytest.mark.parametrize("secret", [None, "wrong", "WRONG-CASE"])
async def test_wrong_or_missing_secret_is_403_and_stores_nothing(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions,
    secret: str | None,
) -> None:
    c, bot_id, state = client
    if secret == "WRONG-CASE":
        secret = webhook_secret_for(MASTER, bot_id).swapcase()
    r = await post(c, bot_id, update(1, 1), secret=secret)
    assert r.status_code == 403
    assert await count(sessionmaker, Message) == 0
    assert await count(sessionmaker, WebhookUpdate) == 0
    assert state.stats["rejected"] == 1


async def test_secret_of_another_bot_is_refused(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions
) -> None:
    c, bot_id, _ = client
    r = await post(c, bot_id, update(1, 1), secret=webhook_secret_for(MASTER, bot_id + 1))
    assert r.status_code == 403
    assert await count(sessionmaker, Message) == 0


async def test_human_message_stored_with_no_bot_and_reply_wanted(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions
) -> None:
    c, bot_id, _ = client
    r = await post(c, bot_id, update(1, 11, reply_to_message={"message_id": 3, "date": 1,
                                                               "chat": {"id": CHAT,
                                                                        "type": "supergroup"}}))
    assert r.status_code == 200 and r.json()["stored"] is True
    async with sessionmaker() as s:
        msg = (await s.execute(select(Message))).scalar_one()
    assert msg.bot_id is None and msg.sender_id == 501 and msg.sender_name == "Deniz"
    assert msg.reply_wanted is True and msg.text == "Dolar nereye gider?"
    assert msg.reply_to_telegram_message_id == 3
    assert msg.meta.update_id == 1 and msg.meta.sender_username == "deniz"


async def test_duplicate_update_stored_once(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions
) -> None:
    c, bot_id, state = client
    for _ in range(3):
        r = await post(c, bot_id, update(5, 12))
        assert r.status_code == 200
    assert await count(sessionmaker, Message) == 1
    assert await count(sessionmaker, WebhookUpdate) == 1
    assert state.stats["duplicates"] == 2


@pytest.mark.parametrize(
    ("body", "raw", "why"),
    [
        (None, b"{not json", "not JSON"),
        (None, b"\xff\xfe", "not JSON"),
        ([1, 2], None, "update"),
        ({"update_id": "x"}, None, "update_id"),
        ({"update_id": -1}, None, "update_id"),
        ({"update_id": 3, "message": {"message_id": 1}}, None, "message.date"),
        ({"update_id": 3, "message": {"message_id": 1, "date": 1, "chat": "x"}}, None,
         "message.chat"),
    ],
)
async def test_malformed_update_is_400_and_listener_survives(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions,
    body: Any, raw: bytes | None, why: str,
) -> None:
    c, bot_id, _ = client
    r = await post(c, bot_id, body, raw=raw)
    assert r.status_code == 400
    assert why in r.json()["description"]
    assert await count(sessionmaker, Message) == 0
    ok = await post(c, bot_id, update(9, 1))
    assert ok.status_code == 200
    assert await count(sessionmaker, Message) == 1


async def test_unknown_bot_is_404(client: tuple[httpx.AsyncClient, int, ListenerState]) -> None:
    c, bot_id, _ = client
    assert (await post(c, bot_id + 100, update(1, 1))).status_code == 404
    assert (await c.post("/webhook/abc", content=b"{}")).status_code == 404


async def test_non_text_and_other_updates_not_lost(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions
) -> None:
    c, bot_id, _ = client
    photo = update(1, 20, text=None, photo=[{"file_id": "x"}], caption="grafik")
    photo["message"].pop("text")
    assert (await post(c, bot_id, photo)).status_code == 200
    r = await post(c, bot_id, {"update_id": 2, "callback_query": {"x": 1}})
    assert r.status_code == 200 and r.json() == {"ok": True, "ignored": True,
                                                 "kind": "callback_query"}
    async with sessionmaker() as s:
        msg = (await s.execute(select(Message))).scalar_one()
    assert msg.meta.kind == "photo" and msg.text == "grafik"


async def test_own_bot_messages_not_stored_from_updates(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions
) -> None:
    c, bot_id, _ = client
    own = {"id": 7100000001, "is_bot": True, "first_name": "Mehmet", "username": "m_bot"}
    r = await post(c, bot_id, update(1, 30, user=own))
    assert r.status_code == 200 and r.json()["stored"] is False
    other_bot = {"id": 999, "is_bot": True, "first_name": "Other", "username": "other_bot"}
    await post(c, bot_id, update(2, 31, user=other_bot))
    async with sessionmaker() as s:
        msg = (await s.execute(select(Message))).scalar_one()
    assert msg.telegram_message_id == 31 and msg.meta.sender_is_bot and not msg.reply_wanted


async def test_unregistered_chat_kept_but_disabled(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions
) -> None:
    c, bot_id, _ = client
    body = update(1, 1)
    body["message"]["chat"] = {"id": -100999, "type": "supergroup", "title": "Yeni"}
    assert (await post(c, bot_id, body)).status_code == 200
    async with sessionmaker() as s:
        chat = (await s.execute(select(Chat).where(Chat.telegram_chat_id == -100999))
                ).scalar_one()
        msg = (await s.execute(select(Message))).scalar_one()
    assert chat.enabled is False and msg.chat_id == chat.id and msg.reply_wanted is False


async def test_health(client: tuple[httpx.AsyncClient, int, ListenerState]) -> None:
    c, _, _ = client
    assert (await c.get("/health/live")).json() == {"status": "live"}
    assert (await c.get("/health/ready")).status_code == 200


async def test_not_ready_without_a_database() -> None:
    from backend.db.session import make_engine, make_sessionmaker

    engine = make_engine("postgresql+asyncpg://botsim@127.0.0.1:1/botsim")
    try:
        state = ListenerState(sessionmaker=make_sessionmaker(engine), webhook_secret=MASTER)
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://listener") as c:
            r = await c.get("/health/ready")
    finally:
        await engine.dispose()
    assert r.status_code == 503 and r.json()["status"] == "not ready"


async def test_bot_map_holds_every_bots_telegram_user_id(
    client: tuple[httpx.AsyncClient, int, ListenerState],
) -> None:
    _, bot_id, state = client
    assert state.bots == {bot_id: 7100000001}  # from the token, ours: never stored as a human


async def test_edited_message_replaces_the_stored_text(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions
) -> None:
    c, bot_id, _ = client
    assert (await post(c, bot_id, update(1, 40, text="Dolar 40"))).status_code == 200
    edited = update(2, 40, text="Dolar 41 oldu")
    edited["edited_message"] = edited.pop("message")
    r = await post(c, bot_id, edited)
    assert r.status_code == 200 and r.json()["stored"] is True
    async with sessionmaker() as s:
        msg = (await s.execute(select(Message))).scalar_one()
    assert msg.text == "Dolar 41 oldu" and msg.meta.edited and msg.meta.update_id == 2
    assert msg.reply_wanted is True  # the original's flag: an edit asks for no new reply


async def test_metrics_served(client: tuple[httpx.AsyncClient, int, ListenerState]) -> None:
    from backend import metrics

    metrics.LLM_ANSWERS.labels("offline").inc(0)
    c, _, _ = client
    r = await c.get("/metrics/")
    assert r.status_code == 200
    assert "botsim_llm_answers_total" in r.text and "botsim_llm_calls_total" in r.text


def _hostile(kind: str) -> tuple[Any, bytes | None, str]:
    """(body, raw bytes or None, what the 400's description names) of one hostile update
    (issue 15: each was coerced and stored, or answered 500 with a traceback)."""
    good = update(1, 1)
    if kind == "update_id string":
        return {**good, "update_id": "5"}, None, "update_id"
    if kind == "update_id boolean":
        return {**good, "update_id": True}, None, "update_id"
    if kind == "long text":
        return update(1, 1, text="a" * 4097), None, "message.text"
    if kind == "two payloads":
        return {**good, "edited_message": good["message"]}, None, "one payload"
    if kind == "chat id over 2^63":
        body = update(1, 1)
        body["message"]["chat"]["id"] = 2**63 + 5
        return body, None, "message.chat.id"
    if kind == "date 10^12":
        body = update(1, 1)
        body["message"]["date"] = 10**12
        return body, None, "message.date"
    if kind == "NUL in text":
        return update(1, 1, text="dolar\x00ne olur"), None, "NUL"
    if kind == "lone surrogate":
        raw = json.dumps(update(1, 1, text="X")).replace('"X"', '"\\ud800"').encode()
        return None, raw, "not JSON"
    if kind == "deep nesting":
        raw = json.dumps(update(1, 1))[:-1].encode() + b', "x": ' + b"[" * 10_000 \
            + b"]" * 10_000 + b"}"
        return None, raw, "not JSON"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["update_id string", "update_id boolean", "long text",
                                  "two payloads", "chat id over 2^63", "date 10^12",
                                  "NUL in text", "lone surrogate", "deep nesting"])
async def test_a_hostile_update_is_400_naming_the_field_and_stores_nothing(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions, kind: str,
) -> None:
    c, bot_id, state = client
    body, raw, why = _hostile(kind)
    r = await post(c, bot_id, body, raw=raw)
    assert r.status_code == 400, (r.status_code, r.text)
    assert why in r.json()["description"], r.json()
    assert await count(sessionmaker, Message) == 0
    assert await count(sessionmaker, WebhookUpdate) == 0
    assert state.stats["malformed"] == 1
    # nothing was taken: the real update 1 is stored, not seen as a duplicate
    ok = await post(c, bot_id, update(1, 1))
    assert ok.status_code == 200 and ok.json() == {"ok": True, "stored": True}


async def test_a_repeated_secret_header_is_refused_even_when_its_first_value_is_right(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions,
) -> None:
    c, bot_id, _ = client
    right = webhook_secret_for(MASTER, bot_id)
    for values in ([right, "wrong"], [right, right]):
        r = await c.post(f"/webhook/{bot_id}", content=json.dumps(update(1, 1)).encode(),
                         headers=[(SECRET_HEADER, v) for v in values])
        assert r.status_code == 403
    assert await count(sessionmaker, Message) == 0


async def test_a_body_over_the_limit_is_413_while_streamed(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions,
) -> None:
    from message_listener import MAX_BODY_BYTES

    c, bot_id, _ = client
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(4 * MAX_BODY_BYTES // 65_536):
            sent += 65_536
            yield b" " * 65_536

    r = await c.post(f"/webhook/{bot_id}", content=chunks(),
                     headers={SECRET_HEADER: webhook_secret_for(MASTER, bot_id)})
    assert r.status_code == 413
    assert sent <= MAX_BODY_BYTES + 65_536  # it stopped reading past the limit
    assert await count(sessionmaker, Message) == 0


@pytest.mark.parametrize("transient", [True, False])
async def test_a_storage_error_never_logs_the_message_and_retries_only_an_outage(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, transient: bool,
) -> None:
    """An unreachable database → 500, so Telegram retries (the human message is not
    acknowledged unstored); a value the database refuses → acknowledged 200 ``ok: false``
    (a retry would fail for 24 h and hold the chat's later updates). Either way it is
    counted and logged by class, never with the text a traceback's SQL parameters quote."""
    from sqlalchemy.exc import DataError, OperationalError

    from backend.stores import messages as message_store

    c, bot_id, state = client
    secret_text = "Deniz'in gizli mesajı 4242"

    async def refuse(*_args: Any, **_kwargs: Any) -> bool:
        kind = OperationalError if transient else DataError
        raise kind("INSERT INTO messages ...", {"text": secret_text}, Exception(secret_text))

    monkeypatch.setattr(message_store, "take_update", refuse)
    caplog.set_level("DEBUG")
    r = await post(c, bot_id, update(1, 1, text=secret_text))
    if transient:
        assert r.status_code == 500 and state.stats["store_failed"] == 1
    else:
        assert r.status_code == 200 and r.json()["ok"] is False
        assert state.stats["unstorable"] == 1
    assert secret_text not in caplog.text and "4242" not in r.text
    assert ("OperationalError" if transient else "DataError") in caplog.text
    monkeypatch.undo()
    assert (await post(c, bot_id, update(1, 1))).json() == {"ok": True, "stored": True}


@pytest.mark.parametrize("where", ["bot lookup outage", "cache after the commit"])
async def test_an_unexpected_error_is_counted_and_never_a_traceback(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, where: str,
) -> None:
    """An error outside storing: the bot lookup with the database down → 500 (Telegram
    retries); a bug after the commit (here the history cache) → 200 ``ok: false``, counted,
    logged by class without the message (issue 15, item 2)."""
    from sqlalchemy.exc import OperationalError

    c, bot_id, state = client
    secret_text = "Deniz'in gizli mesajı 4343"
    caplog.set_level("INFO")  # (aiosqlite's DEBUG log quotes every SQL parameter)
    if where == "bot lookup outage":
        async def down() -> None:
            raise OperationalError("SELECT bots", {}, Exception("connection refused"))

        monkeypatch.setattr(state, "bots", {})
        monkeypatch.setattr(state, "refresh_bots", down)
        r = await post(c, bot_id, update(1, 1, text=secret_text))
        assert r.status_code == 500 and state.stats["store_failed"] == 1
    else:
        class Broken:
            async def appended(self, *_args: Any) -> None:
                raise RuntimeError(secret_text)

        monkeypatch.setattr(state, "reads", Broken())
        r = await post(c, bot_id, update(1, 1, text=secret_text))
        assert r.status_code == 200 and r.json()["ok"] is False
        assert state.stats["unexpected"] == 1 and "RuntimeError" in caplog.text
        assert await count(sessionmaker, Message) == 1  # stored before the error
    assert secret_text not in caplog.text and "4343" not in r.text
    assert "Traceback" not in caplog.text

"""The listener's log lines: a person's text never in them, the bot and chat ids always."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import logcontext
from backend.crypto import TokenCipher
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from message_listener import ListenerState, create_app
from tests.integration.test_listener import CHAT, MASTER, TOKEN, post, update
from tests.integration.test_storage import make_persona
from tests.unit.test_logging_json import captured_logs, json_lines

Sessions = async_sessionmaker[AsyncSession]
MARKER = "qzx-marker-5d1e"  # in every text sent below, nowhere else


@pytest.fixture
async def listener(sessionmaker: Sessions,
                   cipher: TokenCipher) -> AsyncIterator[tuple[httpx.AsyncClient, int, int]]:
    """(client of the listener app in process, our bot id, our chat id)."""
    async with sessionmaker() as s, s.begin():
        bot = await bot_store.upsert_persona_bot(s, persona=make_persona(), token=TOKEN,
                                                 cipher=cipher)
        chat = await chat_store.upsert_chat(s, telegram_chat_id=CHAT, title="Grup",
                                            topics={"usdtry": 1.0})
        await chat_store.add_bot(s, chat_id=chat.id, bot_id=bot.id)
        ids = bot.id, chat.id
    state = ListenerState(sessionmaker=sessionmaker, webhook_secret=MASTER)
    await state.refresh_bots()
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://listener") as c:
        yield c, *ids


def _updates() -> list[tuple[dict[str, Any] | None, bytes | None, int]]:
    """(body, raw body or None, the status expected) of every way a person's text arrives:
    new, repeated, edited, a command, into an unknown chat, refused as malformed."""
    edited = update(3, 11, text=f"{MARKER} edited")
    edited["edited_message"] = edited.pop("message")
    elsewhere = update(5, 13, text=f"{MARKER} elsewhere")
    elsewhere["message"]["chat"] = {"id": -100777, "type": "supergroup", "title": "Yeni"}
    dated = update(8, 16, text=f"{MARKER} dated")
    dated["message"]["date"] = 10**12
    truncated = json.dumps(update(9, 17, text=f"{MARKER} cut")).encode()[:-5]
    return [
        (update(1, 11, text=f"Dolar {MARKER} nereye?"), None, 200),
        (update(1, 11, text=f"Dolar {MARKER} nereye?"), None, 200),  # Telegram's retry
        (update(2, 12, text=f"@deniz {MARKER}", reply_to_message={
            "message_id": 11, "date": 1, "chat": {"id": CHAT, "type": "supergroup"}}),
         None, 200),
        (edited, None, 200),
        (update(4, 14, text=f"/privacy {MARKER}"), None, 200),
        (elsewhere, None, 200),
        (update(6, 15, text=f"{MARKER}\x00"), None, 400),
        (update(7, 15, text=MARKER + "a" * 4097), None, 400),
        (dated, None, 400),
        (None, truncated, 400),
    ]


async def test_a_persons_text_is_never_logged_and_lines_carry_the_ids(
        listener: tuple[httpx.AsyncClient, int, int]) -> None:
    c, bot_id, chat_id = listener
    with captured_logs("json", logging.DEBUG) as out:
        for body, raw, status in _updates():
            r = await post(c, bot_id, body, raw=raw)
            assert r.status_code == status, (body, r.text)
    assert MARKER not in out.getvalue()
    lines = json_lines(out, None)  # every line is JSON
    listener_lines = [line for line in lines if line["logger"] == "botsim.listener"]
    stored = [line for line in listener_lines if line["message"].startswith("update 1 stored")]
    assert len(stored) == 1, listener_lines
    assert stored[0]["bot_id"] == bot_id and stored[0]["chat_id"] == chat_id
    assert listener_lines and all(line["bot_id"] == bot_id for line in listener_lines)
    assert logcontext.current() == {}  # each request's ids ended with it

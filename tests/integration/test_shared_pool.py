"""The bots of a worker share one HTTP connection pool (issue 20): python-telegram-bot's
request object, which a bot's shutdown would close for every bot sharing it, stays open
until its owner closes it; the real client library against the sandbox Telegram."""

from __future__ import annotations

import asyncio

import pytest

from backend.errors import TelegramUnavailable
from bots.telegram import BotClient, SharedPool
from sandbox.telegram_api import TelegramSandbox

CHAT = -1001000000777
TOKENS = [f"{7100000 + i}:shared-pool-token-{i:02d}" for i in range(40)]


async def test_forty_bots_send_through_one_pool_and_a_shutdown_closes_it_for_none() -> None:
    sb = TelegramSandbox()
    sb.add_chat(CHAT, "pool")
    for i, token in enumerate(TOKENS):
        sb.add_bot(token, f"pool_bot_{i}", f"Pool {i}")
        sb.add_bot_to_chat(CHAT, token)
    await sb.start()
    pool = SharedPool(size=8)
    clients = [BotClient(bot_id=i, token=t, base_url=sb.bot_api_url, pool=pool)
               for i, t in enumerate(TOKENS)]
    try:
        await asyncio.gather(*(c.start() for c in clients))
        sent = await asyncio.gather(*(c.send_message(chat_id=CHAT, text=f"merhaba {i}")
                                      for i, c in enumerate(clients)))
        assert len({m.message_id for m in sent}) == len(TOKENS)
        # each message came from its own bot (the token is per request, not per pool)
        by_text = {m["text"]: m["from"]["username"] for m in sb.messages(CHAT)}
        assert all(by_text[f"merhaba {i}"] == f"pool_bot_{i}" for i in range(len(TOKENS)))
        # one bot shuts down (python-telegram-bot shuts its request down): the rest go on
        await clients[0].close()
        again = await clients[1].send_message(chat_id=CHAT, text="hala buradayım")
        assert again.message_id > max(m.message_id for m in sent)
        for c in clients[1:]:
            await c.close()
        await clients[1].send_message(chat_id=CHAT, text="hepsi kapandı, havuz açık")
        await pool.close()  # closed by its owner: no bot sends through it any more
        with pytest.raises(TelegramUnavailable):
            await clients[1].send_message(chat_id=CHAT, text="kapalı")
        assert sb.messages(CHAT)[-1]["text"] == "hepsi kapandı, havuz açık"
    finally:
        await pool.close()
        await sb.stop()

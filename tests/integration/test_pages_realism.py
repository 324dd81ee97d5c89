"""The panel's realism page, ``/realism`` (:mod:`backend.api.pages_realism`): the table of
``botsim realism`` and three SVG plots for a chat, for viewers too, escaped; a redirect to
the login without a session; a 422 page naming a bad ``since``.

Runs on SQLite and PostgreSQL; the app and its users come from ``test_pages``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from backend.schemas import MessageMeta
from backend.stores import messages as message_store
from tests.integration.test_pages import ESCAPED, START, XSS, Env, Sessions, make_env, seed


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions) -> AsyncIterator[Env]:
    cache = TwoLayerCache(redis_url=None)
    await cache.start()
    e = await make_env(tmp_path, sessionmaker, cache)
    yield e
    for c in e.clients:
        await c.aclose()
    await cache.close()


def _cells(html: str, label: str) -> list[str]:
    row = re.search(r"<tr class=\"verdict-\w+\"><td>" + re.escape(label) + r"</td>(.*?)</tr>",
                    html, re.S)
    assert row is not None, label
    return re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)


async def test_realism_page_shows_the_metrics_and_three_plots(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher,
) -> None:
    chat_id, bot_id = await seed(sessionmaker, cipher)  # a human at START, the bot at +5 s
    async with sessionmaker() as s, s.begin():  # then the bot alone, every 10 s
        for i in range(20):
            await message_store.record_sent(
                s, chat_id=chat_id, bot_id=bot_id, turn_id=f"c-{i}",
                telegram_message_id=3 + i, text=f"saat gibi mesaj numarası {i} {XSS}",
                meta=MessageMeta(), created_at=START + timedelta(seconds=15 + 10 * i))
    viewer, _ = await env.login("vera")  # read-only users see it
    page = await viewer.get(f"/realism?chat_id={chat_id}")
    assert page.status_code == 200, page.text
    html = page.text
    assert XSS not in html and "<script>alert" not in html and ESCAPED not in html
    assert "Piyasa &lt;i&gt;" in html  # the chat's title, escaped
    assert '<a href="/realism" aria-current="page">Realism</a>' in html
    assert "22 messages: 21 from bots, 1 from humans, 2 speakers." in html
    # The human waited 5 s for the first (and only) answer, from one bot.
    assert _cells(html, "human → first answer p95, s")[:3] == ["5", "≤ 20", "pass"]
    assert _cells(html, "bots answering a human message")[:3] == ["1", "= 1", "pass"]
    # 21 consecutive pairs, 20 of them the bot after itself; the Gini needs two bots.
    assert _cells(html, "same speaker twice in a row")[:3] == ["95.2 %", "10.0 % – 45.0 %",
                                                                "FAIL"]
    assert _cells(html, "Gini of messages per bot")[0] == "n/a"
    uris = re.findall(r'<img src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)" alt="', html)
    assert len(uris) == 3
    for uri in uris:
        svg = base64.b64decode(uri).decode()
        assert "<svg" in svg and "<script" not in svg and "Deniz" not in svg  # text as paths


async def test_realism_page_needs_a_login_and_names_a_bad_window(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher,
) -> None:
    chat_id, _ = await seed(sessionmaker, cipher)
    anon = env.client()
    r = await anon.get(f"/realism?chat_id={chat_id}")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    admin, _ = await env.login("alice")
    bad = await admin.get(f"/realism?chat_id={chat_id}&since=yesterday")
    assert bad.status_code == 422 and "&#39;yesterday&#39;: expected an age" in bad.text
    later = await admin.get(f"/realism?chat_id={chat_id}&since=1m")  # START is long ago
    assert later.status_code == 200 and "No messages in this chat since 1m." in later.text
    unknown = await admin.get("/realism?chat_id=999999")
    assert unknown.status_code == 200 and "No such chat." in unknown.text
    live = await admin.get(f"/?chat_id={chat_id}")
    assert f'<a href="/realism?chat_id={chat_id}">Realism of this chat</a>' in live.text

"""The admin panel's audit page, ``/audit`` (:mod:`backend.api.pages`): admins only,
escaped, paged like ``GET /api/v1/audit``, and a 422 page naming a bad query value.

Runs on SQLite and PostgreSQL; the app and its users come from ``test_pages``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from tests.integration.test_pages import ESCAPED, XSS, Env, Sessions, make_env, seed


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions) -> AsyncIterator[Env]:
    cache = TwoLayerCache(redis_url=None)
    await cache.start()
    e = await make_env(tmp_path, sessionmaker, cache)
    yield e
    for c in e.clients:
        await c.aclose()
    await cache.close()


def _audit_rows(html: str) -> list[list[str]]:
    body = re.search(r'<table id="audit-log".*?<tbody>(.*?)</tbody>', html, re.S)
    if body is None:
        return []
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            for row in re.findall(r"<tr data-id=\"\d+\">(.*?)</tr>", body.group(1), re.S)]


async def test_audit_page_lists_changes_escaped(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher,
) -> None:
    env.app.state.api.cipher = cipher
    _, bot_id = await seed(sessionmaker, cipher)
    admin, csrf = await env.login("alice")
    r = await admin.patch("/api/v1/settings", json={"scale_factor": 2.5},
                          headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    r = await admin.patch(f"/api/v1/bots/{bot_id}", json={"bio": f"Now {XSS} here"},
                          headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text

    page = await admin.get("/audit")
    assert page.status_code == 200, page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert XSS not in html and "<script>alert" not in html
    assert '<a href="/audit" aria-current="page">Audit</a>' in html
    assert "<th>when (UTC)</th>" in html and "<th>before</th>" in html
    rows = _audit_rows(html)
    assert len(rows) == 2
    bot_row, settings_row = rows  # newest first
    alice_id = re.search(r"alice <span class=\"muted\">\(user (\d+)\)</span>", bot_row[1])
    assert alice_id is not None
    assert bot_row[2:5] == ["bot.update", "bot", str(bot_id)]
    assert f"Now {ESCAPED} here" in bot_row[6] and "bio-marker" in bot_row[5]
    assert "&#34;bio&#34;" in bot_row[5] or "&quot;bio&quot;" in bot_row[5]
    assert bot_row[5].startswith("<code>") and bot_row[6].startswith("<code>")
    assert settings_row[2:4] == ["settings.update", "settings"]
    assert "—" in settings_row[4]
    import html as html_lib

    before = re.fullmatch(r"<code>(.*)</code>", settings_row[5])
    after = re.fullmatch(r"<code>(.*)</code>", settings_row[6])
    assert before is not None and after is not None
    assert json.loads(html_lib.unescape(before.group(1))) == {"scale_factor": 1.0}
    assert json.loads(html_lib.unescape(after.group(1))) == {"scale_factor": 2.5}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", settings_row[0])
    assert 'id="audit-older"' not in html

    only = (await admin.get("/audit", params={"entity": "bot", "entity_id": str(bot_id)})).text
    assert [row[2] for row in _audit_rows(only)] == ["bot.update"]
    assert 'name="entity" value="bot"' in only
    none = await admin.get("/audit", params={"entity": XSS})
    assert none.status_code == 200 and _audit_rows(none.text) == []
    assert "No entries" in none.text
    assert XSS not in none.text and f'value="{ESCAPED}"' in none.text


async def test_audit_page_is_for_admins(env: Env) -> None:
    admin, csrf = await env.login("alice")
    r = await admin.patch("/api/v1/settings", json={"scale_factor": 3.0},
                          headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    viewer, _ = await env.login("vera")
    for query in ("", "?cursor=abc"):
        page = await viewer.get("/audit" + query)
        assert page.status_code == 403, query
        assert "The audit log is for admins" in page.text
        assert 'id="audit-log"' not in page.text and "settings.update" not in page.text
        assert '<a href="/audit" aria-current="page">Audit</a>' in page.text
    assert len(_audit_rows((await admin.get("/audit")).text)) == 1


async def test_audit_page_pages_with_older_links_keeping_filters(env: Env) -> None:
    admin, csrf = await env.login("alice")
    for factor in (2.0, 3.0, 4.0):
        r = await admin.patch("/api/v1/settings", json={"scale_factor": factor},
                              headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200
    r = await admin.post("/api/v1/simulation/stop", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    import html as html_lib

    def older(html: str) -> str | None:
        link = re.search(r'<a href="([^"]*)" id="audit-older" rel="next">Older →</a>', html)
        return None if link is None else html_lib.unescape(link.group(1))

    seen: list[str] = []
    url: str | None = "/audit?entity=settings&limit=3"
    pages_read = 0
    while url is not None:
        r = await admin.get(url)
        assert r.status_code == 200, (url, r.text)
        seen += [html_lib.unescape(row[6]) for row in _audit_rows(r.text)]
        url = older(r.text)
        if url is not None:
            assert url.startswith("/audit?entity=settings&limit=3&cursor=")
            assert 'id="audit-newest"' not in r.text or pages_read > 0
        else:
            assert 'href="/audit?entity=settings&amp;limit=3" id="audit-newest"' in r.text
        pages_read += 1
    assert pages_read == 2
    assert seen == ['<code>{"simulation_active": false}</code>',
                    '<code>{"scale_factor": 4.0}</code>', '<code>{"scale_factor": 3.0}</code>',
                    '<code>{"scale_factor": 2.0}</code>']
    first = (await admin.get("/audit", params={"limit": "4"})).text
    assert older(first) is None and len(_audit_rows(first)) == 4
    assert older((await admin.get("/audit", params={"entity": "bot", "limit": "1"})).text) is None


@pytest.mark.parametrize(("query", "named"), [
    ({"cursor": "abc"}, "cursor"),
    ({"cursor": "0"}, "cursor"),
    ({"cursor": "-1"}, "cursor"),
    ({"cursor": "1_0"}, "cursor"),
    ({"cursor": "2147483648"}, "cursor"),
    ({"cursor": "9" * 5000}, "cursor"),
    ({"cursor": "1e3"}, "cursor"),
    ({"limit": "0"}, "limit"),
    ({"limit": "201"}, "limit"),
    ({"limit": "two"}, "limit"),
    ({"entity": "x" * 33}, "entity"),
    ({"entity_id": "y" * 65}, "entity_id"),
    ({"entity_id": "7\x00"}, "entity_id"),  # PostgreSQL text holds no NUL (once a 500)
    ({"entity": "bot\x00"}, "entity"),
    ({"cursor": XSS}, "cursor"),
])
async def test_audit_page_refuses_bad_query_values_with_a_422_page(
    env: Env, query: dict[str, str], named: str,
) -> None:
    admin, _ = await env.login("alice")
    r = await admin.get("/audit", params=query)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("text/html")
    problems = re.search(r'<ul id="audit-problems" class="errors">(.*?)</ul>', r.text, re.S)
    assert problems is not None
    assert re.search(rf'<li class="error">{named}: ', problems.group(1))
    assert XSS not in r.text
    if query.get("cursor") == XSS:
        assert "&#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;" in problems.group(1)
    assert 'id="audit-log"' not in r.text


async def test_audit_page_takes_good_edge_values(env: Env) -> None:
    admin, _ = await env.login("alice")
    for query in ({"cursor": "2147483647", "limit": "200"}, {"cursor": "1"},
                  {"entity": "", "entity_id": "", "limit": ""}):
        r = await admin.get("/audit", params=query)
        assert r.status_code == 200, (query, r.text)
        assert 'id="audit-problems"' not in r.text


async def test_a_safety_block_is_listed_on_the_audit_page(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher,
) -> None:
    # issue 16, item 6: a draft a safety rule kept back reaches the operator (escaped)
    from datetime import UTC, datetime

    from behavior_engine.records import StoreTurnRecords
    from behavior_engine.turn import Turn

    env.app.state.api.cipher = cipher
    chat_id, bot_id = await seed(sessionmaker, cipher)
    turn = Turn(turn_id="t-safe", chat_id=chat_id, telegram_chat_id=-100777, bot_id=bot_id,
                topic="gold", reply_to=None, reason="spontaneous",
                decided_at=datetime.now(UTC))
    await StoreTurnRecords(sessionmaker).safety_blocked(
        turn, rule="guaranteed_returns", part="garantili kazanç",
        text=f"Bu hisse garantili kazanç {XSS}")
    admin, _ = await env.login("alice")
    html = (await admin.get("/audit")).text
    row = next(r for r in _audit_rows(html) if "safety.blocked" in "".join(r))
    cells = "".join(row)
    assert "guaranteed_returns" in cells and "engine" in cells and ESCAPED in cells
    assert XSS not in html

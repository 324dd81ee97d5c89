"""``POST /api/v1/bots/{id}/interview`` and the persona page's "Interview" section (issue 16,
item 8, the panel half of ``botsim interview``).

Runs on SQLite and PostgreSQL (the ``sessionmaker`` fixture); the app, its admin (alice) and
viewer (vera) and the seeded chat and bot are :mod:`tests.integration.test_pages`'.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from backend.db.models import Message
from tests.integration.test_pages import Env, Sessions, make_env, seed

QUESTION = "Altın neden düşüyor sence? <b>gizli-soru-işareti</b>"


@pytest.fixture
async def cache() -> AsyncIterator[TwoLayerCache]:
    c = TwoLayerCache(redis_url=None)
    await c.start()
    yield c
    await c.close()


@pytest.fixture
async def env(tmp_path: Path, sessionmaker: Sessions, cache: TwoLayerCache,
              cipher: TokenCipher) -> AsyncIterator[Env]:
    e = await make_env(tmp_path, sessionmaker, cache)
    e.app.state.api.cipher = cipher
    yield e
    for c in e.clients:
        await c.aclose()


async def _messages(sm: Sessions) -> int:
    async with sm() as s:
        return int((await s.execute(select(func.count()).select_from(Message))).scalar_one())


def _url(bot_id: int) -> str:
    return f"/api/v1/bots/{bot_id}/interview"


async def test_an_admin_gets_an_answer_in_persona_and_nothing_is_stored(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher, caplog: pytest.LogCaptureFixture,
) -> None:
    _, bot_id = await seed(sessionmaker, cipher)
    before = await _messages(sessionmaker)
    admin, csrf = await env.login("alice")
    caplog.set_level(logging.DEBUG)
    r = await admin.post(_url(bot_id), json={"question": QUESTION, "llm": "offline"},
                         headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == {"bot_id", "question", "answer", "provider"}
    assert (got["bot_id"], got["question"], got["provider"]) == (bot_id, QUESTION, "offline")
    assert got["answer"].strip() and got["answer"] != QUESTION
    # the default asks the configured chain: none here, so the offline generator answers
    r = await admin.post(_url(bot_id), json={"question": "Borsa için ne düşünüyorsun?"},
                         headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert r.json()["provider"] == "offline" and r.json()["answer"].strip()
    assert await _messages(sessionmaker) == before  # nothing posted, nothing stored
    logged = "\n".join(rec.getMessage() for rec in caplog.records
                       if rec.levelno >= logging.INFO)
    assert "gizli-soru-işareti" not in logged and "Borsa için" not in logged


async def test_an_interview_needs_an_admin_and_the_csrf_token(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher,
) -> None:
    _, bot_id = await seed(sessionmaker, cipher)
    body = {"question": "Altın?", "llm": "offline"}
    viewer, viewer_csrf = await env.login("vera")
    r = await viewer.post(_url(bot_id), json=body, headers={"X-CSRF-Token": viewer_csrf})
    assert r.status_code == 403, r.text
    admin, _ = await env.login("alice")
    assert (await admin.post(_url(bot_id), json=body)).status_code == 403  # no CSRF header
    assert (await env.client().post(_url(bot_id), json=body)).status_code == 401


@pytest.mark.parametrize("question", ["", "   ", "x" * 5000])
async def test_an_empty_or_too_long_question_is_a_422_naming_it(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher, question: str,
) -> None:
    _, bot_id = await seed(sessionmaker, cipher)
    admin, csrf = await env.login("alice")
    r = await admin.post(_url(bot_id), json={"question": question, "llm": "offline"},
                         headers={"X-CSRF-Token": csrf})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [e["loc"] for e in r.json()["errors"]] == [["body", "question"]]
    assert "x" * 100 not in r.text  # the input is not echoed


async def test_an_unknown_llm_choice_or_field_is_a_422(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher,
) -> None:
    _, bot_id = await seed(sessionmaker, cipher)
    admin, csrf = await env.login("alice")
    for body, field in [({"question": "Altın?", "llm": "gpt"}, "llm"),
                        ({"question": "Altın?", "chat_id": 1}, "chat_id")]:
        r = await admin.post(_url(bot_id), json=body, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 422, r.text
        assert [e["loc"] for e in r.json()["errors"]] == [["body", field]]


async def test_an_unknown_bot_is_a_404_and_a_huge_id_a_422(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher,
) -> None:
    _, bot_id = await seed(sessionmaker, cipher)
    admin, csrf = await env.login("alice")
    body = {"question": "Altın?", "llm": "offline"}
    r = await admin.post(_url(bot_id + 1000), json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert str(bot_id + 1000) in r.json()["detail"]
    r = await admin.post(_url(2**63), json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 422, r.text


async def test_the_persona_page_shows_the_interview_form_to_admins_only(
    env: Env, sessionmaker: Sessions, cipher: TokenCipher,
) -> None:
    _, bot_id = await seed(sessionmaker, cipher)
    admin, _ = await env.login("alice")
    page = (await admin.get(f"/personas/{bot_id}")).text
    assert 'id="interview-form"' in page and f'data-bot-id="{bot_id}"' in page
    assert 'id="interview-question"' in page and 'id="interview-answer"' in page
    assert ">Ask</button>" in page
    viewer, _ = await env.login("vera")
    page = (await viewer.get(f"/personas/{bot_id}")).text
    assert "interview-form" not in page and 'id="interview"' not in page
    js = (await admin.get("/static/panel.js")).text
    assert "function initInterview()" in js and "/interview" in js
    assert "answer.textContent = r.body.answer" in js
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js

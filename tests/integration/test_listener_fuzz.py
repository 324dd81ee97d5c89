"""The listener under generated webhook bodies (issue 15): valid and invalid updates drawn by
hypothesis, posted through the ASGI app on both databases. Never a 5xx; an invalid body is a
400 that stores nothing; every valid message is stored exactly once, even when posted twice."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from backend.db.models import Message
from message_listener import CAPTION_MAX, ID52_MAX, INT32_MAX, TEXT_MAX, ListenerState
from tests.integration.test_listener import CHAT, Sessions, client, post  # noqa: F401

#: Examples per database (issue 15: >= 2,000 bodies, valid and invalid).
EXAMPLES = 1_000
_ids = itertools.count(1)

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
               max_size=60)
user = st.fixed_dictionaries(
    {"id": st.integers(1, ID52_MAX), "is_bot": st.just(False),
     "first_name": st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                           min_size=1, max_size=20)},
    optional={"username": st.from_regex(r"[a-z][a-z0-9_]{4,20}", fullmatch=True)})

#: A mutation that makes a valid update invalid: (path, value) or a whole-body change.
BAD_VALUES: list[tuple[tuple[str, ...], Any]] = [
    (("update_id",), "7"), (("update_id",), True), (("update_id",), 1.5),
    (("update_id",), -1), (("update_id",), INT32_MAX + 1),
    (("message", "message_id"), 0), (("message", "message_id"), "9"),
    (("message", "date"), 10**12), (("message", "date"), None),
    (("message", "chat", "id"), 2**63), (("message", "chat", "id"), "x"),
    (("message", "chat"), None), (("message", "from", "id"), ID52_MAX + 1),
    (("message", "from", "is_bot"), "no"), (("message", "text"), 5),
    (("message", "text"), "a" * (TEXT_MAX + 1)), (("message", "text"), "a\x00b"),
    (("message", "caption"), "c" * (CAPTION_MAX + 1)),
    (("edited_message",), {"message_id": 1}),
]


def _valid(draw: st.DrawFn) -> dict[str, Any]:
    n = next(_ids)
    message: dict[str, Any] = {"message_id": n, "date": draw(st.integers(0, INT32_MAX)),
                               "chat": {"id": CHAT, "type": "supergroup", "title": "Grup"},
                               "from": draw(user), "text": draw(text)}
    if draw(st.booleans()):
        message["reply_to_message"] = {"message_id": draw(st.integers(1, INT32_MAX))}
    return {"update_id": n, "message": message}


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bool, dict[str, Any] | None, bytes | None]:
    """(valid?, the body as JSON, or raw bytes)."""
    body = _valid(draw)
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "raw"]))
    if kind == "valid":
        return True, body, None
    if kind == "raw":
        raw = draw(st.sampled_from([b"", b"{", b"null", b"[]", b'"x"', b"{\"update_id\": 1,}",
                                    json.dumps(body).encode()[:-3], b"\xff\xfe{}",
                                    b'{"update_id": 1, "message": {"text": "\\ud800"}}']))
        return False, None, raw
    path, value = draw(st.sampled_from(BAD_VALUES))
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return False, body, None


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=bodies())
async def test_generated_bodies_never_5xx_and_store_each_valid_message_once(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions,  # noqa: F811
    case: tuple[bool, dict[str, Any] | None, bytes | None],
) -> None:
    c, bot_id, _ = client
    valid, body, raw = case
    async with sessionmaker() as s:
        before = (await s.execute(select(func.count()).select_from(Message))).scalar_one()
    r = await post(c, bot_id, body, raw=raw)
    assert r.status_code < 500, r.text
    if valid:
        assert r.status_code == 200 and r.json().get("stored") is True, r.text
        again = await post(c, bot_id, body)  # Telegram's retry of the same update
        assert again.status_code == 200 and again.json().get("duplicate") is True
    else:
        assert r.status_code == 400, (r.status_code, r.text, body, raw)
    async with sessionmaker() as s:
        after = (await s.execute(select(func.count()).select_from(Message))).scalar_one()
    assert after == before + (1 if valid else 0)

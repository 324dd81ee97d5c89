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
]


#: Mutations of the other kinds' bodies (a path into the body, a value).
BAD_OTHER: list[tuple[tuple[str, ...], Any]] = [
    (("my_chat_member", "new_chat_member", "status"), "emperor"),
    (("my_chat_member", "new_chat_member"), None), (("my_chat_member", "date"), "x"),
    (("message", "entities"), [{"type": "mention", "offset": -1, "length": 2}]),
    (("message", "message_thread_id"), 0), (("message", "sender_chat"), {"id": "x"}),
    (("message", "migrate_to_chat_id"), 2**60),
]


def _member_update(draw: st.DrawFn, n: int) -> dict[str, Any]:
    statuses = st.sampled_from(["creator", "administrator", "member", "restricted", "left",
                                "kicked"])
    who = draw(user)
    kind = draw(st.sampled_from(["my_chat_member", "chat_member"]))
    return {"update_id": n, kind: {
        "chat": {"id": CHAT, "type": "supergroup", "title": "Grup"}, "from": draw(user),
        "date": draw(st.integers(0, INT32_MAX)),
        "old_chat_member": {"status": draw(statuses), "user": who},
        "new_chat_member": {"status": draw(statuses), "user": who,
                            "can_send_messages": draw(st.booleans())}}}


def _valid(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """A valid update and whether it stores a message (service messages, membership
    changes and kinds we do not use store none)."""
    n = next(_ids)
    shape = draw(st.sampled_from(["text", "text", "text", "service", "member", "other"]))
    if shape == "member":
        return _member_update(draw, n), False
    if shape == "other":
        kind = draw(st.sampled_from(["callback_query", "poll", "channel_post",
                                     "message_reaction", "chat_join_request"]))
        return {"update_id": n, kind: {"id": str(n)}}, False
    message: dict[str, Any] = {"message_id": n, "date": draw(st.integers(0, INT32_MAX)),
                               "chat": {"id": CHAT, "type": "supergroup", "title": "Grup"},
                               "from": draw(user)}
    if shape == "service":
        field, value = draw(st.sampled_from([
            ("new_chat_members", [{"id": 5, "is_bot": False, "first_name": "Can"}]),
            ("left_chat_member", {"id": 5, "is_bot": False, "first_name": "Can"}),
            ("new_chat_title", "Grup"), ("pinned_message", {"message_id": 1}),
            ("forum_topic_created", {"name": "Altın", "icon_color": 1})]))
        message[field] = value
        return {"update_id": n, "message": message}, False
    message["text"] = draw(text)
    if draw(st.booleans()):
        message["reply_to_message"] = {"message_id": draw(st.integers(1, INT32_MAX))}
    if draw(st.booleans()):
        message["entities"] = [{"type": "mention", "offset": draw(st.integers(0, 80)),
                                "length": draw(st.integers(1, 40))}]
    if draw(st.booleans()):
        message.update(message_thread_id=draw(st.integers(1, INT32_MAX)),
                       is_topic_message=True)
    if draw(st.booleans()):
        message["sender_chat"] = {"id": CHAT, "type": "supergroup", "title": "Grup"}
    return {"update_id": n, "message": message}, True


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bool, bool, dict[str, Any] | None, bytes | None]:
    """(valid?, stores a message?, the body as JSON, or raw bytes)."""
    body, stores = _valid(draw)
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "raw"]))
    if kind == "valid":
        return True, stores, body, None
    if kind == "raw":
        raw = draw(st.sampled_from([b"", b"{", b"null", b"[]", b'"x"', b"{\"update_id\": 1,}",
                                    json.dumps(body).encode()[:-3], b"\xff\xfe{}",
                                    b'{"update_id": 1, "message": {"text": "\\ud800"}}']))
        return False, False, None, raw
    payload = next(k for k in body if k != "update_id")
    fits = [(path, v) for path, v in BAD_VALUES + BAD_OTHER
            if path[0] in ("update_id", payload) and _reachable(body, path)]
    if payload == "message":  # a second payload is refused too
        fits.append((("edited_message",), {"message_id": 1}))
    path, value = draw(st.sampled_from(fits))
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return False, False, body, None


def _reachable(body: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = body
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return isinstance(node, dict) and (len(path) == 1 or path[-1] in node
                                       or path[0] == "message")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=bodies())
async def test_generated_bodies_never_5xx_and_store_each_valid_message_once(
    client: tuple[httpx.AsyncClient, int, ListenerState], sessionmaker: Sessions,  # noqa: F811
    case: tuple[bool, bool, dict[str, Any] | None, bytes | None],
) -> None:
    c, bot_id, _ = client
    valid, stores, body, raw = case
    async with sessionmaker() as s:
        before = (await s.execute(select(func.count()).select_from(Message))).scalar_one()
    r = await post(c, bot_id, body, raw=raw)
    assert r.status_code < 500, r.text
    if valid:
        assert r.status_code == 200, r.text
        assert r.json().get("stored", False) is stores, r.text
        again = await post(c, bot_id, body)  # Telegram's retry of the same update
        assert again.status_code == 200 and again.json().get("duplicate") is True
    else:
        assert r.status_code == 400, (r.status_code, r.text, body, raw)
    async with sessionmaker() as s:
        after = (await s.execute(select(func.count()).select_from(Message))).scalar_one()
    assert after == before + (1 if stores else 0)

"""The audit log: newest first with keyset pages, filters, secrets masked, diffs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db.models import AuditEntry, User
from backend.errors import ValidationFailed
from backend.stores import audit

Sessions = async_sessionmaker[AsyncSession]


async def add_user(sm: Sessions) -> int:
    async with sm() as s, s.begin():
        user = User(username="op", password_hash="$argon2id$x", role="admin")
        s.add(user)
        await s.flush()
        return user.id


async def test_record_and_list_newest_first_with_pages(sessionmaker: Sessions) -> None:
    uid = await add_user(sessionmaker)
    async with sessionmaker() as s, s.begin():
        for n in range(7):
            await audit.record(
                s, user_id=uid, username="op", action="bot.update", entity="bot",
                entity_id=n % 2, before={"mood": n}, after={"mood": n + 1},
            )
        await audit.record(s, user_id=None, username="system", action="settings.update",
                           entity="settings", entity_id=None, before=None,
                           after={"max_msgs_per_min": 8})
    async with sessionmaker() as s:
        everything = await audit.list_entries(s)
        ids = [e.id for e in everything]
        assert len(ids) == 8
        assert ids == sorted(ids, reverse=True)
        assert everything[0].entity == "settings" and everything[0].before is None
        assert everything[1].after == {"mood": 7} and everything[1].user_id == uid
        assert everything[1].at.tzinfo is not None

        pages: list[list[int]] = []
        cursor: int | None = None
        while True:
            page = await audit.list_entries(s, limit=3, before_id=cursor)
            if not page:
                break
            pages.append([e.id for e in page])
            cursor = page[-1].id
        assert [len(p) for p in pages] == [3, 3, 2]
        assert [i for p in pages for i in p] == ids

        bots = await audit.list_entries(s, entity="bot")
        assert len(bots) == 7 and {e.entity for e in bots} == {"bot"}
        odd = await audit.list_entries(s, entity="bot", entity_id=1)
        assert [e.before for e in odd] == [{"mood": 5}, {"mood": 3}, {"mood": 1}]
        assert await audit.list_entries(s, entity="chat") == []
        with pytest.raises(ValidationFailed):
            await audit.list_entries(s, limit=0)


async def test_secrets_masked_at_any_depth(sessionmaker: Sessions) -> None:
    secret = "7100000001:AAHverysecretverysecretverysecret12"
    before = {
        "name": "Mehmet",
        "token": secret,
        "Bot_Token_Encrypted": "abc",
        "config": {"API_KEY": "sk-123", "nested": [{"password": "hunter2"}, {"ok": 1}]},
        "providers": [{"name": "groq", "api-key": "gsk-9", "webhook_secret": "s3"}],
    }
    async with sessionmaker() as s, s.begin():
        entry = await audit.record(s, user_id=None, username="op", action="bot.update",
                                   entity="bot", entity_id="1", before=before,
                                   after={"token": secret, "name": "Mehmet Bey"})
        entry_id = entry.id
    assert before["token"] == secret  # the caller's dict is not modified
    async with sessionmaker() as s:
        stored = (
            await s.execute(select(AuditEntry).where(AuditEntry.id == entry_id))
        ).scalar_one()
    assert stored.before == {
        "name": "Mehmet",
        "token": "***",
        "Bot_Token_Encrypted": "***",
        "config": {"API_KEY": "***", "nested": [{"password": "***"}, {"ok": 1}]},
        "providers": [{"name": "groq", "api-key": "***", "webhook_secret": "***"}],
    }
    assert stored.after == {"token": "***", "name": "Mehmet Bey"}
    for value in ("AAHverysecret", "sk-123", "hunter2", "gsk-9", "s3"):
        assert value not in repr(stored.before) + repr(stored.after)


async def test_not_json_refused_by_side(sessionmaker: Sessions) -> None:
    async with sessionmaker() as s, s.begin():
        with pytest.raises(ValidationFailed) as exc:
            await audit.record(s, user_id=None, username="op", action="x", entity="bot",
                               entity_id=1, before={"at": datetime.now(UTC)}, after=None)
    assert exc.value.problems[0][0].startswith("before")


def test_diff_keeps_only_changes() -> None:
    before = {"a": 1, "b": 2, "style": {"length": "short"}, "gone": True}
    after = {"a": 1, "b": 3, "style": {"length": "long"}, "new": "x"}
    old, new = audit.diff(before, after)
    assert old == {"b": 2, "style": {"length": "short"}, "gone": True}
    assert new == {"b": 3, "style": {"length": "long"}, "new": "x"}
    assert audit.diff(before, dict(before)) == ({}, {})

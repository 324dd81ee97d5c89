"""A sent message's commit is tried again while the database cannot be reached
(:meth:`behavior_engine.records.StoreTurnRecords.commit_sent`; the pool has no pre-ping, so a
connection the server dropped fails the first statement on it: issue 20)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from behavior_engine import records as records_module
from behavior_engine.records import COMMIT_ATTEMPTS, StoreTurnRecords
from tests.unit.test_typing_pace import fake_sessionmaker as sessionmaker
from tests.unit.test_typing_pace import sent_with, settings, stored_row


class Script:
    """commit_sent's answers in order: an exception to raise, or None to store the row."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *steps: BaseException | None,
                 stored: SimpleNamespace | None = None) -> None:
        self.steps = list(steps)
        self.calls = 0
        self.slept: list[float] = []
        self.looked_up: list[str] = []

        async def commit_sent(session: object, **kw: Any) -> SimpleNamespace:
            self.calls += 1
            step = self.steps.pop(0) if self.steps else None
            if step is not None:
                raise step
            return stored_row(**kw)

        async def by_turn_id(session: object, *, turn_id: str) -> SimpleNamespace | None:
            self.looked_up.append(turn_id)
            return stored

        async def sleep(s: float) -> None:
            self.slept.append(s)

        monkeypatch.setattr(records_module.turn_store, "commit_sent", commit_sent)
        monkeypatch.setattr(records_module.message_store, "by_turn_id", by_turn_id)
        monkeypatch.setattr(records_module.asyncio, "sleep", sleep)


def _duplicate() -> IntegrityError:
    return IntegrityError("INSERT INTO messages", None, Exception("duplicate key"))


async def test_a_database_restart_is_waited_out_and_the_message_stored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, sent = await sent_with("Bence beklemek lazım.", settings())
    script = Script(monkeypatch, ConnectionRefusedError(), ConnectionResetError(), None)
    item = await StoreTurnRecords(sessionmaker).commit_sent(sent)  # type: ignore[arg-type]
    assert (script.calls, script.slept) == (3, [0.5, 1.0])
    assert item.message_id == 77 and item.text == "Bence beklemek lazım."


async def test_a_lost_acknowledgement_finds_the_message_stored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, sent = await sent_with("Bence beklemek lazım.", settings())
    stored = stored_row(telegram_message_id=sent.message.message_id, bot_id=sent.turn.bot_id,
                  meta=records_module._meta(sent), text="Bence beklemek lazım.")
    script = Script(monkeypatch, ConnectionResetError(), _duplicate(), stored=stored)
    item = await StoreTurnRecords(sessionmaker).commit_sent(sent)  # type: ignore[arg-type]
    assert script.calls == 2 and script.looked_up == [sent.turn.turn_id]
    assert item.message_id == 77


async def test_a_duplicate_at_once_a_statement_error_and_a_long_outage_are_raised(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, sent = await sent_with("Bence beklemek lazım.", settings())
    records = StoreTurnRecords(sessionmaker)  # type: ignore[arg-type]
    script = Script(monkeypatch, _duplicate())
    with pytest.raises(IntegrityError):
        await records.commit_sent(sent)
    assert (script.calls, script.looked_up) == (1, [])
    script = Script(monkeypatch, ValueError("a bug, not an outage"))
    with pytest.raises(ValueError):
        await records.commit_sent(sent)
    assert script.calls == 1
    script = Script(monkeypatch, *[ConnectionRefusedError()] * COMMIT_ATTEMPTS)
    with pytest.raises(ConnectionRefusedError):
        await records.commit_sent(sent)
    assert script.calls == COMMIT_ATTEMPTS and script.slept == [0.5, 1.0, 2.0, 4.0, 8.0]
    # a retry whose duplicate is not found stored is raised too
    script = Script(monkeypatch, ConnectionResetError(), _duplicate(), stored=None)
    with pytest.raises(IntegrityError):
        await records.commit_sent(sent)


async def test_the_turns_ledger_rows_ride_on_the_commit_that_stores_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit (issue 20): each attempt takes the turn's buffered ledger rows; a failed
    attempt gives them back, so the attempt that stores the message writes them once."""
    _, sent = await sent_with("Bence beklemek lazım.", settings())
    seen: list[list[str]] = []

    class FakeLedger:
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = [{"turn_id": sent.turn.turn_id, "attempt": 1},
                                               {"turn_id": "other"}]

        def take(self, turn_id: str) -> list[dict[str, Any]]:
            mine = [r for r in self.rows if r["turn_id"] == turn_id]
            self.rows = [r for r in self.rows if r["turn_id"] != turn_id]
            return mine

        def put_back(self, rows: list[dict[str, Any]]) -> None:
            self.rows = rows + self.rows

    ledger = FakeLedger()
    script = Script(monkeypatch, ConnectionResetError(), None)
    original = records_module.turn_store.commit_sent

    async def spy(session: object, **kw: Any) -> SimpleNamespace:
        seen.append([r["turn_id"] for r in kw["ledger_rows"]])
        result: SimpleNamespace = await original(session, **kw)
        return result

    monkeypatch.setattr(records_module.turn_store, "commit_sent", spy)
    records = StoreTurnRecords(sessionmaker, ledger=ledger)  # type: ignore[arg-type]
    await records.commit_sent(sent)
    assert script.calls == 2
    assert seen == [[sent.turn.turn_id], [sent.turn.turn_id]]  # given back, taken again
    assert ledger.rows == [{"turn_id": "other"}]  # written with the message; others wait

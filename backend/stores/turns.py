"""Fencing tokens and turn records: the exactly-once send protocol's system of record.

The protocol (one turn of one bot):

1. the worker holds the bot's lease and its fencing token (:func:`issue_fencing_tokens`);
2. before the send, :func:`record_intent` checks the token is still current (row lock on
   PostgreSQL) and writes the turn with status ``intent``; a turn id already acted on
   (``intent``, ``sent``, ``unknown``, ``failed``) is refused, so a reply request delivered
   twice is acted on once;
3. the message is sent to Telegram;
4. :func:`finish_turn` commits the outcome (``sent`` with the Telegram message id, in the
   same transaction as the message row; or ``retry``/``failed``/``unknown``).

A worker killed between 3 and 4 leaves an ``intent``: the next holder of the bot's lease
turns it into ``unknown`` (:func:`reconcile`) and never sends it again, because Telegram's
sendMessage has no idempotency key to ask whether it arrived.

A text over Telegram's limit is one turn sent as several messages (parts, in order;
``behavior_engine.pipeline.split_text``). The turn has one intent and one outcome; each part
is stored as soon as Telegram accepted it, once:

- part 1 by :func:`commit_sent` (``messages.turn_id`` = the turn id, unique; the turn becomes
  ``sent`` with part 1's Telegram id);
- part k ≥ 2 by :func:`commit_part`, whose ``messages.turn_id`` is :func:`part_turn_id`
  (turn id, k): a UUID derived from both, so it stays unique (a part is never stored twice)
  and links the part to its turn (:func:`turn_message_ids` finds them all);
- a later part that is not sent (an error answer, an unknown outcome, a limit) leaves the
  parts before it stored and the turn ``sent``, with ``turns.error`` saying which part was
  not sent and why (:func:`note_partial`): nothing is sent again.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db.models import TURN_STATUSES, Bot, BotLease, LLMCall, Message, TurnRecord
from backend.db.types import utcnow
from backend.errors import FencedOut, ValidationFailed
from backend.schemas import MessageMeta
from backend.stores import bots as bot_store
from backend.stores import llm_calls as ledger_store
from backend.stores import messages as message_store

#: Statuses after which a turn id is never acted on again.
FINAL_OR_PENDING = ("intent", "sent", "failed", "unknown")
#: Namespace of :func:`part_turn_id` (a fixed UUID4).
PART_NAMESPACE = uuid.UUID("5d1b3f0e-5c4a-4f7e-9a51-3c0d6f2b8e41")
#: Most parts :func:`turn_message_ids` looks for (the pipeline sends at most this many).
MAX_PARTS = 8


def part_turn_id(turn_id: str, part: int) -> str:
    """The ``messages.turn_id`` of part ``part`` (1-based) of a turn's split text: the turn
    id itself for part 1, else UUID5(:data:`PART_NAMESPACE`, ``"<turn_id>/<part>"``), a
    36-character id that fits the column and is unique per (turn, part).

    Raises:
        ValueError: ``part`` < 1.
    """
    if part < 1:
        raise ValueError(f"part is 1-based, got {part}")
    return turn_id if part == 1 else str(uuid.uuid5(PART_NAMESPACE, f"{turn_id}/{part}"))


def _insert(session: AsyncSession) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def issue_fencing_tokens(
    session: AsyncSession, *, bot_ids: Collection[int], holder: str
) -> dict[int, int]:
    """Increment the fencing token of each bot in ``bot_ids`` and name ``holder`` its holder.

    Call right after winning the bots' leases in Redis. One statement
    (INSERT ... ON CONFLICT DO UPDATE ... RETURNING).

    Returns:
        bot id → the new token (1 for a bot never leased before). Empty for no bots.
    """
    if not bot_ids:
        return {}
    now = utcnow()
    ins = _insert(session)(BotLease.__table__).values(
        [{"bot_id": b, "fencing_token": 1, "holder": holder, "acquired_at": now}
         for b in sorted(bot_ids)]
    )
    stmt = ins.on_conflict_do_update(
        index_elements=["bot_id"],
        set_={
            "fencing_token": BotLease.__table__.c.fencing_token + 1,
            "holder": holder,
            "acquired_at": now,
        },
    ).returning(BotLease.__table__.c.bot_id, BotLease.__table__.c.fencing_token)
    rows = (await session.execute(stmt)).all()
    return {int(b): int(t) for b, t in rows}


async def check_fence(session: AsyncSession, *, bot_id: int, token: int) -> None:
    """Raise :class:`FencedOut` unless ``token`` is ``bot_id``'s current fencing token.

    On PostgreSQL the row stays locked until the transaction ends, so a new holder's
    :func:`issue_fencing_tokens` waits for this transaction (and then sees its writes).
    """
    got = await session.execute(
        update(BotLease)
        .where(BotLease.bot_id == bot_id, BotLease.fencing_token == token)
        .values(fencing_token=BotLease.fencing_token)
    )
    if getattr(got, "rowcount", 0) != 1:
        raise FencedOut(bot_id, token)


async def record_intent(
    session: AsyncSession,
    *,
    turn_id: str,
    bot_id: int,
    chat_id: int,
    token: int,
    worker: str,
    reply_to_message_id: int | None = None,
) -> bool:
    """Record that ``turn_id`` is about to be sent, under fencing token ``token``.

    One statement on PostgreSQL (the fence's ``UPDATE ... RETURNING`` and the insert in common
    table expressions: ``WITH turn_intent``); two on SQLite, which has no data-modifying CTEs
    (:func:`check_fence`, then the insert).

    Returns:
        True: recorded (a new turn, or a retry of one whose non-delivery was certain);
        False: this turn id was already acted on (``intent``, ``sent``, ``failed`` or
        ``unknown``): do not send.

    Raises:
        FencedOut: ``token`` is stale; nothing is written.
    """
    now = utcnow()
    table = TurnRecord.__table__
    values = {"turn_id": turn_id, "bot_id": bot_id, "chat_id": chat_id, "fencing_token": token,
              "worker": worker, "status": "intent", "attempts": 1,
              "reply_to_message_id": reply_to_message_id, "created_at": now, "updated_at": now}
    again = {"status": "intent", "attempts": table.c.attempts + 1, "fencing_token": token,
             "worker": worker, "updated_at": now, "error": None}
    if session.get_bind().dialect.name == "postgresql":
        # One statement (issue 20): the fence's row lock and the insert, which happens only
        # when the fence matched; the two counts tell a stale token from a turn acted on.
        fence = (update(BotLease)
                 .where(BotLease.bot_id == bot_id, BotLease.fencing_token == token)
                 .values(fencing_token=BotLease.fencing_token)
                 .returning(BotLease.bot_id).cte("turn_intent"))
        rows = select(*(literal(v, table.c[k].type).label(k) for k, v in values.items())
                      ).select_from(fence)
        written = (pg_insert(TurnRecord).from_select(list(values), rows)
                   .on_conflict_do_update(index_elements=["turn_id"], set_=again,
                                          where=table.c.status == "retry")
                   .returning(table.c.turn_id).cte("turn_written"))
        fenced, fresh = (await session.execute(select(
            select(func.count()).select_from(fence).scalar_subquery(),
            select(func.count()).select_from(written).scalar_subquery()))).one()
        if fenced != 1:
            raise FencedOut(bot_id, token)
        return bool(fresh)
    await check_fence(session, bot_id=bot_id, token=token)
    stmt = (_insert(session)(table).values(**values)
            .on_conflict_do_update(index_elements=["turn_id"], set_=again,
                                   where=table.c.status == "retry")
            .returning(table.c.turn_id))
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def finish_turn(
    session: AsyncSession,
    *,
    turn_id: str,
    status: str,
    error: str | None = None,
    telegram_message_id: int | None = None,
) -> None:
    """Set the outcome of a recorded turn.

    A ``sent`` outcome is written whatever the status was (the message exists on Telegram:
    that is a fact, even when the lease moved in between); other outcomes only replace
    ``intent``, so a turn another worker already reconciled keeps that status.

    Raises:
        ValidationFailed: ``status`` is not one of ``sent``, ``retry``, ``failed``,
            ``unknown``.
    """
    if status not in TURN_STATUSES or status == "intent":
        raise ValidationFailed("turn outcome", [("status", f"{status!r} is not an outcome")])
    stmt = update(TurnRecord).where(TurnRecord.turn_id == turn_id)
    if status != "sent":
        stmt = stmt.where(TurnRecord.status == "intent")
    await session.execute(
        stmt.values(status=status, error=error, telegram_message_id=telegram_message_id,
                    updated_at=utcnow())
    )


async def reconcile(
    session: AsyncSession, *, tokens: dict[int, int]
) -> list[TurnRecord]:
    """Turn the ``intent`` records left by earlier holders of these bots into ``unknown``.

    Args:
        tokens: bot id → the fencing token just issued to the caller; intents under an
            older token belong to a holder that is gone (killed, or lost its lease).

    Returns:
        The turns now ``unknown``. The human messages they answered are marked answered
        (``reply_wanted`` cleared): the reply may have been delivered, so no other reply is
        planned for them.
    """
    if not tokens:
        return []
    rows = (
        await session.execute(
            select(TurnRecord).where(
                TurnRecord.bot_id.in_(list(tokens)), TurnRecord.status == "intent"
            )
        )
    ).scalars().all()
    stale = [r for r in rows if r.fencing_token < tokens[r.bot_id]]
    now = utcnow()
    for r in stale:
        r.status = "unknown"
        r.error = "worker gone between intent and outcome; not resent"
        r.updated_at = now
    answered = [r.reply_to_message_id for r in stale if r.reply_to_message_id is not None]
    if answered:
        await session.execute(
            update(Message).where(Message.id.in_(answered)).values(reply_wanted=False)
        )
    await session.flush()
    return list(stale)


async def turns_for_replies(
    session: AsyncSession, *, message_ids: Sequence[int]
) -> dict[int, list[str]]:
    """Human message id → statuses of the reply turns recorded for it."""
    if not message_ids:
        return {}
    rows = await session.execute(
        select(TurnRecord.reply_to_message_id, TurnRecord.status).where(
            TurnRecord.reply_to_message_id.in_(list(message_ids))
        )
    )
    out: dict[int, list[str]] = {}
    for mid, status in rows.all():
        if mid is not None:
            out.setdefault(int(mid), []).append(str(status))
    return out


async def status_counts(
    session: AsyncSession, *, updated_since: datetime | None = None
) -> dict[str, int]:
    """Turn records by status (for reports and tests): status → records; statuses without
    one are absent.

    Args:
        updated_since: only records whose ``updated_at`` is at or after this (aware UTC).
    """
    stmt = select(TurnRecord.status, func.count())
    if updated_since is not None:
        stmt = stmt.where(TurnRecord.updated_at >= updated_since)
    rows = await session.execute(stmt.group_by(TurnRecord.status))
    return {str(s): int(n) for s, n in rows.all()}


async def commit_sent(
    session: AsyncSession,
    *,
    turn_id: str,
    chat_id: int,
    bot_id: int,
    telegram_message_id: int,
    text: str,
    meta: MessageMeta,
    created_at: datetime,
    reply_to_telegram_message_id: int | None = None,
    answered_human: bool = False,
    mood: float | None = None,
    answered_message_id: int | None = None,
    ledger_rows: Sequence[dict[str, Any]] = (),
) -> Message:
    """Commit a sent turn in one place: its message row, the turn's ``sent`` outcome, the
    answered flag of the human message it replies to, the bot's mood, and ledger rows
    waiting to be written (group commit: the LLM calls' ledger rides on the turn's commit
    instead of a statement of its own). One statement on PostgreSQL
    (:func:`_commit_sent_pg`); on SQLite one each.

    Call inside the caller's transaction (``session.begin()``), after Telegram accepted the
    send: everything here is one commit, so a sent turn is never half recorded.

    Args:
        turn_id / chat_id / bot_id: the turn and where it was sent (our ids).
        telegram_message_id: Telegram's id of the sent message; created_at: its time (UTC).
        text / meta: the message text and its metadata (provider, timings...).
        reply_to_telegram_message_id: the message it replies to in the chat as Telegram
            shows it, if any (None when Telegram sent it without the reply).
        answered_human: the reply target ``reply_to_telegram_message_id`` is a human message
            that now has its answer.
        mood: the bot's mood after the turn, -1.0–1.0 (clamped); None: unchanged.
        answered_message_id: our ``messages.id`` of the human message the turn answers: its
            ``reply_wanted`` is cleared even when Telegram dropped the reply (target
            deleted) or the chat migrated (the old group's ids were negated).
        ledger_rows: ``llm_calls`` rows (:func:`backend.stores.llm_calls.record_calls`'s
            keys), any turn's: written in the same transaction.

    Returns:
        The stored message row (flushed: ``id`` set).

    Raises:
        sqlalchemy.exc.IntegrityError: the turn or the (chat, Telegram id) is already
            stored; a duplicate, which the intent record prevents.
    """
    answered_tg = reply_to_telegram_message_id if answered_human else None
    if session.get_bind().dialect.name == "postgresql":
        return await _commit_sent_pg(
            session, turn_id=turn_id, chat_id=chat_id, bot_id=bot_id,
            telegram_message_id=telegram_message_id, text=text, meta=meta,
            created_at=created_at, reply_to_telegram_message_id=reply_to_telegram_message_id,
            answered_tg=answered_tg, mood=mood, answered_message_id=answered_message_id,
            ledger_rows=ledger_rows)
    await ledger_store.record_calls(session, rows=ledger_rows)
    msg = await message_store.record_sent(
        session, chat_id=chat_id, bot_id=bot_id, turn_id=turn_id,
        telegram_message_id=telegram_message_id, text=text, meta=meta,
        created_at=created_at, reply_to_telegram_message_id=reply_to_telegram_message_id,
    )
    await finish_turn(session, turn_id=turn_id, status="sent",
                      telegram_message_id=telegram_message_id)
    if answered_human and reply_to_telegram_message_id is not None:
        await message_store.mark_answered(
            session, chat_id=chat_id, telegram_message_ids=[reply_to_telegram_message_id])
    if answered_message_id is not None:
        await session.execute(update(Message).where(Message.id == answered_message_id)
                              .values(reply_wanted=False))
    if mood is not None:
        await bot_store.set_mood(session, bot_id=bot_id, mood=mood)
    return msg


async def _commit_sent_pg(
    session: AsyncSession, *, turn_id: str, chat_id: int, bot_id: int,
    telegram_message_id: int, text: str, meta: MessageMeta, created_at: datetime,
    reply_to_telegram_message_id: int | None, answered_tg: int | None, mood: float | None,
    answered_message_id: int | None, ledger_rows: Sequence[dict[str, Any]] = (),
) -> Message:
    """:func:`commit_sent` in one statement (issue 20): the message's insert, the turn's
    outcome, the answered human message, the mood and the ledger rows as common table
    expressions (counted as ``WITH sent_turn``, the first one rendered); PostgreSQL runs
    every data-modifying CTE once, on one snapshot.
    The answered message is one UPDATE (by Telegram id or by our id: both may name the same
    row, which two UPDATEs of one statement must not touch)."""
    row = {"chat_id": chat_id, "bot_id": bot_id, "turn_id": turn_id,
           "telegram_message_id": telegram_message_id,
           "reply_to_telegram_message_id": reply_to_telegram_message_id, "text": text,
           "meta": meta, "created_at": created_at, "reply_wanted": False}
    inserted = (pg_insert(Message).values(**row).returning(Message.id)
                .cte("sent_message"))
    ctes: list[Any] = [
        update(TurnRecord).where(TurnRecord.turn_id == turn_id)
        .values(status="sent", error=None, telegram_message_id=telegram_message_id,
                updated_at=utcnow()).cte("sent_turn")]
    targets: list[ColumnElement[bool]] = []
    if answered_tg is not None:
        targets.append((Message.chat_id == chat_id)
                       & (Message.telegram_message_id == answered_tg))
    if answered_message_id is not None:
        targets.append(Message.id == answered_message_id)
    if targets:
        ctes.append(update(Message).where(or_(*targets)).values(reply_wanted=False)
                    .cte("answered"))
    if mood is not None:
        # updated_at given: a column's Python-side onupdate is not run inside a CTE
        ctes.append(update(Bot).where(Bot.id == bot_id)
                    .values(mood=max(-1.0, min(1.0, mood)), updated_at=utcnow())
                    .cte("sent_mood"))
    if ledger_rows:
        ctes.append(pg_insert(LLMCall).values(list(ledger_rows)).cte("sent_ledger"))
    new_id = (await session.execute(
        select(inserted.c.id).add_cte(*ctes))).scalar_one()
    return Message(id=new_id, **row)


async def commit_part(
    session: AsyncSession,
    *,
    turn_id: str,
    part: int,
    chat_id: int,
    bot_id: int,
    telegram_message_id: int,
    text: str,
    meta: MessageMeta,
    created_at: datetime,
) -> Message:
    """Store part ``part`` ≥ 2 of a sent turn's split text (module docstring), after
    Telegram accepted it; its ``turn_id`` is :func:`part_turn_id`. The turn's record is not
    touched (part 1's :func:`commit_sent` made it ``sent``).

    Returns:
        The stored message row (flushed: ``id`` set).

    Raises:
        ValueError: ``part`` < 2.
        sqlalchemy.exc.IntegrityError: this part or its (chat, Telegram id) is already
            stored.
    """
    if part < 2:
        raise ValueError(f"part 1 is stored by commit_sent, got part {part}")
    return await message_store.record_sent(
        session, chat_id=chat_id, bot_id=bot_id, turn_id=part_turn_id(turn_id, part),
        telegram_message_id=telegram_message_id, text=text, meta=meta, created_at=created_at,
    )


async def note_partial(session: AsyncSession, *, turn_id: str, error: str) -> bool:
    """Say on a ``sent`` turn that a later part of its text was not sent (``turns.error``;
    the status stays ``sent``: its first part is on Telegram, and nothing is resent).

    Returns:
        True when the turn was ``sent`` and now carries ``error``; False otherwise.
    """
    got = await session.execute(
        update(TurnRecord).where(TurnRecord.turn_id == turn_id, TurnRecord.status == "sent")
        .values(error=error, updated_at=utcnow()))
    return bool(getattr(got, "rowcount", 0))


async def turn_message_ids(session: AsyncSession, *, turn_id: str) -> list[int]:
    """Our ``messages.id`` of every stored part of ``turn_id``'s text, in part order (one id
    for a text sent whole; none for a turn not sent)."""
    ids = [part_turn_id(turn_id, k) for k in range(1, MAX_PARTS + 1)]
    rows = (await session.execute(
        select(Message.turn_id, Message.id).where(Message.turn_id.in_(ids)))).all()
    found = {str(t): int(i) for t, i in rows}
    return [found[t] for t in ids if t in found]

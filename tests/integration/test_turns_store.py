"""Fencing tokens and turn records (backend.stores.turns) on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher
from backend.db.models import BotLease, LLMCall, Message, TurnRecord
from backend.errors import FencedOut, ValidationFailed
from backend.schemas import MessageMeta
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import messages as message_store
from backend.stores import turns as turn_store
from bots.personas import load_persona_dir

Sessions = async_sessionmaker[AsyncSession]

CHAT_TG = -100777


@dataclass
class World:
    chat_id: int
    bot_ids: list[int]  # the demo personas, in load order
    usernames: list[str]


async def seed_world(sm: Sessions, cipher: TokenCipher) -> World:
    """One chat with the demo persona bots as members."""
    async with sm() as s, s.begin():
        chat = await chat_store.upsert_chat(s, telegram_chat_id=CHAT_TG, title="Test grubu",
                                            topics={"usdtry": 1.0, "btc": 1.0})
        ids, names = [], []
        for i, persona in enumerate(load_persona_dir()):
            token = f"{8200000000 + i}:token-for-tests-{i:04d}-abcdefgh"
            bot = await bot_store.upsert_persona_bot(s, persona=persona, token=token,
                                                     cipher=cipher)
            await chat_store.add_bot(s, chat_id=chat.id, bot_id=bot.id)
            ids.append(bot.id)
            names.append(persona.username)
        return World(chat_id=chat.id, bot_ids=ids, usernames=names)


async def human_message(sm: Sessions, chat_id: int, tg_id: int, text: str = "Dolar ne olur?",
                        *, age_s: float = 5.0) -> int:
    """Store a human message waiting for a reply; return its id."""
    async with sm() as s, s.begin():
        mid = await message_store.record_incoming(
            s, chat_id=chat_id, telegram_message_id=tg_id, text=text, sender_id=99,
            sender_name="Deniz", meta=MessageMeta(sender_username="deniz"),
            created_at=datetime.now(UTC) - timedelta(seconds=age_s), reply_wanted=True,
        )
    assert mid is not None
    return mid


async def issue(sm: Sessions, bot_ids: list[int], holder: str = "w1") -> dict[int, int]:
    async with sm() as s, s.begin():
        return await turn_store.issue_fencing_tokens(s, bot_ids=bot_ids, holder=holder)


async def intent(sm: Sessions, turn_id: str, bot_id: int, chat_id: int, token: int,
                 worker: str = "w1", reply_to: int | None = None) -> bool:
    async with sm() as s, s.begin():
        return await turn_store.record_intent(
            s, turn_id=turn_id, bot_id=bot_id, chat_id=chat_id, token=token, worker=worker,
            reply_to_message_id=reply_to,
        )


async def finish(sm: Sessions, turn_id: str, status: str, **kw: object) -> None:
    async with sm() as s, s.begin():
        await turn_store.finish_turn(s, turn_id=turn_id, status=status, **kw)  # type: ignore[arg-type]


async def turn(sm: Sessions, turn_id: str) -> TurnRecord | None:
    async with sm() as s:
        return await s.get(TurnRecord, turn_id)


async def all_turns(sm: Sessions) -> list[TurnRecord]:
    async with sm() as s:
        return list((await s.execute(select(TurnRecord))).scalars().all())


async def reply_wanted(sm: Sessions, message_id: int) -> bool:
    async with sm() as s:
        msg = await s.get(Message, message_id)
        assert msg is not None
        return msg.reply_wanted


# -- fencing tokens ---------------------------------------------------------------------------


async def test_tokens_start_at_one_and_increase(sessionmaker: Sessions,
                                                cipher: TokenCipher) -> None:
    w = await seed_world(sessionmaker, cipher)
    b1, b2 = w.bot_ids[:2]
    assert await issue(sessionmaker, [], "w1") == {}
    assert await issue(sessionmaker, [b1, b2], "w1") == {b1: 1, b2: 1}
    assert await issue(sessionmaker, [b1], "w2") == {b1: 2}
    assert await issue(sessionmaker, [b2, b1], "w3") == {b1: 3, b2: 2}
    async with sessionmaker() as s:
        rows = {r.bot_id: r for r in (await s.execute(select(BotLease))).scalars().all()}
    assert {b: (r.fencing_token, r.holder) for b, r in rows.items()} == {
        b1: (3, "w3"), b2: (2, "w3")}
    assert set(rows) == {b1, b2}  # bots never leased have no row


async def test_check_fence_current_passes_stale_raises(sessionmaker: Sessions,
                                                       cipher: TokenCipher) -> None:
    w = await seed_world(sessionmaker, cipher)
    b1, b2 = w.bot_ids[:2]
    await issue(sessionmaker, [b1, b2])
    await issue(sessionmaker, [b1])  # b1 now at 2, b2 at 1
    async with sessionmaker() as s, s.begin():
        await turn_store.check_fence(s, bot_id=b1, token=2)
        await turn_store.check_fence(s, bot_id=b2, token=1)
    for bot, token in [(b1, 1), (b1, 3), (b2, 2), (w.bot_ids[2], 1)]:
        async with sessionmaker() as s, s.begin():
            with pytest.raises(FencedOut) as err:
                await turn_store.check_fence(s, bot_id=bot, token=token)
        assert (err.value.bot_id, err.value.token) == (bot, token)
    # the check changed nothing
    async with sessionmaker() as s:
        tokens = {r.bot_id: r.fencing_token
                  for r in (await s.execute(select(BotLease))).scalars().all()}
    assert tokens == {b1: 2, b2: 1}


# -- record_intent ----------------------------------------------------------------------------


async def test_record_intent_stale_token_writes_nothing(sessionmaker: Sessions,
                                                        cipher: TokenCipher) -> None:
    w = await seed_world(sessionmaker, cipher)
    b1 = w.bot_ids[0]
    await issue(sessionmaker, [b1])
    await issue(sessionmaker, [b1])  # token 2
    with pytest.raises(FencedOut):
        await intent(sessionmaker, "t-stale", b1, w.chat_id, token=1)
    assert await all_turns(sessionmaker) == []
    assert await intent(sessionmaker, "t-stale", b1, w.chat_id, token=2) is True
    got = await turn(sessionmaker, "t-stale")
    assert got is not None and (got.status, got.fencing_token, got.attempts) == ("intent", 2, 1)


@pytest.mark.parametrize("status", ["intent", "sent", "failed", "unknown"])
async def test_record_intent_refuses_a_turn_already_acted_on(
    sessionmaker: Sessions, cipher: TokenCipher, status: str
) -> None:
    w = await seed_world(sessionmaker, cipher)
    b1 = w.bot_ids[0]
    await issue(sessionmaker, [b1])
    assert await intent(sessionmaker, "t1", b1, w.chat_id, token=1) is True
    if status != "intent":
        await finish(sessionmaker, "t1", status, telegram_message_id=5 if status == "sent"
                     else None)
    before = await turn(sessionmaker, "t1")
    assert before is not None and before.status == status
    assert await intent(sessionmaker, "t1", b1, w.chat_id, token=1, worker="w2") is False
    after = await turn(sessionmaker, "t1")
    assert after is not None
    assert (after.status, after.attempts, after.worker) == (status, 1, "w1")


async def test_record_intent_retry_is_recorded_again(sessionmaker: Sessions,
                                                     cipher: TokenCipher) -> None:
    w = await seed_world(sessionmaker, cipher)
    b1 = w.bot_ids[0]
    await issue(sessionmaker, [b1])
    assert await intent(sessionmaker, "t1", b1, w.chat_id, token=1) is True
    await finish(sessionmaker, "t1", "retry", error="429")
    await issue(sessionmaker, [b1], "w2")  # the lease moved: token 2
    with pytest.raises(FencedOut):
        await intent(sessionmaker, "t1", b1, w.chat_id, token=1)
    retried = await turn(sessionmaker, "t1")
    assert retried is not None and (retried.status, retried.attempts) == ("retry", 1)
    assert await intent(sessionmaker, "t1", b1, w.chat_id, token=2, worker="w2") is True
    got = await turn(sessionmaker, "t1")
    assert got is not None
    assert (got.status, got.attempts, got.fencing_token, got.worker, got.error) == (
        "intent", 2, 2, "w2", None)
    # once it is an intent again, a third request is refused
    assert await intent(sessionmaker, "t1", b1, w.chat_id, token=2, worker="w2") is False
    await finish(sessionmaker, "t1", "retry")
    assert await intent(sessionmaker, "t1", b1, w.chat_id, token=2, worker="w2") is True
    got = await turn(sessionmaker, "t1")
    assert got is not None and got.attempts == 3


# -- finish_turn ------------------------------------------------------------------------------


async def test_finish_turn_outcomes(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    w = await seed_world(sessionmaker, cipher)
    b1 = w.bot_ids[0]
    await issue(sessionmaker, [b1])
    for t in ("a", "b", "c", "d"):
        assert await intent(sessionmaker, t, b1, w.chat_id, token=1)
    # intent -> sent
    await finish(sessionmaker, "a", "sent", telegram_message_id=501)
    # intent -> failed, with its error
    await finish(sessionmaker, "b", "failed", error="kicked")
    # unknown (reconciled elsewhere) -> failed: not replaced; -> sent: written (a fact)
    await finish(sessionmaker, "c", "unknown", error="read timeout")
    await finish(sessionmaker, "c", "failed", error="late")
    c = await turn(sessionmaker, "c")
    assert c is not None and (c.status, c.error) == ("unknown", "read timeout")
    await finish(sessionmaker, "c", "sent", telegram_message_id=503)
    # sent -> retry / unknown / failed: kept sent
    for status in ("retry", "unknown", "failed"):
        await finish(sessionmaker, "a", status, error="x")
    # intent -> retry
    await finish(sessionmaker, "d", "retry", error="429")
    got = {t.turn_id: (t.status, t.telegram_message_id, t.error)
           for t in await all_turns(sessionmaker)}
    assert got == {
        "a": ("sent", 501, None),
        "b": ("failed", None, "kicked"),
        "c": ("sent", 503, None),
        "d": ("retry", None, "429"),
    }
    # failed -> sent is written too
    await finish(sessionmaker, "b", "sent", telegram_message_id=502)
    b = await turn(sessionmaker, "b")
    assert b is not None and (b.status, b.telegram_message_id) == ("sent", 502)
    async with sessionmaker() as s:
        assert await turn_store.status_counts(s) == {"sent": 3, "retry": 1}


@pytest.mark.parametrize("status", ["intent", "bogus", "SENT", ""])
async def test_finish_turn_refuses_a_non_outcome(sessionmaker: Sessions, cipher: TokenCipher,
                                                 status: str) -> None:
    w = await seed_world(sessionmaker, cipher)
    b1 = w.bot_ids[0]
    await issue(sessionmaker, [b1])
    await intent(sessionmaker, "t1", b1, w.chat_id, token=1)
    with pytest.raises(ValidationFailed) as err:
        await finish(sessionmaker, "t1", status)
    assert err.value.problems[0][0] == "status"
    assert repr(status) in str(err.value)
    t = await turn(sessionmaker, "t1")
    assert t is not None and t.status == "intent"


# -- reconcile --------------------------------------------------------------------------------


async def test_reconcile_only_older_tokens(sessionmaker: Sessions, cipher: TokenCipher) -> None:
    w = await seed_world(sessionmaker, cipher)
    b1, b2 = w.bot_ids[:2]
    m_old = await human_message(sessionmaker, w.chat_id, 10)
    m_new = await human_message(sessionmaker, w.chat_id, 11)
    m_b2 = await human_message(sessionmaker, w.chat_id, 12)
    m_sent = await human_message(sessionmaker, w.chat_id, 13)
    await issue(sessionmaker, [b1, b2])
    assert await intent(sessionmaker, "old", b1, w.chat_id, 1, reply_to=m_old)
    assert await intent(sessionmaker, "old-spont", b1, w.chat_id, 1)
    assert await intent(sessionmaker, "old-sent", b1, w.chat_id, 1, reply_to=m_sent)
    await finish(sessionmaker, "old-sent", "sent", telegram_message_id=7)
    assert await intent(sessionmaker, "b2", b2, w.chat_id, 1, reply_to=m_b2)
    tokens = await issue(sessionmaker, [b1], "w2")
    assert tokens == {b1: 2}
    assert await intent(sessionmaker, "new", b1, w.chat_id, 2, "w2", reply_to=m_new)

    async with sessionmaker() as s, s.begin():
        assert await turn_store.reconcile(s, tokens={}) == []
        stale = await turn_store.reconcile(s, tokens=tokens)
    assert sorted(t.turn_id for t in stale) == ["old", "old-spont"]
    got = {t.turn_id: t.status for t in await all_turns(sessionmaker)}
    assert got == {"old": "unknown", "old-spont": "unknown", "old-sent": "sent",
                   "b2": "intent", "new": "intent"}
    old = await turn(sessionmaker, "old")
    assert old is not None and old.error
    assert await reply_wanted(sessionmaker, m_old) is False
    assert await reply_wanted(sessionmaker, m_new) is True
    assert await reply_wanted(sessionmaker, m_b2) is True

    # b2's intent is under its current token: reconciling b2 at 1 leaves it alone
    async with sessionmaker() as s, s.begin():
        assert await turn_store.reconcile(s, tokens={b2: 1}) == []
        # and a second pass over b1 finds nothing left to do
        assert await turn_store.reconcile(s, tokens={b1: 2}) == []
    assert (await turn(sessionmaker, "b2")).status == "intent"  # type: ignore[union-attr]
    assert (await turn(sessionmaker, "new")).status == "intent"  # type: ignore[union-attr]

    async with sessionmaker() as s:
        assert await turn_store.status_counts(s) == {"unknown": 2, "sent": 1, "intent": 2}
        by_msg = await turn_store.turns_for_replies(s, message_ids=[m_old, m_new, m_sent, 999])
        assert await turn_store.turns_for_replies(s, message_ids=[]) == {}
    assert by_msg == {m_old: ["unknown"], m_new: ["intent"], m_sent: ["sent"]}


# -- PostgreSQL: the fence serializes with a takeover -----------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_check_fence_blocks_a_concurrent_takeover(sessionmaker: Sessions,
                                                        cipher: TokenCipher) -> None:
    w = await seed_world(sessionmaker, cipher)
    b1 = w.bot_ids[0]
    m1 = await human_message(sessionmaker, w.chat_id, 20)
    assert await issue(sessionmaker, [b1], "old") == {b1: 1}

    order: list[str] = []
    fenced = asyncio.Event()
    let_go = asyncio.Event()
    taken: dict[str, object] = {}

    async def old_holder() -> None:
        async with sessionmaker() as s, s.begin():
            # record_intent = check_fence (row lock) + the intent row
            assert await turn_store.record_intent(
                s, turn_id="in-flight", bot_id=b1, chat_id=w.chat_id, token=1, worker="old",
                reply_to_message_id=m1,
            )
            order.append("old: fenced")
            fenced.set()
            await let_go.wait()
            order.append("old: committing")
        order.append("old: committed")

    async def new_holder() -> None:
        await fenced.wait()
        async with sessionmaker() as s, s.begin():
            order.append("new: issuing")
            tokens = await turn_store.issue_fencing_tokens(s, bot_ids=[b1], holder="new")
            order.append("new: issued")
            stale = await turn_store.reconcile(s, tokens=tokens)
            taken["tokens"] = tokens
            taken["stale"] = [t.turn_id for t in stale]

    old_task = asyncio.create_task(old_holder())
    await asyncio.wait_for(fenced.wait(), 5)
    new_task = asyncio.create_task(new_holder())
    await asyncio.sleep(0.5)  # plenty for an unblocked upsert on localhost
    blocked = not new_task.done() and "new: issued" not in order
    let_go.set()
    await asyncio.wait_for(asyncio.gather(old_task, new_task), 10)

    assert blocked, f"the takeover did not wait for the fenced transaction: {order}"
    assert "new: issuing" in order
    assert order.index("old: committing") < order.index("new: issued")
    assert taken["tokens"] == {b1: 2}
    # the takeover saw the committed intent and turned it unknown
    assert taken["stale"] == ["in-flight"]
    t = await turn(sessionmaker, "in-flight")
    assert t is not None and t.status == "unknown"
    assert await reply_wanted(sessionmaker, m1) is False
    # the old holder is fenced out from now on
    with pytest.raises(FencedOut):
        await intent(sessionmaker, "next", b1, w.chat_id, token=1, worker="old")


# -- the hot path's statements (issue 20) -----------------------------------------------------

def _statements() -> float:
    from prometheus_client import REGISTRY

    return sum(s.value for m in REGISTRY.collect() if m.name == "botsim_db_queries"
               for s in m.samples if s.name == "botsim_db_queries_total")


async def commit(sm: Sessions, w: World, turn_id: str, tg_id: int, **kw: object) -> Message:
    async with sm() as s, s.begin():
        return await turn_store.commit_sent(
            s, turn_id=turn_id, chat_id=w.chat_id, bot_id=w.bot_ids[0],
            telegram_message_id=tg_id, text="Bence dolar yükselir.",
            meta=MessageMeta(provider="groq"), created_at=datetime.now(UTC), **kw)  # type: ignore[arg-type]


async def test_intent_and_commit_are_one_statement_each_on_postgresql(
        sessionmaker: Sessions, cipher: TokenCipher) -> None:
    w = await seed_world(sessionmaker, cipher)
    b1 = w.bot_ids[0]
    await issue(sessionmaker, [b1])
    asked = await human_message(sessionmaker, w.chat_id, 900)
    pg = sessionmaker.kw["bind"].dialect.name == "postgresql"
    before = _statements()
    assert await intent(sessionmaker, "t-one", b1, w.chat_id, token=1, reply_to=asked) is True
    assert _statements() - before == (1 if pg else 2)
    before = _statements()
    calls = [{"created_at": datetime.now(UTC), "provider": "groq", "model": "llama",
              "bot_id": b1, "chat_id": w.chat_id, "turn_id": "t-one", "attempt": n,
              "outcome": outcome, "error": None, "prompt_tokens": 120, "completion_tokens": 30,
              "cached_tokens": 0, "latency_ms": 800.0, "cost_usd": 0.0001}
             for n, outcome in ((1, "timeout"), (2, "ok"))]
    msg = await commit(sessionmaker, w, "t-one", 901, reply_to_telegram_message_id=900,
                       answered_human=True, mood=3.0, answered_message_id=asked,
                       ledger_rows=calls)
    assert _statements() - before == (1 if pg else 6)
    # what the one statement wrote: the message, the turn's outcome, the answered person,
    # the mood (clamped)
    async with sessionmaker() as s:
        stored = await s.get(Message, msg.id)
        bot = await bot_store.get_bot(s, bot_id=b1)
    assert stored is not None and (stored.turn_id, stored.telegram_message_id, stored.text) == (
        "t-one", 901, "Bence dolar yükselir.")
    assert stored.meta.provider == "groq" and stored.reply_to_telegram_message_id == 900
    assert (msg.id, msg.telegram_message_id, msg.reply_wanted) == (stored.id, 901, False)
    got = await turn(sessionmaker, "t-one")
    assert got is not None and (got.status, got.telegram_message_id) == ("sent", 901)
    assert await reply_wanted(sessionmaker, asked) is False
    assert bot is not None and bot.mood == 1.0
    async with sessionmaker() as s:  # and the turn's ledger rows (group commit)
        ledger = (await s.execute(select(LLMCall.attempt, LLMCall.outcome)
                                  .where(LLMCall.turn_id == "t-one")
                                  .order_by(LLMCall.attempt))).all()
    assert [tuple(r) for r in ledger] == [(1, "timeout"), (2, "ok")]
    # the stale token and the turn acted on are still told apart
    await issue(sessionmaker, [b1])
    with pytest.raises(FencedOut):
        await intent(sessionmaker, "t-two", b1, w.chat_id, token=1)
    assert await intent(sessionmaker, "t-one", b1, w.chat_id, token=2) is False
    # a second commit of the turn is a duplicate, refused whole
    with pytest.raises(IntegrityError):
        await commit(sessionmaker, w, "t-one", 902)
    async with sessionmaker() as s:
        assert (await s.execute(select(Message).where(Message.telegram_message_id == 902))
                ).first() is None


async def test_commit_by_our_id_alone_clears_the_wait(sessionmaker: Sessions,
                                                      cipher: TokenCipher) -> None:
    # Telegram dropped the reply (target deleted): the person is answered by our id
    w = await seed_world(sessionmaker, cipher)
    await issue(sessionmaker, [w.bot_ids[0]])
    asked = await human_message(sessionmaker, w.chat_id, 910)
    other = await human_message(sessionmaker, w.chat_id, 911)
    assert await intent(sessionmaker, "t-id", w.bot_ids[0], w.chat_id, token=1, reply_to=asked)
    await commit(sessionmaker, w, "t-id", 912, answered_message_id=asked)
    assert await reply_wanted(sessionmaker, asked) is False
    assert await reply_wanted(sessionmaker, other) is True

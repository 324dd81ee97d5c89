"""End to end: sandbox Telegram + listener + worker, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import Secrets, resolve_secrets
from backend.db.models import Message
from backend.db.types import utcnow
from backend.settings import Settings
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import members as member_store
from backend.stores import settings as settings_store
from behavior_engine.llm.factory import build_chain
from behavior_engine.market import MarketFeed
from bots.personas import load_persona_dir
from bots.ratelimit import TelegramLimiter
from botsim.demo import DemoOptions, run_demo
from message_listener import ListenerState, create_app, register_webhooks
from sandbox.telegram_api import BackgroundServer, Limits, TelegramSandbox
from worker import Worker

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CHAT = -100777
HUMAN_ID = 900


@dataclass
class World:
    sandbox: TelegramSandbox
    sessionmaker: async_sessionmaker[AsyncSession]
    secrets: Secrets
    settings: Settings
    listener: BackgroundServer
    chat: int = CHAT  # the chat's Telegram id
    tokens: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def make_world(tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession], *,
                     chat_id: int = CHAT, kind: str = "supergroup",
                     limits: Limits | None = None) -> AsyncIterator[World]:
    """The four demo personas in one sandbox chat (``kind``: a supergroup or a basic
    group), even talkativeness, a steady stream, no reading or typing pauses; the listener
    serving the sandbox's webhooks. The worker is the test's (:func:`make_worker`)."""
    settings = Settings(data_dir=tmp_path, tick_seconds=0.2, seed=3)
    secrets = resolve_secrets(settings)
    sandbox = TelegramSandbox(limits=limits)
    sandbox.add_chat(chat_id, "Test grubu", kind)
    sandbox.add_member(chat_id, {"id": HUMAN_ID, "first_name": "Deniz", "username": "deniz"})
    tokens: list[str] = []
    async with sessionmaker() as s, s.begin():
        chat = await chat_store.upsert_chat(s, telegram_chat_id=chat_id, title="Test grubu",
                                            topics={"usdtry": 1.0, "btc": 1.0})
        # Equal talkativeness: these tests wait for a given bot to speak (the demo cast's
        # uneven shares, issue 14, would leave the quiet ones silent for minutes).
        for i, persona in enumerate(p.model_copy(update={"talkativeness": 1.0})
                                    for p in load_persona_dir()):
            token = f"{8100000000 + i}:token-for-tests-{i:04d}-abcdefgh"
            tokens.append(token)
            bot = await bot_store.upsert_persona_bot(s, persona=persona, token=token,
                                                     cipher=secrets.cipher())
            await chat_store.add_bot(s, chat_id=chat.id, bot_id=bot.id)
            sandbox.add_bot(token, persona.username, persona.name)
            sandbox.add_bot_to_chat(chat_id, token)
        await settings_store.update_settings(
            s, changes={"bot_hourly_msg_limit": {"min": 1200, "max": 1200},
                        "max_msgs_per_min": 20, "reading_cap_s": 0.0, "typing_cap_s": 0.0,
                        # the steady, even stream these tests were written for, not bursts
                        # and lulls with uneven shares (issue 14): they wait for messages,
                        # and for given bots, within seconds
                        "budget_use": 1.0, "burst_mean_msgs": 1.0, "lull_sigma": 0.3,
                        "bot_daily_profile": False, "human_reply_reserve": 0.0,
                        "chatter_pacing": False, "quiet_boost": 5.0}
        )
    await sandbox.start()
    # The listener keeps no cache of its own here, as a separate process without Redis: the
    # worker must see its writes through the short L1 TTL.
    state = ListenerState(sessionmaker=sessionmaker, webhook_secret=secrets.webhook_secret)
    await state.refresh_bots()
    listener = await BackgroundServer.start(create_app(state))
    await register_webhooks(sessionmaker=sessionmaker, secrets=secrets,
                            api_url=sandbox.bot_api_url, public_url=listener.url)
    settings = settings.model_copy(update={"telegram_api_url": sandbox.bot_api_url})
    try:
        yield World(sandbox, sessionmaker, secrets, settings, listener, chat_id, tokens)
    finally:
        await listener.stop()
        await sandbox.stop()


@pytest.fixture
async def world(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession], request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    """:func:`make_world` (``request.param``: the sandbox's :class:`Limits`, if any)."""
    async with make_world(tmp_path, sessionmaker,
                          limits=getattr(request, "param", None)) as w:
        yield w


def make_worker(w: World, limiter: TelegramLimiter | None = None) -> Worker:
    return Worker(settings=w.settings, sessionmaker=w.sessionmaker, secrets=w.secrets,
                  chain=build_chain([]), market=MarketFeed(seed=1, start=utcnow()),
                  limiter=limiter)


async def wait_until(predicate: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    """Whether ``predicate()`` came true within ``seconds`` (polled every 0.2 s)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        if await predicate():
            return True
        await asyncio.sleep(0.2)
    return False


async def test_reply_to_a_human_carries_its_reply_to(world: World) -> None:
    from prometheus_client import REGISTRY

    def assembled() -> float:
        return REGISTRY.get_sample_value("botsim_prompt_assembly_seconds_count") or 0.0

    before = assembled()
    worker = make_worker(world)
    await worker.start()
    try:
        human = await world.sandbox.post_as_human(CHAT, HUMAN_ID, "Ali Hoca, faiz ne olur?")

        async def answered() -> bool:
            async with world.sessionmaker() as s:
                rows = (await s.execute(select(Message).where(
                    Message.reply_to_telegram_message_id == human["message_id"],
                    Message.bot_id.is_not(None)))).scalars().all()
            return bool(rows)

        assert await wait_until(answered, 25), "no bot answered the human"
    finally:
        await worker.stop()
    async with world.sessionmaker() as s:
        stored_human = (await s.execute(select(Message).where(
            Message.telegram_message_id == human["message_id"]))).scalar_one()
        reply = (await s.execute(select(Message).where(
            Message.reply_to_telegram_message_id == human["message_id"]))).scalars().first()
    assert stored_human.bot_id is None and stored_human.reply_wanted is False
    assert reply is not None and reply.bot_id is not None and reply.turn_id
    # Telegram saw the same thread: the sent message replies to the human's message.
    sent = {m["message_id"]: m for m in world.sandbox.messages(CHAT)}
    assert sent[reply.telegram_message_id]["reply_to_message"]["message_id"] == (
        human["message_id"])
    assert "Ali Hoca" in reply.text or reply.meta.topic == "rates"
    # every bot message Telegram accepted is stored exactly once, with its Telegram id
    async with world.sessionmaker() as s:
        stored = (await s.execute(select(Message.telegram_message_id)
                                  .where(Message.bot_id.is_not(None)))).scalars().all()
    bot_sent = [m["message_id"] for m in sent.values() if m["from"]["is_bot"]]
    assert sorted(stored) == sorted(bot_sent)
    assert worker.stats["errors"] == 0
    assert assembled() - before >= len(bot_sent)  # every prompt's assembly was timed


async def test_an_overloaded_worker_sheds_chatter_and_still_answers_people(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20, headroom: while the worker is overloaded (here: any tick lag counts), it
    sheds spontaneous chatter and keeps answering people; once the load falls, the chat
    talks again."""
    import worker as worker_module

    monkeypatch.setattr(worker_module, "SHED_LAG_S", -1.0)  # every tick is overloaded,
    monkeypatch.setattr(worker_module, "SHED_SUSTAIN", 1)  # from the first
    worker = make_worker(world)
    await worker.start()
    try:
        await asyncio.sleep(2.0)  # chatter falls due about every second here
        human = await world.sandbox.post_as_human(CHAT, HUMAN_ID, "Ali Hoca, faiz ne olur?")

        def bot_lines() -> list[dict[str, Any]]:
            return [m for m in world.sandbox.messages(CHAT) if m["from"]["is_bot"]]

        async def answered() -> bool:
            return any((m.get("reply_to_message") or {}).get("message_id")
                       == human["message_id"] for m in bot_lines())

        assert await wait_until(answered, 25), "no bot answered the person"
        assert all((m.get("reply_to_message") or {}).get("message_id") == human["message_id"]
                   for m in bot_lines()), "chatter went out while overloaded"
        assert worker.stats["chatter_shed"] > 0 and worker.stats["overloaded"] > 0
        assert worker.status()["chatter_shed"] == worker.stats["chatter_shed"]
        monkeypatch.setattr(worker_module, "SHED_LAG_S", 0.5)  # the load falls

        async def chatting() -> bool:
            return any(not m.get("reply_to_message") for m in bot_lines())

        assert await wait_until(chatting, 25), "the chat stayed silent after the overload"
    finally:
        await worker.stop()


@pytest.mark.parametrize("world", [Limits(group_per_minute=2)], indirect=True)
async def test_429_makes_the_bot_wait_and_nothing_crashes(world: World) -> None:
    # A limiter looser than Telegram's, so the sandbox's 429s reach the worker.
    loose = TelegramLimiter(per_chat_per_sec=100.0, per_group_per_min=1000, per_bot_per_sec=100)
    worker = make_worker(world, limiter=loose)
    await worker.start()
    try:
        async def limited() -> bool:
            return worker.stats["rate_limited"] >= 1

        assert await wait_until(limited, 30), dict(worker.stats)
        await world.sandbox.post_as_human(CHAT, HUMAN_ID, "Hâlâ burada mısınız?")

        async def human_stored() -> bool:  # the worker keeps ticking while the bot waits
            async with world.sessionmaker() as s:
                return bool((await s.execute(select(Message.id).where(
                    Message.bot_id.is_(None)))).first())

        assert await wait_until(human_stored, 10)
    finally:
        await worker.stop()
    stats = world.sandbox.stats
    assert stats["too_many_requests"] >= 1
    assert stats["ignored_retry_after"] == 0  # never sent again before retry_after ran out
    assert worker.stats["errors"] == 0 and worker.stats["ticks"] > 10
    async with world.sessionmaker() as s:
        humans = (await s.execute(select(Message).where(Message.bot_id.is_(None)))).scalars()
        assert [m.text for m in humans] == ["Hâlâ burada mısınız?"]


async def test_demo_run_summary(tmp_path: Path) -> None:
    out = io.StringIO()
    settings = Settings(data_dir=tmp_path, tick_seconds=0.5)
    summary = await run_demo(settings, DemoOptions(
        # The human's reply is due at most 12 s after the question (the scheduler's cap on
        # its delay), then the bot reads the 4 words (the demo caps it at 0.3 s) and types (1 s).
        # The chatter comes in bursts and lulls (issue 14), so 20 s may hold no other message.
        duration=20, say="Dolar nereye gider sizce?", json_out=True, read_stdin=False,
        say_after=1.0, out=out))
    last = out.getvalue().strip().splitlines()[-1]
    assert json.loads(last) == summary
    assert summary["bots_spoken"] >= 1 and summary["messages"] >= 1
    assert summary["human_messages"] == 1 and summary["human_replies"] == 1
    assert summary["duplicates"] == 0 and summary["errors"] == 0
    assert summary["safety_breaches"] == 0
    assert "Deniz: Dolar nereye gider sizce?" in out.getvalue()
    assert "↪ answers Deniz" in out.getvalue()
    # The realism report of the run (botsim realism) ends the summary and the output.
    realism = summary["realism"]
    assert realism["counts"]["human_messages"] == 1
    assert realism["counts"]["bot_messages"] == summary["messages"]
    assert "Realism of chat -1001000000001" in out.getvalue()
    import re

    panel = re.search(r"Admin panel: (http://127\.0\.0\.1:\d+)/ \(log in as admin with "
                      r"password (\S+); generated for this run\)", out.getvalue())
    assert panel is not None, out.getvalue()[:500]
    assert len(panel.group(2)) >= 16


def test_cli_demo_json_last_line(tmp_path: Path) -> None:
    env = {**os.environ, "BOTSIM_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "botsim", "demo", "--duration", "5", "--json"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=90, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"messages", "bots_spoken", "human_messages", "human_replies", "duplicates",
            "errors"} <= set(figures)
    # 5 s of a bursty chat may be a lull (issue 14): the figures, not a message count
    assert figures["messages"] >= 0 and figures["errors"] == 0
    assert "Traceback" not in proc.stderr


def test_cli_refuses_bad_persona_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: X\nusername: nobot_here\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "botsim", "personas", "check", str(bad)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{bad}: ")
    assert "username: Value error, must be 5-32 characters" in proc.stderr
    assert "role: Field required" in proc.stderr


async def test_kicked_bot_leaves_that_chat_and_others_go_on(world: World) -> None:
    kicked_token_bot = 8100000000  # the first persona's Telegram id
    world.sandbox.kick_bot(CHAT, kicked_token_bot)
    worker = make_worker(world)
    await worker.start()
    try:
        async def left() -> bool:
            async with world.sessionmaker() as s:
                chat = await chat_store.get_chat_by_telegram_id(s, telegram_chat_id=CHAT)
                assert chat is not None
                rows = await member_store.chat_members(s, chat_id=chat.id)
                talking = {c.id: set(t) for c, t in
                           await chat_store.enabled_chats_with_talkativeness(s)}
                configured = await chat_store.chat_bots(s, chat_id=chat.id)
            row = next((r for r in rows if r.user_id == kicked_token_bot), None)
            # Kicked; the chat's talkers leave it out; its configuration is kept.
            return (row is not None and row.status == "kicked" and row.bot_id is not None
                    and row.bot_id not in talking[chat.id]
                    and row.bot_id in {b.id for b in configured})

        assert await wait_until(left, 30), dict(worker.stats)

        async def others_post() -> bool:
            sent = [m for m in world.sandbox.messages(CHAT) if m["from"]["is_bot"]]
            return len(sent) >= 3

        assert await wait_until(others_post, 30)
    finally:
        await worker.stop()
    async with world.sessionmaker() as s:
        bots = await bot_store.list_bots(s)
    kicked = next(b for b in bots if b.telegram_user_id == kicked_token_bot)
    assert kicked.enabled  # still enabled: only that chat is left
    assert all(m["from"]["id"] != kicked_token_bot for m in world.sandbox.messages(CHAT))


async def test_stop_waits_for_a_running_tick(world: World) -> None:
    """A tick deciding when stop() begins ends before stop() returns, rather than being
    cancelled at the event loop's close (APScheduler logged that as a job's traceback: a
    flaky ``botsim demo`` test)."""
    import asyncio

    worker = make_worker(world)
    await worker.start()
    deciding = asyncio.Event()
    decide = worker.planner.decide

    async def slow_decide(**kwargs: object) -> object:
        deciding.set()
        await asyncio.sleep(0.5)
        return await decide(**kwargs)  # type: ignore[arg-type]

    worker.planner.decide = slow_decide  # type: ignore[method-assign,assignment]
    running = asyncio.create_task(worker.tick())  # as APScheduler's job
    await asyncio.wait_for(deciding.wait(), 10)
    await worker.stop()
    assert running.done() and not running.cancelled() and running.exception() is None


async def test_stop_cuts_a_hanging_send_and_records_it_unknown(world: World) -> None:
    """A send Telegram accepted but whose answer never came back is cancelled by stop()
    after the grace period and recorded ``unknown``, not left an ``intent``; a tick that
    runs after stop began launches nothing (issue 14's sharded run left one such intent)."""
    import asyncio

    from sqlalchemy import func

    from backend.db.models import TurnRecord

    worker = make_worker(world)
    worker.stop_grace_s = 0.3
    await worker.start()
    accepted = asyncio.Event()
    try:
        for bot_id in worker.driven():
            client = worker.held.client(bot_id)
            assert client is not None
            send = client.send_message

            async def hang(*args: object, _send=send, **kwargs: object) -> object:  # type: ignore[no-untyped-def]
                await _send(*args, **kwargs)  # Telegram has it...
                accepted.set()
                await asyncio.Event().wait()  # ...but its answer never arrives
                raise AssertionError("unreachable")

            client.send_message = hang  # type: ignore[method-assign]
        await asyncio.wait_for(accepted.wait(), 30)
    finally:
        await worker.stop()
    tasks_before = len(worker._tasks)
    await worker.tick()  # as APScheduler's tick already running when stop() began
    assert len(worker._tasks) == tasks_before == 0
    async with world.sessionmaker() as s:
        statuses = dict((await s.execute(select(TurnRecord.status, func.count())
                                         .group_by(TurnRecord.status))).all())
        stored = (await s.execute(select(func.count()).select_from(Message)
                                  .where(Message.bot_id.is_not(None)))).scalar_one()
    sent = [m for m in world.sandbox.messages(CHAT) if m["from"]["is_bot"]]
    assert "intent" not in statuses, statuses
    assert statuses.get("unknown", 0) >= 1, statuses
    # Every stored line was sent; the hanging send reached Telegram without being stored; a send
    # cut by stop() before Telegram read it is ``unknown`` too (it may or may not have arrived:
    # a CI run cut one mid-request), so the unknown turns bound what was sent, not equal it.
    assert stored + 1 <= len(sent) <= stored + statuses["unknown"], (len(sent), stored, statuses)


async def test_solo_worker_takes_on_added_bots_and_lets_removed_ones_go(world: World) -> None:
    """Membership edits (the panel's) reach a running solo worker at its next heartbeat."""
    from backend.invalidation import KIND_CHATS, invalidate_after_commit

    async with world.sessionmaker() as s, s.begin():
        chat = await chat_store.get_chat_by_telegram_id(s, telegram_chat_id=CHAT)
        assert chat is not None
        first, second, *_ = [b.id for b in await chat_store.chat_bots(s, chat_id=chat.id)]
        await chat_store.remove_bot(s, chat_id=chat.id, bot_id=first)
    worker = make_worker(world)
    await worker.start()
    try:
        assert first not in worker.driven() and second in worker.driven()
        async with world.sessionmaker() as s, s.begin():
            await chat_store.add_bot(s, chat_id=chat.id, bot_id=first)
            await chat_store.remove_bot(s, chat_id=chat.id, bot_id=second)
            invalidate_after_commit(s, worker.reads.cache, KIND_CHATS, "enabled")

        async def synced() -> bool:  # a removed bot is let go once its turn in flight ends
            await worker.rebalance()
            return first in worker.driven() and second not in worker.membership.tokens

        assert await wait_until(synced, 10), dict(worker.stats)
        assert second not in worker.driven()

        async def first_posts() -> bool:
            async with world.sessionmaker() as s:
                n = (await s.execute(select(Message.id).where(Message.bot_id == first))).all()
            return len(n) >= 1

        assert await wait_until(first_posts, 30), dict(worker.stats)
    finally:
        await worker.stop()


async def test_retries_never_send_twice_and_all_down_keeps_talking(world: World) -> None:
    from backend.db.models import LLMCall
    from behavior_engine.llm.chain import CallRecord
    from behavior_engine.llm.factory import build_chain, close_chain
    from behavior_engine.llm.ledger import Ledger
    from botsim.demo import sandbox_providers
    from sandbox.llm_api import Fault, LLMSandbox

    llm = LLMSandbox()
    await llm.start()
    # groq fails every other request: a turn whose first attempt fails is answered by a retry
    # (turns written at once interleave their requests, so not every turn needs one)
    llm.script("groq", *[Fault.status(500) if i % 2 == 0 else Fault.latency(0)
                         for i in range(400)])
    ledger = Ledger(world.sessionmaker, world.settings.llm_prices)
    records: list[CallRecord] = []

    async def recorder(record: CallRecord) -> None:
        records.append(record)
        await ledger(record)

    chain = build_chain(sandbox_providers(llm), recorder=recorder)
    for entry in chain.entries.values():  # quick retries for the test
        entry.retry = entry.retry.__class__(max_attempts=3, timeout_s=2, backoff_initial_s=0.05,
                                            backoff_max_s=0.1, jitter_s=0.0)
    worker = Worker(settings=world.settings, sessionmaker=world.sessionmaker,
                    secrets=world.secrets, chain=chain, ledger=ledger,
                    market=MarketFeed(seed=1, start=utcnow()))

    async def sent_rows() -> list[Message]:
        async with world.sessionmaker() as s:
            return list((await s.execute(select(Message).where(Message.bot_id.is_not(None)))
                         ).scalars().all())

    def retried() -> set[str]:
        return {r.turn_id for r in records if r.attempt > 1 and r.outcome == "ok" and r.turn_id}

    await worker.start()
    try:
        async def a_retried_turn_sent() -> bool:
            return bool({m.turn_id for m in await sent_rows()} & retried())

        assert await wait_until(a_retried_turn_sent, 30), (len(records), dict(worker.stats))
        llm.reset()  # drop groq's script
        for name in ("groq", "openai", "gemini"):  # every provider down
            llm.set_default(name, Fault.status(503))

        # Lines written before the outage (a slot lead ahead) may still go out first; the
        # offline writer must then write the next ones.
        async def offline_sent() -> bool:
            return any(m.meta.provider == "offline" for m in await sent_rows())

        assert await wait_until(offline_sent, 30), dict(worker.stats)
    finally:
        await worker.stop()
        await close_chain(chain)
        await llm.stop()
    sent = await sent_rows()
    async with world.sessionmaker() as s:
        calls = (await s.execute(select(LLMCall))).scalars().all()
    telegram = [m for m in world.sandbox.messages(CHAT) if m["from"]["is_bot"]]
    assert len(telegram) == len(sent) == len({m.turn_id for m in sent})  # one send per turn
    retried_turns = {c.turn_id for c in calls if c.attempt > 1 and c.outcome == "ok"}
    assert retried_turns & {m.turn_id for m in sent}, "no sent turn needed a retry"
    assert retried_turns == retried()  # the ledger holds every call the chain made
    assert worker.stats["errors"] == 0


async def test_demo_with_the_sdks_against_the_sandbox_llm(tmp_path: Path) -> None:
    out = io.StringIO()
    # A human question makes sure some bot writes (the chatter comes in bursts and lulls,
    # issue 14): its answer is due at most 12 s after it, and its bot may first finish the
    # lines it is typing in the three groups (~2 s each), then reads, writes through the
    # SDKs and types (~1.5 s).
    summary = await run_demo(Settings(data_dir=tmp_path, tick_seconds=0.5), DemoOptions(
        duration=20, say="Altın alınır mı?", say_after=0.5, json_out=True, read_stdin=False,
        llm="sandbox", out=out))
    shown = (summary, out.getvalue()[-3000:])
    assert summary["messages"] >= 1 and summary["human_replies"] == 1, shown
    assert summary["errors"] == 0, shown
    assert set(summary["by_provider"]) == {"groq"}  # the first provider answered each turn
    assert summary["llm_calls"] >= summary["messages"]
    assert summary["llm_cost_usd"] > 0
    assert "writers: groq → openai → gemini → offline" in out.getvalue()


async def test_persona_edit_reaches_the_running_workers_next_prompt(
    world: World, redis_url: str
) -> None:
    import uuid

    from backend.cache import TwoLayerCache
    from backend.schemas import Persona
    from behavior_engine.llm.chain import ProviderChain
    from behavior_engine.reads import CachedReads
    from behavior_engine.turn import Generation, GenerationRequest

    class Recording:
        name = "recording"

        def __init__(self) -> None:
            self.prompts: list[str] = []

        async def generate(self, request: GenerationRequest) -> Generation:
            self.prompts.append(request.messages[0]["content"])
            return Generation(text=f"kayıt {len(self.prompts)}", provider=self.name)

    ns = f"t{uuid.uuid4().hex[:8]}"
    # The worker's process; its L1 entries live 10 minutes here, so the wait below (however
    # long the chat's rhythm makes it) stays inside their life: only the invalidation can
    # bring the edit (ci41: the bot's next turn came more than 10 s after the edit).
    worker_cache = TwoLayerCache(redis_url=redis_url, namespace=ns, l1_ttl_s=600.0)
    admin_cache = TwoLayerCache(redis_url=redis_url, namespace=ns)  # the admin API's process
    await worker_cache.start()
    await admin_cache.start()
    recording = Recording()
    worker = Worker(settings=world.settings, sessionmaker=world.sessionmaker,
                    secrets=world.secrets, chain=ProviderChain([], last_resort=recording),
                    market=MarketFeed(seed=1, start=utcnow()),
                    reads=CachedReads(worker_cache, world.sessionmaker))
    marker = "Artık sadece altın konuşur."
    await worker.start()
    try:
        async def warmed() -> bool:
            return len(recording.prompts) >= 4  # every bot's profile is in the worker's L1

        assert await wait_until(warmed, 30)
        assert not any(marker in p for p in recording.prompts)
        async with world.sessionmaker() as s, s.begin():
            bot = (await bot_store.list_bots(s))[0]
            persona = Persona.model_validate({
                **bot.persona.model_dump(), "bio": bot.persona.bio + " " + marker,
                "name": bot.name, "username": bot.username,
                "stances": [x.model_dump() for x in bot.stances.items],
                "holdings": [x.model_dump() for x in bot.holdings.items],
            })
            token = world.secrets.cipher().decrypt(bot.token_encrypted)
            await bot_store.upsert_persona_bot(s, persona=persona, token=token,
                                               cipher=world.secrets.cipher(), cache=admin_cache)
        edited_at = len(recording.prompts)

        async def seen() -> bool:
            return any(marker in p for p in recording.prompts[edited_at:])

        # well inside the worker's L1 TTL (600 s here): only the invalidation can explain it
        assert await wait_until(seen, 60), "the edit never reached a prompt"
    finally:
        await worker.stop()
        await worker_cache.close()
        await admin_cache.close()
    stats = worker_cache.stats()
    assert stats["l1"]["bot"].hits > 0  # the profile was served from memory before the edit


async def test_redis_killed_mid_run_no_turn_fails(world: World) -> None:
    from backend.cache import TwoLayerCache
    from behavior_engine.reads import CachedReads
    from tests.integration.test_cache import spare_port, start_redis

    port = spare_port()
    server = await start_redis(port)
    cache = TwoLayerCache(redis_url=f"redis://127.0.0.1:{port}/0", l1_ttl_s=1.0)
    await cache.start()
    worker = Worker(settings=world.settings, sessionmaker=world.sessionmaker,
                    secrets=world.secrets, chain=build_chain([]),
                    market=MarketFeed(seed=1, start=utcnow()),
                    reads=CachedReads(cache, world.sessionmaker))
    await worker.start()

    def bot_messages() -> int:
        return sum(m["from"]["is_bot"] for m in world.sandbox.messages(CHAT))

    try:
        async def sent(n: int) -> bool:
            return bot_messages() >= n

        assert await wait_until(lambda: sent(3), 30)
        assert cache.redis_up
        server.kill()  # Redis gone mid-run
        await server.wait()
        during = bot_messages()
        human = await world.sandbox.post_as_human(CHAT, HUMAN_ID,
                                                  "Redis yokken de cevap var mı?")
        assert await wait_until(lambda: sent(during + 3), 30)  # turns go on without Redis
        assert not cache.redis_up
        server = await start_redis(port)  # back: the cache reconnects by itself

        async def back() -> bool:
            return cache.redis_up

        assert await wait_until(back, 15)
        after = bot_messages()
        assert await wait_until(lambda: sent(after + 2), 30)
    finally:
        await worker.stop()
        await cache.close()
        server.kill()
        await server.wait()
    assert worker.stats["errors"] == 0 and worker.stats["failed"] == 0
    async with world.sessionmaker() as s:
        humans = (await s.execute(select(Message).where(Message.bot_id.is_(None)))).scalars()
        replied = (await s.execute(select(Message).where(
            Message.reply_to_telegram_message_id == human["message_id"],
            Message.bot_id.is_not(None)))).scalars().all()
    assert [m.text for m in humans] == ["Redis yokken de cevap var mı?"]
    assert replied, "the human got no answer while Redis was down"

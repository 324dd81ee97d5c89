"""Benchmark: prompt assembly and database load per message, before and after the cache.

World: 1,000 generated bots in 50 chats (20 members each) on PostgreSQL (a fresh database
``botsim_bench`` on 127.0.0.1:5432), each chat with a 30-message history. Then N generated
messages, each for a random bot in its chat, two ways on the same data:

* **before** — the path without the cache: the bot's row and the chat's last 20 messages
  read from PostgreSQL for every message;
* **after** — the same through ``CachedReads`` (L1 in memory over L2 Redis at
  127.0.0.1:6379/12), warmed by one pass over every bot first; ``--l1-ttl`` sets how long
  L1 keeps an entry (the worker's default, 300 s; try 30 to see L2 serve most reads).

Each message also does what the worker writes for it: insert the message and update the
mood (one transaction), append it to the cached history (after only). Every ``--tick``
messages the worker's tick reads are done too: settings, the chat list, every chat's
history. Queries are counted with SQLAlchemy's ``before_cursor_execute`` event. Prompt
assembly = reading the bot and the history + building the layered prompt; p50/p99 in ms.

Usage: ``python loadtest/bench_prompt.py [--messages 5000] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from cryptography.fernet import Fernet
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from backend.db.models import Message
from backend.db.session import make_engine, make_sessionmaker, upgrade
from backend.schemas import HoldingList, MessageMeta, PersonaProfile, StanceList, Style
from backend.stores import bots as bot_store
from backend.stores import bulk as bulk_store
from backend.stores import chats as chat_store
from backend.stores import messages as message_store
from behavior_engine.market import MarketFeed, holdings_pnl_pct, mood_from_pnl
from behavior_engine.prompt_builder import build_request
from behavior_engine.reads import CachedReads, HistoryItem, item_from_row
from behavior_engine.turn import ChatLine, TurnContext

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DB = "botsim_bench"
URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DB}"
REDIS = "redis://127.0.0.1:6379/12"
BOTS, CHATS, HISTORY = 1000, 50, 30
TOPICS = ["usdtry", "bist100", "btc", "gold", "rates", "inflation"]


async def build_world(sm: async_sessionmaker[AsyncSession], rng: random.Random) -> None:
    """1,000 bots, 50 chats of 20, 30 messages of history per chat."""
    cipher = TokenCipher(Fernet.generate_key().decode())
    now = datetime.now(UTC)
    async with sm() as s, s.begin():
        await bulk_store.insert_chats(s, rows=[
            {"telegram_chat_id": -1001000000000 - c, "title": f"Grup {c}",
             "topics": {"weights": {t: rng.uniform(0.5, 3) for t in TOPICS}}, "enabled": True,
             "created_at": now}
            for c in range(CHATS)])
        rows = []
        for b in range(BOTS):
            profile = PersonaProfile(
                role=rng.choice(["scalper", "long-term investor", "economist", "newcomer"]),
                language="tr", bio=f"Yatırımcı {b}. " + "Piyasayı yakından izler. " * 6,
                style=Style(formality=rng.choice(["casual", "neutral", "formal"]),
                            emoji_rate=rng.uniform(0, 2),
                            length=rng.choice(["short", "medium", "long"])),
                topics={t: rng.uniform(0.5, 2) for t in rng.sample(TOPICS, 3)})
            rows.append({
                "name": f"Bot {b}", "username": f"bench_{b}_bot", "telegram_user_id": 9_000_000 + b,
                "token_encrypted": cipher.encrypt(f"{9_000_000 + b}:benchtoken{b:06d}"),
                "persona": profile, "stances": StanceList(items=[]),
                "holdings": HoldingList.model_validate(
                    {"items": [{"symbol": "BTC", "quantity": 0.1, "avg_cost": 95000}]}),
                "mood": 0.0, "enabled": True, "created_at": now, "updated_at": now})
        await bulk_store.insert_bots(s, rows=rows)
        await bulk_store.insert_memberships(s, rows=[
            {"chat_id": b // (BOTS // CHATS) + 1, "bot_id": b + 1, "added_at": now}
            for b in range(BOTS)])
        msgs = []
        for c in range(CHATS):
            for i in range(HISTORY):
                bot_id = c * (BOTS // CHATS) + rng.randrange(BOTS // CHATS) + 1
                msgs.append({
                    "chat_id": c + 1, "bot_id": bot_id, "telegram_message_id": i + 1,
                    "text": f"Mesaj {i}: " + "dolar bugün hareketli " * rng.randint(1, 6),
                    "metadata": MessageMeta(provider="offline", topic=rng.choice(TOPICS)),
                    "turn_id": f"seed-{c}-{i}", "reply_wanted": False,
                    "created_at": now - timedelta(minutes=HISTORY - i)})
        await bulk_store.insert_messages(s, rows=msgs)


class QueryCounter:
    """Counts statements sent to the database."""

    def __init__(self, engine: Any) -> None:
        self.count = 0
        event.listen(engine.sync_engine, "before_cursor_execute", self._on)

    def _on(self, *_args: Any) -> None:
        self.count += 1


def _ctx(bot: Any, lines: list[ChatLine], market: MarketFeed, turn: int) -> TurnContext:
    snap = market.snapshot(datetime.now(UTC))
    holdings = tuple(bot.holdings)
    pnl = holdings_pnl_pct(holdings, snap)
    return TurnContext(
        turn_id=f"b{turn}", bot_name=bot.name, bot_username=bot.username,
        profile=bot.persona, stances=tuple(bot.stances), holdings=holdings,
        mood=mood_from_pnl(bot.persona.mood_baseline, pnl), pnl_pct=pnl, topic="btc",
        market=snap, history=tuple(lines[-20:]), reply_to=None, seed=turn,
        memories=tuple(x.text for x in lines if x.bot_id == bot.id)[-3:])


def _line(i: HistoryItem) -> ChatLine:
    return ChatLine(telegram_message_id=i.telegram_message_id, speaker=i.speaker,
                    speaker_username=i.speaker_username, is_human=i.is_human, text=i.text,
                    bot_id=i.bot_id, created_at=i.created_at)


async def run(messages: int, tick: int, seed: int, l1_ttl_s: float = 300.0) -> dict[str, Any]:
    """Build the world, then measure both paths; returns the figures."""
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{DB}"')
    await conn.close()
    await upgrade(URL)
    engine = make_engine(URL, pool_size=5)
    sm = make_sessionmaker(engine)
    rng = random.Random(seed)
    await build_world(sm, rng)
    counter = QueryCounter(engine)
    market = MarketFeed(seed=seed, start=datetime.now(UTC))
    members = {b: (b - 1) // (BOTS // CHATS) + 1 for b in range(1, BOTS + 1)}
    next_tg = dict.fromkeys(range(1, CHATS + 1), HISTORY + 1)
    figures: dict[str, Any] = {"bots": BOTS, "chats": CHATS, "messages": messages,
                               "l1_ttl_s": l1_ttl_s}

    async def write(bot_id: int, chat_id: int, turn: str) -> Message:
        tg = next_tg[chat_id]
        next_tg[chat_id] += 1
        async with sm() as s, s.begin():
            msg = await message_store.record_sent(
                s, chat_id=chat_id, bot_id=bot_id, turn_id=turn, telegram_message_id=tg,
                text="yeni mesaj", meta=MessageMeta(provider="offline", topic="btc"),
                created_at=datetime.now(UTC))
            await bot_store.set_mood(s, bot_id=bot_id, mood=0.1)
        return msg

    # -- before: every read from PostgreSQL ------------------------------------------------
    times: list[float] = []
    start_q = counter.count
    for n in range(messages):
        bot_id = rng.randrange(1, BOTS + 1)
        chat_id = members[bot_id]
        t0 = time.perf_counter()
        async with sm() as s:
            bot = await bot_store.get_bot(s, bot_id=bot_id)
            recent = await message_store.recent_messages(s, chat_id=chat_id, limit=20)
            names = {b.id: b for b in await bot_store.list_bots(
                s, bot_ids=list({m.bot_id for m in recent if m.bot_id}))}
        lines = [_line(item_from_row(m, names[m.bot_id].name if m.bot_id else None,
                                     names[m.bot_id].username if m.bot_id else None))
                 for m in recent]
        view = type("B", (), {"name": bot.name, "username": bot.username, "id": bot.id,
                              "persona": bot.persona, "stances": bot.stances.items,
                              "holdings": bot.holdings.items})
        build_request(_ctx(view, lines, market, n))
        times.append((time.perf_counter() - t0) * 1000)
        await write(bot_id, chat_id, f"before-{n}")
        if n % tick == 0:
            async with sm() as s:
                await chat_store.list_chats(s)
                for c in range(1, CHATS + 1):
                    await message_store.recent_messages(s, chat_id=c, limit=20)
    figures["before"] = _summary(times, counter.count - start_q, messages)

    # -- after: through the two-layer cache -----------------------------------------------
    cache = TwoLayerCache(redis_url=REDIS, namespace=f"bench{seed}", l1_ttl_s=l1_ttl_s)
    await cache.start()
    reads = CachedReads(cache, sm)
    for b in range(1, BOTS + 1):  # warm-up: every profile and history once
        await reads.bot(b)
    for c in range(1, CHATS + 1):
        await reads.history(c)
    await reads.settings()
    await reads.chats()
    base_stats = cache.stats()
    times = []
    start_q = counter.count
    for n in range(messages):
        bot_id = rng.randrange(1, BOTS + 1)
        chat_id = members[bot_id]
        t0 = time.perf_counter()
        profile = await reads.bot(bot_id)
        history = await reads.history(chat_id)
        build_request(_ctx(profile, [_line(i) for i in history[-20:]], market, n))
        times.append((time.perf_counter() - t0) * 1000)
        msg = await write(bot_id, chat_id, f"after-{n}")
        await reads.appended(chat_id, item_from_row(msg, profile.name, profile.username))
        if n % tick == 0:
            await reads.settings()
            for chat in await reads.chats():
                await reads.history(chat.id)
    figures["after"] = _summary(times, counter.count - start_q, messages)
    figures["after"]["hit_rates"] = _hit_rates(cache.stats(), base_stats)
    await cache.close()
    await engine.dispose()
    return figures


def _summary(times: list[float], queries: int, messages: int) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "assembly_p50_ms": round(ordered[len(ordered) // 2], 3),
        "assembly_p99_ms": round(ordered[int(len(ordered) * 0.99)], 3),
        "queries_per_message": round(queries / messages, 2),
    }


def _hit_rates(stats: Any, base: Any) -> dict[str, float]:
    rates = {}
    for kind in ("bot", "history", "settings", "chats"):
        l1 = stats["l1"].get(kind)
        l2 = stats["l2"].get(kind)
        b1 = base["l1"].get(kind)
        b2 = base["l2"].get(kind)
        if l1 is None:
            continue
        hits = (l1.hits - (b1.hits if b1 else 0)) + (
            (l2.hits - (b2.hits if b2 else 0)) if l2 else 0)
        total = (l1.hits + l1.misses) - ((b1.hits + b1.misses) if b1 else 0)
        rates[kind] = round(hits / total, 4) if total else 1.0
    return rates


def main() -> None:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--tick", type=int, default=10, help="messages per worker tick")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--l1-ttl", type=float, default=300.0, help="L1 TTL, seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(run(args.messages, args.tick, args.seed, args.l1_ttl))
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{BOTS} bots in {CHATS} chats, {args.messages} messages, a tick every {args.tick},"
          f" L1 TTL {args.l1_ttl:g} s")
    for phase in ("before", "after"):
        f = figures[phase]
        print(f"{phase:<7} assembly p50 {f['assembly_p50_ms']:.3f} ms  p99 "
              f"{f['assembly_p99_ms']:.3f} ms  queries/message {f['queries_per_message']:.2f}")
    print("hit rates (L1+L2):", figures["after"]["hit_rates"])


if __name__ == "__main__":
    main()

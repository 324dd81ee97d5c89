"""Benchmark: the offline generator's voice and the bots' reading/typing time, measured.

No database, no network: a demo-like group run of the four demo personas (talkativeness
weights, topics by weight, a moving market, 30 % replies to one of the last 10 messages,
each turn seeing the chat's last 20) is written through one ``OfflineGenerator`` per seed,
and measured as REALISM.md counts (tokens ``[\\w']+`` and single punctuation marks,
lower-cased; distinct-n over the first 2,000; near-duplicates by character 5-gram Jaccard
≥ 0.5 with an earlier message of ≥ 4 words; agreement ÷ contrast markers; a char 2–4-gram
TF-IDF + logistic regression classifier of the speakers, 5-fold, κ = (acc − 1/K)/(1 − 1/K)).

Then the pauses a human question gets under the default settings
(``behavior_engine.typist``): reading the question, typing each persona's answer (answers
written by the generator to a set of human questions), p50/p95/max in seconds.

Usage: ``python loadtest/bench_voice.py [--messages 240] [--seeds 7 8 9] [--json]``;
``--demo-groups 90``: instead, κ as ``botsim realism`` counts it (two bots judged in most
groups) and distinct-2 in each of the demo's groups.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

from backend.schemas import Persona, SimulationSettings
from behavior_engine.llm.offline import OfflineGenerator
from behavior_engine.llm.phrase_memory import TOKEN, char_grams, jaccard
from behavior_engine.market import MarketFeed, holdings_pnl_pct, mood_from_pnl
from behavior_engine.realism.metrics import separability_metric
from behavior_engine.realism.records import MessageRecord
from behavior_engine.scheduler import draw_topic
from behavior_engine.turn import ChatLine, GenerationRequest, MarketSnapshot, TurnContext
from behavior_engine.typist import Pace, jitter_rng
from bots.demo_world import DEMO_CHATS, DEMO_SETTINGS, DemoChat
from bots.personas import load_persona_dir

START = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
WORD = re.compile(r"[\w']+")
AGREE = re.compile(r"(?<!\w)(katılıyorum|aynen|haklısın\w*|kesinlikle|doğru|evet)(?!\w)", re.I)
CONTRAST = re.compile(r"(?<!\w)(ama|ancak|fakat|hayır|katılmıyorum|bence değil|değil|yok"
                      r"|sanmıyorum)(?!\w)", re.I)
QUESTIONS = ["Arkadaşlar bugün altın alınır mı?", "Dolar nereye gider sizce?",
             "Faiz kararı ne zaman, beklenti ne?", "BTC için şimdi girmek geç mi?",
             "Borsada temettü hisseleri mi alınmalı yoksa beklemek mi lazım, ne dersiniz?",
             "Enflasyon verisi bu ay nasıl gelir, maaşlar yetişecek mi?"]


def _ctx(p: Persona, i: int, bot_id: int, snap: MarketSnapshot, topic: str,
         history: tuple[ChatLine, ...], reply: ChatLine | None, seed: int,
         chat_id: int = 1) -> TurnContext:
    pnl = holdings_pnl_pct(p.holdings, snap)
    return TurnContext(
        turn_id=f"turn-{i}", bot_name=p.name, bot_username=p.username, profile=p.profile(),
        stances=tuple(p.stances), holdings=tuple(p.holdings),
        mood=mood_from_pnl(p.mood_baseline, pnl), pnl_pct=pnl, topic=topic, market=snap,
        history=history, reply_to=reply, seed=seed, bot_id=bot_id, chat_id=chat_id)


async def group_run(personas: list[Persona], n: int, seed: int) -> list[tuple[str, str]]:
    """(persona name, text) of one seeded run through a fresh ``OfflineGenerator``."""
    return (await world_run(personas, n, seed, None))[0]


async def world_run(personas: list[Persona], n: int, seed: int,
                    chats: tuple[DemoChat, ...] | None,
                    step_s: float = 60.0, reply_p: float = 0.3) -> list[list[tuple[str, str]]]:
    """Per group, (persona name, text) of ``n`` messages, the groups' turns interleaved
    through one fresh ``OfflineGenerator`` (a persona in several groups, as in the demo).

    ``chats`` None: one group, speakers drawn by the personas' own talkativeness and topics
    by their own weights; otherwise speakers by each group's talkativeness and topics by
    :func:`draw_topic` (the scheduler's law) from the group's and the persona's weights.
    The market moves ``step_s`` seconds between a group's messages; a share ``reply_p`` of
    the messages reply to one of the group's last 10 by another persona."""
    gen, feed, rnd = OfflineGenerator(), MarketFeed(seed=9, start=START), random.Random(seed)
    groups: list[DemoChat | None] = list(chats) if chats is not None else [None]
    histories: list[list[ChatLine]] = [[] for _ in groups]
    out: list[list[tuple[str, str]]] = [[] for _ in groups]
    for i in range(n * len(groups)):
        g, chat = i % len(groups), groups[i % len(groups)]
        history = histories[g]
        weights = [p.talkativeness if chat is None else chat.talkativeness.get(p.username, 0.0)
                   for p in personas]
        k = rnd.choices(range(len(personas)), weights)[0]
        p = personas[k]
        snap = feed.snapshot(START + timedelta(seconds=step_s * (i // len(groups))))
        others = [h for h in history[-10:] if h.bot_id != k + 1]
        reply = rnd.choice(others) if others and rnd.random() < reply_p else None
        if chat is None:
            topic = rnd.choices(list(p.topics), list(p.topics.values()))[0]
        else:
            topic = draw_topic(chat.topics, p.topics, rnd)
        ctx = _ctx(p, i, k + 1, snap, topic, tuple(history[-20:]), reply, seed, chat_id=g + 1)
        text = (await gen.generate(GenerationRequest(messages=[], context=ctx))).text
        history.append(ChatLine(1000 + i, p.name, p.username, False, text, bot_id=k + 1))
        out[g].append((p.name, text))
    return out


def text_figures(run: list[tuple[str, str]], *, kappa: bool = True) -> dict[str, Any]:
    """REALISM.md's text metrics of one run (see the module docstring); ``kappa`` False
    leaves out the speaker classifier's (it needs 5 messages of each speaker)."""
    texts = [t for _, t in run]
    toks = [t.lower() for text in texts for t in TOKEN.findall(text)][:2000]
    pairs = list(itertools.pairwise(toks))
    earlier: list[frozenset[str]] = []
    near = counted = 0
    for text in texts:
        grams = char_grams(text)
        if len(WORD.findall(text)) >= 4:
            counted += 1
            near += any(jaccard(grams, g) >= 0.5 for g in earlier)
        earlier.append(grams)
    counts = [len(WORD.findall(t)) for t in texts]
    agree = sum(len(AGREE.findall(t)) for t in texts)
    contrast = sum(len(CONTRAST.findall(t)) for t in texts)
    seen: set[tuple[str, ...]] = set()
    reuse = 0
    for text in texts:
        tk = [t.lower() for t in TOKEN.findall(text)]
        runs = {tuple(tk[j : j + 6]) for j in range(len(tk) - 5)}
        reuse += bool(runs & seen)
        seen |= runs
    return {
        "messages": len(texts), "distinct_1": round(len(set(toks)) / len(toks), 3),
        "distinct_2": round(len(set(pairs)) / len(pairs), 3),
        "near_duplicates": round(near / counted, 3),
        "exact_duplicates": round(1 - len(set(texts)) / len(texts), 3),
        "median_words": statistics.median(counts),
        "share_le_5_words": round(sum(c <= 5 for c in counts) / len(counts), 3),
        "agree_per_contrast": round(agree / max(contrast, 1), 3),
        "six_word_reuse": round(reuse / len(texts), 3),
        "speaker_kappa": speaker_kappa(run) if kappa else None,
    }


def group_kappa(run: list[tuple[str, str]]) -> float | None:
    """``botsim realism``'s separability κ of one chat
    (:func:`behavior_engine.realism.metrics.separability_metric` on the run's messages);
    None when fewer than two speakers have enough messages."""
    records = [MessageRecord(message_id=i, sender=name, is_bot=True, text=text, at=START)
               for i, (name, text) in enumerate(run, 1)]
    value = separability_metric([records]).value
    return None if value is None else round(value, 3)


async def demo_group_figures(personas: list[Persona], n: int,
                             seeds: list[int]) -> dict[str, Any]:
    """Per seed, the demo's groups run together (:func:`world_run`, ``n`` messages each):
    each group's κ (:func:`group_kappa`), and distinct-2 of the groups' text in chat order
    (``botsim realism`` counts its first 2,000 tokens)."""
    out: dict[str, Any] = {}
    for seed in seeds:
        # a ten-minute demo writes ~90 messages per group: the market moves ~7 s between them
        runs = await world_run(personas, n, seed, DEMO_CHATS, step_s=600 / n,
                               reply_p=DEMO_SETTINGS["reply_p"])
        ordered = sorted(zip(DEMO_CHATS, runs, strict=True),  # botsim realism's chat order
                         key=lambda cr: cr[0].telegram_chat_id)
        out[f"seed {seed}"] = {
            "kappa": {chat.title: group_kappa(run) for chat, run in zip(DEMO_CHATS, runs,
                                                                          strict=True)},
            "distinct_2": text_figures([m for _, run in ordered for m in run],
                                       kappa=False)["distinct_2"]}
    return out


def speaker_kappa(run: list[tuple[str, str]]) -> float:
    """Chance-corrected accuracy of REALISM.md's speaker classifier."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from threadpoolctl import threadpool_limits

    by: dict[str, list[str]] = {}
    for name, text in run:
        if len(WORD.findall(text)) >= 3:
            by.setdefault(name, []).append(text)
    per = min(len(v) for v in by.values())
    x = [t for v in by.values() for t in v[:per]]
    y = [name for name, v in by.items() for _ in range(per)]
    model = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2),
        LogisticRegression(max_iter=2000))
    with threadpool_limits(1):
        acc = cross_val_score(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    k = len(by)
    return round(float((acc.mean() - 1 / k) / (1 - 1 / k)), 3)


async def pause_figures(personas: list[Persona], sim: SimulationSettings) -> dict[str, Any]:
    """Reading + typing seconds of each persona's answers to the human questions."""
    gen, snap = OfflineGenerator(), MarketFeed(seed=9, start=START).snapshot(START)
    totals: list[float] = []
    by_persona: dict[str, tuple[float, float]] = {}  # name → (median chars, median seconds)
    for k, p in enumerate(personas):
        chars: list[float] = []
        mine: list[float] = []
        pace = Pace.of(sim, p.profile())
        for i, q in enumerate(QUESTIONS * 5):
            human = ChatLine(i + 1, "Deniz", "deniz_trader", True, q)
            ctx = _ctx(p, 1000 * k + i, k + 1, snap, next(iter(p.topics)), (), human, 5)
            text = (await gen.generate(GenerationRequest(messages=[], context=ctx))).text
            typing = pace.typing_s(text, jitter_rng(5, ctx.turn_id))
            totals.append(pace.reading_s(q) + typing)
            chars.append(len(text))
            mine.append(totals[-1])
        by_persona[p.name] = (statistics.median(chars), round(statistics.median(mine), 2))
    totals.sort()
    return {"answers": len(totals), "p50_s": round(statistics.median(totals), 2),
            "p95_s": round(totals[int(0.95 * (len(totals) - 1))], 2),
            "max_s": round(totals[-1], 2), "median_chars_and_s": by_persona}


def main() -> None:
    """Print the figures (a table, or one JSON object with ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=240)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--demo-groups", type=int, metavar="N", default=0,
                    help="instead: κ and distinct-2 of N messages in each of the demo's groups "
                         "(a ten-minute demo writes about 90 per group)")
    args = ap.parse_args()
    personas = load_persona_dir()
    if args.demo_groups:
        groups = asyncio.run(demo_group_figures(personas, args.demo_groups, args.seeds))
        if args.json:
            print(json.dumps(groups, ensure_ascii=False))
            return
        for seed, fig in groups.items():
            kappas = [k for k in fig["kappa"].values() if k is not None]
            print(f"{seed}: κ {fig['kappa']} (mean {statistics.mean(kappas):.3f}), "
                  f"distinct-2 {fig['distinct_2']}")
        return
    runs = {s: text_figures(asyncio.run(group_run(personas, args.messages, s)))
            for s in args.seeds}
    pauses = {
        "defaults": asyncio.run(pause_figures(personas, SimulationSettings())),
        "demo (typing_cap_s 6)": asyncio.run(
            pause_figures(personas, SimulationSettings(typing_cap_s=6.0))),
    }
    if args.json:
        print(json.dumps({"text": runs, "pauses": pauses}))
        return
    keys = list(next(iter(runs.values())))
    print("| metric | " + " | ".join(f"seed {s}" for s in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for key in keys:
        print(f"| {key} | " + " | ".join(str(r[key]) for r in runs.values()) + " |")
    print()
    for name, fig in pauses.items():
        print(f"reading + typing before an answer to a human, {name}: {fig}")


if __name__ == "__main__":
    main()

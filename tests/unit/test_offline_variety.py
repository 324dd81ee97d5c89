"""The offline generator's voice against REALISM.md's text bands (issue 14, item 7).

A demo-like group run (the four demo personas by talkativeness, topics by weight, a moving
market, a third of the messages replying to a recent one, each turn seeing the chat's last 20
messages) is written through :class:`OfflineGenerator`, seeded, and measured the way
REALISM.md counts: tokens are words (``[\\w']+``) and single punctuation marks, lower-cased;
distinct-n over the first 2,000 tokens; near-duplicates by character 5-gram Jaccard ≥ 0.5
with any earlier message of ≥ 4 words; the classifier is character 2–4-gram TF-IDF
(word-bounded, sublinear, min_df 2) + logistic regression, 5-fold stratified, messages of
≥ 3 words, the same number per speaker.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import statistics
import string
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from backend.schemas import Persona
from behavior_engine.llm import offline as offline_module
from behavior_engine.llm.offline import OfflineGenerator, write_message
from behavior_engine.llm.phrase_memory import PhraseMemory, Recent
from behavior_engine.market import MarketFeed, holdings_pnl_pct, mood_from_pnl
from behavior_engine.turn import ChatLine, GenerationRequest, MarketSnapshot, TurnContext

START = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
PERSONA_DIR = Path(__file__).resolve().parents[2] / "bots" / "personas"
DEMO = {
    p.stem: Persona.model_validate(yaml.safe_load(p.read_text(encoding="utf-8")))
    for p in sorted(PERSONA_DIR.glob("*.yaml"))
}
TOKEN = re.compile(r"[\w']+|[^\w\s]")
WORD = re.compile(r"[\w']+")
# The brief's markers (issue 14 / REALISM.md), whole words.
AGREE = re.compile(r"(?<!\w)(katılıyorum|aynen|haklısın\w*|kesinlikle|doğru|evet)(?!\w)",
                   re.I)
CONTRAST = re.compile(r"(?<!\w)(ama|ancak|fakat|hayır|katılmıyorum|bence değil|değil|yok"
                      r"|sanmıyorum)(?!\w)", re.I)
MESSAGES = 240  # ≈ 2,400 tokens: the first 2,000 for distinct-n, all for the rest


def words(text: str) -> int:
    return len(WORD.findall(text))


def tokens(texts: list[str]) -> list[str]:
    return [t.lower() for text in texts for t in TOKEN.findall(text)]


def char_grams(text: str) -> set[str]:
    low = text.lower()
    return {low[i : i + 5] for i in range(max(len(low) - 4, 1))}


def context(p: Persona, i: int, *, bot_id: int, snap: MarketSnapshot, topic: str,
            history: tuple[ChatLine, ...] = (), reply: ChatLine | None = None,
            seed: int = 11) -> TurnContext:
    pnl = holdings_pnl_pct(p.holdings, snap)
    return TurnContext(
        turn_id=f"turn-{i}", bot_name=p.name, bot_username=p.username, profile=p.profile(),
        stances=tuple(p.stances), holdings=tuple(p.holdings),
        mood=mood_from_pnl(p.mood_baseline, pnl), pnl_pct=pnl, topic=topic, market=snap,
        history=history, reply_to=reply, seed=seed, bot_id=bot_id, chat_id=1)


def group_run(gen: OfflineGenerator, n: int = MESSAGES, seed: int = 7, *,
              equal_shares: bool = False) -> list[tuple[str, str]]:
    """(persona, text) of a demo-like run written through ``gen``; speakers drawn by their
    talkativeness, or evenly with ``equal_shares`` (enough messages from each voice)."""
    feed = MarketFeed(seed=9, start=START)
    rnd = random.Random(seed)
    ids = {name: k + 1 for k, name in enumerate(DEMO)}
    names = list(DEMO)
    history: list[ChatLine] = []
    out: list[tuple[str, str]] = []

    async def write() -> None:
        for i in range(n):
            name = rnd.choices(names, [1.0 if equal_shares else DEMO[k].talkativeness
                                       for k in names])[0]
            p = DEMO[name]
            snap = feed.snapshot(START + timedelta(seconds=60 * i))
            others = [h for h in history[-10:] if h.bot_id != ids[name]]
            reply = rnd.choice(others) if others and rnd.random() < 0.3 else None
            topic = rnd.choices(list(p.topics), list(p.topics.values()))[0]
            ctx = context(p, i, bot_id=ids[name], snap=snap, topic=topic,
                          history=tuple(history[-20:]), reply=reply, seed=seed)
            text = (await gen.generate(GenerationRequest(messages=[], context=ctx))).text
            history.append(ChatLine(1000 + i, p.name, p.username, False, text,
                                    bot_id=ids[name], created_at=snap.at))
            out.append((name, text))

    asyncio.run(write())
    return out


@pytest.fixture(scope="module")
def run() -> list[tuple[str, str]]:
    return group_run(OfflineGenerator())


@pytest.fixture(scope="module")
def texts(run: list[tuple[str, str]]) -> list[str]:
    return [t for _, t in run]


def six_word_reuse(texts: list[str], window: int | None = None) -> float:
    """Share of messages repeating a run of 6 tokens said earlier (the issue's measure), or
    said in the chat's last ``window`` messages."""
    runs = []
    for text in texts:
        toks = [t.lower() for t in TOKEN.findall(text)]
        runs.append({tuple(toks[j : j + 6]) for j in range(len(toks) - 5)})
    hits = 0
    for i, own in enumerate(runs):
        earlier = runs[:i] if window is None else runs[max(0, i - window) : i]
        hits += any(own & r for r in earlier)
    return hits / len(texts)


def test_distinct_1_and_2_over_2000_tokens(texts: list[str]) -> None:
    window = tokens(texts)[:2000]
    assert len(window) == 2000
    pairs = list(itertools.pairwise(window))
    assert len(set(window)) / len(window) >= 0.28
    assert len(set(pairs)) / len(pairs) >= 0.75


def test_near_and_exact_duplicates_are_rare(texts: list[str]) -> None:
    earlier: list[set[str]] = []
    near = counted = 0
    for text in texts:
        grams = char_grams(text)
        if words(text) >= 4:
            counted += 1
            near += any(len(grams & g) / len(grams | g) >= 0.5 for g in earlier)
        earlier.append(grams)
    assert near / counted <= 0.03
    assert 1 - len(set(texts)) / len(texts) <= 0.025


def test_message_lengths_look_like_chat(texts: list[str]) -> None:
    counts = [words(t) for t in texts]
    assert 7 <= statistics.median(counts) <= 15
    assert 0.20 <= sum(c <= 5 for c in counts) / len(counts) <= 0.40


def test_agreement_stays_rare_against_contrast(texts: list[str]) -> None:
    agree = sum(len(AGREE.findall(t)) for t in texts)
    contrast = sum(len(CONTRAST.findall(t)) for t in texts)
    assert contrast > 0 and agree / contrast <= 0.15


def test_voices_are_distinct_but_not_caricatures() -> None:
    # The demo's shares are unequal (issue 14: Gini 0.45-0.8), so the quietest persona says
    # little in a run; the classifier takes the same number per speaker anyway (REALISM.md),
    # so the voices are written in equal shares here.
    run = group_run(OfflineGenerator(), equal_shares=True)
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

    by: dict[str, list[str]] = {}
    for name, text in run:
        if words(text) >= 3:
            by.setdefault(name, []).append(text)
    per = min(len(v) for v in by.values())
    x = [t for v in by.values() for t in v[:per]]
    y = [name for name, v in by.items() for _ in range(per)]
    model = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2),
        LogisticRegression(max_iter=2000))
    with threadpoolctl.threadpool_limits(1):  # a shared 2-core machine: no BLAS threads
        acc = cross_val_score(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    k = len(by)
    kappa = (acc.mean() - 1 / k) / (1 - 1 / k)
    assert k == 4 and per >= 30
    assert 0.31 <= kappa <= 0.75, kappa


def test_the_chat_memory_keeps_phrases_from_coming_back(texts: list[str]) -> None:
    # Item 7: no phrase the chat used recently. The demo: 21 % of bot messages
    # reused a 6-word run said earlier. With the demo's unequal shares (issue 14: the most
    # talkative persona writes ~2/3 of the run) the whole run reuses 16 %, but a run said in
    # the chat's last 50 messages comes back in 5 %; a generator that only sees each turn's
    # last 20 messages brings it back in 17 %.
    forgetful = [t for _, t in group_run(OfflineGenerator(remember=False))]
    assert six_word_reuse(texts, window=50) <= 0.08
    assert six_word_reuse(texts, window=50) < six_word_reuse(forgetful, window=50) / 2
    assert six_word_reuse(texts) < six_word_reuse(forgetful)


def test_a_phrase_in_the_recent_history_is_not_reused() -> None:
    """The same turn written again after its own text was said: a different text that
    shares no 6-token run with it (so the history, not chance, steers the choice)."""
    snap = MarketFeed(seed=9, start=START).snapshot(START)
    repeated = 0
    cases = 0
    for p in DEMO.values():
        for i in range(12):
            ctx = context(p, i, bot_id=1, snap=snap, topic=next(iter(p.topics)))
            first = write_message(ctx)
            said = ChatLine(1, p.name, p.username, False, first, bot_id=1)
            again = write_message(replace(ctx, history=(said,)))
            assert write_message(ctx) == first  # deterministic without the history
            toks = [t.lower() for t in TOKEN.findall(first)]
            runs = {tuple(toks[j : j + 6]) for j in range(len(toks) - 5)}
            toks2 = [t.lower() for t in TOKEN.findall(again)]
            cases += 1
            repeated += again == first or any(
                tuple(toks2[j : j + 6]) in runs for j in range(len(toks2) - 5))
    assert repeated / cases <= 0.1, (repeated, cases)


async def test_a_template_the_bot_used_lately_in_the_chat_waits_its_turn() -> None:
    """PhraseMemory: the templates a bot used in a chat are avoided by its next turns
    there and in its other chats, not by another bot; in another chat, the bot's own text
    steers by its bigrams but is not a text to be a near-duplicate of."""
    memory = PhraseMemory()
    gen = OfflineGenerator(memory)
    p = DEMO["ayse"]
    snap = MarketFeed(seed=9, start=START).snapshot(START)
    ctx = context(p, 0, bot_id=3, snap=snap, topic="btc")
    await gen.generate(GenerationRequest(messages=[], context=ctx))
    used = memory.recent(1, 3, "another-turn").templates
    assert used
    elsewhere = memory.recent(2, 3, "another-turn")  # the same bot in another chat
    assert elsewhere.templates == used and elsewhere.seen and not elsewhere.texts
    assert not memory.recent(2, 4, "another-turn").templates  # another bot there
    assert not memory.recent(1, 4, "another-turn").templates  # another bot
    assert not memory.recent(1, 3, ctx.turn_id).templates  # the turn itself
    for i in range(1, 25):
        recent = Recent(templates=set(used))  # the templates only: no bigrams to steer by
        text, picked = offline_module.compose_message(
            replace(ctx, turn_id=f"turn-{i}"), recent=recent)
        # fresh templates exist for every piece of a short casual message
        assert not set(picked) & used, (text, set(picked) & used)


def test_the_second_phrase_bank_follows_the_template_rules() -> None:
    known = {"sym", "price", "price_k", "chg", "hi", "lo", "usd", "bist", "btc", "gold"}
    known |= {"pnl_up", "pnl_down", "years", "reason", "reason_l", "mkt", "macro", "name", "user"}
    path = Path(offline_module.__file__).parent / "templates" / "offline_variety.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    main = yaml.safe_load((path.parent / "offline.yaml").read_text(encoding="utf-8"))

    def strings(node: object, at: str = "") -> list[tuple[str, str]]:
        if isinstance(node, str):
            return [(at, node)]
        if isinstance(node, dict):
            return [s for k, v in node.items() for s in strings(v, f"{at}.{k}")]
        assert isinstance(node, list), node
        return [s for v in node for s in strings(v, at)]

    for at, text in strings(data):
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f}
        assert fields <= known, (at, text)
        assert text.count("(") == text.count(")"), (at, text)
        assert not AGREE.search(text), (at, text)  # agreement stays rare
        node: object = main
        keys = at.strip(".").split(".")
        if keys[1] == "roles":  # a persona kind may gain lines on a topic of its own
            keys = keys[:3]
        for key in keys:  # only banks the main file has
            assert isinstance(node, dict) and key in node, at
            node = node[key]


def test_a_near_duplicate_of_a_recent_message_is_written_again() -> None:
    """Even when nothing else steers the choice (no bigrams known, no templates used), a
    text that nearly repeats a recent one (character 5-gram Jaccard ≥ 0.5) is rewritten."""
    snap = MarketFeed(seed=9, start=START).snapshot(START)
    for name, p in DEMO.items():
        for i in range(5):
            ctx = context(p, i, bot_id=1, snap=snap, topic=next(iter(p.topics)))
            first = write_message(ctx)
            if words(first) < 4:
                continue  # REALISM.md counts near-duplicates of ≥ 4 words only
            recent = Recent(texts=[first])  # the text only: no bigrams, no templates
            again, _ = offline_module.compose_message(ctx, recent=recent)
            assert not recent.near_duplicate(again), (name, first, again)

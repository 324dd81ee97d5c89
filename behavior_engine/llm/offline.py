"""The offline generator: template-written messages when no LLM provider can answer.

It needs no network and no model: it writes from the phrase banks in
``behavior_engine/llm/templates/offline.yaml`` (Turkish and English), shaped by the turn's
:class:`~behavior_engine.turn.TurnContext`:

* persona kind, from keywords of ``profile.role`` then ``profile.bio``: ``scalper`` (short-term
  levels), ``investor`` (years, dividends), ``economist`` (explains rates, inflation, TCMB),
  ``newcomer`` (asks questions) or ``generic``;
* style: formality picks the phrase banks (with :data:`REGISTER_MIX` a one-line reaction,
  an opener, a reply lead... comes from a neighbouring formality's bank, as people drift in
  register; a persona kind's own reactions are in ``kind_reactions``), ``emoji_rate`` is the
  Poisson mean of emojis per
  message, ``length`` the word budget (short ≤ 8, medium 8–20, long 20–45 words, with a share
  of one-line reactions: about half of a short writer's messages, few of a long writer's);
* mood (emoji tone, mood lines with the holdings P&L), stance on the topic (view and reason),
  the topic and the market snapshot (real prices, Turkish number format for ``tr``).

A reply names the replied speaker (first name or @username) in :data:`NAME_P` of cases (the
Telegram reply shows whom it answers), talks about the replied message's
topic (keyword detection, :func:`detect_topic`), answers a question as an answer, and otherwise
contrasts or agrees according to the persona's own stance. Agreement is kept rare: in human
chat "agree" markers are about a tenth as common as contrast ones (REALISM.md).

No phrase twice (issue 14): every piece (template, opener, closer, lead-in, name of the
topic) is drawn among a few candidates, preferring templates the bot has not used recently in
the chat and, among those, the text whose word bigrams the chat has said least recently
(:mod:`behavior_engine.llm.phrase_memory`: the turn's history plus, in
:class:`OfflineGenerator`, a per-chat memory of what it wrote). A message that is still a
near-duplicate of a recent one (character 5-gram Jaccard ≥ 0.5, REALISM.md) is written again,
up to :data:`REWRITES` times.

Deterministic: the random stream is seeded from ``context.seed`` and ``context.turn_id`` only;
what is avoided comes from the context and the memory (a turn never avoids its own text, so
the same request gets the same text).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import string
import time
from functools import cache
from importlib import resources
from typing import Any

import yaml

from backend.schemas import Stance
from behavior_engine.llm.phrase_memory import PhraseMemory, Recent, bigrams
from behavior_engine.topics import TOPIC_SYMBOLS, detect_topic
from behavior_engine.turn import ChatLine, Generation, GenerationRequest, TurnContext

MODEL = "templates-v1"
MACRO_TOPICS = frozenset({"rates", "inflation"})
_DECIMALS = {"USDTRY": 2, "BIST100": 0, "BTC": 0, "GOLD": 0}
#: Chance a reply to a like-minded message agrees outright ("aynen", "katılıyorum") rather
#: than agreeing in part ("olabilir ama …"): human chat has agreement markers at about a
#: tenth of the contrast ones (REALISM.md: 0.06–0.13); the ten-minute demo with 0.2 gave
#: 0.31 (docs/realism.md, "The demo").
AGREE_P = 0.1

#: style.length → (share of one-line reactions, word target low, high, hard cap).
_LENGTH: dict[str, tuple[float, int, int, int]] = {
    "short": (0.62, 3, 7, 8),
    "medium": (0.3, 6, 15, 20),
    "long": (0.1, 20, 36, 45),
}
#: style.length → word target of a reply (replies run shorter than fresh messages).
_REPLY_WORDS: dict[str, tuple[int, int]] = {"short": (2, 6), "medium": (5, 13), "long": (14, 32)}
#: Share of replies that name the replied speaker ("Zeynep, ...", "... @ayse_scalper_bot"):
#: a Telegram reply already shows whom it answers. Naming every one made each bot of a
#: two-bot chat tell-apart by the other's name alone (issue 14: κ 0.79-0.88 for the scalper
#: and the investor, band 0.31-0.75).
NAME_P = 0.5
#: style.length → share of replies that are only a reaction ("katılmıyorum"), named or not.
_BARE_REPLY = {"short": 0.45, "medium": 0.3, "long": 0.1}
#: persona kind → weights of the pieces a message is built from (suffix digits: a 2nd piece).
_SLOTS: dict[str, dict[str, float]] = {
    "scalper": {"fact": 3, "role": 4, "role2": 1.5, "stance": 2, "mood": 1, "reason": 0.3},
    "investor": {"role": 4, "role2": 2, "stance": 3, "reason": 0.8, "fact": 1.5, "mood": 1},
    "economist": {"role": 5, "role2": 3, "role3": 1, "reason": 1, "stance": 2, "fact": 1.5},
    "newcomer": {"role": 5, "fact": 2, "role2": 1, "stance": 1, "mood": 1, "reason": 0.3},
    "generic": {"fact": 2, "stance": 3, "reason": 0.8, "role": 1, "mood": 1},
}
_EMOJI = {
    "pos": ["🚀", "📈", "💪", "😎", "🔥", "🤑", "✅", "😄"],
    "neg": ["📉", "😬", "😅", "🤦", "😤", "💀", "😱", "🙈"],
    "calm": ["👀", "🤔", "🤷", "☕", "😐", "🙂"],
    "newcomer": ["🤔", "🙈", "😅", "🙏"],
    "scalper": ["⚡", "🎯", "💸"],
    "investor": ["🌱", "🧘"],
}
#: Share of phrase-bank picks from a neighbouring formality (:meth:`_Writer.register`).
REGISTER_MIX = 0.3
#: What is borrowed from a neighbouring formality: one-line reactions, interjections,
#: openers, closers, reply leads, the address and the topic's name; the content (facts,
#: stances, reasons, role lines) and the tails stay the persona's own formality.
MIXED = frozenset({"reactions", "interjections", "openers", "closers", "lead", "address",
                   "names"})
_NEIGHBOURS = {"casual": ("neutral",), "neutral": ("casual", "formal"), "formal": ("neutral",)}
_TAIL_P = {"casual": 0.1, "neutral": 0.25, "formal": 0.3}  # reaction + a short 2nd sentence
_OPENER_P = {"casual": 0.25, "neutral": 0.3, "formal": 0.35}
_CLOSER_P = {"casual": 0.2, "neutral": 0.25, "formal": 0.35}
_KEEP_CASE = ("Bitcoin", "Borsa İstanbul", "Borsa Istanbul", "Fed", "I ", "I'")
#: Templates drawn per piece (the least repeated is kept) and rewrites of a near-duplicate.
CANDIDATES = 4
REWRITES = 3
#: A piece whose bigrams were this much said lately is left out (unless it is the first).
STALE_SKIP = 0.7
_FIELDS = string.Formatter()
#: Two opinion markers in a row, where an address ("{name}, bence") meets a lead or a line
#: that opens with one ("bence değil"): the second is dropped.
_TWO_OPINIONS = re.compile(r"(?i)(?<!\w)(bence|bana göre|bana kalırsa|i think)[,:]?\s+"
                           r"(?:bence|bana göre|bana kalırsa|i think)(?!\w)")
_ALT = re.compile(r"\(([^()]*)\)")  # "(a|b)" in a template: one of the alternatives


#: Phrase-bank files, merged in order (a later file's lists extend the earlier ones').
TEMPLATE_FILES = ("templates/offline.yaml", "templates/offline_variety.yaml")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge ``extra`` into ``base`` in place: mappings key by key, lists appended."""
    for key, value in extra.items():
        old = base.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            base[key] = [*old, *value]
        else:
            base[key] = value


@cache
def _data() -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in TEMPLATE_FILES:
        raw = resources.files("behavior_engine.llm").joinpath(name)
        _merge(data, yaml.safe_load(raw.read_text(encoding="utf-8")))
    return data


def _bank(language: str) -> dict[str, Any]:
    if language == "detect" or language not in _data():
        raise ValueError(f"offline generator has no templates for language {language!r}")
    bank: dict[str, Any] = _data()[language]
    return bank


@cache
def _pattern(*path: str) -> re.Pattern[str]:
    """A keyword regex of the ``detect`` section of the templates file."""
    node: Any = _data()["detect"]
    for key in path:
        node = node[key]
    return re.compile(str(node))


def _lower(text: str) -> str:
    return text.replace("I", "ı").replace("İ", "i").lower()


def detect_view(text: str) -> str | None:
    """Whether a message expects prices to go up (``bullish``) or down (``bearish``).

    Args:
        text: message text.

    Returns:
        ``bullish``, ``bearish`` or None when it cannot tell.
    """
    low = _lower(text)
    not_up, not_down = _pattern("not_up"), _pattern("not_down")
    score = len(not_down.findall(low)) - len(not_up.findall(low))
    low = not_up.sub(" ", not_down.sub(" ", low))
    score += len(_pattern("up").findall(low)) - len(_pattern("down").findall(low))
    return "bullish" if score > 0 else "bearish" if score < 0 else None


def persona_kind(role: str, bio: str) -> str:
    """Classify a persona as ``scalper``, ``economist``, ``newcomer``, ``investor`` or ``generic``.

    The role label decides when one of its keywords matches; otherwise the bio.
    """
    for text in (role, bio):
        low = _lower(text)
        for kind in _data()["detect"]["kinds"]:  # in file order: first match wins
            if _pattern("kinds", kind).search(low):
                return str(kind)
    return "generic"


def _fmt_num(x: float, decimals: int, lang: str) -> str:
    s = f"{x:,.{decimals}f}"
    return s.translate(str.maketrans(",.", ".,")) if lang == "tr" else s


def _fmt_pct(x: float, lang: str) -> str:
    return f"%{_fmt_num(abs(x), 2, lang)}" if lang == "tr" else f"{abs(x):.2f}%"


def _nice_step(x: float) -> float:
    unit = 10.0 ** math.floor(math.log10(x))
    return next(m * unit for m in (1, 2, 5, 10) if m * unit >= x)


@cache
def _fields(template: str) -> frozenset[str]:
    return frozenset(f for _, f, _, _ in _FIELDS.parse(template) if f)


def _group(topic: str) -> str:
    return "market" if topic in TOPIC_SYMBOLS else "macro" if topic in MACRO_TOPICS else "generic"


def _cap(s: str, lang: str) -> str:
    if not s:
        return s
    first = {"i": "İ", "ı": "I"}.get(s[0], s[0].upper()) if lang == "tr" else s[0].upper()
    return first + s[1:]


def _decap(s: str, lang: str) -> str:
    word = s.split(" ", 1)[0]
    if not s or s.startswith(_KEEP_CASE) or s[:1] in "@{" or word[1:2].isupper() or word == "I":
        return s
    first = {"I": "ı", "İ": "i"}.get(s[0], s[0].lower()) if lang == "tr" else s[0].lower()
    return first + s[1:]


def _words(text: str) -> int:
    return sum(1 for w in text.split() if any(c.isalnum() for c in w))


def _head(text: str) -> str:
    return " ".join(_lower(text).split()[:3])


def _address_name(speaker: str) -> str:
    parts = speaker.split()
    if len(parts) >= 2 and parts[1] in ("Hoca", "Hocam"):
        return f"{parts[0]} Hocam"
    return parts[0] if parts else speaker


class _Writer:
    """Writes one message; all randomness comes from ``rng``."""

    def __init__(self, ctx: TurnContext, rng: random.Random,
                 recent: Recent | None = None) -> None:
        self.ctx, self.rng = ctx, rng
        self.recent = recent if recent is not None else Recent()
        self.used: list[str] = []  # templates and phrases of this message
        self.lang = ctx.profile.language
        self.bank = _bank(self.lang)
        self.form = ctx.profile.style.formality
        self.kind = persona_kind(ctx.profile.role, ctx.profile.bio)
        self.values: dict[str, str] = {}
        self.names: list[str] = []
        self.direction = "flat"
        self.topic = ""
        self.last = ""  # template of the last pick
        self._base_values()

    def _base_values(self) -> None:
        prices, lang = self.ctx.market.prices, self.lang
        for key, sym in (("usd", "USDTRY"), ("bist", "BIST100"), ("btc", "BTC"), ("gold", "GOLD")):
            if sym in prices:
                self.values[key] = _fmt_num(prices[sym], _DECIMALS[sym], lang)
        pnl = self.ctx.pnl_pct
        if pnl > 0.1:
            self.values["pnl_up"] = _fmt_pct(pnl, lang)
        elif pnl < -0.1:
            self.values["pnl_down"] = _fmt_pct(pnl, lang)
        self.values["years"] = str(self.rng.randint(3, 10))

    def set_topic(self, topic: str) -> None:
        """Fill the topic's placeholders (name, prices, levels, stance reason)."""
        self.topic = topic
        names = self.bank["topic_names"]
        if topic in names:
            self.names = names[topic][self.register("names")]
        else:
            self.names = [topic.replace("_", " ")]
        for key in ("price", "price_k", "chg", "hi", "lo", "mkt", "macro", "reason", "reason_l"):
            self.values.pop(key, None)
        self.direction = "flat"
        sym = TOPIC_SYMBOLS.get(topic)
        market = self.ctx.market
        if sym is not None and sym in market.prices:
            price, chg, lang = market.prices[sym], market.change_pct.get(sym, 0.0), self.lang
            dec = _DECIMALS.get(sym, 2 if price < 100 else 0)
            self.values.update(price=_fmt_num(price, dec, lang), chg=_fmt_pct(chg, lang), mkt="")
            if price >= 1000:
                k = f"{price / 1000:.1f}".removesuffix(".0")
                self.values["price_k"] = k.replace(".", ",") + " bin" if lang == "tr" else k + "k"
            step = _nice_step(price * 0.002)
            ldec = max(dec, -math.floor(math.log10(step)))
            hi = math.ceil(price * (1 + self.rng.uniform(0.003, 0.015)) / step) * step
            lo = math.floor(price * (1 - self.rng.uniform(0.003, 0.015)) / step) * step
            self.values.update(hi=_fmt_num(hi, ldec, lang), lo=_fmt_num(lo, ldec, lang))
            self.direction = "up" if chg > 0.15 else "down" if chg < -0.15 else "flat"
        elif topic in MACRO_TOPICS:
            self.values["macro"] = ""
        stance = self.stance()
        if stance is not None:
            reason = stance.reason.strip().rstrip(".!")
            self.values.update(reason=reason, reason_l=_decap(reason, self.lang))

    def register(self, piece: str) -> str:
        """The formality whose phrase bank the next piece comes from: the persona's own, or
        with :data:`REGISTER_MIX` a neighbouring one (people drift in register; disjoint
        banks made two voices tell-apart caricatures, κ 0.8–0.9 in the demo's groups)."""
        if piece not in MIXED or self.rng.random() >= REGISTER_MIX:
            return self.form
        return self.rng.choice(_NEIGHBOURS[self.form])

    def stance(self) -> Stance | None:
        """The persona's stance on the current topic, or None."""
        return next((s for s in self.ctx.stances if s.topic == self.topic), None)

    def view(self) -> str:
        """The persona's view on the current topic (``neutral`` without a stance)."""
        s = self.stance()
        return str(s.view) if s is not None else "neutral"

    def staleness(self, text: str) -> float:
        """Share of ``text``'s word bigrams the chat said recently (0.25 for no bigram)."""
        grams = bigrams(text)
        return len(grams & self.recent.seen) / len(grams) if grams else 0.25

    def fresh_first(self, options: list[str]) -> list[str]:
        """``options`` not used recently by this bot in this chat (nor in this message), or
        all of them when every one was."""
        avoid = self.recent.templates
        return [o for o in options if o not in avoid and o not in self.used] or options

    def choose(self, options: list[str], k: int = 2) -> str:
        """One of ``options`` (phrases: openers, closers, reply leads...): of ``k`` drawn
        among the fresh ones (the chat did not say them lately either), the least repeated,
        its ``(a|b)`` alternatives drawn (a lead "olur da (zamanı|vakti) değil" was sent
        with its parentheses)."""
        fresh = self.fresh_first(options)
        fresh = [o for o in fresh if not o or self.staleness(o) < STALE_SKIP] or fresh
        cands = self.rng.sample(fresh, min(k, len(fresh)))
        best = min(cands, key=self.staleness)
        if best:
            self.used.append(best)
        return self.alternatives(best)

    def alternatives(self, text: str) -> str:
        """``text`` with each ``(a|b)`` replaced by one of its alternatives."""
        return _ALT.sub(lambda m: self.rng.choice(m.group(1).split("|")), text)

    def render(self, template: str) -> str:
        """``template`` with its alternatives drawn and its placeholders filled."""
        vals = {**self.values, "sym": self.rng.choice(self.names)}
        return " ".join(self.alternatives(template).format_map(vals).split())

    def pick(self, templates: list[str], max_words: int | None = None) -> str | None:
        """Render a template whose placeholders are all known (``None`` if none): of
        :data:`CANDIDATES` drawn among those the bot did not use recently, the one within
        ``max_words`` whose bigrams the chat said least recently."""
        known = self.values.keys() | {"sym"}
        usable = [t for t in templates if _fields(t) <= known]
        if not usable:
            return None
        fresh = self.fresh_first(usable)
        scored = []
        for template in self.rng.sample(fresh, min(CANDIDATES, len(fresh))):
            text = self.render(template)
            over = max_words is not None and _words(text) > max_words
            scored.append((over, _words(text) if over else 0, self.staleness(text),
                           template, text))
        best = min(scored, key=lambda s: s[:3])
        self.last = best[3]
        self.used.append(best[3])
        return best[4]

    def pool(self, kind: str) -> list[str]:
        """Templates of one piece kind for the current topic."""
        b, form = self.bank, self.form
        kind = kind.rstrip("0123456789")
        group = _group(self.topic)
        if kind == "fact":
            return list(b["facts"][form][self.direction if group == "market" else group])
        if kind == "stance":
            return list(b["stance"][form][self.view()])
        if kind == "reason":
            return list(b["reason"][form])
        if kind == "mood":
            mood = self.ctx.mood
            return list(b["mood"]["good" if mood > 0 else "bad"]) if abs(mood) > 0.3 else []
        roles = b["roles"].get(self.kind, b["roles"]["generic"])
        if kind == "explain":  # topic-specific role lines only
            return [*roles.get(group, []), *roles.get(self.topic, [])]
        return [*roles.get("any", []), *roles.get(group, []), *roles.get(self.topic, [])]

    def sentence(self, s: str) -> str:
        """Normalise a sentence's case for the formality."""
        return _decap(s, self.lang) if self.form == "casual" else _cap(s, self.lang)

    def compose(self, first: list[str], target: int, cap: int) -> list[str]:
        """Fill the word budget with pieces, ``first`` ones first, then weighted by kind."""
        weights = dict(_SLOTS[self.kind])
        if "mood" in weights:
            weights["mood"] *= abs(self.ctx.mood)
        # weighted order without replacement (Efraimidis–Spirakis keys)
        order = sorted(weights, key=lambda k: -(self.rng.random() ** (1 / max(weights[k], 1e-6))))
        out: list[str] = []
        used: set[str] = set()
        heads: set[str] = set()  # no two sentences opening with the same three words
        n = 0
        kinds = [*first, *[k for k in order if k not in first]]
        for kind in kinds:
            if kind == "reason" and "stance" not in used:
                continue  # a reason only follows the stance it explains
            pool = [t for t in self.pool(kind) if t not in used]
            text = self.pick(pool, max(cap - n, 1))
            if text is None or (out and n + _words(text) > cap) or _head(text) in heads:
                continue
            if out and self.staleness(text) >= STALE_SKIP:
                continue  # said lately (the stance's reason, a fixed line): leave it out
            heads.add(_head(text))
            used.update((kind.rstrip("0123456789"), self.last))
            out.append(self.sentence(text))
            n += _words(text)
            if n >= target:
                break
            if kind == "stance" and "reason" in kinds[: kinds.index(kind)]:
                kinds.append("reason")  # the reason was drawn earlier: give it its turn now
        return sorted(out, key=lambda s: s.endswith("?"))  # questions last, order kept

    def join(self, parts: list[str]) -> str:
        """Join sentences with the formality's punctuation."""
        if self.form == "casual":
            text = ""
            for p in parts:
                if text:
                    end = text.endswith(("?", "!", ":"))
                    text += " " if end else self.rng.choice([", ", ", ", ", ", " "])
                text += p.rstrip(".")
            if not text.endswith(("?", "!")):
                # "…" as a phone keyboard writes "..." (one token, not three full stops)
                text += self.rng.choices(["", "!", "...", "…", "!!"], [14, 2, 1.5, 1.5, 1])[0]
            return text
        ends = [p if p.endswith(("?", "!", ".", ":")) else p + "." for p in parts]
        if self.form == "neutral" and ends[-1].endswith(".") and self.rng.random() < 0.1:
            ends[-1] = ends[-1][:-1] + "!"
        return " ".join(ends)

    def lead(self, lead: str, parts: list[str]) -> list[str]:
        """Put a lead-in (opener, answer) before the first sentence."""
        if not parts:
            return [self.sentence(lead)]
        glue = parts[0] if lead.endswith((":", ".", "?")) else _decap(parts[0], self.lang)
        return [f"{self.sentence(lead)} {glue}", *parts[1:]]

    def emojis(self) -> str:
        """Poisson(emoji_rate) emojis in the mood's tone."""
        rate, n, p = self.ctx.profile.style.emoji_rate, 0, self.rng.random()
        limit = math.exp(-rate)
        while p > limit and n < 4:
            n += 1
            p *= self.rng.random()
        mood = self.ctx.mood
        pool = [*_EMOJI["calm"], *_EMOJI.get(self.kind, [])]
        pool += _EMOJI["pos"] * 2 if mood > 0.2 else _EMOJI["neg"] * 2 if mood < -0.2 else []
        if self.direction != "flat":
            pool.append("📈" if self.direction == "up" else "📉")
        picks = [self.rng.choice(pool)]
        for _ in range(n - 1):
            picks.append(picks[-1] if self.rng.random() < 0.35 else self.rng.choice(pool))
        return "".join(picks[:n])

    def fresh(self) -> str:
        """A message on the turn's topic: a reaction or a composed one."""
        self.set_topic(self.ctx.topic)
        react_p, lo, hi, cap = _LENGTH[self.ctx.profile.style.length]
        b, form, reg = self.bank, self.form, self.register
        if self.rng.random() < react_p:
            group = b["reactions"][reg("reactions")]
            own = b.get("kind_reactions", {}).get(self.kind, {})
            core = self.pick([*group[self.direction], *group["any"],
                              *own.get(self.direction, ()), *own.get("any", ())]) or "..."
            inter = self.choose(b["interjections"][reg("interjections")])
            text = self.sentence(f"{inter} {_decap(core, self.lang)}" if inter else core)
            tail = self.pick(b["tails"][form]) if self.rng.random() < _TAIL_P[form] else None
            if tail is not None and _head(tail) != _head(core):
                return self.join([text, self.sentence(tail)])
            return text if form == "casual" or self.rng.random() < 0.5 else self.join([text])
        parts = self.compose([], self.rng.randint(lo, hi), cap)
        n = sum(_words(p) for p in parts)
        if self.rng.random() < _OPENER_P[form] and n < cap:
            parts = self.lead(self.choose(b["openers"][reg("openers")]), parts)
        if self.rng.random() < _CLOSER_P[form] and n + 2 < cap:
            parts.append(self.sentence(self.choose(b["closers"][reg("closers")])))
        return self.join(parts)

    def reply(self, line: ChatLine) -> str:
        """A reply: stays on the replied topic, answers or contrasts, and names the speaker
        in :data:`NAME_P` of replies."""
        self.set_topic(detect_topic(line.text) or self.ctx.topic)
        b, form, rng = self.bank["reply"], self.form, self.rng
        own, other = self.view(), detect_view(line.text)
        if "?" in line.text:
            rel = "answer"
        elif own == "neutral" or other is None:
            rel = "unsure" if rng.random() < 0.5 else ""
        elif own == other:  # the chat drifting into agreement: agree in part at most
            rel = "agree" if rng.random() < AGREE_P and not self.ctx.contrast else "partial"
        else:
            rel = "disagree"
        lo, hi = _REPLY_WORDS[self.ctx.profile.style.length]
        cap = _LENGTH[self.ctx.profile.style.length][3]
        leads: list[str] = []
        if rel:
            leads = (b[rel].get(self.kind, b[rel]["generic"]) if rel == "answer"
                     else b[rel][self.register("lead")])
            if rel == "unsure" and own == "neutral":  # not "not sure, but: no clear direction"
                leads = [x for x in leads if not x.endswith((" ama", " but"))]
        lead = self.choose(leads) if leads else ""
        bare = rel not in ("", "answer") and not lead.endswith((" ama", " but"))
        slack = _words(lead) + 1  # the address and the lead-in
        if bare and rng.random() < _BARE_REPLY[self.ctx.profile.style.length]:
            parts = [self.sentence(lead)]  # a bare reaction: "@ayse_scalper_bot katılmıyorum"
        else:
            first = ["explain", "stance"] if rel == "answer" and self.kind == "economist" else []
            target = max(rng.randint(lo, hi) - slack, 1)
            parts = self.compose(first or ["stance"], target, cap - slack)
        if not bare and lead:
            parts = self.lead(lead, parts)
        elif lead and parts[:1] != [self.sentence(lead)]:
            parts = [self.sentence(lead), *parts]
            parts.sort(key=lambda s: s.endswith("?"))
        text = self.join(parts)
        if rng.random() >= NAME_P:
            return text
        name = _address_name(line.speaker)
        user = line.speaker_username or ""
        address = self.choose([a for a in b["address"][self.register("address")]
                               if user or "{user}" not in a])
        address = address.format(name=name, user=user)
        if rng.random() < 0.8 or text.endswith("?"):
            return f"{address} {_decap(text, self.lang)}"
        end = "@" + user if user and rng.random() < 0.5 else name
        if form == "casual" or not text.endswith((".", "!")):
            return f"{text.rstrip('.')} {end}"
        return f"{text[:-1]}, {end}{text[-1]}"  # "..., Zeynep."


def _seed(ctx: TurnContext) -> int:
    digest = hashlib.sha256(f"offline|{ctx.seed}|{ctx.turn_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


#: Share of fresh messages on a news topic that open with the news (issue 16, item 5).
NEWS_P = 0.6
#: How a message opens on the news, per language: "{h}" is the headline (quoted in a third
#: of them; the rest name it, so the chat does not repeat the headline word for word).
NEWS_LEADS: dict[str, tuple[str, ...]] = {
    "tr": ("{h}, gördünüz mü?", "Haber düştü: {h}.", "{h} haberi her şeyi değiştirdi.",
           "Bu haberden sonra", "Haber sonrası", "Karar sonrası", "Bu gelişmeyle",
           "Son haberle birlikte", "Açıklama geldi,", "Bu karar çok şey söylüyor,"),
    "en": ("{h}, did you see that?", "News just in: {h}.", "{h}, and that changes things.",
           "After this news", "After the announcement", "With this decision",
           "Since the news broke", "The headline says it all,"),
}


def _news_lead(ctx: TurnContext, rng: random.Random) -> str | None:
    """A news opener for a fresh message on the newest event's topic, or None."""
    if ctx.reply_to is not None or not ctx.news or ctx.topic not in ctx.news_topics:
        return None
    if rng.random() >= NEWS_P:
        return None
    headline = ctx.news[0].rsplit(" (", 1)[0]
    lead = rng.choice(NEWS_LEADS.get(ctx.profile.language, NEWS_LEADS["en"]))
    return lead.format(h=headline)


def _one(ctx: TurnContext, rng: random.Random, recent: Recent) -> tuple[str, list[str]]:
    writer = _Writer(ctx, rng, recent)
    text = writer.reply(ctx.reply_to) if ctx.reply_to is not None else writer.fresh()
    lead = _news_lead(ctx, rng)
    if lead is not None:
        text = f"{lead} {_decap(text, writer.lang) if lead[-1] not in '.?' else text}"
    text = _TWO_OPINIONS.sub(r"\1", text)  # "Ali Hocam, bence bence değil" → "..., bence değil"
    emo = writer.emojis()
    if emo:
        text = text + emo if text[-1] in ".!?" and rng.random() < 0.2 else f"{text} {emo}"
    return " ".join(text.split()), writer.used


def compose_message(ctx: TurnContext, max_chars: int = 4096,
                    recent: Recent | None = None) -> tuple[str, list[str]]:
    """Write one message avoiding what ``recent`` holds; also return the templates and
    phrases it used (for a :class:`~behavior_engine.llm.phrase_memory.PhraseMemory`).

    A text that repeats a recent one exactly or nearly (REALISM.md's near-duplicate) is
    written again, up to :data:`REWRITES` times; the least repeated version is kept.

    Args:
        ctx: the turn context (its ``history`` is avoided too).
        max_chars: the longest text allowed, >= 1.
        recent: what else to avoid (None: the history only).

    Returns:
        (a text of 1..max_chars characters, the templates it used).

    Raises:
        ValueError: ``max_chars`` < 1 or no templates for the persona's language.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if recent is None:
        recent = Recent()
        for line in ctx.history:
            recent.add_text(line.text)
    rng = random.Random(_seed(ctx))
    tries: list[tuple[bool, float, str, list[str]]] = []
    for _ in range(REWRITES + 1):
        text, used = _one(ctx, rng, recent)
        grams = bigrams(text)
        stale = len(grams & recent.seen) / len(grams) if grams else 0.0
        repeated = text in recent.texts or recent.near_duplicate(text)
        tries.append((repeated, stale, text, used))
        if not repeated:
            break
    _, _, text, used = min(tries, key=lambda t: t[:2])
    if len(text) > max_chars:
        cut = text[:max_chars]
        text = cut.rsplit(" ", 1)[0] if " " in cut[max_chars // 2 :] else cut
    return text.strip() or text[:max_chars] or ".", used


def write_message(ctx: TurnContext, max_chars: int = 4096) -> str:
    """Write one message for a turn context, avoiding what its history said (the
    synchronous core of :class:`OfflineGenerator`, without its memory).

    Args:
        ctx: the turn context.
        max_chars: the longest text allowed, >= 1.

    Returns:
        A text of 1..max_chars characters.

    Raises:
        ValueError: ``max_chars`` < 1 or no templates for the persona's language.
    """
    return compose_message(ctx, max_chars)[0]


class OfflineGenerator:
    """Template generator used when no LLM provider is configured, and as the last resort.

    It keeps a :class:`~behavior_engine.llm.phrase_memory.PhraseMemory` of what it wrote in
    each chat and avoids it (with the turn's history). Same request (``context.seed`` and
    ``context.turn_id``, same memory apart from that turn) → same text. Token counts are
    estimates (characters / 4).

    Args:
        memory: the phrase memory (default: a new one; None-equivalent for no memory is
            :class:`PhraseMemory` with nothing remembered, i.e. ``remember=False``).
        remember: False to write from the turn's history only.
    """

    name = "offline"

    def __init__(self, memory: PhraseMemory | None = None, *, remember: bool = True) -> None:
        self.memory = memory if memory is not None else PhraseMemory()
        self.remember = remember

    async def generate(self, request: GenerationRequest) -> Generation:
        """Write a message for ``request.context``.

        Args:
            request: the generation request; only ``context`` and ``max_chars`` are used to
                write, ``messages`` only for the prompt-token estimate.

        Returns:
            A :class:`Generation` with ``provider="offline"`` and ``model="templates-v1"``.
        """
        t0 = time.perf_counter()
        ctx = request.context
        recent = None
        if self.remember:
            recent = self.memory.recent(ctx.chat_id, ctx.bot_id, ctx.turn_id,
                                        (line.text for line in ctx.history))
        text, used = compose_message(ctx, request.max_chars, recent)
        if self.remember:
            self.memory.remember(ctx.chat_id, ctx.bot_id, ctx.turn_id, text, used)
        prompt_chars = sum(len(m.get("content", "")) for m in request.messages)
        return Generation(
            text=text,
            provider=self.name,
            model=MODEL,
            prompt_tokens=math.ceil(prompt_chars / 4),
            completion_tokens=math.ceil(len(text) / 4),
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        )

"""What a group sees, in numbers: the metrics of ``REALISM.md`` over a stored run.

Pure functions over lists of :class:`MessageRecord` (one list per chat, in Telegram message
id order); no I/O. :func:`realism_report` computes every metric for each chat and over all
chats, each with its band (from public human group-chat logs: IRC #ubuntu/#linux, Kummerfeld
et al., ACL 2019, Elsner & Charniak 2008; five Slack channels, Chatterjee et al., MSR 2020;
the table in ``docs/realism.md``) and a verdict: True (inside), False (outside), or None
("n/a": too few messages to say, or an informational figure), never a pass by default.

How messages are counted (``REALISM.md``, "How to count"):

- a bot message's time is when Telegram accepted it (``meta.sent_at``), a human's Telegram's
  ``date``; timing, same-speaker, addressing and "answered" shares use every message;
- text metrics, the Gini and speaker separability use the bots' messages only;
- "answered" means another speaker's message replies to it (an explicit Telegram reply); the
  last :data:`ANSWER_TAIL` messages of each chat are left out of the answered shares;
- tokens are ``[\\w']+`` words and single punctuation marks, Unicode-aware, lower-cased.

Over several chats, the shares pool their counts (within-chat relations only: a reply, a
gap, a repeat are counted inside one chat); the per-group statistics (A_n, gap p90 ÷
median, Gini, separability) are the mean of the chats where they can be computed.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

#: Messages at the end of each chat left out of the answered shares (``REALISM.md``).
ANSWER_TAIL = 10
#: Tokens of bot text distinct-n is computed over (``REALISM.md``: 2,000).
DISTINCT_TOKENS = 2000
#: Fewest gaps (consecutive message pairs) for the timing metrics.
MIN_GAPS = 10
#: Fewest messages for a share (or a median) to be judged.
MIN_MESSAGES = 10
#: Fewest replies for the "further back" share.
MIN_REPLIES = 5
#: Fewest messages of >= 3 words per speaker for separability (5-fold: 2 per class and fold).
MIN_PER_SPEAKER = 10
#: Folds of the separability cross-validation (``REALISM.md``: 5-fold stratified).
FOLDS = 5
#: A human message unanswered this close to the end of the window is not judged, seconds
#: (the p95 limit of the first answer's delay, issue 14).
HUMAN_GRACE_S = 20.0
#: Near-duplicate: character 5-gram Jaccard at or above this (``REALISM.md``).
NEAR_DUP_JACCARD = 0.5
#: Near-duplicates count only messages of at least this many words (``REALISM.md``).
NEAR_DUP_MIN_WORDS = 4
#: Separability counts only messages of at least this many words (``REALISM.md``).
SEPARABILITY_MIN_WORDS = 3

_WORD = re.compile(r"[\w']+")
_TOKEN = re.compile(r"[\w']+|[^\w\s]")
_AT_MENTION = re.compile(r"@\w{3,}")

#: Agreement markers (Turkish, then English), matched as whole words or phrases, lower-cased.
#: "aynen", "katılıyorum" are REALISM.md's examples; the rest are their common synonyms.
AGREEMENT_MARKERS: tuple[str, ...] = (
    "katılıyorum", "aynen", "haklısın", "haklısınız", "kesinlikle", "aynı fikirdeyim",
    "çok doğru", "doğru söylüyorsun", "tamamen doğru", "bence de",
    "i agree", "agreed", "exactly", "absolutely", "you're right", "good point", "same here",
)
#: Contrast markers (Turkish, then English): "ama", "hayır" are REALISM.md's examples.
CONTRAST_MARKERS: tuple[str, ...] = (
    "ama", "fakat", "ancak", "hayır", "katılmıyorum", "bence değil", "yine de", "oysa",
    "aksine", "tersine",
    "but", "however", "no", "disagree", "although", "not really",
)


@dataclass(frozen=True)
class MessageRecord:
    """One message of a chat, as the metrics read it.

    Attributes:
        message_id: the chat's Telegram message id (the order of the chat).
        sender: a key unique per speaker (e.g. ``bot:3``, ``human:500001``).
        is_bot: True for our bots' messages (text metrics, Gini, separability read only them).
        text: the message text.
        at: when it was sent (aware datetime: a bot's ``sent_at``, a human's Telegram date).
        reply_to: the Telegram message id it replies to, or None.
        name: the speaker's display name (for mentions by name and the plots).
        username: the speaker's Telegram username, if any (for ``@username`` mentions).
    """

    message_id: int
    sender: str
    is_bot: bool
    text: str
    at: datetime
    reply_to: int | None = None
    name: str = ""
    username: str | None = None


@dataclass(frozen=True)
class Band:
    """The believable range of a metric: ``lo <= value <= hi`` (either side open when None).

    Attributes:
        lo / hi: the bounds, inclusive.
        percent: the value is a share in [0, 1], shown as a percentage.
    """

    lo: float | None = None
    hi: float | None = None
    percent: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` is inside the band (bounds inclusive)."""
        return (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)

    def fmt(self, value: float) -> str:
        """``value`` as the band shows numbers (``12.5 %`` or ``0.61``)."""
        return f"{value * 100:.1f} %" if self.percent else f"{value:.3g}"

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            if self.lo == self.hi:
                return f"= {self.fmt(self.lo)}"
            return f"{self.fmt(self.lo)} – {self.fmt(self.hi)}"
        if self.lo is not None:
            return f"≥ {self.fmt(self.lo)}"
        if self.hi is not None:
            return f"≤ {self.fmt(self.hi)}"
        return "—"


@dataclass(frozen=True)
class Metric:
    """One figure of a run and its verdict.

    Attributes:
        name: the metric's id (e.g. ``burstiness_an``).
        value: the figure, or None when it cannot be computed.
        band: the believable range (``REALISM.md``), or None for an informational figure.
        passed: True inside the band, False outside, None for "n/a" (see ``note``).
        note: the reason for an "n/a", or counts that explain the value.
    """

    name: str
    value: float | None
    band: Band | None
    passed: bool | None
    note: str = ""

    @property
    def verdict(self) -> str:
        """``pass``, ``FAIL``, ``n/a``, or ``info`` for a figure without a band."""
        if self.band is None and self.value is not None:
            return "info"
        return {True: "pass", False: "FAIL", None: "n/a"}[self.passed]

    def shown_value(self) -> str:
        """The value formatted for a table (``n/a`` when None)."""
        if self.value is None:
            return "n/a"
        return (self.band or Band()).fmt(self.value)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: name, value, band (``lo``, ``hi``, ``text``), passed, note."""
        band = None if self.band is None else {
            "lo": self.band.lo, "hi": self.band.hi, "text": str(self.band)}
        return {"name": self.name, "value": self.value, "band": band, "passed": self.passed,
                "verdict": self.verdict, "note": self.note}


@dataclass
class RealismReport:
    """The metrics over all chats, each chat's own, and what was counted.

    Attributes:
        metrics: every metric over all chats, in :data:`METRIC_NAMES` order.
        chats: chat label → its metrics (same order).
        counts: ``messages``, ``bot_messages``, ``human_messages``, ``chats``, ``speakers``.
    """

    metrics: list[Metric]
    chats: dict[str, list[Metric]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        """Names of the overall metrics outside their band."""
        return [m.name for m in self.metrics if m.passed is False]

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: ``metrics``, ``chats``, ``counts``, ``failed``."""
        return {"metrics": [m.to_dict() for m in self.metrics],
                "chats": {k: [m.to_dict() for m in v] for k, v in self.chats.items()},
                "counts": dict(self.counts), "failed": self.failed}

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of JSON (no NaN or infinity: those are None)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)


Chats = Sequence[Sequence[MessageRecord]]

# ---------------------------------------------------------------------------- formulas


def burstiness_an(gaps: Sequence[float]) -> float:
    """Kim & Jo's finite-size corrected burstiness of inter-event times.

    ``A_n = (√(n+1)·r − √(n−1)) / ((√(n+1) − 2)·r + √(n−1))`` with ``r = σ/μ`` and ``n`` the
    number of gaps (E.-K. Kim, H.-H. Jo, "Measuring burstiness for finite event sequences",
    Phys. Rev. E 94, 032311, 2016). −1 for a clock (σ = 0), about 0 for a Poisson process,
    towards 1 for bursts and lulls; unlike B = (σ−μ)/(σ+μ) it does not depend on ``n``.

    Args:
        gaps: inter-event times (seconds, any unit), at least 3.

    Raises:
        ValueError: fewer than 3 gaps, or a mean of 0.
    """
    n = len(gaps)
    if n < 3:
        raise ValueError("burstiness needs at least 3 gaps")
    arr = np.asarray(gaps, dtype=float)
    mu = float(arr.mean())
    if mu <= 0:
        raise ValueError("burstiness needs a positive mean gap")
    r = float(arr.std()) / mu
    a, b = math.sqrt(n + 1), math.sqrt(n - 1)
    return (a * r - b) / ((a - 2) * r + b)


def gini(counts: Sequence[float]) -> float:
    """Gini coefficient: ``Σᵢ Σⱼ |xᵢ − xⱼ| / (2 n² μ)`` (0 when all are equal; for ``n``
    speakers at most ``(n−1)/n``, one speaker having everything; ``REALISM.md``).

    Raises:
        ValueError: no counts, or all zero.
    """
    arr = np.asarray(counts, dtype=float)
    if arr.size == 0 or arr.sum() <= 0:
        raise ValueError("gini needs at least one positive count")
    diff = np.abs(arr[:, None] - arr[None, :]).sum()
    return float(diff / (2 * arr.size**2 * arr.mean()))


def words(text: str) -> list[str]:
    """The words of ``text``: ``[\\w']+`` runs, Unicode-aware (Turkish letters included)."""
    return _WORD.findall(text)


def _lower(text: str) -> str:
    # Turkish "İ".lower() is "i̇" (i + combining dot): fold it to a plain "i".
    return text.lower().replace("i̇", "i")


def tokens(text: str) -> list[str]:
    """Lower-cased tokens: ``[\\w']+`` words and single punctuation marks (``REALISM.md``)."""
    return _TOKEN.findall(_lower(text))


def distinct_n(texts: Sequence[str], n: int, *, limit: int = DISTINCT_TOKENS) -> tuple[float, int]:
    """Distinct-n (Li et al., NAACL 2016): distinct n-grams ÷ n-grams, over the first
    ``limit`` tokens of ``texts`` taken in order (n-grams do not cross messages).

    Returns:
        (the ratio, the number of tokens read); ratio 0.0 when there is no n-gram.
    """
    seen: set[tuple[str, ...]] = set()
    total = read = 0
    for text in texts:
        toks = tokens(text)[: limit - read]
        read += len(toks)
        for i in range(len(toks) - n + 1):
            seen.add(tuple(toks[i:i + n]))
            total += 1
        if read >= limit:
            break
    return (len(seen) / total if total else 0.0), read


def char_ngrams(text: str, n: int = 5) -> set[str]:
    """Character ``n``-grams of ``text`` lower-cased with runs of white space made one."""
    s = " ".join(_lower(text).split())
    return {s[i:i + n] for i in range(max(len(s) - n + 1, 1))} if s else set()


def jaccard(a: set[str], b: set[str]) -> float:
    """|a ∩ b| ÷ |a ∪ b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def near_duplicate_flags(texts: Sequence[str], *, threshold: float = NEAR_DUP_JACCARD,
                         min_words: int = NEAR_DUP_MIN_WORDS) -> list[bool | None]:
    """For each text: True if its character 5-gram Jaccard with an earlier text of at least
    ``min_words`` words is ``>= threshold``, False if not, None if it is itself shorter than
    ``min_words`` words (not counted; ``REALISM.md``). Exact, through an inverted index of
    5-grams (only texts sharing a 5-gram are compared)."""
    grams: list[set[str]] = []
    index: dict[str, list[int]] = defaultdict(list)
    out: list[bool | None] = []
    for text in texts:
        if len(words(text)) < min_words:
            out.append(None)
            continue
        mine = char_ngrams(text)
        shared: Counter[int] = Counter()
        for g in mine:
            shared.update(index.get(g, ()))
        out.append(any(inter / (len(mine) + len(grams[j]) - inter) >= threshold
                       for j, inter in shared.items()))
        for g in mine:
            index[g].append(len(grams))
        grams.append(mine)
    return out


def _normalised(text: str) -> str:
    return " ".join(_lower(text).split())


def count_markers(texts: Sequence[str], markers: Sequence[str]) -> int:
    """Occurrences of ``markers`` (whole words or phrases, case-insensitive) in ``texts``."""
    pattern = re.compile(r"(?<![\w'])(?:" + "|".join(
        re.escape(m) for m in sorted(markers, key=len, reverse=True)) + r")(?![\w'])")
    return sum(len(pattern.findall(_lower(t))) for t in texts)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def separability_accuracy(texts: Sequence[str], labels: Sequence[str], *,
                          seed: int = 0) -> float:
    """Mean accuracy of telling speakers apart from one message: character 2–4-gram
    TF-IDF (``char_wb``, sublinear tf, min_df 2) + logistic regression, ``FOLDS``-fold
    stratified cross-validation (shuffled with ``seed``); the vectorizer is fitted inside
    each fold (``REALISM.md``; scikit-learn).

    Raises:
        ValueError: a label with fewer than :data:`FOLDS` texts, or a single label.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2),
        LogisticRegression(max_iter=2000),
    )
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    scores = cross_val_score(model, list(texts), list(labels), cv=folds)
    return float(np.mean(scores))


# ---------------------------------------------------------------------------- metrics

#: Believable bands, ``REALISM.md`` ("a believable run" column).
BANDS: dict[str, Band | None] = {
    "burstiness_an": Band(0.45, 0.75),
    "gap_p90_over_median": Band(15.0, None),
    "median_words": Band(7.0, 15.0),
    "share_short": Band(0.20, 0.40, percent=True),
    "same_speaker_twice": Band(0.10, 0.45, percent=True),
    "gini_per_bot": Band(0.45, 0.80),
    "share_addressing": Band(0.10, 0.50, percent=True),
    "share_unanswered": Band(0.30, 0.60, percent=True),
    "share_answered_by_2plus": Band(None, 0.15, percent=True),
    "share_replies_further_back": Band(0.50, None, percent=True),
    "distinct_1": Band(0.28, None),
    "distinct_2": Band(0.75, None),
    "near_duplicates": Band(None, 0.03, percent=True),
    "exact_duplicates": Band(None, 0.025, percent=True),
    "separability_kappa": Band(0.31, 0.75),
    "agreement_over_contrast": Band(None, 0.15),
    "human_answer_delay_p50_s": None,
    "human_answer_delay_p95_s": Band(None, 20.0),
    "bots_per_human_message": Band(1.0, 1.0),
    "human_answered_by_2plus": Band(None, 0.15, percent=True),
}
#: Every metric, in the order tables show them.
METRIC_NAMES: tuple[str, ...] = tuple(BANDS)


def _judge(name: str, value: float | None, note: str = "", *,
           enough: bool = True) -> Metric:
    band = BANDS[name]
    if value is None or not math.isfinite(value):
        return Metric(name, None, band, None, note)
    passed = band.contains(value) if (band is not None and enough) else None
    return Metric(name, float(value), band, passed, note)


def _na(name: str, why: str) -> Metric:
    return Metric(name, None, BANDS[name], None, why)


def _bots(chat: Sequence[MessageRecord]) -> list[MessageRecord]:
    return [m for m in chat if m.is_bot]


def _mean_of(name: str, per_chat: list[Metric], what: str) -> Metric:
    """Over several chats: the mean of the chats' values where computed."""
    got = [m.value for m in per_chat if m.value is not None and m.passed is not None]
    if not got:
        reasons = {m.note for m in per_chat if m.note}
        return _na(name, "; ".join(sorted(reasons))[:200] or f"no chat has enough {what}")
    if len(per_chat) == 1:
        return per_chat[0]
    return _judge(name, float(np.mean(got)), f"mean over {len(got)} of {len(per_chat)} chats")


def timing_metrics(chats: Chats) -> list[Metric]:
    """``burstiness_an`` and ``gap_p90_over_median`` over the gaps between consecutive
    messages of each chat (every message; seconds; ``REALISM.md`` rows 1-2)."""
    an: list[Metric] = []
    ratio: list[Metric] = []
    for chat in chats:
        times = sorted(m.at.timestamp() for m in chat)  # id order; clocks may tie or skew
        gaps = np.diff(np.asarray(times, dtype=float)) if len(times) > 1 else np.array([])
        if len(gaps) < MIN_GAPS:
            why = f"{len(gaps)} gaps, at least {MIN_GAPS} needed"
            an.append(_na("burstiness_an", why))
            ratio.append(_na("gap_p90_over_median", why))
            continue
        note = f"{len(gaps)} gaps, mean {gaps.mean():.2f} s"
        an.append(_judge("burstiness_an", burstiness_an(gaps.tolist()), note))
        median = float(np.median(gaps))
        if median <= 0:
            ratio.append(_na("gap_p90_over_median", "median gap is 0 s"))
        else:
            p90 = percentile(gaps.tolist(), 90)
            ratio.append(_judge("gap_p90_over_median", p90 / median,
                                f"p90 {p90:.2f} s, median {median:.2f} s"))
    return [_mean_of("burstiness_an", an, "gaps"),
            _mean_of("gap_p90_over_median", ratio, "gaps")]


def length_metrics(chats: Chats) -> list[Metric]:
    """``median_words`` and ``share_short`` (≤ 5 words) over the bots' messages."""
    counts = [len(words(m.text)) for chat in chats for m in _bots(chat)]
    if len(counts) < MIN_MESSAGES:
        why = f"{len(counts)} bot messages, at least {MIN_MESSAGES} needed"
        return [_na("median_words", why), _na("share_short", why)]
    short = sum(1 for c in counts if c <= 5)
    return [_judge("median_words", float(np.median(counts)), f"{len(counts)} bot messages"),
            _judge("share_short", short / len(counts), f"{short} of {len(counts)}")]


def same_speaker_metric(chats: Chats) -> Metric:
    """``same_speaker_twice``: share of messages whose previous message in the chat has the
    same speaker (every message; pairs within a chat)."""
    pairs = same = 0
    for chat in chats:
        for prev, cur in itertools.pairwise(chat):
            pairs += 1
            same += prev.sender == cur.sender
    if pairs < MIN_MESSAGES:
        return _na("same_speaker_twice", f"{pairs} consecutive pairs, {MIN_MESSAGES} needed")
    return _judge("same_speaker_twice", same / pairs, f"{same} of {pairs} pairs")


def gini_metric(chats: Chats, bots_per_chat: Sequence[Sequence[str]] | None = None) -> Metric:
    """``gini_per_bot``: Gini of the bots' message counts per chat (a silent member counts 0
    when ``bots_per_chat`` lists the chat's bots as sender keys); mean over chats."""
    per_chat: list[Metric] = []
    for i, chat in enumerate(chats):
        counts = Counter(m.sender for m in _bots(chat))
        if bots_per_chat is not None:
            for key in bots_per_chat[i]:
                counts.setdefault(key, 0)
        total = sum(counts.values())
        if len(counts) < 2 or total < MIN_MESSAGES:
            per_chat.append(_na("gini_per_bot",
                                f"{len(counts)} bots, {total} messages: 2 and {MIN_MESSAGES}"
                                " needed"))
            continue
        k = len(counts)
        per_chat.append(_judge("gini_per_bot", gini(list(counts.values())),
                               f"{k} bots (max {(k - 1) / k:.2f}): "
                               + ", ".join(str(n) for _, n in counts.most_common())))
    return _mean_of("gini_per_bot", per_chat, "bot messages")


def _mention_pattern(chat: Sequence[MessageRecord]) -> dict[str, re.Pattern[str]]:
    """Per speaker: a pattern matching another speaker's first name or ``@username``."""
    names: dict[str, set[str]] = defaultdict(set)
    for m in chat:
        first = m.name.split()[0] if m.name.split() else ""
        if len(first) >= 3:
            names[m.sender].add(_lower(first))
        if m.username:
            names[m.sender].add("@" + _lower(m.username))
    out: dict[str, re.Pattern[str]] = {}
    for sender in names:
        others = sorted({n for s, ns in names.items() if s != sender for n in ns})
        body = "|".join(re.escape(n) for n in others) or r"(?!x)x"
        out[sender] = re.compile(r"(?<![\w@])(?:" + body + r")(?!\w)")
    return out


def addressing_metric(chats: Chats) -> Metric:
    """``share_addressing``: messages that reply to another message or mention someone
    (an ``@name`` or another speaker's first name as a whole word), over every message."""
    n = hits = 0
    for chat in chats:
        patterns = _mention_pattern(chat)
        for m in chat:
            n += 1
            low = _lower(m.text)
            pat = patterns.get(m.sender)
            hits += bool(m.reply_to is not None or _AT_MENTION.search(m.text)
                         or (pat is not None and pat.search(low)))
    if n < MIN_MESSAGES:
        return _na("share_addressing", f"{n} messages, {MIN_MESSAGES} needed")
    return _judge("share_addressing", hits / n, f"{hits} of {n}")


def answered_metrics(chats: Chats) -> list[Metric]:
    """``share_unanswered``, ``share_answered_by_2plus`` (by different other speakers,
    explicit replies; the last :data:`ANSWER_TAIL` messages of each chat left out) and
    ``share_replies_further_back`` (replies whose target is not the message just before)."""
    counted = unanswered = multi = 0
    replies = far = 0
    for chat in chats:
        answerers: dict[int, set[str]] = defaultdict(set)
        sender_of = {m.message_id: m.sender for m in chat}
        prev_id: int | None = None
        for m in chat:
            if m.reply_to is not None:
                if sender_of.get(m.reply_to) not in (None, m.sender):
                    answerers[m.reply_to].add(m.sender)
                replies += 1
                far += m.reply_to != prev_id
            prev_id = m.message_id
        for m in chat[: max(len(chat) - ANSWER_TAIL, 0)]:
            counted += 1
            k = len(answerers.get(m.message_id, ()))
            unanswered += k == 0
            multi += k >= 2
    out: list[Metric] = []
    if counted < MIN_MESSAGES:
        why = f"{counted} messages before the last {ANSWER_TAIL}, {MIN_MESSAGES} needed"
        out += [_na("share_unanswered", why), _na("share_answered_by_2plus", why)]
    else:
        out += [_judge("share_unanswered", unanswered / counted, f"{unanswered} of {counted}"),
                _judge("share_answered_by_2plus", multi / counted, f"{multi} of {counted}")]
    if replies < MIN_REPLIES:
        out.append(_na("share_replies_further_back", f"{replies} replies, {MIN_REPLIES} needed"))
    else:
        out.append(_judge("share_replies_further_back", far / replies, f"{far} of {replies}"))
    return out


def text_metrics(chats: Chats) -> list[Metric]:
    """``distinct_1``, ``distinct_2`` (first :data:`DISTINCT_TOKENS` tokens of bot text, in
    chat order), ``near_duplicates`` and ``exact_duplicates`` (against earlier bot messages
    of the same chat)."""
    texts = [m.text for chat in chats for m in _bots(chat)]
    d1, read = distinct_n(texts, 1)
    d2, _ = distinct_n(texts, 2)
    out: list[Metric] = []
    if read == 0:
        out += [_na("distinct_1", "no bot text"), _na("distinct_2", "no bot text")]
    else:
        enough = read >= DISTINCT_TOKENS
        note = f"{read} tokens" + ("" if enough else
                                   f": n/a, the band is for {DISTINCT_TOKENS:,} (short texts"
                                   " score higher)")
        out += [_judge("distinct_1", d1, note, enough=enough),
                _judge("distinct_2", d2, note, enough=enough)]
    eligible = near = exact = total = 0
    for chat in chats:
        bot_texts = [m.text for m in _bots(chat)]
        flags = near_duplicate_flags(bot_texts)
        eligible += sum(f is not None for f in flags)
        near += sum(f is True for f in flags)
        seen: set[str] = set()
        for t in bot_texts:
            key = _normalised(t)
            total += 1
            exact += key in seen
            seen.add(key)
    if eligible < MIN_MESSAGES:
        out.append(_na("near_duplicates", f"{eligible} bot messages of ≥ {NEAR_DUP_MIN_WORDS}"
                                          f" words, {MIN_MESSAGES} needed"))
    else:
        out.append(_judge("near_duplicates", near / eligible, f"{near} of {eligible}"))
    if total < MIN_MESSAGES:
        out.append(_na("exact_duplicates", f"{total} bot messages, {MIN_MESSAGES} needed"))
    else:
        out.append(_judge("exact_duplicates", exact / total, f"{exact} of {total}"))
    return out


def separability_metric(chats: Chats, *, seed: int = 0) -> Metric:
    """``separability_kappa``: chance-corrected accuracy ``κ = (acc − 1/K)/(1 − 1/K)`` of
    :func:`separability_accuracy` per chat (bots' messages of ≥ 3 words; speakers with fewer
    than :data:`MIN_PER_SPEAKER` left out; the same number per speaker, the first ones);
    mean over chats. The human band 0.45–0.80 for 5 speakers is κ 0.31–0.75."""
    per_chat: list[Metric] = []
    for chat in chats:
        by: dict[str, list[str]] = defaultdict(list)
        for m in _bots(chat):
            if len(words(m.text)) >= SEPARABILITY_MIN_WORDS:
                by[m.sender].append(m.text)
        kept = {s: t for s, t in by.items() if len(t) >= MIN_PER_SPEAKER}
        if len(kept) < 2:
            per_chat.append(_na("separability_kappa",
                                f"{len(kept)} bots with ≥ {MIN_PER_SPEAKER} messages of ≥ "
                                f"{SEPARABILITY_MIN_WORDS} words, 2 needed"))
            continue
        per = min(len(t) for t in kept.values())
        texts = [t for s in sorted(kept) for t in kept[s][:per]]
        labels = [s for s in sorted(kept) for _ in range(per)]
        k = len(kept)
        acc = separability_accuracy(texts, labels, seed=seed)
        kappa = (acc - 1 / k) / (1 - 1 / k)
        per_chat.append(_judge("separability_kappa", kappa,
                               f"accuracy {acc:.2f} for {k} bots × {per} messages "
                               f"(chance {1 / k:.2f})"))
    return _mean_of("separability_kappa", per_chat, "bot messages")


def markers_metric(chats: Chats) -> Metric:
    """``agreement_over_contrast``: :data:`AGREEMENT_MARKERS` ÷ :data:`CONTRAST_MARKERS`
    occurrences in the bots' messages (all agreement and no contrast fails, value None)."""
    texts = [m.text for chat in chats for m in _bots(chat)]
    agree = count_markers(texts, AGREEMENT_MARKERS)
    contrast = count_markers(texts, CONTRAST_MARKERS)
    note = f"{agree} agreement, {contrast} contrast markers"
    if contrast == 0:
        if agree == 0:
            return _na("agreement_over_contrast", note)
        return Metric("agreement_over_contrast", None, BANDS["agreement_over_contrast"],
                      False, note + " (only agreement)")
    return _judge("agreement_over_contrast", agree / contrast, note)


def human_reply_metrics(chats: Chats) -> list[Metric]:
    """Per human message: the delay to the first bot message replying to it (seconds, p50
    and p95), and how many different bots reply to it (all must be exactly 1;
    ``human_answered_by_2plus`` is the share with 2 or more).

    A human message nobody answered counts with its wait up to the chat's last message (a
    lower bound of its delay) and 0 bots; one posted less than :data:`HUMAN_GRACE_S` before
    that last message is left out (it may still be answered in time).
    """
    delays: list[float] = []
    per_msg: list[int] = []
    unanswered = recent = 0
    for chat in chats:
        if not chat:
            continue
        end = max(m.at.timestamp() for m in chat)
        by_target: dict[int, list[MessageRecord]] = defaultdict(list)
        for m in chat:
            if m.is_bot and m.reply_to is not None:
                by_target[m.reply_to].append(m)
        for m in chat:
            if m.is_bot:
                continue
            answers = by_target.get(m.message_id, [])
            posted = m.at.timestamp()
            if answers:
                delays.append(min(a.at.timestamp() for a in answers) - posted)
            elif end - posted >= HUMAN_GRACE_S:
                delays.append(end - posted)
                unanswered += 1
            else:
                recent += 1
                continue
            per_msg.append(len({a.sender for a in answers}))
    if not per_msg:
        why = "no human message" + (
            f" ({recent} posted in the last {HUMAN_GRACE_S:g} s, unanswered)" if recent else "")
        return [_na("human_answer_delay_p50_s", why), _na("human_answer_delay_p95_s", why),
                _na("bots_per_human_message", why), _na("human_answered_by_2plus", why)]
    hist = Counter(per_msg)
    dist = ", ".join(f"{hist[k]} answered by {k} bot{'s' if k != 1 else ''}"
                     for k in sorted(hist))
    left_out = f"; {recent} too recent to judge, left out" if recent else ""
    note = f"{len(per_msg) - unanswered} answered of {len(per_msg)}" + (
        f" ({unanswered} unanswered count their wait to the end, a lower bound)"
        if unanswered else "") + left_out
    out = [_judge("human_answer_delay_p50_s", percentile(delays, 50), note),
           _judge("human_answer_delay_p95_s", percentile(delays, 95), note)]
    exactly_one = all(k == 1 for k in per_msg)
    out.append(Metric("bots_per_human_message", float(np.mean(per_msg)),
                      BANDS["bots_per_human_message"], exactly_one,
                      f"{len(per_msg)} human messages: {dist}{left_out}"))
    multi = sum(1 for k in per_msg if k >= 2)
    out.append(_judge("human_answered_by_2plus", multi / len(per_msg),
                      f"{multi} of {len(per_msg)}"))
    return out


#: The per-group statistics: over several chats, the mean of the chats' own values.
GROUP_METRICS = frozenset(
    {"burstiness_an", "gap_p90_over_median", "gini_per_bot", "separability_kappa"})


def chat_metrics(chats: Chats, *, bots_per_chat: Sequence[Sequence[str]] | None = None,
                 seed: int = 0) -> list[Metric]:
    """Every metric over ``chats`` (each a list in Telegram message id order), in
    :data:`METRIC_NAMES` order.

    Args:
        chats: the chats' messages; relations (gaps, replies, repeats) stay within a chat.
        bots_per_chat: per chat, the sender keys of its bots, so a silent bot counts 0 in
            the Gini (default: the bots that spoke).
        seed: the separability cross-validation's shuffle.
    """
    got: list[Metric] = [
        *timing_metrics(chats), *_pooled_metrics(chats),
        gini_metric(chats, bots_per_chat), separability_metric(chats, seed=seed),
    ]
    by_name = {m.name: m for m in got}
    return [by_name[n] for n in METRIC_NAMES]


def _pooled_metrics(chats: Chats) -> list[Metric]:
    return [*length_metrics(chats), same_speaker_metric(chats), addressing_metric(chats),
            *answered_metrics(chats), *text_metrics(chats), markers_metric(chats),
            *human_reply_metrics(chats)]


def realism_report(chats: Mapping[str, Sequence[MessageRecord]], *,
                   bots_per_chat: Mapping[str, Sequence[str]] | None = None,
                   seed: int = 0) -> RealismReport:
    """The report of a run: every metric per chat and over all chats.

    Over several chats the shares pool their counts and the :data:`GROUP_METRICS` are the
    mean of the chats' values (each computed once).

    Args:
        chats: chat label (e.g. its Telegram id) → its messages (sorted here by Telegram
            message id).
        bots_per_chat: chat label → sender keys of its bots (silent ones count 0 in the Gini).
        seed: the separability cross-validation's shuffle.

    Raises:
        ValueError: ``chats`` is empty.
    """
    if not chats:
        raise ValueError("realism_report needs at least one chat")
    labels = list(chats)
    seqs = [sorted(chats[k], key=lambda m: m.message_id) for k in labels]
    per_chat = {
        k: chat_metrics([seqs[i]], seed=seed, bots_per_chat=None if bots_per_chat is None
                        else [bots_per_chat.get(k, ())])
        for i, k in enumerate(labels)}
    if len(labels) == 1:
        overall = per_chat[labels[0]]
    else:
        by_name = {m.name: m for m in _pooled_metrics(seqs)}
        for i, name in enumerate(METRIC_NAMES):
            if name in GROUP_METRICS:
                by_name[name] = _mean_of(name, [per_chat[k][i] for k in labels], "messages")
        overall = [by_name[n] for n in METRIC_NAMES]
    every = [m for s in seqs for m in s]
    counts = {"chats": len(labels), "messages": len(every),
              "bot_messages": sum(m.is_bot for m in every),
              "human_messages": sum(not m.is_bot for m in every),
              "speakers": len({m.sender for m in every})}
    return RealismReport(metrics=overall, chats=per_chat, counts=counts)


#: How each metric is labelled in tables.
LABELS: dict[str, str] = {
    "burstiness_an": "burstiness A_n of gaps",
    "gap_p90_over_median": "gap p90 ÷ median",
    "median_words": "median words per bot message",
    "share_short": "bot messages ≤ 5 words",
    "same_speaker_twice": "same speaker twice in a row",
    "gini_per_bot": "Gini of messages per bot",
    "share_addressing": "replying to or mentioning someone",
    "share_unanswered": "messages nobody answers",
    "share_answered_by_2plus": "answered by ≥ 2 others",
    "share_replies_further_back": "replies further back than the last",
    "distinct_1": "distinct-1 (2,000 tokens)",
    "distinct_2": "distinct-2 (2,000 tokens)",
    "near_duplicates": "near-duplicates (5-gram J ≥ 0.5)",
    "exact_duplicates": "exact duplicates",
    "separability_kappa": "speaker separability κ",
    "agreement_over_contrast": "agreement ÷ contrast markers",
    "human_answer_delay_p50_s": "human → first answer p50, s",
    "human_answer_delay_p95_s": "human → first answer p95, s",
    "bots_per_human_message": "bots answering a human message",
    "human_answered_by_2plus": "human messages answered by ≥ 2",
}


def rows(metrics: Sequence[Metric]) -> list[tuple[str, str, str, str, str]]:
    """Table rows: (label, value, band, verdict, note) per metric."""
    return [(LABELS.get(m.name, m.name), m.shown_value(), str(m.band) if m.band else "—",
             m.verdict, m.note) for m in metrics]


__all__ = [
    "AGREEMENT_MARKERS", "BANDS", "CONTRAST_MARKERS", "LABELS", "METRIC_NAMES", "Band",
    "MessageRecord", "Metric", "RealismReport", "burstiness_an", "chat_metrics",
    "distinct_n", "gini", "jaccard", "near_duplicate_flags", "realism_report", "rows",
    "separability_accuracy", "tokens", "words",
]

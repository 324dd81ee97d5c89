"""The formulas behind the realism metrics, each with its source: burstiness, Gini,
tokens and distinct-n, character n-grams and near-duplicates, markers, percentiles and the
speaker-separability classifier (:mod:`behavior_engine.realism`). Pure functions."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

#: Tokens of bot text distinct-n is computed over (``REALISM.md``: 2,000).
DISTINCT_TOKENS = 2000
#: Folds of the separability cross-validation (``REALISM.md``: 5-fold stratified).
FOLDS = 5
#: Near-duplicate: character 5-gram Jaccard at or above this (``REALISM.md``).
NEAR_DUP_JACCARD = 0.5
#: Near-duplicates count only messages of at least this many words (``REALISM.md``).
NEAR_DUP_MIN_WORDS = 4

_WORD = re.compile(r"[\w']+")
_TOKEN = re.compile(r"[\w']+|[^\w\s]")

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


def fold_case(text: str) -> str:
    # Turkish "İ".lower() is "i̇" (i + combining dot): fold it to a plain "i".
    return text.lower().replace("i̇", "i")


def tokens(text: str) -> list[str]:
    """Lower-cased tokens: ``[\\w']+`` words and single punctuation marks (``REALISM.md``)."""
    return _TOKEN.findall(fold_case(text))


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
    s = " ".join(fold_case(text).split())
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


def normalised(text: str) -> str:
    return " ".join(fold_case(text).split())


def count_markers(texts: Sequence[str], markers: Sequence[str]) -> int:
    """Occurrences of ``markers`` (whole words or phrases, case-insensitive) in ``texts``."""
    pattern = re.compile(r"(?<![\w'])(?:" + "|".join(
        re.escape(m) for m in sorted(markers, key=len, reverse=True)) + r")(?![\w'])")
    return sum(len(pattern.findall(fold_case(t))) for t in texts)


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

"""Topic detection from message text by keywords (Turkish and English).

Topic ids: ``usdtry``, ``bist100``, ``btc``, ``gold``, ``rates``, ``inflation``.
"""

from __future__ import annotations

import re

#: topic id → keyword stems; a word that starts with a stem counts (Turkish suffixes:
#: "dolar" matches "doları", "dolarda").
TOPIC_KEYWORDS: dict[str, tuple[str, ...]] = {
    "usdtry": ("dolar", "kur", "usd", "döviz", "doviz", "lira", "tl", "dollar", "currency"),
    "bist100": ("borsa", "bist", "hisse", "endeks", "temettü", "temettu", "stock", "index"),
    "btc": ("bitcoin", "btc", "kripto", "crypto", "coin"),
    "gold": ("altın", "altin", "gold", "ons", "gram"),
    "rates": ("faiz", "tcmb", "merkez", "ppk", "rate", "fed", "central"),
    "inflation": ("enflasyon", "tüfe", "tufe", "fiyat", "pahalı", "inflation", "cpi", "price"),
}

_WORD = re.compile(r"[\wçğıöşüÇĞİÖŞÜ]+", re.UNICODE)


def _fold(text: str) -> str:
    # Turkish dotted/dotless I before lowercasing, so "İ" → "i" and "I" → "ı".
    return text.replace("İ", "i").replace("I", "ı").lower()


def topic_scores(text: str) -> dict[str, int]:
    """Return topic id → number of keyword hits in ``text`` (topics with hits only)."""
    words = _WORD.findall(_fold(text))
    scores: dict[str, int] = {}
    for topic, stems in TOPIC_KEYWORDS.items():
        hits = sum(1 for w in words for s in stems if w.startswith(s))
        if hits:
            scores[topic] = hits
    return scores


def detect_topic(text: str, default: str | None = None) -> str | None:
    """Return the topic ``text`` is most about, or ``default`` when no keyword matches.

    Ties go to the topic listed first in :data:`TOPIC_KEYWORDS`.
    """
    scores = topic_scores(text)
    if not scores:
        return default
    return max(scores, key=lambda t: (scores[t], -list(TOPIC_KEYWORDS).index(t)))

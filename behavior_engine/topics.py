"""Topic detection from message text by keywords (Turkish and English).

Topic ids: ``usdtry``, ``bist100``, ``btc``, ``gold``, ``rates``, ``inflation``
(:data:`backend.schemas.KNOWN_TOPICS`, which persona expertise is checked against). One
detector for the whole engine: the scheduler (what a human asks about) and the offline
generator (what a reply answers) use the same answer. "Carry trade" (borrowing the low-rate
currency to hold the high-rate one) is a ``rates`` question.
"""

from __future__ import annotations

import re

#: topic id → keyword regex over lower-cased text. Turkish suffixes are allowed where they
#: matter ("kurda", "altını"), and false friends are excluded ("altında" = "below").
TOPIC_PATTERNS: dict[str, re.Pattern[str]] = {
    topic: re.compile(pattern)
    for topic, pattern in {
        "usdtry": r"dolar|dollar|usd|döviz|\bkur(?:u|un|da|daki|dan|a|lar)?\b|\blira",
        "bist100": r"borsa|\bbist|hisse|endeks|\bstocks?\b|\bindex|xu100",
        "btc": r"bitcoin|\bbtc|kripto|crypto",
        "gold": r"\baltın(?:ı|ın|lar\w*|cı\w*)?\b|\bgold|\bons\b",
        "rates": r"\bfaiz|\brates?\b|interest|tcmb|merkez bankası|central bank|\bfed\b"
                 r"|\bcarry\b|taşıma ticareti|\bswap",
        "inflation": r"enflasyon|inflation|tüfe|\bcpi\b|hayat pahalılığı",
    }.items()
}


#: Topic id → the market symbol whose price it is about (``rates`` and ``inflation`` have
#: none): the offline generator quotes it, views move with it, holdings are checked by it.
TOPIC_SYMBOLS: dict[str, str] = {t: t.upper() for t in ("usdtry", "bist100", "btc", "gold")}


def fold(text: str) -> str:
    """Lower-case the Turkish way (I → ı, İ → i) and the English way, both searched."""
    turkish = text.replace("I", "ı").replace("İ", "i").lower()
    return f"{turkish}\n{text.lower()}"


def detect_topic(text: str, default: str | None = None) -> str | None:
    """Return the topic ``text`` talks about most, or ``default`` when none matches.

    Returns:
        The topic with most keyword hits; ties go to the one mentioned first.
    """
    low = fold(text)
    best: tuple[int, int, str] | None = None
    for topic, pattern in TOPIC_PATTERNS.items():
        hits = [m.start() for m in pattern.finditer(low)]
        if hits and (best is None or (-len(hits), hits[0]) < best[:2]):
            best = (-len(hits), hits[0], topic)
    return best[2] if best else default

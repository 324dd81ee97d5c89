"""Long-term memory (issue 16, item 4): each bot keeps a stream of what it said, what was
said to it, people's questions, the market events it reacted to and its own reflections,
and recalls the few that matter for the turn at hand (``docs/memory.md``).

The design follows the memory stream of Park et al., "Generative Agents: Interactive
Simulacra of Human Behavior" (UIST 2023), §4.1–4.2:

- every memory has an importance, 0–1 (:func:`importance`, a heuristic here: no LLM call
  per message);
- recall scores each candidate by recency + importance + relevance, each min-max normalised
  over the candidates (:meth:`MemoryStream.recall`);
- when the importance gathered since the last reflection passes a threshold, the bot asks
  the LLM for one or two insights from its most important recent memories
  (:func:`needs_reflection`, :func:`reflect`), stored as memories themselves.

Relevance is the cosine similarity of hashed character n-gram vectors, computed locally
(:func:`text_vector`): no model to download, and n-grams match Turkish word forms
("doları", "dolarda") that whole words would not.

What lives where: a :class:`MemoryBook` in the worker holds one :class:`MemoryStream` per
bot it drives (an LRU bound on the number of bots; :meth:`MemoryBook.forget` when the
worker lets a bot go). The stream is refilled from the database when a worker takes a bot
(``backend.stores.memories.bot_memory_seed``: its messages and those said to it;
``recent_reflections``); only reflections are stored on their own (``bot_reflections``).
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol, get_args

import numpy as np
from cachetools import LRUCache

from behavior_engine.realism.formulas import fold_case, normalised

log = logging.getLogger("botsim.memory")

Kind = Literal["said", "heard", "question", "event", "reflection"]
#: The kinds of memory, in the order :func:`memory_lines` documents them.
KINDS: tuple[str, ...] = get_args(Kind)

#: Items a stream keeps at most (the lowest recency × importance go first).
DEFAULT_CAP = 200
#: How long a memory is kept (reflections: :data:`REFLECTION_TTL`).
DEFAULT_TTL = timedelta(days=7)
#: How long a reflection is kept (also its ``bot_reflections.expires_at``).
REFLECTION_TTL = timedelta(days=30)
#: Recency's half-life: a memory 6 hours old counts half as recent as one from now. Park et
#: al. decay by 0.995 per sandbox game hour (a half-life of ~138 game hours); a market chat
#: moves faster: this morning's talk is half as present by noon, yesterday's at 1/16.
DEFAULT_HALF_LIFE = timedelta(hours=6)
#: Bots a :class:`MemoryBook` keeps (LRU): more than a worker's share of the 10,000-bot
#: load test (2,500 each over 4 workers), so a running worker never drops a bot it drives.
#: A full stream is ~200 kB (``docs/memory.md``): at that share, lower the cap.
DEFAULT_MAX_BOTS = 5000
#: Memories recalled for a prompt (the memory layer's size before: 3 own texts).
RECALL_K = 4
#: (chat, message) keys a stream remembers (at least 5 × its cap) for de-duplication and for
#: "this replies to my message" (:meth:`MemoryStream.is_own`), beyond the items it keeps.
SEEN_KEYS = 1000

#: Importance summed since the last reflection that calls for the next one. Park et al.
#: reflect when the importance of the latest events exceeds 150 on their 1–10 scale; on our
#: 0–1 scale that is 15: about 50 of the bot's own messages (0.3 each), or 25 things said to
#: it, or 17 people's questions; a bot that speaks a few hundred times a day reflects a few
#: times a day.
REFLECTION_THRESHOLD = 15.0
#: After an attempt (failed or empty), the next one waits this long (the LLM budget).
REFLECTION_RETRY = timedelta(hours=1)
#: Memories a reflection is drawn from (Park et al. use the 100 latest to ask questions,
#: then retrieve per question; one call on the 10 most important is enough here).
REFLECTION_SOURCES = 10
#: Characters of a reflection kept, and of a memory written in a prompt line.
REFLECTION_MAX_CHARS = 300
LINE_MAX_CHARS = 200
#: Characters of a message a :class:`MemoryBook` keeps (Telegram allows 4,096; the bound
#: keeps a stream's memory within ~200 kB even of long messages).
TEXT_MAX_CHARS = 500

#: Hashed feature space of :func:`text_vector` (2**16: indexes fit in 2 bytes; ~100 n-grams
#: a message collide with probability ~0.15 % each).
N_FEATURES = 1 << 16
#: Character n-gram sizes, taken inside words padded with a space (scikit-learn's
#: ``analyzer="char_wb"``).
NGRAM_SIZES = (3, 4)

#: Base importance per kind (:func:`importance`).
BASE_IMPORTANCE: dict[str, float] = {
    "said": 0.3, "heard": 0.6, "question": 0.9, "event": 0.8, "reflection": 0.7,
}

_WORD = re.compile(r"[\w']+")
_NUMBER = re.compile(r"\d")
_MENTION = re.compile(r"@\w+")
_ENDS_WITH_QUESTION = re.compile(r"\?[\W_]*$")
#: Question words and particles, Turkish and English (whole words).
QUESTION_WORDS = re.compile(
    r"(?<!\w)(?:"
    r"m[ıiuü](?:s[ıiuü]n(?:[ıiuü]z)?|y[ıiuü]m|y[ıiuü]z|d[ıiuü]r)?"   # mı, misin, mıdır...
    r"|ne(?:den|reden|rede|reye|yi|yin)?|niye|niçin|nasıl\w*|hangi\w*|kaç\w*"
    r"|kim(?:in|i|e|den)?|acaba|sence"
    r"|what|why|how|when|where|which|who|whom|whose"
    r"|(?:should|would|could|can|do|does|did|is|are|will)\s+(?:i|you|we|it|they|he|she)"
    r")(?!\w)"
)


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """One memory of a bot.

    Attributes:
        kind: ``said`` (the bot's own message), ``heard`` (a message to it: a reply to it or
            a mention), ``question`` (a person's question to it), ``event`` (a market event
            it reacted to), ``reflection`` (an insight it drew, :func:`reflect`).
        text: what was said, or the event, or the insight.
        importance: 0–1 (:func:`importance`).
        at: aware UTC time it happened.
        chat_id: our chat id it happened in (None: none, e.g. a reflection).
        ref: the Telegram message id in that chat, if it was a message (de-duplication key
            with ``chat_id``).
        who: who said it (a ``heard`` or ``question`` memory's speaker), if known.

    Raises:
        ValueError: an unknown kind, an importance outside 0–1, or a naive ``at``.
    """

    kind: Kind
    text: str
    importance: float
    at: datetime
    chat_id: int | None = None
    ref: int | None = None
    who: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown memory kind {self.kind!r}")
        if not 0.0 <= self.importance <= 1.0:
            raise ValueError(f"importance {self.importance!r} is not within 0-1")
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError(f"naive datetime {self.at!r}: memories are aware UTC")


def is_question(text: str) -> bool:
    """True when ``text`` ends with a "?" (trailing emoji and punctuation aside) or has a
    Turkish or English question word or particle (:data:`QUESTION_WORDS`: "mı", "nasıl",
    "neden", "kaç", "what", "should I"...)."""
    if _ENDS_WITH_QUESTION.search(text.rstrip()):
        return True
    low = f"{text.replace('I', 'ı').replace('İ', 'i').lower()}\n{fold_case(text)}"
    return QUESTION_WORDS.search(low) is not None


def importance(kind: str, text: str, *, to_bot: bool, is_human: bool) -> float:
    """How much a memory matters, 0–1: a heuristic standing for Park et al.'s LLM-rated
    "poignancy" (1–10), which would cost a call per message.

    The base by kind (:data:`BASE_IMPORTANCE`): a question 0.9, an event 0.8, a reflection
    0.7, a message to the bot 0.6, the bot's own chatter 0.3. Then:

    - ``heard``/``question`` not said to the bot (``to_bot`` False): −0.2;
    - ``heard``/``question`` from another bot (``is_human`` False): −0.1 (people first);
    - a "?" in the text, a number (prices, levels), an ``@mention``: +0.05 each.

    The result is clipped to 0–1.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind not in BASE_IMPORTANCE:
        raise ValueError(f"unknown memory kind {kind!r}")
    score = BASE_IMPORTANCE[kind]
    if kind in ("heard", "question"):
        score -= 0.0 if to_bot else 0.2
        score -= 0.0 if is_human else 0.1
    score += 0.05 * sum(1 for hit in ("?" in text, _NUMBER.search(text) is not None,
                                      _MENTION.search(text) is not None) if hit)
    return round(min(1.0, max(0.0, score)), 4)


def text_vector(text: str) -> np.ndarray:
    """The hashed character n-gram set of ``text``: sorted unique ``uint16`` feature
    indexes (the "hashing trick", Weinberger et al., ICML 2009).

    The text is case-folded (Turkish "İ" included) and cut into words; each word, padded
    with a space on both sides, gives its n-grams of :data:`NGRAM_SIZES`; each n-gram is
    hashed with CRC-32 into :data:`N_FEATURES` buckets. This is scikit-learn's
    ``HashingVectorizer(analyzer="char_wb", ngram_range=(3, 4), binary=True)`` with another
    hash function, written out because it is ~6 × faster on one text (≈ 38 µs against
    ≈ 220 µs, ``loadtest/bench_memory.py``) and needs no 1-second import.
    """
    grams: set[str] = set()
    for word in _WORD.findall(fold_case(text)):
        padded = f" {word} "
        for n in NGRAM_SIZES:
            grams.update(padded[i:i + n] for i in range(len(padded) - n + 1))
    if not grams:
        return np.empty(0, dtype=np.uint16)
    hashed = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint32,
                         count=len(grams))
    return np.unique((hashed & (N_FEATURES - 1)).astype(np.uint16))


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine similarity, 0–1, of two :func:`text_vector` sets: |a ∩ b| ÷ √(|a|·|b|)
    (binary vectors; 0 when either is empty)."""
    if not len(a) or not len(b):
        return 0.0
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / math.sqrt(len(a) * len(b))


def _minmax(values: np.ndarray) -> np.ndarray:
    """Min-max normalised to 0–1; a constant component is 0.5 for every candidate (it
    ranks nothing)."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.full(len(values), 0.5)
    out: np.ndarray = (values - low) / (high - low)
    return out


def _seen_key(chat_id: int | None, ref: int) -> int:
    """(chat, message) as one int: ``chat_id`` × 2**40 + ``ref`` (Telegram message ids stay
    far below 2**40)."""
    return (chat_id or 0) * (1 << 40) + ref


@dataclass(slots=True)
class _Entry:
    item: MemoryItem
    vector: bytes     # text_vector(item.text), uint16 little-endian
    key: int          # hash of the normalised text (the query skip)
    seq: int          # arrival order
    at_s: float       # item.at, POSIX seconds
    expires_s: float  # when it is let go, POSIX seconds


@dataclass(slots=True)
class _Stacked:
    """The entries as arrays (rebuilt after a change): one vectorised pass per recall."""

    features: np.ndarray   # every entry's n-gram features end to end (uint16)
    bounds: np.ndarray     # entry i's features are features[bounds[i]:bounds[i + 1]]
    sizes: np.ndarray
    at_s: np.ndarray
    expires_s: np.ndarray
    importance: np.ndarray
    keys: np.ndarray
    seq: np.ndarray


class MemoryStream:
    """One bot's memories, in this worker (module docstring).

    Args:
        cap: items kept at most (≥ 1; default :data:`DEFAULT_CAP`). Over it, the item with
            the lowest recency × importance at the newest item's time goes (the oldest of
            equals first).
        ttl: how long an item is kept (default :data:`DEFAULT_TTL`); reflection_ttl: a
            reflection's (default :data:`REFLECTION_TTL`).
        half_life: recency's half-life (default :data:`DEFAULT_HALF_LIFE`).

    Memory and time (``loadtest/bench_memory.py``, ``docs/memory.md``): about 1 kB an item
    with its text, vector and keys; :meth:`recall` on 200 items in about 0.2 ms.

    Raises:
        ValueError: ``cap`` < 1, or a ``ttl``/``half_life`` that is not positive.
    """

    def __init__(self, *, cap: int = DEFAULT_CAP, ttl: timedelta = DEFAULT_TTL,
                 reflection_ttl: timedelta = REFLECTION_TTL,
                 half_life: timedelta = DEFAULT_HALF_LIFE) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        if min(ttl, reflection_ttl, half_life) <= timedelta(0):
            raise ValueError("ttl, reflection_ttl and half_life must be positive")
        self.cap = cap
        self.ttl = ttl
        self.reflection_ttl = reflection_ttl
        self.half_life = half_life
        #: When the last reflection was drawn (None: never).
        self.last_reflection_at: datetime | None = None
        #: When :func:`reflect` last asked the LLM (failed attempts included).
        self.reflection_tried_at: datetime | None = None
        self._entries: list[_Entry] = []
        self._seen: dict[int, bool] = {}  # _seen_key → the bot's own message
        self._seq = 0
        self._stacked: _Stacked | None = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def items(self) -> tuple[MemoryItem, ...]:
        """The items kept, oldest first (by time, then by arrival)."""
        return tuple(e.item for e in sorted(self._entries, key=lambda e: (e.at_s, e.seq)))

    def seen(self, chat_id: int | None, ref: int) -> bool:
        """Whether the message ``ref`` of ``chat_id`` was added (kept or not since; the
        last ``max(SEEN_KEYS, 5 × cap)`` messages are remembered)."""
        return _seen_key(chat_id, ref) in self._seen

    def is_own(self, chat_id: int | None, ref: int) -> bool:
        """Whether the message ``ref`` of ``chat_id`` was added as the bot's (``said``)."""
        return self._seen.get(_seen_key(chat_id, ref), False)

    def expires_at(self, item: MemoryItem) -> datetime:
        """When ``item`` is forgotten: its time plus its kind's ttl."""
        return item.at + (self.reflection_ttl if item.kind == "reflection" else self.ttl)

    def add(self, item: MemoryItem, *, now: datetime | None = None) -> bool:
        """Remember ``item``.

        Args:
            now: aware UTC time of the adding (default ``item.at``): an item already
                expired then is not kept.

        Returns:
            True when the item is kept; False when it was a message already added (same
            ``chat_id`` and ``ref``), already expired, or the one the cap let go.
        """
        if item.ref is not None:
            key = _seen_key(item.chat_id, item.ref)
            if key in self._seen:
                return False
            self._seen[key] = item.kind == "said"
            if len(self._seen) > max(SEEN_KEYS, 5 * self.cap):
                del self._seen[next(iter(self._seen))]
        now = now or item.at
        expires = self.expires_at(item)
        if expires <= now:
            return False
        self._seq += 1
        entry = _Entry(item, text_vector(item.text).tobytes(), hash(normalised(item.text)),
                       self._seq, item.at.timestamp(), expires.timestamp())
        self._entries.append(entry)
        self._stacked = None
        if item.kind == "reflection" and (self.last_reflection_at is None
                                          or item.at > self.last_reflection_at):
            self.last_reflection_at = item.at
        if len(self._entries) > self.cap:
            gone = self._entries.pop(self._lowest(max(now.timestamp(), self._newest_s())))
            return gone is not entry
        return True

    def _newest_s(self) -> float:
        return max(e.at_s for e in self._entries)

    def _lowest(self, now_s: float) -> int:
        """The index of the entry with the lowest recency × importance at ``now_s`` (the
        oldest, then the first added, of equals)."""
        n = len(self._entries)
        at_s = np.fromiter((e.at_s for e in self._entries), dtype=np.float64, count=n)
        imp = np.fromiter((e.item.importance for e in self._entries), dtype=np.float64,
                          count=n)
        seq = np.fromiter((e.seq for e in self._entries), dtype=np.int64, count=n)
        value = np.round(imp * self._recency(at_s, now_s), 12)
        return int(np.lexsort((seq, at_s, value))[0])

    def expire(self, now: datetime) -> int:
        """Let go of the items expired at ``now`` (aware UTC).

        Returns:
            How many were let go.
        """
        now_s = now.timestamp()
        kept = [e for e in self._entries if e.expires_s > now_s]
        gone = len(self._entries) - len(kept)
        if gone:
            self._entries = kept
            self._stacked = None
        return gone

    def since_reflection(self) -> list[MemoryItem]:
        """The items (reflections aside) newer than the last reflection, oldest first."""
        last = self.last_reflection_at
        return [i for i in self.items
                if i.kind != "reflection" and (last is None or i.at > last)]

    def _recency(self, at_s: np.ndarray, now_s: float) -> np.ndarray:
        """0.5 ** (age ÷ half-life), an age below 0 counted as 0."""
        age = np.maximum(0.0, now_s - at_s) / self.half_life.total_seconds()
        out: np.ndarray = np.power(0.5, age)
        return out

    def _stack(self) -> _Stacked:
        if self._stacked is None:
            entries = self._entries
            n = len(entries)
            sizes = np.fromiter((len(e.vector) // 2 for e in entries), dtype=np.int64, count=n)
            bounds = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(sizes, out=bounds[1:])
            self._stacked = _Stacked(
                features=np.frombuffer(b"".join(e.vector for e in entries), dtype="<u2"),
                bounds=bounds, sizes=sizes,
                at_s=np.fromiter((e.at_s for e in entries), dtype=np.float64, count=n),
                expires_s=np.fromiter((e.expires_s for e in entries), dtype=np.float64,
                                      count=n),
                importance=np.fromiter((e.item.importance for e in entries),
                                       dtype=np.float64, count=n),
                keys=np.fromiter((e.key for e in entries), dtype=np.int64, count=n),
                seq=np.fromiter((e.seq for e in entries), dtype=np.int64, count=n),
            )
        return self._stacked

    def relevance(self, query: str) -> np.ndarray:
        """The cosine similarity (0–1) of ``query`` with each kept item, in the order kept
        (:func:`similarity`, for all items at once)."""
        return self._relevance(self._stack(), text_vector(query))

    def _relevance(self, st: _Stacked, q: np.ndarray) -> np.ndarray:
        n = len(st.sizes)
        if not len(q) or not n:
            return np.zeros(n)
        lookup = np.zeros(N_FEATURES, dtype=np.uint8)
        lookup[q] = 1
        hits = np.zeros(len(st.features) + 1, dtype=np.int64)
        np.cumsum(lookup[st.features], dtype=np.int64, out=hits[1:])
        common = (hits[st.bounds[1:]] - hits[st.bounds[:-1]]).astype(np.float64)
        denom = np.sqrt(st.sizes.astype(np.float64) * len(q))
        out: np.ndarray = np.divide(common, denom, out=np.zeros(n), where=denom > 0)
        return out

    def _ranked(self, query: str, now: datetime,
                weights: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """Candidates' indexes in ``self._entries``, best first, and their scores."""
        now_s = now.timestamp()
        st = self._stack()
        if len(st.expires_s) and float(st.expires_s.min()) <= now_s:
            self.expire(now)
            st = self._stack()
        idx = np.nonzero(st.keys != hash(normalised(query)))[0]
        if not len(idx):
            return idx, np.zeros(0)
        a_rec, a_imp, a_rel = weights
        total = (a_rec * _minmax(self._recency(st.at_s[idx], now_s))
                 + a_imp * _minmax(st.importance[idx])
                 + a_rel * _minmax(self._relevance(st, text_vector(query))[idx]))
        order = np.lexsort((-st.seq[idx], -st.at_s[idx], -np.round(total, 9)))
        return idx[order], total[order]

    def scores(self, query: str, now: datetime, *,
               weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
               ) -> list[tuple[MemoryItem, float]]:
        """Every candidate with its recall score (0–3 with the default weights), best first
        (:meth:`recall`)."""
        ranked, total = self._ranked(query, now, weights)
        return [(self._entries[i].item, t)
                for i, t in zip(ranked.tolist(), total.tolist(), strict=True)]

    def recall(self, query: str, now: datetime, k: int = RECALL_K, *,
               weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> list[MemoryItem]:
        """The ``k`` memories that matter most for ``query`` at ``now``, best first.

        The score of a candidate (Park et al., UIST 2023, §4.1 "Memory and Retrieval")::

            score = α_rec · recency + α_imp · importance + α_rel · relevance

        each term min-max normalised to 0–1 over the candidates (a constant term counts 0.5
        for all), with α = ``weights`` (default all 1, as in the paper), where

        - recency = 0.5 ** (age ÷ half-life), the age from the item's time to ``now``
          (Park et al. decay from the last access, 0.995 per game hour; a recalled chat
          line is not re-lived, so its own time is used);
        - importance = the item's (:func:`importance`);
        - relevance = the cosine similarity of the hashed character n-grams of ``query``
          and the item's text (:func:`text_vector`) — Park et al. use LLM embeddings.

        Items expired at ``now`` are let go first; items whose text is the query's (case
        and white space folded) are skipped (the message being answered is not its own
        memory). Ties go to the newer item, then to the later added: deterministic.

        Args:
            query: what the turn is about (the message answered, or the topic and the last
                lines of the chat).
            now: aware UTC time of the turn.
            k: memories at most (≥ 0).
        """
        ranked, _ = self._ranked(query, now, weights)
        return [self._entries[i].item for i in ranked[:max(0, k)].tolist()]


class LineLike(Protocol):
    """A chat message as :meth:`MemoryBook.observe` reads it
    (``behavior_engine.reads.HistoryItem`` and ``behavior_engine.turn.ChatLine`` are)."""

    @property
    def telegram_message_id(self) -> int: ...
    @property
    def bot_id(self) -> int | None: ...
    @property
    def speaker(self) -> str: ...
    @property
    def is_human(self) -> bool: ...
    @property
    def text(self) -> str: ...
    @property
    def created_at(self) -> datetime | None: ...
    @property
    def reply_to(self) -> int | None: ...
    @property
    def mentions(self) -> Sequence[str]: ...


def observed_kind(line: LineLike, *, bot_id: int, bot_username: str,
                  replies_to_bot: bool, bot_name: str | None = None) -> Kind | None:
    """What a chat line is to bot ``bot_id`` (@``bot_username``, display name ``bot_name``):

    - ``said``: the bot sent it;
    - ``question``: a person's line to the bot (a reply to it, or a mention, by entity,
      ``@username`` in the text, or the first word of ``bot_name`` as a whole word, as the
      scheduler reads a mention) that :func:`is_question`;
    - ``heard``: any other line to the bot (another bot's question too);
    - None: a line not to the bot, or without text.
    """
    if not line.text.strip():
        return None
    if line.bot_id == bot_id:
        return "said"
    name = bot_username.lower().lstrip("@")
    low = line.text.lower()
    first = (bot_name or "").split()[0].lower() if (bot_name or "").split() else ""
    mentioned = (name in (m.lower() for m in line.mentions)
                 or re.search(rf"@{re.escape(name)}(?!\w)", low) is not None
                 or (bool(first) and re.search(rf"(?<![\w@]){re.escape(first)}(?!\w)", low)
                     is not None))
    if not (replies_to_bot or mentioned):
        return None
    return "question" if line.is_human and is_question(line.text) else "heard"


@dataclass(slots=True)
class MemoryBook:
    """Bot id → :class:`MemoryStream`, for the bots a worker drives.

    Attributes:
        max_bots: streams kept at most; past it, the least recently used goes (its bot, if
            still driven, starts again from an empty stream).
        cap, ttl, reflection_ttl, half_life: each new stream's (:class:`MemoryStream`).
    """

    max_bots: int = DEFAULT_MAX_BOTS
    cap: int = DEFAULT_CAP
    ttl: timedelta = DEFAULT_TTL
    reflection_ttl: timedelta = REFLECTION_TTL
    half_life: timedelta = DEFAULT_HALF_LIFE
    _streams: LRUCache[int, MemoryStream] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._streams = LRUCache(maxsize=self.max_bots)

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, bot_id: object) -> bool:
        return bot_id in self._streams

    def stream(self, bot_id: int) -> MemoryStream:
        """The bot's stream, created empty the first time."""
        got = self._streams.get(bot_id)
        if got is None:
            got = MemoryStream(cap=self.cap, ttl=self.ttl, reflection_ttl=self.reflection_ttl,
                               half_life=self.half_life)
            self._streams[bot_id] = got
        return got

    def forget(self, bot_id: int) -> None:
        """Drop the bot's stream (a bot this worker no longer drives)."""
        self._streams.pop(bot_id, None)

    def note(self, bot_id: int, kind: Kind, text: str, *, at: datetime,
             chat_id: int | None = None, ref: int | None = None, who: str | None = None,
             to_bot: bool = True, is_human: bool = False) -> MemoryItem | None:
        """Remember ``text`` of ``kind`` for the bot (its first :data:`TEXT_MAX_CHARS`),
        its importance from :func:`importance` (e.g. an ``event`` the bot reacted to).

        Returns:
            The item kept, or None (empty text, a duplicate, expired; :meth:`MemoryStream.add`).
        """
        if not text.strip():
            return None
        text = text[:TEXT_MAX_CHARS]
        item = MemoryItem(kind=kind, text=text,
                          importance=importance(kind, text, to_bot=to_bot, is_human=is_human),
                          at=at, chat_id=chat_id, ref=ref, who=who)
        return item if self.stream(bot_id).add(item) else None

    def observe(self, bot_id: int, line: LineLike, *, chat_id: int, bot_username: str,
                now: datetime | None = None, to_bot: bool | None = None,
                bot_name: str | None = None) -> MemoryItem | None:
        """Remember a chat line (its first :data:`TEXT_MAX_CHARS`) if it is the bot's or
        said to it (:func:`observed_kind`); each (``chat_id``, Telegram message id) once.

        Lines should come oldest first: a reply is known to be to the bot when the message
        it replies to was observed as the bot's (or pass ``to_bot``, e.g.
        ``not SeedMessage.own`` from ``backend.stores.memories.bot_memory_seed``).

        Args:
            now: aware UTC time, used when the line has no ``created_at``.
            to_bot: True/False overrides whether the line is said to the bot.
            bot_name: the bot's display name (a mention by first name, :func:`observed_kind`).

        Returns:
            The item kept, or None (not the bot's business, no text, seen, expired).

        Raises:
            ValueError: the line has no ``created_at`` and ``now`` is None.
        """
        stream = self.stream(bot_id)
        ref = line.telegram_message_id
        if stream.seen(chat_id, ref):
            return None
        at = line.created_at or now
        if at is None:
            raise ValueError("a line without created_at needs now")
        if to_bot is False and line.bot_id != bot_id:
            return None
        replies = bool(to_bot) or (line.reply_to is not None
                                   and stream.is_own(chat_id, line.reply_to))
        kind = observed_kind(line, bot_id=bot_id, bot_username=bot_username,
                             replies_to_bot=replies, bot_name=bot_name)
        if kind is None:
            return None
        said_to = kind != "said"
        text = line.text[:TEXT_MAX_CHARS]
        item = MemoryItem(
            kind=kind, text=text, at=at, chat_id=chat_id, ref=ref,
            who=line.speaker if said_to else None,
            importance=importance(kind, text, to_bot=said_to, is_human=line.is_human))
        return item if stream.add(item, now=now) else None


# --- reflection -------------------------------------------------------------------------

#: An injected LLM call: OpenAI-style messages → the text (None or "" when nothing came).
Generate = Callable[[list[dict[str, str]]], Awaitable[str | None]]

_BULLET = re.compile(r"^\s*(?:[-*•·]+|\d+[.)])\s*")


def needs_reflection(stream: MemoryStream, *, threshold: float = REFLECTION_THRESHOLD,
                     now: datetime | None = None,
                     retry_after: timedelta = REFLECTION_RETRY) -> bool:
    """True when the importance of the items since the last reflection sums to at least
    ``threshold`` (:data:`REFLECTION_THRESHOLD`: Park et al.'s 150 on a 1–10 scale, ÷ 10),
    and, given ``now``, no attempt was made within ``retry_after`` of it."""
    if (now is not None and stream.reflection_tried_at is not None
            and now - stream.reflection_tried_at < retry_after):
        return False
    return sum(i.importance for i in stream.since_reflection()) >= threshold


def reflection_sources(items: Iterable[MemoryItem],
                       n: int = REFLECTION_SOURCES) -> list[MemoryItem]:
    """The ``n`` most important of ``items`` (the newer of equals), oldest first."""
    best = sorted(items, key=lambda i: (-i.importance, -i.at.timestamp()))[:n]
    return sorted(best, key=lambda i: i.at)


def reflection_request(items: Iterable[MemoryItem], *, now: datetime, language: str,
                       persona_name: str | None = None) -> list[dict[str, str]]:
    """The messages asking the persona for 1–2 short first-person insights from its
    :data:`REFLECTION_SOURCES` most important memories among ``items``.

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``, in Turkish for ``language``
        ``tr``, else in English.
    """
    lines = "\n".join(f"- {line}" for line in memory_lines(reflection_sources(items),
                                                          language, now=now))
    if language == "tr":
        who = f"Sen {persona_name}, " if persona_name else "Sen "
        return [
            {"role": "system",
             "content": f"{who}piyasa konuşulan bir Telegram grubunun üyesisin. Yalnızca "
                        "Türkçe yaz."},
            {"role": "user",
             "content": f"Son zamanlarda aklında kalanlar:\n{lines}\n\nBunlardan insanlar, "
                        "piyasa ya da kendin hakkında hangi 1 veya 2 kısa sonucu "
                        "çıkarıyorsun? Her birini birinci tekil şahısla, tek kısa cümle "
                        "olarak ayrı satıra yaz; başka bir şey yazma. Getiri vaat etme, "
                        "yatırım tavsiyesi verme."},
        ]
    who = f"You are {persona_name}, " if persona_name else "You are "
    return [
        {"role": "system",
         "content": f"{who}a member of a Telegram group of market traders. Write only in "
                    "English."},
        {"role": "user",
         "content": f"What you remember from lately:\n{lines}\n\nWhat 1 or 2 short insights "
                    "do you draw from these, about the people, the market or yourself? "
                    "Write each as one short first-person sentence on its own line, nothing "
                    "else. Promise no returns and give no investment advice."},
    ]


def parse_reflection(text: str | None) -> str | None:
    """The insight(s) of a generation: its first two non-empty lines, bullets and
    numbering and surrounding quotes removed, joined with a space and cut to
    :data:`REFLECTION_MAX_CHARS`; None when nothing is left."""
    if not text:
        return None
    found = []
    for raw in text.splitlines():
        line = _BULLET.sub("", raw).strip().strip("\"'«»“”").strip()
        if line:
            found.append(line)
        if len(found) == 2:
            break
    joined = " ".join(found)
    if len(joined) > REFLECTION_MAX_CHARS:
        joined = joined[:REFLECTION_MAX_CHARS - 1].rstrip() + "…"
    return joined or None


async def reflect(stream: MemoryStream, generate: Generate, *, now: datetime,
                  persona_language: str, persona_name: str | None = None
                  ) -> MemoryItem | None:
    """Draw a reflection from the stream's items since the last one, store it in the
    stream (kind ``reflection``, importance :func:`importance` of it) and return it.

    The caller decides the provider and the budget through ``generate`` (and whether to
    call at all: :func:`needs_reflection`), and stores the result
    (``backend.stores.memories.add_reflection``, ``expires_at`` =
    :meth:`MemoryStream.expires_at`). The attempt is recorded
    (``stream.reflection_tried_at``) whatever its outcome.

    Returns:
        The reflection, or None when there is nothing to reflect on, or the generation
        failed (any exception but a cancellation, logged) or gave nothing usable.
    """
    items = stream.since_reflection()
    if not items:
        return None
    messages = reflection_request(items, now=now, language=persona_language,
                                  persona_name=persona_name)
    stream.reflection_tried_at = now
    try:
        text = parse_reflection(await generate(messages))
    except Exception as exc:  # a provider error must not take the turn loop down
        # the class only: a parse error may quote the remembered messages (people's texts)
        log.info("reflection failed: %s", type(exc).__name__)
        return None
    if text is None:
        return None
    item = MemoryItem(kind="reflection", text=text, at=now,
                      importance=importance("reflection", text, to_bot=False, is_human=False))
    stream.add(item, now=now)
    return item


# --- the prompt -------------------------------------------------------------------------

def relative_age(at: datetime, now: datetime, language: str) -> str:
    """How long ago ``at`` was: "just now" (< 1 min), "N min ago", "N h ago" (< 48 h),
    "N d ago"; in Turkish "az önce", "N dk önce", "N saat önce", "N gün önce"."""
    seconds = max(0.0, (now - at).total_seconds())
    tr = language == "tr"
    if seconds < 60:
        return "az önce" if tr else "just now"
    if seconds < 3600:
        n = int(seconds // 60)
        return f"{n} dk önce" if tr else f"{n} min ago"
    if seconds < 48 * 3600:
        n = int(seconds // 3600)
        return f"{n} saat önce" if tr else f"{n} h ago"
    n = int(seconds // 86400)
    return f"{n} gün önce" if tr else f"{n} d ago"


def _clip(text: str, limit: int = LINE_MAX_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def memory_line(item: MemoryItem, language: str, *, now: datetime) -> str:
    """One memory as a prompt line: its age, its kind ("you said", "X asked you", "you
    concluded"...) and its text (cut to :data:`LINE_MAX_CHARS`)."""
    age, text = relative_age(item.at, now, language), _clip(item.text)
    if language == "tr":
        who = item.who or "biri"
        return {
            "said": f"{age} şunu dedin: «{text}»",
            "heard": f"{age} {who} sana yazdı: «{text}»",
            "question": f"{age} {who} sana sordu: «{text}»",
            "event": f"{age} piyasada: {text}",
            "reflection": f"{age} şu sonuca vardın: {text}",
        }[item.kind]
    who = item.who or "someone"
    return {
        "said": f"{age}, you said: «{text}»",
        "heard": f"{age}, {who} told you: «{text}»",
        "question": f"{age}, {who} asked you: «{text}»",
        "event": f"{age}, in the market: {text}",
        "reflection": f"{age}, you concluded: {text}",
    }[item.kind]


def memory_lines(items: Iterable[MemoryItem], language: str, *,
                 now: datetime | None = None) -> list[str]:
    """The prompt lines of ``items``, in their order (:func:`memory_line`); ages relative to
    ``now`` (default: the newest item's time)."""
    items = list(items)
    if not items:
        return []
    ref = now or max(i.at for i in items)
    return [memory_line(i, language, now=ref) for i in items]

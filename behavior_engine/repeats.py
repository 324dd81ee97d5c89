"""The near-duplicate guard (issue 16, item 1): a candidate text is compared, before it is
sent, with the chat's recent messages and the bot's own recent ones.

The guard and the measurement agree by construction: a repeat is what ``botsim realism``
counts (``REALISM.md``): the same text once case and white space are folded (an exact
duplicate), or a character 5-gram Jaccard ≥ :data:`NEAR_DUP_JACCARD` with an earlier text,
both of at least :data:`NEAR_DUP_MIN_WORDS` words (a near-duplicate). The window is small
(the chat's cached history, :data:`behavior_engine.reads.HISTORY_LEN` messages, and the
bot's last :data:`OWN_RECENT` texts), so the exact Jaccard of
:mod:`behavior_engine.realism.formulas` costs well under a millisecond; MinHash
(datasketch) would only pay off over thousands of texts.

What the pipeline does with a repeat (:class:`behavior_engine.pipeline.TurnPipeline`): it
asks the generator again, at most :data:`MAX_REGENERATIONS` times, with a hint naming the
repeated text (and another seed for the offline generator); a chatter turn still repeating is
dropped; an answer to a person is sent in its least repeating version (a person is never left
unanswered for want of a fresh phrase). Two turns of one chat may be written at the same
time, so chatter is checked once more right before its send, against what was sent
meanwhile, and dropped if it now repeats. Outcomes are counted in
``botsim_guard_outcomes_total{guard="repeat", outcome}``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from behavior_engine.realism.formulas import (
    NEAR_DUP_JACCARD,
    NEAR_DUP_MIN_WORDS,
    char_ngrams,
    jaccard,
    normalised,
    words,
)

#: Times a repeating candidate is generated again before the turn gives up.
MAX_REGENERATIONS = 2
#: A bot's own last texts the guard remembers (across its chats, in this worker).
OWN_RECENT = 12
#: A chat's last bot texts the guard remembers in this worker: a 10-minute demo showed
#: repeats 52–55 messages apart, past the cached history.
CHAT_RECENT = 100


@dataclass(frozen=True, slots=True)
class RepeatCheck:
    """What :func:`check_repeat` found.

    Attributes:
        kind: ``exact``, ``near``, or None (no repeat).
        score: the highest 5-gram Jaccard with an earlier text (1.0 for an exact repeat;
            0.0 when the candidate is too short to compare).
        of: the earlier text it repeats most, if any.
    """

    kind: Literal["exact", "near"] | None
    score: float
    of: str | None = None

    @property
    def repeats(self) -> bool:
        """True for an exact or near repeat."""
        return self.kind is not None


def check_repeat(candidate: str, earlier: Iterable[str], *,
                 threshold: float = NEAR_DUP_JACCARD,
                 min_words: int = NEAR_DUP_MIN_WORDS) -> RepeatCheck:
    """Whether ``candidate`` repeats one of ``earlier`` (module docstring).

    Args:
        candidate: the text about to be sent.
        earlier: texts already said (any order; empty ones are ignored).
        threshold: the near-duplicate Jaccard, 0–1 (default: the realism metric's).
        min_words: the fewest words for a near-duplicate comparison (both texts).

    Returns:
        The finding; ``kind`` None when it repeats nothing.
    """
    key = normalised(candidate)
    long_enough = len(words(candidate)) >= min_words
    mine = char_ngrams(candidate) if long_enough else set()
    best, best_of = 0.0, None
    for text in earlier:
        if not text.strip():
            continue
        if normalised(text) == key:
            return RepeatCheck("exact", 1.0, text)
        if long_enough and len(words(text)) >= min_words:
            score = jaccard(mine, char_ngrams(text))
            if score > best:
                best, best_of = score, text
    if best >= threshold:
        return RepeatCheck("near", best, best_of)
    return RepeatCheck(None, best, best_of)


def repeat_hint(check: RepeatCheck, language: str) -> str:
    """The instruction added to the prompt when a candidate repeated ``check.of``."""
    said = (check.of or "").strip()[:200]
    if language == "tr":
        return (f"Yazdığın mesaj daha önce söyleneni tekrarlıyor: «{said}». Aynı şeyi "
                "tekrarlama; başka bir açıdan, başka sözcüklerle yaz.")
    return (f"Your draft repeats what was already said: «{said}». Do not repeat it; say "
            "something else, in other words.")


class RecentTexts:
    """The last ``size`` texts sent per key (a bot: its chats together; a chat: beyond
    the cached history's :data:`~behavior_engine.reads.HISTORY_LEN` messages), in this
    worker.

    Memory: about ``size`` × 100 characters a key (a bot at :data:`OWN_RECENT`: ~1.2 kB,
    12 MB at 10,000 bots; a chat at :data:`CHAT_RECENT`: ~10 kB, 10 MB at 1,000 chats).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._texts: dict[int, deque[str]] = {}

    def of(self, key: int) -> tuple[str, ...]:
        """The key's remembered texts, oldest first."""
        return tuple(self._texts.get(key, ()))

    def add(self, key: int, text: str) -> None:
        """Remember that ``text`` was sent (by the bot, or in the chat, ``key``)."""
        self._texts.setdefault(key, deque(maxlen=self.size)).append(text)

    def forget(self, key: int) -> None:
        """Drop a key (a bot this worker no longer drives)."""
        self._texts.pop(key, None)

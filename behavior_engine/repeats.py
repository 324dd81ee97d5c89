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
unanswered for want of a fresh phrase). Outcomes are counted in
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


class OwnRecent:
    """Each bot's last :data:`OWN_RECENT` texts, in this worker (its chats together).

    Memory: about ``OWN_RECENT`` × 100 characters a bot (~1.2 kB; 12 MB at 10,000 bots).
    """

    def __init__(self, size: int = OWN_RECENT) -> None:
        self.size = size
        self._texts: dict[int, deque[str]] = {}

    def of(self, bot_id: int) -> tuple[str, ...]:
        """The bot's remembered texts, oldest first."""
        return tuple(self._texts.get(bot_id, ()))

    def add(self, bot_id: int, text: str) -> None:
        """Remember that ``bot_id`` sent ``text``."""
        self._texts.setdefault(bot_id, deque(maxlen=self.size)).append(text)

    def forget(self, bot_id: int) -> None:
        """Drop a bot this worker no longer drives."""
        self._texts.pop(bot_id, None)

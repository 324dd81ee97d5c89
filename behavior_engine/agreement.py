"""Against drift into agreement (issue 16, item 3).

LLM groups drift into agreement: agents adopt the majority view up to 85 % of the time
(REALISM.md). Human group chat has agreement markers ("katılıyorum", "aynen", "exactly") at
0.06–0.13 of its contrast markers ("ama", "hayır", "but"); a believable run stays at or
under :data:`RATIO_BAND` = 0.15.

:class:`AgreementWatch` counts both kinds of marker (the realism report's own lists and
matcher, :func:`~behavior_engine.realism.formulas.count_markers`) over each chat's last
:data:`WINDOW` bot messages. When the ratio is above the band (with at least
:data:`MIN_AGREEMENT` agreement markers, so one "aynen" is no drift):

* **prompts**: a persona whose view on the turn's topic differs from the chat's prevailing
  direction on it (the directions its recent messages expect,
  :func:`~behavior_engine.consistency.expected_direction`), or from the message it replies
  to, gets :meth:`AgreementWatch.line`: the chat agrees too much, its view differs, say
  where and why;
* **guard**: a draft that adds agreement (:func:`adds_agreement`: more agreement markers
  than the band allows for its contrast markers, so any "aynen" while the chat drifts) is
  asked for again with that line (counted ``guard="agreement"``), since a provider may
  ignore the prompt. The sandbox LLM's "Aynen {who}, yine de …" line kept its runs at 0.24
  (11 agreement, 46 contrast markers in 10 minutes) before this guard counted it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence

from backend.schemas import Stance
from behavior_engine.consistency import expected_direction
from behavior_engine.reads import HistoryItem
from behavior_engine.realism.formulas import AGREEMENT_MARKERS, CONTRAST_MARKERS, count_markers
from behavior_engine.topics import detect_topic

#: Agreement ÷ contrast markers a believable chat stays at or under (REALISM.md).
RATIO_BAND = 0.15
#: Bot messages per chat the ratio is counted over.
WINDOW = 60
#: Agreement markers in the window before it counts as drift.
MIN_AGREEMENT = 2
#: Message ids remembered per chat (each message is counted once).
_SEEN = 500


def markers(text: str) -> tuple[int, int]:
    """``(agreement, contrast)`` markers in ``text``."""
    return count_markers([text], AGREEMENT_MARKERS), count_markers([text], CONTRAST_MARKERS)


def adds_agreement(text: str) -> bool:
    """True when ``text`` would raise a ratio at the band: its agreement markers exceed
    :data:`RATIO_BAND` × its contrast markers (an "aynen …, yine de …" raises it too: one
    agreement for one contrast is a ratio of 1)."""
    agree, contrast = markers(text)
    return agree > RATIO_BAND * contrast


class AgreementWatch:
    """Each chat's agreement ÷ contrast ratio over its last :data:`WINDOW` bot messages."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._counts: dict[int, deque[tuple[int, int]]] = {}
        self._seen: dict[int, deque[int]] = {}

    def observe(self, chat_id: int, history: Sequence[HistoryItem]) -> None:
        """Count the bot messages of ``history`` not counted yet (by message id)."""
        counts = self._counts.setdefault(chat_id, deque(maxlen=self.window))
        seen = self._seen.setdefault(chat_id, deque(maxlen=_SEEN))
        known = set(seen)
        for item in history:
            if item.is_human or item.message_id in known:
                continue
            seen.append(item.message_id)
            known.add(item.message_id)
            counts.append(markers(item.text))

    def ratio(self, chat_id: int) -> float | None:
        """Agreement ÷ contrast markers in the window; ``inf`` for agreement without
        contrast; None with no agreement marker."""
        counts = self._counts.get(chat_id, ())
        agree = sum(a for a, _ in counts)
        contrast = sum(c for _, c in counts)
        if agree == 0:
            return None
        return agree / contrast if contrast else float("inf")

    def drifting(self, chat_id: int) -> bool:
        """True when the chat's ratio is above :data:`RATIO_BAND` with at least
        :data:`MIN_AGREEMENT` agreement markers."""
        counts = self._counts.get(chat_id, ())
        ratio = self.ratio(chat_id)
        return (ratio is not None and ratio > RATIO_BAND
                and sum(a for a, _ in counts) >= MIN_AGREEMENT)

    def line(self, chat_id: int, *, topic: str, stances: Sequence[Stance],
             history: Sequence[HistoryItem], reply_to_text: str | None = None) -> str | None:
        """The prompt's contrast line for a bot with ``stances`` on ``topic``, or None (no
        drift, or its view does not differ from the chat's)."""
        if not self.drifting(chat_id):
            return None
        view = next((s.view for s in stances if s.topic == topic), "neutral")
        if view == "neutral":
            return None
        others = reply_to_text and expected_direction(reply_to_text)
        if not others:
            said = Counter(d for i in history[-20:]
                           if detect_topic(i.text) == topic
                           and (d := expected_direction(i.text)) is not None)
            others = said.most_common(1)[0][0] if said else None
        if others is None or others == view:
            return None
        return (f"The chat has been agreeing too much lately. Your view on {topic} is {view}, "
                f"unlike the others here ({others}): say where and why you disagree, in your "
                "own words and politely; do not agree for the sake of it.")

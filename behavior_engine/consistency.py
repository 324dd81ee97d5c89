"""The stance guard: a draft must not contradict the bot's views or holdings (issue 16, item 2).

A draft is checked against what the bot holds to now (:mod:`behavior_engine.stances`):

* **View.** The draft's topic (:func:`~behavior_engine.topics.detect_topic`, else the
  turn's) and the direction it *expects* (:func:`expected_direction`: forward-looking and
  opinion phrases only, Turkish and English, negations turned round; a past move such as
  "düştü" / "fell" is a fact, not a view, and is not read). A draft that expects the
  opposite of a bullish or bearish view contradicts it. For a neutral view, the bot's last
  expressed direction on the topic since its view last changed is what counts: saying "up"
  at 10:00 and "down" at 10:05 with no change between is a flip.
* **Holdings.** Saying it sold all of, or holds none of, a symbol it holds; or that it holds
  a symbol it does not (first-person phrases; :func:`holding_claims`).

A draft that contradicts is asked for again with :func:`Contradiction.hint`
(:meth:`~behavior_engine.pipeline.TurnPipeline._vet`), counted in
``botsim_guard_outcomes_total{guard="stance"}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from backend.schemas import Holding, Stance
from behavior_engine.topics import TOPIC_SYMBOLS, detect_topic, fold

_UP = re.compile(
    r"(?<!\w)(?:yükselir|yükselecek\w*|yükselişe geçer|yükselmeye devam|çıkar|çıkacak\w*"
    r"|uçar|uçacak\w*|artar|artacak\w*|alım fırsatı\w*|alınır|toplanır|topluyorum|ekliyorum"
    r"|eklerim|boğa|iyimser\w*|yukarı yönlü|yukarı gider|yükseliş sürer|tepki alımı gelir"
    r"|will (?:rise|go up|climb|rally|recover)|going (?:up|higher)|bullish|buy(?:ing)? the dip"
    r"|to the moon|upside|i'?m buying|adding more|long(?:ing)? it)(?!\w)|🚀")
_DOWN = re.compile(
    r"(?<!\w)(?:düşer|düşecek\w*|düşüş sürer|düşmeye devam|çöker|çökecek\w*|çakılır"
    r"|çakılacak\w*|geriler|gerileyecek\w*|inecek\w*|satılır|satarım|satıyorum|ayı piyasası"
    r"|kötümser\w*|balon|köpük|aşağı yönlü|aşağı gider|uzak dur\w*"
    r"|will (?:fall|drop|crash|go down|sink)|going (?:down|lower)|bearish|bubble|downside"
    r"|i'?m selling|stay away|short(?:ing)? it)(?!\w)|📉")
_NOT_DOWN = re.compile(r"(?<!\w)(?:düşmez|düşmeyecek\w*|çökmez|won'?t (?:fall|drop|crash)"
                       r"|will not (?:fall|drop|crash)|kötümser\w* değil\w*"
                       r"|not (?:so |that |very )?(?:pessimistic|bearish))(?!\w)")
_NOT_UP = re.compile(r"(?<!\w)(?:çıkmaz|yükselmez|yükselmeyecek\w*|çıkmayacak\w*|artmaz"
                     r"|won'?t (?:rise|go up|rally)|will not (?:rise|go up|rally)"
                     r"|iyimser\w* değil\w*|not (?:so |that |very )?(?:optimistic|bullish))(?!\w)")

#: Topic → words naming its symbol in a first-person holding claim.
_ASSET = {
    "gold": r"altın\w*|gold",
    "btc": r"bitcoin\w*|btc\w*|kripto\w*|crypto",
    "usdtry": r"dolar\w*|dollars?|usd",
    "bist100": r"hisse\w*|stocks?|shares|bist\w*",
}
_NONE_TR = r"(?:hiç|hiçbir)?\s*(?:{a})\s*(?:yok|almadım|almam|tutmuyorum|kalmadı)"
_SOLD_TR = r"(?:tüm|bütün|elimdeki)?\s*(?:{a})\s*(?:hepsini\s+)?(?:sattım|elden çıkardım|boşalttım)"
_NONE_EN = r"i (?:don'?t|do not) (?:own|hold|have) any (?:{a})|i sold (?:all )?my (?:{a})"
_HAVE_TR = r"(?:portföyümdeki|elimdeki|benim)\s+(?:{a})|(?:{a})\s+(?:aldım|topluyorum|tutuyorum)"
_HAVE_EN = r"my (?:{a})|i (?:own|hold|bought) (?:some )?(?:{a})"


def expected_direction(text: str) -> str | None:
    """The direction ``text`` expects: ``bullish``, ``bearish`` or None (none, or both).

    Forward-looking and opinion phrases only (module docstring); "düşmez" / "won't fall"
    count as up, "çıkmaz" / "won't rise" as down.
    """
    low = fold(text)
    up = len(_NOT_DOWN.findall(low))
    down = len(_NOT_UP.findall(low))
    rest = _NOT_UP.sub(" ", _NOT_DOWN.sub(" ", low))
    up += len(_UP.findall(rest))
    down += len(_DOWN.findall(rest))
    if up and not down:
        return "bullish"
    if down and not up:
        return "bearish"
    return None


def holding_claims(text: str) -> tuple[set[str], set[str]]:
    """Topics ``text`` claims, in the first person, to hold and to hold none of (or to have
    sold all of): ``(holds, holds_none)``."""
    low = fold(text)
    holds: set[str] = set()
    none: set[str] = set()
    for topic, asset in _ASSET.items():
        if re.search(_NONE_TR.format(a=asset), low) or re.search(_SOLD_TR.format(a=asset), low) \
                or re.search(_NONE_EN.format(a=asset), low):
            none.add(topic)
        elif re.search(_HAVE_TR.format(a=asset), low) or re.search(_HAVE_EN.format(a=asset), low):
            holds.add(topic)
    return holds, none


@dataclass(frozen=True, slots=True)
class Contradiction:
    """What a draft contradicts: ``kind`` (``view`` or ``holding``), the ``topic``, what the
    bot holds to (``expected``) and what the draft says (``said``)."""

    kind: str
    topic: str
    expected: str
    said: str

    def hint(self, language: str) -> str:
        """The instruction that asks for the draft again (English: the prompt's language)."""
        if self.kind == "holding":
            return (f"Your draft says you {self.said} on {self.topic}, but your holdings say "
                    f"you {self.expected}. Write it again consistent with your holdings.")
        return (f"Your draft sounds {self.said} on {self.topic}, but your view is "
                f"{self.expected} and nothing has changed your mind. Write it again "
                "consistent with your view (you may doubt, not reverse it).")


def check_consistency(text: str, *, stances: Sequence[Stance], holdings: Sequence[Holding],
                      topic: str, last_said: dict[str, str] | None = None
                      ) -> Contradiction | None:
    """The first contradiction of ``text`` with the bot's views and holdings, or None.

    Args:
        text: the draft.
        stances: the bot's stances now (views as they stand after the market and events).
        holdings: its positions.
        topic: the turn's topic (used when the text names none).
        last_said: topic → the direction the bot last expressed on it since its view last
            changed (for neutral views).
    """
    about = detect_topic(text) or topic
    said = expected_direction(text)
    if said is not None:
        stance = next((s for s in stances if s.topic == about), None)
        expected: str | None = stance.view if stance is not None else None
        if expected == "neutral" or expected is None:
            expected = (last_said or {}).get(about)
        if expected in ("bullish", "bearish") and said != expected:
            return Contradiction(kind="view", topic=about, expected=expected, said=said)
    held = {t for t, sym in TOPIC_SYMBOLS.items() if any(h.symbol == sym for h in holdings)}
    holds, none = holding_claims(text)
    for t in sorted(none & held):
        return Contradiction(kind="holding", topic=t, expected="hold some",
                             said="hold none or sold all")
    for t in sorted(holds - held):
        if t in TOPIC_SYMBOLS:
            return Contradiction(kind="holding", topic=t, expected="hold none",
                                 said="hold some")
    return None


@dataclass(frozen=True, slots=True)
class Flips:
    """Flips in a run's messages (:func:`count_flips`): ``flips`` (a bot expecting the
    opposite of what it last expected on a topic), ``explained`` (its recorded view on the
    topic changed in between: a market move or an event) and ``unexplained`` (the rest)."""

    flips: int
    explained: int
    unexplained: int


def count_flips(messages: Sequence[tuple[int, str, dict[str, str] | None]]) -> Flips:
    """Count flips over ``messages``, each ``(bot id, text, views when written)``, in the
    order they were sent.

    A message's topic is :func:`~behavior_engine.topics.detect_topic` of its text and its
    direction :func:`expected_direction`; a message with neither is skipped. A flip is
    explained when the bot's recorded view on that topic differs between the two messages;
    without recorded views it is not.
    """
    last: dict[tuple[int, str], tuple[str, str | None]] = {}
    flips = explained = 0
    for bot_id, text, views in messages:
        said = expected_direction(text)
        topic = detect_topic(text)
        if said is None or topic is None:
            continue
        view = (views or {}).get(topic) if views is not None else None
        before = last.get((bot_id, topic))
        if before is not None and before[0] != said:
            flips += 1
            if views is not None and before[1] is not None and before[1] != view:
                explained += 1
        last[(bot_id, topic)] = (said, view)
    return Flips(flips=flips, explained=explained, unexplained=flips - explained)

"""Reading and typing like a person: how long a bot reads before a reply, how long it types.

A person answering in a group first reads the message, then types; the others see
"typing…" meanwhile, and a long answer takes longer than a short one. Bots that answer a
twenty-word question with twenty words two seconds later are recognised at once (issue 14).

* Reading time: words of the message replied to ÷ ``reading_wpm`` (silent reading of
  running text averages about 238 words per minute for adults; Brysbaert, *J. Memory and
  Language* 109, 2019), capped at ``reading_cap_s``. Only replies read.
* Typing time: characters of the bot's own text ÷ characters per minute (the persona's
  ``typing_cpm``, else ``typing_cpm_default``; typists average about 52 words, some 260
  characters, per minute on a keyboard, Dhakal et al., CHI 2018, and about 36 words per
  minute on a phone, Palin et al., MobileHCI 2019), times a jitter factor drawn uniformly
  in ``[1 - typing_jitter, 1 + typing_jitter]``, then bounded softly by ``typing_cap_s``:
  ``cap × (1 − exp(−raw / cap))``, so a longer text always types longer, yet never past the
  cap (a hard cap would give every answer of more than a line the same time). Generating the
  text counts toward it: the pause after generation is what is left, never added twice.
* "typing…" is shown during that time and renewed every :data:`TYPING_RENEW_S` seconds:
  Telegram shows a chat action for 5 seconds or less, until the bot's next message
  arrives (core.telegram.org/bots/api#sendchataction).

A cap of 0 turns the pause off (the load tests do, so their throughput stays comparable).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from backend.errors import TelegramError
from backend.schemas import PersonaProfile, SimulationSettings

log = logging.getLogger("botsim.typist")

#: Seconds between two ``typing`` actions: under Telegram's 5 s display time, so the
#: indicator never lapses while the bot still types (core.telegram.org/bots/api#sendchataction).
TYPING_RENEW_S = 4.5

_WORD = re.compile(r"[\w']+")


@dataclass(frozen=True, slots=True)
class Pace:
    """How fast one bot reads and types, from the settings and its persona.

    Attributes:
        reading_wpm: words read per minute, > 0.
        reading_cap_s: the longest reading pause, seconds (0: no reading pause).
        typing_cpm: characters typed per minute, > 0.
        typing_jitter: half-width of the uniform jitter factor around 1, 0–0.9.
        typing_cap_s: the bound of the typing time, seconds (0: no typing pause).
    """

    reading_wpm: float
    reading_cap_s: float
    typing_cpm: float
    typing_jitter: float
    typing_cap_s: float

    @classmethod
    def of(cls, settings: SimulationSettings, persona: PersonaProfile) -> Pace:
        """The pace of a bot with ``persona`` under ``settings`` (the persona's own
        ``typing_cpm`` when it has one, else ``settings.typing_cpm_default``)."""
        return cls(
            reading_wpm=settings.reading_wpm,
            reading_cap_s=settings.reading_cap_s,
            typing_cpm=persona.typing_cpm or settings.typing_cpm_default,
            typing_jitter=settings.typing_jitter,
            typing_cap_s=settings.typing_cap_s,
        )

    def reading_s(self, text: str) -> float:
        """Seconds to read ``text``: its words (``[\\w']+``) × 60 / ``reading_wpm``, at most
        ``reading_cap_s``."""
        words = len(_WORD.findall(text))
        return min(words * 60.0 / self.reading_wpm, self.reading_cap_s)

    def typing_s(self, text: str, rng: random.Random) -> float:
        """Seconds to type ``text``: ``raw`` = its characters × 60 / ``typing_cpm`` × a factor
        drawn from ``rng`` uniformly in ``[1 - typing_jitter, 1 + typing_jitter]``, bounded
        softly: ``typing_cap_s × (1 − exp(−raw / typing_cap_s))`` (< the cap, increasing in
        ``raw``; 0.0 when the cap is 0)."""
        factor = rng.uniform(1.0 - self.typing_jitter, 1.0 + self.typing_jitter)
        if self.typing_cap_s <= 0:
            return 0.0
        raw = len(text) * 60.0 / self.typing_cpm * factor
        return self.typing_cap_s * -math.expm1(-raw / self.typing_cap_s)


def jitter_rng(seed: int, turn_id: str) -> random.Random:
    """The random stream of one turn's typing jitter (the same turn types equally long)."""
    digest = hashlib.sha256(f"typing|{seed}|{turn_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


async def keep_typing(show: Callable[[], Awaitable[None]],
                      sleep: Callable[[float], Awaitable[None]], seconds: float, *,
                      shown_ago: float | None = 0.0) -> int:
    """Wait ``seconds`` while "typing…" stays visible: ``show`` is called whenever the last
    action is :data:`TYPING_RENEW_S` seconds old and more typing time is left.

    Args:
        show: sends one ``typing`` action; a :class:`~backend.errors.TelegramError` from it
            is logged and ignored (decoration, never worth a lost turn).
        sleep: awaited for each wait, in seconds (injectable: tests pass a fake clock).
        seconds: the time left to type, seconds (≤ 0: returns at once).
        shown_ago: seconds since the last ``typing`` action (the one shown while the text
            was generated), ≥ 0; None: none shown yet (the first is sent at once).

    Returns:
        The number of ``typing`` actions sent.
    """
    sent = 0
    left = seconds
    # renewed every TYPING_RENEW_S during generation; None: not shown, so show it now
    since = TYPING_RENEW_S if shown_ago is None else shown_ago % TYPING_RENEW_S
    while left > 0:
        if since >= TYPING_RENEW_S:
            try:
                await show()
            except TelegramError as exc:
                log.debug("typing not renewed: %s", exc)
            sent += 1
            since = 0.0
        step = min(left, TYPING_RENEW_S - since)
        await sleep(step)
        left -= step
        since += step
    return sent

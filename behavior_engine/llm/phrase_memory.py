"""What a chat said recently, so the offline generator does not say it again.

Repetition loops are the most common failure of multi-agent chat (MAST, NeurIPS 2025), and
a template bank repeats itself unless told what was used: the issue 14 demo reused a 6-word
run said earlier in 21 % of bot messages, distinct-2 0.62 against ≥ 0.75 in REALISM.md.

:class:`Recent` is what one turn must avoid: the word bigrams (REALISM.md's tokens) of the
chat's recent messages and the templates the speaking bot used recently in that chat. It is
built from the turn's own history (the last 20 messages, any writer, humans included) and,
when the generator keeps one, from a :class:`PhraseMemory` of what it wrote in each chat
(longer: the last :data:`CHAT_TEXTS` messages, about the 2,000 tokens distinct-n is counted
over). Entries are keyed by turn id, and a turn never avoids what it wrote itself, so the
same request still gets the same text.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise

#: Messages of a chat the memory keeps (≈ 2,000 tokens at 10 tokens a message).
CHAT_TEXTS = 200
#: Templates of one bot in one chat the memory keeps.
BOT_TEMPLATES = 60
#: A bot's own latest messages, in any chat, that its next message avoids too (a persona in
#: three groups wrote the same lines in each: distinct-n counts the chats' bot text together).
BOT_TEXTS = 20

#: REALISM.md's tokens: words (Unicode, apostrophes kept) and single punctuation marks.
TOKEN = re.compile(r"[\w']+|[^\w\s]")


@lru_cache(maxsize=8192)
def bigrams(text: str) -> frozenset[tuple[str, str]]:
    """The lower-cased token bigrams of ``text`` (REALISM.md's tokenisation)."""
    return frozenset(pairwise(TOKEN.findall(text.lower())))


@lru_cache(maxsize=8192)
def char_grams(text: str, n: int = 5) -> frozenset[str]:
    """The lower-cased character ``n``-grams of ``text`` (the near-duplicate measure)."""
    low = text.lower()
    return frozenset(low[i : i + n] for i in range(max(len(low) - n + 1, 1)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b| (0.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


@dataclass
class Recent:
    """What one turn avoids.

    Attributes:
        seen: token bigrams of the chat's recent messages.
        templates: templates (and openers, closers...) the bot used recently in the chat.
        texts: the chat's recent texts (near-duplicate check), newest last.
    """

    seen: set[tuple[str, str]] = field(default_factory=set)
    templates: set[str] = field(default_factory=set)
    texts: list[str] = field(default_factory=list)

    def add_text(self, text: str) -> None:
        """Count ``text`` as said recently."""
        self.seen |= bigrams(text)
        self.texts.append(text)

    def stale(self, text: str) -> int:
        """How many of ``text``'s bigrams were said recently."""
        return len(bigrams(text) & self.seen)

    def near_duplicate(self, text: str, threshold: float = 0.5) -> bool:
        """True when ``text`` (of ≥ 4 words) has character 5-gram Jaccard ≥ ``threshold``
        with a recent text (REALISM.md's near-duplicate)."""
        if len(re.findall(r"[\w']+", text)) < 4:
            return False
        mine = char_grams(text)
        return any(jaccard(mine, char_grams(t)) >= threshold for t in self.texts)


@dataclass
class _Said:
    turn_id: str
    bot_id: int | None
    text: str
    templates: tuple[str, ...]


class PhraseMemory:
    """Per chat, what the offline generator wrote there recently (texts and templates), and
    per bot, its own last messages in any chat.

    In-process (one per generator); a worker that starts empty falls back on the turn's
    history, which every worker reads alike.

    Args:
        chat_texts: messages kept per chat (≥ 1).
        bot_templates: templates kept per bot per chat (≥ 1).
        bot_texts: a bot's own messages kept across its chats (≥ 1).
    """

    def __init__(self, chat_texts: int = CHAT_TEXTS, bot_templates: int = BOT_TEMPLATES,
                 bot_texts: int = BOT_TEXTS) -> None:
        self.chat_texts = chat_texts
        self.bot_templates = bot_templates
        self.bot_texts = bot_texts
        self._chats: dict[int, deque[_Said]] = {}
        self._bots: dict[int, deque[tuple[int, _Said]]] = {}  # bot → (chat, entry), newest last

    def recent(self, chat_id: int | None, bot_id: int | None, turn_id: str,
               history: Iterable[str] = ()) -> Recent:
        """What a turn of ``bot_id`` in ``chat_id`` avoids: ``history`` (the turn's recent
        chat texts), what this memory holds for the chat, and the bot's own last
        :data:`BOT_TEXTS` messages in other chats (their bigrams and templates, not their
        texts: a near-duplicate is judged within a chat), except the turn's own text."""
        out = Recent()
        said = [s for s in self._chats.get(chat_id, ()) if s.turn_id != turn_id] \
            if chat_id is not None else []
        texts = dict.fromkeys([*(s.text for s in said), *history])  # ordered, no repeats
        for text in texts:
            out.add_text(text)
        own = [s for s in said if s.bot_id == bot_id][::-1]
        for s in own:
            if len(out.templates) >= self.bot_templates:
                break
            out.templates.update(s.templates)
        if bot_id is not None:
            for chat, s in self._bots.get(bot_id, ()):
                if chat != chat_id and s.turn_id != turn_id:
                    out.seen |= bigrams(s.text)
                    out.templates.update(s.templates)
        return out

    def remember(self, chat_id: int | None, bot_id: int | None, turn_id: str, text: str,
                 templates: Iterable[str]) -> None:
        """Record what a turn wrote (a repeated turn id replaces its entry)."""
        if chat_id is None:
            return
        chat = self._chats.setdefault(chat_id, deque(maxlen=self.chat_texts))
        for s in [s for s in chat if s.turn_id == turn_id]:
            chat.remove(s)
        said = _Said(turn_id, bot_id, text, tuple(templates))
        chat.append(said)
        if bot_id is not None:
            mine = self._bots.setdefault(bot_id, deque(maxlen=self.bot_texts))
            for entry in [e for e in mine if e[1].turn_id == turn_id]:
                mine.remove(entry)
            mine.append((chat_id, said))

"""The content-safety guard (issue 16, item 6): what a bot may not say in a market chat.

The bots talk with real people about money. Before a text is sent, it is checked against
rules, each a list of regular expressions per language:

=====================  ==================================================================
``guaranteed_returns``  a promised or guaranteed return ("garantili kazanç", "risk-free")
``coordinated_call``    a call to buy or sell together ("hep beraber alalım", "everyone
                        buy now")
``personal_instruction`` telling a person what to do with their money ("hemen alın",
                        "you should sell"): only in an answer to a person; the persona says
                        its own view instead ("ben alıyorum")
``personal_data``       a phone number, an e-mail address, an IBAN or a card number
``links``               a link (``http``, ``www.``, ``t.me/``), unless the deployment allows
=====================  ==================================================================

A text that breaks a rule is written again with the rule's hint, at most
:data:`~behavior_engine.repeats.MAX_REGENERATIONS` times, then dropped (even an answer to a
person: nothing that breaks a rule is sent). Each block is counted per rule
(``botsim_safety_blocks_total{rule}``) and written to the audit log (``safety.blocked``, the
bot's draft and the rule), which the panel lists.

The defaults (Turkish and English) are :data:`DEFAULT_RULES`; a deployment replaces or adds
rules with a YAML file (``BOTSIM_SAFETY_RULES``: ``{rule: {hint: {tr, en}, patterns: {tr:
[...], en: [...]}, to_people_only: bool}}``; ``links: {allowed: true}`` lets links through).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: Languages a rule may have patterns for (the personas' languages).
LANGUAGES = ("tr", "en")


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its name, its patterns per language (compiled, case-insensitive), the hint
    a regeneration gets per language, and whether it applies only to answers to people."""

    name: str
    patterns: dict[str, tuple[re.Pattern[str], ...]]
    hint: dict[str, str]
    to_people_only: bool = False

    def broken_by(self, text: str, language: str) -> str | None:
        """The first part of ``text`` that breaks this rule, or None. Patterns of every
        language are tried (a Turkish persona may quote an English phrase)."""
        for lang in (language, *(x for x in self.patterns if x != language)):
            for pattern in self.patterns.get(lang, ()):
                if (m := pattern.search(text)) is not None:
                    return m.group(0)
        return None


def _rule(name: str, hint: dict[str, str], patterns: dict[str, list[str]],
          to_people_only: bool = False) -> Rule:
    return Rule(name=name, hint=hint, to_people_only=to_people_only,
                patterns={lang: tuple(re.compile(p, re.IGNORECASE) for p in ps)
                          for lang, ps in patterns.items()})


_W = r"(?<!\w)"  # a word starts here
DEFAULT_SPEC: dict[str, dict[str, Any]] = {
    "guaranteed_returns": {
        "hint": {"tr": "Getiri vaat etme, garanti verme; kendi beklentini temkinli söyle.",
                 "en": "Promise no return and guarantee nothing; give your own cautious view."},
        "patterns": {
            "tr": [_W + r"garanti(li)?\s+(kazan|getiri|kâr|kar\b|para)",
                   _W + r"(kazanç|getiri|kâr)\w*\s+garanti",
                   _W + r"kesin(likle)?\s+(kazan|kâr|yüksel|uçar|katlar)",
                   _W + r"(zarar|para)\s+kaybetmezsin", _W + r"risksiz\s+(kazanç|getiri|işlem)",
                   _W + r"%\s?\d+\s+(getiri|kazanç)\s+(garanti|kesin)"],
            "en": [_W + r"guarantee(d|s)?\s+(a\s+)?(return|profit|gain|win)",
                   _W + r"(can(no|')t|won't)\s+lose", _W + r"risk[- ]free\s+(return|profit|trade)",
                   _W + r"(will|is going to)\s+(definitely|surely|certainly)\s+"
                   r"(go up|rise|moon|double)"],
        },
    },
    "coordinated_call": {
        "hint": {"tr": "Kimseyi birlikte alım ya da satıma çağırma; yalnız kendi fikrini söyle.",
                 "en": "Call nobody to buy or sell together; say only your own view."},
        "patterns": {
            "tr": [_W + r"(hep|hepimiz|herkes)\s+(beraber|birlikte)\s+\w*\s*(al|sat)",
                   _W + r"herkes\s+(alsın|satsın|alsın!|satsın!)",
                   _W + r"(hep\s+beraber|birlikte|aynı\s+anda)\s+(alalım|satalım|girelim|çıkalım)",
                   _W + r"(alalım|satalım)\s+(hep\s+beraber|hep\s+birlikte|arkadaşlar)",
                   _W + r"pump(layalım|lıyoruz)"],
            "en": [_W + r"(everyone|everybody|all of us)\s+(should\s+)?(buy|sell|dump)",
                   _W + r"let'?s\s+all\s+(buy|sell|dump|pump)", _W + r"pump\s+it"],
        },
    },
    "personal_instruction": {
        "hint": {"tr": "Kişiye ne yapması gerektiğini söyleme; yalnız kendi yaptığını ve "
                       "düşündüğünü anlat.",
                 "en": "Do not tell the person what to do with their money; say only what "
                       "you do and think."},
        "to_people_only": True,
        "patterns": {
            "tr": [_W + r"(hemen|kesinlikle|mutlaka|derhal)\s+"
                   r"(al|sat|alın|satın|gir|girin|çık|çıkın)\b",
                   _W + r"(paranı|paranızı|birikimini|birikiminizi)\s+\w*\s*(yatır|koy|bas)",
                   _W + r"(tüm|bütün)\s+(paranı|paranızı)",
                   _W + r"(sen|siz)\s+de\s+(al|sat|alın|satın)\b"],
            "en": [_W + r"you\s+(should|must|need to)\s+(buy|sell|put|invest|go all in)",
                   _W + r"(buy|sell)\s+(it\s+)?(now|today|immediately)\b",
                   _W + r"put\s+(all\s+)?your\s+(money|savings)"],
        },
    },
    "personal_data": {
        "hint": {"tr": "Telefon, e-posta, IBAN ya da kart numarası yazma.",
                 "en": "Write no phone number, e-mail address, IBAN or card number."},
        "patterns": {
            "tr": [r"\b[\w.+-]+@[\w-]+\.[\w.]+\b", r"\bTR\d{2}(\s?\d{4}){5}\s?\d{2}\b",
                   r"(?<!\d)(\+90|0)\s?5\d{2}[\s-]?\d{3}[\s-]?\d{2}[\s-]?\d{2}(?!\d)",
                   r"(?<!\d)(\d{4}[\s-]?){3}\d{4}(?!\d)"],
            "en": [r"(?<!\d)\+?\d{1,3}[\s-]?\(?\d{3}\)?[\s-]?\d{3}[\s-]?\d{4}(?!\d)"],
        },
    },
    "links": {
        "hint": {"tr": "Bağlantı (link) verme.", "en": "Give no link."},
        "patterns": {"tr": [r"https?://\S+", r"\bwww\.\S+", r"\bt\.me/\S+"]},
    },
}


def load_rules(path: str | Path | None = None) -> tuple[Rule, ...]:
    """The rules: :data:`DEFAULT_SPEC`, with the deployment's YAML file at ``path`` (see the
    module docstring) replacing or adding rules; ``links: {allowed: true}`` drops the links
    rule.

    Raises:
        ValueError: the file is not a mapping of rules, a rule has no patterns, a language
            is not one of :data:`LANGUAGES`, or a pattern is not a valid regular expression
            (the message names the rule and the pattern).
        OSError: the file cannot be read.
    """
    spec = {k: dict(v) for k, v in DEFAULT_SPEC.items()}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the safety rules must be a mapping of rule names")
        for name, body in loaded.items():
            if not isinstance(body, dict):
                raise ValueError(f"{path}: rule {name!r} must be a mapping")
            if name == "links" and body.get("allowed") is True:
                spec.pop("links", None)
                continue
            spec[str(name)] = {**spec.get(str(name), {}), **body}
    rules = []
    for name, body in spec.items():
        patterns = body.get("patterns")
        if not isinstance(patterns, dict) or not patterns:
            raise ValueError(f"safety rule {name!r} has no patterns")
        for lang, items in patterns.items():
            if lang not in LANGUAGES:
                raise ValueError(f"safety rule {name!r}: language {lang!r} is not one of "
                                 f"{', '.join(LANGUAGES)}")
            for p in items:
                try:
                    re.compile(p)
                except re.error as exc:
                    raise ValueError(f"safety rule {name!r}: pattern {p!r}: {exc}") from None
        hint = body.get("hint") or {}
        rules.append(_rule(name, {lang: str(hint.get(lang, "")) for lang in LANGUAGES},
                           {lang: list(ps) for lang, ps in patterns.items()},
                           bool(body.get("to_people_only", False))))
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class Breach:
    """A rule a text breaks and the part that breaks it."""

    rule: str
    part: str
    hint: str


def check_safety(text: str, rules: tuple[Rule, ...], *, language: str,
                 to_person: bool) -> Breach | None:
    """The first rule ``text`` breaks (``to_person``: it answers a person, so
    ``to_people_only`` rules apply), or None."""
    for rule in rules:
        if rule.to_people_only and not to_person:
            continue
        if (part := rule.broken_by(text, language)) is not None:
            return Breach(rule.name, part, rule.hint.get(language) or rule.hint.get("en", ""))
    return None

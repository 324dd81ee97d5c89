"""Text that people or bots wrote, made safe for the operator's terminal.

A chat message, a persona's or a group's name, a world event's headline or Telegram's error
description can hold terminal control sequences: ``ESC ] 0 ; … BEL`` retitles the terminal,
``ESC [ 2 J`` clears the screen, a carriage return or backspaces overwrite what was printed,
a right-to-left override (U+202E) shows text reversed. :func:`clean` removes them; every
CLI printer of such text (``botsim demo``, ``botsim interview``, ``botsim event``,
``botsim preflight``) passes it through :func:`clean` first, and through ``rich``'s
``escape`` too where the text goes into ``rich`` markup.
"""

from __future__ import annotations

import re

#: Whole escape sequences, so that their parameters (``[2J``, ``0;title``) go with them:
#: CSI (``ESC [`` or the 8-bit ``\x9b``, parameters, one final byte); OSC, DCS, SOS, PM and
#: APC strings (``ESC ]``, ``ESC P``, ``ESC X``, ``ESC ^``, ``ESC _`` or their 8-bit forms,
#: up to BEL or ST, or to the end); any other ``ESC`` + intermediates + final byte (ECMA-48).
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
#: What is left to remove: C0 controls but tab and newline, DEL, C1 controls, and the bidi
#: embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str, *, one_line: bool = False) -> str:
    """``text`` without terminal control sequences and control characters (module doc):
    ``clean("hi \\x1b]0;pwned\\x07\\x1b[2Jthere")`` is ``"hi there"``. Tabs and newlines
    are kept, unless ``one_line`` (a name, a title, a headline), which turns each into a
    space."""
    if text.isprintable():  # the common case: nothing to remove (no Cc or Cf character)
        return text
    text = _CONTROL.sub("", _SEQUENCE.sub("", text))
    if one_line:
        text = text.replace("\n", " ").replace("\t", " ")
    return text

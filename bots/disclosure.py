"""What a bot says of itself when asked: ``/start``, ``/help`` and ``/privacy`` (issue 16,
item 7).

Telegram's bot terms ask every bot to answer ``/privacy`` (a privacy policy or where to
find it) and forbid misrepresenting who is behind it (telegram.org/tos/bot-developers):
each bot says it is a simulated persona run by software, in its persona's language, then
gives the deployment's privacy text (``Settings.privacy_text``).

The listener answers these commands itself, in its reply to the webhook (Bot API, "Making
requests when getting updates": the answer may carry one method call), so they never
enter the conversation and cost no lease, no LLM call and no send slot.
"""

from __future__ import annotations

import re

#: The commands answered, as Telegram writes them (``/cmd`` or ``/cmd@bot_username``).
COMMANDS = ("start", "help", "privacy")
_COMMAND = re.compile(r"^/(?P<cmd>[A-Za-z0-9_]{1,32})(?:@(?P<bot>[A-Za-z0-9_]{3,32}))?(?=\s|$)")

#: The deployment's privacy text when the operator sets none (``BOTSIM_PRIVACY_TEXT``).
DEFAULT_PRIVACY = {
    "tr": "Gizlilik: bu gruptaki mesajlar simülasyonu yürütmek için saklanır; kişisel "
          "verileriniz satılmaz ve paylaşılmaz. Silinmesini istediğiniz veriler için grup "
          "yöneticisine yazın.",
    "en": "Privacy: messages in this group are stored to run the simulation; your personal "
          "data is not sold or shared. Ask the group's admin to have your data deleted.",
}


def parse_command(text: str) -> tuple[str, str | None] | None:
    """``(command, addressed bot username or None)`` of a text that starts with one of
    :data:`COMMANDS` (lowercase; Bot API, "Commands": ``/command@bot_username``); None for
    any other text."""
    m = _COMMAND.match(text.strip())
    if m is None or m.group("cmd").lower() not in COMMANDS:
        return None
    return m.group("cmd").lower(), (m.group("bot") or None)


def disclosure(command: str, *, name: str, language: str, privacy_text: str | None) -> str:
    """The answer of the bot named ``name`` (persona language ``tr`` or ``en``) to
    ``command`` (one of :data:`COMMANDS`): what it is, and for ``/privacy`` (and ``/start``)
    the deployment's privacy text (default :data:`DEFAULT_PRIVACY`)."""
    tr = language == "tr"
    who = (f"Ben {name}: yazılımla çalışan, simüle edilmiş bir karakterim (botsim). Gerçek "
           "bir kişi değilim ve yazdıklarım yatırım tavsiyesi değildir."
           if tr else
           f"I am {name}: a simulated persona run by software (botsim). I am not a real "
           "person, and nothing I write is investment advice.")
    policy = privacy_text or DEFAULT_PRIVACY["tr" if tr else "en"]
    if command == "help":
        more = ("Komutlar: /privacy gizlilik, /help bu yardım." if tr
                else "Commands: /privacy for privacy, /help for this help.")
        return f"{who}\n{more}"
    return f"{who}\n{policy}"

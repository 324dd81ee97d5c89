"""Terminal output: what people and bots wrote reaches the operator's terminal without its
control sequences (a message must not clear the screen or retitle the terminal)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from backend.db.models import Message
from backend.schemas import MessageMeta
from botsim.demo import _Printer
from botsim.terminal import clean

PWNED = "\x1b]0;pwned\x07\x1b[2J"


@pytest.mark.parametrize(("text", "shown"), [
    (f"Dolar {PWNED}nereye?", "Dolar nereye?"),
    ("renk \x1b[31mkırmızı\x1b[0m", "renk kırmızı"),
    ("üzerine\ryazma\x08\x08", "üzerineyazma"),
    ("ters \u202eçevir\u202c", "ters çevir"),
    ("8-bit \x9b2J CSI \x9d0;x\x9c OSC \x85 NEL", "8-bit  CSI  OSC  NEL"),
    ("bitmemiş \x1b]0;başlık", "bitmemiş "),
    ("sonda ESC\x1b", "sonda ESC"),
    ("satır 1\nsatır 2\tsekme", "satır 1\nsatır 2\tsekme"),
    ("Dolar İstanbul’da 📈 %3 [bold]", "Dolar İstanbul’da 📈 %3 [bold]"),
])
def test_clean(text: str, shown: str) -> None:
    assert clean(text) == shown


def test_one_line_turns_newlines_into_spaces() -> None:
    assert clean("Ali\nVeli\t\x1b[2J", one_line=True) == "Ali Veli "


def _message(text: str, sender: str, telegram_id: int, reply_to: int | None = None) -> Message:
    return Message(id=telegram_id, chat_id=1, bot_id=None, sender_id=5, sender_name=sender,
                   telegram_message_id=telegram_id, reply_to_telegram_message_id=reply_to,
                   text=text, meta=MessageMeta(), created_at=datetime.now(UTC))


def test_the_demo_prints_messages_without_control_sequences() -> None:
    out = io.StringIO()
    printer = _Printer(Console(file=out, force_terminal=True, width=200))
    printer.chats = {1: f"Grup{PWNED}", 2: "İkinci"}
    printer.show(_message(f"merhaba {PWNED}dünya [red]x[/red]", f"Deniz{PWNED}", 10))
    printer.show(_message("cevap", "Ayşe", 11, reply_to=10))
    shown = out.getvalue()
    assert "\x1b]" not in shown and "\x07" not in shown and "\x1b[2J" not in shown
    assert "pwned" not in shown
    assert "merhaba dünya [red]x[/red]" in shown  # markup shown as written, not applied
    assert "Deniz" in shown and "Grup" in shown

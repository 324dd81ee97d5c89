"""The four demo personas in bots/personas/*.yaml are valid persona files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from backend.schemas import Persona
from behavior_engine.market import DEFAULT_PRICES

PERSONA_DIR = Path(__file__).resolve().parents[2] / "bots" / "personas"
FILES = ("mehmet.yaml", "ayse.yaml", "ali_hoca.yaml", "zeynep.yaml")


def _load(name: str) -> Persona:
    data = yaml.safe_load((PERSONA_DIR / name).read_text(encoding="utf-8"))
    return Persona.model_validate(data)


@pytest.mark.parametrize("name", FILES)
def test_persona_file_validates(name: str) -> None:
    p = _load(name)
    assert p.language == "tr"
    assert p.username.lower().endswith("bot")
    sentences = [s for s in p.bio.replace("!", ".").split(".") if s.strip()]
    assert 2 <= len(sentences) <= 5
    # holdings bought near the demo market's start prices: P&L starts near 0 ± a few %
    for h in p.holdings:
        assert abs(h.avg_cost / DEFAULT_PRICES[h.symbol] - 1) < 0.05, (name, h)


def test_usernames_and_names_are_distinct() -> None:
    personas = [_load(n) for n in FILES]
    assert len({p.username for p in personas}) == 4
    assert len({p.name for p in personas}) == 4
    assert all(p.username.endswith("bot") for p in personas)


def test_demo_cast_matches_the_brief() -> None:
    m, a, h, _ = (_load(n) for n in FILES)
    assert (m.name, a.name) == ("Mehmet Yatırımcı", "Ayşe Scalper")
    assert a.style.length == "short" and a.style.emoji_rate >= 1.0
    assert h.style.formality == "formal" and h.style.length == "long" and h.style.emoji_rate == 0
    assert m.style.emoji_rate < a.style.emoji_rate


def test_personas_disagree_somewhere() -> None:
    personas = [_load(n) for n in FILES]
    views: dict[str, set[str]] = {}
    for p in personas:
        for s in p.stances:
            views.setdefault(s.topic, set()).add(s.view)
    contested = [t for t, v in views.items() if {"bullish", "bearish"} <= v]
    assert {"usdtry", "btc"} <= set(contested)

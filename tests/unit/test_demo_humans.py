"""``botsim demo --humans N``: the scripted human messages of issue 14's measurement."""

from __future__ import annotations

import pytest

from botsim.demo import human_script


def test_four_humans_at_10_35_60_85_percent_with_the_four_kinds() -> None:
    script = human_script(4, 600.0, "Zeynep")
    assert [at for at, _ in script] == pytest.approx([60.0, 210.0, 360.0, 510.0])
    mention, rates, group, plain = (text for _, text in script)
    assert mention.startswith("Zeynep,")
    assert "carry trade" in rates and "faiz" in rates.lower()
    assert group.startswith("Arkadaşlar, sizce") and group.endswith("?")
    assert "?" not in plain


def test_one_two_and_none() -> None:
    assert human_script(0, 0.0, "Ali") == []
    assert [at for at, _ in human_script(1, 100.0, "Ali")] == pytest.approx([10.0])
    assert [at for at, _ in human_script(2, 120.0, "Ali")] == pytest.approx([12.0, 102.0])
    assert len({t for _, t in human_script(8, 800.0, "Ali")}) == 4  # the kinds cycle
    with pytest.raises(ValueError):
        human_script(2, 0.0, "Ali")

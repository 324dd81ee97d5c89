"""The content-safety guard (issue 16, item 6): each default rule fires on what it forbids
and stays quiet on ordinary market talk; a deployment's rule file is checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from behavior_engine.safety import check_safety, load_rules

RULES = load_rules()

BREAKS = [
    ("guaranteed_returns", "tr", "Bu hisse garantili kazanç, kaçırmayın."),
    ("guaranteed_returns", "tr", "Altın kesinlikle yükselecek, yazın bir kenara."),
    ("guaranteed_returns", "en", "This is a guaranteed return, you can't lose."),
    ("coordinated_call", "tr", "Arkadaşlar yarın 10:00'da hep beraber alalım!"),
    ("coordinated_call", "tr", "Herkes alsın, tavan yapacak."),
    ("coordinated_call", "en", "Let's all buy at the open."),
    ("personal_data", "tr", "Bana 0532 123 45 67'den ulaşın."),
    ("personal_data", "tr", "IBAN: TR33 0006 1005 1978 6457 8413 26"),
    ("personal_data", "en", "Mail me at deniz@example.com"),
    ("links", "tr", "Detaylar burada: https://example.com/pump"),
    ("links", "tr", "Kanala gelin t.me/sinyalgrubu"),
]
TO_PEOPLE = [
    ("tr", "Deniz, hemen alın, fırsat kaçmasın."),
    ("tr", "Tüm paranı dolara bas bence."),
    ("en", "You should buy it now."),
]
ORDINARY = [
    "Altın bu hafta yine yükselir gibi, ben pozisyonumu koruyorum.",
    "Dolar 38'i aşarsa biraz daha alırım, ama acele etmiyorum.",
    "Bence faiz kararı piyasayı sallar, temkinli olmak lazım.",
    "Kesin bir şey yok, herkes kendi riskini bilir.",
    "BIST 100 sakin; ben bankalardan biraz aldım açıkçası.",
    "I bought a little gold today, nothing more.",
    "Merkez bankası 250 baz puan artırdı, 1.5 puanlık sürpriz değil mi?",
]


@pytest.mark.parametrize(("rule", "lang", "text"), BREAKS)
def test_each_default_rule_blocks_what_it_forbids(rule: str, lang: str, text: str) -> None:
    breach = check_safety(text, RULES, language=lang, to_person=False)
    assert breach is not None and breach.rule == rule and breach.part in text
    assert breach.hint


@pytest.mark.parametrize(("lang", "text"), TO_PEOPLE)
def test_telling_a_person_what_to_do_is_blocked_only_in_an_answer_to_one(
        lang: str, text: str) -> None:
    breach = check_safety(text, RULES, language=lang, to_person=True)
    assert breach is not None and breach.rule == "personal_instruction"
    assert check_safety(text, RULES, language=lang, to_person=False) is None


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_market_talk_passes(text: str) -> None:
    assert check_safety(text, RULES, language="tr", to_person=True) is None


def test_a_deployments_rules_replace_add_and_allow_links(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "links: {allowed: true}\n"
        "insider: {hint: {tr: 'İçeriden bilgi verme.'}, patterns: {tr: ['içeriden bilgi']}}\n",
        encoding="utf-8")
    rules = load_rules(path)
    assert "links" not in {r.name for r in rules}
    assert check_safety("https://example.com", rules, language="tr", to_person=False) is None
    breach = check_safety("İçeriden bilgi aldım", rules, language="tr", to_person=False)
    assert breach is not None and breach.rule == "insider"


@pytest.mark.parametrize(("body", "message"), [
    ("- a list", "must be a mapping of rule names"),
    ("x: {patterns: {}}", "rule 'x' has no patterns"),
    ("x: {patterns: {de: ['a']}}", "language 'de' is not one of tr, en"),
    ("x: {patterns: {tr: ['(unclosed']}}", "rule 'x': pattern '(unclosed'"),
])
def test_a_bad_rule_file_is_refused_naming_the_rule(tmp_path: Path, body: str,
                                                   message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_rules(path)

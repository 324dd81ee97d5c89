"""Bad input gets a clear error naming what is wrong and where: persona files, settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from backend.crypto import resolve_secrets
from backend.db.session import upgrade_sync
from backend.errors import ConfigError, PersonaFileError, StorageError
from backend.settings import Settings, load_settings
from bots.personas import load_persona_dir, load_persona_file, parse_persona

GOOD = {
    "name": "Test Kişi",
    "username": "test_kisi_bot",
    "role": "scalper",
    "language": "tr",
    "bio": "Kısa vadeli işlem yapar.",
    "style": {"formality": "casual", "emoji_rate": 1.0, "length": "short"},
    "topics": {"btc": 2.0},
    "stances": [{"topic": "btc", "view": "bullish", "conviction": 0.5, "reason": "Talep güçlü."}],
    "holdings": [{"symbol": "BTC", "quantity": 0.1, "avg_cost": 90000}],
}


def write(tmp_path: Path, data: object, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True),
                    encoding="utf-8")
    return path


def refused(path: Path) -> PersonaFileError:
    with pytest.raises(PersonaFileError) as err:
        load_persona_file(path)
    assert str(path) in str(err.value)
    return err.value


def test_good_persona_loads(tmp_path: Path) -> None:
    persona = load_persona_file(write(tmp_path, GOOD))
    assert persona.username == "test_kisi_bot"
    assert persona.profile().style.length == "short"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"username": "mehmet"}, "username", "end in 'bot'"),
        ({"language": "fr"}, "language", "'tr' or 'en'"),
        ({"style": {"formality": "casual", "emoji_rate": 9, "length": "short"}},
         "style.emoji_rate", "less than or equal to 3"),
        ({"style": {"formality": "rude", "emoji_rate": 1, "length": "short"}},
         "style.formality", "'casual', 'neutral' or 'formal'"),
        ({"style": "casual"}, "style", "valid dictionary"),
        ({"topics": {}}, "topics", "at least 1 item"),
        ({"topics": {"btc": -1}}, "topics", "must be > 0"),
        ({"topics": {"Bad Topic": 1}}, "topics.Bad Topic.[key]", "should match pattern"),
        ({"stances": [{"topic": "btc", "view": "moon", "conviction": 0.5, "reason": "x"}]},
         "stances.0.view", "'bullish', 'bearish' or 'neutral'"),
        ({"stances": [{"topic": "btc", "view": "bullish", "conviction": 0.5, "reason": "x"},
                      {"topic": "btc", "view": "bearish", "conviction": 0.5, "reason": "y"}]},
         "stances", "two stances on topic 'btc'"),
        ({"holdings": [{"symbol": "BTC", "quantity": 0, "avg_cost": 1}]},
         "holdings.0.quantity", "greater than 0"),
        ({"mood": 1}, "mood", "Extra inputs are not permitted"),
    ],
)
def test_bad_field_named_with_reason(tmp_path: Path, change: dict, field: str, reason: str) -> None:
    err = refused(write(tmp_path, {**GOOD, **change}))
    fields = [f for f, _ in err.problems]
    assert field in fields, err
    assert reason in str(err)


def test_missing_field(tmp_path: Path) -> None:
    data = dict(GOOD)
    del data["bio"]
    err = refused(write(tmp_path, data))
    assert err.problems == [("bio", "Field required")]


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    err = refused(write(tmp_path, "name: [unclosed\n"))
    assert "not valid YAML" in str(err) and "line" in err.problems[0][0]
    err = refused(write(tmp_path, "- a\n- b\n"))
    assert "expected a mapping" in str(err)
    missing = tmp_path / "nope.yaml"
    assert "cannot be read" in str(refused(missing))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "cannot be read" in str(refused(binary))


def test_duplicate_username_across_files(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, {**GOOD, "username": "TEST_KISI_BOT"}, "b.yaml")
    with pytest.raises(PersonaFileError, match=r"b.yaml: username: .* also used by a.yaml"):
        load_persona_dir(tmp_path)


def test_parse_persona_names_source() -> None:
    with pytest.raises(PersonaFileError, match=r"^inline: "):
        parse_persona("name: x", source="inline")


def test_bad_environment_settings_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOTSIM_TICK_SECONDS", "fast")
    with pytest.raises(ConfigError, match=r"BOTSIM_TICK_SECONDS: .*got 'fast'"):
        load_settings()
    monkeypatch.setenv("BOTSIM_TICK_SECONDS", "0")
    with pytest.raises(ConfigError, match="BOTSIM_TICK_SECONDS: Input should be greater"):
        load_settings()
    monkeypatch.delenv("BOTSIM_TICK_SECONDS")
    monkeypatch.setenv("DATABASE_URL", "mysql://x")
    with pytest.raises(ConfigError, match=r"bad settings: BOTSIM_DATABASE_URL: .*PostgreSQL"):
        load_settings()
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h:5432/db")
    assert load_settings().effective_database_url == "postgresql+asyncpg://u@h:5432/db"


def test_production_refuses_missing_or_weak_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BOTSIM_FERNET_KEY, BOTSIM_WEBHOOK_SECRET"):
        resolve_secrets(Settings(env="production", data_dir=tmp_path))
    assert not (tmp_path / "fernet.key").exists()  # production never generates keys
    with pytest.raises(ConfigError, match="at least 32"):
        resolve_secrets(Settings(env="production", data_dir=tmp_path,
                                 fernet_key="x" * 44, webhook_secret="short"))
    with pytest.raises(ConfigError, match="not a valid Fernet key"):
        resolve_secrets(Settings(env="production", data_dir=tmp_path,
                                 fernet_key="x" * 10, webhook_secret="s" * 40))


def test_development_generates_keys_once(tmp_path: Path) -> None:
    first = resolve_secrets(Settings(data_dir=tmp_path))
    again = resolve_secrets(Settings(data_dir=tmp_path))
    assert first == again
    assert (tmp_path / "fernet.key").stat().st_mode & 0o777 == 0o600
    token = "123:ABCDEFGHIJKLMNOP"
    assert first.cipher().decrypt(first.cipher().encrypt(token)) == token


def test_unreachable_database_is_a_storage_error_without_password(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"127\.0\.0\.1:9/x: .*(refused|failed)") as err:
        upgrade_sync("postgresql+asyncpg://botsim:hunter2@127.0.0.1:9/x")
    assert "hunter2" not in str(err.value)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="database sqlite"):
        upgrade_sync(f"sqlite+aiosqlite:///{blocker}/sub/x.db")


def test_provider_settings_errors_never_show_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOTSIM_LLM_PROVIDERS",
                       '[{"name": "groq", "kind": "groq", "model": "", "api_key": "sk-SECRET"}]')
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "BOTSIM_LLM_PROVIDERS[0].model: String should have at least 1" in str(err.value)
    assert "sk-SECRET" not in str(err.value)
    monkeypatch.setenv("BOTSIM_LLM_PROVIDERS", '[{"name": "g", "kind": "groq", "model": "m"}]')
    with pytest.raises(ConfigError, match="needs an api_key"):
        load_settings()
    monkeypatch.setenv("BOTSIM_LLM_PROVIDERS",
                       '[{"name": "a", "kind": "openai_compatible", "model": "m"},'
                       ' {"name": "a", "kind": "openai_compatible", "model": "n"}]')
    with pytest.raises(ConfigError, match="unique"):
        load_settings()
    monkeypatch.setenv("BOTSIM_FERNET_KEY", "")
    monkeypatch.setenv("BOTSIM_LLM_PROVIDERS", "not json")
    with pytest.raises(ConfigError, match="BOTSIM_LLM_PROVIDERS"):
        load_settings()


def test_model_price_cost() -> None:
    from backend.schemas import ModelPrice

    price = ModelPrice(input=1.0, cached_input=0.5, output=2.0)
    assert price.cost_usd(1_000_000, 1_000_000, 400_000) == pytest.approx(0.6 + 0.2 + 2.0)
    assert ModelPrice(input=1.0, output=0).cost_usd(10, 0, 10) == pytest.approx(10 / 1e6)


def test_cache_ttl_capped_without_redis() -> None:
    local = Settings(cache_l1_ttl_s=300).make_cache()
    shared = Settings(cache_l1_ttl_s=300, redis_url="redis://127.0.0.1:6379/0").make_cache()
    assert local._l1_ttl_s == 2.0 and shared._l1_ttl_s == 300


def test_database_unreachable_tells_an_outage_from_a_bad_statement() -> None:
    import asyncpg
    from sqlalchemy.exc import IntegrityError, OperationalError

    from backend.db.session import database_unreachable

    refused = ConnectionRefusedError(111, "Connection refused")
    assert database_unreachable(refused)
    wrapped = OperationalError("SELECT 1", {}, refused)
    assert database_unreachable(wrapped)
    try:
        try:
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        except Exception as inner:
            raise RuntimeError("while recording the intent") from inner
    except RuntimeError as outer:
        assert database_unreachable(outer)
    assert not database_unreachable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not database_unreachable(ValueError("bad input"))

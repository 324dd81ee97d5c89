"""The admin API's models: token format, unknown fields, masking, no token in outputs."""

from __future__ import annotations

import random
import string
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from backend.api_schemas import (
    BotCreate,
    BotOut,
    BotUpdate,
    MessageOut,
    Page,
    SettingsPatch,
    mask_token,
)
from backend.crypto import TokenCipher
from backend.db.models import Bot, Message
from backend.errors import ValidationFailed
from backend.schemas import (
    HoldingList,
    MessageMeta,
    PrimeHours,
    SimulationSettings,
    StanceList,
)
from bots.personas import load_persona_dir

TOKEN = "7100000001:AAHsecretpartofthetoken_abcdefghij"
URLSAFE = string.ascii_letters + string.digits + "_-"


def body(**changes: Any) -> dict[str, Any]:
    persona = load_persona_dir()[0].model_dump(mode="json")
    return {**persona, "token": TOKEN, **changes}


def locs(exc: ValidationError) -> list[tuple[str | int, ...]]:
    return [tuple(e["loc"]) for e in exc.errors()]


def test_bot_create_valid_keeps_token_write_only() -> None:
    created = BotCreate.model_validate(body())
    assert created.token_value() == TOKEN
    assert TOKEN not in repr(created)
    assert TOKEN not in created.model_dump_json()
    persona = created.persona()
    assert persona.username == created.username and not hasattr(persona, "token")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "no-colon-at-all",
        "1234:AAHsecretpartofthetoken_abcdefghij",  # bot id too short
        "7100000001:short",  # secret too short
        "7100000001:AAHsecret part of the token abcdefghij",  # spaces
        "7100000001:" + "a" * 65,  # secret too long
        "abc:AAHsecretpartofthetoken_abcdefghij",
        TOKEN + "\n",  # "$" alone would let a trailing newline through
    ],
)
def test_bad_token_names_the_field_and_hides_the_input(token: str) -> None:
    with pytest.raises(ValidationError) as exc:
        BotCreate.model_validate(body(token=token))
    assert locs(exc.value) == [("token",)]
    if token.strip():
        assert token.strip() not in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        BotUpdate.model_validate({"token": token})
    assert locs(exc.value) == [("token",)]
    if token.strip():
        assert token.strip() not in str(exc.value)


def test_token_not_echoed_when_another_field_is_bad() -> None:
    with pytest.raises(ValidationError) as exc:
        BotCreate.model_validate(body(talkativeness=99))
    assert locs(exc.value) == [("talkativeness",)]
    assert "AAHsecret" not in str(exc.value)


@pytest.mark.parametrize("model", [BotCreate, BotUpdate, SettingsPatch])
def test_unknown_field_refused(model: type[Any]) -> None:
    data: dict[str, Any] = body() if model is BotCreate else {}
    with pytest.raises(ValidationError) as exc:
        model.model_validate({**data, "is_admin": True})
    assert locs(exc.value) == [("is_admin",)]
    assert exc.value.errors()[0]["type"] == "extra_forbidden"


def test_mask_token_never_shows_the_secret() -> None:
    rng = random.Random(1234)
    for _ in range(2000):
        bot_id = str(rng.randrange(10**4, 10**16))
        secret = "".join(rng.choice(URLSAFE) for _ in range(rng.randint(30, 64)))
        masked = mask_token(f"{bot_id}:{secret}")
        assert masked == f"{bot_id}:****{secret[-4:]}"
        assert secret[:-4] not in masked
        # no 5 consecutive characters of the secret survive
        assert not any(secret[i:i + 5] in masked for i in range(len(secret) - 4))
    for bad in ["", "abc", "123:short", "x:" + "y" * 40, ":" + "z" * 40]:
        assert mask_token(bad) == "****"


def make_bot_row(cipher: TokenCipher) -> Bot:
    persona = load_persona_dir()[0]
    return Bot(
        id=3, name=persona.name, username=persona.username, telegram_user_id=7100000001,
        token_encrypted=cipher.encrypt(TOKEN), persona=persona.profile(),
        stances=StanceList(items=list(persona.stances)),
        holdings=HoldingList(items=list(persona.holdings)), mood=0.25, enabled=True,
    )


def test_bot_out_never_carries_the_token() -> None:
    cipher = TokenCipher(Fernet.generate_key().decode())
    bot = make_bot_row(cipher)
    out = BotOut.from_row(bot, cipher)
    dumped = out.model_dump_json()
    secret = TOKEN.split(":", 1)[1]
    assert out.token_masked == "7100000001:****ghij"
    assert secret not in dumped and secret[:-4] not in dumped
    assert bot.token_encrypted.decode() not in dumped
    assert "token_encrypted" not in out.model_dump() and "token" not in out.model_dump()
    assert out.mood == 0.25 and out.username == bot.username
    page = Page[BotOut](items=[out], next_cursor=None).model_dump_json()
    assert secret[:-4] not in page


def test_message_out_keeps_text_plain() -> None:
    from datetime import UTC, datetime

    msg = Message(id=1, chat_id=2, bot_id=None, sender_id=5, sender_name="Deniz",
                  telegram_message_id=9, reply_to_telegram_message_id=None,
                  text="<b>kar</b> & zarar", meta=MessageMeta(), created_at=datetime.now(UTC))
    out = MessageOut.from_row(msg)
    assert out.text == "<b>kar</b> & zarar"
    assert out.kind == "text"


def test_bot_update_partial_and_merged() -> None:
    current = load_persona_dir()[0]
    upd = BotUpdate.model_validate({"bio": "Yeni bio.", "llm_providers": None})
    assert upd.persona_changes() == {"bio": "Yeni bio.", "llm_providers": None}
    merged = upd.merged(current)
    assert merged.bio == "Yeni bio." and merged.name == current.name
    with pytest.raises(ValidationError):
        BotUpdate.model_validate({"name": None})  # null only for llm_providers
    with pytest.raises(ValidationError) as exc:
        BotUpdate.model_validate({"username": "not_a_b0t"})
    assert locs(exc.value) == [("username",)]
    dup = [{"topic": "btc", "view": "bullish", "conviction": 0.5, "reason": "x"}] * 2
    with pytest.raises(ValidationFailed) as failed:
        BotUpdate.model_validate({"stances": dup}).merged(current)
    assert failed.value.problems[0][0] == "stances"


def test_settings_patch_merges_into_current() -> None:
    current = SimulationSettings()
    patch = SettingsPatch.model_validate({"prime_hours": {"boost": 2.0}, "max_msgs_per_min": 9})
    merged = patch.merged(current)
    assert merged.prime_hours.boost == 2.0
    assert merged.prime_hours.hours == current.prime_hours.hours  # kept
    assert merged.max_msgs_per_min == 9 and merged.scale_factor == current.scale_factor
    assert set(patch.changes(current)) == {"prime_hours", "max_msgs_per_min"}
    with pytest.raises(ValidationError) as exc:
        SettingsPatch.model_validate({"max_msgs_per_min": 21})
    assert locs(exc.value) == [("max_msgs_per_min",)]
    with pytest.raises(ValidationError):
        SettingsPatch.model_validate({"bot_hourly_msg_limit": {"min": 9, "max": 3}})
    with pytest.raises(ValidationError):
        SettingsPatch.model_validate({"scale_factor": None})
    # The merge validates the whole result: a current value that no longer fits is named.
    stale = current.model_copy(
        update={"prime_hours": PrimeHours.model_construct(hours=[9], boost=0.1,
                                                          timezone="UTC")}
    )
    with pytest.raises(ValidationFailed) as failed:
        SettingsPatch.model_validate({"prime_hours": {"hours": [10]}}).merged(stale)
    assert failed.value.problems[0][0] == "prime_hours.boost"

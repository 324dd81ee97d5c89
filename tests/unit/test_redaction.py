"""backend.redaction: secrets by shape and by registered value, in every log line's text,
arguments, exception and fields, in the plain and the JSON format."""

from __future__ import annotations

import io
import logging
import secrets
import sys
import threading
from collections.abc import Iterator

import pytest

from backend import redaction
from backend.crypto import TokenCipher, webhook_secret_for
from backend.redaction import MASK, redact, redact_fields, register_secret
from botsim import bootstrap
from tests.unit.test_logging_json import captured_logs, json_lines

log = logging.getLogger("botsim.test_logging")
TOKEN = "7100000001:AAH" + "x9Kq_2-" * 5  # the shape of a bot token, made up
HALF = TOKEN.partition(":")[2]


@pytest.fixture(autouse=True)
def _empty_registry() -> Iterator[None]:
    redaction.forget_secrets()
    yield
    redaction.forget_secrets()


@pytest.mark.parametrize(("text", "kept", "gone"), [
    (f"Set Bot API URL: http://127.0.0.1:8081/bot{TOKEN}", "bot7100000001:***", HALF),
    (f"POST /bot{TOKEN}/sendMessage", "/bot7100000001:***/sendMessage", HALF),
    ("Calling Bot API endpoint `setWebhook` with parameters `{'url': 'http://x/webhook/1', "
     "'secret_token': 'Zx9aQ1b2C3d4E5f6G7h8', 'max_connections': 40}`",
     "'secret_token': '***', 'max_connections': 40", "Zx9aQ1b2C3d4E5f6G7h8"),
    ("headers: X-Telegram-Bot-Api-Secret-Token: hUnTeR2hUnTeR2 host: x",
     "X-Telegram-Bot-Api-Secret-Token: ***", "hUnTeR2hUnTeR2"),
    ("[(b'x-telegram-bot-api-secret-token', b'hUnTeR2hUnTeR2')]",
     "b'x-telegram-bot-api-secret-token', b'***'", "hUnTeR2hUnTeR2"),
    ("Authorization: Bearer botsim_" + "Ab3_" * 11, "Authorization: Bearer ***", "Ab3_Ab3_"),
    ("send {'authorization': 'Bearer abc123def456ghi789'}", "'authorization': '***'",
     "abc123def456"),
    ("token botsim_" + "Zq9-" * 11 + " used", "token botsim_*** used", "Zq9-Zq9-"),
    ('body {"username": "admin", "password": "correct horse \\"battery\\""}',
     '"password": "***"}', "horse"),
    ("body username=admin&password=hunter2hunter2&next=/", "password=***&next=/",
     "hunter2"),
    ("login(username='admin', password='s3cr3t pass')", "password='***')", "s3cr3t"),
    ("key sk-proj-" + "A1b2C3d4" * 4 + " groq gsk_" + "Q9w8E7r6" * 4 + " google AIza"
     + "Sy0123456789abcdefghij0123456789abc",
     "key sk-*** groq gsk_*** google AIza***", "A1b2C3d4"),
    ("connect postgresql+asyncpg://botsim:pg-pass-123@db:5432/botsim",
     "postgresql+asyncpg://botsim:***@db:5432/botsim", "pg-pass-123"),
    ('{"api_key": "k-123456789", "API-KEY": "k-987654321"}',
     '{"api_key": "***", "API-KEY": "***"}', "k-"),
    # JSON inside a JSON string: escaped quotes
    ('"message": "{\\"password\\": \\"pw-1234567\\"}"', '\\"password\\": \\"***\\"',
     "pw-1234567"),
])
def test_shapes_are_masked(text: str, kept: str, gone: str) -> None:
    out = redact(text)
    assert kept in out
    assert gone not in out


@pytest.mark.parametrize("text", [
    "2026-01-01 12:00:00,123 INFO botsim.worker: turn sent [bot=12 chat=3 turn=9f1c]",
    "Request options: {'max_tokens': 300, 'tokens_per_min': 6000, 'model': 'gpt-4o-mini'}",
    "usage prompt_tokens=120 completion_tokens=40 total_tokens=160",
    "basic validation failed; the bearer of bad news",
    "metric botsim_llm_budget_left_ratio 0.5",
    "Call to Bot API endpoint `getMe` finished with return value `{'id': 7100000001}`",
    "http://127.0.0.1:8081/bot/getMe and redis://localhost:6379/0",
    "ask the sk-ilful; a task-force",
    "",
])
def test_ordinary_text_is_kept(text: str) -> None:
    assert redact(text) == text


def test_registered_values_are_masked_whatever_their_shape() -> None:
    master = secrets.token_urlsafe(32)
    key = "plain-words-key-" + secrets.token_hex(4)
    register_secret(master)
    register_secret(key)
    register_secret(TOKEN)
    register_secret("short")  # too short: ignored (it would mask words)
    register_secret(None)
    per_bot = webhook_secret_for(master, 5)  # registered as it is derived
    text = (f"a {master}b, {key}; '{per_bot}' {HALF} {TOKEN.replace(':', '%3A')} "
            "short words stay")
    out = redact(text)
    for secret in (master, key, per_bot, HALF):
        assert secret not in out
    assert "7100000001%3A***" in out and "short words stay" in out


def test_tokens_decrypted_or_encrypted_are_registered() -> None:
    cipher = TokenCipher(_fernet())
    other = f"7100000002:{secrets.token_urlsafe(26)}"
    ciphertext = cipher.encrypt(other)
    redaction.forget_secrets()
    assert cipher.decrypt(ciphertext) == other
    assert redact(f"half alone: {other.partition(':')[2]}") == "half alone: ***"


def _fernet() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def test_a_value_url_encoded_and_a_registry_bound() -> None:
    register_secret("pa ss/word+1234")
    assert redact("x=pa%20ss%2Fword%2B1234") == f"x={MASK}"
    small = redaction._Registry(limit=3)
    for i in range(5):
        small.add(f"value-number-{i:04d}-abcdef")
    assert len(small) == 3
    assert small.found_in("value-number-0000-abcdef") == []
    assert small.found_in("x value-number-0004-abcdef y") == ["value-number-0004-abcdef"]


def test_the_registry_is_safe_across_threads() -> None:
    values = [secrets.token_urlsafe(24) for _ in range(400)]
    errors: list[BaseException] = []

    def add(part: list[str]) -> None:
        try:
            for v in part:
                register_secret(v)
                redact(f"line {v} end")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(values[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(redact(f"<{v}>") == f"<{MASK}>" for v in values)


def test_plain_lines_masked_in_args_exception_and_stack() -> None:
    register_secret(secrets.token_urlsafe(32))
    with captured_logs("plain") as out:
        log.debug("calling %s with %r", f"/bot{TOKEN}/getMe", {"secret_token": "abcdefgh12"})
        try:
            raise RuntimeError(f"The token `{TOKEN}` was rejected by the server.")
        except RuntimeError:
            log.exception("failed for %s", TOKEN)
        log.warning("stack", stack_info=True, extra={"api_key": "sk-" + "z" * 30})
    text = out.getvalue()
    assert HALF not in text and "abcdefgh12" not in text
    assert "/bot7100000001:***/getMe" in text and "The token `7100000001:***` was" in text
    assert "Traceback" in text and "Stack (most recent call last)" in text


def test_json_lines_masked_in_every_field_and_still_json() -> None:
    with captured_logs("json") as out:
        log.info("login %s", '{"password": "pw \\"quoted\\" 123"}',
                 extra={"api_key": "anything-at-all", "nested": {"Secret_Token": "s-12345678",
                                                                "url": f"/bot{TOKEN}/x"},
                        "tokens_used": 42, "attempts": [TOKEN, 3]})
        try:
            raise ValueError(f"bad {TOKEN}")
        except ValueError:
            log.exception("boom")
    info, boom = json_lines(out)  # each line parses
    assert info["message"] == 'login {"password": "***"}'
    assert info["api_key"] == MASK and info["nested"] == {"Secret_Token": MASK,
                                                          "url": "/bot7100000001:***/x"}
    assert info["tokens_used"] == 42 and info["attempts"] == ["7100000001:***", 3]
    assert HALF not in boom["exception"] and "bad 7100000001:***" in boom["exception"]
    assert HALF not in out.getvalue()


def test_redact_fields_keeps_numbers_and_dates() -> None:
    import datetime as dt

    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert redact_fields({"n": 1, "f": 0.5, "b": True, "none": None, "at": when,
                          "obj": ValueError(TOKEN), "password": None}) == {
        "n": 1, "f": 0.5, "b": True, "none": None, "at": when, "obj": "7100000001:***",
        "password": None}


def test_uncaught_exceptions_are_printed_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    bootstrap.install_redacting_excepthooks()
    try:
        raise RuntimeError(f"The token `{TOKEN}` was rejected")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)

    def crash() -> None:
        raise RuntimeError(f"in a thread {TOKEN}")

    worker = threading.Thread(target=crash, name="t-1")
    worker.start()
    worker.join()
    text = err.getvalue()
    assert HALF not in text
    assert "The token `7100000001:***` was rejected" in text
    assert "Exception in thread t-1" in text and "in a thread 7100000001:***" in text


def test_settings_secrets_registered() -> None:
    from backend.settings import load_settings

    fernet, key, pg = _fernet(), secrets.token_urlsafe(24), secrets.token_urlsafe(12)
    settings = load_settings(
        fernet_key=fernet, secret_key="k" * 8 + secrets.token_urlsafe(32),
        database_url=f"postgresql://u:{pg}@db/botsim",
        llm_providers=[{"name": "g", "kind": "groq", "model": "m", "api_key": key}])
    bootstrap.register_settings_secrets(settings)
    assert redact(f"{fernet} {key} pass={pg}") == f"{MASK} {MASK} pass={MASK}"


def test_audit_helpers_still_importable_from_the_store() -> None:
    from backend.stores import audit

    assert audit.mask_secrets({"token": "x", "ok": TOKEN}) == {"token": MASK, "ok": MASK}
    assert audit.redact_tokens(f"t {TOKEN}") == f"t {MASK}"
    assert audit.is_secret_key("Bot-Token") and not audit.is_secret_key("name")

"""Secrets: bot tokens encrypted at rest (Fernet), webhook secret tokens, development keys.

A bot token is a password to the bot: it is kept encrypted in the database, never logged
(use :func:`mask_token`), and never put in a URL of ours (webhooks are routed by bot id).
Every secret made or read here (the keys, each derived webhook secret, each token encrypted
or decrypted) is registered with :mod:`backend.redaction`, so no log line shows it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from backend.errors import ConfigError
from backend.redaction import register_secret, register_secrets
from backend.settings import Settings


class TokenCipher:
    """Encrypts and decrypts bot tokens with a Fernet key (AES-128-CBC + HMAC-SHA256).

    Args:
        key: urlsafe-base64 Fernet key (44 characters).

    Raises:
        ConfigError: when the key is not a valid Fernet key.
    """

    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode() if isinstance(key, str) else key)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                "BOTSIM_FERNET_KEY is not a valid Fernet key (32 bytes, urlsafe base64)"
            ) from exc

    def encrypt(self, token: str) -> bytes:
        """Return the ciphertext of ``token``."""
        register_secret(token)
        return self._fernet.encrypt(token.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        """Return the plain token.

        Raises:
            ConfigError: when the ciphertext was made with another key (the key changed).
        """
        try:
            token = self._fernet.decrypt(ciphertext).decode()
        except InvalidToken as exc:
            raise ConfigError(
                "a bot token cannot be decrypted: BOTSIM_FERNET_KEY differs from the key"
                " it was encrypted with"
            ) from exc
        register_secret(token)
        return token


def mask_token(token: str) -> str:
    """Return a form of a bot token safe to show: ``"<bot id>:****<last 4>"``.

    At most the bot id (public anyway: it is the bot's Telegram user id) and the last 4
    characters of the secret part are kept. Anything that does not look like
    ``<digits>:<at least 12 characters>`` gives ``"****"`` (the last 4 characters of a short
    secret would give too much of it away). ``mask_token("1234567:AAH...wxyz")`` is
    ``"1234567:****wxyz"``.
    """
    head, sep, rest = token.partition(":")
    if not (sep and head.isdigit() and len(rest) >= 12):
        return "****"
    return f"{head}:****{rest[-4:]}"


def webhook_secret_for(master: str, bot_id: int) -> str:
    """Derive a bot's webhook ``secret_token`` from the master secret.

    Telegram allows 1–256 characters of ``A-Za-z0-9_-`` (core.telegram.org/bots/api#setwebhook);
    this returns 43 characters of urlsafe base64 of HMAC-SHA256(master, "webhook:<bot_id>").
    """
    digest = hmac.new(master.encode(), f"webhook:{bot_id}".encode(), hashlib.sha256).digest()
    secret = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    register_secret(secret)
    return secret


@dataclass(frozen=True)
class Secrets:
    """The secrets a process needs, resolved from settings (or dev key files)."""

    fernet_key: str
    webhook_secret: str

    def cipher(self) -> TokenCipher:
        """A :class:`TokenCipher` on ``fernet_key``."""
        return TokenCipher(self.fernet_key)


def _read_or_create(path: Path, make: str) -> str:
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(make + "\n")
    return make


def resolve_secrets(settings: Settings) -> Secrets:
    """Return the secrets from settings; in development, generate missing ones into files.

    Development mode writes ``fernet.key`` and ``webhook.secret`` (mode 0600) into
    ``settings.data_dir`` the first time and reuses them after. Production never generates.

    Raises:
        ConfigError: in production when a secret is missing (see ``Settings.check_secrets``).
    """
    settings.check_secrets()
    if settings.fernet_key is not None:
        fernet_key = settings.fernet_key.get_secret_value()
    else:
        fernet_key = _read_or_create(
            settings.data_dir / "fernet.key", Fernet.generate_key().decode()
        )
    if settings.webhook_secret is not None:
        webhook = settings.webhook_secret.get_secret_value()
    else:
        webhook = _read_or_create(settings.data_dir / "webhook.secret", secrets.token_urlsafe(32))
    register_secrets((fernet_key, webhook))
    TokenCipher(fernet_key)  # validate now, not on the first token
    return Secrets(fernet_key=fernet_key, webhook_secret=webhook)


def resolve_secret_key(settings: Settings) -> str:
    """Return the admin API's HMAC key; in development, generate it into a file if missing.

    Development writes ``secret.key`` (mode 0600, 43 characters of ``token_urlsafe(32)``) into
    ``settings.data_dir`` the first time and reuses it after, like :func:`resolve_secrets`.

    Raises:
        ConfigError: naming ``BOTSIM_SECRET_KEY`` in production when it is missing, and in any
            mode when the configured key is shorter than 32 characters.
    """
    min_chars = 32
    if settings.secret_key is None:
        if settings.env == "production":
            raise ConfigError(
                "production mode refuses to start the API without BOTSIM_SECRET_KEY"
                f" (at least {min_chars} characters; no default secrets outside development)"
            )
        key = _read_or_create(settings.data_dir / "secret.key", secrets.token_urlsafe(32))
        register_secret(key)
        return key
    key = settings.secret_key.get_secret_value()
    register_secret(key)
    if len(key) < min_chars:
        raise ConfigError(f"BOTSIM_SECRET_KEY must be at least {min_chars} characters")
    return key

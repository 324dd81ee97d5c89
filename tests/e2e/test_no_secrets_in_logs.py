"""No secret in any process's output at DEBUG (issue 18).

The listener (``botsim listener --register``, JSON lines), a worker (``botsim worker``,
plain lines), the admin API (``botsim api``, JSON lines) and ``botsim demo`` (plain) run as
processes of their own at ``BOTSIM_LOG_LEVEL=DEBUG`` against PostgreSQL, Redis, the sandbox
Telegram and the sandbox LLM (an OpenAI-kind provider with a made-up API key). A person
posts and a bot answers (python-telegram-bot logs its API URL, which holds the token, and
setWebhook's ``secret_token`` at DEBUG; the SDK calls the LLM with the key); the API sees a
failed and a good login, a new API token and a bearer request. Then every process's output
is searched for every secret of the run: each bot token and its secret half, the webhook
secret and each bot's webhook secret, the Fernet key, the secret key, the API key, the
admin password (and the wrong one tried), the session cookie, the CSRF token and the API
token; and for anything shaped like a bot token (the demo makes its own). None may appear.
A failure names the secret and the process, never the secret's value.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.api.security import SESSION_COOKIE, make_hasher
from backend.crypto import TokenCipher, webhook_secret_for
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import settings as settings_store
from backend.stores import users as user_store
from bots.personas import load_persona_dir
from loadtest.fleet import free_port
from sandbox.llm_api import LLMSandbox
from sandbox.telegram_api import TelegramSandbox
from tests.e2e.conftest import start_botsim, stop_all

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(120),
              pytest.mark.xdist_group("processes")]

ROOT = Path(__file__).resolve().parents[2]
CHAT = -100515151
HUMAN_ID = 902
STARTUP_S = 30.0
#: Anything shaped like a Telegram bot token.
TOKEN_SHAPE = re.compile(r"\d{5,}:[A-Za-z0-9_-]{30,}")


async def _wait_for(cond: Callable[[], Awaitable[bool]], seconds: float,
                    procs: list[subprocess.Popen[bytes]]) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if await cond():
            return True
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"process ended early: {dead}"
        await asyncio.sleep(0.1)
    return False


def leaks(outputs: dict[str, str], named_secrets: dict[str, str]) -> list[str]:
    """``"<secret name> in <process> (n times)"`` for each secret found in an output, and
    ``"a bot token's shape in <process>"``; never the secret itself."""
    found = []
    for process, output in outputs.items():
        for name, secret in named_secrets.items():
            if (n := output.count(secret)):
                found.append(f"{name} in {process} ({n} times)")
        if TOKEN_SHAPE.search(output):
            found.append(f"a bot token's shape in {process}")
    return found


async def test_no_secret_in_any_process_output_at_debug(
    pg_url: str, redis_url: str, pg_sessionmaker: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    fernet = Fernet.generate_key().decode()
    webhook_secret = secrets.token_urlsafe(32)
    secret_key = secrets.token_urlsafe(32)
    api_key = secrets.token_urlsafe(24)  # no provider's shape: only the registry finds it
    password, wrong_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    named: dict[str, str] = {"the Fernet key": fernet, "the webhook secret": webhook_secret,
                             "the secret key": secret_key, "the LLM API key": api_key,
                             "the admin password": password,
                             "the wrong password tried": wrong_password}
    sandbox = TelegramSandbox()
    sandbox.add_chat(CHAT, "Sır grubu", "supergroup")
    sandbox.add_member(CHAT, {"id": HUMAN_ID, "first_name": "Deniz", "username": "deniz"})
    async with pg_sessionmaker() as s, s.begin():
        chat = await chat_store.upsert_chat(s, telegram_chat_id=CHAT, title="Sır grubu",
                                            topics={"usdtry": 1.0})
        for i, persona in enumerate(load_persona_dir()[:3]):
            token = f"{8400000000 + i}:{secrets.token_urlsafe(26)}"
            bot = await bot_store.upsert_persona_bot(s, persona=persona, token=token,
                                                     cipher=TokenCipher(fernet))
            await chat_store.add_bot(s, chat_id=chat.id, bot_id=bot.id)
            sandbox.add_bot(token, persona.username, persona.name)
            sandbox.add_bot_to_chat(CHAT, token)
            named[f"bot token {i}"] = token
            named[f"bot token {i}'s secret half"] = token.partition(":")[2]
            named[f"bot {i}'s webhook secret"] = webhook_secret_for(webhook_secret, bot.id)
        await user_store.create_user(s, username="admin", role="admin",
                                     password_hash=make_hasher().hash(password))
        await settings_store.update_settings(s, changes={
            "reading_cap_s": 0.0, "typing_cap_s": 0.0, "max_msgs_per_min": 20,
            "bot_hourly_msg_limit": {"min": 600, "max": 600}})
    for demo_bot in range(1, 40):  # the demo's own bots: ids from 1 in its fresh database
        named[f"demo bot {demo_bot}'s webhook secret"] = webhook_secret_for(webhook_secret,
                                                                            demo_bot)
    llm = LLMSandbox()
    await sandbox.start()
    await llm.start()
    listener_port, api_port = free_port(), free_port()
    provider = {"name": "openai", "kind": "openai", "model": "gpt-4o-mini", "api_key": api_key,
                "base_url": llm.url_for("openai") + "/v1", "timeout_s": 10}
    env = {**os.environ, "DATABASE_URL": pg_url, "REDIS_URL": redis_url,
           "BOTSIM_REDIS_NAMESPACE": f"nosecret{os.getpid()}", "BOTSIM_FERNET_KEY": fernet,
           "BOTSIM_WEBHOOK_SECRET": webhook_secret, "BOTSIM_SECRET_KEY": secret_key,
           "BOTSIM_TELEGRAM_API_URL": sandbox.bot_api_url,
           "BOTSIM_PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{listener_port}",
           "BOTSIM_LISTENER_PORT": str(listener_port), "BOTSIM_API_HOST": "127.0.0.1",
           "BOTSIM_API_PORT": str(api_port), "BOTSIM_TICK_SECONDS": "0.2",
           "BOTSIM_HEARTBEAT_TTL_S": "3", "BOTSIM_SEED": "7", "BOTSIM_LOG_LEVEL": "DEBUG",
           "BOTSIM_LLM_PROVIDERS": json.dumps([provider]), "PTB_TIMEDELTA": "true"}
    for name in ("BOTSIM_LOG_FORMAT", "BOTSIM_TRACING", "BOTSIM_DATA_DIR"):
        env.pop(name, None)
    runs = {"listener": (["listener", "--register"], "json"), "worker": (["worker"], "plain"),
            "api": (["api"], "json"),
            "demo": (["demo", "--duration", "4", "--no-input", "--no-panel", "--llm",
                      "settings", "--no-realism"], "plain")}
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: tmp_path / f"{name}.log" for name in runs}
    try:
        for name, (args, log_format) in runs.items():
            (tmp_path / name).mkdir()
            own = {**env, "BOTSIM_DATA_DIR": str(tmp_path / name),
                   "BOTSIM_LOG_FORMAT": log_format}
            if name == "demo":  # its own SQLite database and sandbox; no Redis
                own = {k: v for k, v in own.items() if k not in ("DATABASE_URL", "REDIS_URL")}
            procs.append(start_botsim(args, own, logs[name]))

        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            async def up(url: str) -> bool:
                try:
                    return (await http.get(url)).status_code == 200
                except httpx.HTTPError:
                    return False

            async def ready() -> bool:  # webhooks are registered before the listener serves
                return (await up(f"http://127.0.0.1:{listener_port}/health/ready")
                        and await up(f"http://127.0.0.1:{api_port}/health/live"))

            servers = procs[:3]  # the demo ends by itself
            assert await _wait_for(ready, STARTUP_S, servers), "the listener or API never got up"
            human = await sandbox.post_as_human(CHAT, HUMAN_ID, "Dolar nereye gider sizce?")

            api = f"http://127.0.0.1:{api_port}/api/v1"
            bad = await http.post(f"{api}/auth/login",
                                  json={"username": "admin", "password": wrong_password})
            assert bad.status_code == 401
            login = await http.post(f"{api}/auth/login",
                                    json={"username": "admin", "password": password})
            assert login.status_code == 200, login.text
            named["the session cookie"] = login.cookies[SESSION_COOKIE]
            named["the CSRF token"] = login.json()["csrf_token"]
            made = await http.post(f"{api}/auth/tokens", json={"name": "ci", "scope": "admin"},
                                   headers={"X-CSRF-Token": named["the CSRF token"]})
            assert made.status_code == 201, made.text
            named["the API token"] = made.json()["token"]
            http.cookies.clear()
            bearer = {"Authorization": f"Bearer {named['the API token']}"}
            assert (await http.get(f"{api}/auth/me", headers=bearer)).status_code == 200
            assert (await http.get(f"{api}/bots", headers=bearer)).status_code == 200

        async def answered() -> bool:
            return any(m["from"]["is_bot"] and (m.get("reply_to_message") or {}).get(
                "message_id") == human["message_id"] for m in sandbox.messages(CHAT))

        assert await _wait_for(answered, 30, procs[:3]), "no bot answered the person"
        demo = procs[-1]
        await asyncio.to_thread(demo.wait, 60)
        assert demo.returncode == 0, logs["demo"].read_text(errors="replace")[-2000:]
    finally:
        stop_all(procs)
        await sandbox.stop()
        await llm.stop()

    outputs = {name: path.read_text(errors="replace") for name, path in logs.items()}
    assert "Set Bot API URL" in outputs["worker"]  # python-telegram-bot did log at DEBUG
    assert '"level": "DEBUG"' in outputs["listener"]
    assert "Summary" in outputs["demo"]
    found = leaks(outputs, named)
    assert not found, "secrets in the output: " + "; ".join(found)

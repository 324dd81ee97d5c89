"""Going live (issue 15, item 5): ``botsim bots import`` and ``botsim preflight``.

The acceptance test: three bots imported into our database (SQLite and PostgreSQL, the
``sessionmaker`` fixture) and configured in sandbox Telegram groups
(``sandbox.telegram_api``, driven by python-telegram-bot), one with privacy mode on, one
kicked from its group, one whose token was revoked: ``botsim preflight`` names the three
problems with their bot and fix and exits 1; once fixed (privacy off, the bot added back,
the new token imported with ``botsim bots import``) it exits 0. The CLI runs in a thread
(its own event loop, as in a process) while the sandbox serves on the test's loop; one run
goes through the installed ``botsim`` entry point in a subprocess.

Then: ``bots import`` refusing bad files (every problem named by row and field, nothing
written, no token echoed) and taking good CSV and YAML; ``GET /api/v1/bots/{id}/preflight``
and the preflight section of the bot's panel page.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.api.app import create_app
from backend.cache import TwoLayerCache
from backend.crypto import Secrets
from backend.db.models import Bot, Chat, ChatBot
from backend.settings import Settings
from backend.stores import bots as bot_store
from backend.stores import users as user_store
from behavior_engine.reads import CachedReads
from bots.telegram import BotClient, webhook_url_for
from botsim.cli import main as cli_main
from sandbox.telegram_api import BackgroundServer, TelegramSandbox
from tests.conftest import cheap_hasher

Sessions = async_sessionmaker[AsyncSession]
ROOT = Path(__file__).resolve().parents[2]
FERNET = Fernet.generate_key().decode()
WEBHOOK_SECRET = "w" * 40
G1, G2 = -1001500000001, -1001500000002
#: (token, username, name, persona name in the import file)
AYSE = ("7500000001:AAHayseSecretPart_0123456789abcdefgh", "ayse_scalper_bot", "Ayşe Scalper",
        "ayse")
MEHMET = ("7500000002:AAHmehmetSecretPart_0123456789abcdef", "mehmet_yatirimci_bot",
          "Mehmet Yatırımcı", "mehmet_yatirimci_bot")
ZEYNEP = ("7500000003:AAHzeynepSecretPart_0123456789abcdef", "zeynep_yeni_bot", "Zeynep",
          "Zeynep")


@dataclass
class World:
    sandbox: TelegramSandbox
    public_url: str
    env: dict[str, str]
    tmp: Path


async def _ok(request: Request) -> Response:
    return Response(status_code=200)


@pytest.fixture
async def world(tmp_path: Path, db_url: str, sessionmaker: Sessions,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    """The sandbox with the three bots and two groups, a webhook receiver answering 200,
    and ``botsim``'s environment pointing at them and at the test database."""
    sandbox = TelegramSandbox()
    for token, username, name, _ in (AYSE, MEHMET, ZEYNEP):
        sandbox.add_bot(token, username, name)
    sandbox.add_chat(G1, "Piyasa Sohbeti")
    sandbox.add_chat(G2, "Kripto & Döviz")
    await sandbox.start()
    receiver = await BackgroundServer.start(Starlette(routes=[
        Route("/webhook/{bot_id}", _ok, methods=["POST"])]))
    for name in list(os.environ):
        if name.startswith("BOTSIM_"):
            monkeypatch.delenv(name)
    env = {"DATABASE_URL": db_url, "BOTSIM_DATA_DIR": str(tmp_path / "data"),
           "BOTSIM_FERNET_KEY": FERNET, "BOTSIM_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "BOTSIM_TELEGRAM_API_URL": sandbox.bot_api_url,
           "BOTSIM_PUBLIC_WEBHOOK_URL": receiver.url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        yield World(sandbox, receiver.url, env, tmp_path)
    finally:
        await receiver.stop()
        await sandbox.stop()


async def cli(*argv: str) -> int:
    """``botsim ARGV`` in a thread: its own event loop, as in its own process."""
    return await asyncio.to_thread(cli_main, list(argv))


def _yaml_file(path: Path, rows: list[dict[str, Any]]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(rows, allow_unicode=True), encoding="utf-8")
    return path


async def _bot_ids(sm: Sessions) -> dict[str, int]:
    async with sm() as s:
        return {b.username: b.id for b in await bot_store.list_bots(s)}


async def _set_webhooks(world: World, tokens: dict[int, str]) -> None:
    for bot_id, token in tokens.items():
        client = BotClient(bot_id=bot_id, token=token, base_url=world.sandbox.bot_api_url)
        try:
            await client.set_webhook(url=webhook_url_for(world.public_url, bot_id),
                                     secret_token="s" * 32)
        finally:
            await client.close()


def _findings(report: dict[str, Any], username: str) -> list[dict[str, Any]]:
    bot = next(b for b in report["bots"] if b["username"] == username)
    return list(bot["findings"])


def _assert_no_token(text: str, *tokens: str) -> None:
    for token in tokens:
        assert token not in text
        assert token.split(":", 1)[1] not in text


async def test_preflight_names_each_problem_and_passes_once_fixed(
        world: World, sessionmaker: Sessions, db_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    sb = world.sandbox
    rows = [{"token": AYSE[0], "persona": AYSE[3], "groups": [G1, f"{G2}=Kripto & Döviz"]},
            {"token": MEHMET[0], "persona": MEHMET[3],
             "groups": [{"id": G1, "title": "Piyasa Sohbeti", "talkativeness": 2.0}]},
            {"token": ZEYNEP[0], "persona": ZEYNEP[3], "groups": [G2]}]
    assert await cli("bots", "import", str(_yaml_file(world.tmp / "bots.yaml", rows))) == 0
    out = capsys.readouterr()
    _assert_no_token(out.out + out.err, AYSE[0], MEHMET[0], ZEYNEP[0])
    assert "created bot" in out.out and "7500000001:****efgh" in out.out
    ids = await _bot_ids(sessionmaker)
    for token, _username, _, _ in (AYSE, MEHMET, ZEYNEP):
        for group in (G1, G2):
            sb.add_bot_to_chat(group, token)
    await _set_webhooks(world, {ids[u]: t for t, u, _, _ in (AYSE, MEHMET, ZEYNEP)})

    # Everything in order first.
    assert await cli("preflight") == 0, capsys.readouterr().out
    capsys.readouterr()

    # Three problems: privacy on, kicked from its group, token revoked.
    sb.set_privacy(AYSE[0], True)
    sb.kick_bot(G1, MEHMET[0])
    new_zeynep = sb.revoke_token(ZEYNEP[0])
    assert await cli("preflight", "--json") == 1
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert len(lines) == 1  # one JSON object on one line
    report = json.loads(lines[0])
    _assert_no_token(out.out + out.err, AYSE[0], MEHMET[0], ZEYNEP[0], new_zeynep)
    assert report["ok"] is False and report["problems"] == 3

    ayse = [f for f in _findings(report, AYSE[1]) if f["status"] == "fail"]
    assert [f["check"] for f in ayse] == ["privacy"]
    assert "privacy mode on" in ayse[0]["detail"]
    assert "BotFather: /setprivacy → @ayse_scalper_bot → Disable" in ayse[0]["fix"]

    mehmet = [f for f in _findings(report, MEHMET[1]) if f["status"] == "fail"]
    assert [(f["check"], f["telegram_chat_id"]) for f in mehmet] == [("membership", G1)]
    assert "kicked" in mehmet[0]["detail"]
    assert "add @mehmet_yatirimci_bot to Piyasa Sohbeti" in mehmet[0]["fix"]
    assert "allow it to send messages" in mehmet[0]["fix"]

    zeynep = _findings(report, ZEYNEP[1])
    assert [(f["check"], f["status"]) for f in zeynep] == [("token", "fail")]  # no more calls
    assert "revoked" in zeynep[0]["detail"]
    assert "BotFather: /token" in zeynep[0]["fix"] and "botsim bots import" in zeynep[0]["fix"]

    # The table names the same, with the bot on its rows.
    assert await cli("preflight") == 1
    table = capsys.readouterr().out
    for text in ("@ayse_scalper_bot", "@mehmet_yatirimci_bot", "@zeynep_yeni_bot", "PROBLEM",
                 "/setprivacy", "Piyasa Sohbeti", "/revoke", "3 problem(s)"):
        assert text in table, text
    _assert_no_token(table, AYSE[0], MEHMET[0], ZEYNEP[0], new_zeynep)

    if db_url.startswith("sqlite"):  # the installed entry point, in a process of its own
        # (asynchronously: the sandbox answers on this loop meanwhile)
        proc = await asyncio.create_subprocess_exec(
            str(ROOT / ".venv/bin/botsim"), "preflight", "--json", "--bot",
            str(ids[ZEYNEP[1]]), env={**os.environ, **world.env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        raw_out, raw_err = await asyncio.wait_for(proc.communicate(), 60)
        stdout, stderr = raw_out.decode(), raw_err.decode()
        assert proc.returncode == 1, stderr
        only = json.loads(stdout.strip().splitlines()[-1])
        assert [b["username"] for b in only["bots"]] == [ZEYNEP[1]]
        assert only["bots"][0]["findings"][0]["detail"] == (
            "Telegram refuses the token (wrong or revoked)")
        _assert_no_token(stdout + stderr, ZEYNEP[0], new_zeynep)

    # Fixed: privacy off, the bot added back, the new token imported.
    sb.set_privacy(AYSE[0], False)
    sb.add_bot_to_chat(G1, MEHMET[0])
    fix = _yaml_file(world.tmp / "new-token.yaml",
                     [{"token": new_zeynep, "persona": "zeynep_yeni_bot", "groups": [G2]}])
    assert await cli("bots", "import", str(fix)) == 0
    out = capsys.readouterr().out
    assert "token replaced" in out and f"{new_zeynep.split(':')[0]}:****" in out
    _assert_no_token(out, new_zeynep)

    assert await cli("preflight", "--json") == 0
    report = json.loads(capsys.readouterr().out.strip())
    assert report["ok"] is True and report["problems"] == 0
    # /revoke removed Zeynep's webhook: a warning until the listener registers it again.
    webhook = next(f for f in _findings(report, ZEYNEP[1]) if f["check"] == "webhook")
    assert webhook["status"] == "warn" and "listener --register" in webhook["fix"]
    assert await cli("preflight", "--strict") == 1  # --strict: warnings fail too
    capsys.readouterr()


async def test_preflight_restricted_promoted_and_foreign_webhook(
        world: World, sessionmaker: Sessions, capsys: pytest.CaptureFixture[str]) -> None:
    sb = world.sandbox
    rows = [{"token": AYSE[0], "persona": AYSE[3], "groups": [G1, G2]},
            {"token": MEHMET[0], "persona": MEHMET[3], "groups": [G1]}]
    assert await cli("bots", "import", str(_yaml_file(world.tmp / "b.yaml", rows))) == 0
    ids = await _bot_ids(sessionmaker)
    for group in (G1, G2):
        sb.add_bot_to_chat(group, AYSE[0])
    sb.add_bot_to_chat(G1, MEHMET[0])
    # Ayşe: privacy on but an administrator in both groups; Mehmet: restricted in G1, and
    # a webhook of someone else's.
    sb.set_privacy(AYSE[0], True)
    sb.promote_bot(G1, AYSE[0])
    sb.promote_bot(G2, AYSE[0])
    sb.restrict_bot(G1, MEHMET[0])
    await _set_webhooks(world, {ids[AYSE[1]]: AYSE[0]})
    client = BotClient(bot_id=ids[MEHMET[1]], token=MEHMET[0], base_url=sb.bot_api_url)
    try:
        await client.set_webhook(url=f"http://127.0.0.1:9/hook/{MEHMET[0]}", secret_token="x")
    finally:
        await client.close()
    capsys.readouterr()
    assert await cli("preflight", "--json") == 1
    out = capsys.readouterr().out
    _assert_no_token(out, AYSE[0], MEHMET[0])
    report = json.loads(out)
    ayse = {f["check"]: f for f in _findings(report, AYSE[1])}
    assert ayse["privacy"]["status"] == "ok" and "administrator" in ayse["privacy"]["detail"]
    mehmet = [f for f in _findings(report, MEHMET[1]) if f["status"] == "fail"]
    assert {f["check"] for f in mehmet} == {"membership", "webhook"}
    member = next(f for f in mehmet if f["check"] == "membership")
    assert "may not send messages" in member["detail"] and "allow Send messages" in member["fix"]
    hook = next(f for f in mehmet if f["check"] == "webhook")
    assert "points elsewhere" in hook["detail"] and "7500000002:****" in hook["detail"]


# --- bots import: bad and good files ----------------------------------------------------


async def _counts(sm: Sessions) -> tuple[int, int, int]:
    async with sm() as s:
        return tuple([int((await s.execute(select(func.count()).select_from(t))).scalar_one())
                      for t in (Bot, Chat, ChatBot)])  # type: ignore[return-value]


BAD_CSV = """token,persona,groups,talkativeness
7500000001:short,ayse,-1001500000001,
7500000002:AAHmehmetSecretPart_0123456789abcdef,nobody_known,-1001500000001,
7500000002:AAHmehmetSecretPart_0123456789abcdef,mehmet,1234,
7500000003:AAHzeynepSecretPart_0123456789abcdef,ayse,-1001500000002,99
7500000004:AAHotherSecretPart_0123456789abcdefg,personas/missing.yaml,,
"""


async def test_import_refuses_bad_csv_naming_row_and_field(
        world: World, sessionmaker: Sessions, capsys: pytest.CaptureFixture[str]) -> None:
    path = world.tmp / "bad.csv"
    path.write_text(BAD_CSV, encoding="utf-8")
    assert await cli("bots", "import", str(path)) == 2
    err = capsys.readouterr().err
    assert "refused, nothing written" in err
    expected = [
        ("row 1 (line 2), token", "bad token format"),
        ("row 2 (line 3), persona", "unknown persona 'nobody_known'"),
        ("row 3 (line 4), token", "the same token as row 2 (line 3)"),
        ("row 3 (line 4), groups", "negative integer"),
        ("row 4 (line 5), talkativeness", "99 is outside"),
        ("row 4 (line 5), persona", "username @ayse_scalper_bot is also row 1"),
        ("row 5 (line 6), groups", "missing"),
        ("row 5 (line 6), persona", "no persona file 'personas/missing.yaml'"),
    ]
    for where, reason in expected:
        assert any(where in line and reason in line for line in err.splitlines()), (where, err)
    assert "short" not in err and "AAHmehmet" not in err  # no token, whole or in part
    assert await _counts(sessionmaker) == (0, 0, 0)


async def test_import_refuses_bad_yaml_and_stored_conflicts(
        world: World, sessionmaker: Sessions, capsys: pytest.CaptureFixture[str]) -> None:
    good = [{"token": AYSE[0], "persona": "ayse", "groups": [G1]}]
    assert await cli("bots", "import", str(_yaml_file(world.tmp / "a.yaml", good))) == 0
    capsys.readouterr()
    before = await _counts(sessionmaker)
    bad = [{"token": 7500000009, "persona": "ayse", "groups": [G1]},
           {"token": AYSE[0].replace("ayse", "AYSE"), "persona": "mehmet", "groups": [G1]},
           {"token": ZEYNEP[0], "persona": "zeynep", "groups": [{"id": G2, "colour": "red"}]},
           "not a mapping",
           {"token": MEHMET[0], "persona": "mehmet_yatirimci_bot", "groups": [],
            "extra": 1}]
    assert await cli("bots", "import", str(_yaml_file(world.tmp / "bad.yaml", bad))) == 2
    err = capsys.readouterr().err
    for where, reason in [
            ("row 1, token", "expected a string"),
            ("row 2, token", "this token's bot is stored as @ayse_scalper_bot"),
            ("row 3, groups", "unknown field(s) colour"),
            ("row 4, (row)", "expected a mapping"),
            ("row 5, (row)", "unknown field(s) extra"),
            ("row 5, groups", "at least one group")]:
        assert any(where in line and reason in line for line in err.splitlines()), (where, err)
    assert await _counts(sessionmaker) == before
    (world.tmp / "x.txt").write_text("token\n", encoding="utf-8")
    assert await cli("bots", "import", str(world.tmp / "x.txt")) == 2
    assert "use .csv, .yaml or .yml" in capsys.readouterr().err


async def test_import_good_csv_then_yaml_updates(
        world: World, sessionmaker: Sessions, capsys: pytest.CaptureFixture[str]) -> None:
    persona_dir = world.tmp / "personas"
    persona_dir.mkdir()
    text = (ROOT / "bots/personas/ali_hoca.yaml").read_text(encoding="utf-8")
    (persona_dir / "ali.yaml").write_text(text, encoding="utf-8")
    csv_path = world.tmp / "bots.csv"
    csv_path.write_text(
        "persona,token,groups,talkativeness\n"
        f"personas/ali.yaml,{AYSE[0].replace('7500000001', '7500000011')},"
        f"{G1}=Piyasa Sohbeti;{G2},1.5\n"
        f"Ayşe Scalper,{AYSE[0]},{G2}=Kripto & Döviz,\n", encoding="utf-8")
    assert await cli("bots", "import", "--dry-run", str(csv_path)) == 0
    assert "nothing written" in capsys.readouterr().out
    assert await _counts(sessionmaker) == (0, 0, 0)
    assert await cli("bots", "import", str(csv_path)) == 0
    out = capsys.readouterr().out
    assert "created 2 bot(s), updated 0" in out
    assert "created group" in out and "talkativeness 1.5" in out
    _assert_no_token(out, AYSE[0])
    assert await _counts(sessionmaker) == (2, 2, 3)
    async with sessionmaker() as s:
        chats = {c.telegram_chat_id: c for c in (await s.execute(select(Chat))).scalars()}
        members = {(m.chat_id, m.bot_id): m.talkativeness
                   for m in (await s.execute(select(ChatBot))).scalars()}
        bots = {b.username: b for b in await bot_store.list_bots(s)}
    assert chats[G1].title == "Piyasa Sohbeti" and chats[G2].title == "Kripto & Döviz"
    assert set(chats[G2].topics.weights) >= {"btc", "usdtry"}  # its members' topics
    ali = bots["ali_hoca_ekonomist_bot"]
    assert members[(chats[G1].id, ali.id)] == 1.5
    assert members[(chats[G2].id, bots["ayse_scalper_bot"].id)] is None
    assert ali.telegram_user_id == 7500000011
    # The same bots again from YAML: updated, the title changed, one membership added.
    rows = [{"token": AYSE[0], "persona": "ayse_scalper_bot",
             "groups": [{"id": G1, "title": "Piyasa", "talkativeness": 3}, G2]}]
    assert await cli("bots", "import", str(_yaml_file(world.tmp / "u.yml", rows))) == 0
    out = capsys.readouterr().out
    assert "updated bot" in out and "token unchanged" in out and "updated group" in out
    assert await _counts(sessionmaker) == (2, 2, 4)


# --- the admin API and the panel --------------------------------------------------------


async def test_api_route_and_panel_section(
        world: World, sessionmaker: Sessions, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"token": AYSE[0], "persona": "ayse", "groups": [f"{G1}=Piyasa Sohbeti"]}]
    assert await cli("bots", "import", str(_yaml_file(world.tmp / "a.yaml", rows))) == 0
    capsys.readouterr()
    bot_id = (await _bot_ids(sessionmaker))[AYSE[1]]
    world.sandbox.set_privacy(AYSE[0], True)  # and not in G1: two problems
    hasher = cheap_hasher()
    settings = Settings(data_dir=world.tmp, secret_key="k" * 40,
                        telegram_api_url=world.sandbox.bot_api_url,
                        public_webhook_url=world.public_url)
    cache = TwoLayerCache(redis_url=None)
    await cache.start()
    app = create_app(settings, sessionmaker, hasher=hasher, reads=CachedReads(cache, sessionmaker),
                     secrets=Secrets(fernet_key=FERNET, webhook_secret=WEBHOOK_SECRET))
    async with sessionmaker() as s, s.begin():
        await user_store.create_user(s, username="vera", role="viewer",
                                     password_hash=hasher.hash("viewer password 1"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as anon, \
            httpx.AsyncClient(transport=transport, base_url="http://t") as viewer:
        r = await viewer.post("/api/v1/auth/login",
                              json={"username": "vera", "password": "viewer password 1"})
        assert r.status_code == 200
        assert (await anon.get(f"/api/v1/bots/{bot_id}/preflight")).status_code == 401
        r = await viewer.get(f"/api/v1/bots/{bot_id}/preflight")
        assert r.status_code == 200, r.text
        body = r.json()
        _assert_no_token(r.text, AYSE[0])
        assert body["ok"] is False and body["token_masked"] == "7500000001:****efgh"
        fails = {f["check"]: f for f in body["findings"] if f["status"] == "fail"}
        assert set(fails) == {"privacy", "membership"}
        assert "/setprivacy" in fails["privacy"]["fix"]
        assert fails["membership"]["telegram_chat_id"] == G1
        assert (await viewer.get("/api/v1/bots/999999/preflight")).status_code == 404
        spec = (await viewer.get("/api/v1/openapi.json")).json()
        op = spec["paths"]["/api/v1/bots/{bot_id}/preflight"]["get"]
        assert "bots" in op["tags"] and {"200", "404"} <= set(op["responses"])
        assert "getChatMember" in op["description"]

        page = await viewer.get(f"/personas/{bot_id}")
        assert page.status_code == 200
        assert 'id="preflight-run"' in page.text and "preflight-findings" not in page.text
        page = await viewer.get(f"/personas/{bot_id}?preflight=1")
        assert page.status_code == 200
        html = page.text
        assert 'data-ok="false"' in html and 'data-status="fail"' in html
        assert "BotFather: /setprivacy → @ayse_scalper_bot → Disable" in html
        assert "add @ayse_scalper_bot to Piyasa Sohbeti" in html
        _assert_no_token(html, AYSE[0])
    await cache.close()

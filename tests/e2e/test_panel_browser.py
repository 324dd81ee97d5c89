"""The admin panel in a real browser: Playwright for Python driving Debian's ``chromium``.

``botsim demo`` runs as a subprocess (sandbox Telegram, listener, one worker and the panel,
all on 127.0.0.1). The admin logs in, creates a persona for a bot registered in the sandbox
(as BotFather would), adds it to the demo group in the panel (and, as a member would in the
Telegram app, to the sandbox group), and sees it post in the live view. A viewer's edit is
refused. The live view's screenshot is saved to ``.artifacts/panel-live.png``.

Skips without the ``playwright`` package or ``/usr/bin/chromium`` (fails when ``CI`` is
set: ``.ci/run`` installs chromium).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from botsim.demo import DEMO_CHAT_ID, HUMAN_ID
from tests.conftest import service_missing

# xdist_group: with the other process-heavy tests, on one xdist worker (see test_sharded).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("processes")]
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("BOTSIM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / ".artifacts"
VIEWER_PW = "viewer password for the browser test"
#: The issue's bound: the new persona posts in the live view within this many seconds.
POST_WITHIN_S = 60.0
PANEL_RE = re.compile(r"Admin panel: (http://\S+?)/ \(log in as (\S+) with password (\S+);")
SANDBOX_RE = re.compile(r"sandbox Telegram (http://\S+?),")


@dataclass
class Demo:
    url: str
    admin: str
    password: str
    sandbox: str
    data_dir: Path


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return out


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """A running ``botsim demo`` (stopped by itself after 240 s, or at teardown)."""
    env = {**os.environ, "BOTSIM_DATA_DIR": str(tmp_path), "BOTSIM_API_PORT": "0",
           "PYTHONUNBUFFERED": "1"}
    env.pop("BOTSIM_REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "botsim", "demo", "--duration", "240"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    lines = _lines(proc)
    seen: list[str] = []
    panel = sandbox = None
    deadline = time.monotonic() + 60
    try:
        while (panel is None or sandbox is None) and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            seen.append(line)
            panel = panel or PANEL_RE.search(line)
            sandbox = sandbox or SANDBOX_RE.search(line)
        assert panel is not None and sandbox is not None, "demo did not start:\n" + "".join(seen)
        yield Demo(url=panel.group(1), admin=panel.group(2), password=panel.group(3),
                   sandbox=sandbox.group(1), data_dir=tmp_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _create_viewer(demo: Demo) -> None:
    """``botsim admin create-user vera --role viewer`` against the demo's database."""
    env = {**os.environ, "BOTSIM_DATA_DIR": str(demo.data_dir),
           "BOTSIM_DATABASE_URL": f"sqlite+aiosqlite:///{demo.data_dir / 'demo.db'}",
           "BOTSIM_NEW_USER_PASSWORD": VIEWER_PW}
    done = subprocess.run(
        [sys.executable, "-m", "botsim", "admin", "create-user", "vera", "--role",
         "viewer"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _sandbox(demo: Demo, path: str, body: dict[str, Any]) -> Any:
    r = httpx.post(demo.sandbox + path, json=body, timeout=10, trust_env=False)
    assert r.status_code == 200, r.text
    return r.json()["result"]


def _browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("playwright", "the package is not installed (pip install -e '.[test]')")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        service_missing("chromium", f"{CHROMIUM} not found (apt-get install chromium)")
    return sync_playwright()


def _bots_held(page: Any, demo: Demo) -> int:
    """Bots the demo's worker drives, from ``GET /api/v1/providers/health`` (the page's
    session)."""
    r = page.request.get(demo.url + "/api/v1/providers/health")
    assert r.ok, r.text()
    return sum(w["bots"] or 0 for w in r.json()["workers"] or [])


def _log_in(page: Any, demo: Demo, username: str, password: str) -> None:
    page.goto(demo.url + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(demo.url + "/")


def test_admin_creates_a_persona_that_posts_and_a_viewer_cannot_edit(demo: Demo) -> None:
    # The persona joins first, while the demo chat still has room under its per-minute cap
    # (once spent, a newcomer's first message waits for the minute to roll over); the
    # viewer is made afterwards.
    created = _sandbox(demo, "/sandbox/bots", {"username": "browser_test_bot",
                                               "first_name": "Tarayıcı Tuncay"})
    token, tg_user = created["token"], created["user"]
    with _browser() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox"])
        try:
            admin = browser.new_context(viewport={"width": 1280, "height": 900})
            page = admin.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            _log_in(page, demo, demo.admin, demo.password)

            # Create the persona: the example persona under this bot's name and username.
            page.goto(demo.url + "/personas/new")
            persona = json.loads(page.input_value("#persona-json"))
            # The most talkative of the group (the demo's chatter comes in bursts and lulls,
            # issue 14), and named by the human below: a mention picks the bot it names.
            persona.update(name="Tarayıcı Tuncay", username="browser_test_bot",
                           talkativeness=10.0)
            page.fill("#token", token)
            page.fill("#persona-json", json.dumps(persona, ensure_ascii=False))
            page.click("#create")
            page.wait_for_url(re.compile(re.escape(demo.url) + r"/personas/\d+$"))
            bot_id = int(page.url.rsplit("/", 1)[1])
            assert token not in page.content()

            # Add it to the demo group in the panel, then in the sandbox's "app".
            row = page.locator(".chat-membership").first
            assert row.get_attribute("data-member") == "false"
            held = _bots_held(page, demo)
            row.locator("button[data-chat-id]").click()
            page.wait_for_selector(".chat-membership[data-member=true]")
            _sandbox(demo, f"/sandbox/chats/{DEMO_CHAT_ID}/bots", {"bot_id": tg_user["id"]})
            # The worker takes the new member on at its next heartbeat. Until it does, a mention
            # of it is answered by another bot (a fixed 3 s sleep lost that race in CI, and the
            # persona then waited for a lull to end before it spoke).
            deadline = time.monotonic() + 30
            while _bots_held(page, demo) <= held:
                assert time.monotonic() < deadline, "the worker never took the bot on"
                time.sleep(0.25)
            _sandbox(demo, f"/sandbox/chats/{DEMO_CHAT_ID}/messages",
                     {"user_id": HUMAN_ID, "text": "@browser_test_bot hoş geldin, ne alıyorsun?"})

            # The live view shows its first message within the bound.
            started = time.monotonic()
            page.goto(demo.url + "/")
            page.wait_for_selector("#stream-state:has-text('live')", timeout=15_000)
            mine = page.locator("li.msg .sender", has_text="Tarayıcı Tuncay")
            mine.first.wait_for(timeout=POST_WITHIN_S * 1000)
            waited = time.monotonic() - started
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "panel-live.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
            assert waited <= POST_WITHIN_S
            assert problems == [], problems

            # A viewer sees the editor, but saving is refused and nothing changes.
            _create_viewer(demo)
            viewer = browser.new_context()
            vpage = viewer.new_page()
            _log_in(vpage, demo, "vera", VIEWER_PW)
            vpage.goto(f"{demo.url}/personas/{bot_id}")
            edited = json.loads(vpage.input_value("#persona-json"))
            edited["name"] = "Viewer was here"
            vpage.fill("#persona-json", json.dumps(edited, ensure_ascii=False))
            vpage.click("#persona-form button[type=submit]")
            vpage.wait_for_selector("#persona-status:has-text('not saved')")
            assert "error 403" in vpage.inner_text("#persona-errors")
            vpage.goto(f"{demo.url}/personas/{bot_id}")
            assert json.loads(vpage.input_value("#persona-json"))["name"] == "Tarayıcı Tuncay"
            # ... and the viewer's membership change is refused too.
            vpage.locator(".chat-membership button[data-chat-id]").first.click()
            vpage.wait_for_selector("#membership-status:has-text('not changed')")
            assert vpage.locator(".chat-membership").first.get_attribute(
                "data-member") == "true"
        finally:
            browser.close()

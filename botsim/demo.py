"""``botsim demo``: the whole loop on the embedded default, in one process.

It migrates a fresh SQLite database (``<data_dir>/demo.db``), seeds the four demo personas
into one group, starts the sandbox Telegram, the webhook listener and one worker (each the
same code the separate processes run), and prints the conversation as it is stored. A person
can type lines (they are posted into the group as the human member "Deniz"), and ``--say``
posts one after a few seconds. At the end it prints a summary; with ``--json`` the last line
of standard output is one JSON object with the figures.

No key, no network: the offline generator writes, the sandbox stands in for Telegram, and
every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets as pysecrets
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import Secrets, resolve_secrets
from backend.db.models import Message
from backend.db.types import utcnow
from backend.schemas import ProviderSettings
from backend.settings import Settings
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import figures as figures_store
from backend.stores import llm_calls as ledger_store
from backend.stores import messages as message_store
from backend.stores import settings as settings_store
from behavior_engine.realism import RealismReport
from behavior_engine.safety import check_safety, load_rules
from bots.demo_world import (
    DEMO_CHAT_ID,
    DEMO_CHATS,
    DEMO_SETTINGS,
    DEMO_TICK_S,
)
from botsim.bootstrap import Runtime, runtime
from botsim.terminal import clean
from sandbox.llm_api import LLMSandbox
from sandbox.telegram_api import BackgroundServer, SandboxError, TelegramSandbox

HUMAN_ID = 500001
HUMAN = {"id": HUMAN_ID, "first_name": "Deniz", "username": "deniz_trader"}

SAY_AFTER_S = 5.0
#: Where ``--humans N`` posts fall, as shares of the run: spread from 10 % to 85 % of it.
HUMANS_FIRST_AT, HUMANS_LAST_AT = 0.10, 0.85


def human_script(count: int, duration: float, mention_name: str) -> list[tuple[float, str]]:
    """The human member's messages of ``--humans N``: (seconds after the start, text).

    They cycle through the four kinds issue 14's "Done when" measures: one that mentions a
    bot by name (``mention_name``), one about the ``rates`` topic saying "carry trade", one
    that asks the group, and a plain remark; spread evenly from :data:`HUMANS_FIRST_AT` to
    :data:`HUMANS_LAST_AT` of ``duration`` (one message: at the first).

    Raises:
        ValueError: ``count`` < 0 or ``duration`` <= 0 when ``count`` > 0.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if count and duration <= 0:
        raise ValueError("--humans needs a positive --duration")
    texts = [
        f"{mention_name}, sen olsan bugün bitcoin'e girer miydin?",
        "Faizler bu kadar yüksekken carry trade hâlâ mantıklı mı, TL'de kalmak mı lazım?",
        "Arkadaşlar, sizce bu hafta altın mı dolar mı daha iyi getiri sağlar?",
        "Bugün piyasa epey sakin görünüyor, herkes bekliyor galiba.",
    ]
    span = HUMANS_LAST_AT - HUMANS_FIRST_AT
    return [(duration * (HUMANS_FIRST_AT + (span * i / (count - 1) if count > 1 else 0.0)),
             texts[i % len(texts)]) for i in range(count)]


@dataclass
class DemoOptions:
    """Options of one demo run.

    Attributes:
        duration: seconds of conversation, counted once the worker and the listener are up
            (starting them is not counted), or None for until Ctrl-C.
        say: a text the human member posts after :data:`SAY_AFTER_S` seconds.
        json_out: print the summary as one JSON object on the last line.
        read_stdin: post each line typed on standard input as the human member.
        say_after: seconds into the conversation before ``say`` is posted.
        llm: who writes: ``offline`` (the offline generator), ``sandbox`` (Groq → OpenAI →
            Gemini through their real SDKs against the sandbox LLM server, offline last), or
            ``settings`` (the chain of ``BOTSIM_LLM_PROVIDERS``).
        out: where the conversation and the summary are printed.
        panel: also serve the admin panel (on ``settings.api_host:api_port``, or a free
            port when that one is taken) with a generated admin login, printed once.
        humans: how many scripted human messages to post during the run
            (:func:`human_script`; needs ``duration``).
        realism: end with the realism report of the run (``botsim realism``'s tables; the
            ``realism`` key of the summary).
        events: world events to inject, ``(seconds into the conversation, preset name or
            headline)`` (:data:`behavior_engine.events.PRESETS`); the summary's ``events``
            says how each moved the chat.
    """

    duration: float | None = None
    say: str | None = None
    json_out: bool = False
    read_stdin: bool = True
    say_after: float = SAY_AFTER_S
    llm: Literal["offline", "sandbox", "settings"] = "offline"
    out: TextIO = field(default_factory=lambda: sys.stdout)
    panel: bool = True
    humans: int = 0
    realism: bool = True
    events: list[tuple[float, str]] = field(default_factory=list)


def sandbox_providers(llm: LLMSandbox) -> list[ProviderSettings]:
    """Groq → OpenAI → Gemini, each its real SDK pointed at the sandbox LLM server.

    The keys are placeholders the sandbox accepts; the model names are real ones so the
    ledger prices the calls as the providers would.
    """
    key = SecretStr("sandbox-key")
    return [
        ProviderSettings(name="groq", kind="groq", model="llama-3.3-70b-versatile",
                         api_key=key, base_url=llm.url_for("groq"), timeout_s=10),
        ProviderSettings(name="openai", kind="openai", model="gpt-4o-mini", api_key=key,
                         base_url=llm.url_for("openai") + "/v1", timeout_s=10),
        ProviderSettings(name="gemini", kind="gemini", model="gemini-2.0-flash",
                         api_key=key, base_url=llm.url_for("gemini"), timeout_s=10),
    ]


def _demo_token(index: int) -> str:
    return f"{7100000000 + index}:{pysecrets.token_urlsafe(26)}"


def _start_stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str]) -> None:
    """Feed typed lines into ``queue`` from a daemon thread (ends at EOF)."""

    def pump() -> None:
        try:
            for line in sys.stdin:
                text = line.strip()
                if text:
                    loop.call_soon_threadsafe(queue.put_nowait, text)
        except (OSError, ValueError):
            return

    threading.Thread(target=pump, name="demo-stdin", daemon=True).start()


class _Printer:
    """Prints stored messages as they appear (time, speaker, text, what they answer)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last_id = 0
        self.names: dict[int, str] = {}
        self.bot_ids: dict[str, int] = {}  # persona username → bot id
        self.chats: dict[int, str] = {}  # our chat id → title (shown when several)
        self.texts: dict[tuple[int, int], tuple[str, str]] = {}

    async def poll(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Print the messages stored since the last poll."""
        async with sessionmaker() as session:
            rows = await message_store.messages_after(
                session, after_id=self.last_id, limit=None)
        for msg in rows:
            self.show(msg)
            self.last_id = msg.id

    def show(self, msg: Message) -> None:
        """Print one message: what people and bots wrote without terminal control sequences
        (:func:`botsim.terminal.clean`) and without ``rich`` markup."""
        human = msg.bot_id is None
        speaker = clean((msg.sender_name or "?") if human
                        else self.names.get(msg.bot_id or 0, "?"), one_line=True)
        text = clean(msg.text)
        self.texts[(msg.chat_id, msg.telegram_message_id)] = (speaker, text)
        when = msg.created_at.astimezone().strftime("%H:%M:%S")
        style = "bold cyan" if human else "bold"
        title = clean(self.chats.get(msg.chat_id, "?"), one_line=True)
        where = (f"[magenta]\\[{escape(title)}][/magenta] "
                 if len(self.chats) > 1 else "")
        line = (f"[dim]{when}[/dim] {where}[{style}]{escape(speaker)}[/{style}]: "
                f"{escape(text)}")
        self.console.print(line, soft_wrap=True, highlight=False)
        if msg.reply_to_telegram_message_id is not None:
            who, text = self.texts.get((msg.chat_id, msg.reply_to_telegram_message_id),
                                       ("?", ""))
            snippet = text if len(text) <= 60 else text[:57] + "..."
            self.console.print(
                f"         [dim]↪ answers {escape(who)}: \"{escape(snippet)}\"[/dim]",
                soft_wrap=True, highlight=False,
            )


async def _converse(
    options: DemoOptions,
    sandbox: TelegramSandbox,
    sessionmaker: async_sessionmaker[AsyncSession],
    printer: _Printer,
    human_lines: asyncio.Queue[str],
    started: float,
    script: list[tuple[float, str]] | None = None,
) -> None:
    """Post the human's lines (typed, ``--say``, the ``script``'s at their time) and print
    new messages until the duration is over."""
    said = options.say is None
    pending = sorted(script or [])
    news = sorted(options.events)
    while options.duration is None or time.monotonic() - started < options.duration:
        while news and time.monotonic() - started >= news[0][0]:
            await _inject(sessionmaker, news.pop(0)[1], printer)
        if not said and time.monotonic() - started >= options.say_after:
            said = True
            assert options.say is not None
            await human_lines.put(options.say)
        while pending and time.monotonic() - started >= pending[0][0]:
            await human_lines.put(pending.pop(0)[1])
        while not human_lines.empty():
            text = human_lines.get_nowait()
            try:
                await sandbox.post_as_human(DEMO_CHAT_ID, HUMAN_ID, text)
            except SandboxError as exc:  # e.g. longer than Telegram's 4096 characters
                printer.console.print(f"[red]not posted:[/red] {escape(clean(str(exc)))}")
        await printer.poll(sessionmaker)
        await asyncio.sleep(0.25)


DEMO_ADMIN = "admin"


async def _inject(sessionmaker: async_sessionmaker[AsyncSession], what: str,
                  printer: _Printer) -> None:
    """Store a world event now: a preset by name, else a headline with no shock."""
    from backend.schemas import WorldEventIn
    from backend.stores import events as event_store
    from behavior_engine.events import PRESETS

    event = PRESETS.get(what) or WorldEventIn(headline=what)
    async with sessionmaker() as session, session.begin():
        stored = await event_store.add_event(session, event=event, created_by="demo")
    moves = ", ".join(f"{s} {p:+g} %" for s, p in stored.shocks.items())
    headline = clean(stored.headline, one_line=True)
    printer.console.print(f"[bold yellow]📰 {escape(headline)}[/bold yellow]"
                          + (f" ({escape(moves)})" if moves else ""))


async def _world_figures(sessionmaker: async_sessionmaker[AsyncSession], since: datetime,
                         ) -> dict[str, Any]:
    """The run's world events and how each moved the chat, and its stance figures."""
    from backend.stores import events as event_store
    from behavior_engine.consistency import count_flips
    from behavior_engine.events import event_effect

    async with sessionmaker() as session:
        texts = await figures_store.bot_texts(session, since=since)
        events = await event_store.list_events(session, since=since)
    rows = [(t.created_at, t.text, t.meta.event_id) for t in texts]
    flips = count_flips([(t.bot_id, t.text, t.meta.views) for t in texts])
    return {"events": [event_effect(rows, e) for e in events],
            "stance_flips": flips.flips, "stance_flips_explained": flips.explained,
            "stance_flips_unexplained": flips.unexplained}


async def _realism(sessionmaker: async_sessionmaker[AsyncSession], since: datetime,
                   ) -> RealismReport | None:
    """The realism report of the demo's groups since ``since`` (None without messages)."""
    from behavior_engine.realism_run import run_report

    async with sessionmaker() as session:
        return await run_report(session, telegram_chat_ids=[c.telegram_chat_id
                                                             for c in DEMO_CHATS],
                                since=since)


async def _serve_panel(
    settings: Settings, sessionmaker: Any, secrets: Any, reads: Any,
    stack: contextlib.AsyncExitStack, worker: Any,
) -> tuple[str, str]:
    """Serve the admin panel for the demo; returns (its URL, the generated admin password).

    There is no default password: a random one is made for each run, hashed with argon2id
    into the run's fresh database, and shown once. The provider health shows ``worker``'s
    breakers and budgets.
    """
    from backend.api.app import create_app as create_api
    from backend.stores import users as user_store

    app = create_api(settings, sessionmaker, secrets=secrets, reads=reads,
                     local_workers=lambda: [(worker.worker_id, worker.status())])
    password = pysecrets.token_urlsafe(12)
    password_hash = await app.state.api.hash(password)
    async with sessionmaker() as session, session.begin():
        await user_store.create_user(session, username=DEMO_ADMIN, password_hash=password_hash,
                                     role="admin")
    try:
        server = await BackgroundServer.start(app, settings.api_host, settings.api_port)
    except OSError:  # the configured port is taken: any free one
        server = await BackgroundServer.start(app, settings.api_host, 0)
    stack.push_async_callback(server.stop)
    return server.url, password


async def run_demo(settings: Settings, options: DemoOptions) -> dict[str, Any]:
    """Run the demo and return its summary (also printed).

    Returns:
        ``messages``, ``bots_spoken``, ``human_messages``, ``human_replies``,
        ``duplicates``, ``errors`` (failed turns + tick errors + sends not stored),
        ``safety_breaches`` (bot messages Telegram shows that break a content-safety rule,
        :mod:`behavior_engine.safety`; the guard keeps it at 0),
        ``rate_limited`` (429s the worker received), ``unrecorded_sends``, ``duration_s``,
        ``per_bot`` (name → messages), and ``realism`` (when ``options.realism``: the
        report's ``metrics``, ``counts`` and ``failed`` of the demo's group; see
        :meth:`behavior_engine.realism.RealismReport.to_dict`).
    """
    console = Console(file=options.out, highlight=False, soft_wrap=True)
    secrets = resolve_secrets(settings)
    db_path = settings.data_dir / "demo.db"
    for suffix in ("", "-wal", "-shm"):  # a fresh database each run
        await asyncio.to_thread(Path(f"{db_path}{suffix}").unlink, missing_ok=True)
    url = f"sqlite+aiosqlite:///{db_path.resolve()}"
    # Each demo run starts a fresh database, so it must not read a previous run's Redis keys.
    async with runtime(settings.model_copy(update={"database_url": url}),
                       cache_namespace=f"botsim-demo-{pysecrets.token_hex(4)}",
                       redis=False) as rt:
        return await _run(rt, options, console, secrets)


async def _run(rt: Runtime, options: DemoOptions, console: Console, secrets: Secrets,
               ) -> dict[str, Any]:
    """The demo on a migrated, fresh database (:func:`run_demo`)."""
    from bots.personas import load_persona_dir
    from message_listener import ListenerState, create_app, register_webhooks
    from worker import Worker

    settings, sessionmaker, reads = rt.settings, rt.sessionmaker, rt.reads
    personas = load_persona_dir()
    cipher = secrets.cipher()

    sandbox = TelegramSandbox()
    printer = _Printer(console)
    async with sessionmaker() as session, session.begin():
        tokens = {}
        for i, persona in enumerate(personas):
            token = tokens[persona.username] = _demo_token(i)
            bot = await bot_store.upsert_persona_bot(
                session, persona=persona, token=token, cipher=cipher
            )
            sandbox.add_bot(token, persona.username, persona.name)
            printer.names[bot.id] = persona.name
            printer.bot_ids[persona.username] = bot.id
        for group in DEMO_CHATS:
            sandbox.add_chat(group.telegram_chat_id, group.title)
            sandbox.add_member(group.telegram_chat_id, dict(HUMAN))
            chat = await chat_store.upsert_chat(
                session, telegram_chat_id=group.telegram_chat_id, title=group.title,
                topics=group.topics)
            printer.chats[chat.id] = group.title
            for persona in personas:
                await chat_store.add_bot(
                    session, chat_id=chat.id, bot_id=printer.bot_ids[persona.username],
                    talkativeness=group.talkativeness.get(persona.username))
                sandbox.add_bot_to_chat(group.telegram_chat_id, tokens[persona.username])
        await settings_store.update_settings(session, changes=DEMO_SETTINGS)

    stack = contextlib.AsyncExitStack()
    started = time.monotonic()  # set again once the engine is up: the conversation's start
    # Telegram dates received messages in whole seconds: the run counts from its second.
    run_start: datetime = utcnow().replace(microsecond=0)
    worker: Worker | None = None
    listener_state = ListenerState(sessionmaker=sessionmaker,
                                   webhook_secret=secrets.webhook_secret, reads=reads,
                                   privacy_text=settings.privacy_text)
    try:
        await sandbox.start()
        stack.push_async_callback(sandbox.stop)
        await listener_state.refresh_bots()
        listener = await BackgroundServer.start(create_app(listener_state))
        stack.push_async_callback(listener.stop)
        worker_settings = settings.model_copy(
            update={"telegram_api_url": sandbox.bot_api_url, "public_webhook_url": listener.url,
                    "tick_seconds": min(settings.tick_seconds, DEMO_TICK_S)}
        )
        await register_webhooks(
            sessionmaker=sessionmaker, secrets=secrets, api_url=sandbox.bot_api_url,
            public_url=listener.url,
        )
        providers = settings.llm_providers if options.llm == "settings" else []
        if options.llm == "sandbox":
            llm_sandbox = LLMSandbox()
            await llm_sandbox.start()
            stack.push_async_callback(llm_sandbox.stop)
            providers = sandbox_providers(llm_sandbox)
        worker = Worker.assemble(settings=worker_settings, sessionmaker=sessionmaker,
                                 secrets=secrets, reads=reads, providers=providers,
                                 market_start=run_start)
        await worker.start()
        stack.push_async_callback(worker.stop)
        panel_line = ""
        if options.panel:
            panel_url, password = await _serve_panel(worker_settings, sessionmaker, secrets,
                                                     reads, stack, worker)
            panel_line = (f"Admin panel: {panel_url}/ (log in as {DEMO_ADMIN} with password "
                          f"{password}; generated for this run)")

        console.print(
            f"[bold]botsim demo[/bold]: {len(personas)} personas in "
            + ", ".join(f"\"{c.title}\"" for c in DEMO_CHATS) + " "
            f"(sandbox Telegram {sandbox.base_url}, listener {listener.url}, "
            f"writers: {' → '.join([*(p.name for p in providers), 'offline'])})."
        )
        if panel_line:
            console.print(panel_line, markup=False)
        console.print(
            "Type a line and press Enter to post it as Deniz"
            + (f"; stops after {options.duration:g} s." if options.duration else "; Ctrl-C stops.")
        )
        human_lines: asyncio.Queue[str] = asyncio.Queue()
        if options.read_stdin and sys.stdin is not None and not sys.stdin.closed:
            _start_stdin_reader(asyncio.get_running_loop(), human_lines)
        try:
            mention = sorted(p.name for p in personas)[-1].split()[0]
            script = human_script(options.humans, options.duration or 0.0, mention)
            # The duration and the human lines' times count from here, with the worker and
            # the listener up: starting them (the SDKs' imports, the migrations' last writes)
            # may take seconds on a busy machine, which would otherwise eat the conversation.
            started = time.monotonic()
            await _converse(options, sandbox, sessionmaker, printer, human_lines, started,
                            script)
        except asyncio.CancelledError:
            # Ctrl-C: asyncio.run cancels this task; stop talking and print the summary.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            console.print("\n[dim]interrupted[/dim]")
    finally:
        await stack.aclose()
    await printer.poll(sessionmaker)  # what arrived while stopping

    # Let the listener's last writes land, then count.
    async with sessionmaker() as session:
        figures = await message_store.run_summary(session, since=run_start)
        stored_ids = await figures_store.bot_telegram_message_ids(session, by_chat=True)
        per_bot_rows = await figures_store.messages_per_bot(session, since=run_start)
        metas = await figures_store.bot_message_metas(session, since=run_start)
        costs = await ledger_store.cost_totals(session, since=run_start, by="provider")
    by_provider = Counter(m.provider or "?" for m in metas)
    sent_ids = [(c.telegram_chat_id, m["message_id"]) for c in DEMO_CHATS
                for m in sandbox.messages(c.telegram_chat_id) if m["from"]["is_bot"]]
    unrecorded = sum(1 for i in sent_ids if i not in stored_ids)
    rules = load_rules(settings.safety_rules)
    breaches = sum(
        1 for c in DEMO_CHATS for m in sandbox.messages(c.telegram_chat_id)
        if m["from"]["is_bot"] and check_safety(
            m.get("text", ""), rules, language="tr",
            to_person=not m.get("reply_to_message", {}).get("from", {}).get("is_bot", True)))
    stats = worker.stats if worker is not None else {}
    per_bot = {name: int(n) for name, n in per_bot_rows}
    summary: dict[str, Any] = {
        **figures,
        "errors": int(stats.get("errors", 0)) + unrecorded,
        "rate_limited": int(stats.get("rate_limited", 0)),
        "unrecorded_sends": unrecorded,
        "safety_breaches": breaches,
        "telegram_429": int(sandbox.stats["too_many_requests"]),
        "duration_s": round(time.monotonic() - started, 1),
        "per_bot": per_bot,
        "by_provider": dict(by_provider),
        "llm_calls": sum(int(c["calls"]) for c in costs),
        "llm_cost_usd": round(sum(c["cost_usd"] for c in costs), 6),
        "guards": dict(sorted(worker.pipeline.guard_counts.items())) if worker else {},
        **await _world_figures(sessionmaker, run_start),
    }
    console.print(
        f"\n[bold]Summary[/bold]: {summary['messages']} bot messages from "
        f"{summary['bots_spoken']} bots, {summary['human_messages']} human messages "
        f"({summary['human_replies']} answered), {summary['duplicates']} duplicates, "
        f"{summary['errors']} errors, {summary['telegram_429']} 429s in "
        f"{summary['duration_s']:g} s, {summary['stance_flips_unexplained']} unexplained "
        "stance flips. Written by: "
        + ", ".join(f"{k} {v}" for k, v in by_provider.most_common())
        + f"; {summary['llm_calls']} LLM calls, ${summary['llm_cost_usd']:.6f}."
    )
    if options.realism:
        report = await _realism(sessionmaker, run_start)
        if report is not None:
            from botsim.realism_cli import print_report

            print_report(report, console)
            summary["realism"] = {k: v for k, v in report.to_dict().items() if k != "chats"}
    if options.json_out:
        options.out.write(json.dumps(summary, ensure_ascii=False) + "\n")
        options.out.flush()
    return summary

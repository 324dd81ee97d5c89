"""The ``botsim`` command.

Sub-commands::

    botsim demo [--duration S] [--say TEXT] [--humans N] [--json] [--no-input] [--no-realism]
                [--llm offline|sandbox|settings]
    botsim db upgrade                       run the Alembic migrations
    botsim personas check FILE...           validate persona files
    botsim settings show                    print the operator settings
    botsim settings set KEY=JSON...         change operator settings (validated)
    botsim event add "HEADLINE" [--shock SYM=PCT ...] [--view TOPIC=bullish|bearish ...]
                     [--topic T ...] [--at ISO|+5m] | add --preset NAME [--at ...]
    botsim event list [--json] | cancel ID | presets
                                            world events the market, moods, stances and
                                            topics react to (botsim.events_cli)
    botsim costs [--since 24h] [--by provider|bot|day] [--json]
                                            LLM cost totals from the llm_calls ledger
    botsim realism [--database-url URL] [--chat ID ...] [--since -10m] [--until ISO] [--json]
                                            the REALISM.md metrics of a stored run, with
                                            their bands (botsim.realism_cli)
    botsim worker [--check] | listener [--register]   run one process (or health-check it)
    botsim api                              run the admin API (api_host:api_port)
    botsim admin create-user NAME --role admin|viewer
                                            add an admin panel user; the password comes from
                                            BOTSIM_NEW_USER_PASSWORD or is generated and
                                            printed once
    botsim admin users | disable NAME | enable NAME | set-password NAME | end-sessions NAME
    botsim admin tokens [NAME] | create-token NAME --name N [--scope read|admin]
                 [--expires 30d|ISO] | revoke-token ID
                                            user and API-token lifecycle, audited
                                            (botsim.accounts_cli)
    botsim bots import FILE [--dry-run] [--preflight]
                                            bots (token, persona, groups) from a CSV or
                                            YAML file, validated whole first
                                            (botsim.bots_import)
    botsim preflight [--bot ID ...] [--strict] [--timeout S] [--json]
                                            check every bot against the Bot API: token,
                                            privacy mode, groups, webhook; exit 1 on a
                                            problem (botsim.preflight)
    botsim loadtest --bots N --chats M --workers W --duration S --llm-latency-ms L
        [--llm-jitter-ms J] [--human-rate PER_MIN] [--seed S] [--json] [--report DIR] ...
                                            run the whole engine on 127.0.0.1 under load and
                                            report its figures (loadtest.runner)
    botsim chaos [--duration S] [--workers W] [--bots N] [--faults all|K,K] [--seed S]
        [--json] [--report DIR] ...         the sharded engine under load with faults on
                                            purpose: kills, restarts, outages, 429 storms,
                                            a partition, clock jumps; exit 1 unless nothing
                                            was lost or sent twice (loadtest.chaos)

Exit codes: 0 success, 1 failure at run time, 2 bad input or configuration (the message
names what is wrong and where).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from backend.errors import BotsimError, ConfigError, ValidationFailed
from backend.settings import Settings, load_settings
from backend.timewindow import parse_since
from botsim import accounts_cli
from botsim.bootstrap import Runtime, configure_logging, configure_process, runtime


async def _interview_cmd(settings: Settings, who: str, question: str, llm: str,
                         as_json: bool) -> int:
    """``botsim interview BOT "question"``: the bot's answer, in persona, with its memory
    (:mod:`behavior_engine.interview`); nothing is posted or stored. Exit 2 when the bot or
    the question is not right (the message says which)."""
    from backend.db.types import utcnow
    from backend.stores import bots as bot_store
    from backend.stores import messages as message_store
    from behavior_engine.interview import interview
    from behavior_engine.llm.factory import build_chain, close_chain
    from behavior_engine.market import MarketFeed
    from behavior_engine.reads import item_from_row
    from behavior_engine.recall import MemoryKeeper
    from behavior_engine.records import StoreTurnRecords

    if not question.strip() or len(question) > 4096:
        print("botsim interview: the question must be 1-4096 characters", file=sys.stderr)
        return 2
    async with _one_shot(settings) as rt:
        async with rt.sessionmaker() as session:
            bot = (await bot_store.find_bot(session, bot_id=int(who))
                   if who.isdigit() else
                   await bot_store.bot_with_username(session, username=who.lstrip("@")))
            if bot is None:
                print(f"botsim interview: no bot {who!r} (give its id or @username)",
                      file=sys.stderr)
                return 2
            recent = [item_from_row(m, bot.name, bot.username)
                      for m in await message_store.bot_recent(session, bot_id=bot.id,
                                                              limit=20)]
        profile = await rt.reads.bot(bot.id)
        chain = build_chain(list(settings.llm_providers) if llm == "settings" else [])
        try:
            memory = MemoryKeeper(StoreTurnRecords(rt.sessionmaker, rt.reads.cache))
            answer = await interview(profile, question, recent=recent, chain=chain,
                                     market=MarketFeed(seed=settings.seed, start=utcnow()),
                                     now=utcnow(), seed=settings.seed, memory=memory)
        finally:
            await close_chain(chain)
    if as_json:
        print(json.dumps({"bot": f"@{profile.username}", "question": question,
                          "answer": answer.text, "provider": answer.provider},
                         ensure_ascii=False))
    else:
        from botsim.terminal import clean

        print(clean(f"{profile.name} (@{profile.username}, {answer.provider}): ",
                    one_line=True) + clean(answer.text))
    return 0


async def _costs_cmd(settings: Settings, since: str | None, by: str, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from backend.stores import llm_calls

    start = parse_since(since)
    async with _one_shot(settings) as rt, rt.sessionmaker() as session:
        rows = await llm_calls.cost_totals(session, since=start, by=by)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(rows))
        return
    window = f" since {start:%Y-%m-%d %H:%M} UTC" if start else ""
    table = Table(title=f"LLM costs by {by}{window}")
    cols = ["calls", "ok", "failed", "prompt_tokens", "completion_tokens", "cached_tokens"]
    for col in [by, *cols, "cost_usd", "unpriced"]:
        table.add_column(col, justify="left" if col == by else "right")
    for r in rows:
        table.add_row(r["key"], *(f"{r[c]:,}" for c in cols), f"{r['cost_usd']:.6f}",
                      str(r["unpriced"]))
    totals = {c: sum(int(r[c]) for r in rows) for c in [*cols, "unpriced"]}
    table.add_row("total", *(f"{totals[c]:,}" for c in cols),
                  f"{sum(r['cost_usd'] for r in rows):.6f}", str(totals["unpriced"]),
                  style="bold")
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _one_shot(settings: Settings) -> contextlib.AbstractAsyncContextManager[Runtime]:
    """The runtime of a one-shot command: migrated database, cache in memory, no Redis."""
    return runtime(settings, connect_cache=False, redis=False)


T = TypeVar("T")


def _demo_event(spec: str) -> tuple[float, str]:
    """``"rate_hike@300"`` → ``(300.0, "rate_hike")``.

    Raises:
        ValidationFailed: no ``@``, an empty name, or seconds that are not a number ≥ 0.
    """
    what, sep, when = spec.rpartition("@")
    try:
        at = float(when)
    except ValueError:
        at = -1.0
    if not sep or not what.strip() or not (at >= 0 and at == at and at != float("inf")):
        raise ValidationFailed("botsim demo", [
            ("--event", f"{spec!r}: write WHAT@SECONDS, e.g. rate_hike@300 (a preset or a "
                        "headline, then seconds into the conversation)")])
    return at, what.strip()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="botsim", description="Multi-bot Telegram simulation engine")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the four demo personas talking in a sandbox group")
    demo.add_argument("--duration", type=float, default=None,
                      help="seconds of conversation, once the engine is up (default: until Ctrl-C)")
    demo.add_argument("--say", default=None, help="post this text as a human after a few seconds")
    demo.add_argument("--json", action="store_true",
                      help="end with one JSON object of figures on the last line")
    demo.add_argument("--no-input", action="store_true",
                      help="do not read lines to post from standard input")
    demo.add_argument("--no-panel", action="store_true", help="do not serve the admin panel")
    demo.add_argument("--humans", type=int, default=0, metavar="N",
                      help="post N scripted human messages spread over the run (a mention,"
                      " a 'carry trade' question, a question to the group, a remark; needs"
                      " --duration)")
    demo.add_argument("--no-realism", action="store_true",
                      help="do not end with the realism report (botsim realism)")
    demo.add_argument("--llm", choices=["offline", "sandbox", "settings"], default="offline",
                      help="who writes: the offline generator (default), the real SDKs against"
                      " the sandbox LLM server, or BOTSIM_LLM_PROVIDERS")
    demo.add_argument("--event", action="append", default=[], metavar="WHAT@SECONDS",
                      help="inject a world event SECONDS into the conversation: a preset"
                      " (botsim event presets) or a headline, e.g. rate_hike@300; repeatable")

    iv = sub.add_parser("interview", help="ask a bot a question out of band (nothing posted)")
    iv.add_argument("bot", help="the bot: its id or @username")
    iv.add_argument("question", help="what to ask it (1-4096 characters)")
    iv.add_argument("--llm", choices=["offline", "settings"], default="settings",
                    help="who answers: BOTSIM_LLM_PROVIDERS with the offline generator last"
                    " (default), or the offline generator alone")
    iv.add_argument("--json", action="store_true",
                    help="print {bot, question, answer, provider} as one JSON line")

    costs = sub.add_parser("costs", help="LLM cost totals from the ledger")
    costs.add_argument("--since", default=None,
                       help="a date (2026-11-01), a time, or an age (30m, 24h, 7d)")
    costs.add_argument("--by", choices=["provider", "bot", "day"], default="provider")
    costs.add_argument("--json", action="store_true", help="print JSON instead of a table")

    rl = sub.add_parser("realism", help="the REALISM.md metrics of a stored run, with bands")
    rl.add_argument("--database-url", default=None,
                    help="the database to read (default: BOTSIM_DATABASE_URL or the SQLite file"
                         " in the data directory); read only, never migrated")
    rl.add_argument("--chat", type=int, action="append", default=None,
                    metavar="TELEGRAM_CHAT_ID", help="a chat to measure (repeatable; default:"
                    " every chat with a message in the window)")
    rl.add_argument("--since", default=None,
                    help="an ISO date/time (UTC unless it says) or an age: 10m, -10m, 2h, 7d")
    rl.add_argument("--until", default=None, help="the window's end, same forms")
    rl.add_argument("--json", action="store_true",
                    help="end with one JSON object of the report on the last line")

    from botsim import events_cli

    events_cli.add_parser(sub)

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])

    personas = sub.add_parser("personas", help="persona files")
    personas.add_argument("action", choices=["check"])
    personas.add_argument("files", nargs="+", type=Path)

    st = sub.add_parser("settings", help="operator settings in the database")
    st.add_argument("action", choices=["show", "set"])
    st.add_argument("pairs", nargs="*", help="KEY=VALUE, VALUE as JSON (e.g. max_msgs_per_min=8)")

    wk = sub.add_parser("worker", help="run a worker process")
    wk.add_argument("--check", action="store_true",
                    help="exit 0 if this worker's heartbeat is fresh, 1 if not (health check)")
    listener = sub.add_parser("listener", help="run the webhook listener")
    listener.add_argument("--register", action="store_true", help="setWebhook for every bot")
    sub.add_parser("api", help="run the admin API")
    lt = sub.add_parser("loadtest", help="run the engine under load on 127.0.0.1 and report")
    lt.add_argument("--bots", type=int, required=True, help="generated personas")
    lt.add_argument("--chats", type=int, required=True, help="groups they are spread over")
    lt.add_argument("--workers", type=int, required=True, help="worker processes")
    lt.add_argument("--duration", type=float, required=True,
                    help="seconds of the run, warm-up included")
    lt.add_argument("--llm-latency-ms", type=float, required=True,
                    help="the sandbox LLM's answer time, ms")
    lt.add_argument("--llm-jitter-ms", type=float, default=0.0,
                    help="± uniform jitter of that time, ms")
    lt.add_argument("--human-rate", type=float, default=0.0, metavar="PER_MIN",
                    help="human messages per minute over all groups")
    lt.add_argument("--msgs-per-hour", type=float, default=10.0,
                    help="each bot's hourly budget (default 10)")
    lt.add_argument("--warmup", type=float, default=None,
                    help="seconds of warm-up, reported apart (default: a fifth, 30 s at most)")
    lt.add_argument("--seed", type=int, default=1)
    lt.add_argument("--in-flight", type=int, default=None,
                    help="turns in flight per worker (default: the setting's)")
    lt.add_argument("--database-url", default=None,
                    help="PostgreSQL server on 127.0.0.1 for the scratch database (default:"
                         " the local one; SQLite when one worker and none given)")
    lt.add_argument("--redis-url", default=None,
                    help="Redis on 127.0.0.1 (default redis://127.0.0.1:6379/0)")
    lt.add_argument("--floor-samples", type=int, default=500,
                    help="calls per operation of the floor micro-benchmark")
    lt.add_argument("--keep", action="store_true",
                    help="keep the scratch database and data directory")
    lt.add_argument("--json", action="store_true",
                    help="end with one JSON object of the figures on the last line")
    lt.add_argument("--report", type=Path, default=None, metavar="DIR",
                    help="write figures.json and index.html (plots) into DIR")
    lt.add_argument("--no-progress", action="store_true", help="no live display")
    lt.add_argument("--prometheus-targets", type=Path, default=None, metavar="DIR",
                    help="write Prometheus file_sd target files (listener, api, worker) "
                         "into DIR as processes start; also runs the admin API")
    lt.add_argument("--profile", type=Path, default=None, metavar="FILE",
                    help="record a py-spy profile of worker-1 over the measured window into "
                         "FILE (flame graph SVG; speedscope JSON for a .json name)")
    ch = sub.add_parser("chaos", help="run the engine under load with faults; exit 1 unless "
                        "nothing was lost or sent twice")
    ch.add_argument("--duration", type=float, default=300.0,
                    help="seconds of the run (a quiet fifth, the faults, a quiet fifth)")
    ch.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    ch.add_argument("--bots", type=int, default=200, help="generated personas (default 200)")
    ch.add_argument("--chats", type=int, default=None,
                    help="groups (default: a tenth of the bots, at least 2)")
    ch.add_argument("--faults", default="all", metavar="all|KIND,KIND",
                    help="faults to inject: all, or some of worker_kill, listener_kill, "
                         "redis_restart, postgres_restart, llm_outage, telegram_429, "
                         "redis_partition, clock_jump")
    ch.add_argument("--seed", type=int, default=1,
                    help="the world, the humans and the fault schedule (replay a run)")
    ch.add_argument("--msgs-per-hour", type=float, default=30.0,
                    help="each bot's hourly budget (default 30)")
    ch.add_argument("--human-rate", type=float, default=6.0, metavar="PER_MIN",
                    help="human messages per minute over all groups (default 6)")
    ch.add_argument("--llm-latency-ms", type=float, default=300.0,
                    help="the sandbox LLM's answer time, ms (default 300)")
    ch.add_argument("--heartbeat-ttl", type=float, default=10.0, metavar="S",
                    help="the workers' heartbeat and lease TTL (default 10 s)")
    ch.add_argument("--keep", action="store_true", help="keep the logs and print where")
    ch.add_argument("--json", action="store_true",
                    help="end with one JSON object of the figures on the last line")
    ch.add_argument("--report", type=Path, default=None, metavar="DIR",
                    help="write figures.json and timeline.png (faults marked) into DIR")
    ch.add_argument("--quiet", action="store_true", help="do not print faults as they happen")
    bots = sub.add_parser("bots", help="bot accounts")
    bots_sub = bots.add_subparsers(dest="bots_command", required=True)
    imp = bots_sub.add_parser(
        "import", help="bots (token, persona, groups) from a CSV or YAML file")
    imp.add_argument("file", type=Path, help="a .csv (with a header) or .yaml/.yml file")
    imp.add_argument("--dry-run", action="store_true",
                     help="validate and show what would change; write nothing")
    imp.add_argument("--preflight", action="store_true",
                     help="run `botsim preflight` on the imported bots afterwards")
    pf = sub.add_parser("preflight", help="check every bot against the Bot API (go-live)")
    pf.add_argument("--bot", type=int, action="append", default=None, metavar="ID",
                    help="only this bot (our id; repeatable)")
    pf.add_argument("--strict", action="store_true", help="warnings fail too")
    pf.add_argument("--timeout", type=float, default=10.0, metavar="S",
                    help="seconds each Bot API call may take (default 10)")
    pf.add_argument("--json", action="store_true",
                    help="print the report as one JSON object on one line, no table")
    admin = sub.add_parser("admin", help="admin panel users")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    cu = admin_sub.add_parser(
        "create-user", help="add a user (password from BOTSIM_NEW_USER_PASSWORD, else generated)")
    cu.add_argument("username")
    cu.add_argument("--role", choices=["admin", "viewer"], required=True)
    accounts_cli.add_parsers(admin_sub)
    return p


#: Shortest password ``admin create-user`` accepts, characters (NIST SP 800-63B §5.1.1.2:
#: at least 8). Generated ones are 24 characters of ``token_urlsafe(18)`` (144 random bits).
MIN_PASSWORD_CHARS = 8


async def _create_user_cmd(settings: Settings, username: str, role: str,
                           password: str | None) -> None:
    import secrets as pysecrets

    from backend.api.security import hash_password, make_hasher
    from backend.stores import users

    users.check_username(username)
    generated = password is None
    if password is None:
        password = pysecrets.token_urlsafe(18)
    elif len(password) < MIN_PASSWORD_CHARS:
        raise ValidationFailed("BOTSIM_NEW_USER_PASSWORD",
                               [("password", f"at least {MIN_PASSWORD_CHARS} characters")])
    password_hash = await asyncio.to_thread(hash_password, make_hasher(), password)
    async with _one_shot(settings) as rt, rt.sessionmaker() as session, session.begin():
        await users.create_user(session, username=username, password_hash=password_hash,
                                role=role)
    print(f"created {role} {username!r}")
    if generated:
        print(f"generated password (shown once, store it now): {password}")


def _console() -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


async def _preflight_cmd(settings: Settings, *, bot_ids: Sequence[int] | None, strict: bool,
                         call_timeout_s: float, as_json: bool) -> int:
    """``botsim preflight``: 0 when no problem, 1 otherwise (see :mod:`botsim.preflight`)."""
    from backend.crypto import resolve_secrets
    from botsim.preflight import preflight, render_table

    if not call_timeout_s > 0:
        raise ValidationFailed("botsim preflight", [("--timeout", "a number of seconds > 0")])
    cipher = resolve_secrets(settings).cipher()
    async with _one_shot(settings) as rt:
        report = await preflight(
            rt.sessionmaker, cipher, api_url=settings.telegram_api_url,
            public_url=settings.public_webhook_url, bot_ids=bot_ids, strict=strict,
            call_timeout_s=call_timeout_s)
    if as_json:
        print(report.model_dump_json())
    else:
        _console().print(render_table(report))
        if not report.bots:
            print("no bots stored: `botsim bots import FILE` adds them")
    return 0 if report.ok else 1


async def _import_cmd(settings: Settings, path: Path, *, dry_run: bool) -> list[int]:
    """``botsim bots import``: returns the imported bots' ids.

    Raises:
        ValidationFailed: the file is refused (nothing written).
    """
    from backend.crypto import resolve_secrets
    from botsim.bots_import import import_file

    cipher = resolve_secrets(settings).cipher()
    async with runtime(settings, redis=False) as rt:  # the cache tells running processes
        result = await import_file(rt.sessionmaker, cipher, path, cache=rt.cache,
                                   dry_run=dry_run)
    for line in result.lines:
        print(line)
    verb = "would create" if dry_run else "created"
    print(f"{path}: {verb} {result.created} bot(s), "
          f"{'would update' if dry_run else 'updated'} {result.updated}"
          + (" (dry run: nothing written)" if dry_run else ""))
    return result.bot_ids


def _parse_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValidationFailed("settings set", [(pair, "expected KEY=VALUE")])
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    return changes


async def _settings_cmd(settings: Settings, action: str, pairs: Sequence[str]) -> None:
    from backend.stores import settings as store

    async with _one_shot(settings) as rt:
        async with rt.sessionmaker() as session, session.begin():
            if action == "set":
                current = await store.update_settings(session, changes=_parse_pairs(pairs))
            else:
                current = await store.get_settings(session)
        print(json.dumps(current.model_dump(mode="json"), indent=2))


def _run_process(settings: Settings, name: str, *, register: bool) -> int:
    """Run the worker, the listener or the admin API until Ctrl-C or SIGTERM."""
    import signal

    from backend.crypto import resolve_secret_key, resolve_secrets

    # Each process imports its own face only: the admin API alone would add ~1.4 s of CPU
    # (FastAPI's routes, the panel, matplotlib) to every worker's start.
    secrets = resolve_secrets(settings)
    if name == "api":
        resolve_secret_key(settings)  # a ConfigError (exit 2) before anything starts
    if name == "worker":
        import worker

        body = until_terminated(worker.serve(settings, secrets))
    else:
        # uvicorn catches SIGTERM while it serves (graceful shutdown, then it raises the
        # signal again): before and after, TERM interrupts as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        if name == "api":
            from backend.api import app as api_app

            body = api_app.serve(settings, secrets)
        else:
            import message_listener

            body = message_listener.serve(settings, secrets, register=register)
    try:
        run_loop(body)
    except KeyboardInterrupt:
        pass
    logging.getLogger("botsim").info("%s stopped", name)
    return 0


async def until_terminated(body: Coroutine[Any, Any, T]) -> T | None:
    """Run ``body`` until it ends or the process gets SIGTERM (containers stop with it).

    SIGTERM cancels ``body`` as Ctrl-C does (``asyncio.Runner`` cancels the main task): its
    ``finally`` blocks run on the loop, so a worker stops ticking and lets the turns in flight
    finish and record their outcome. (Raising KeyboardInterrupt from a signal handler instead
    interrupts whatever code runs at that instant, and the loop's shutdown then cancels the
    turns mid-send: sent messages left unrecorded.)

    Returns:
        ``body``'s result, or None when SIGTERM stopped it.
    """
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(body)
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are cancelled ourselves (Ctrl-C): let the runner say so
        return None  # SIGTERM
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def run_loop(body: Coroutine[Any, Any, T]) -> T:
    """Run ``body`` on uvloop where it is installed (Linux, macOS: a faster event loop in C
    over libuv; asyncpg's authors measure 2-4× asyncio's throughput on network I/O), else
    on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(body)
    return uvloop.run(body)


def _loadtest_cmd(args: argparse.Namespace) -> int:
    """``botsim loadtest``: run, print the summary (and the JSON line), write the report."""
    from rich.console import Console

    from loadtest.report import print_summary, write_report
    from loadtest.runner import LoadOptions, run_load

    opts = LoadOptions(
        bots=args.bots, chats=args.chats, workers=args.workers, duration_s=args.duration,
        llm_latency_ms=args.llm_latency_ms, llm_jitter_ms=args.llm_jitter_ms,
        human_rate_per_min=args.human_rate, msgs_per_hour=args.msgs_per_hour,
        seed=args.seed, warmup_s=args.warmup, database_url=args.database_url,
        redis_url=args.redis_url, in_flight=args.in_flight,
        floor_samples=args.floor_samples, keep=args.keep, progress=not args.no_progress,
        targets_dir=args.prometheus_targets, profile_path=args.profile)
    opts.validate()
    # the floor runs on the engine's event loop
    figures = _run_measured("botsim loadtest", args.report, lambda: run_load(opts))
    if figures is None:
        return 1
    print_summary(figures, Console(highlight=False))
    if args.report is not None:
        page = write_report(figures, args.report)
        print(f"report: {page}")
    if args.json:
        slim = {k: v for k, v in figures.items() if not k.endswith("_samples_ms")}
        print(json.dumps(slim, ensure_ascii=False, default=str))
    return 0


def _run_measured(command: str, report: Path | None,
                  body: Callable[[], Coroutine[Any, Any, dict[str, Any]]]
                  ) -> dict[str, Any] | None:
    """Run a load or chaos run (``body()``) on :func:`run_loop` and return its figures; None
    after printing why (a process or service failed, or Ctrl-C: every process was stopped).

    Raises:
        ValidationFailed: ``report`` exists and is not a directory (checked first).
    """
    if report is not None and report.exists() and not report.is_dir():
        raise ValidationFailed(command, [("--report", f"{report} exists and is not a directory")])
    try:
        return run_loop(body())
    except RuntimeError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{command}: interrupted; every process was stopped", file=sys.stderr)
    return None


def _chaos_cmd(args: argparse.Namespace) -> int:
    """``botsim chaos``: run, print the verdict and figures (and the JSON line), write the
    report; exit 0 when every promise held, 1 otherwise."""
    from rich.console import Console

    from loadtest.chaos import ChaosOptions, run_chaos
    from loadtest.chaos_report import print_summary, write_report
    from loadtest.chaos_schedule import parse_kinds

    try:
        kinds = parse_kinds(args.faults)
    except ValueError as exc:
        raise ValidationFailed("botsim chaos", [("--faults", str(exc))]) from exc
    opts = ChaosOptions(
        duration_s=args.duration, workers=args.workers, bots=args.bots, chats=args.chats,
        seed=args.seed, kinds=kinds, msgs_per_hour=args.msgs_per_hour,
        human_rate_per_min=args.human_rate, llm_latency_ms=args.llm_latency_ms,
        heartbeat_ttl_s=args.heartbeat_ttl, keep=args.keep, progress=not args.quiet)
    opts.validate()
    figures = _run_measured("botsim chaos", args.report, lambda: run_chaos(opts))
    if figures is None:
        return 1
    print_summary(figures, Console(highlight=False))
    if args.report is not None:
        print(f"report: {write_report(figures, args.report)}")
    if args.json:
        print(json.dumps(figures, ensure_ascii=False, default=str))
    return 0 if figures["verdict"]["passed"] else 1


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    """``--since -10m`` → ``--since=-10m`` (argparse takes a value starting with ``-`` for
    an option otherwise)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--since", "--until") and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


#: The commands that are processes of their own, traced as ``botsim-<command>`` when
#: ``BOTSIM_TRACING`` says so (``backend.tracing``).
TRACED = ("worker", "listener", "api", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``botsim`` command; returns the exit code."""
    args = _parser().parse_args(_join_dash_values(sys.argv[1:] if argv is None else argv))
    configure_process()
    traced = False
    try:
        settings = load_settings()
        # The conversation (demo) or the figures (load test) are the output: warnings only.
        configure_logging(settings, quiet=args.command in ("demo", "loadtest", "chaos"))
        if args.command in TRACED and not getattr(args, "check", False):
            from backend.tracing import configure_tracing

            traced = configure_tracing(settings, f"botsim-{args.command}")
        if args.command == "demo":
            from botsim.demo import DemoOptions, run_demo

            if args.humans < 0 or (args.humans and not args.duration):
                raise ValidationFailed("botsim demo", [
                    ("--humans", "a count >= 0, with a positive --duration to spread them")])
            options = DemoOptions(duration=args.duration, say=args.say, json_out=args.json,
                                  read_stdin=not args.no_input, llm=args.llm,
                                  panel=not args.no_panel, humans=args.humans,
                                  realism=not args.no_realism,
                                  events=[_demo_event(e) for e in args.event])
            try:
                asyncio.run(run_demo(settings, options))
            except KeyboardInterrupt:
                print("stopped", file=sys.stderr)
            return 0
        if args.command == "db":
            from backend.db.session import upgrade_sync

            upgrade_sync(settings.effective_database_url)
            print(f"database at head: {settings.effective_database_url.split('@')[-1]}")
            return 0
        if args.command == "personas":
            from bots.personas import load_persona_file

            bad = 0
            for path in args.files:
                try:
                    persona = load_persona_file(path)
                    print(f"{path}: ok ({persona.name}, @{persona.username})")
                except ValidationFailed as exc:
                    bad += 1
                    print(str(exc), file=sys.stderr)
            return 2 if bad else 0
        if args.command == "interview":
            return asyncio.run(_interview_cmd(settings, args.bot, args.question, args.llm,
                                              args.json))
        if args.command == "costs":
            asyncio.run(_costs_cmd(settings, args.since, args.by, args.json))
            return 0
        if args.command == "realism":
            from botsim.realism_cli import realism_cmd

            return asyncio.run(realism_cmd(
                settings, database_url_arg=args.database_url, chats=args.chat,
                since=args.since, until=args.until, as_json=args.json))
        if args.command == "settings":
            asyncio.run(_settings_cmd(settings, args.action, args.pairs))
            return 0
        if args.command == "event":
            from botsim.events_cli import event_cmd

            return asyncio.run(event_cmd(settings, args))
        if args.command == "worker" and args.check:
            import worker

            return worker.check(settings)
        if args.command == "admin" and args.admin_command != "create-user":
            return asyncio.run(accounts_cli.accounts_cmd(settings, args))
        if args.command == "admin":
            password = os.environ.get("BOTSIM_NEW_USER_PASSWORD")
            asyncio.run(_create_user_cmd(settings, args.username, args.role, password))
            return 0
        if args.command == "loadtest":
            return _loadtest_cmd(args)
        if args.command == "chaos":
            return _chaos_cmd(args)
        if args.command == "preflight":
            return asyncio.run(_preflight_cmd(settings, bot_ids=args.bot, strict=args.strict,
                                              call_timeout_s=args.timeout, as_json=args.json))
        if args.command == "bots":
            try:
                ids = asyncio.run(_import_cmd(settings, args.file, dry_run=args.dry_run))
            except ValidationFailed as exc:
                print(f"botsim bots import: {exc.where} refused, nothing written:",
                      file=sys.stderr)
                for where, reason in exc.problems:
                    print(f"  {where}: {reason}", file=sys.stderr)
                return 2
            if args.preflight and not args.dry_run:
                return asyncio.run(_preflight_cmd(settings, bot_ids=ids, strict=False,
                                                  call_timeout_s=10.0, as_json=False))
            return 0
        if args.command in ("worker", "listener", "api"):
            return _run_process(settings, args.command, register=getattr(args, "register", False))
    except (ConfigError, ValidationFailed) as exc:
        print(f"botsim: {exc}", file=sys.stderr)
        return 2
    except BotsimError as exc:
        print(f"botsim: {exc}", file=sys.stderr)
        return 1
    finally:
        if traced:  # the spans still queued go out before the process ends
            from backend.tracing import shutdown_tracing

            shutdown_tracing()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

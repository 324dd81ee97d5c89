"""``botsim event``: inject, schedule, list and cancel world events (issue 16, item 5).

::

    botsim event add "HEADLINE" [--shock SYM=PCT ...] [--view TOPIC=bullish|bearish ...]
                     [--topic T ...] [--at ISO|+5m|+30s|+2h] [--json]
    botsim event add --preset rate_hike [--at ...] [--json]
    botsim event list [--json]
    botsim event cancel ID
    botsim event presets [--json]

Events are stored with ``created_by`` ``cli`` and audited (``world_event.created`` /
``world_event.cancelled``, user ``cli``) as the API does; running workers pick them up within
seconds (:mod:`behavior_engine.events`). ``--at``: an ISO time (UTC unless it says) or
``+N`` followed by ``s``, ``m``, ``h`` or ``d`` from now; within a day back and 30 days
ahead. Bad input exits 2 with a message naming the value; an unknown id too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from backend.errors import NotFound, ValidationFailed
from backend.schemas import WorldEvent, WorldEventIn
from backend.settings import Settings
from botsim.terminal import clean

#: ``created_by`` and audit username of the CLI's events.
CLI_USER = "cli"
#: ``--at +5m``: a relative time (seconds, minutes, hours, days).
_RELATIVE = re.compile(r"^\+(\d{1,7}(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Events read per page by ``list`` (the store's largest page).
_PAGE = 500


def add_parser(sub: Any) -> None:
    """Add ``event`` and its sub-commands to the ``botsim`` sub-parsers ``sub``."""
    ev = sub.add_parser("event", help="world events: inject, schedule, list, cancel")
    ev_sub = ev.add_subparsers(dest="event_command", required=True)
    add = ev_sub.add_parser("add", help="inject a world event now, or schedule it (--at)")
    add.add_argument("headline", nargs="?", default=None,
                     help="what happened, 3-280 characters (not with --preset)")
    add.add_argument("--preset", default=None, help="a ready-made event (botsim event presets)")
    add.add_argument("--shock", action="append", default=[], metavar="SYM=PCT",
                     help="a price move in percent, e.g. BIST100=-2.5 (repeatable)")
    add.add_argument("--view", action="append", default=[], metavar="TOPIC=bullish|bearish",
                     help="the way it pushes views on a topic (repeatable)")
    add.add_argument("--topic", action="append", default=[], metavar="T",
                     help="a topic it is about (repeatable; default: from shocks, views and"
                          " the headline)")
    add.add_argument("--at", default=None,
                     help="when: an ISO time (UTC unless it says) or +30s, +5m, +2h, +1d")
    add.add_argument("--json", action="store_true", help="print the stored event as JSON")
    ls = ev_sub.add_parser("list", help="every stored event, oldest first")
    ls.add_argument("--json", action="store_true", help="one JSON array")
    cancel = ev_sub.add_parser("cancel", help="cancel a scheduled event that has not happened")
    cancel.add_argument("id", help="the event's id")
    pr = ev_sub.add_parser("presets", help="the ready-made events")
    pr.add_argument("--json", action="store_true", help="one JSON object, name → event")


def parse_at(raw: str | None, now: datetime) -> datetime | None:
    """``--at``: None; ``+5m`` (s/m/h/d) from ``now``; or an ISO time (naive: UTC).

    Raises:
        ValidationFailed: not one of those, or outside a day back and 30 days ahead
            (``--at`` named with the value).
    """
    from backend.api.routes_events import MAX_AHEAD, MAX_BACKDATE

    if raw is None:
        return None
    text = raw.strip()
    rel = _RELATIVE.match(text)
    try:
        if rel:
            at = now + timedelta(seconds=float(rel.group(1)) * _UNITS[rel.group(2)])
        else:
            at = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z")
                                        else text)
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValidationFailed("botsim event add", [(
            "--at", f"{raw!r}: expected an ISO time (2026-12-05T10:00Z) or +30s, +5m, +2h, "
                    "+1d")]) from None
    if not now - MAX_BACKDATE <= at <= now + MAX_AHEAD:
        raise ValidationFailed("botsim event add", [(
            "--at", f"{raw!r}: must be within {MAX_BACKDATE.days} day(s) before and "
                    f"{MAX_AHEAD.days} days after now")])
    return at


def build_event(args: argparse.Namespace, now: datetime) -> WorldEventIn:
    """The event ``botsim event add`` asked for.

    Raises:
        ValidationFailed: a bad or missing value; each problem names its option (``--shock``,
            ``--view``, ``--preset``, ``headline``...) and the value.
    """
    from behavior_engine.events import PRESETS, parse_shocks, parse_views

    where = "botsim event add"
    at = parse_at(args.at, now)
    if args.preset is not None:
        if args.preset not in PRESETS:
            raise ValidationFailed(where, [(
                "--preset", f"{args.preset!r} is not a preset (known: {', '.join(PRESETS)})")])
        if args.headline is not None or args.shock or args.view or args.topic:
            raise ValidationFailed(where, [(
                "--preset", "a preset takes only --at: drop the headline, --shock, --view "
                            "and --topic")])
        return PRESETS[args.preset].model_copy(update={"at": at})
    if args.headline is None:
        raise ValidationFailed(where, [("headline", "give a HEADLINE or --preset NAME")])
    problems: list[tuple[str, str]] = []
    shocks: dict[str, float] = {}
    views: dict[str, str] = {}
    try:
        shocks = parse_shocks(args.shock)
    except ValueError as exc:
        problems.append(("--shock", str(exc)))
    try:
        views = parse_views(args.view)
    except ValueError as exc:
        problems.append(("--view", str(exc)))
    if problems:
        raise ValidationFailed(where, problems)
    try:
        return WorldEventIn.model_validate({
            "headline": args.headline, "shocks": shocks, "views": views,
            "topics": [t.strip().lower() for t in args.topic], "at": at})
    except ValidationError as exc:
        names = {"topics": "--topic", "shocks": "--shock", "views": "--view"}
        raise ValidationFailed(where, [
            (names.get(str(e["loc"][0]), str(e["loc"][0])) if e["loc"] else "event",
             str(e["msg"])) for e in exc.errors()]) from None


def event_line(event: WorldEvent) -> str:
    """One line of ``botsim event list``: id, time, headline, shocks, views, topics, who."""
    from backend.api.routes_events import shocks_text

    parts = [f"#{event.id}", event.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
             event.headline]
    if event.shocks:
        parts.append(f"[{shocks_text(event.shocks.items())}]")
    if event.views:
        parts.append("views " + ", ".join(f"{t}={v}" for t, v in event.views.items()))
    if event.topics:
        parts.append("topics " + ", ".join(event.topics))
    parts.append(f"by {event.created_by}")
    parts = [clean(part, one_line=True) for part in parts]  # written by people
    return "  ".join(parts)


def _audit_after(event: WorldEvent) -> dict[str, Any]:
    return event.model_dump(mode="json", include={"headline", "shocks", "views", "topics",
                                                  "at"})


async def event_cmd(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``botsim event ...``; returns the exit code (2: bad input, unknown id).

    Raises:
        ValidationFailed: bad input (the caller prints it and exits 2).
    """
    from backend.db.types import utcnow
    from backend.stores import audit
    from backend.stores import events as store
    from behavior_engine.events import PRESETS
    from botsim.bootstrap import runtime

    def _one_shot() -> Any:
        # the cache connected: the workers hear of the change at once (events/latest)
        return runtime(settings, redis=False)

    command = args.event_command
    if command == "presets":
        if args.json:
            print(json.dumps({n: e.model_dump(mode="json", exclude={"at"})
                              for n, e in PRESETS.items()}, ensure_ascii=False))
        else:
            from backend.api.routes_events import shocks_text

            for name, e in PRESETS.items():
                print(f"{name:<20} {clean(e.headline, one_line=True)}  "
                      f"[{shocks_text(e.shocks.items())}]")
        return 0
    if command == "cancel":
        text = str(args.id).strip()
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 2**31 - 1):
            print(f"botsim event cancel: {args.id!r} is not an event id (a whole number "
                  "from 1)", file=sys.stderr)
            return 2
        async with _one_shot() as rt:
            try:
                async with rt.sessionmaker() as session, session.begin():
                    gone = await store.cancel_event(session, event_id=int(text),
                                                    cache=rt.cache)
                    await audit.record(session, user_id=None, username=CLI_USER,
                                       action="world_event.cancelled", entity="world_event",
                                       entity_id=gone.id, before=_audit_after(gone),
                                       after=None)
            except NotFound:
                print(f"botsim event cancel: no world event {text}", file=sys.stderr)
                return 2
        print(f"cancelled {event_line(gone)}")
        return 0
    if command == "add":
        now = utcnow()
        event = build_event(args, now)
        async with _one_shot() as rt:
            async with rt.sessionmaker() as session, session.begin():
                stored = await store.add_event(session, event=event, created_by=CLI_USER,
                                               now=now, cache=rt.cache)
                await audit.record(session, user_id=None, username=CLI_USER,
                                   action="world_event.created", entity="world_event",
                                   entity_id=stored.id, before=None,
                                   after=_audit_after(stored))
        if args.json:
            print(stored.model_dump_json())
        else:
            when = "scheduled" if stored.at > now else "injected"
            print(f"{when} {event_line(stored)}")
        return 0
    # list
    events: list[WorldEvent] = []
    async with _one_shot() as rt, rt.sessionmaker() as session:
        after = 0
        while True:
            page = await store.list_events(session, after_id=after, limit=_PAGE)
            events += page
            if len(page) < _PAGE:
                break
            after = page[-1].id
    if args.json:
        print(json.dumps([e.model_dump(mode="json") for e in events], ensure_ascii=False))
    elif not events:
        print("no world events")
    else:
        for e in events:
            print(event_line(e))
    return 0

"""``botsim bots import FILE``: bots (token and persona) and their groups from a CSV or YAML.

A row is one bot: its Bot API ``token``, its ``persona`` (a persona file, or the name of a
persona: a bot already stored with that username, or a demo persona of ``bots/personas`` by
file stem, username or display name), its ``groups`` (Telegram chat ids, optionally with a
title) and an optional ``talkativeness`` (its share weight in those groups, 0.05–10,
overriding the persona's; ``chat_bots.talkativeness``).

CSV (a header row; columns in any order; ``groups`` separated by ``;``, a title after
``=``)::

    token,persona,groups,talkativeness
    123456789:AAE…,personas/ayse.yaml,-1001234567890=Piyasa Sohbeti;-1009876543210,1.5
    223456789:AAF…,ali_hoca,-1001234567890,

YAML (a list of mappings, or ``{bots: [...]}``; a group may be an id, ``"ID=Title"`` or a
mapping ``{id, title?, talkativeness?, topics?}``)::

    - token: "123456789:AAE…"
      persona: personas/ayse.yaml      # relative to the import file
      groups: [-1001234567890, {id: -1009876543210, title: "Kripto & Döviz"}]
      talkativeness: 1.5

The whole file is validated before anything is written; every problem is reported with its
row (CSV: and line) and field: a token not of the form ``<bot id>:<secret>``, an unknown or
invalid persona, a group id that is not a negative integer, a talkativeness out of bounds,
the same token, bot id or username in two rows, a token whose bot is stored under another
username. Then, in one transaction, each bot is created or updated
(:func:`backend.stores.bots.upsert_persona_bot`: persona fields and token, stored
encrypted), each group created (its topics: the sum of its new members' persona topics,
unless given) or retitled, and each membership added (memberships not in the file are left
as they are). Tokens are never printed: ``mask_token`` shows ``<bot id>:****<last 4>``, the
last four telling a revoked token from its successor (both share the bot id).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher, mask_token
from backend.db.models import Bot
from backend.errors import ConfigError, PersonaFileError, ValidationFailed
from backend.schemas import Persona
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores.chats import TALKATIVENESS_MAX, TALKATIVENESS_MIN
from bots.personas import DEMO_DIR, load_persona_file

#: A Bot API token: the bot's user id, a colon, its secret (BotFather gives 35 characters of
#: ``A-Za-z0-9_-``; 20 to 100 are accepted).
TOKEN_RE = re.compile(r"^[1-9]\d{0,19}:[A-Za-z0-9_-]{20,100}$")
TOKEN_EXPECTED = "expected '<bot id>:<secret>' (digits, a colon, 20-100 of A-Za-z0-9_-)"
COLUMNS = ("token", "persona", "groups", "talkativeness")
REQUIRED = ("token", "persona", "groups")
GROUP_KEYS = ("id", "title", "talkativeness", "topics")
#: Longest group title (``chats.title``).
TITLE_MAX = 255


@dataclass(frozen=True)
class GroupSpec:
    """A group of a row: Telegram's chat id, and what the row says about it."""

    telegram_chat_id: int
    title: str | None = None
    talkativeness: float | None = None
    topics: dict[str, float] | None = None


@dataclass(frozen=True)
class ImportRow:
    """A validated row: one bot and its groups. ``token`` is left out of ``repr``."""

    label: str
    token: str = field(repr=False)
    persona: Persona
    persona_source: str
    groups: tuple[GroupSpec, ...]
    talkativeness: float | None


@dataclass
class _Raw:
    label: str
    fields: dict[str, Any]


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, label: str, name: str, reason: str) -> None:
        self.items.append((f"{label}, {name}", reason))


# --- reading the file -------------------------------------------------------------------


def read_rows(path: Path, problems: _Problems) -> list[_Raw]:
    """The rows of ``path`` (``.csv``, or ``.yaml``/``.yml``) as raw field mappings.

    Problems of the file as a whole (unreadable, unknown suffix, bad header, not a list)
    go to ``problems``; rows are labelled ``row N`` (CSV: ``row N (line L)``).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add("file", "(file)", f"cannot be read: {exc}")
        return []
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(text, problems)
    if suffix in (".yaml", ".yml"):
        return _yaml_rows(text, problems)
    problems.add("file", "(file)", f"unknown kind {suffix or '(none)'!r}: use .csv, .yaml or .yml")
    return []


def _csv_rows(text: str, problems: _Problems) -> list[_Raw]:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[_Raw] = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            unknown = [c for c in header if c not in COLUMNS]
            missing = [c for c in REQUIRED if c not in header]
            if unknown:
                problems.add("header", "(columns)", f"unknown column(s) {', '.join(unknown)}"
                             f" (expected {', '.join(COLUMNS)})")
            if missing:
                problems.add("header", "(columns)", f"missing column(s) {', '.join(missing)}")
            if unknown or missing:
                return []
            continue
        label = f"row {len(rows) + 1} (line {reader.line_num})"
        if len(cells) > len(header):
            problems.add(label, "(row)", f"{len(cells)} cells for {len(header)} columns")
            rows.append(_Raw(label, {}))
            continue
        values = {h: c.strip() for h, c in zip(header, cells, strict=False)}
        rows.append(_Raw(label, {k: v for k, v in values.items() if v != ""}))
    if header is None:
        problems.add("file", "(file)", f"empty: expected a header ({', '.join(COLUMNS)})")
    return rows


def _yaml_rows(text: str, problems: _Problems) -> list[_Raw]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problems.add("file", where, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")
        return []
    if isinstance(data, dict) and set(data) == {"bots"}:
        data = data["bots"]
    if not isinstance(data, list):
        problems.add("file", "(file)", "expected a list of bots (or a mapping 'bots: [...]')")
        return []
    rows = []
    for i, item in enumerate(data, start=1):
        label = f"row {i}"
        if not isinstance(item, dict):
            problems.add(label, "(row)", f"expected a mapping of {', '.join(COLUMNS)}")
            rows.append(_Raw(label, {}))
            continue
        unknown = [str(k) for k in item if k not in COLUMNS]
        if unknown:
            problems.add(label, "(row)", f"unknown field(s) {', '.join(unknown)}"
                         f" (expected {', '.join(COLUMNS)})")
        rows.append(_Raw(label, {str(k): v for k, v in item.items()
                                 if k in COLUMNS and v is not None}))
    return rows


# --- validating the fields --------------------------------------------------------------


def check_token(value: Any) -> str | None:
    """The reason ``value`` is not a token's form, or None. Never quotes the value."""
    if not isinstance(value, str):
        return f"expected a string (quote it in YAML), got {type(value).__name__}"
    if not TOKEN_RE.fullmatch(value.strip()):
        return f"bad token format: {TOKEN_EXPECTED}"
    return None


def _talkativeness(value: Any) -> tuple[float | None, str | None]:
    if isinstance(value, bool):
        return None, "expected a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"expected a number from {TALKATIVENESS_MIN} to {TALKATIVENESS_MAX}"
    if not TALKATIVENESS_MIN <= number <= TALKATIVENESS_MAX:
        return None, f"{number:g} is outside {TALKATIVENESS_MIN}-{TALKATIVENESS_MAX}"
    return number, None


def _chat_id(value: Any) -> tuple[int | None, str | None]:
    expected = "a group's Telegram id is a negative integer (e.g. -1001234567890)"
    if isinstance(value, bool):
        return None, expected
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"-\d{1,20}", text):
            return None, f"{text[:40]!r}: {expected}"
        value = int(text)
    if not isinstance(value, int) or value >= 0:
        return None, f"{str(value)[:40]!r}: {expected}"
    return value, None


def _title(value: Any) -> tuple[str | None, str | None]:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return None, "a group title is text"
    text = str(value).strip()
    if not text or len(text) > TITLE_MAX or "\x00" in text:
        return None, f"a group title is 1-{TITLE_MAX} characters"
    return text, None


def _groups(value: Any) -> tuple[list[GroupSpec], list[str]]:
    """Parse a row's ``groups``: a ``;``-separated string (``ID`` or ``ID=Title``), one id,
    or a YAML list of ids, ``"ID=Title"`` strings and ``{id, title, talkativeness,
    topics}`` mappings. Returns the groups and the reasons of the refused ones."""
    items: list[Any]
    if isinstance(value, str):
        items = [p for p in (s.strip() for s in value.split(";")) if p]
    elif isinstance(value, list):
        items = value
    else:
        items = [value]
    specs: list[GroupSpec] = []
    errors: list[str] = []
    for n, item in enumerate(items, start=1):
        where = f"group {n}"
        if isinstance(item, dict):
            unknown = [str(k) for k in item if k not in GROUP_KEYS]
            if unknown:
                errors.append(f"{where}: unknown field(s) {', '.join(unknown)}"
                              f" (expected {', '.join(GROUP_KEYS)})")
                continue
            chat_id, why = _chat_id(item.get("id"))
            title, why_t = (None, None) if item.get("title") is None else _title(item["title"])
            talk, why_k = ((None, None) if item.get("talkativeness") is None
                           else _talkativeness(item["talkativeness"]))
            topics, why_p = _topics(item.get("topics"))
            bad = [w for w in (why, why_t, why_k, why_p) if w]
            if bad or chat_id is None:
                errors.extend(f"{where}: {w}" for w in bad)
                continue
            specs.append(GroupSpec(chat_id, title, talk, topics))
            continue
        raw_id: Any = item
        title_part: str | None = None
        if isinstance(item, str) and "=" in item:
            raw_id, title_part = item.split("=", 1)
        chat_id, why = _chat_id(raw_id)
        title, why_t = (None, None) if title_part is None else _title(title_part)
        if why or why_t or chat_id is None:
            errors.extend(f"{where}: {w}" for w in (why, why_t) if w)
            continue
        specs.append(GroupSpec(chat_id, title))
    if not specs and not errors:
        errors.append("at least one group (a Telegram chat id) is needed")
    seen: set[int] = set()
    for spec in specs:
        if spec.telegram_chat_id in seen:
            errors.append(f"group {spec.telegram_chat_id} is listed twice")
        seen.add(spec.telegram_chat_id)
    return specs, errors


def _topics(value: Any) -> tuple[dict[str, float] | None, str | None]:
    if value is None:
        return None, None
    from backend.schemas import TopicWeights

    try:
        return dict(TopicWeights.model_validate({"weights": value}).weights), None
    except ValueError as exc:
        first = str(exc).splitlines()
        return None, f"topics: {first[-1].strip() if first else 'invalid'}"


@dataclass
class PersonaIndex:
    """The personas a row may name: demo persona files and the stored bots' personas."""

    directory: Path = DEMO_DIR
    _demo: dict[str, Persona] | None = None

    def demo(self) -> dict[str, Persona]:
        """Demo personas by file stem, username and display name (lower case)."""
        if self._demo is None:
            self._demo = {}
            for path in sorted(self.directory.glob("*.yaml")):
                persona = load_persona_file(path)
                for key in (path.stem, persona.username, persona.name):
                    self._demo.setdefault(key.lower(), persona)
        return self._demo


def stored_persona(bot: Bot) -> Persona:
    """The whole persona of a stored bot (its profile, name, username, stances, holdings)."""
    return Persona.model_validate({
        **bot.persona.model_dump(), "name": bot.name, "username": bot.username,
        "stances": bot.stances.items, "holdings": bot.holdings.items})


async def _persona(session: AsyncSession, value: Any, base_dir: Path,
                   index: PersonaIndex) -> tuple[Persona | None, str, str | None]:
    """Resolve a row's ``persona``: (persona, where it came from, reason it was refused)."""
    if not isinstance(value, str) or not value.strip():
        return None, "", "expected a persona file or a persona's name"
    text = value.strip()
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") or "/" in text:
        full = path if path.is_absolute() else base_dir / path
        if not full.is_file():
            return None, "", f"no persona file {text!r} (relative to {base_dir})"
        try:
            return load_persona_file(full), str(full), None
        except PersonaFileError as exc:
            return None, "", "; ".join(f"{f}: {r}" for f, r in exc.problems) + f" (in {text})"
    stored = await bot_store.bot_with_username(session, username=text.lstrip("@"))
    if stored is not None:
        return stored_persona(stored), f"stored bot {stored.id}", None
    found = index.demo().get(text.lower())
    if found is not None:
        return found, f"demo persona {found.username}", None
    known = sorted({p.username for p in index.demo().values()})
    return None, "", (f"unknown persona {text[:64]!r}: name a persona file (.yaml), a stored "
                      f"bot's username or a demo persona ({', '.join(known)})")


async def plan_import(session: AsyncSession, path: Path,
                      personas: PersonaIndex | None = None) -> list[ImportRow]:
    """Read and validate the whole of ``path`` (reads the database, writes nothing).

    Returns:
        The rows, in file order.

    Raises:
        ValidationFailed: ``where`` is the file, one ``("row N, field", reason)`` per
            problem (CSV rows also name their line); no token is ever quoted.
    """
    index = personas or PersonaIndex()
    problems = _Problems()
    raws = read_rows(path, problems)
    if not raws and not problems.items:
        problems.add("file", "(file)", "no bots in it")
    rows: list[ImportRow] = []
    tokens: dict[str, str] = {}
    bot_ids: dict[int, str] = {}
    usernames: dict[str, str] = {}
    titles: dict[int, tuple[str, str]] = {}
    for raw in raws:
        f, label = raw.fields, raw.label
        if not f:
            continue
        ok = True
        for name in REQUIRED:
            if name not in f:
                problems.add(label, name, "missing")
                ok = False
        token = ""
        if "token" in f:
            why = check_token(f["token"])
            if why:
                problems.add(label, "token", why)
                ok = False
            else:
                token = str(f["token"]).strip()
                head = bot_store.bot_id_from_token(token)
                if token in tokens:
                    problems.add(label, "token", f"the same token as {tokens[token]}")
                    ok = False
                elif head in bot_ids:
                    problems.add(label, "token", f"a token of the same bot (id {head}) as "
                                 f"{bot_ids[head]}")
                    ok = False
                tokens.setdefault(token, label)
                bot_ids.setdefault(head, label)
        persona, source = None, ""
        if "persona" in f:
            persona, source, why = await _persona(session, f["persona"], path.parent, index)
            if why:
                problems.add(label, "persona", why)
                ok = False
        talk = None
        if "talkativeness" in f:
            talk, why = _talkativeness(f["talkativeness"])
            if why:
                problems.add(label, "talkativeness", why)
                ok = False
        groups: list[GroupSpec] = []
        if "groups" in f:
            groups, errors = _groups(f["groups"])
            for why in errors:
                problems.add(label, "groups", why)
            ok = ok and not errors
            for g in groups:
                if g.title is None:
                    continue
                other = titles.setdefault(g.telegram_chat_id, (g.title, label))
                if other[0] != g.title:
                    problems.add(label, "groups", f"group {g.telegram_chat_id} is titled "
                                 f"{other[0]!r} in {other[1]}")
                    ok = False
        if persona is not None:
            key = persona.username.lower()
            if key in usernames:
                problems.add(label, "persona", f"username @{persona.username} is also "
                             f"{usernames[key]}'s")
                ok = False
            usernames.setdefault(key, label)
            if token and not await _stored_conflicts(session, label, persona, token, problems):
                ok = False
        if ok and persona is not None:
            rows.append(ImportRow(label, token, persona, source, tuple(groups), talk))
    if problems.items:
        raise ValidationFailed(str(path), problems.items)
    return rows


async def _stored_conflicts(session: AsyncSession, label: str, persona: Persona, token: str,
                            problems: _Problems) -> bool:
    """Check the row against the stored bots; False (and problems) on a conflict."""
    ok = True
    same_name = await bot_store.bot_with_username(session, username=persona.username)
    if same_name is not None and same_name.username != persona.username:
        problems.add(label, "persona", f"username @{persona.username} differs only in case "
                     f"from stored bot {same_name.id} (@{same_name.username})")
        ok = False
    owner = await bot_store.bot_with_telegram_user_id(
        session, telegram_user_id=bot_store.bot_id_from_token(token))
    if owner is not None and owner.username.lower() != persona.username.lower():
        problems.add(label, "token", f"this token's bot is stored as @{owner.username} "
                     f"(bot {owner.id}), not @{persona.username}")
        ok = False
    return ok


# --- writing ----------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What an import did (or, with ``dry_run``, would do): one line per bot and group."""

    lines: list[str]
    created: int
    updated: int
    bot_ids: list[int]


async def write_rows(session: AsyncSession, rows: Sequence[ImportRow], cipher: TokenCipher,
                     cache: TwoLayerCache | None = None) -> ImportResult:
    """Upsert the bots, groups and memberships of ``rows`` in ``session``'s transaction.

    Raises:
        ValidationFailed: a value the stores refuse (already checked by
            :func:`plan_import`, so not expected).
    """
    lines: list[str] = []
    created = updated = 0
    ids: list[int] = []
    new_topics: dict[int, dict[str, float]] = {}
    titles: dict[int, str] = {}
    topics: dict[int, dict[str, float]] = {}
    for row in rows:
        for g in row.groups:
            if g.title is not None:
                titles.setdefault(g.telegram_chat_id, g.title)
            if g.topics is not None:
                topics.setdefault(g.telegram_chat_id, g.topics)
            weights = new_topics.setdefault(g.telegram_chat_id, {})
            for topic, w in row.persona.topics.items():
                weights[topic] = weights.get(topic, 0.0) + w
    done_chats: dict[int, int] = {}
    for row in rows:
        before = await bot_store.bot_with_username(session, username=row.persona.username)
        old_token: str | None = None
        if before is not None:
            try:
                old_token = cipher.decrypt(before.token_encrypted)
            except ConfigError:
                old_token = None
        bot = await bot_store.upsert_persona_bot(
            session, persona=row.persona, token=row.token, cipher=cipher, cache=cache)
        ids.append(bot.id)
        masked = mask_token(row.token)
        if before is None:
            created += 1
            what = f"created bot {bot.id} @{bot.username} ({bot.name}), token {masked}"
        else:
            updated += 1
            change = "token unchanged" if old_token == row.token else "token replaced"
            what = f"updated bot {bot.id} @{bot.username} ({bot.name}), {change}: {masked}"
            if not bot.enabled:
                what += f"; it is disabled (enable: POST /api/v1/bots/{bot.id}/enable)"
        lines.append(f"{row.label}: {what} [persona: {row.persona_source}]")
        for g in row.groups:
            tg_id = g.telegram_chat_id
            title, given = titles.get(tg_id), topics.get(tg_id)
            chat = await chat_store.get_chat_by_telegram_id(session, telegram_chat_id=tg_id)
            if chat is None:
                chat = await chat_store.upsert_chat(
                    session, telegram_chat_id=tg_id, title=title or f"group {tg_id}",
                    topics=given or new_topics[tg_id], cache=cache)
                lines.append(f"  created group {chat.id} {chat.title!r} ({tg_id})")
            elif tg_id not in done_chats and ((title and title != chat.title) or given):
                chat = await chat_store.upsert_chat(
                    session, telegram_chat_id=tg_id, title=title or chat.title,
                    topics=given or dict(chat.topics.weights), cache=cache)
                lines.append(f"  updated group {chat.id} {chat.title!r} ({tg_id})")
            done_chats[tg_id] = chat.id
            talk = g.talkativeness if g.talkativeness is not None else row.talkativeness
            await chat_store.add_bot(session, chat_id=chat.id, bot_id=bot.id, cache=cache,
                                     talkativeness=talk)
            share = "" if talk is None else f", talkativeness {talk:g}"
            lines.append(f"  member of {chat.title!r} ({tg_id}){share}")
    return ImportResult(lines, created, updated, ids)


async def import_file(
    sessionmaker: async_sessionmaker[AsyncSession], cipher: TokenCipher, path: Path, *,
    cache: TwoLayerCache | None = None, dry_run: bool = False,
    personas: PersonaIndex | None = None,
) -> ImportResult:
    """Validate the whole of ``path``, then write it in one transaction (``dry_run``: roll
    it back, so nothing is written but the result says what would be).

    Raises:
        ValidationFailed: the file is refused (nothing written); see :func:`plan_import`.
        StorageError: the database refused the transaction (nothing written).
    """
    async with sessionmaker() as session:
        transaction = await session.begin()
        try:
            rows = await plan_import(session, path, personas)
            result = await write_rows(session, rows, cipher, cache=None if dry_run else cache)
        except BaseException:
            await transaction.rollback()
            raise
        if dry_run:
            await transaction.rollback()
        else:
            await transaction.commit()
    return result


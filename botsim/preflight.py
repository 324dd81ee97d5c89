"""``botsim preflight``: check every bot against the Bot API before the simulation starts.

For each bot of our database (and each group it is configured in, ``chat_bots``) it asks
Telegram, with the bot's own token:

=============  ==============================  ==================================================
check          Bot API call                    a problem (``fail``) when
=============  ==============================  ==================================================
``token``      getMe                           401/404: the token is wrong or revoked (no
                                               further call is made with it); the token's bot
                                               is not the persona's ``@username``
``privacy``    getMe                           ``can_read_all_group_messages`` is false
                                               (privacy mode on) while the bot is a plain
                                               member of a group: it would not hear the humans
``membership`` getChatMember(group, the bot)   left, kicked, restricted without
                                               ``can_send_messages``, or Telegram refuses (403,
                                               "chat not found", the group migrated)
``webhook``    getWebhookInfo                  the URL is not ours (``<public_webhook_url>/
                                               webhook/<bot id>``), or Telegram reports a
                                               recent delivery error with updates waiting
=============  ==============================  ==================================================

Warnings (``warn``) do not fail the run unless ``strict``: no webhook set yet (``botsim
listener --register`` sets it at start), a past delivery error with nothing waiting, a long
queue, a bot in no enabled group, a disabled bot (whose problems are reported as warnings:
it takes no turn). Privacy mode on is no problem for a bot that is an administrator in each
of its groups: admins hear every message (core.telegram.org/bots/features#privacy-mode).

Each finding names what to fix, with the @BotFather step where one exists. Calls run
concurrently, at most :data:`MAX_CONCURRENT_CALLS` at once, each within ``call_timeout_s``.
Tokens are decrypted here and never logged or shown (``token_masked`` only).

The report is one pydantic model (:class:`PreflightReport`): the CLI prints it as a table
or one JSON line, the admin API answers a bot's part of it (:class:`BotPreflight`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.crypto import TokenCipher, mask_token
from backend.errors import (
    ConfigError,
    TelegramBadRequest,
    TelegramChatMigrated,
    TelegramError,
    TelegramForbidden,
    TelegramInvalidToken,
    TelegramRetryAfter,
)
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from bots.telegram import BotClient, BotIdentity, Membership, WebhookState, webhook_url_for

#: Bot API calls in flight at once, all bots together (different bots' limits are their
#: own; this bounds sockets and the load on Telegram).
MAX_CONCURRENT_CALLS = 16
#: Seconds one Bot API call may take before it counts as unanswered.
CALL_TIMEOUT_S = 10.0
#: A webhook delivery error younger than this, with updates waiting, is a problem.
WEBHOOK_ERROR_WINDOW = timedelta(hours=1)
#: Updates waiting without an error: more than this is a warning (the listener lags).
PENDING_WARN = 100

Check = Literal["token", "privacy", "membership", "webhook", "bot"]
Status = Literal["ok", "warn", "fail"]

T = TypeVar("T")


class PreflightFinding(BaseModel):
    """One check of one bot (a membership check: of one bot in one group).

    Attributes:
        check: ``token``, ``privacy``, ``membership``, ``webhook`` or ``bot`` (the bot's
            own configuration: disabled, no group, token not readable).
        status: ``ok``, ``warn`` (reported, not a failure unless strict) or ``fail``.
        detail: what was found, in a sentence.
        fix: what to do about it (a @BotFather step, a command), None when nothing.
        chat_id / telegram_chat_id / chat_title: the group of a membership check.
    """

    check: Check
    status: Status
    detail: str
    fix: str | None = None
    chat_id: int | None = None
    telegram_chat_id: int | None = None
    chat_title: str | None = None


class BotPreflight(BaseModel):
    """Every finding about one bot.

    Attributes:
        token_masked: ``<bot id>:****<last 4>`` (:func:`backend.crypto.mask_token`).
        ok: no finding is ``fail``.
    """

    bot_id: int
    name: str
    username: str
    enabled: bool
    token_masked: str
    findings: list[PreflightFinding]
    ok: bool


class PreflightReport(BaseModel):
    """The preflight of a set of bots.

    Attributes:
        checked_at: when the checks started (aware UTC).
        problems: findings that are ``fail``; warnings: those that are ``warn``.
        ok: no problem (and, with ``strict``, no warning either).
        strict: warnings counted as problems.
    """

    checked_at: datetime
    telegram_api_url: str
    webhook_base_url: str
    bots: list[BotPreflight]
    problems: int
    warnings: int
    strict: bool = False
    ok: bool = Field(description="no problem (with strict: no warning either)")


@dataclass(frozen=True)
class GroupTarget:
    """A group a bot is configured in: our chat id, Telegram's id, its title."""

    chat_id: int
    telegram_chat_id: int
    title: str


@dataclass(frozen=True)
class BotTarget:
    """A bot to check.

    Attributes:
        token: the plain token, or None when it cannot be decrypted (``token_error`` says
            why). Never logged; ``repr`` leaves it out.
        groups: the enabled groups it is configured in.
    """

    bot_id: int
    name: str
    username: str
    enabled: bool
    token: str | None = field(repr=False)
    groups: tuple[GroupTarget, ...]
    token_error: str | None = None


async def load_targets(
    sessionmaker: async_sessionmaker[AsyncSession], cipher: TokenCipher, *,
    bot_ids: Sequence[int] | None = None,
) -> list[BotTarget]:
    """Read the bots (enabled or not; only ``bot_ids`` if given) with their enabled groups.

    A token that cannot be decrypted (the Fernet key changed) becomes ``token=None`` with
    ``token_error`` set, so the other bots are still checked.

    Returns:
        One :class:`BotTarget` per bot, by id.
    """
    async with sessionmaker() as session:
        bots = await bot_store.list_bots(session, bot_ids=bot_ids)
        chats = [c for c in await chat_store.list_chats(session) if c.enabled]
        members = await chat_store.member_ids(session, chat_ids=[c.id for c in chats])
    groups_of: dict[int, list[GroupTarget]] = {}
    for chat in chats:
        for bot_id in members[chat.id]:
            groups_of.setdefault(bot_id, []).append(
                GroupTarget(chat.id, chat.telegram_chat_id, chat.title))
    targets = []
    for bot in bots:
        token: str | None
        try:
            token, error = cipher.decrypt(bot.token_encrypted), None
        except ConfigError as exc:
            token, error = None, str(exc)
        targets.append(BotTarget(
            bot_id=bot.id, name=bot.name, username=bot.username, enabled=bot.enabled,
            token=token, groups=tuple(groups_of.get(bot.id, ())), token_error=error))
    return targets


# --- what to fix ------------------------------------------------------------------------


def fix_token(username: str) -> str:
    """The fix of a refused token (BotFather's /token shows it, /revoke makes a new one)."""
    return (f"BotFather: /token → @{username} shows its current token (or /revoke → "
            f"@{username} for a new one), then `botsim bots import` the new token")


def fix_privacy(username: str) -> str:
    """The fix of privacy mode on (BotFather's /setprivacy)."""
    return (f"BotFather: /setprivacy → @{username} → Disable (then remove and re-add the "
            "bot to its groups: Telegram applies it on joining)")


def fix_add(username: str, group: GroupTarget, identity: BotIdentity | None) -> str:
    """The fix of a bot missing from a group (and BotFather's /setjoingroups if needed)."""
    first = ""
    if identity is not None and not identity.can_join_groups:
        first = f"BotFather: /setjoingroups → @{username} → Enable; then "
    return (f"{first}add @{username} to {group.title} ({group.telegram_chat_id}) and allow "
            "it to send messages")


def _fix_webhook(public_url: str) -> str:
    return (f"run `botsim listener --register` with BOTSIM_PUBLIC_WEBHOOK_URL={public_url} "
            "(the listener sets every bot's webhook at start)")


def _safe_url(url: str, token: str) -> str:
    """``url`` with the token (or its secret part) masked: foreign webhooks often hold it."""
    secret = token.partition(":")[2]
    out = url.replace(token, mask_token(token))
    return out.replace(secret, "****") if secret else out


# --- the checks -------------------------------------------------------------------------


@dataclass
class _Caller:
    """Runs Bot API calls under the shared gate and a timeout each."""

    gate: asyncio.Semaphore
    timeout_s: float

    async def __call__(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self.gate:
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await call()
            except TimeoutError:
                raise _Unanswered(f"no answer within {self.timeout_s:g} s") from None


class _Unanswered(Exception):
    """A call that timed out."""


async def _attempt(call: _Caller, fn: Callable[[], Awaitable[T]]) -> T | BaseException:
    """``call(fn)``'s answer, or the Telegram error or timeout it ended with."""
    try:
        return await call(fn)
    except (TelegramError, _Unanswered) as exc:
        return exc


def _call_failed(exc: BaseException) -> tuple[str, str]:
    """(detail, fix) of a call that got no usable answer."""
    if isinstance(exc, TelegramRetryAfter):
        return (f"Telegram rate-limits this bot: retry after {exc.retry_after:g} s",
                "wait, then run the preflight again")
    return (f"no usable answer from Telegram ({type(exc).__name__}: {exc})",
            "check BOTSIM_TELEGRAM_API_URL and the network, then run the preflight again")


def _membership_finding(target: BotTarget, group: GroupTarget, identity: BotIdentity,
                        got: Membership | BaseException) -> PreflightFinding:
    where: dict[str, Any] = {"chat_id": group.chat_id, "telegram_chat_id": group.telegram_chat_id,
             "chat_title": group.title}
    name = target.username
    if isinstance(got, Membership):
        if got.status in ("creator", "administrator", "member"):
            return PreflightFinding(check="membership", status="ok", detail=got.status, **where)
        if got.status == "restricted" and got.is_member and got.can_send_messages:
            return PreflightFinding(check="membership", status="ok",
                           detail="restricted, but may send messages", **where)
        if got.status == "restricted" and got.is_member:
            return PreflightFinding(
                check="membership", status="fail",
                detail="restricted: may not send messages",
                fix=(f"in {group.title}: Members → @{name} → allow Send messages (or lift "
                     "the restriction, or make it an administrator)"), **where)
        if got.status == "kicked":
            return PreflightFinding(
                check="membership", status="fail", detail="banned from the group (kicked)",
                fix=(f"in {group.title}: Removed users → unban @{name}; then "
                     + fix_add(name, group, identity)), **where)
        return PreflightFinding(check="membership", status="fail",
                       detail=f"not in the group ({got.status})",
                       fix=fix_add(name, group, identity), **where)
    if isinstance(got, TelegramForbidden):
        kicked = "kicked" in str(got).lower()
        return PreflightFinding(
            check="membership", status="fail",
            detail=("banned from the group" if kicked else "not in the group")
            + f" (Telegram: {got})",
            fix=(f"in {group.title}: Removed users → unban @{name}; then " if kicked else "")
            + fix_add(name, group, identity), **where)
    if isinstance(got, TelegramChatMigrated):
        return PreflightFinding(
            check="membership", status="fail",
            detail=f"the group became a supergroup: its id is now {got.new_chat_id}",
            fix=(f"import the group under {got.new_chat_id} (`botsim bots import`); the "
                 "listener also moves it when the group's next message arrives"), **where)
    if isinstance(got, TelegramBadRequest):
        return PreflightFinding(
            check="membership", status="fail",
            detail=f"Telegram cannot show the bot in this group ({got})",
            fix=(f"check the group id {group.telegram_chat_id} (a supergroup's starts with "
                 f"-100), then {fix_add(name, group, identity)}"), **where)
    detail, fix = _call_failed(got)
    return PreflightFinding(check="membership", status="fail", detail=detail, fix=fix, **where)


def _privacy_finding(target: BotTarget, identity: BotIdentity,
                     memberships: list[Membership | BaseException]) -> PreflightFinding:
    if identity.can_read_all_group_messages:
        return PreflightFinding(check="privacy", status="ok",
                       detail="privacy mode off: hears every group message")
    if not target.groups:
        return PreflightFinding(check="privacy", status="warn",
                       detail="privacy mode on (no group configured yet)",
                       fix=fix_privacy(target.username))
    admin = [isinstance(m, Membership) and m.status in ("creator", "administrator")
             for m in memberships]
    if all(admin):
        return PreflightFinding(check="privacy", status="ok",
                       detail="privacy mode on, but an administrator in each of its groups "
                              "(admins hear every message)")
    return PreflightFinding(
        check="privacy", status="fail",
        detail="privacy mode on: in its groups it hears only commands, replies and mentions, "
               "not the humans' messages",
        fix=fix_privacy(target.username))


def _webhook_finding(target: BotTarget, token: str, public_url: str,
                     got: WebhookState | BaseException, now: datetime) -> PreflightFinding:
    if not isinstance(got, WebhookState):
        detail, fix = _call_failed(got)
        return PreflightFinding(check="webhook", status="fail", detail=detail, fix=fix)
    ours = webhook_url_for(public_url, target.bot_id)
    if not got.url:
        return PreflightFinding(check="webhook", status="warn",
                       detail=f"no webhook set yet ({got.pending_update_count} updates waiting)",
                       fix=_fix_webhook(public_url))
    if got.url != ours:
        return PreflightFinding(
            check="webhook", status="fail",
            detail=f"the webhook points elsewhere: {_safe_url(got.url, token)} (ours: {ours})",
            fix=("another deployment may own this token (one owner per token): stop it, then "
                 + _fix_webhook(public_url)))
    pending = got.pending_update_count
    if got.last_error_date is not None:
        message = got.last_error_message or "no description"
        when = got.last_error_date.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if pending > 0 and now - got.last_error_date <= WEBHOOK_ERROR_WINDOW:
            return PreflightFinding(
                check="webhook", status="fail",
                detail=(f"Telegram cannot deliver to {ours}: {message} at {when} "
                        f"({pending} updates waiting)"),
                fix=(f"make {public_url} reachable from Telegram (HTTPS on port 443, 80, 88 or "
                     "8443, a valid certificate, no redirect) and the listener running"))
        return PreflightFinding(check="webhook", status="warn",
                       detail=f"ours; the last delivery error was at {when}: {message}",
                       fix=None if pending == 0 else "check the listener's log")
    if pending > PENDING_WARN:
        return PreflightFinding(check="webhook", status="warn",
                       detail=f"ours, but {pending} updates are waiting",
                       fix="check that the listener runs and keeps up")
    return PreflightFinding(check="webhook", status="ok", detail=f"ours, {pending} updates waiting")


async def check_bot(target: BotTarget, *, api_url: str, public_url: str, call: _Caller,
                    now: datetime) -> BotPreflight:
    """Every check of one bot (see the module table); never raises for Telegram's answers.

    getMe comes first: a refused token (or no answer) ends the bot's checks there; then
    getWebhookInfo and one getChatMember per group, concurrently.
    """
    findings: list[PreflightFinding] = []
    if not target.enabled:
        findings.append(PreflightFinding(
            check="bot", status="warn", detail="disabled: takes no turn",
            fix=f"enable it in the panel (Personas → {target.name}) or POST "
                f"/api/v1/bots/{target.bot_id}/enable"))
    if not target.groups:
        findings.append(PreflightFinding(
            check="bot", status="warn", detail="in no enabled group",
            fix="add it to a group (`botsim bots import` or the panel's persona page)"))
    if target.token is None:
        findings.append(PreflightFinding(
            check="token", status="fail",
            detail=f"the stored token cannot be read: {target.token_error}",
            fix="set BOTSIM_FERNET_KEY to the key the tokens were stored with, or "
                "`botsim bots import` the token again"))
        return _bot_report(target, "****", findings)
    token = target.token
    client = BotClient(bot_id=target.bot_id, token=token, base_url=api_url,
                       timeout=call.timeout_s)
    try:
        try:
            identity = await call(client.get_me)
        except TelegramInvalidToken:
            findings.append(PreflightFinding(
                check="token", status="fail",
                detail="Telegram refuses the token (wrong or revoked)",
                fix=fix_token(target.username)))
            return _bot_report(target, mask_token(token), findings)
        except (TelegramError, _Unanswered) as exc:
            detail, fix = _call_failed(exc)
            findings.append(PreflightFinding(check="token", status="fail", detail=detail, fix=fix))
            return _bot_report(target, mask_token(token), findings)
        if identity.username.lower() != target.username.lower():
            findings.append(PreflightFinding(
                check="token", status="fail",
                detail=(f"the token belongs to @{identity.username}, not to "
                        f"@{target.username}"),
                fix=(f"`botsim bots import` @{target.username}'s own token, or give the "
                     f"persona the username {identity.username}")))
        else:
            findings.append(PreflightFinding(check="token", status="ok",
                                    detail=f"valid: @{identity.username} ({identity.user_id})"))
        uid = identity.user_id

        def member_call(group: GroupTarget) -> Callable[[], Awaitable[Membership]]:
            return lambda: client.get_chat_member(chat_id=group.telegram_chat_id, user_id=uid)

        webhook_task = asyncio.create_task(_attempt(call, client.get_webhook_info))
        memberships: list[Membership | BaseException] = list(await asyncio.gather(
            *(_attempt(call, member_call(g)) for g in target.groups)))
        webhook = await webhook_task
        findings.append(_privacy_finding(target, identity, memberships))
        findings.append(_webhook_finding(target, token, public_url, webhook, now))
        findings.extend(_membership_finding(target, g, identity, m)
                        for g, m in zip(target.groups, memberships, strict=True))
    finally:
        await client.close()
    return _bot_report(target, mask_token(token), findings)


def _bot_report(target: BotTarget, masked: str, findings: list[PreflightFinding]) -> BotPreflight:
    if target.token:  # no text from Telegram or httpx may carry the token out
        findings = [f.model_copy(update={
            "detail": _safe_url(f.detail, target.token),
            "fix": None if f.fix is None else _safe_url(f.fix, target.token)})
            for f in findings]
    if not target.enabled:  # a disabled bot takes no turn: its problems do not block
        findings = [f.model_copy(update={"status": "warn", "detail": f"{f.detail} (disabled)"})
                    if f.status == "fail" else f for f in findings]
    return BotPreflight(bot_id=target.bot_id, name=target.name, username=target.username,
                        enabled=target.enabled, token_masked=masked, findings=findings,
                        ok=all(f.status != "fail" for f in findings))


async def run_checks(
    targets: Sequence[BotTarget], *, api_url: str, public_url: str, strict: bool = False,
    max_concurrent: int = MAX_CONCURRENT_CALLS, call_timeout_s: float = CALL_TIMEOUT_S,
) -> PreflightReport:
    """Check ``targets`` against the Bot API at ``api_url`` (see the module table).

    Args:
        api_url: Bot API base URL (``settings.telegram_api_url``).
        public_url: where Telegram reaches the listener (``settings.public_webhook_url``);
            a bot's webhook must be ``<public_url>/webhook/<bot id>``.
        strict: count warnings as problems in ``ok``.
        max_concurrent: Bot API calls in flight at once (>= 1).
        call_timeout_s: seconds each call may take (> 0).

    Returns:
        The report, bots in the order of ``targets``.

    Raises:
        ValueError: ``max_concurrent`` < 1 or ``call_timeout_s`` <= 0.
    """
    if max_concurrent < 1 or not call_timeout_s > 0:
        raise ValueError(f"max_concurrent must be >= 1 and call_timeout_s > 0, got "
                         f"{max_concurrent!r} and {call_timeout_s!r}")
    now = datetime.now(UTC)
    call = _Caller(asyncio.Semaphore(max_concurrent), call_timeout_s)
    bots = list(await asyncio.gather(*(
        check_bot(t, api_url=api_url, public_url=public_url, call=call, now=now)
        for t in targets)))
    statuses = [f.status for b in bots for f in b.findings]
    problems, warnings = statuses.count("fail"), statuses.count("warn")
    return PreflightReport(
        checked_at=now, telegram_api_url=api_url, webhook_base_url=public_url, bots=bots,
        problems=problems, warnings=warnings, strict=strict,
        ok=problems == 0 and not (strict and warnings))


async def preflight(
    sessionmaker: async_sessionmaker[AsyncSession], cipher: TokenCipher, *, api_url: str,
    public_url: str, bot_ids: Sequence[int] | None = None, strict: bool = False,
    call_timeout_s: float = CALL_TIMEOUT_S,
) -> PreflightReport:
    """Load the bots (:func:`load_targets`) and check them (:func:`run_checks`).

    Raises:
        StorageError: the database cannot be read.
    """
    targets = await load_targets(sessionmaker, cipher, bot_ids=bot_ids)
    return await run_checks(targets, api_url=api_url, public_url=public_url, strict=strict,
                            call_timeout_s=call_timeout_s)


# --- the table --------------------------------------------------------------------------

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}
_LABEL = {"ok": "ok", "warn": "warn", "fail": "PROBLEM"}


def render_table(report: PreflightReport) -> object:
    """A ``rich`` table of ``report``: one row per check of a bot (a membership check: per
    bot and group), with what to fix; the caption sums it up."""
    from rich.markup import escape
    from rich.table import Table

    from botsim.terminal import clean

    verdict = ("all good" if report.ok else
               f"{report.problems} problem(s), {report.warnings} warning(s)")
    table = Table(title=f"botsim preflight: {len(report.bots)} bot(s) against "
                        f"{report.telegram_api_url}", caption=verdict, show_lines=False)
    for col in ("bot", "check", "group", "result", "detail", "what to fix"):
        table.add_column(col, overflow="fold")
    for bot in report.bots:
        for i, f in enumerate(bot.findings):
            # names, titles and Telegram's descriptions: no control sequence, no markup
            who = (escape(clean(bot.name, one_line=True)) + "\n"
                   + escape(clean(f"@{bot.username} (bot {bot.bot_id})", one_line=True))
                   if i == 0 else "")
            group = (escape(clean(f"{f.chat_title} ({f.telegram_chat_id})", one_line=True))
                     if f.telegram_chat_id is not None else "")
            table.add_row(who, f.check, group, f"[{_STYLE[f.status]}]{_LABEL[f.status]}[/]",
                          escape(clean(f.detail)), escape(clean(f.fix or "")),
                          end_section=i == len(bot.findings) - 1)
    return table

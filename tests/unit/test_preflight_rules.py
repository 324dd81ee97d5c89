"""The preflight's rules (``botsim.preflight``) and the import's field parsers
(``botsim.bots_import``), without Telegram or a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backend.errors import (
    TelegramBadRequest,
    TelegramChatMigrated,
    TelegramForbidden,
    TelegramRetryAfter,
)
from bots.telegram import BotIdentity, Membership, WebhookState, webhook_url_for
from botsim import bots_import
from botsim.preflight import (
    BotTarget,
    GroupTarget,
    _membership_finding,
    _privacy_finding,
    _webhook_finding,
    run_checks,
)

TOKEN = "7600000001:AAHunitSecretPart_0123456789abcdefgh"
GROUP = GroupTarget(1, -1001600000001, "Piyasa")
TARGET = BotTarget(bot_id=3, name="Ayşe", username="ayse_bot", enabled=True, token=TOKEN,
                   groups=(GROUP,))
ME = BotIdentity(7600000001, "ayse_bot", "Ayşe", can_join_groups=True,
                 can_read_all_group_messages=True)
NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
PUBLIC = "https://bots.example.org"


@pytest.mark.parametrize(("got", "status", "words"), [
    (Membership("creator", True, True), "ok", "creator"),
    (Membership("administrator", True, True), "ok", "administrator"),
    (Membership("member", True, True), "ok", "member"),
    (Membership("restricted", True, True), "ok", "may send"),
    (Membership("restricted", True, False), "fail", "may not send"),
    (Membership("restricted", False, True), "fail", "not in the group"),
    (Membership("left", False, False), "fail", "not in the group"),
    (Membership("kicked", False, False), "fail", "banned"),
    (TelegramForbidden("Forbidden: bot was kicked from the supergroup chat"), "fail", "banned"),
    (TelegramForbidden("Forbidden: bot is not a member"), "fail", "not in the group"),
    (TelegramBadRequest("Bad Request: chat not found"), "fail", "chat not found"),
    (TelegramChatMigrated(-1009), "fail", "-1009"),
    (TelegramRetryAfter(7.0), "fail", "retry after 7 s"),
])
def test_membership_rules(got: Membership | Exception, status: str, words: str) -> None:
    finding = _membership_finding(TARGET, GROUP, ME, got)
    assert finding.status == status and words in finding.detail
    assert finding.telegram_chat_id == GROUP.telegram_chat_id
    if status == "fail":
        assert finding.fix


def test_missing_bot_that_may_not_join_groups_gets_the_botfather_step_first() -> None:
    closed = BotIdentity(1, "ayse_bot", "A", can_join_groups=False,
                         can_read_all_group_messages=True)
    fix = _membership_finding(TARGET, GROUP, closed, Membership("left", False, False)).fix
    assert fix is not None and fix.startswith("BotFather: /setjoingroups → @ayse_bot → Enable")


def test_privacy_rules() -> None:
    private = BotIdentity(1, "ayse_bot", "A", can_join_groups=True,
                          can_read_all_group_messages=False)
    assert _privacy_finding(TARGET, ME, []).status == "ok"
    member = [Membership("member", True, True)]
    admin = [Membership("administrator", True, True)]
    assert _privacy_finding(TARGET, private, member).status == "fail"
    assert _privacy_finding(TARGET, private, admin).status == "ok"
    lonely = BotTarget(bot_id=3, name="A", username="ayse_bot", enabled=True, token=TOKEN,
                       groups=())
    assert _privacy_finding(lonely, private, []).status == "warn"


def _hook(url: str, pending: int = 0, error_at: datetime | None = None) -> WebhookState:
    return WebhookState(url, pending, error_at, "Connection refused" if error_at else None)


def test_webhook_rules() -> None:
    ours = webhook_url_for(PUBLIC, TARGET.bot_id)
    assert ours == "https://bots.example.org/webhook/3"
    assert _webhook_finding(TARGET, TOKEN, PUBLIC, _hook(ours), NOW).status == "ok"
    assert _webhook_finding(TARGET, TOKEN, PUBLIC, _hook(""), NOW).status == "warn"
    foreign = _webhook_finding(TARGET, TOKEN, PUBLIC, _hook(f"https://x.org/{TOKEN}"), NOW)
    assert foreign.status == "fail" and TOKEN not in foreign.detail
    assert TOKEN.split(":")[1] not in foreign.detail
    recent = _hook(ours, 5, NOW - timedelta(minutes=5))
    assert _webhook_finding(TARGET, TOKEN, PUBLIC, recent, NOW).status == "fail"
    drained = _hook(ours, 0, NOW - timedelta(minutes=5))
    assert _webhook_finding(TARGET, TOKEN, PUBLIC, drained, NOW).status == "warn"
    old = _hook(ours, 5, NOW - timedelta(days=1))
    assert _webhook_finding(TARGET, TOKEN, PUBLIC, old, NOW).status == "warn"
    assert _webhook_finding(TARGET, TOKEN, PUBLIC, _hook(ours, 500), NOW).status == "warn"


async def test_an_unreachable_api_is_a_token_problem_and_stops_there() -> None:
    report = await run_checks([TARGET], api_url="http://127.0.0.1:9/bot", public_url=PUBLIC,
                              call_timeout_s=2.0)
    assert not report.ok and report.problems == 1
    (finding,) = report.bots[0].findings
    assert finding.check == "token" and "no usable answer" in finding.detail
    assert report.bots[0].token_masked == "7600000001:****efgh"


async def test_an_unreadable_token_and_a_disabled_bot() -> None:
    broken = BotTarget(bot_id=4, name="B", username="b_bot", enabled=False, token=None,
                       groups=(), token_error="the key changed")
    report = await run_checks([broken], api_url="http://127.0.0.1:9/bot", public_url=PUBLIC)
    statuses = [(f.check, f.status) for f in report.bots[0].findings]
    assert statuses == [("bot", "warn"), ("bot", "warn"), ("token", "warn")]  # disabled
    assert report.ok and not (await run_checks(
        [broken], api_url="http://127.0.0.1:9/bot", public_url=PUBLIC, strict=True)).ok
    with pytest.raises(ValueError, match="max_concurrent"):
        await run_checks([], api_url="x", public_url="y", max_concurrent=0)


@pytest.mark.parametrize(("value", "ok"), [
    (TOKEN, True), ("7600000001:short", False), ("abc:AAHunitSecretPart_0123456789", False),
    (7600000001, False), ("7600000001:AAH unit secret part 0123456789", False)])
def test_token_form(value: object, ok: bool) -> None:
    why = bots_import.check_token(value)
    assert (why is None) == ok
    if why is not None and isinstance(value, str):
        assert value not in why


def test_groups_parsing() -> None:
    specs, errors = bots_import._groups("-1001=Piyasa Sohbeti; -1002")
    assert errors == [] and [(s.telegram_chat_id, s.title) for s in specs] == [
        (-1001, "Piyasa Sohbeti"), (-1002, None)]
    specs, errors = bots_import._groups(
        [-1001, "-1002=Kripto", {"id": -1003, "talkativeness": 2, "topics": {"btc": 1}}])
    assert errors == [] and specs[2].talkativeness == 2.0 and specs[2].topics == {"btc": 1.0}
    _, errors = bots_import._groups("1234;-1001;-1001")
    assert any("group 1" in e and "negative integer" in e for e in errors)
    assert any("listed twice" in e for e in errors)
    _, errors = bots_import._groups([{"id": -1, "talkativeness": 50}])
    assert errors and "outside" in errors[0]
    assert bots_import._groups([])[1] == ["at least one group (a Telegram chat id) is needed"]

"""The turn pipeline with fakes (no database, no Telegram, no processes): every way a turn
ends, and what each writes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from backend.errors import (
    FencedOut,
    ProviderUnavailable,
    TelegramChatMigrated,
    TelegramError,
    TelegramForbidden,
    TelegramInvalidToken,
    TelegramReplyNotFound,
    TelegramRetryAfter,
    TelegramUnavailable,
)
from backend.schemas import PersonaProfile, SimulationSettings
from behavior_engine.llm.chain import ChainEntry, ProviderChain, RetryPolicy
from behavior_engine.llm.offline import OfflineGenerator
from behavior_engine.market import MarketFeed
from behavior_engine.pipeline import (
    MAX_LIMIT_WAIT_S,
    TEXT_LIMIT,
    Sent,
    TurnPipeline,
    split_text,
    utf16_len,
)
from behavior_engine.reads import BotProfile, HistoryItem
from behavior_engine.turn import ChatLine, Generation, GenerationRequest, Turn
from bots.personas import load_persona_dir
from bots.telegram import SentMessage

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
BOT, CHAT, TG_CHAT = 7, 3, -100123


class FakeClient:
    """Plays a script of answers to sendMessage: an exception to raise, or a message id."""

    def __init__(self, *script: object) -> None:
        self.script = list(script)
        self.sends: list[tuple[int, str, int | None]] = []
        self.threads: list[int | None] = []
        self.typing = 0
        self.now: Callable[[], float] = lambda: 0.0  # the rig's fake clock, seconds
        self.events: list[tuple[str, float]] = []  # ("typing" | "send", fake time)

    async def send_message(self, *, chat_id: int, text: str,
                           reply_to_message_id: int | None = None,
                           message_thread_id: int | None = None) -> SentMessage:
        self.sends.append((chat_id, text, reply_to_message_id))
        self.threads.append(message_thread_id)
        self.events.append(("send", self.now()))
        step = self.script.pop(0) if self.script else 500 + len(self.sends)
        if isinstance(step, BaseException):
            raise step
        assert isinstance(step, int)
        return SentMessage(message_id=step, date=NOW, chat_id=chat_id,
                           reply_to_message_id=reply_to_message_id)  # as Telegram shows it

    async def send_typing(self, *, chat_id: int) -> None:
        self.typing += 1
        self.events.append(("typing", self.now()))


class FakeLimits:
    def __init__(self, *waits: float) -> None:
        self.waits = list(waits)
        self.blocked: list[tuple[int, float]] = []
        self.caps: list[int | None] = []

    def wait_time(self, bot_id: int, chat_id: int) -> float:
        return 0.0

    async def try_acquire(self, bot_id: int, chat_id: int, *,
                          chat_cap: int | None = None) -> float:
        self.caps.append(chat_cap)
        return self.waits.pop(0) if self.waits else 0.0

    async def block(self, bot_id: int, seconds: float) -> None:
        self.blocked.append((bot_id, seconds))


class FakeRecords:
    def __init__(self, *, fenced: bool = False, fresh: bool = True,
                 migrate_ok: bool = True) -> None:
        self.fenced, self.fresh, self.migrate_ok = fenced, fresh, migrate_ok
        self.raises: Exception | None = None
        self.intents: list[tuple[str, int]] = []
        self.finished: list[tuple[str, str]] = []
        self.committed: list[Sent] = []
        self.left: list[tuple[int, int]] = []
        self.left_as: list[tuple[str, str]] = []  # (status, reason)
        self.disabled: list[int] = []
        self.descriptions: list[str] = []
        self.migrated: list[int] = []
        self.blocked: list[tuple[str, str]] = []
        self.parts: list[Sent] = []
        self.partial: list[str] = []

    async def record_intent(self, turn: Turn, *, token: int, worker: str) -> bool:
        if self.fenced:
            raise FencedOut(turn.bot_id, token)
        if self.raises is not None:
            raise self.raises
        self.intents.append((turn.turn_id, token))
        return self.fresh

    async def finish(self, turn: Turn, status: str, error: str | None = None) -> None:
        self.finished.append((turn.turn_id, status))

    async def commit_sent(self, sent: Sent) -> HistoryItem:
        self.committed.append(sent)
        return HistoryItem(message_id=len(self.committed), bot_id=sent.turn.bot_id,
                           telegram_message_id=sent.message.message_id, speaker=sent.bot.name,
                           speaker_username=sent.bot.username, is_human=False,
                           text=sent.generation.text, created_at=sent.message.date,
                           reply_to=sent.reply_to)

    async def commit_part(self, sent: Sent) -> HistoryItem:
        self.parts.append(sent)
        return HistoryItem(message_id=100 + sent.part, bot_id=sent.turn.bot_id,
                           telegram_message_id=sent.message.message_id, speaker=sent.bot.name,
                           speaker_username=sent.bot.username, is_human=False,
                           text=sent.sent_text, created_at=sent.message.date)

    async def note_partial(self, turn: Turn, error: str) -> None:
        self.partial.append(error)

    async def leave_chat(self, turn: Turn, *, status: str, reason: str) -> None:
        self.left.append((turn.bot_id, turn.chat_id))
        self.left_as.append((status, reason))

    async def disable_bot(self, bot_id: int, *, description: str = "") -> None:
        self.disabled.append(bot_id)
        self.descriptions.append(description)

    async def safety_blocked(self, turn: Turn, *, rule: str, part: str, text: str) -> None:
        self.blocked.append((rule, part))

    async def migrate_chat(self, turn: Turn, new_telegram_chat_id: int) -> bool:
        self.migrated.append(new_telegram_chat_id)
        return self.migrate_ok


class FakeReads:
    def __init__(self, bot: BotProfile, sim: SimulationSettings) -> None:
        self._bot = bot
        self.sim = sim
        self.items: list[HistoryItem] = []

    async def bot(self, bot_id: int) -> BotProfile:
        return self._bot

    async def history(self, chat_id: int) -> list[HistoryItem]:
        return list(self.items)

    async def settings(self) -> SimulationSettings:
        return self.sim

    async def appended(self, chat_id: int, item: HistoryItem) -> None:
        self.items.append(item)


class FakeHolder:
    def __init__(self, client: FakeClient, *, token: int = 4, valid: bool = True) -> None:
        self._client: FakeClient | None = client
        self._token = token
        self.validity = [valid]
        self.let_go_of: list[int] = []

    def client(self, bot_id: int) -> FakeClient | None:
        return self._client

    def token(self, bot_id: int) -> int | None:
        return self._token

    def valid(self, bot_id: int) -> bool:
        return self.validity.pop(0) if len(self.validity) > 1 else self.validity[0]

    async def let_go(self, bot_id: int) -> None:
        self.let_go_of.append(bot_id)


class Failing:
    """A provider that is down (HTTP 503 every time)."""

    name = "groq"
    model = "llama"

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> Generation:
        self.calls += 1
        raise ProviderUnavailable("groq", "HTTP 503")


#: The settings of the rigs that test Telegram's answers: no reading or typing pause.
NO_PAUSE = SimulationSettings(reading_cap_s=0.0, typing_cap_s=0.0)


def profile(**persona_changes: object) -> BotProfile:
    persona = load_persona_dir()[0].model_copy(update=persona_changes)
    return BotProfile(id=BOT, name=persona.name, username=persona.username,
                      telegram_user_id=None,
                      persona=PersonaProfile.model_validate(
                          persona.model_dump(include=set(PersonaProfile.model_fields))),
                      stances=persona.stances, holdings=persona.holdings, enabled=True)


def turn(*, reply_to: ChatLine | None = None) -> Turn:
    return Turn(turn_id="turn-1", chat_id=CHAT, telegram_chat_id=TG_CHAT, bot_id=BOT,
                topic="btc", reply_to=reply_to, reason="human" if reply_to else "spontaneous",
                decided_at=NOW, reply_message_id=11 if reply_to else None)


HUMAN = ChatLine(telegram_message_id=42, speaker="Deniz", speaker_username=None,
                 is_human=True, text="Altın alınır mı?", created_at=NOW - timedelta(seconds=5))


class Rig:
    """A pipeline wired to fakes; ``providers`` come before the offline generator. Its
    ``sleep`` advances a fake clock (``now``, seconds) and records each wait."""

    def __init__(self, client: FakeClient, *, records: FakeRecords | None = None,
                 limits: FakeLimits | None = None, holder: FakeHolder | None = None,
                 providers: tuple[object, ...] = (), sim: SimulationSettings = NO_PAUSE,
                 bot: BotProfile | None = None) -> None:
        self.client = client
        self.records = records or FakeRecords()
        self.limits = limits or FakeLimits()
        self.holder = holder or FakeHolder(client)
        self.reads = FakeReads(bot or profile(), sim)
        self.now = 0.0
        client.now = lambda: self.now
        self.stats: Counter[str] = Counter()
        self.sent_at: list[tuple[int, datetime]] = []
        self.slept: list[float] = []
        policy = RetryPolicy(max_attempts=1, timeout_s=1.0, backoff_initial_s=0.0,
                             backoff_max_s=0.0, jitter_s=0.0)
        chain = ProviderChain([ChainEntry(provider=p, retry=policy)  # type: ignore[arg-type]
                               for p in providers], last_resort=OfflineGenerator())

        async def sleep(s: float) -> None:
            self.slept.append(s)
            self.now += s

        self.pipeline = TurnPipeline(
            chain=chain, limits=self.limits, records=self.records, reads=self.reads,
            market=MarketFeed(seed=1, start=NOW), holder=self.holder, worker_id="w-1",
            seed=1, clock=lambda: NOW + timedelta(seconds=self.now), stats=self.stats,
            on_sent=lambda b, t: self.sent_at.append((b, t)), sleep=sleep)


async def test_a_turn_is_sent_and_committed_once() -> None:
    rig = Rig(FakeClient(901))
    out = await rig.pipeline.run(turn(reply_to=HUMAN))
    assert out.status == "sent" and out.telegram_message_id == 901
    assert rig.records.intents == [("turn-1", 4)]
    assert rig.records.finished == []  # the commit is the outcome
    [sent] = rig.records.committed
    assert sent.reply_to == 42 and sent.generation.provider == "offline"
    assert -1.0 <= sent.mood <= 1.0 and sent.timing.latency_s >= sent.timing.llm_s
    assert rig.client.sends == [(TG_CHAT, sent.generation.text, 42)] and rig.client.typing == 1
    assert [i.telegram_message_id for i in rig.reads.items] == [901]  # in the cached history
    assert rig.sent_at == [(BOT, NOW)]


async def test_fenced_out_intent_sends_nothing_and_lets_the_bot_go() -> None:
    rig = Rig(FakeClient(), records=FakeRecords(fenced=True))
    out = await rig.pipeline.run(turn())
    assert out.status == "skipped" and "token" in (out.error or "")
    assert rig.client.sends == [] and rig.records.committed == []
    assert rig.holder.let_go_of == [BOT] and rig.stats["fenced"] == 1


async def test_a_turn_already_acted_on_is_not_sent_again() -> None:
    rig = Rig(FakeClient(), records=FakeRecords(fresh=False))
    out = await rig.pipeline.run(turn(reply_to=HUMAN))
    assert out.status == "duplicate" and rig.client.sends == []


async def test_a_database_down_at_the_intent_sends_nothing_and_leaves_the_turn_open() -> None:
    # PostgreSQL restarting (botsim chaos): the intent cannot be written, so nothing is
    # sent and nothing recorded; "skipped" lets an answer to a person be planned again.
    records = FakeRecords()
    records.raises = ConnectionRefusedError(111, "Connection refused")
    rig = Rig(FakeClient(), records=records)
    out = await rig.pipeline.run(turn(reply_to=HUMAN))
    assert out.status == "skipped" and "database unreachable" in (out.error or "")
    assert rig.client.sends == [] and records.finished == [] and records.committed == []
    records.raises = ValueError("a bug, not an outage")
    with pytest.raises(ValueError):
        await rig.pipeline.run(turn(reply_to=HUMAN))


async def test_lease_expiring_after_the_intent_sends_nothing() -> None:
    client = FakeClient()
    holder = FakeHolder(client)
    holder.validity = [True, False]  # valid at the start, expired right before the send
    rig = Rig(client, holder=holder)
    out = await rig.pipeline.run(turn())
    assert out.status == "skipped" and rig.client.sends == []
    assert rig.records.finished == [("turn-1", "retry")] and rig.stats["fenced"] == 1


async def test_a_bot_let_go_while_typing_sends_nothing_through_its_closed_client() -> None:
    # The lease moved and came back while the turn typed: the turn's client was closed and
    # a new one connected. Sending through the old one would end "unknown"; nothing is sent.
    client = FakeClient()
    rig = Rig(client)
    replacement = FakeClient()

    async def generate_then_lose(*args: object, **kwargs: object) -> object:
        rig.holder._client = replacement
        return await real_generate(*args, **kwargs)

    real_generate = rig.pipeline.chain.generate
    rig.pipeline.chain.generate = generate_then_lose  # type: ignore[method-assign]
    out = await rig.pipeline.run(turn())
    assert out.status == "skipped" and out.error == "bot let go before the send"
    assert client.sends == [] and replacement.sends == [] and rig.records.committed == []
    assert rig.records.finished == [("turn-1", "retry")] and rig.stats["fenced"] == 1


async def test_chatter_leaves_the_human_reply_reserve_of_the_chat_cap() -> None:
    # max_msgs_per_min 10, reserve 0.3: chatter may take 7 a minute, an answer to a human 10
    sim = NO_PAUSE.model_copy(update={"max_msgs_per_min": 10, "human_reply_reserve": 0.3})
    chatter, answer = Rig(FakeClient(), sim=sim), Rig(FakeClient(), sim=sim)
    assert (await chatter.pipeline.run(turn())).status == "sent"
    assert (await answer.pipeline.run(turn(reply_to=HUMAN))).status == "sent"
    assert chatter.limits.caps == [7] and answer.limits.caps == [10]


async def test_a_bot_not_held_is_skipped_before_any_work() -> None:
    client = FakeClient()
    rig = Rig(client, holder=FakeHolder(client, valid=False))
    out = await rig.pipeline.run(turn())
    assert out.status == "skipped" and out.error == "bot not held"
    assert rig.records.intents == [] and client.typing == 0


@pytest.mark.parametrize("delivered_unknown", [True, False])
async def test_send_outcome_unknown_is_never_repeated(delivered_unknown: bool) -> None:
    rig = Rig(FakeClient(TelegramUnavailable("read timeout",
                                             delivered_unknown=delivered_unknown)))
    out = await rig.pipeline.run(turn())
    assert len(rig.client.sends) == 1 and rig.records.committed == []
    if delivered_unknown:  # may have reached Telegram: recorded unknown, never resent
        assert out.status == "unknown" and rig.records.finished == [("turn-1", "unknown")]
    else:  # certainly not sent: may be tried again
        assert out.status == "skipped" and rig.records.finished == [("turn-1", "retry")]


async def test_cancelled_mid_send_is_recorded_unknown() -> None:
    rig = Rig(FakeClient(asyncio.CancelledError()))
    with pytest.raises(asyncio.CancelledError):
        await rig.pipeline.run(turn())
    assert rig.records.finished == [("turn-1", "unknown")]


async def test_429_blocks_the_bot_for_retry_after() -> None:
    rig = Rig(FakeClient(TelegramRetryAfter(17.0, bot_id=BOT)))
    out = await rig.pipeline.run(turn(reply_to=HUMAN))
    assert out.status == "rate_limited" and out.retry_after == 17.0
    assert rig.limits.blocked == [(BOT, 17.0)]
    assert rig.records.finished == [("turn-1", "retry")] and len(rig.client.sends) == 1


async def test_the_bot_kicked_leaves_the_chat() -> None:
    rig = Rig(FakeClient(TelegramForbidden("Forbidden: bot was kicked from the group chat")))
    out = await rig.pipeline.run(turn())
    assert out.status == "failed" and "kicked" in (out.error or "")
    assert rig.records.left == [(BOT, CHAT)] and rig.records.finished == [("turn-1", "failed")]
    assert rig.records.left_as == [("kicked", "403 Forbidden: bot was kicked from the group "
                                               "chat")]  # Telegram's words for the operator
    assert rig.holder.let_go_of == [] and len(rig.client.sends) == 1  # not repeated


async def test_a_bot_no_longer_a_member_has_left_the_chat() -> None:
    rig = Rig(FakeClient(TelegramForbidden("Forbidden: bot is not a member of the supergroup "
                                           "chat")))
    out = await rig.pipeline.run(turn())
    assert out.status == "failed" and [s for s, _ in rig.records.left_as] == ["left"]


async def test_a_refused_token_disables_the_bot() -> None:
    rig = Rig(FakeClient(TelegramInvalidToken("Unauthorized")))
    out = await rig.pipeline.run(turn())
    assert out.status == "failed"
    assert rig.records.disabled == [BOT] and rig.holder.let_go_of == [BOT]
    assert rig.records.descriptions == ["401 Unauthorized"]


async def test_a_token_in_the_refusal_never_reaches_the_records() -> None:
    # python-telegram-bot's getMe path says "The token `<token>` was rejected by the server."
    token = "8100000000:token-for-tests-0000-abcdefgh"
    rig = Rig(FakeClient(TelegramInvalidToken(f"The token `{token}` was rejected")))
    out = await rig.pipeline.run(turn())
    assert out.status == "failed" and token not in (out.error or "")
    assert rig.records.descriptions == ["401 The token `***` was rejected"]


async def test_the_chat_migrated_is_followed_once() -> None:
    rig = Rig(FakeClient(TelegramChatMigrated(-100999), 777))
    out = await rig.pipeline.run(turn())
    assert out.status == "sent" and out.telegram_message_id == 777
    assert rig.records.migrated == [-100999]
    assert [s[0] for s in rig.client.sends] == [TG_CHAT, -100999]
    assert len(rig.records.committed) == 1 and rig.records.finished == []


async def test_a_reply_is_not_carried_into_the_migrated_chat() -> None:
    # the old group's message ids mean other messages (or none) in the supergroup
    rig = Rig(FakeClient(TelegramChatMigrated(-100999), 779))
    out = await rig.pipeline.run(turn(reply_to=HUMAN))
    assert out.status == "sent"
    assert rig.client.sends[1][0::2] == (-100999, None)
    [sent] = rig.records.committed
    assert sent.reply_to is None and sent.turn.reply_message_id == 11  # still answers it


async def test_a_migration_that_cannot_be_stored_fails_the_turn() -> None:
    rig = Rig(FakeClient(TelegramChatMigrated(-100999)),
              records=FakeRecords(migrate_ok=False))
    out = await rig.pipeline.run(turn())
    assert out.status == "failed" and len(rig.client.sends) == 1
    assert rig.records.finished == [("turn-1", "failed")]


async def test_an_answer_goes_into_the_forum_topic_of_what_it_answers() -> None:
    rig = Rig(FakeClient())
    in_topic = dataclasses.replace(HUMAN, thread_id=100)
    assert (await rig.pipeline.run(turn(reply_to=in_topic))).status == "sent"
    assert (await rig.pipeline.run(turn())).status == "sent"
    assert rig.client.threads == [100, None]  # a fresh line: the General topic


async def test_the_reply_target_gone_sends_without_the_reply() -> None:
    rig = Rig(FakeClient(TelegramReplyNotFound("message to be replied not found"), 778))
    out = await rig.pipeline.run(turn(reply_to=HUMAN))
    assert out.status == "sent"
    assert [s[2] for s in rig.client.sends] == [42, None]
    # stored as Telegram shows it; the turn still answers the human message (our id 11)
    [sent] = rig.records.committed
    assert sent.reply_to is None and sent.turn.reply_message_id == 11


async def test_a_reply_telegram_dropped_silently_is_stored_without_it() -> None:
    # allow_sending_without_reply: a deleted target is no 400; the answer shows no reply
    rig = Rig(FakeClient())

    async def send(*, chat_id: int, text: str,
                   reply_to_message_id: int | None = None,
                   message_thread_id: int | None = None) -> SentMessage:
        rig.client.sends.append((chat_id, text, reply_to_message_id))
        shown = reply_to_message_id if len(rig.client.sends) > 1 else None
        return SentMessage(message_id=780, date=NOW, chat_id=chat_id,
                            reply_to_message_id=shown)

    rig.client.send_message = send  # type: ignore[method-assign]
    await rig.pipeline.run(turn(reply_to=HUMAN))
    await rig.pipeline.run(dataclasses.replace(turn(reply_to=HUMAN), turn_id="turn-2"))
    assert [s.reply_to for s in rig.records.committed] == [None, 42]


async def test_other_error_answers_fail_the_turn() -> None:
    rig = Rig(FakeClient(TelegramError("Bad Request: message text is empty")))
    out = await rig.pipeline.run(turn())
    assert out.status == "failed" and rig.records.finished == [("turn-1", "failed")]


async def test_the_generator_fails_over_to_the_next_provider() -> None:
    down = Failing()
    rig = Rig(FakeClient(903), providers=(down,))
    out = await rig.pipeline.run(turn())
    assert out.status == "sent" and down.calls == 1
    assert rig.records.committed[0].generation.provider == "offline"
    assert rig.stats["fallbacks"] == 1


async def test_a_short_limit_wait_is_waited_then_sent() -> None:
    rig = Rig(FakeClient(904), limits=FakeLimits(0.4, 0.0))
    out = await rig.pipeline.run(turn())
    assert out.status == "sent" and rig.slept == [0.4]


async def test_a_long_limit_wait_gives_the_turn_up_before_the_intent() -> None:
    rig = Rig(FakeClient(), limits=FakeLimits(MAX_LIMIT_WAIT_S + 1))
    out = await rig.pipeline.run(turn())
    assert out.status == "skipped" and out.retry_after == MAX_LIMIT_WAIT_S + 1
    assert rig.records.intents == [] and rig.client.sends == [] and rig.slept == []


async def test_a_turn_waits_for_its_due_time_before_the_send() -> None:
    # issue 14: sends follow the chat's rhythm (Turn.not_before), not the worker's tick
    rig = Rig(FakeClient(905))
    due = dataclasses.replace(turn(), not_before=NOW + timedelta(seconds=0.73))
    out = await rig.pipeline.run(due)
    assert out.status == "sent" and rig.slept == [pytest.approx(0.73)]
    # the wait is the rhythm's, not the engine's: left out of the overhead (issue 20)
    timing = rig.records.committed[0].timing
    assert timing.due_s + timing.pause_s == pytest.approx(0.73)
    assert timing.overhead_s == pytest.approx(max(
        timing.latency_s - timing.llm_s - timing.read_s - timing.pause_s - timing.due_s, 0.0))
    # a turn already due (or with no due time) does not wait
    rig = Rig(FakeClient(906))
    await rig.pipeline.run(dataclasses.replace(turn(), not_before=NOW - timedelta(seconds=2)))
    await rig.pipeline.run(turn())
    assert rig.slept == []


async def test_a_slot_decided_early_types_so_that_typing_ends_at_its_due_time() -> None:
    # issue 14: a slot's turn is decided a slot lead ahead; the bot writes out of sight, then
    # shows "typing…" for the text's typing time, ending when the message is sent at the
    # due time (before: typed at once, then waited silently, or sent typing-time late)
    sim = SimulationSettings(reading_cap_s=0.0, typing_cap_s=4.0)
    rig = Rig(FakeClient(907), sim=sim)
    out = await rig.pipeline.run(dataclasses.replace(turn(), not_before=NOW + timedelta(seconds=9)))
    assert out.status == "sent"
    [sent] = rig.records.committed
    typing_s = sent.timing.typing_s
    assert 0.5 < typing_s < 4.0
    typed = [t for kind, t in rig.client.events if kind == "typing"]
    assert rig.client.events[-1] == ("send", pytest.approx(9.0))
    assert typed and typed[0] == pytest.approx(9.0 - typing_s)  # nothing shown before it
    # a turn due within the typing cap types at once, while its text is written
    rig = Rig(FakeClient(908), sim=sim)
    await rig.pipeline.run(dataclasses.replace(turn(), not_before=NOW + timedelta(seconds=3)))
    assert rig.client.events[0] == ("typing", 0.0)


class Writes:
    """A provider that writes the given text."""

    name = "long"
    model = None

    def __init__(self, text: str) -> None:
        self.text = text

    async def generate(self, request: GenerationRequest) -> Generation:
        return Generation(text=self.text, provider=self.name)


def sentence(i: int) -> str:
    return f"Cümle {i} biraz uzun bir düşünce, 1.5 puanlık bir hareket ve <b>işaret</b> var."


def test_a_text_within_the_limit_is_one_part() -> None:
    assert split_text("Kısa bir mesaj.") == ["Kısa bir mesaj."]
    at_limit = "a" * TEXT_LIMIT
    assert split_text(at_limit) == [at_limit]


def test_a_long_text_is_cut_at_sentence_ends_each_part_within_the_limit() -> None:
    text = " ".join(sentence(i) for i in range(200))  # ~15,000 characters
    parts = split_text(text)
    assert len(parts) in (-(-utf16_len(text) // TEXT_LIMIT), -(-utf16_len(text) // TEXT_LIMIT) + 1)
    assert all(1 <= utf16_len(p) <= TEXT_LIMIT for p in parts)
    assert all(p.endswith("var.") for p in parts)  # whole sentences; "1.5" is none's end
    assert " ".join(parts) == text  # nothing lost, in order
    assert all(utf16_len(p) > TEXT_LIMIT // 2 for p in parts[:-1])


def test_a_line_break_ends_a_sentence_and_a_space_comes_next_else_a_hard_cut() -> None:
    lines = "\n".join("satır " * 50 for _ in range(40))  # no punctuation, line breaks
    parts = split_text(lines, 1000)
    assert all(utf16_len(p) <= 1000 for p in parts)
    assert "\n".join(parts).split() == lines.split()
    assert all(p.endswith("satır") for p in parts)  # cut at the line ends
    words = "kelime " * 1000  # no sentence end at all: cut at a space
    parts = split_text(words, 500)
    assert all(p.split() == ["kelime"] * len(p.split()) for p in parts)
    assert sum(len(p.split()) for p in parts) == 1000
    blob = "x" * 2500  # no space either: a hard cut
    assert split_text(blob, 1000) == ["x" * 1000, "x" * 1000, "x" * 500]


def test_telegram_counts_utf16_code_units_and_a_surrogate_pair_is_never_cut() -> None:
    emoji = "\U0001F4C8"  # 📈: one character, two UTF-16 code units
    text = emoji * 3000  # 3,000 characters, 6,000 units: over the limit
    assert len(text) <= TEXT_LIMIT < utf16_len(text)
    parts = split_text(text)
    assert [utf16_len(p) for p in parts] == [4096, 1904]
    assert "".join(parts) == text
    odd = "a" + emoji * 10  # a cut at 4 units would split the second pair
    assert split_text(odd, 4) == ["a" + emoji, *[emoji * 2] * 4, emoji]
    with pytest.raises(ValueError):
        split_text(text, 1)


async def test_a_text_over_the_limit_is_sent_as_parts_in_order_each_stored_once() -> None:
    text = " ".join(sentence(i) for i in range(120))  # ~9,000 characters: three parts
    rig = Rig(FakeClient(801, 802, 803), providers=(Writes(text),))
    out = await rig.pipeline.run(turn(reply_to=HUMAN))
    assert out.status == "sent" and out.telegram_message_id == 801 and out.error is None
    assert out.extra == {"parts": 3, "parts_sent": 3}
    assert rig.records.intents == [("turn-1", 4)]  # one intent for the turn
    sends = rig.client.sends
    assert [s[2] for s in sends] == [42, None, None]  # only the first part replies
    assert " ".join(s[1] for s in sends) == text
    assert all(utf16_len(s[1]) <= TEXT_LIMIT for s in sends)
    [first] = rig.records.committed  # the turn committed once, with part 1
    assert first.sent_text == sends[0][1] and (first.part, first.parts) == (1, 3)
    assert [(p.part, p.message.message_id, p.sent_text) for p in rig.records.parts] == [
        (2, 802, sends[1][1]), (3, 803, sends[2][1])]
    assert [i.telegram_message_id for i in rig.reads.items] == [801, 802, 803]
    assert len(rig.limits.caps) == 3  # each part took its own send slot
    assert len(rig.sent_at) == 3 and rig.records.partial == []


async def test_a_later_part_refused_leaves_what_was_sent_and_says_so() -> None:
    text = " ".join(sentence(i) for i in range(80))  # two parts
    rig = Rig(FakeClient(811, TelegramForbidden("Forbidden: bot was kicked from the group "
                                                "chat")), providers=(Writes(text),))
    out = await rig.pipeline.run(turn())
    assert out.status == "sent" and out.telegram_message_id == 811
    assert out.error == "part 2 of 2 not sent: Forbidden: bot was kicked from the group chat"
    assert out.extra == {"parts": 2, "parts_sent": 1}
    assert len(rig.records.committed) == 1 and rig.records.parts == []
    assert rig.records.partial == [out.error] and rig.records.finished == []
    assert [s for s, _ in rig.records.left_as] == ["kicked"]  # the 403 is handled as ever
    assert len(rig.client.sends) == 2  # nothing repeated


async def test_a_later_part_past_the_limit_wait_is_not_sent() -> None:
    text = " ".join(sentence(i) for i in range(80))
    rig = Rig(FakeClient(821), providers=(Writes(text),),
              limits=FakeLimits(0.0, MAX_LIMIT_WAIT_S + 1))
    out = await rig.pipeline.run(turn())
    assert out.status == "sent" and out.error == "part 2 of 2 not sent: Telegram limit"
    assert len(rig.client.sends) == 1 and rig.records.partial == [out.error]


async def test_markup_characters_go_out_as_plain_text() -> None:
    text = "<b>kalın</b> *yıldız* _alt_ [köşeli](parantez) `kod` 1.5 > 2 & ~çizgi~ ||gizli||"
    rig = Rig(FakeClient(831), providers=(Writes(text),))
    out = await rig.pipeline.run(turn())
    assert out.status == "sent" and rig.client.sends == [(TG_CHAT, text, None)]
    assert rig.records.committed[0].sent_text == text


class Scripted:
    """A provider that answers ``texts`` in order (the last again when they run out) and
    keeps each request it got."""

    name = "groq"
    model = "llama"

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        text = self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]
        return Generation(text=text, provider="groq", model="llama")


SAID = "Altın bu hafta yine yükselir, bence pozisyonu korumak lazım."


def said_before(rig: Rig) -> None:
    rig.reads.items.append(HistoryItem(
        message_id=1, telegram_message_id=7, bot_id=2, speaker="Ayşe", speaker_username="a",
        is_human=False, text=SAID, created_at=NOW - timedelta(minutes=1)))


def guard_count(outcome: str) -> float:
    return REGISTRY.get_sample_value("botsim_guard_outcomes_total",
                                     {"guard": "repeat", "outcome": outcome}) or 0.0


async def test_a_repeat_is_generated_again_with_a_hint() -> None:
    # issue 16, item 1: without the guard the repeat is sent as it came
    llm = Scripted("altın bu hafta YİNE yükselir, bence pozisyonu korumak lazım",
                   "Dolar tarafında bugün hareket yok, izlemekteyim.")
    rig = Rig(FakeClient(), providers=(llm,))
    said_before(rig)
    before = guard_count("regenerated")
    assert (await rig.pipeline.run(turn())).status == "sent"
    assert [s[1] for s in rig.client.sends] == [
        "Dolar tarafında bugün hareket yok, izlemekteyim."]
    assert len(llm.requests) == 2 and "tekrarlıyor" in llm.requests[1].messages[-1]["content"]
    assert guard_count("regenerated") == before + 1


async def test_a_regeneration_counts_as_generation_not_overhead() -> None:
    # issue 20: run (b)'s slowest 1 % of overheads were drafts the guards asked for again
    class Slow(Scripted):
        async def generate(self, request: GenerationRequest) -> Generation:
            await asyncio.sleep(0.05)
            return await super().generate(request)

    llm = Slow("altın bu hafta YİNE yükselir, bence pozisyonu korumak lazım",
               "Dolar tarafında bugün hareket yok, izlemekteyim.")
    rig = Rig(FakeClient(), providers=(llm,))
    said_before(rig)
    assert (await rig.pipeline.run(turn())).status == "sent"
    timing = rig.records.committed[0].timing
    assert len(llm.requests) == 2 and timing.llm_s >= 0.1  # both drafts' time
    assert timing.overhead_s < timing.latency_s - 0.1


async def test_chatter_still_repeating_is_dropped_and_an_answer_to_a_person_is_not() -> None:
    near = "Altın bu hafta yine yükselir, bence pozisyonu korumak gerek."
    rig = Rig(FakeClient(), providers=(Scripted(near),))
    said_before(rig)
    before = guard_count("dropped")
    out = await rig.pipeline.run(turn())
    assert out.status == "skipped" and out.error == "guards: dropped"
    assert rig.client.sends == [] and rig.records.intents == []  # nothing recorded or sent
    assert guard_count("dropped") == before + 1
    answer = Rig(FakeClient(), providers=(Scripted(near),))
    said_before(answer)
    assert (await answer.pipeline.run(turn(reply_to=HUMAN))).status == "sent"


async def test_the_bots_own_recent_texts_count_across_chats() -> None:
    line = "Borsada bugün bankalar öne çıkıyor, ben biraz aldım açıkçası."
    rig = Rig(FakeClient(), providers=(Scripted(line),))
    assert (await rig.pipeline.run(turn())).status == "sent"
    rig.reads.items.clear()  # another chat: its history does not hold the line
    again = await rig.pipeline.run(dataclasses.replace(turn(), turn_id="turn-2", chat_id=9))
    assert again.status == "skipped" and len(rig.client.sends) == 1


async def test_chatter_said_meanwhile_by_another_turn_of_the_chat_is_dropped() -> None:
    # two turns of a chat written at once: the one that sends second sees the first's text
    rig = Rig(FakeClient(), providers=(Scripted(SAID),))
    calls = 0
    first_read = rig.reads.history

    async def history(chat_id: int) -> list[HistoryItem]:
        nonlocal calls
        calls += 1
        if calls == 2:  # the other turn's message was committed while this one was written
            said_before(rig)
        return await first_read(chat_id)

    rig.reads.history = history  # type: ignore[method-assign]
    out = await rig.pipeline.run(turn())
    assert (out.status, out.error, rig.client.sends) == ("skipped", "guards: dropped", [])


class Gated(FakeClient):
    """A client whose first send waits until ``gate`` is set (a send in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()
        self.calls = 0

    async def send_message(self, **kwargs: Any) -> SentMessage:
        self.calls += 1
        if self.calls == 1:
            self.waiting.set()
            await self.gate.wait()
        return await super().send_message(**kwargs)


async def test_two_turns_of_a_chat_in_flight_at_once_never_both_send_one_text() -> None:
    # ci44: two bots' turns got the same text at once; both passed the repeat check before
    # either was sent (and in the chat's history), and both posted
    client = Gated()
    rig = Rig(client, providers=(Scripted(SAID),))
    first = asyncio.create_task(rig.pipeline.run(turn()))
    await asyncio.wait_for(client.waiting.wait(), 5)  # the first one's send is in flight
    other = dataclasses.replace(turn(), turn_id="turn-2", bot_id=BOT + 1)
    second = await rig.pipeline.run(other)
    client.gate.set()
    assert (await first).status == "sent"
    assert (second.status, second.error) == ("skipped", "guards: dropped")
    assert [s[1] for s in client.sends] == [SAID]
    assert rig.pipeline._saying == {}  # released when the turns ended
    # a turn that ends past its claim without sending releases it too
    refused = Rig(FakeClient(), records=FakeRecords(fresh=False), providers=(Scripted(SAID),))
    assert (await refused.pipeline.run(turn())).status == "duplicate"
    assert refused.pipeline._saying == {}


async def test_a_chat_remembers_more_than_its_cached_history() -> None:
    rig = Rig(FakeClient(), providers=(Scripted(SAID, "Kripto tarafı bugün çok sakin."),))
    assert (await rig.pipeline.run(turn())).status == "sent"
    rig.reads.items.clear()  # the cached history moved on (50 messages later)
    other = dataclasses.replace(turn(), turn_id="turn-2", bot_id=BOT + 1)
    llm = Scripted(SAID)
    rig.pipeline.chain = ProviderChain([ChainEntry(provider=llm, retry=RetryPolicy(  # type: ignore[arg-type]
        max_attempts=1, timeout_s=1.0, backoff_initial_s=0.0, backoff_max_s=0.0,
        jitter_s=0.0))], last_resort=OfflineGenerator())
    assert (await rig.pipeline.run(other)).status == "skipped"  # another bot, same chat


async def test_a_draft_breaking_a_safety_rule_is_written_again_and_audited() -> None:
    # issue 16, item 6: without the guard the promise goes out as written
    llm = Scripted("Bu hisse garantili kazanç, kaçırmayın!",
                   "Bu hisse bence ilginç ama riskli, ben az aldım.")
    rig = Rig(FakeClient(), providers=(llm,))
    before = REGISTRY.get_sample_value("botsim_safety_blocks_total",
                                       {"rule": "guaranteed_returns"}) or 0.0
    assert (await rig.pipeline.run(turn())).status == "sent"
    assert [s[1] for s in rig.client.sends] == [
        "Bu hisse bence ilginç ama riskli, ben az aldım."]
    assert rig.records.blocked == [("guaranteed_returns", "garantili kazan")]
    assert "Getiri vaat etme" in llm.requests[1].messages[-1]["content"]
    assert REGISTRY.get_sample_value("botsim_safety_blocks_total",
                                     {"rule": "guaranteed_returns"}) == before + 1


async def test_an_answer_to_a_person_that_keeps_breaking_a_rule_is_dropped() -> None:
    rig = Rig(FakeClient(), providers=(Scripted("Deniz, hemen alın, fırsat kaçmasın."),))
    out = await rig.pipeline.run(turn(reply_to=HUMAN))
    assert (out.status, out.error) == ("skipped", "guards: dropped")
    assert rig.client.sends == [] and len(rig.records.blocked) == 3  # the draft and 2 more
    # the same words as chatter, to nobody in particular, are no personal instruction
    chatter = Rig(FakeClient(), providers=(Scripted("Deniz, hemen alın, fırsat kaçmasın."),))
    assert (await chatter.pipeline.run(turn())).status == "sent"

"""Who answers (issue 14, item 5): mentions and replies pick their bot, expertise picks the
rest, one answer by default, answered messages leave the reply-target pool, threads fade,
and the sharded dispatch chooses what a lone worker chooses."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from backend.api_schemas import BotUpdate
from backend.errors import ValidationFailed
from backend.schemas import KNOWN_TOPICS, PersonaProfile, SimulationSettings
from behavior_engine import replies
from behavior_engine.reads import BotProfile, ChatInfo, HistoryItem
from behavior_engine.replies import ReplyDispatcher
from behavior_engine.scheduler import (
    ChatView,
    Scheduler,
    WaitingMessage,
    _ChatState,
    asks_group,
    choose_repliers,
)
from behavior_engine.topics import TOPIC_PATTERNS, detect_topic
from behavior_engine.turn import ChatLine
from bots.personas import load_persona_dir
from loadtest.bench_who_answers import demo_bots, run_figures, simulate

NOW = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)  # 07:00 in Istanbul: not a prime hour
SETTINGS = SimulationSettings.model_validate(
    # second answers on (the default is 0: one answer per human message)
    {"bot_hourly_msg_limit": {"min": 240, "max": 480}, "max_msgs_per_min": 15,
     "second_answer_p": 0.2}
)
BOTS = demo_bots()  # ids in file order: 1 Ali Hoca, 2 Ayşe, 3 Mehmet, 4 Zeynep
ALI, AYSE, MEHMET, ZEYNEP = 1, 2, 3, 4


def _human(tg: int, text: str) -> ChatLine:
    return ChatLine(telegram_message_id=tg, speaker="Deniz", speaker_username="deniz",
                    is_human=True, text=text)


def _choose(text: str, message_id: int, *, settings: SimulationSettings = SETTINGS,
            reply_to_bot_id: int | None = None, seed: int = 7) -> list[int]:
    w = WaitingMessage(message_id=message_id, line=_human(message_id, text),
                       reply_to_bot_id=reply_to_bot_id)
    return [b.bot_id for b in choose_repliers(w, BOTS, settings, NOW, seed=seed)]


def test_demo_cast_order_and_expertise() -> None:
    assert [b.username for b in BOTS] == ["ali_hoca_ekonomist_bot", "ayse_scalper_bot",
                                          "mehmet_yatirimci_bot", "zeynep_yeni_bot"]
    assert BOTS[ALI - 1].expertise["rates"] == 1.0
    assert BOTS[AYSE - 1].expertise["btc"] == 1.0 and BOTS[AYSE - 1].expertise["bist100"] > 0


def test_expertise_names_only_known_topics() -> None:
    assert set(TOPIC_PATTERNS) == set(KNOWN_TOPICS)
    base = load_persona_dir()[0].profile().model_dump()
    with pytest.raises(ValidationError, match="'faizz' is not a known topic"):
        PersonaProfile.model_validate({**base, "expertise": {"faizz": 1.0}})
    with pytest.raises(ValidationError, match=r"within 0\.\.1"):
        PersonaProfile.model_validate({**base, "expertise": {"rates": 1.5}})
    assert PersonaProfile.model_validate({**base, "expertise": {}}).expertise == {}
    # the API's bot edit takes expertise and checks it on the merged persona
    ali = load_persona_dir()[0]
    assert BotUpdate.model_validate({"expertise": {"gold": 0.5}}).merged(ali).expertise == {
        "gold": 0.5}
    with pytest.raises(ValidationFailed, match="expertise"):
        BotUpdate.model_validate({"expertise": {"crypto": 0.5}}).merged(ali)


def test_carry_trade_is_a_rates_question() -> None:
    assert detect_topic("Carry trade bitti mi, çıkış başladı mı?") == "rates"
    assert detect_topic("carry trade yapanlar ne yapacak") == "rates"


def test_mention_picks_the_mentioned_bot_alone() -> None:
    everyone = SETTINGS.model_copy(update={"second_answer_p": 1.0})
    for m in range(200):
        # a group question on rates (Ali Hoca's field) that names Zeynep goes to her alone
        assert _choose("Zeynep, sizce faiz ne olur arkadaşlar?", m, settings=everyone) == [
            ZEYNEP]
        assert _choose("@ayse_scalper_bot carry trade bitti mi?", m) == [AYSE]
        # two named: those two, in the order named, nobody else
        assert _choose("@zeynep_yeni_bot ve Mehmet, ne dersiniz?", m,
                       settings=everyone) == [ZEYNEP, MEHMET]


def test_a_name_inside_a_longer_word_is_no_mention_and_entities_are() -> None:
    # "Alim" and "Alice" do not name Ali Hoca; "Ali'ye" (a Turkish suffix) does
    assert ALI in _choose("Ali'ye sorun, faiz ne olur?", 1)
    drawn = {_choose("Alim satım nasıl gidiyor?", m)[0] for m in range(100)}
    assert drawn != {ALI} and len(drawn) >= 2  # a draw, not Ali Hoca named
    # a mention Telegram reports as an entity (a text_mention shows no @username)
    line = ChatLine(telegram_message_id=5, speaker="Deniz", speaker_username="deniz",
                    is_human=True, text="Sen ne dersin?", mentions=("ayse_scalper_bot",))
    w = WaitingMessage(message_id=5, line=line)
    for seed in range(50):
        assert [b.bot_id for b in choose_repliers(w, BOTS, SETTINGS, NOW, seed=seed)] == [
            AYSE]


def test_reply_to_a_bot_picks_that_bot_alone() -> None:
    for m in range(200):
        # a reply to Zeynep's message that names Ali Hoca goes to Zeynep only
        assert _choose("Ali Hoca böyle demiyordu, arkadaşlar?", m,
                       reply_to_bot_id=ZEYNEP) == [ZEYNEP]


def test_expert_question_goes_to_the_expert() -> None:
    first = Counter(_choose("Carry trade bitti mi, çıkış başladı mı?", m)[0]
                    for m in range(1, 501))
    assert first[ALI] / 500 >= 0.8
    # the lever: without the expertise weight the economist is the least talkative of four
    flat = SETTINGS.model_copy(update={"expertise_weight": 0.0})
    first_flat = Counter(_choose("Carry trade bitti mi?", m, settings=flat)[0]
                         for m in range(1, 501))
    assert first_flat[ALI] / 500 < 0.3


def test_one_answer_by_default() -> None:
    always = SETTINGS.model_copy(update={"second_answer_p": 1.0})
    texts = ["Borsa bugün neden düştü?", "Altın alınır mı?", "Dolar 45 olur mu", "selam",
             "Arkadaşlar günaydın", "Bitcoin nereye gidiyor?"]
    for m in range(300):
        for text in texts:
            assert len(_choose(text, m, settings=always)) == 1, text


def test_group_question_rule() -> None:
    group = ["Arkadaşlar bugün altın alınır mı?", "Sizce dolar ne olur", "Herkes ne diyor?",
             "Borsa için ne düşünüyorsunuz", "Altın alır mısınız?", "ARKADAŞLAR FAİZ?",
             "Guys, is bitcoin done?", "Anyone buying gold today"]
    not_group = ["Altın alınır mı?", "Arkadaşlar günaydın", "Dolar ne olur",
                 "Is bitcoin done?", "Zeynep ne düşünüyor?"]
    assert all(asks_group(t) for t in group), [t for t in group if not asks_group(t)]
    assert not any(asks_group(t) for t in not_group), [t for t in not_group if asks_group(t)]


def test_group_question_may_get_two_never_the_same_bot() -> None:
    sizes = Counter()
    for m in range(1000):
        chosen = _choose("Arkadaşlar bugün altın alınır mı?", m)
        assert len(set(chosen)) == len(chosen)
        sizes[len(chosen)] += 1
    share = sizes[2] / 1000  # second_answer_p = 0.2 in SETTINGS
    assert 0.14 <= share <= 0.26 and sizes[1] + sizes[2] == 1000
    always = SETTINGS.model_copy(update={"second_answer_p": 1.0})
    for m in range(200):
        chosen = _choose("Arkadaşlar bugün altın alınır mı?", m, settings=always)
        assert len(chosen) == 2 and chosen[0] != chosen[1]


def _bot_line(tg: int, bot_id: int, reply_to: int | None = None) -> ChatLine:
    return ChatLine(telegram_message_id=tg, speaker=f"Bot {bot_id}",
                    speaker_username=f"b{bot_id}_bot", is_human=False, text=f"mesaj {tg}",
                    bot_id=bot_id, reply_to=reply_to)


def _targets(recent: list[ChatLine], settings: SimulationSettings = SETTINGS,
             waiting: list[WaitingMessage] | None = None,
             minutes: int = 60) -> Counter[int]:
    """Telegram ids the scheduler's spontaneous turns reply to, over ``minutes`` of 1 s
    ticks on a frozen history (the turns are not added to it)."""
    s = Scheduler(seed=3)
    view = ChatView(chat_id=1, telegram_chat_id=-100, topics={"usdtry": 1.0},
                    sent_last_minute=0, recent=recent, waiting=waiting or [])
    got: Counter[int] = Counter()
    for t in range(minutes * 60):
        for turn in s.decide(view, BOTS, settings, NOW + timedelta(seconds=t)):
            if turn.reply_to is not None and turn.reason in ("reply", "mention"):
                got[turn.reply_to.telegram_message_id] += 1
    return got


def test_answered_and_planned_messages_leave_the_target_pool() -> None:
    # 11 (bot 5) is answered by 12 (bot 6); the human's 13 has an answer planned
    recent = [_bot_line(10, 5), _bot_line(11, 5), _bot_line(12, 6, reply_to=11),
              _human(13, "Dolar ne olur?"), _bot_line(14, 6)]
    waiting = [WaitingMessage(message_id=13, line=recent[3])]
    got = _targets(recent, waiting=waiting)
    assert sum(got.values()) > 20 and got[10] > 0 and got[14] > 0
    assert got[11] == 0 and got[13] == 0
    # a target in flight is not taken twice within TARGET_MEMORY (2 min): at most one
    # spontaneous reply to a given message every two minutes over the hour
    assert max(got.values()) <= 31


def _first_targets(recent: list[ChatLine], settings: SimulationSettings,
                   draws: int = 1500) -> Counter[int]:
    """The reply target a spontaneous turn of a bot picks, over ``draws`` fresh schedulers
    (seeds); the scheduler's own target choice, without waiting for a slot of the rhythm."""
    view = ChatView(chat_id=1, telegram_chat_id=-100, topics={"usdtry": 1.0},
                    sent_last_minute=0, recent=recent)
    got: Counter[int] = Counter()
    for seed in range(draws):
        s = Scheduler(seed=seed)
        target = s._choose_reply_target(view, BOTS[seed % len(BOTS)],
                                        _ChatState(cursor=NOW), settings, NOW)
        if target is not None:
            got[target.telegram_message_id] += 1
    return got


def test_thread_fades_with_depth() -> None:
    # leaves at depth 0 (20), 1 (21), 2 (22) and 3 (23); their parents are answered
    recent = [_bot_line(1, 5), _bot_line(2, 5), _bot_line(3, 6, reply_to=2),
              _bot_line(4, 5), _bot_line(5, 6, reply_to=4), _bot_line(6, 5, reply_to=5),
              _bot_line(23, 6, reply_to=6), _bot_line(22, 5, reply_to=3),
              _bot_line(21, 6, reply_to=1), _bot_line(20, 5)]
    got = _first_targets(recent, SETTINGS)
    assert set(got) == {20, 21, 22}  # 23, three replies deep: thread_max_depth 3 ends it
    assert got[20] > got[21] > got[22] > 0
    deep = _first_targets(recent, SETTINGS.model_copy(update={"thread_max_depth": 20}))
    assert deep[23] > 0


# -- the sharded dispatch chooses what a lone worker chooses ------------------------------
class _Reads:
    def __init__(self, profiles: list[BotProfile]) -> None:
        self.profiles = {p.id: p for p in profiles}

    async def settings(self) -> SimulationSettings:
        return SETTINGS

    async def chats(self) -> list[ChatInfo]:
        return [ChatInfo(id=1, telegram_chat_id=-100, title="demo", topics={"usdtry": 1.0},
                         bot_ids=sorted(self.profiles))]

    async def bot(self, bot_id: int) -> BotProfile:
        return self.profiles[bot_id]

    async def history(self, chat_id: int) -> list[HistoryItem]:
        return []


class _Stream:
    def __init__(self) -> None:
        self.added: list[list[int]] = []
        self.key = "test:replies"

    async def add(self, item: HistoryItem, chat_id: int, bot_ids: list[int],
                  reply_to_bot_id: int | None) -> list[str]:
        self.added.append(list(bot_ids))
        return []


@contextlib.asynccontextmanager
async def _session() -> AsyncIterator[None]:
    yield None


async def test_sharded_dispatch_chooses_what_the_lone_scheduler_chooses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sends(*_: Any, **__: Any) -> dict[int, int]:
        return {}

    monkeypatch.setattr(replies.message_store, "bot_message_counts", no_sends)
    profiles = [BotProfile(id=i + 1, name=p.name, username=p.username, telegram_user_id=None,
                           persona=p.profile(), stances=[], holdings=[], enabled=True)
                for i, p in enumerate(load_persona_dir())]
    stream = _Stream()
    seed = 11
    dispatcher = ReplyDispatcher(stream, _Reads(profiles), _session, seed=seed)  # type: ignore[arg-type]
    texts = ["Arkadaşlar bugün altın alınır mı?", "Dolar nereye gider?", "Borsa neden düştü?"]
    for m in range(1, 41):
        text = texts[m % 3]
        item = HistoryItem(message_id=m, telegram_message_id=100 + m, bot_id=None,
                           speaker="Deniz", speaker_username="deniz", is_human=True,
                           text=text, created_at=NOW, reply_wanted=True)
        sharded = await dispatcher.dispatch(1, item)
        solo = Scheduler(seed=seed)
        line = ChatLine(100 + m, "Deniz", "deniz", True, text, created_at=NOW)
        view = ChatView(chat_id=1, telegram_chat_id=-100, topics={}, sent_last_minute=0,
                        recent=[line], waiting=[WaitingMessage(message_id=m, line=line)])
        solo_turns = [t for s in range(20)
                      for t in solo.decide(view, BOTS, SETTINGS, NOW + timedelta(seconds=s))
                      if t.reply_message_id == m]
        assert sorted(t.bot_id for t in solo_turns) == sorted(sharded), (m, text)
    assert [len(a) for a in stream.added].count(2) >= 1  # group questions: two, sometimes
    assert len({a[0] for a in stream.added}) >= 3


def test_each_human_message_is_answered_exactly_once_in_a_run() -> None:
    settings = SETTINGS.model_copy(update={"second_answer_p": 0.0})
    run = simulate(BOTS, minutes=12, seed=5, human_every_s=45, settings=settings)
    humans = {tg: kind for tg, kind in run.humans.items() if tg <= len(run.lines) - 10}
    assert len(humans) >= 12
    for tg, kind in humans.items():
        repliers = [m.bot_id for m in run.lines if m.reply_to == tg and m.bot_id is not None]
        assert len(repliers) == 1, (tg, kind, repliers)
        if kind == "mention":
            assert repliers == [ZEYNEP]
    figures = run_figures(run)
    assert figures["human_answered_once"] == 1.0
    assert figures["answered_by_2_or_more"] <= 0.15

"""The long-term memory in the turns (behavior_engine.recall): refilled on a bot's first
turn, fed by the chat, recalled into the prompt, reflected on through the chain, forgotten."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from behavior_engine.memory import MemoryItem
from behavior_engine.reads import HistoryItem
from behavior_engine.recall import MemoryKeeper, MemorySeed, recall_query
from behavior_engine.turn import Generation, GenerationRequest
from tests.unit.test_pipeline import BOT, NOW, FakeClient, Rig, profile, turn

BOT_PROFILE = profile()


def line(tg: int, text: str, *, bot_id: int | None = None, human: bool = True,
         reply_to: int | None = None, at: datetime = NOW, speaker: str = "Deniz") -> HistoryItem:
    return HistoryItem(message_id=tg, telegram_message_id=tg, bot_id=bot_id, speaker=speaker,
                       speaker_username=None, is_human=human, text=text, created_at=at,
                       reply_to=reply_to)


class FakeMemoryRecords:
    def __init__(self, seed: list[tuple[HistoryItem, int, bool]] | None = None,
                 fail: bool = False) -> None:
        self.seed = seed or []
        self.fail = fail
        self.seeded: list[int] = []
        self.bulk: list[list[int]] = []  # the bot ids of each memory_refill
        self.saved: list[tuple[int, MemoryItem]] = []

    async def memory_seed(self, bot_id: int, *, since: datetime, limit: int
                          ) -> list[tuple[HistoryItem, int, bool]]:
        if self.fail:
            raise ConnectionError("database down")
        self.seeded.append(bot_id)
        return self.seed

    async def reflections(self, bot_id: int, *, now: datetime, limit: int
                          ) -> list[MemoryItem]:
        return [MemoryItem(kind="reflection", text="Deniz hep faizi soruyor.", importance=0.7,
                           at=now - timedelta(days=1))]

    async def memory_refill(self, bot_ids: list[int], *, since: datetime, now: datetime,
                            limit: int, reflections: int) -> dict[int, MemorySeed]:
        if self.fail:
            raise ConnectionError("database down")
        self.bulk.append(list(bot_ids))
        return {b: MemorySeed(lines=self.seed if b == BOT else [],
                              reflections=await self.reflections(b, now=now, limit=reflections))
                for b in bot_ids}

    async def save_reflection(self, bot_id: int, item: MemoryItem,
                              expires_at: datetime) -> None:
        self.saved.append((bot_id, item))


async def test_a_bot_remembers_a_question_from_another_worker_days_ago() -> None:
    asked = line(10, "Ali Hoca, carry trade ne zaman biter?", reply_to=9,
                 at=NOW - timedelta(days=2))
    own = line(9, "Faiz indirimi yakın.", bot_id=BOT, human=False, speaker="Ali Hoca",
               at=NOW - timedelta(days=2, minutes=1))
    records = FakeMemoryRecords(seed=[(asked, 3, False), (own, 3, True)])  # newest first
    keeper = MemoryKeeper(records)
    await keeper.prepare(BOT_PROFILE, 3, [], NOW)
    await keeper.prepare(BOT_PROFILE, 3, [], NOW)
    assert records.seeded == [BOT]  # refilled once
    lines = keeper.recall(BOT_PROFILE, "carry trade ne olacak?", NOW)
    assert any("carry trade" in x for x in lines)
    assert any("Deniz hep faizi" in x for x in lines)  # its reflection came back too
    keeper.forget([BOT])
    assert keeper.recall(BOT_PROFILE, "carry trade", NOW) == ()


async def test_a_failed_refill_leaves_the_turn_with_what_the_chat_shows() -> None:
    keeper = MemoryKeeper(FakeMemoryRecords(fail=True))
    await keeper.prepare(BOT_PROFILE, 3, [line(5, f"@{BOT_PROFILE.username} altın ne olur?")], NOW)
    assert keeper.recall(BOT_PROFILE, "altın", NOW) != ()


async def test_bots_taken_on_are_refilled_in_bulk_and_their_turns_read_nothing() -> None:
    """Issue 20: the refill of bots a worker takes on is one read per batch of bots, not
    one per bot at its first turn."""
    asked = line(10, "Ali Hoca, carry trade ne zaman biter?", reply_to=9,
                 at=NOW - timedelta(days=2))
    records = FakeMemoryRecords(seed=[(asked, 3, False)])
    keeper = MemoryKeeper(records)
    others = list(range(1000, 1004))
    assert await keeper.prefill([BOT, *others, BOT], NOW, batch=2) == 5
    assert records.bulk == [[BOT, 1000], [1001, 1002], [1003]]  # each bot once, in batches
    await keeper.prepare(BOT_PROFILE, 3, [], NOW)
    assert records.seeded == []  # its turn read nothing more
    lines = keeper.recall(BOT_PROFILE, "carry trade ne olacak?", NOW)
    assert any("carry trade" in x for x in lines) and any("Deniz hep faizi" in x for x in lines)
    assert await keeper.prefill([BOT, 1000], NOW) == 0  # already there: left as they are
    assert records.bulk[3:] == []


async def test_a_failed_bulk_refill_leaves_each_bot_to_its_own_first_turn() -> None:
    records = FakeMemoryRecords(fail=True)
    keeper = MemoryKeeper(records)
    assert await keeper.prefill([BOT], NOW) == 0
    assert BOT not in keeper.book
    records.fail = False
    await keeper.prepare(BOT_PROFILE, 3, [], NOW)
    assert records.seeded == [BOT]


async def test_a_prefill_batch_must_hold_a_bot() -> None:
    with pytest.raises(ValueError, match="batch must be at least 1"):
        await MemoryKeeper(FakeMemoryRecords()).prefill([BOT], NOW, batch=0)


def test_recall_query() -> None:
    assert recall_query("gold", "Altın alınır mı?", []) == "Altın alınır mı?"
    assert recall_query("gold", None, [line(1, "dolar uçtu")]) == "gold dolar uçtu"
    assert recall_query("gold", None, []) == "gold"


class Recorder:
    """A provider that remembers the prompts it got."""

    name = "rec"
    model = None

    def __init__(self, text: str = "Bence bekleyelim.") -> None:
        self.text = text
        self.asked: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> Generation:
        self.asked.append(request)
        return Generation(text=self.text, provider=self.name)


async def test_the_prompt_recalls_a_question_that_left_the_chat_window() -> None:
    """Twenty-five lines after a person's question to the bot, the question is out of the
    history the prompt shows, but the memory layer still has it (without the keeper's
    recall, the memory layer held only the bot's own last texts)."""
    provider = Recorder()
    rig = Rig(FakeClient(), providers=(provider,))
    question = line(1, "Ali Hoca, carry trade ne zaman biter sizce?", at=NOW - timedelta(hours=1))
    rig.reads.items = [question, *[
        line(100 + i, f"sohbet satırı {i}", human=False, bot_id=99, speaker="Başka",
             at=NOW - timedelta(minutes=50 - i)) for i in range(25)]]
    await rig.pipeline.run(turn())  # observes the whole cached history once
    rig.reads.items = rig.reads.items[-20:]
    provider.asked.clear()
    await rig.pipeline.run(turn())
    memory = provider.asked[0].messages[1]["content"]
    assert "You remember" in memory and "carry trade" in memory


async def test_reflections_go_through_the_chain_and_an_offline_answer_is_none() -> None:
    records = FakeMemoryRecords()
    keeper = MemoryKeeper(records)
    stream = keeper.book.stream(BOT)
    for i in range(20):  # 20 questions × 0.9+ importance ≥ the threshold of 15
        keeper.book.observe(BOT, line(i, f"Ali Hoca, soru {i} ne olur?"), chat_id=3,
                            bot_username=BOT_PROFILE.username, to_bot=True)
    assert keeper.due([BOT, 12345], NOW) == [BOT]
    answers: list[str | None] = [None]

    def generate_for(bot: object):  # type: ignore[no-untyped-def]
        async def generate(messages: list[dict[str, str]]) -> str | None:
            return answers[0]
        return generate

    assert await keeper.reflect_due([BOT_PROFILE], generate_for, NOW) == 0  # offline: none
    assert records.saved == []
    answers[0] = "İnsanlar bana hep aynı soruyu soruyor."
    later = NOW + timedelta(hours=2)  # the retry wait after an attempt has passed
    assert await keeper.reflect_due([BOT_PROFILE], generate_for, later) == 1
    [(bot_id, item)] = records.saved
    assert bot_id == BOT and item.kind == "reflection" and item in stream.items
    assert keeper.due([BOT], later) == []  # reflected: nothing due until more is said


async def test_letting_a_bot_go_releases_what_the_pipeline_kept_of_it() -> None:
    rig = Rig(FakeClient(), providers=(Recorder("Kur yükselecek bence."),))
    await rig.pipeline.run(turn())
    pipeline = rig.pipeline
    assert pipeline.own_recent.of(BOT) and BOT in pipeline.expressed
    assert BOT in pipeline.memory.book
    pipeline.forget([BOT])
    assert pipeline.own_recent.of(BOT) == () and BOT not in pipeline.expressed
    assert BOT not in pipeline.memory.book

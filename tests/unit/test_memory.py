"""Long-term memory (issue 16, item 4): importance, recall, cap and expiry, observation,
reflection, prompt lines (``behavior_engine.memory``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from behavior_engine.memory import (
    REFLECTION_THRESHOLD,
    MemoryBook,
    MemoryItem,
    MemoryStream,
    importance,
    is_question,
    memory_lines,
    needs_reflection,
    parse_reflection,
    reflect,
    reflection_request,
    similarity,
    text_vector,
)
from behavior_engine.reads import HistoryItem
from behavior_engine.turn import ChatLine

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
BOT = 7


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def item(text: str, *, hours: float = 0.0, imp: float = 0.5, kind: str = "said",
         chat: int | None = 1, ref: int | None = None) -> MemoryItem:
    return MemoryItem(kind=kind, text=text, importance=imp, at=ago(hours),  # type: ignore[arg-type]
                      chat_id=chat, ref=ref)


def stream_of(*items: MemoryItem, **kw: object) -> MemoryStream:
    s = MemoryStream(**kw)  # type: ignore[arg-type]
    for i in items:
        s.add(i, now=NOW)
    return s


# --- recall -------------------------------------------------------------------------------

Spec = tuple[str, float, float]  # text, hours ago, importance
QUERY = "altın yükselir mi"
#: The oldest, least important, unrelated memory: the low anchor of every normalisation.
FILLER: Spec = ("sabah kahvemi içtim", 48.0, 0.1)


def spec(x: Spec) -> MemoryItem:
    return item(x[0], hours=x[1], imp=x[2])


def winner(x: Spec, y: Spec, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> str:
    s = stream_of(spec(FILLER), spec(x), spec(y))
    return s.recall(QUERY, NOW, k=1, weights=weights)[0].text


def test_relevance_changes_the_winner() -> None:
    # X is older but about the query; Y is newer and about nothing: relevance wins it for X.
    x = ("altın bence yükselir", 6.0, 0.5)
    y = ("hava bugün çok güzel", 1.0, 0.5)
    assert winner(x, y) == "altın bence yükselir"
    # ignoring relevance, the newer one wins: this test fails if relevance were ignored
    assert winner(x, y, weights=(1.0, 1.0, 0.0)) == "hava bugün çok güzel"


def test_importance_changes_the_winner() -> None:
    y = ("hava bugün çok güzel", 1.0, 0.5)
    assert winner(("altın bence yükselir", 6.0, 0.5), y) \
        == "altın bence yükselir"
    assert winner(("altın bence yükselir", 6.0, 0.2), y) \
        == "hava bugün çok güzel"


def test_recency_changes_the_winner() -> None:
    y = ("hava bugün çok güzel", 0.0, 0.9)
    assert winner(("altın bence yükselir", 40.0, 0.5), y) \
        == "hava bugün çok güzel"
    assert winner(("altın bence yükselir", 0.5, 0.5), y) \
        == "altın bence yükselir"


def test_recall_finds_the_relevant_memory_among_many() -> None:
    chatter = [item(f"piyasa sakin, bugün {n}. kahve", hours=n / 10, imp=0.3) for n in range(50)]
    needle = item("Dolar kuru 35 liraya dayandı", hours=12.0, imp=0.3)
    s = stream_of(spec(FILLER), *chatter, needle)
    assert s.recall("dolar kurunda son durum ne?", NOW, k=3)[0] == needle
    assert needle not in s.recall("kahve", NOW, k=3)


def test_recall_skips_the_query_itself_and_is_deterministic_on_ties() -> None:
    a, b = item("aynı söz", hours=2.0), item("aynı söz", hours=1.0)
    c, d = item("başka söz", hours=3.0), item("başka söz", hours=3.0)
    s = stream_of(a, b, c, d)
    assert s.recall("Aynı   SÖZ", NOW, k=10) == [d, c]      # same time: the later added first
    assert s.recall("xyz", NOW, k=2) == [b, a]       # equal but for time: newer first
    assert s.recall("xyz", NOW, k=0) == []
    assert stream_of().recall("x", NOW) == []


def test_similarity_of_hashed_ngrams() -> None:
    v = text_vector("Dolar kuru yükseldi")
    assert similarity(v, text_vector("dolar KURU yükseldi")) == pytest.approx(1.0)
    assert similarity(v, text_vector("dolarda kurlar")) > similarity(v, text_vector("maç"))
    assert similarity(v, text_vector("")) == 0.0
    assert len(text_vector("İSTANBUL")) == len(text_vector("istanbul"))
    assert set(text_vector("İSTANBUL")) == set(text_vector("istanbul"))


# --- cap, expiry, de-duplication --------------------------------------------------------

def test_the_cap_lets_the_lowest_recency_times_importance_go() -> None:
    old_but_important = item("önemli soru", hours=5.0, imp=0.9)   # 0.9 × 0.56 = 0.50
    chatter = [item(f"laf {n}", hours=1.0 - n / 10, imp=0.3) for n in range(3)]  # ~0.27 each
    s = stream_of(old_but_important, *chatter, cap=3)
    assert len(s) == 3
    assert old_but_important in s.items
    assert chatter[0] not in s.items   # the oldest of the equals went
    assert s.add(item("laf yine", hours=2.0, imp=0.1), now=NOW) is False  # it goes itself
    assert len(s) == 3


def test_expiry_by_kind() -> None:
    s = MemoryStream()
    week = item("bir hafta önce", hours=24 * 7 - 1)
    old_thought = item("sonuç", hours=24 * 20, kind="reflection", imp=0.7)
    s.add(week, now=NOW)
    s.add(old_thought, now=NOW)
    assert s.add(item("çok eski", hours=24 * 8), now=NOW) is False
    assert s.add(item("çok eski sonuç", hours=24 * 31, kind="reflection"), now=NOW) is False
    assert len(s) == 2
    assert s.expire(NOW + timedelta(hours=2)) == 1          # the week is over
    assert s.items == (old_thought,)
    assert s.recall("x", NOW + timedelta(days=11)) == []    # recall expires first: 31 days
    assert len(s) == 0
    assert s.expires_at(week) == week.at + timedelta(days=7)
    assert s.expires_at(old_thought) == old_thought.at + timedelta(days=30)


def test_a_message_is_remembered_once_per_chat() -> None:
    s = MemoryStream()
    assert s.add(item("merhaba", ref=10, chat=1)) is True
    assert s.add(item("merhaba tekrar", ref=10, chat=1)) is False
    assert s.add(item("merhaba", ref=10, chat=2)) is True       # another chat's message 10
    assert s.add(item("olay", ref=None, kind="event")) is True
    assert s.add(item("olay", ref=None, kind="event")) is True  # no ref: no key
    assert len(s) == 4


def test_validation() -> None:
    with pytest.raises(ValueError):
        MemoryItem(kind="dream", text="x", importance=0.5, at=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MemoryItem(kind="said", text="x", importance=1.2, at=NOW)
    with pytest.raises(ValueError):
        MemoryItem(kind="said", text="x", importance=0.5, at=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError):
        MemoryStream(cap=0)
    with pytest.raises(ValueError):
        importance("dream", "x", to_bot=True, is_human=True)


# --- importance ---------------------------------------------------------------------------

def test_importance_heuristic() -> None:
    q = importance("question", "Altın alınır mı", to_bot=True, is_human=True)
    assert q == pytest.approx(0.9)
    assert importance("question", "Altın 2700 olur mu @ayse_bot?", to_bot=True,
                      is_human=True) == 1.0                    # clipped
    said = importance("said", "bence sakin", to_bot=False, is_human=False)
    heard = importance("heard", "katılıyorum", to_bot=True, is_human=True)
    event = importance("event", "Fed faizi indirdi", to_bot=False, is_human=False)
    thought = importance("reflection", "Deniz hep dolar soruyor", to_bot=False, is_human=False)
    assert q > event > thought > heard > said == pytest.approx(0.3)
    assert importance("heard", "katılıyorum", to_bot=True, is_human=False) < heard
    assert importance("heard", "katılıyorum", to_bot=False, is_human=True) < heard
    assert importance("said", "dolar 35", to_bot=False, is_human=False) > said  # a number
    assert importance("said", "dolar?", to_bot=False, is_human=False) > said    # a "?"


@pytest.mark.parametrize(("text", "expected"), [
    ("Altın alınır mı", True), ("Sence dolar ne olur", True), ("neden düştü", True),
    ("Kaça aldın", True), ("gelir misiniz", True), ("bu iş olur mu 🤔", True),
    ("What about gold", True), ("should I sell", True), ("really?!", True),
    ("Altın yükseliyor", False), ("güzel gün", False), ("I bought gold", False),
    ("Mira çok iyi", False),
])
def test_is_question(text: str, expected: bool) -> None:
    assert is_question(text) is expected


# --- observe ------------------------------------------------------------------------------

def line(tg: int, text: str, *, bot_id: int | None = None, human: bool = True,
         reply_to: int | None = None, mentions: tuple[str, ...] = (),
         speaker: str = "Deniz") -> HistoryItem:
    return HistoryItem(message_id=tg, telegram_message_id=tg, bot_id=bot_id, speaker=speaker,
                       speaker_username=None, is_human=human, text=text,
                       created_at=ago(1) + timedelta(minutes=tg), reply_to=reply_to,
                       mentions=mentions)


def test_observe_kinds_in_turkish_and_english() -> None:
    book = MemoryBook()

    def kind(ln: HistoryItem | ChatLine, chat: int = 1) -> str | None:
        got = book.observe(BOT, ln, chat_id=chat, bot_username="Ayse_Bot")
        return got.kind if got else None

    assert kind(line(1, "Altın bence yükselecek", bot_id=BOT, human=False)) == "said"
    assert kind(line(2, "Neden öyle düşünüyorsun?", reply_to=1)) == "question"
    assert kind(line(3, "@ayse_bot altın alınır mı")) == "question"    # particle, no "?"
    assert kind(line(4, "@Ayse_Bot what about silver")) == "question"  # English wh-word
    assert kind(line(5, "haklısın", reply_to=1)) == "heard"
    assert kind(line(6, "good call", mentions=("ayse_bot",))) == "heard"  # entity only
    assert kind(line(7, "Sen ne diyorsun?", bot_id=99, human=False, reply_to=1)) == "heard"
    assert kind(line(8, "hava güzel mi?")) is None                     # not to the bot
    assert kind(line(9, "katılmıyorum", reply_to=8)) is None            # to someone else
    assert kind(line(10, "@ayse_botu gördünüz mü?")) is None            # another username
    assert kind(line(11, "", reply_to=1)) is None                       # no text
    assert kind(line(12, "cevap?", reply_to=1), chat=2) is None          # 1 is chat 1's
    assert kind(line(2, "Neden öyle düşünüyorsun?", reply_to=1)) is None  # seen already
    chatline = ChatLine(telegram_message_id=13, speaker="Ali", speaker_username="ali",
                        is_human=True, text="@ayse_bot how much?", created_at=ago(0.5))
    assert kind(chatline) == "question"
    texts = {i.kind: i for i in book.stream(BOT).items}
    assert texts["question"].who in ("Deniz", "Ali") and texts["said"].who is None


def test_observe_with_to_bot_and_without_a_time() -> None:
    book = MemoryBook()
    # a seed row known to be said to the bot (a reply to a message outside the seed)
    got = book.observe(BOT, line(20, "peki neden?", reply_to=3), chat_id=1,
                       bot_username="ayse_bot", to_bot=True)
    assert got is not None and got.kind == "question"
    assert book.observe(BOT, line(21, "@ayse_bot selam"), chat_id=1, bot_username="ayse_bot",
                        to_bot=False) is None
    bare = ChatLine(telegram_message_id=22, speaker="Ali", speaker_username=None,
                    is_human=True, text="@ayse_bot selam")
    with pytest.raises(ValueError):
        book.observe(BOT, bare, chat_id=1, bot_username="ayse_bot")
    got = book.observe(BOT, bare, chat_id=1, bot_username="ayse_bot", now=NOW)
    assert got is not None and got.at == NOW and got.kind == "heard"


def test_the_book_keeps_a_bounded_number_of_bots() -> None:
    book = MemoryBook(max_bots=2)
    book.note(1, "event", "Fed faizi indirdi", at=NOW)
    book.stream(2)
    book.stream(1)            # 1 used last: 2 is the least recently used
    book.stream(3)
    assert 1 in book and 3 in book and 2 not in book and len(book) == 2
    assert book.stream(1).items[0].importance == pytest.approx(0.8)
    book.forget(1)
    book.forget(42)           # unknown: nothing happens
    assert 1 not in book and len(book) == 1
    assert book.note(3, "event", "  ", at=NOW) is None
    long = book.note(3, "said", "ç" * 5000, at=NOW)
    assert long is not None and long.text == "ç" * 500    # TEXT_MAX_CHARS


def test_recall_sees_what_was_added_and_expired_since_the_last_recall() -> None:
    s = stream_of(item("hava güzel", hours=1.0), item("maç akşam", hours=2.0))
    assert s.recall("dolar kuru", NOW, k=1)[0].text == "hava güzel"
    s.add(item("dolar kuru yükseldi", hours=1.5), now=NOW)
    assert s.recall("dolar kuru", NOW, k=1)[0].text == "dolar kuru yükseldi"
    later = NOW + timedelta(days=7) - timedelta(hours=1.2)
    assert [i.text for i in s.recall("dolar kuru", later, k=5)] == ["hava güzel"]
    assert len(s) == 1                         # the two older ones have expired


# --- reflection ---------------------------------------------------------------------------

def filled(n: int, imp: float = 0.5) -> MemoryStream:
    return stream_of(*(item(f"Deniz dolar sordu {k}", hours=n - k, imp=imp, ref=k)
                       for k in range(n)))


def test_reflection_threshold() -> None:
    below = filled(int(REFLECTION_THRESHOLD / 0.5) - 1)
    assert needs_reflection(below) is False
    enough = filled(int(REFLECTION_THRESHOLD / 0.5))
    assert needs_reflection(enough) is True
    enough.reflection_tried_at = NOW
    assert needs_reflection(enough, now=NOW + timedelta(minutes=30)) is False  # retry wait
    assert needs_reflection(enough, now=NOW + timedelta(hours=1)) is True
    enough.add(item("Deniz dolara takık", kind="reflection", imp=0.7), now=NOW)
    assert needs_reflection(enough) is False     # only what came after the reflection counts
    assert enough.since_reflection() == []


@dataclass
class FakeLLM:
    answer: str | None = "- Deniz hep doları soruyor.\n2) Ben temkinli kalmalıyım.\n3) fazla"
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.calls: list[list[dict[str, str]]] = []

    async def __call__(self, messages: list[dict[str, str]]) -> str | None:
        self.calls.append(messages)
        if self.error is not None:
            raise self.error
        return self.answer


async def test_reflect_stores_the_insight() -> None:
    s = filled(30)
    llm = FakeLLM()
    got = await reflect(s, llm, now=NOW, persona_language="tr", persona_name="Ayşe")
    assert got is not None and got.kind == "reflection" and got.at == NOW
    assert got.text == "Deniz hep doları soruyor. Ben temkinli kalmalıyım."
    assert got.importance == pytest.approx(0.7)
    assert got in s.items and s.last_reflection_at == NOW and s.reflection_tried_at == NOW
    assert needs_reflection(s) is False
    (system, user), = llm.calls
    assert "Ayşe" in system["content"] and "Türkçe" in system["content"]
    assert user["content"].count("\n- ") == 10       # the 10 most important memories
    assert await reflect(s, llm, now=NOW, persona_language="tr") is None  # nothing new
    assert len(llm.calls) == 1


@pytest.mark.parametrize("llm", [FakeLLM(error=RuntimeError("provider down")),
                                 FakeLLM(answer=""), FakeLLM(answer=None),
                                 FakeLLM(answer=" \n - \n")])
async def test_a_failed_reflection_returns_none(llm: FakeLLM) -> None:
    s = filled(30)
    assert await reflect(s, llm, now=NOW, persona_language="en") is None
    assert s.reflection_tried_at == NOW and s.last_reflection_at is None
    assert all(i.kind != "reflection" for i in s.items)
    assert needs_reflection(s, now=NOW + timedelta(minutes=5)) is False  # not every turn


async def test_a_cancelled_reflection_is_not_swallowed() -> None:
    with pytest.raises(asyncio.CancelledError):
        await reflect(filled(30), FakeLLM(error=asyncio.CancelledError()), now=NOW,
                      persona_language="en")


def test_reflection_request_picks_the_most_important() -> None:
    items = [item(f"sıradan {k}", hours=k, imp=0.3) for k in range(20)]
    items.append(item("Deniz altını sordu", hours=30, imp=0.95, kind="question"))
    system, user = reflection_request(items, now=NOW, language="en")
    assert system["role"] == "system" and "English" in system["content"]
    assert "Deniz altını sordu" in user["content"]
    assert "sıradan 0" in user["content"] and "sıradan 10" not in user["content"]
    assert user["content"].count("\n- ") == 10


def test_parse_reflection() -> None:
    assert parse_reflection("«İnsanlar dolardan korkuyor.»") == "İnsanlar dolardan korkuyor."
    assert parse_reflection("1. a\n\n2. b\n3. c") == "a b"
    assert parse_reflection("x" * 500) == "x" * 299 + "…"
    assert parse_reflection(None) is None


# --- prompt lines -------------------------------------------------------------------------

def test_memory_lines_in_turkish_and_english() -> None:
    items = [
        MemoryItem("said", "Altın yükselir", 0.3, ago(2)),
        MemoryItem("question", "Dolar ne olur?", 0.9, NOW - timedelta(minutes=5), who="Deniz"),
        MemoryItem("heard", "katılıyorum", 0.6, NOW - timedelta(seconds=10)),
        MemoryItem("event", "Fed faizi indirdi", 0.8, ago(50)),
        MemoryItem("reflection", "Deniz dolara takık", 0.7, ago(3)),
    ]
    assert memory_lines(items, "tr", now=NOW) == [
        "2 saat önce şunu dedin: «Altın yükselir»",
        "5 dk önce Deniz sana sordu: «Dolar ne olur?»",
        "az önce biri sana yazdı: «katılıyorum»",
        "2 gün önce piyasada: Fed faizi indirdi",
        "3 saat önce şu sonuca vardın: Deniz dolara takık",
    ]
    assert memory_lines(items, "en", now=NOW) == [
        "2 h ago, you said: «Altın yükselir»",
        "5 min ago, Deniz asked you: «Dolar ne olur?»",
        "just now, someone told you: «katılıyorum»",
        "2 d ago, in the market: Fed faizi indirdi",
        "3 h ago, you concluded: Deniz dolara takık",
    ]
    assert memory_lines([], "en") == []
    long = MemoryItem("said", "çok " * 100, 0.3, NOW)
    assert memory_lines([long], "en")[0].endswith("…»") and len(memory_lines([long], "en")[0]) < 230

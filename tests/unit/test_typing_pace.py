"""Reading and typing like a person (issue 14, item 3): the pipeline's pauses on a fake clock.

The rig of ``test_pipeline`` sleeps on a fake clock (``Rig.now``) and its client records when
"typing…" and the message went out, so nothing here waits.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from backend.schemas import MessageMeta, SimulationSettings
from behavior_engine import records as records_module
from behavior_engine.pipeline import Sent
from behavior_engine.records import StoreTurnRecords
from behavior_engine.turn import ChatLine, Generation, GenerationRequest
from behavior_engine.typist import TYPING_RENEW_S, Pace, jitter_rng, keep_typing
from tests.unit.test_pipeline import HUMAN, NOW, FakeClient, Rig, profile, turn

#: Telegram shows a chat action for 5 s (core.telegram.org/bots/api#sendchataction).
TELEGRAM_ACTION_S = 5.0


class Fixed:
    """A provider that writes the text it is given."""

    name = "fixed"
    model = None

    def __init__(self, text: str) -> None:
        self.text = text

    async def generate(self, request: GenerationRequest) -> Generation:
        return Generation(text=self.text, provider=self.name)


def settings(**changes: Any) -> SimulationSettings:
    """The defaults with no jitter (so an expected time can be computed), changed."""
    return SimulationSettings(**{"typing_jitter": 0.0, **changes})


async def sent_with(text: str, sim: SimulationSettings, *, reply: ChatLine | None = None,
                    **persona: Any) -> tuple[Rig, Sent]:
    rig = Rig(FakeClient(), providers=(Fixed(text),), sim=sim,
              bot=profile(**persona) if persona else None)
    out = await rig.pipeline.run(turn(reply_to=reply))
    assert out.status == "sent"
    return rig, rig.records.committed[0]


def bounded(raw_s: float, cap_s: float) -> float:
    """The typist's soft bound: cap × (1 − e^(−raw/cap))."""
    return cap_s * (1 - math.exp(-raw_s / cap_s))


def typing_pause(rig: Rig, sent: Sent) -> float:
    """Seconds slept after reading (the typing pause)."""
    return sum(rig.slept) - sent.timing.read_s


async def test_a_long_answer_types_longer_than_a_short_one() -> None:
    sim = settings(typing_cap_s=60.0)
    short_text, long_text = "Bence bekleyelim.", "Bence bekleyelim, çünkü faiz kararı yakın. " * 4
    _, short = await sent_with(short_text, sim)
    rig, long = await sent_with(long_text, sim)
    assert long.timing.typing_s > short.timing.typing_s
    cpm = profile().persona.typing_cpm or sim.typing_cpm_default
    assert long.timing.typing_s == pytest.approx(bounded(len(long_text) * 60 / cpm, 60.0))
    # the generation counts toward the typing time: only the rest is slept
    assert typing_pause(rig, long) + long.timing.llm_s == pytest.approx(long.timing.typing_s)


async def test_a_persona_types_at_its_own_speed() -> None:
    text = "Altında kısa vadeli oynaklık beni hiç ilgilendirmiyor, ben birikime bakarım."
    sim = settings(typing_cap_s=60.0)
    _, slow = await sent_with(text, sim, typing_cpm=120.0)
    _, fast = await sent_with(text, sim, typing_cpm=600.0)
    assert slow.timing.typing_s == pytest.approx(bounded(len(text) * 60 / 120.0, 60.0))
    assert fast.timing.typing_s == pytest.approx(bounded(len(text) * 60 / 600.0, 60.0))


async def test_typing_is_renewed_before_telegram_drops_it() -> None:
    rig, sent = await sent_with("x" * 300, settings(typing_cap_s=30.0, reading_cap_s=0.0),
                                typing_cpm=300.0)
    total = bounded(60.0, 30.0)  # 300 characters at 300 per minute: 60 s, bounded by 30 s
    assert sent.timing.typing_s == pytest.approx(total) and total > 25
    shown = [t for kind, t in rig.client.events if kind == "typing"]
    [(_kind, sent_at)] = [e for e in rig.client.events if e[0] == "send"]
    # sent when the typing time is over (the generation's real microseconds count toward it)
    assert shown[0] == 0.0 and sent_at + sent.timing.llm_s == pytest.approx(total)
    marks = [*shown, sent_at]
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    assert max(gaps) <= TELEGRAM_ACTION_S  # never a moment without "typing…"
    assert len(shown) >= math.ceil(total / TELEGRAM_ACTION_S)


async def test_a_reply_reads_before_it_types() -> None:
    question = ChatLine(telegram_message_id=42, speaker="Deniz", speaker_username=None,
                        is_human=True, created_at=NOW,
                        text="Arkadaşlar bugün altın alınır mı, yoksa biraz beklemek mi lazım?")
    sim = settings(reading_wpm=120.0, reading_cap_s=30.0)
    rig, sent = await sent_with("Bence beklemek lazım.", sim, reply=question)
    expected = 10 * 60 / 120.0  # ten words at 120 words per minute
    assert sent.timing.read_s == pytest.approx(expected)
    assert rig.slept[0] == pytest.approx(expected)
    first_typing = next(t for kind, t in rig.client.events if kind == "typing")
    assert first_typing == pytest.approx(expected)  # "typing…" only after reading
    # a fresh message reads nothing: "typing…" at once
    rig, sent = await sent_with("Bence beklemek lazım.", sim)
    assert sent.timing.read_s == 0.0 and rig.client.events[0] == ("typing", 0.0)


async def test_the_caps_hold() -> None:
    long_question = ChatLine(telegram_message_id=42, speaker="Deniz", speaker_username=None,
                             is_human=True, text="neden " * 400, created_at=NOW)
    sim = settings(reading_cap_s=2.5, typing_cap_s=3.0, typing_jitter=0.9)
    rig, sent = await sent_with("ç" * 4000, sim, reply=long_question)
    assert sent.timing.read_s == pytest.approx(2.5)
    assert 2.9 < sent.timing.typing_s <= 3.0  # 4,000 characters: at the bound, never past
    assert sum(rig.slept) <= 2.5 + 3.0 + 1e-9
    # caps of 0: no pause at all (the load tests), "typing…" still shown once
    rig, sent = await sent_with("ç" * 4000, settings(reading_cap_s=0.0, typing_cap_s=0.0),
                                reply=long_question)
    assert rig.slept == [] and rig.client.typing == 1
    assert sent.timing.read_s == 0.0


def test_jitter_varies_per_turn_within_its_band_and_repeats_per_turn() -> None:
    pace = Pace(reading_wpm=250, reading_cap_s=4, typing_cpm=300, typing_jitter=0.3,
                typing_cap_s=600)
    text = "y" * 100  # 20 s without jitter
    times = [pace.typing_s(text, jitter_rng(1, f"turn-{i}")) for i in range(200)]
    assert all(bounded(20 * 0.7, 600) <= t <= bounded(20 * 1.3, 600) for t in times)
    assert max(times) - min(times) > 20 * 0.4  # not one fixed time
    assert pace.typing_s(text, jitter_rng(1, "turn-7")) == times[7]


async def test_keep_typing_counts_the_time_already_shown() -> None:
    now, shown = [0.0], []

    async def show() -> None:
        shown.append(now[0])

    async def sleep(s: float) -> None:
        now[0] += s

    # 3 s of generation already showed "typing…": the next action is due 1.5 s later
    await keep_typing(show, sleep, 10.0, shown_ago=3.0)
    assert now[0] == pytest.approx(10.0)
    assert shown[0] == pytest.approx(TYPING_RENEW_S - 3.0)
    assert all(b - a <= TYPING_RENEW_S + 1e-9 for a, b in itertools.pairwise(shown))


def stored_row(**kw: Any) -> SimpleNamespace:
    """What a faked ``turn_store.commit_sent`` returns for its keyword arguments (the stored
    message as ``item_from_row`` reads it; id 77)."""
    return SimpleNamespace(id=77, telegram_message_id=kw["telegram_message_id"],
                           bot_id=kw["bot_id"], sender_name=None, sender_id=None,
                           meta=kw["meta"], text=kw["text"], created_at=NOW,
                           reply_to_telegram_message_id=None, reply_wanted=False)


class FakeSession:
    """A session whose transaction does nothing (the store functions are faked)."""

    def begin(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def fake_sessionmaker() -> AsyncIterator[FakeSession]:
    """Sessions for :class:`StoreTurnRecords` with every store function faked."""
    yield FakeSession()


async def test_the_message_meta_stores_read_and_typing_ms(
        monkeypatch: pytest.MonkeyPatch) -> None:
    question = ChatLine(telegram_message_id=42, speaker="Deniz", speaker_username=None,
                        is_human=True, text=HUMAN.text, created_at=NOW)
    _, sent = await sent_with("Bence beklemek lazım.", settings(), reply=question)
    stored: list[MessageMeta] = []

    async def commit_sent(session: object, **kw: Any) -> SimpleNamespace:
        stored.append(kw["meta"])
        return stored_row(**kw)

    monkeypatch.setattr(records_module.turn_store, "commit_sent", commit_sent)
    await StoreTurnRecords(fake_sessionmaker).commit_sent(sent)  # type: ignore[arg-type]
    [meta] = stored
    assert sent.timing.read_s > 0 and sent.timing.typing_s > 0
    assert meta.read_ms == pytest.approx(sent.timing.read_s * 1000, abs=1e-3)
    assert meta.typing_ms == pytest.approx(sent.timing.typing_s * 1000, abs=1e-3)


def test_a_longer_text_always_types_longer_even_near_the_bound() -> None:
    pace = Pace(reading_wpm=250, reading_cap_s=3, typing_cpm=300, typing_jitter=0.0,
                typing_cap_s=10)
    times = [pace.typing_s("a" * n, random.Random(1)) for n in (20, 60, 120, 240, 480, 4000)]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert times[-1] <= 10.0 and times[-2] > 9.0


def test_defaults_keep_a_human_reply_within_twenty_seconds() -> None:
    """REALISM.md / issue 14: p95 ≤ 20 s from the human message; the scheduler adds a few
    seconds of its own, so reading plus typing stays well under it even at the caps."""
    sim = SimulationSettings()
    pace = Pace.of(sim, profile().persona)
    rng = random.Random(3)
    worst = pace.reading_s("kelime " * 500) + max(
        pace.typing_s("z" * 4096, rng) for _ in range(50))
    assert worst <= sim.reading_cap_s + sim.typing_cap_s <= 13.0

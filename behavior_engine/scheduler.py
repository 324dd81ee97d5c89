"""Who speaks, when, and to whom: budgets, per-chat caps, prime hours, reply priority, timing.

Each tick the worker hands the scheduler one :class:`ChatView` per chat and the member
bots' :class:`BotView`; the scheduler returns the :class:`Turn` records due now.

* **Humans first.** A human message waiting for an answer gets one replier
  (:func:`choose_repliers`): the bot it replies to or mentions, that bot alone; else a bot
  drawn by expertise in the message's topic, then talkativeness. A second, different bot
  only when the message asks the group (:func:`asks_group`), with probability
  ``second_answer_p`` (REALISM.md: ≤ 15 % of messages are answered by ≥ 2 others). The
  choice is seeded by the message (:func:`replier_rng`), so the sharded listener's dispatch
  and a lone worker choose the same bots. The reply is due after a reading-and-typing delay
  (log-normal, median :data:`HUMAN_REPLY_MEDIAN_S` s).
* **Budgets.** Bot *b* may send ``limit_b`` messages per rolling hour, with ``limit_b`` drawn
  once per bot between ``bot_hourly_msg_limit.min`` and ``.max``, times ``scale_factor``,
  times ``prime_hours.boost`` during prime hours. A bot at its budget is not chosen.
* **Per-chat cap.** At most ``max_msgs_per_min`` bot messages per chat per rolling minute;
  chatter may use only :func:`~behavior_engine.rhythm.chatter_cap` of them (the
  ``human_reply_reserve`` share is kept for answers to humans), paced over the minute
  (``chatter_pacing``, :func:`~behavior_engine.rhythm.paced_from`).
* **Timing.** Spontaneous messages fall on the chat's slots, bursts and lulls drawn from a
  stable hash of (seed, chat, hour) (:mod:`behavior_engine.rhythm`): the same in every
  worker, whenever it started. A turn carries its due time (``Turn.not_before``); it is
  decided up to ``lookahead`` seconds early so sends do not land on the worker's tick, and
  a slot's turn a further :func:`~behavior_engine.rhythm.slot_lead` early (the reading and
  typing caps), so the bot reads, writes and types ahead and sends at the due time.
* **Who and to whom.** A slot's speaker is the top of a weighted random ranking of all the
  chat's member bots (Efraimidis–Spirakis keys ``u^(1/w)``, ``u`` a stable hash of the
  slot and the bot), weight = talkativeness × the bot's daily activity × :data:`LAST_SPEAKER`
  for the previous slot's speaker (× ``quiet_boost`` for a bot silent for
  :data:`QUIET_WINDOW` slots, × budget left with ``budget_evening``: both off by default,
  they even out participation); see :meth:`Scheduler._rank`.
  The worker driving the top bot speaks (the slot waits while that bot waits for Telegram
  or its last turn, and is dropped when it is at its budget: a talkative bot is not
  replaced by a quieter one); the other workers let the slot pass, and remember it for
  :data:`REPLAY_WINDOW`: a worker that takes over a bot (its worker died) speaks a slot of
  that bot it let pass, late, unless the bot has spoken since (:meth:`Scheduler._replay`;
  the slot's turn id dedupes a line the dead worker did send). With probability
  ``reply_p`` the speaker replies to one of the last :data:`REPLY_WINDOW` messages of
  others (not always the last one). A message already answered, or with an answer planned
  or in flight, is not a target (so turns do not pile onto one message), and a message d
  replies deep in a thread is picked with weight 1 − d / ``thread_max_depth`` (a thread fades).
"""

from __future__ import annotations

import bisect
import functools
import math
import random
import re
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from backend.schemas import SimulationSettings
from behavior_engine.rhythm import (
    SLOT_STALE,
    Slot,
    StableUnits,
    activity_at,
    chatter_cap,
    daily_activity,
    local_hour,
    paced_from,
    peak_hour,
    slot_lead,
    stable_unit,
    window_of,
    window_slots,
    window_start,
)
from behavior_engine.topics import detect_topic
from behavior_engine.turn import ChatLine, Turn

REPLY_WINDOW = 8
HUMAN_REPLY_MEDIAN_S = 3.0
#: A bot with no message among the chat's last QUIET_WINDOW gets ``quiet_boost`` × the weight.
QUIET_WINDOW = 10
#: Weight multiplier of the chat's last speaker (REALISM.md: same speaker twice 14–41 %).
#: 0.35, not 0.5: a bot's consecutive slots are a slot lead apart, so fewer of them keep the
#: bursts tight (ten-minute demo windows: gap p90 ÷ median 18 → 21; docs/realism.md).
LAST_SPEAKER = 0.35
HUMAN_WAIT_MAX = timedelta(minutes=30)
#: A bot whose Telegram wait (``BotView.send_wait``) ends at most this many seconds after a
#: turn's due time may take it: the send waits for Telegram anyway, at most one per-chat
#: interval late (Telegram: about one message a second per chat, ../shared/TELEGRAM.md).
TELEGRAM_WAIT_SLACK_S = 1.0
_MINUTE = timedelta(minutes=1)
#: How long a worker remembers the slots it let pass for another worker's bot: longer than
#: a dead worker's leases take to expire and be taken over (twice the default lease TTL,
#: ``backend.keys.HEARTBEAT_TTL_S`` = 10 s, plus a rebalance), so its bots' slots missed
#: meanwhile are spoken, late, by the worker that takes them over.
REPLAY_WINDOW = timedelta(seconds=30)
#: A planned human reply holds back spontaneous chatter until this long after it is due.
HUMAN_PRIORITY_WINDOW = timedelta(seconds=30)
#: A spontaneous turn's reply target stays out of the pool this long (the turn is in flight;
#: once sent, its reply in the history marks the target answered).
TARGET_MEMORY = timedelta(minutes=2)

#: Words that address the whole group in a question (Turkish and English; REALISM.md: "1 by
#: default", a second answer only to a question put to everyone).
GROUP_ADDRESS = re.compile(
    r"(?<!\w)(?:arkadaşlar\w*|millet|beyler|hanımlar|herkes\w*|ahali|guys|everyone|everybody"
    r"|folks|you all|y'all|all of you)(?!\w)"
)
#: Phrases that are a question to the group by themselves ("sizce", "ne düşünüyorsunuz").
GROUP_QUESTION = re.compile(
    r"(?<!\w)(?:sizce|siz ne diyorsunuz|ne düşünüyorsunuz|ne dersiniz|bilen var mı|var mı bilen"
    r"|what do you (?:all |guys )?think|anyone)(?!\w)"
)
#: A second-person plural verb ending ("alır mısınız", "biliyor musunuz"): with a "?", a
#: question to several people.
PLURAL_YOU = re.compile(r"\w+s[ıiuü]n[ıiuü]z(?!\w)")


@dataclass(frozen=True, slots=True)
class BotView:
    """A bot as the scheduler sees it at one tick.

    Attributes:
        bot_id: our bot id.
        name: display name (its first word counts as a mention).
        username: Telegram username (``@username`` counts as a mention).
        talkativeness: relative share of messages (1.0 = average).
        topics: topic id → weight of interest.
        sent_last_hour: messages sent in the last 60 minutes, all chats.
        send_wait: seconds before Telegram's limits let it send here (0 = now; ``math.inf``
            while it is busy with another turn): it may take a turn due about then.
        expertise: topic id → level 0..1 (``PersonaProfile.expertise``).
        busy_until: the due time of the slot turn it is running, if any: it may take a
            slot due a slot lead after that (its next line written while the last one is
            typed, and typed after it is sent), no other turn.
    """

    bot_id: int
    name: str
    username: str
    talkativeness: float
    topics: dict[str, float]
    sent_last_hour: int
    send_wait: float = 0.0
    expertise: dict[str, float] = field(default_factory=dict)
    busy_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class WaitingMessage:
    """A human message that wants an answer.

    Attributes:
        message_id: our message id (``messages.id``).
        line: the message.
        reply_to_bot_id: our bot id when the human replied to one of our bots' messages.
        assigned: the repliers already chosen for it (sharded workers: chosen once, by the
            listener's dispatch, and delivered to the owning worker); None: the scheduler
            chooses among the chat's bots.
        traceparent: the W3C trace context its reply turns continue (the listener's
            dispatch span), or None.
    """

    message_id: int
    line: ChatLine
    reply_to_bot_id: int | None = None
    assigned: tuple[int, ...] | None = None
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class ChatView:
    """A chat as the scheduler sees it at one tick.

    Attributes:
        chat_id / telegram_chat_id: our id and Telegram's.
        topics: topic id → weight.
        sent_last_minute: bot messages in this chat in the last 60 s.
        recent: the last messages, oldest first.
        waiting: human messages waiting for an answer, oldest first.
        in_flight: turns of this chat decided but not yet finished.
        members: bot id → talkativeness of every enabled bot of the chat, driven here or
            not (the chat's rhythm and its speakers' ranking are the chat's, whichever
            worker decides); empty: the bots given to :meth:`Scheduler.decide`.
    """

    chat_id: int
    telegram_chat_id: int
    topics: dict[str, float]
    sent_last_minute: int
    recent: Sequence[ChatLine]
    waiting: Sequence[WaitingMessage] = ()
    in_flight: int = 0
    members: Mapping[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Planned:
    due: datetime
    bot_id: int
    reply_to: ChatLine
    waiting_id: int  # Telegram message id of the human message
    reason: str
    message_id: int | None = None  # our messages.id of the human message
    traceparent: str | None = None  # the human message's trace (WaitingMessage)


@dataclass(slots=True)
class _ChatState:
    cursor: datetime  # slots due at or before it are taken or passed
    next_at: datetime | None = None  # due time of the first slot after the cursor
    planned: list[_Planned] = field(default_factory=list)
    # Telegram ids of human messages planned, or (id, bot) for assigned repliers.
    handled: set[int | tuple[int, int]] = field(default_factory=set)
    # Telegram ids of spontaneous reply targets → when they were targeted.
    targeted: dict[int, datetime] = field(default_factory=dict)
    # how early a slot's turn is decided (rhythm.slot_lead of the last settings seen)
    lead: timedelta = timedelta(0)
    # slots let pass for another worker's bot (due order), with that bot: REPLAY_WINDOW
    passed: deque[tuple[Slot, int]] = field(default_factory=deque)
    # bot → when its first replayed slot was decided (its later lines are the replays')
    replayed: dict[int, datetime] = field(default_factory=dict)


def reply_turn_id(chat_id: int, telegram_message_id: int, bot_id: int) -> str:
    """The turn id of ``bot_id``'s reply to a human message: the same in every process, so a
    reply request delivered twice (or planned again after a failover) is acted on once (the
    turn record's primary key)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"botsim:reply:{chat_id}:{telegram_message_id}:"
                                              f"{bot_id}"))


@functools.lru_cache(maxsize=1 << 16)
def _budget_unit(seed: int, bot_id: int) -> float:
    """Where ``bot_id``'s hourly budget falls between the limit's min and max, in [0, 1)
    (a stable hash, kept for the last 65,536 bots: every ranking asks for it)."""
    return stable_unit(seed, "budget", bot_id)


def draw_topic(chat_topics: dict[str, float], bot_topics: dict[str, float],
               rng: random.Random) -> str:
    """A topic for a fresh message: drawn by chat weight × bot weight (each + 0.1, so a
    topic only one side knows still comes up)."""
    topics = sorted(set(chat_topics) | set(bot_topics))
    weights = [(chat_topics.get(t, 0.1) + 0.1) * (bot_topics.get(t, 0.1) + 0.1) for t in topics]
    return rng.choices(topics, weights=weights)[0]


def hourly_limit(seed: int, bot_id: int, settings: SimulationSettings, now: datetime) -> float:
    """Messages per rolling hour ``bot_id`` may send at ``now`` (module docstring, "Budgets").

    The same in every process for the same ``seed`` (a stable hash, not ``random``).
    """
    lim = settings.bot_hourly_msg_limit
    base = lim.min + _budget_unit(seed, bot_id) * (lim.max - lim.min)
    local_hour = now.astimezone(ZoneInfo(settings.prime_hours.timezone)).hour
    boost = settings.prime_hours.boost if local_hour in settings.prime_hours.hours else 1.0
    return base * settings.scale_factor * boost


def replier_rng(seed: int, message_id: int) -> random.Random:
    """The random source of :func:`choose_repliers` for one human message: seeded by the
    scheduler's ``seed`` and the message's ``messages.id`` only, so every process (the
    sharded listener's dispatch, a lone worker's scheduler, a repeated dispatch) draws the
    same repliers for it."""
    return random.Random(zlib.crc32(f"{seed}:{message_id}".encode()))


def asks_group(text: str) -> bool:
    """True when ``text`` puts a question to the whole group, the only case where a human
    message may get a second answer.

    The rule: a group question phrase (:data:`GROUP_QUESTION`: "sizce", "ne
    düşünüyorsunuz", "ne dersiniz", "bilen var mı", "what do you think", "anyone"), or a
    "?" together with a plural address (:data:`GROUP_ADDRESS`: "arkadaşlar", "millet",
    "herkes", "guys", "everyone"...; or a second-person plural verb, :data:`PLURAL_YOU`:
    "alır mısınız?"). "Arkadaşlar altın alınır mı?" asks the group; "Altın alınır mı?" and
    "Arkadaşlar, günaydın" do not.
    """
    low = f"{text.replace('I', 'ı').replace('İ', 'i').lower()}\n{text.lower()}"
    if GROUP_QUESTION.search(low):
        return True
    return "?" in text and bool(GROUP_ADDRESS.search(low) or PLURAL_YOU.search(low))


def choose_repliers(
    waiting: WaitingMessage,
    bots: Sequence[BotView],
    settings: SimulationSettings,
    now: datetime,
    *,
    seed: int,
    rng: random.Random | None = None,
) -> list[BotView]:
    """The bots that answer a human message (module docstring, "Humans first").

    1. Addressed: the bot whose message it replies to, else the bots it mentions
       (``@username`` or first name): that bot alone (two mentioned: those two, in the
       order named; no other bot joins).
    2. Else one bot drawn among those with budget left (all of them when none has) with
       weight talkativeness × exp(``expertise_weight`` × expertise in the message's topic,
       :func:`~behavior_engine.topics.detect_topic`); no topic detected: talkativeness alone.
       With the default weight 4 a full expert weighs e⁴ ≈ 55 times a non-expert as talkative.
    3. A second, different bot drawn the same way among the others only when the message
       asks the group (:func:`asks_group`), with probability ``second_answer_p``.

    Args:
        rng: the random source (default :func:`replier_rng` of ``seed`` and the message:
            the same choice in every process).

    Returns:
        One or two distinct bots; empty only when ``bots`` is.
    """
    if not bots:
        return []
    if waiting.reply_to_bot_id is not None:
        replied = [b for b in bots if b.bot_id == waiting.reply_to_bot_id]
        if replied:
            return replied
    mentioned = [(pos, i) for i, b in enumerate(bots)
                 if (pos := _mention_pos(waiting.line, b)) is not None]
    if mentioned:
        return [bots[i] for _, i in sorted(mentioned)[:2]]
    if rng is None:
        rng = replier_rng(seed, waiting.message_id)
    topic = detect_topic(waiting.line.text)
    candidates = [
        b for b in bots if hourly_limit(seed, b.bot_id, settings, now) - b.sent_last_hour >= 1
    ] or list(bots)
    weights = [b.talkativeness * math.exp(settings.expertise_weight
                                          * b.expertise.get(topic or "", 0.0))
               for b in candidates]
    i = rng.choices(range(len(candidates)), weights=weights)[0]
    chosen = [candidates.pop(i)]
    weights.pop(i)
    if candidates and asks_group(waiting.line.text) and rng.random() < settings.second_answer_p:
        chosen.append(rng.choices(candidates, weights=weights)[0])
    return chosen


class Scheduler:
    """Decides turns; keeps only timing state in memory (counts come from the store).

    Args:
        seed: seed of the scheduler's random choices (and of the chats' rhythm).
        lookahead_s: a turn due within this many seconds is decided now and carries its due
            time (``Turn.not_before``); the worker's tick, seconds.
    """

    def __init__(self, *, seed: int, lookahead_s: float = 1.0) -> None:
        self._seed = seed
        self._rng = random.Random(seed)
        self._lookahead = timedelta(seconds=lookahead_s)
        self._chats: dict[int, _ChatState] = {}
        self._slots: dict[tuple[object, ...], list[Slot]] = {}
        self._rankings: dict[tuple[int, int, int], dict[int, tuple[float, float]]] = {}
        # (chat, window, slot index) → the slot's first-ranked bot (the largest key
        # log(u) / w of its ranking, kept: every tick asks for it)
        self._tops: dict[tuple[int, int, int], int] = {}
        self._latest_window = -1  # the latest window computed (older ones are pruned)
        # bot → answers to humans planned for it, over all chats (kept with st.planned)
        self._replying: Counter[int] = Counter()

    # -- budgets -------------------------------------------------------------------------
    def hourly_limit(self, bot_id: int, settings: SimulationSettings, now: datetime) -> float:
        """Messages per hour ``bot_id`` may send now (see the module docstring)."""
        return hourly_limit(self._seed, bot_id, settings, now)

    def _budget_left(self, bot: BotView, settings: SimulationSettings, now: datetime) -> float:
        return self.hourly_limit(bot.bot_id, settings, now) - bot.sent_last_hour

    # -- decisions -----------------------------------------------------------------------
    def decide(
        self,
        chat: ChatView,
        bots: Sequence[BotView],
        settings: SimulationSettings,
        now: datetime,
    ) -> list[Turn]:
        """Return the turns of ``chat`` due at ``now`` (possibly none).

        Args:
            chat: the chat now.
            bots: its member bots (enabled ones).
            settings: the operator settings.
            now: aware UTC time.
        """
        if not settings.simulation_active or not bots:
            return []
        st = self._chats.setdefault(chat.chat_id, _ChatState(cursor=now))
        by_id = {b.bot_id: b for b in bots}
        self._plan_human_replies(st, chat, bots, settings, now)
        room = settings.max_msgs_per_min - chat.sent_last_minute - chat.in_flight
        horizon = now + self._lookahead
        turns: list[Turn] = []
        speakers: set[int] = set()
        for planned in sorted(st.planned, key=lambda p: p.due):
            if room <= 0 or planned.due > horizon:
                break
            bot = by_id.get(planned.bot_id)
            if bot is None:  # let go, disabled or removed: planned again with the bots here
                self._unplan(st, planned)
                continue
            if (not _wait_fits(bot, planned.due, now)
                    or bot.busy_until is not None or bot.bot_id in speakers):
                continue  # keep it planned: the bot waits for Telegram or is busy
            if self._budget_left(bot, settings, now) < 1:
                continue
            self._take_planned(st, planned)
            turns.append(self._turn(chat, bot, planned.reply_to, planned.reason, now,
                                    turn_id=reply_turn_id(chat.chat_id, planned.waiting_id,
                                                          bot.bot_id),
                                    reply_message_id=planned.message_id,
                                    not_before=max(planned.due, now),
                                    traceparent=planned.traceparent))
            speakers.add(bot.bot_id)
            room -= 1
        st.lead = slot_lead(settings)
        horizon += st.lead  # a slot's turn is decided early: typing ends at its due time
        slot = self._next_slot(st, chat, bots, settings, now)
        while slot is not None and slot.due <= horizon:
            top = self._top(chat, slot)
            if top is not None and top in by_id:
                break
            if top is not None:  # another worker's bot speaks then: pass, whatever the room
                st.passed.append((slot, top))
            st.cursor = slot.due
            slot = self._next_slot(st, chat, bots, settings, now)
        while st.passed and st.passed[0][0].due < now - REPLAY_WINDOW:
            st.passed.popleft()
        room = min(room, chatter_cap(settings) - chat.sent_last_minute - chat.in_flight)
        if room <= 0 or turns:
            return turns
        if any(p.due > now - HUMAN_PRIORITY_WINDOW for p in st.planned):
            return turns  # a human is about to be answered: no chatter in between
        paced = None
        if settings.chatter_pacing:
            paced = paced_from((m.created_at for m in chat.recent
                                if m.bot_id is not None and m.created_at is not None
                                and m.created_at > now - timedelta(minutes=2)),
                               chatter_cap(settings))
        if st.passed and (paced is None or paced <= horizon):
            replay = self._replay(st, chat, bots, by_id, settings, now)
            if replay is not None:
                late, missed = replay
                turns.append(self._slot_turn(chat, late, st, settings, now, missed,
                                             max(paced or now, now)))
                return turns
        if slot is None or slot.due > horizon:
            return turns
        due = slot.due
        if paced is not None and paced > due:
            due = paced
            if due > horizon:
                return turns  # the slot waits for the pace (dropped once stale)
        speaker = self._choose_speaker(chat, bots, settings, now, slot)
        if speaker is None:
            return turns  # the slot waits for its bot (dropped once stale)
        st.cursor = slot.due
        st.next_at = None
        if isinstance(speaker, str):
            return turns  # its bot is at its budget: the slot is dropped
        turns.append(self._slot_turn(chat, speaker, st, settings, now, slot, max(due, now)))
        return turns

    def _slot_turn(self, chat: ChatView, speaker: BotView, st: _ChatState,
                   settings: SimulationSettings, now: datetime, slot: Slot,
                   not_before: datetime) -> Turn:
        """The spontaneous turn of ``slot`` for ``speaker``: a fresh line or, with
        ``reply_p``, a reply (:meth:`_choose_reply_target`); its id is the slot's."""
        reply_to = self._choose_reply_target(chat, speaker, st, settings, now)
        reason = "spontaneous"
        if reply_to is not None:
            reason = "mention" if _mentions(reply_to, speaker) else "reply"
        return self._turn(chat, speaker, reply_to, reason, now,
                          turn_id=slot.turn_id(self._seed, chat.chat_id),
                          not_before=not_before)

    def _replay(self, st: _ChatState, chat: ChatView, bots: Sequence[BotView],
                by_id: Mapping[int, BotView], settings: SimulationSettings,
                now: datetime) -> tuple[BotView, Slot] | None:
        """The oldest slot let pass here (``st.passed``, the last :data:`REPLAY_WINDOW`)
        whose bot is now driven here and free to speak, with that bot; None when there is
        none. Such a slot's worker died before it spoke (its bots were taken over here): a
        slot whose bot has spoken in the chat since the slot's decision is forgotten, and
        so is one whose bot is at its budget. A slot whose bot waits stays for a later tick;
        while any is due, the chat is not idle (:meth:`idle_until`).
        The turn keeps the slot's id, so a line the dead worker did send is not sent again
        (``record_intent``)."""
        for bot_id, at in list(st.replayed.items()):
            if at < now - REPLAY_WINDOW:
                del st.replayed[bot_id]
        for entry in list(st.passed):
            slot, top = entry
            if top not in by_id:
                continue
            since, until = slot.due - st.lead, st.replayed.get(top)
            if any(m.bot_id == top and m.created_at is not None and m.created_at >= since
                   and (until is None or m.created_at < until) for m in chat.recent):
                st.passed.remove(entry)  # it spoke: its worker was alive then
                continue
            st.next_at = None  # decided again next tick (idle_until) while replays are due
            speaker = self._choose_speaker(chat, bots, settings, now, slot)
            if speaker is None:
                continue
            st.passed.remove(entry)
            if isinstance(speaker, str):
                continue  # at its budget: dropped, like any of its slots
            st.replayed.setdefault(top, now)
            return speaker, slot
        return None

    def wake(self) -> None:
        """Forget every chat's idle time (:meth:`idle_until`): call when this worker has
        taken on bots, so each chat is decided at the next tick and the new bots' slots let
        pass meanwhile are replayed (:meth:`_replay`) without waiting for the chat's next
        slot."""
        for st in self._chats.values():
            st.next_at = None

    def planned(self, chat: ChatView, settings: SimulationSettings, start: datetime,
                end: datetime) -> list[Slot]:
        """The chat's slots due in [``start``, ``end``) (aware UTC): the spontaneous messages
        its rhythm plans, the same in every process (``chat.members`` gives the bots).
        An upper bound of what is sent: slots whose bot is at its budget are dropped, and
        slots that stay blocked by the cap for :data:`~behavior_engine.rhythm.SLOT_STALE`."""
        return [slot for window in range(window_of(start), window_of(end) + 1)
                for slot in self._window(chat, (), settings, window)
                if start <= slot.due < end]

    def knows(self, chat_id: int) -> bool:
        """Whether ``chat_id`` was decided here before (its rhythm's state exists)."""
        return chat_id in self._chats

    def idle_until(self, chat_id: int, now: datetime) -> datetime | None:
        """When ``chat_id`` may next have a turn due, if that is after ``now``; None when it
        may have one now (or the chat is new). A chat idle until later needs no
        :meth:`decide` before then, unless a human message waits in it (planned by
        :meth:`decide`, so the caller must not skip a chat with a waiting message)."""
        st = self._chats.get(chat_id)
        if st is None or st.next_at is None:
            return None
        first_planned = min((p.due for p in st.planned), default=None)
        until = st.next_at - st.lead
        if first_planned is not None:
            until = min(until, first_planned)
        until -= self._lookahead
        return until if until > now else None

    def forget_handled(self, chat_id: int, telegram_message_id: int,
                       bot_id: int | None = None) -> None:
        """Let a waiting human message be planned again (its reply turn did not get out);
        with ``bot_id``, also that bot's assigned reply."""
        st = self._chats.get(chat_id)
        if st:
            st.handled.discard(telegram_message_id)
            if bot_id is not None:
                st.handled.discard((telegram_message_id, bot_id))

    # -- helpers -------------------------------------------------------------------------
    def _take_planned(self, st: _ChatState, planned: _Planned) -> None:
        """Remove ``planned`` from the chat's plan with its count in ``_replying`` (which
        holds that bot's slots in every chat): the one place the two change together."""
        st.planned.remove(planned)
        self._replying[planned.bot_id] -= 1

    def _unplan(self, st: _ChatState, planned: _Planned) -> None:
        """Drop an answer planned for a bot no longer driven here (:meth:`_take_planned`);
        the human message may be planned again, with the bots driven here or, for an
        assigned bot, when that bot is (its turn id, :func:`reply_turn_id`, keeps one answer
        per bot)."""
        self._take_planned(st, planned)
        st.handled.discard(planned.waiting_id)
        st.handled.discard((planned.waiting_id, planned.bot_id))

    def _plan_human_replies(
        self,
        st: _ChatState,
        chat: ChatView,
        bots: Sequence[BotView],
        settings: SimulationSettings,
        now: datetime,
    ) -> None:
        for waiting in chat.waiting:
            key = waiting.line.telegram_message_id
            if waiting.assigned is not None:
                # Chosen elsewhere; each assigned bot is planned once, when it is here (a
                # bot whose lease this worker takes later is planned then).
                by_id = {b.bot_id: b for b in bots}
                repliers = [by_id[b] for b in waiting.assigned
                            if b in by_id and (key, b) not in st.handled]
                st.handled.update((key, b.bot_id) for b in repliers)
                if not repliers:
                    continue
            else:
                if key in st.handled:
                    continue
                repliers = choose_repliers(waiting, bots, settings, now, seed=self._seed)
                st.handled.add(key)
            for i, bot in enumerate(repliers):
                delay = HUMAN_REPLY_MEDIAN_S * math.exp(self._rng.gauss(0.0, 0.45))
                delay = min(12.0, max(1.5, delay)) + 4.0 * i
                direct = waiting.reply_to_bot_id == bot.bot_id or _mentions(
                    waiting.line, bot
                )
                self._replying[bot.bot_id] += 1
                st.planned.append(
                    _Planned(
                        due=now + timedelta(seconds=delay),
                        bot_id=bot.bot_id,
                        reply_to=waiting.line,
                        waiting_id=key,
                        reason="mention" if direct else "human",
                        message_id=waiting.message_id,
                        traceparent=waiting.traceparent,
                    )
                )

    def _choose_speaker(
        self,
        chat: ChatView,
        bots: Sequence[BotView],
        settings: SimulationSettings,
        now: datetime,
        slot: Slot,
    ) -> BotView | Literal["drop"] | None:
        """The slot's speaker (module docstring, "Who and to whom"): its first-ranked bot
        when that is one of ``bots`` and may speak; ``"drop"`` when that bot is at its budget
        (the slot is dropped: a talkative bot is not replaced by a quieter one, so the
        shares stay uneven and the same in every worker); None when it waits for
        Telegram past the slot's due time (:func:`_wait_fits`) or for another turn (the slot
        stays pending), or is not driven here."""
        own = {b.bot_id: b for b in bots}
        ranked = self._ranked(chat, bots, settings, now, slot)
        top = own.get(ranked[0]) if ranked else None
        if top is None:
            return None
        if self._budget_left(top, settings, now) < 1:
            return "drop"
        if self._replying[top.bot_id] > 0:
            # A human waits for this bot's answer (in any chat): that comes first, or a
            # bot leading another group could take slot after slot there (each decided a
            # slot lead ahead) and never be free when the answer is due.
            return None
        if top.busy_until is not None and slot.due < top.busy_until + slot_lead(settings):
            return None  # still typing its last line
        return top if _wait_fits(top, slot.due, now) else None

    def _ranked(self, chat: ChatView, bots: Sequence[BotView], settings: SimulationSettings,
                now: datetime, slot: Slot) -> list[int]:
        """The slot's ranking of the member bots (see :meth:`_rank`), best first."""
        keyed = self._rankings.get((chat.chat_id, slot.window, slot.index), {})
        own = {b.bot_id: b for b in bots}
        keys: dict[int, float] = {}
        for bot_id, (log_u, w) in keyed.items():
            if settings.budget_evening and bot_id in own:
                limit = self.hourly_limit(bot_id, settings, now)
                w *= 0.25 + max(0.0, limit - own[bot_id].sent_last_hour) / max(limit, 1.0)
            keys[bot_id] = log_u / max(w, 1e-9)  # log(u^(1/w))
        return sorted(keys, key=lambda b: keys[b], reverse=True)

    def _top(self, chat: ChatView, slot: Slot) -> int | None:
        """The slot's first-ranked bot (the same in every worker), None before its window's
        ranking is computed."""
        return self._tops.get((chat.chat_id, slot.window, slot.index))

    def _rank(self, chat: ChatView, bots: Sequence[BotView], settings: SimulationSettings,
              slots: Sequence[Slot]) -> None:
        """Rank the chat's member bots for each slot of a window, in slot order.

        Weighted random ranking (Efraimidis–Spirakis, ``key = log(u) / w``, ``u`` a stable
        hash of the slot and the bot) with ``w`` = talkativeness × daily activity at the
        slot, × :data:`LAST_SPEAKER` for the previous slot's first-ranked bot, ×
        ``quiet_boost`` for a bot first-ranked in none of the last :data:`QUIET_WINDOW`
        slots (× budget left with ``budget_evening``, applied by :meth:`_choose_speaker` to
        the bots driven here). The ranking reads no chat history, so every worker ranks a
        slot alike even while their views of the last messages differ.
        """
        members = dict(chat.members) or {b.bot_id: b.talkativeness for b in bots}
        profile = settings.bot_daily_profile
        ids = list(members)
        talk = [float(members[b]) for b in ids]
        peaks = [peak_hour(self._seed, b) for b in ids] if profile else []
        # stable_unit(seed, "speaker", chat, window, index, bot): the bot as its last part
        suffixes = [str(b).encode() for b in ids]
        boost = settings.quiet_boost  # 1.0 unless the operator evens shares out
        recent: list[int] = []
        for slot in slots:
            if profile:  # daily_activity(seed, bot, settings, slot.due), one local hour
                hour = local_hour(settings, slot.due)
                weights = [t * activity_at(p, hour) for t, p in zip(talk, peaks, strict=True)]
            else:
                weights = talk
            units = StableUnits(self._seed, "speaker", chat.chat_id, slot.window,
                                slot.index).many(suffixes)
            last = recent[-1] if recent else None
            quiet = set(recent[-QUIET_WINDOW:])
            keyed: dict[int, tuple[float, float]] = {}
            top, best = None, 0.0
            for bot_id, w, u in zip(ids, weights, units, strict=True):
                if bot_id == last:
                    w *= LAST_SPEAKER
                elif bot_id not in quiet:
                    w *= boost
                log_u = math.log(max(u, 1e-300))
                keyed[bot_id] = (log_u, w)
                k = log_u / max(w, 1e-9)  # log(u^(1/w)); the first largest wins
                if top is None or k > best:
                    top, best = bot_id, k
            key = (chat.chat_id, slot.window, slot.index)
            self._rankings[key] = keyed
            if top is not None:
                recent.append(top)
                self._tops[key] = top

    def _chat_rate(self, chat: ChatView, bots: Sequence[BotView],
                   settings: SimulationSettings, at: datetime) -> float:
        """λ of the chat at ``at``, messages per second.

        Each member *b* speaks a share ``s_b = w_b / Σ w`` of the chat's messages, ``w_b`` =
        talkativeness × daily activity (:func:`~behavior_engine.rhythm.daily_activity`).
        λ = ``budget_use`` × ``A`` × min_b(limit_b / s_b) / 3600, with ``A`` the
        talkativeness-weighted mean activity (≤ 1), so every bot's expected rate
        ``λ·s_b`` stays within ``budget_use`` of its budget: the budget is a ceiling, and
        a talkative bot is not evened out by hitting it. In a chat of equal bots this is
        ``budget_use × Σ budgets``.
        """
        members = dict(chat.members) or {b.bot_id: b.talkativeness for b in bots}
        if not members:
            return 0.0
        act = {b: daily_activity(self._seed, b, settings, at) for b in members}
        w = {b: max(t, 1e-9) * act[b] for b, t in members.items()}
        total_w = sum(w.values())
        talk = sum(max(t, 1e-9) for t in members.values())
        mean_act = sum(max(t, 1e-9) * act[b] for b, t in members.items()) / talk
        ceiling = min(self.hourly_limit(b, settings, at) * total_w / w[b] for b in members)
        return settings.budget_use * mean_act * ceiling / 3600.0

    def _window(self, chat: ChatView, bots: Sequence[BotView], settings: SimulationSettings,
                window: int) -> list[Slot]:
        """The chat's slots in ``window`` (cached per members and rhythm settings)."""
        members = tuple(sorted(chat.members.items())) or tuple(
            sorted((b.bot_id, b.talkativeness) for b in bots))
        key = (chat.chat_id, window, members, settings.budget_use, settings.burst_mean_msgs,
               settings.burst_gap_median_s, settings.lull_sigma, settings.bot_daily_profile,
               settings.scale_factor, settings.bot_hourly_msg_limit.min,
               settings.bot_hourly_msg_limit.max, tuple(settings.prime_hours.hours),
               settings.prime_hours.boost, settings.prime_hours.timezone,
               settings.quiet_boost, slot_lead(settings), chatter_cap(settings))
        slots = self._slots.get(key)
        if slots is None:
            self._prune(window)
            rate = self._chat_rate(chat, bots, settings, window_start(window))
            slots = window_slots(seed=self._seed, chat_id=chat.chat_id, window=window,
                                 rate=rate, settings=settings)
            self._rank(chat, bots, settings, slots)
            slots = self._slots[key] = self._spaced(chat.chat_id, window, slots,
                                                    slot_lead(settings), chatter_cap(settings))
        return slots

    def _spaced(self, chat_id: int, window: int, slots: list[Slot],
                lead: timedelta, cap: int) -> list[Slot]:
        """``slots`` with the same first-ranked bot twice in a row at least ``lead`` apart
        (:func:`~behavior_engine.rhythm.slot_lead`: that bot reads, writes and types its
        next message only once the last one is sent, so a closer slot would be sent late
        and drag the rest of its burst). The later slots of the window move by the same
        amount, keeping their gaps; those pushed past the window's end are dropped.

        A burst ends once it holds ``cap`` slots (the chatter cap,
        :func:`~behavior_engine.rhythm.chatter_cap`) within a minute: its further slots are
        dropped (a burst's first slot never is), since they would wait for the cap and fill
        the gaps between bursts. Only the ranking decides, so every worker spaces a window
        alike."""
        out: list[Slot] = []
        shift = timedelta(0)
        end = window_start(window + 1)
        previous: int | None = None
        ended: int | None = None  # a burst cut at the cap
        for slot in slots:
            if slot.burst == ended:
                continue
            top = self._tops.get((chat_id, window, slot.index))
            due = slot.due + shift
            if out and top is not None and top == previous and due - out[-1].due < lead:
                shift += lead - (due - out[-1].due)
                due = out[-1].due + lead
            if due >= end:
                break
            in_minute = 0
            for kept in reversed(out):
                if kept.burst != slot.burst or kept.due <= due - _MINUTE:
                    break
                in_minute += 1
            if in_minute >= cap:
                ended = slot.burst
                continue
            out.append(slot if due == slot.due else
                       Slot(due=due, window=slot.window, index=slot.index, burst=slot.burst))
            previous = top
        return out

    def _prune(self, window: int) -> None:
        """Forget the slots and rankings of windows two hours or more before the latest one
        (a long run keeps a few windows per chat, not every hour it went through)."""
        if window <= self._latest_window:
            return
        self._latest_window = window
        self._slots = {k: v for k, v in self._slots.items()
                       if isinstance(k[1], int) and k[1] >= window - 2}
        self._rankings = {k: v for k, v in self._rankings.items() if k[1] >= window - 2}
        self._tops = {k: v for k, v in self._tops.items() if k[1] >= window - 2}

    def _next_slot(self, st: _ChatState, chat: ChatView, bots: Sequence[BotView],
                   settings: SimulationSettings, now: datetime) -> Slot | None:
        """The chat's first slot after ``st.cursor`` (stale ones passed), or None when the
        next one lies beyond the current window and the next (decided again then)."""
        if st.cursor < now - SLOT_STALE:
            st.cursor = now - SLOT_STALE
        for window in range(window_of(st.cursor), window_of(now) + 2):
            slots = self._window(chat, bots, settings, window)  # in due order
            i = bisect.bisect_right(slots, st.cursor, key=_due)
            if i < len(slots):
                st.next_at = slots[i].due
                return slots[i]
        st.next_at = window_start(window_of(now) + 2)
        return None

    def _choose_reply_target(self, chat: ChatView, speaker: BotView, st: _ChatState,
                             settings: SimulationSettings, now: datetime) -> ChatLine | None:
        """A message of the last :data:`REPLY_WINDOW` for ``speaker`` to answer, or None
        (a fresh message): with probability ``reply_p``, among the messages of others
        not taken (:meth:`_taken`), weighted towards newer ones and mentions of the speaker,
        times the thread's fade 1 − depth / ``thread_max_depth``."""
        window = [m for m in list(chat.recent)[-REPLY_WINDOW:] if m.bot_id != speaker.bot_id]
        if not window or self._rng.random() >= settings.reply_p:
            return None
        taken = self._taken(chat, st, now)
        depth = _thread_depths(chat.recent)
        n = len(window)
        pool: list[ChatLine] = []
        weights: list[float] = []
        for i, m in enumerate(window):
            fade = 1.0 - depth[m.telegram_message_id] / settings.thread_max_depth
            if m.telegram_message_id in taken or fade <= 0:
                continue
            w = (0.6 + 0.4 * (i + 1) / n) * fade
            pool.append(m)
            weights.append(w * (3.0 if _mentions(m, speaker) else 1.0))
        if not pool:
            return None
        target = self._rng.choices(pool, weights=weights)[0]
        st.targeted[target.telegram_message_id] = now
        return target

    @staticmethod
    def _taken(chat: ChatView, st: _ChatState, now: datetime) -> set[int]:
        """Telegram ids of the chat's messages out of the reply-target pool: answered by
        another speaker (a reply in ``chat.recent``), a human's with an answer planned here
        (handled or planned) or anywhere (every human text is answered by the human-reply
        path, so one younger than :data:`HUMAN_WAIT_MAX` has its answer coming), and the
        targets of spontaneous turns of the last :data:`TARGET_MEMORY`."""
        recent = list(chat.recent)
        speaker_of = {m.telegram_message_id: _speaker_key(m) for m in recent}
        taken = {m.reply_to for m in recent if m.reply_to is not None
                 and speaker_of.get(m.reply_to, _speaker_key(m)) != _speaker_key(m)}
        taken |= {k if isinstance(k, int) else k[0] for k in st.handled}
        taken |= {p.waiting_id for p in st.planned}
        taken |= {m.telegram_message_id for m in recent if m.is_human and (
            m.created_at is None or m.created_at >= now - HUMAN_WAIT_MAX)}
        for tg, at in list(st.targeted.items()):
            if at < now - TARGET_MEMORY:
                del st.targeted[tg]
        taken |= set(st.targeted)
        return taken

    def _topic(self, chat: ChatView, bot: BotView, reply_to: ChatLine | None) -> str:
        if reply_to is not None:
            found = detect_topic(reply_to.text)
            if found:
                return found
        return draw_topic(chat.topics, bot.topics, self._rng)

    def _turn(
        self, chat: ChatView, bot: BotView, reply_to: ChatLine | None, reason: str,
        now: datetime, *, turn_id: str | None = None, reply_message_id: int | None = None,
        not_before: datetime | None = None, traceparent: str | None = None,
    ) -> Turn:
        return Turn(
            # unique across runs and processes; deterministic for a reply to a human
            turn_id=turn_id or str(uuid.uuid4()),
            reply_message_id=reply_message_id,
            chat_id=chat.chat_id,
            telegram_chat_id=chat.telegram_chat_id,
            bot_id=bot.bot_id,
            topic=self._topic(chat, bot, reply_to),
            reply_to=reply_to,
            reason=reason,  # type: ignore[arg-type]
            decided_at=now,
            not_before=not_before,
            traceparent=traceparent,
        )


def _due(slot: Slot) -> datetime:
    return slot.due


def _wait_fits(bot: BotView, due: datetime, now: datetime) -> bool:
    """True when ``bot``'s Telegram wait (``send_wait``, seconds; ``math.inf`` while it is
    busy with another turn) ends by ``due`` plus :data:`TELEGRAM_WAIT_SLACK_S`: a turn due
    later than the wait does not need to wait for it."""
    ahead = max(0.0, (due - now).total_seconds())
    return bot.send_wait <= ahead + TELEGRAM_WAIT_SLACK_S


def _mention_pos(line: ChatLine, bot: BotView) -> int | None:
    """Where ``line`` first mentions ``bot``, or None when it does not.

    A mention is Telegram's (an entity naming the bot's username: ``line.mentions``), the
    bot's ``@username`` in the text, or its first name as a whole word, Turkish suffixes
    after an apostrophe allowed ("Ayşe'ye"; "Alim" does not name "Ali").
    """
    low = line.text.lower()
    user = bot.username.lower()
    found = [i for i in (low.find(f"@{user}"),) if i >= 0]
    if user in line.mentions and not found:
        found.append(line.mentions.index(user))
    first = bot.name.split()[0].lower() if bot.name.split() else ""
    if first and (m := re.search(rf"(?<!\w){re.escape(first)}(?!\w)", low)) is not None:
        found.append(m.start())
    return min(found, default=None)


def _mentions(line: ChatLine, bot: BotView) -> bool:
    """True when ``line`` mentions ``bot`` (:func:`_mention_pos`)."""
    return _mention_pos(line, bot) is not None


def _speaker_key(line: ChatLine) -> str:
    """Who sent ``line``: our bot id, else the username or display name."""
    return f"bot:{line.bot_id}" if line.bot_id is not None else (
        f"user:{line.speaker_username or line.speaker}")


def _thread_depths(recent: Sequence[ChatLine]) -> dict[int, int]:
    """Telegram id → replies deep in its thread: 0 for a message replying to nothing, the
    parent's depth + 1 for a reply (a parent older than ``recent``: depth 1)."""
    parent = {m.telegram_message_id: m.reply_to for m in recent}
    depth: dict[int, int] = {}
    for m in recent:
        d, up = 0, m.reply_to
        while up is not None and d < len(parent) + 1:
            d += 1
            up = parent.get(up)
        depth[m.telegram_message_id] = d
    return depth

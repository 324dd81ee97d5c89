"""The tick's decision: which of the driven bots speak now, in which chats.

:class:`TurnPlanner` reads the chats, their histories and the simulation settings, builds
the scheduler's views (:class:`~behavior_engine.scheduler.ChatView`,
:class:`~behavior_engine.scheduler.BotView`) and asks the
:class:`~behavior_engine.scheduler.Scheduler` for the turns due, within the worker's room
for turns in flight and the chats' floors (:class:`~behavior_engine.membership.Membership`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta

from backend import metrics
from behavior_engine.clients import BotClients
from behavior_engine.context import HISTORY_SIZE, to_line
from behavior_engine.events import EventBook
from behavior_engine.membership import Membership
from behavior_engine.reads import BotProfile, CachedReads
from behavior_engine.scheduler import BotView, ChatView, Scheduler
from behavior_engine.turn import Turn

#: Chats a tick decides for the first time at most (issue 20): a worker taking on 10,000
#: bots in 1,000 chats spent its first tick on all of them (their histories, the rhythm's
#: windows), ~15 s in which their slots fell due, and then sent those at once; spread over
#: ticks, no chat is late by more than a few ticks, and none has a backlog (a chat's rhythm
#: starts when it is first decided).
NEW_CHATS_PER_TICK = 100


class _Asked:
    """Whether a person waits for an answer in one chat (``Membership.wants_reply``), asked
    at most once: a tick's checks of a chat share the answer (the shared membership scans
    its pending requests, the in-process one reads the chat's history)."""

    __slots__ = ("_chat_id", "_membership", "_wanted")

    def __init__(self, membership: Membership, chat_id: int) -> None:
        self._membership, self._chat_id = membership, chat_id
        self._wanted: bool | None = None

    async def __call__(self) -> bool:
        if self._wanted is None:
            self._wanted = await self._membership.wants_reply(self._chat_id)
        return self._wanted


class TurnPlanner:
    """Decides a tick's turns.

    Args:
        scheduler: the turn-taking policy.
        reads: the cached reads.
        membership: the human messages waiting and the chats' floors.
        clients: the bots' sends in the last hour.
        clock: aware UTC now.
        stats: counters updated in place: ``turns``, ``in_flight_full``, ``floor_taken``;
            read: ``acquired`` (the membership's count of bots taken on: when it grows, every
            chat is decided at the next tick, :meth:`Scheduler.wake`).

    Attributes:
        decided: turn id → ``time.perf_counter()`` at its decision, until the turn runs
            (:meth:`started` pops it; the latency figures start there).
    """

    def __init__(self, *, scheduler: Scheduler, reads: CachedReads, membership: Membership,
                 clients: BotClients, clock: Callable[[], datetime],
                 stats: Counter[str], events: EventBook | None = None) -> None:
        self.scheduler = scheduler
        self.events = events
        self.reads = reads
        self.membership = membership
        self.clients = clients
        self.clock = clock
        self.stats = stats
        self.decided: dict[str, float] = {}
        self._acquired = 0  # stats["acquired"] at the last wake

    def started(self, turn: Turn) -> float | None:
        """The perf-counter time ``turn`` was decided, forgotten once asked."""
        return self.decided.pop(turn.turn_id, None)

    async def decide(self, *, driven: Collection[int], busy: Mapping[int, datetime | None],
                     in_flight: Counter[int], room: int, tick: int,
                     shed_chatter: bool = False) -> list[Turn]:
        """The turns due now for the ``driven`` bots, at most ``room`` of them.

        Args:
            driven: bots held, connected and with a valid lease.
            busy: bots with a turn running → the due time of that one slot turn, or None
                (a turn without a due time, or several): such a bot takes no other turn,
                and one with a slot turn running only a slot a slot lead after it
                (``BotView.busy_until``).
            in_flight: chat id → turns of this worker running there.
            room: turns this worker may still start.
            tick: the tick's number (the chat it starts at rotates, so a full room starves
                none).
            shed_chatter: the worker is overloaded (issue 20): only chats where a person
                waits for an answer are decided, and only the answers are kept; the chatter
                put off is counted (``stats["chatter_shed"]``,
                ``botsim_chatter_shed_total``). A slot put off runs once the load falls, or
                is dropped once stale (``behavior_engine.rhythm.SLOT_STALE``).

        Raises:
            Exception: a read failed (the tick's decisions are dropped).
        """
        now = self.clock()
        sim = await self.reads.settings()
        metrics.SIMULATION_ACTIVE.set(1 if sim.simulation_active else 0)
        if not sim.simulation_active:
            return []
        await self.membership.drop_stale(now)
        if self.stats["acquired"] != self._acquired:  # bots taken on: replay their slots
            self._acquired = self.stats["acquired"]
            self.scheduler.wake()
        turns: list[Turn] = []
        chats = await self.reads.chats()
        start = tick % len(chats) if chats else 0
        new_chats = 0
        try:
            for chat in [*chats[start:], *chats[:start]]:
                if room - len(turns) <= 0:
                    self.stats["in_flight_full"] += 1
                    break
                members = [b for b in chat.bot_ids if b in driven]
                if not members:
                    continue
                asked = _Asked(self.membership, chat.id)  # wants_reply, read once a tick
                if not self.scheduler.knows(chat.id):
                    if new_chats >= NEW_CHATS_PER_TICK and not await asked():
                        continue  # decided for the first time at a later tick
                    new_chats += 1
                if shed_chatter and not await asked():
                    if self.scheduler.idle_until(chat.id, now) is None:
                        self._shed()  # chatter was due here: put off
                    continue
                if (self.scheduler.idle_until(chat.id, now) is not None
                        or self.membership.floor_held(chat.id)) and not await asked():
                    continue  # nothing due before later, or our spontaneous turn is on
                history = await self.reads.history(chat.id)
                view = ChatView(
                    chat_id=chat.id,
                    telegram_chat_id=chat.telegram_chat_id,
                    topics=(self.events.topic_weights(chat.topics, now)
                            if self.events is not None else chat.topics),
                    sent_last_minute=sum(
                        1 for i in history
                        if i.bot_id is not None and i.created_at >= now - timedelta(seconds=60)
                    ),
                    recent=[to_line(i) for i in history[-HISTORY_SIZE:]],
                    waiting=self.membership.waiting(chat.id, history, now, set(members)),
                    in_flight=in_flight[chat.id],
                    # every member's weight, driven here or not (the chat's rhythm is
                    # computed over all of them), from the cached chat: no profile read
                    members={b: chat.member_talk.get(b, 1.0) for b in chat.bot_ids},
                )
                bot_views = [self._bot_view(await self.reads.bot(b), chat.telegram_chat_id,
                                            now, busy, chat.talkativeness.get(b))
                             for b in members]
                for turn in self.scheduler.decide(view, bot_views, sim, now):
                    if shed_chatter and turn.reply_message_id is None:
                        self._shed()  # the answer goes; the chatter beside it does not
                        continue
                    # Only turns that get the chat's floor count against the room.
                    if await self.membership.take_floor(turn):
                        turns.append(turn)
                        self.decided[turn.turn_id] = time.perf_counter()
                    else:
                        self.stats["floor_taken"] += 1
        except BaseException:
            for turn in turns:  # this tick's decisions are dropped: so are their floors
                self.decided.pop(turn.turn_id, None)
                await self.membership.give_floor(turn)
            raise
        self.stats["turns"] += len(turns)
        metrics.TURNS_DECIDED.inc(len(turns))
        return turns

    def _shed(self) -> None:
        self.stats["chatter_shed"] += 1
        metrics.CHATTER_SHED.inc()

    def _bot_view(self, bot: BotProfile, tg_chat_id: int, now: datetime,
                  busy: Mapping[int, datetime | None],
                  talkativeness: float | None = None) -> BotView:
        wait = self.membership.limits.wait_time(bot.id, tg_chat_id)
        busy_until = busy.get(bot.id)
        if bot.id in busy and busy_until is None:
            wait = math.inf  # busy with a turn that has no slot: no turn until it ends
        return BotView(
            bot_id=bot.id,
            name=bot.name,
            username=bot.username,
            talkativeness=bot.persona.talkativeness if talkativeness is None else talkativeness,
            topics=bot.persona.topics,
            sent_last_hour=self.clients.sent_last_hour(bot.id, now),
            send_wait=wait,
            expertise=bot.persona.expertise,
            busy_until=busy_until,
        )

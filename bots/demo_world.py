"""The demo world: its groups, each member's talkativeness there, and its settings.

Shared by ``botsim demo`` (which seeds it) and the benchmarks that measure it
(``python -m loadtest.bench_rhythm --demo-windows N``), so the two never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEMO_CHAT_ID = -1001000000001
DEMO_CHAT_TITLE = "Piyasa Sohbeti"
DEMO_TOPICS = {"usdtry": 3.0, "bist100": 2.0, "btc": 2.0, "gold": 1.5, "rates": 1.0,
               "inflation": 1.0}


@dataclass(frozen=True)
class DemoChat:
    """One group of the demo world.

    Attributes:
        telegram_chat_id / title / topics: the group (topic id → weight).
        talkativeness: persona username → its talkativeness in this group, overriding the
            persona's (``chat_bots.talkativeness``); a persona not named keeps its own.
    """

    telegram_chat_id: int
    title: str
    topics: dict[str, float]
    talkativeness: dict[str, float] = field(default_factory=dict)


#: The demo's groups, all four personas in each. The first is where Deniz (the human
#: member) writes. Each is led by another persona: shares differ per group, as a person
#: loud in one group lurks in another, and three groups give the realism report enough text
#: to judge (distinct-n over 2,000 tokens) within a ten-minute run while each keeps long
#: lulls (issue 14). The second persona of each group talks at 2: separability is judged on
#: the bots with 10 messages or more, in practice the first two, and a second bot with a
#: dozen messages made that figure noise.
DEMO_CHATS: tuple[DemoChat, ...] = (
    DemoChat(DEMO_CHAT_ID, DEMO_CHAT_TITLE, DEMO_TOPICS,
             {"zeynep_yeni_bot": 5.0, "ayse_scalper_bot": 2.0, "ali_hoca_ekonomist_bot": 0.2,
              "mehmet_yatirimci_bot": 0.1}),
    DemoChat(-1001000000002, "Kripto & Döviz", {"btc": 3.0, "usdtry": 3.0, "gold": 1.5,
                                                "bist100": 1.0},
             {"ayse_scalper_bot": 5.0, "mehmet_yatirimci_bot": 2.0, "zeynep_yeni_bot": 0.2,
              "ali_hoca_ekonomist_bot": 0.1}),
    DemoChat(-1001000000003, "Borsa & Altın", {"bist100": 3.0, "gold": 3.0, "inflation": 1.0,
                                               "rates": 1.0},
             {"mehmet_yatirimci_bot": 5.0, "zeynep_yeni_bot": 2.0, "ali_hoca_ekonomist_bot": 0.2,
              "ayse_scalper_bot": 0.1}),
)
#: Livelier than the production defaults, so a minute shows a conversation.
DEMO_SETTINGS: dict[str, Any] = {
    # Ten-minute realism runs (docs/realism.md, "The demo"): six to eight messages a minute
    # in each group, in bursts of ~11 a third of a second apart (one bot's own lines 1.15 s
    # apart: the slot lead; a burst ends at the chatter cap) between lulls of about a
    # minute, log-normal. Chosen over 24 ten-minute windows of the scheduler
    # (loadtest/bench_rhythm.py --demo-windows) and live runs: a bot's own consecutive
    # lines set the median gap, so the slot lead (reading + typing caps + writing) is short.
    "bot_hourly_msg_limit": {"min": 600, "max": 600},
    "max_msgs_per_min": 20,  # Telegram: 20 messages per minute per group
    "scale_factor": 1.0,
    "typing_cap_s": 0.6,
    "reading_cap_s": 0.3,
    "writing_lead_s": 0.25,  # the offline writer takes milliseconds; the tick is 0.25 s
    "budget_use": 0.65,  # 0.7: A_n 0.43-0.51 live (band from 0.45); 0.6: too few tokens
    "burst_mean_msgs": 11.0,
    "burst_gap_median_s": 0.3,
    "lull_sigma": 0.7,
    "reply_p": 0.5,  # a livelier group answers more (unanswered share in its band)
    "chatter_pacing": False,  # bursts are the point; the cap and its reserve still hold
    "bot_daily_profile": False,  # ten minutes: the same shares whatever the hour
}
#: The demo worker's tick, seconds: a bot's next line is decided soon after its last one.
DEMO_TICK_S = 0.25

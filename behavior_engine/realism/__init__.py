"""What a group sees, in numbers: the metrics of ``REALISM.md`` over a stored run.

Pure functions over lists of :class:`MessageRecord` (one list per chat, in Telegram message
id order); no I/O. The package: ``records`` (the dataclasses), ``formulas`` (burstiness,
Gini, distinct-n, n-grams, the classifier), ``metrics`` (each metric, its band, the report).
:func:`realism_report` computes every metric for each chat and over all chats, each with
its band (from public human group-chat logs: IRC #ubuntu/#linux, Kummerfeld et al., ACL
2019, Elsner & Charniak 2008; five Slack channels, Chatterjee et al., MSR 2020; the table
in ``docs/realism.md``) and a verdict: True (inside), False (outside), or None ("n/a": too
few messages to say, or an informational figure), never a pass by default.

How messages are counted (``REALISM.md``, "How to count"):

- a bot message's time is when Telegram accepted it (``meta.sent_at``), a human's Telegram's
  ``date``; timing, same-speaker, addressing and "answered" shares use every message;
- text metrics, the Gini and speaker separability use the bots' messages only;
- "answered" means another speaker's message replies to it (an explicit Telegram reply); the
  last :data:`ANSWER_TAIL` messages of each chat are left out of the answered shares;
- tokens are ``[\\w']+`` words and single punctuation marks, Unicode-aware, lower-cased.

Over several chats, the shares pool their counts (within-chat relations only: a reply, a
gap, a repeat are counted inside one chat); the per-group statistics (A_n, gap p90 ÷
median, Gini, separability) are the mean of the chats where they can be computed.
"""

from behavior_engine.realism.formulas import (
    AGREEMENT_MARKERS,
    CONTRAST_MARKERS,
    DISTINCT_TOKENS,
    FOLDS,
    NEAR_DUP_JACCARD,
    NEAR_DUP_MIN_WORDS,
    burstiness_an,
    char_ngrams,
    count_markers,
    distinct_n,
    gini,
    jaccard,
    near_duplicate_flags,
    percentile,
    separability_accuracy,
    tokens,
    words,
)
from behavior_engine.realism.metrics import (
    ANSWER_TAIL,
    BANDS,
    GROUP_METRICS,
    HUMAN_GRACE_S,
    LABELS,
    METRIC_NAMES,
    MIN_GAPS,
    MIN_MESSAGES,
    MIN_PER_SPEAKER,
    MIN_REPLIES,
    addressing_metric,
    answered_metrics,
    chat_metrics,
    gini_metric,
    human_reply_metrics,
    length_metrics,
    markers_metric,
    realism_report,
    rows,
    same_speaker_metric,
    separability_metric,
    text_metrics,
    timing_metrics,
)
from behavior_engine.realism.records import Band, Chats, MessageRecord, Metric, RealismReport

__all__ = [
    "AGREEMENT_MARKERS", "ANSWER_TAIL", "BANDS", "CONTRAST_MARKERS", "DISTINCT_TOKENS", "FOLDS",
    "GROUP_METRICS", "HUMAN_GRACE_S", "LABELS", "METRIC_NAMES", "MIN_GAPS", "MIN_MESSAGES",
    "MIN_PER_SPEAKER", "MIN_REPLIES", "NEAR_DUP_JACCARD", "NEAR_DUP_MIN_WORDS", "Band", "Chats",
    "MessageRecord", "Metric", "RealismReport", "addressing_metric", "answered_metrics",
    "burstiness_an", "char_ngrams", "chat_metrics", "count_markers", "distinct_n", "gini",
    "gini_metric", "human_reply_metrics", "jaccard", "length_metrics", "markers_metric",
    "near_duplicate_flags", "percentile", "realism_report", "rows", "same_speaker_metric",
    "separability_accuracy", "separability_metric", "text_metrics", "timing_metrics", "tokens",
    "words",
]

"""The realism metrics over chats of :class:`MessageRecord` s, each judged against its band
(``REALISM.md``), and the report over several chats (:mod:`behavior_engine.realism`)."""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from behavior_engine.realism.formulas import (
    AGREEMENT_MARKERS,
    CONTRAST_MARKERS,
    DISTINCT_TOKENS,
    NEAR_DUP_MIN_WORDS,
    burstiness_an,
    count_markers,
    distinct_n,
    fold_case,
    gini,
    near_duplicate_flags,
    normalised,
    percentile,
    separability_accuracy,
    words,
)
from behavior_engine.realism.records import Band, Chats, MessageRecord, Metric, RealismReport

#: Messages at the end of each chat left out of the answered shares (``REALISM.md``).
ANSWER_TAIL = 10
#: Fewest gaps (consecutive message pairs) for the timing metrics.
MIN_GAPS = 10
#: Fewest messages for a share (or a median) to be judged.
MIN_MESSAGES = 10
#: Fewest replies for the "further back" share.
MIN_REPLIES = 5
#: Fewest messages of >= 3 words per speaker for separability (5-fold: 2 per class and fold).
MIN_PER_SPEAKER = 10
#: A human message unanswered this close to the end of the window is not judged, seconds
#: (the p95 limit of the first answer's delay, issue 14).
HUMAN_GRACE_S = 20.0
#: Separability counts only messages of at least this many words (``REALISM.md``).
SEPARABILITY_MIN_WORDS = 3
_AT_MENTION = re.compile(r"@\w{3,}")

#: Believable bands, ``REALISM.md`` ("a believable run" column).
BANDS: dict[str, Band | None] = {
    "burstiness_an": Band(0.45, 0.75),
    "gap_p90_over_median": Band(15.0, None),
    "median_words": Band(7.0, 15.0),
    "share_short": Band(0.20, 0.40, percent=True),
    "same_speaker_twice": Band(0.10, 0.45, percent=True),
    "gini_per_bot": Band(0.45, 0.80),
    "share_addressing": Band(0.10, 0.50, percent=True),
    "share_unanswered": Band(0.30, 0.60, percent=True),
    "share_answered_by_2plus": Band(None, 0.15, percent=True),
    "share_replies_further_back": Band(0.50, None, percent=True),
    "distinct_1": Band(0.28, None),
    "distinct_2": Band(0.75, None),
    "near_duplicates": Band(None, 0.03, percent=True),
    "exact_duplicates": Band(None, 0.025, percent=True),
    "separability_kappa": Band(0.31, 0.75),
    "agreement_over_contrast": Band(None, 0.15),
    "human_answer_delay_p50_s": None,
    "human_answer_delay_p95_s": Band(None, 20.0),
    "bots_per_human_message": Band(1.0, 1.0),
    "human_answered_by_2plus": Band(None, 0.15, percent=True),
}
#: Every metric, in the order tables show them.
METRIC_NAMES: tuple[str, ...] = tuple(BANDS)


def _judge(name: str, value: float | None, note: str = "", *,
           enough: bool = True) -> Metric:
    band = BANDS[name]
    if value is None or not math.isfinite(value):
        return Metric(name, None, band, None, note)
    passed = band.contains(value) if (band is not None and enough) else None
    return Metric(name, float(value), band, passed, note)


def _na(name: str, why: str) -> Metric:
    return Metric(name, None, BANDS[name], None, why)


def _bots(chat: Sequence[MessageRecord]) -> list[MessageRecord]:
    return [m for m in chat if m.is_bot]


def _mean_of(name: str, per_chat: list[Metric], what: str) -> Metric:
    """Over several chats: the mean of the chats' values where computed."""
    got = [m.value for m in per_chat if m.value is not None and m.passed is not None]
    if not got:
        reasons = {m.note for m in per_chat if m.note}
        return _na(name, "; ".join(sorted(reasons))[:200] or f"no chat has enough {what}")
    if len(per_chat) == 1:
        return per_chat[0]
    return _judge(name, float(np.mean(got)), f"mean over {len(got)} of {len(per_chat)} chats")


def timing_metrics(chats: Chats) -> list[Metric]:
    """``burstiness_an`` and ``gap_p90_over_median`` over the gaps between consecutive
    messages of each chat (every message; seconds; ``REALISM.md`` rows 1-2)."""
    an: list[Metric] = []
    ratio: list[Metric] = []
    for chat in chats:
        times = sorted(m.at.timestamp() for m in chat)  # id order; clocks may tie or skew
        gaps = np.diff(np.asarray(times, dtype=float)) if len(times) > 1 else np.array([])
        if len(gaps) < MIN_GAPS:
            why = f"{len(gaps)} gaps, at least {MIN_GAPS} needed"
            an.append(_na("burstiness_an", why))
            ratio.append(_na("gap_p90_over_median", why))
            continue
        note = f"{len(gaps)} gaps, mean {gaps.mean():.2f} s"
        an.append(_judge("burstiness_an", burstiness_an(gaps.tolist()), note))
        median = float(np.median(gaps))
        if median <= 0:
            ratio.append(_na("gap_p90_over_median", "median gap is 0 s"))
        else:
            p90 = percentile(gaps.tolist(), 90)
            ratio.append(_judge("gap_p90_over_median", p90 / median,
                                f"p90 {p90:.2f} s, median {median:.2f} s"))
    return [_mean_of("burstiness_an", an, "gaps"),
            _mean_of("gap_p90_over_median", ratio, "gaps")]


def length_metrics(chats: Chats) -> list[Metric]:
    """``median_words`` and ``share_short`` (≤ 5 words) over the bots' messages."""
    counts = [len(words(m.text)) for chat in chats for m in _bots(chat)]
    if len(counts) < MIN_MESSAGES:
        why = f"{len(counts)} bot messages, at least {MIN_MESSAGES} needed"
        return [_na("median_words", why), _na("share_short", why)]
    short = sum(1 for c in counts if c <= 5)
    return [_judge("median_words", float(np.median(counts)), f"{len(counts)} bot messages"),
            _judge("share_short", short / len(counts), f"{short} of {len(counts)}")]


def same_speaker_metric(chats: Chats) -> Metric:
    """``same_speaker_twice``: share of messages whose previous message in the chat has the
    same speaker (every message; pairs within a chat)."""
    pairs = same = 0
    for chat in chats:
        for prev, cur in itertools.pairwise(chat):
            pairs += 1
            same += prev.sender == cur.sender
    if pairs < MIN_MESSAGES:
        return _na("same_speaker_twice", f"{pairs} consecutive pairs, {MIN_MESSAGES} needed")
    return _judge("same_speaker_twice", same / pairs, f"{same} of {pairs} pairs")


def gini_metric(chats: Chats, bots_per_chat: Sequence[Sequence[str]] | None = None) -> Metric:
    """``gini_per_bot``: Gini of the bots' message counts per chat (a silent member counts 0
    when ``bots_per_chat`` lists the chat's bots as sender keys); mean over chats."""
    per_chat: list[Metric] = []
    for i, chat in enumerate(chats):
        counts = Counter(m.sender for m in _bots(chat))
        if bots_per_chat is not None:
            for key in bots_per_chat[i]:
                counts.setdefault(key, 0)
        total = sum(counts.values())
        if len(counts) < 2 or total < MIN_MESSAGES:
            per_chat.append(_na("gini_per_bot",
                                f"{len(counts)} bots, {total} messages: 2 and {MIN_MESSAGES}"
                                " needed"))
            continue
        k = len(counts)
        per_chat.append(_judge("gini_per_bot", gini(list(counts.values())),
                               f"{k} bots (max {(k - 1) / k:.2f}): "
                               + ", ".join(str(n) for _, n in counts.most_common())))
    return _mean_of("gini_per_bot", per_chat, "bot messages")


def _mention_pattern(chat: Sequence[MessageRecord]) -> dict[str, re.Pattern[str]]:
    """Per speaker: a pattern matching another speaker's first name or ``@username``."""
    names: dict[str, set[str]] = defaultdict(set)
    for m in chat:
        first = m.name.split()[0] if m.name.split() else ""
        if len(first) >= 3:
            names[m.sender].add(fold_case(first))
        if m.username:
            names[m.sender].add("@" + fold_case(m.username))
    out: dict[str, re.Pattern[str]] = {}
    for sender in names:
        others = sorted({n for s, ns in names.items() if s != sender for n in ns})
        body = "|".join(re.escape(n) for n in others) or r"(?!x)x"
        out[sender] = re.compile(r"(?<![\w@])(?:" + body + r")(?!\w)")
    return out


def addressing_metric(chats: Chats) -> Metric:
    """``share_addressing``: messages that reply to another message or mention someone
    (an ``@name`` or another speaker's first name as a whole word), over every message."""
    n = hits = 0
    for chat in chats:
        patterns = _mention_pattern(chat)
        for m in chat:
            n += 1
            low = fold_case(m.text)
            pat = patterns.get(m.sender)
            hits += bool(m.reply_to is not None or _AT_MENTION.search(m.text)
                         or (pat is not None and pat.search(low)))
    if n < MIN_MESSAGES:
        return _na("share_addressing", f"{n} messages, {MIN_MESSAGES} needed")
    return _judge("share_addressing", hits / n, f"{hits} of {n}")


def answered_metrics(chats: Chats) -> list[Metric]:
    """``share_unanswered``, ``share_answered_by_2plus`` (by different other speakers,
    explicit replies; the last :data:`ANSWER_TAIL` messages of each chat left out) and
    ``share_replies_further_back`` (replies whose target is not the message just before)."""
    counted = unanswered = multi = 0
    replies = far = 0
    for chat in chats:
        answerers: dict[int, set[str]] = defaultdict(set)
        sender_of = {m.message_id: m.sender for m in chat}
        prev_id: int | None = None
        for m in chat:
            if m.reply_to is not None:
                if sender_of.get(m.reply_to) not in (None, m.sender):
                    answerers[m.reply_to].add(m.sender)
                replies += 1
                far += m.reply_to != prev_id
            prev_id = m.message_id
        for m in chat[: max(len(chat) - ANSWER_TAIL, 0)]:
            counted += 1
            k = len(answerers.get(m.message_id, ()))
            unanswered += k == 0
            multi += k >= 2
    out: list[Metric] = []
    if counted < MIN_MESSAGES:
        why = f"{counted} messages before the last {ANSWER_TAIL}, {MIN_MESSAGES} needed"
        out += [_na("share_unanswered", why), _na("share_answered_by_2plus", why)]
    else:
        out += [_judge("share_unanswered", unanswered / counted, f"{unanswered} of {counted}"),
                _judge("share_answered_by_2plus", multi / counted, f"{multi} of {counted}")]
    if replies < MIN_REPLIES:
        out.append(_na("share_replies_further_back", f"{replies} replies, {MIN_REPLIES} needed"))
    else:
        out.append(_judge("share_replies_further_back", far / replies, f"{far} of {replies}"))
    return out


def text_metrics(chats: Chats) -> list[Metric]:
    """``distinct_1``, ``distinct_2`` (first :data:`DISTINCT_TOKENS` tokens of bot text, in
    chat order), ``near_duplicates`` and ``exact_duplicates`` (against earlier bot messages
    of the same chat)."""
    texts = [m.text for chat in chats for m in _bots(chat)]
    d1, read = distinct_n(texts, 1)
    d2, _ = distinct_n(texts, 2)
    out: list[Metric] = []
    if read == 0:
        out += [_na("distinct_1", "no bot text"), _na("distinct_2", "no bot text")]
    else:
        enough = read >= DISTINCT_TOKENS
        note = f"{read} tokens" + ("" if enough else
                                   f": n/a, the band is for {DISTINCT_TOKENS:,} (short texts"
                                   " score higher)")
        out += [_judge("distinct_1", d1, note, enough=enough),
                _judge("distinct_2", d2, note, enough=enough)]
    eligible = near = exact = total = 0
    for chat in chats:
        bot_texts = [m.text for m in _bots(chat)]
        flags = near_duplicate_flags(bot_texts)
        eligible += sum(f is not None for f in flags)
        near += sum(f is True for f in flags)
        seen: set[str] = set()
        for t in bot_texts:
            key = normalised(t)
            total += 1
            exact += key in seen
            seen.add(key)
    if eligible < MIN_MESSAGES:
        out.append(_na("near_duplicates", f"{eligible} bot messages of ≥ {NEAR_DUP_MIN_WORDS}"
                                          f" words, {MIN_MESSAGES} needed"))
    else:
        out.append(_judge("near_duplicates", near / eligible, f"{near} of {eligible}"))
    if total < MIN_MESSAGES:
        out.append(_na("exact_duplicates", f"{total} bot messages, {MIN_MESSAGES} needed"))
    else:
        out.append(_judge("exact_duplicates", exact / total, f"{exact} of {total}"))
    return out


def separability_metric(chats: Chats, *, seed: int = 0) -> Metric:
    """``separability_kappa``: chance-corrected accuracy ``κ = (acc − 1/K)/(1 − 1/K)`` of
    :func:`separability_accuracy` per chat (bots' messages of ≥ 3 words; speakers with fewer
    than :data:`MIN_PER_SPEAKER` left out; the same number per speaker, the first ones);
    mean over chats. The human band 0.45–0.80 for 5 speakers is κ 0.31–0.75."""
    per_chat: list[Metric] = []
    for chat in chats:
        by: dict[str, list[str]] = defaultdict(list)
        for m in _bots(chat):
            if len(words(m.text)) >= SEPARABILITY_MIN_WORDS:
                by[m.sender].append(m.text)
        kept = {s: t for s, t in by.items() if len(t) >= MIN_PER_SPEAKER}
        if len(kept) < 2:
            per_chat.append(_na("separability_kappa",
                                f"{len(kept)} bots with ≥ {MIN_PER_SPEAKER} messages of ≥ "
                                f"{SEPARABILITY_MIN_WORDS} words, 2 needed"))
            continue
        per = min(len(t) for t in kept.values())
        texts = [t for s in sorted(kept) for t in kept[s][:per]]
        labels = [s for s in sorted(kept) for _ in range(per)]
        k = len(kept)
        acc = separability_accuracy(texts, labels, seed=seed)
        kappa = (acc - 1 / k) / (1 - 1 / k)
        per_chat.append(_judge("separability_kappa", kappa,
                               f"accuracy {acc:.2f} for {k} bots × {per} messages "
                               f"(chance {1 / k:.2f})"))
    return _mean_of("separability_kappa", per_chat, "bot messages")


def markers_metric(chats: Chats) -> Metric:
    """``agreement_over_contrast``: :data:`AGREEMENT_MARKERS` ÷ :data:`CONTRAST_MARKERS`
    occurrences in the bots' messages (all agreement and no contrast fails, value None)."""
    texts = [m.text for chat in chats for m in _bots(chat)]
    agree = count_markers(texts, AGREEMENT_MARKERS)
    contrast = count_markers(texts, CONTRAST_MARKERS)
    note = f"{agree} agreement, {contrast} contrast markers"
    if contrast == 0:
        if agree == 0:
            return _na("agreement_over_contrast", note)
        return Metric("agreement_over_contrast", None, BANDS["agreement_over_contrast"],
                      False, note + " (only agreement)")
    return _judge("agreement_over_contrast", agree / contrast, note)


def human_reply_metrics(chats: Chats) -> list[Metric]:
    """Per human message: the delay to the first bot message replying to it (seconds, p50
    and p95), and how many different bots reply to it (all must be exactly 1;
    ``human_answered_by_2plus`` is the share with 2 or more).

    A human message nobody answered counts with its wait up to the chat's last message (a
    lower bound of its delay) and 0 bots; one posted less than :data:`HUMAN_GRACE_S` before
    that last message is left out (it may still be answered in time).
    """
    delays: list[float] = []
    per_msg: list[int] = []
    unanswered = recent = 0
    for chat in chats:
        if not chat:
            continue
        end = max(m.at.timestamp() for m in chat)
        by_target: dict[int, list[MessageRecord]] = defaultdict(list)
        for m in chat:
            if m.is_bot and m.reply_to is not None:
                by_target[m.reply_to].append(m)
        for m in chat:
            if m.is_bot:
                continue
            answers = by_target.get(m.message_id, [])
            posted = m.at.timestamp()
            if answers:
                delays.append(min(a.at.timestamp() for a in answers) - posted)
            elif end - posted >= HUMAN_GRACE_S:
                delays.append(end - posted)
                unanswered += 1
            else:
                recent += 1
                continue
            per_msg.append(len({a.sender for a in answers}))
    if not per_msg:
        why = "no human message" + (
            f" ({recent} posted in the last {HUMAN_GRACE_S:g} s, unanswered)" if recent else "")
        return [_na("human_answer_delay_p50_s", why), _na("human_answer_delay_p95_s", why),
                _na("bots_per_human_message", why), _na("human_answered_by_2plus", why)]
    hist = Counter(per_msg)
    dist = ", ".join(f"{hist[k]} answered by {k} bot{'s' if k != 1 else ''}"
                     for k in sorted(hist))
    left_out = f"; {recent} too recent to judge, left out" if recent else ""
    note = f"{len(per_msg) - unanswered} answered of {len(per_msg)}" + (
        f" ({unanswered} unanswered count their wait to the end, a lower bound)"
        if unanswered else "") + left_out
    out = [_judge("human_answer_delay_p50_s", percentile(delays, 50), note),
           _judge("human_answer_delay_p95_s", percentile(delays, 95), note)]
    exactly_one = all(k == 1 for k in per_msg)
    out.append(Metric("bots_per_human_message", float(np.mean(per_msg)),
                      BANDS["bots_per_human_message"], exactly_one,
                      f"{len(per_msg)} human messages: {dist}{left_out}"))
    multi = sum(1 for k in per_msg if k >= 2)
    out.append(_judge("human_answered_by_2plus", multi / len(per_msg),
                      f"{multi} of {len(per_msg)}"))
    return out


#: The per-group statistics: over several chats, the mean of the chats' own values.
GROUP_METRICS = frozenset(
    {"burstiness_an", "gap_p90_over_median", "gini_per_bot", "separability_kappa"})


def chat_metrics(chats: Chats, *, bots_per_chat: Sequence[Sequence[str]] | None = None,
                 seed: int = 0) -> list[Metric]:
    """Every metric over ``chats`` (each a list in Telegram message id order), in
    :data:`METRIC_NAMES` order.

    Args:
        chats: the chats' messages; relations (gaps, replies, repeats) stay within a chat.
        bots_per_chat: per chat, the sender keys of its bots, so a silent bot counts 0 in
            the Gini (default: the bots that spoke).
        seed: the separability cross-validation's shuffle.
    """
    got: list[Metric] = [
        *timing_metrics(chats), *_pooled_metrics(chats),
        gini_metric(chats, bots_per_chat), separability_metric(chats, seed=seed),
    ]
    by_name = {m.name: m for m in got}
    return [by_name[n] for n in METRIC_NAMES]


def _pooled_metrics(chats: Chats) -> list[Metric]:
    return [*length_metrics(chats), same_speaker_metric(chats), addressing_metric(chats),
            *answered_metrics(chats), *text_metrics(chats), markers_metric(chats),
            *human_reply_metrics(chats)]


def realism_report(chats: Mapping[str, Sequence[MessageRecord]], *,
                   bots_per_chat: Mapping[str, Sequence[str]] | None = None,
                   seed: int = 0) -> RealismReport:
    """The report of a run: every metric per chat and over all chats.

    Over several chats the shares pool their counts and the :data:`GROUP_METRICS` are the
    mean of the chats' values (each computed once).

    Args:
        chats: chat label (e.g. its Telegram id) → its messages (sorted here by Telegram
            message id).
        bots_per_chat: chat label → sender keys of its bots (silent ones count 0 in the Gini).
        seed: the separability cross-validation's shuffle.

    Raises:
        ValueError: ``chats`` is empty.
    """
    if not chats:
        raise ValueError("realism_report needs at least one chat")
    labels = list(chats)
    seqs = [sorted(chats[k], key=lambda m: m.message_id) for k in labels]
    per_chat = {
        k: chat_metrics([seqs[i]], seed=seed, bots_per_chat=None if bots_per_chat is None
                        else [bots_per_chat.get(k, ())])
        for i, k in enumerate(labels)}
    if len(labels) == 1:
        overall = per_chat[labels[0]]
    else:
        by_name = {m.name: m for m in _pooled_metrics(seqs)}
        for i, name in enumerate(METRIC_NAMES):
            if name in GROUP_METRICS:
                by_name[name] = _mean_of(name, [per_chat[k][i] for k in labels], "messages")
        overall = [by_name[n] for n in METRIC_NAMES]
    every = [m for s in seqs for m in s]
    counts = {"chats": len(labels), "messages": len(every),
              "bot_messages": sum(m.is_bot for m in every),
              "human_messages": sum(not m.is_bot for m in every),
              "speakers": len({m.sender for m in every})}
    return RealismReport(metrics=overall, chats=per_chat, counts=counts)


#: How each metric is labelled in tables.
LABELS: dict[str, str] = {
    "burstiness_an": "burstiness A_n of gaps",
    "gap_p90_over_median": "gap p90 ÷ median",
    "median_words": "median words per bot message",
    "share_short": "bot messages ≤ 5 words",
    "same_speaker_twice": "same speaker twice in a row",
    "gini_per_bot": "Gini of messages per bot",
    "share_addressing": "replying to or mentioning someone",
    "share_unanswered": "messages nobody answers",
    "share_answered_by_2plus": "answered by ≥ 2 others",
    "share_replies_further_back": "replies further back than the last",
    "distinct_1": "distinct-1 (2,000 tokens)",
    "distinct_2": "distinct-2 (2,000 tokens)",
    "near_duplicates": "near-duplicates (5-gram J ≥ 0.5)",
    "exact_duplicates": "exact duplicates",
    "separability_kappa": "speaker separability κ",
    "agreement_over_contrast": "agreement ÷ contrast markers",
    "human_answer_delay_p50_s": "human → first answer p50, s",
    "human_answer_delay_p95_s": "human → first answer p95, s",
    "bots_per_human_message": "bots answering a human message",
    "human_answered_by_2plus": "human messages answered by ≥ 2",
}


def rows(metrics: Sequence[Metric]) -> list[tuple[str, str, str, str, str]]:
    """Table rows: (label, value, band, verdict, note) per metric."""
    return [(LABELS.get(m.name, m.name), m.shown_value(), str(m.band) if m.band else "—",
             m.verdict, m.note) for m in metrics]

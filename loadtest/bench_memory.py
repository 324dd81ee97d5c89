"""Benchmark: the long-term memory's cost per turn (``behavior_engine.memory``,
``docs/memory.md``).

A stream is filled to its cap (200) with generated Turkish chat lines (templates of the
market topics with random prices and names, seeded), then timed, each over ``--rounds``
repetitions on one core:

* ``add``: one item added to a full stream (its n-gram vector, the cap's eviction);
* ``recall``: ``recall(query, now, k=4)`` on the full stream, the query another generated
  line; ``recall after add``: an add then a recall (the stacked vectors are rebuilt: what a
  worker does when a message came in since the bot's last turn);
* ``text_vector``: one text's hashed n-grams, and for comparison scikit-learn's
  ``HashingVectorizer(analyzer="char_wb", ngram_range=(3, 4)).transform([text])``;
* memory: ``tracemalloc``'s bytes allocated by a full stream, per item.

Usage: ``python loadtest/bench_memory.py [--rounds 2000] [--json]``
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from behavior_engine.memory import DEFAULT_CAP, MemoryItem, MemoryStream, text_vector

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
SYMBOLS = ["dolar", "euro", "altın", "gümüş", "BIST100", "bitcoin", "ethereum", "faiz",
           "enflasyon", "petrol"]
NAMES = ["Deniz", "Ali", "Ayşe", "Mehmet", "Zeynep", "Can"]
TEMPLATES = [
    "{s} bugün {p} seviyesinde, bence {d}",
    "@{n} {s} için ne düşünüyorsun, {p} olur mu?",
    "{s} tarafında {p} kırılırsa {d}, dikkatli olmak lazım",
    "Ben {s} pozisyonumu {p} civarında biraz azalttım",
    "{n} haklı, {s} {p} üstünde kalırsa {d}",
    "Sabah {s} haberlerini okudum, {p} bekleyen çok",
    "{s} ile {s2} arasında korelasyon arttı, {p} önemli",
    "Merkez bankası kararından sonra {s} {d}",
]
MOVES = ["yükselir", "düşer", "yatay kalır", "sert hareket eder", "toparlanır"]


def line(rng: random.Random) -> str:
    """One generated chat line."""
    return rng.choice(TEMPLATES).format(
        s=rng.choice(SYMBOLS), s2=rng.choice(SYMBOLS), n=rng.choice(NAMES),
        p=f"{rng.uniform(1, 3000):.1f}", d=rng.choice(MOVES))


def full_stream(rng: random.Random, n: int = DEFAULT_CAP) -> MemoryStream:
    """A stream of ``n`` items over the last 3 days, kinds and importances mixed."""
    s = MemoryStream()
    for k in range(n):
        kind = rng.choice(["said", "said", "heard", "question", "event"])
        s.add(MemoryItem(kind=kind, text=line(rng), importance=rng.uniform(0.3, 1.0),  # type: ignore[arg-type]
                         at=NOW - timedelta(minutes=rng.uniform(0, 3 * 24 * 60)),
                         chat_id=1, ref=k), now=NOW)
    return s


def timed(fn: Callable[[int], object], rounds: int) -> dict[str, float]:
    """p50 / p99 / mean of ``fn(i)`` in microseconds."""
    times = []
    for i in range(rounds):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return {"p50_us": round(times[len(times) // 2], 1),
            "p99_us": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
            "mean_us": round(statistics.fmean(times), 1)}


def run(rounds: int) -> dict[str, Any]:
    """Every measurement of the module docstring."""
    rng = random.Random(5)
    queries = [line(rng) for _ in range(rounds)]
    stream = full_stream(rng)
    extra = [MemoryItem(kind="heard", text=line(rng), importance=0.6,
                        at=NOW + timedelta(seconds=i), chat_id=1, ref=10_000 + i)
             for i in range(2 * rounds)]
    out: dict[str, Any] = {"items": len(stream), "rounds": rounds}
    out["add"] = timed(lambda i: stream.add(extra[i], now=extra[i].at), rounds)
    later = NOW + timedelta(hours=1)
    out["recall"] = timed(lambda i: stream.recall(queries[i], later, k=4), rounds)

    def add_then_recall(i: int) -> None:
        stream.add(extra[rounds + i], now=extra[rounds + i].at)
        stream.recall(queries[i], later, k=4)

    out["recall_after_add"] = timed(add_then_recall, rounds)
    out["text_vector"] = timed(lambda i: text_vector(queries[i]), rounds)
    try:
        from sklearn.feature_extraction.text import HashingVectorizer
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        out["sklearn_hashing"] = None
    else:
        hv = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 4), binary=True,
                               alternate_sign=False)
        out["sklearn_hashing"] = timed(lambda i: hv.transform([queries[i]]), rounds)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = full_stream(random.Random(6))
    kept.recall("dolar", NOW)  # the stacked vectors too
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    size = sum(s.size_diff for s in after.compare_to(before, "filename"))
    out["stream_bytes"] = size
    out["bytes_per_item"] = round(size / len(kept))
    return out


def main() -> None:
    """Run and print (a table, or JSON with ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = run(args.rounds)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"stream of {out['items']} items, {out['rounds']} rounds")
    for key in ("add", "recall", "recall_after_add", "text_vector", "sklearn_hashing"):
        if out.get(key):
            v = out[key]
            print(f"{key:18} p50 {v['p50_us']:8.1f} µs  p99 {v['p99_us']:8.1f} µs  "
                  f"mean {v['mean_us']:8.1f} µs")
    print(f"memory: {out['stream_bytes'] / 1024:.0f} kB a full stream, "
          f"{out['bytes_per_item']} B an item")


if __name__ == "__main__":
    main()

"""The worker reads its bots' profiles again in slices (issue 20): every bot once per
PROFILES_SLICES runs, none twice, so their cache entries never expire one query each and no
run holds the event loop for all of them."""

from __future__ import annotations

from typing import Any

import worker as worker_module
from backend import keys
from worker import PROFILES_SLICES, Worker


async def test_each_run_refreshes_a_slice_and_the_slices_cover_every_bot() -> None:
    asked: list[list[int]] = []

    class Reads:
        async def bots(self, ids: list[int], *, refresh: bool = False) -> dict[int, Any]:
            assert refresh
            asked.append(list(ids))
            return dict.fromkeys(ids)

    w = Worker.__new__(Worker)
    w._stopping, w._profile_slice, w.reads = False, 0, Reads()  # type: ignore[assignment]
    w.driven = lambda: set(range(100, 141))  # type: ignore[method-assign]
    counts = [await w.refresh_profiles() for _ in range(PROFILES_SLICES)]
    assert sorted(b for part in asked for b in part) == list(range(100, 141))
    assert max(counts) - min(counts) <= 1 and sum(counts) == 41
    await w.refresh_profiles()  # the next round starts over, slice by slice
    assert asked[-1] == asked[0]
    assert worker_module.PROFILES_EVERY_S * PROFILES_SLICES < keys.L2_TTL_S  # L2 lifetime

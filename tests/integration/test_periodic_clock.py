"""The worker's periodic jobs go on when its wall clock steps back (issue 19, clock_jump).

A child process runs :class:`behavior_engine.periodic.Periodic` under libfaketime; its wall
clock is stepped back an hour while it runs. The job (every 0.1 s) keeps its pace. Under
APScheduler's interval trigger, which the worker used before, the next run would have been
an hour away.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

from loadtest.chaos_infra import FakeClock
from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import asyncio, sys, time
from behavior_engine.periodic import Periodic

async def main():
    periodic = Periodic()
    async def job():
        print(f"{time.monotonic():.3f} {time.time():.3f}", flush=True)
    periodic.add(job, 0.1, first_in_s=0.0)
    periodic.start()
    await asyncio.sleep(float(sys.argv[1]))
    periodic.stop()
    await periodic.join(1.0)

asyncio.run(main())
"""


def test_a_clock_stepped_back_an_hour_does_not_stop_the_jobs(tmp_path: Path) -> None:
    if not FakeClock.available():
        service_missing("libfaketime", "apt-get install faketime (.ci/run installs it)")
    with FakeClock(tmp_path / "clock") as clock:
        env = clock.env({**os.environ, "PYTHONPATH": str(ROOT)})
        child = subprocess.Popen([sys.executable, "-c", CHILD, "2.0"], env=env, cwd=ROOT,
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(0.8)
        clock.jump(-3600)
        out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    runs = [tuple(map(float, line.split())) for line in out.splitlines()]
    wall = [w for _m, w in runs]
    stepped = [i for i in range(1, len(wall)) if wall[i] < wall[i - 1] - 3000]
    assert len(stepped) == 1, wall  # the child saw the step once
    after = runs[stepped[0]:]
    assert len(after) >= 6, runs  # ~1.2 s left at 0.1 s: the job went on at its pace
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(runs)]
    assert max(gaps) < 0.5, gaps

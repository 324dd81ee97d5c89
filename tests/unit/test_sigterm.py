"""SIGTERM stops a process the way Ctrl-C does: its cleanup runs on the loop.

Containers stop processes with SIGTERM. It once raised KeyboardInterrupt wherever the worker
was; the loop's shutdown then cancelled the turns in flight mid-send, leaving messages that
Telegram accepted unrecorded. Each case runs in a child process, so no signal reaches pytest.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, signal, sys
from botsim.cli import run_loop, until_terminated

# As in a terminal: a process started in the background by a shell without job control
# inherits SIGINT ignored, and Ctrl-C would then never reach it.
signal.signal(signal.SIGINT, signal.default_int_handler)

async def body():
    try:
        print("ready", flush=True)
        await asyncio.sleep(3600)
    finally:
        await asyncio.sleep(0.2)  # a turn in flight: it still gets the loop
        print("finished in-flight work", flush=True)

print("result", run_loop(until_terminated(body())), flush=True)
"""


def _run_child(sig: signal.Signals) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "ready\n" + out, err)


def test_sigterm_lets_the_body_finish_and_exits_cleanly() -> None:
    done = _run_child(signal.SIGTERM)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ready", "finished in-flight work", "result None"]
    assert "Traceback" not in done.stderr


def test_ctrl_c_still_interrupts_after_the_cleanup() -> None:
    done = _run_child(signal.SIGINT)
    assert done.stdout.splitlines() == ["ready", "finished in-flight work"]
    assert "KeyboardInterrupt" in done.stderr and done.returncode != 0

"""One preemption can reach a training process twice: a scheduler that signals every process of the job
and torchrun, which passes its own SIGTERM on a moment later. The repeat must not end the process while it
saves or tears down (under torchrun one rank died of it, -15, and torchrun reported the run FAILED); a
SIGTERM after the window still acts as usual, and a second Ctrl-C acts at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from finetune.checkpoint import GracefulExit

SRC = Path(__file__).resolve().parents[1] / "src"

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {src!r})
    from finetune.checkpoint import GracefulExit

    def term():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)

    with GracefulExit(announce=False, same_stop_s=1.5) as stop:
        term()  # the scheduler's
        term()  # torchrun's, a moment later
        print("alive after the repeat", stop.stop_requested, flush=True)
    term()  # a repeat while the process tears down
    print("alive after leaving", flush=True)
    time.sleep(1.5)
    term()  # a second request: ends the process as usual
    print("not reached", flush=True)
""")


def test_a_repeated_sigterm_is_one_stop_and_a_later_one_acts_as_usual() -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(src=str(SRC))], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.splitlines() == ["alive after the repeat True", "alive after leaving"], proc.stderr
    assert proc.returncode == -signal.SIGTERM


def test_after_a_ctrl_c_sigterm_acts_as_usual() -> None:
    before = signal.getsignal(signal.SIGTERM)
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with GracefulExit(announce=False) as stop:
            stop._handle(signal.SIGINT, None)
            assert stop.stop_requested
            assert signal.getsignal(signal.SIGTERM) == before
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, saved)

"""A SIGTERM within SAME_STOP_S of the one that stopped a run is that stop delivered again (torchrun passing
on the scheduler's); it reached the `finetune` process while the interpreter tore down after the command was
done, when Python has removed its handlers (after the exit functions: garbage collection, the modules, a
second or more with torch loaded), and the run that had stopped and saved ended as killed by it (-15)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {src!r})
    from finetune import cli

    class Late:  # torn down with this module, after Python removed its signal handlers
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the stop's repeat, as the process tears down
            time.sleep(0.2)
            print("alive after the repeat", flush=True)

    late = Late()
    cli.main = lambda argv=None: 0  # the command: done (a run stopped by a SIGTERM, saved)
    cli.entry()
""")


def test_a_sigterm_while_the_interpreter_tears_down_does_not_kill_a_finished_command() -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(src=str(SRC))], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout == "alive after the repeat\n"

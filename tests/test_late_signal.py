"""A SIGTERM (or Ctrl-C) that arrives once the command is done, while the interpreter shuts down (atexit joins
of worker processes, threads), leaves the command's exit status as it was: a run that finished and saved was
reported as killed by the signal (-15 / -2) to the scheduler or script that sent it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

_PROGRAM = """
import atexit, sys, time
from pathlib import Path
flag, out = sys.argv[1], sys.argv[2]
atexit.register(lambda: (Path(flag).touch(), time.sleep(60)))  # a slow shutdown (worker joins) made visible
sys.argv = ["finetune", "make-shapes", out, "--per-class", "1", "--size", "16"]
import runpy
runpy.run_module("finetune", run_name="__main__")  # as `python -m finetune` (torchrun's way) runs it
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_shutdown_keeps_the_exit_status(tmp_path: Path, signum: int) -> None:
    flag = tmp_path / "shutting-down"
    proc = subprocess.Popen([sys.executable, "-c", _PROGRAM, str(flag), str(tmp_path / "shapes")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), proc.communicate()
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=30)  # (without the fix SIGINT waited out the 60 s sleep: a traceback)
    assert proc.returncode == 0, err
    assert "shapes dataset ready" in out and "Traceback" not in err

"""Process pools forked inside ``train()`` end with their ``with`` block.

``train()`` installs a SIGTERM handler that lets the step finish (and, in a forked child,
ignores the first signal). A pool worker forked after that inherited it, outlived the SIGTERM
of ``Pool.terminate`` and the pool's join waited for it: ``finetune train --data shapes``
hung after generating the dataset when a worker was still busy at the block's end (seen in
the suite, under load). Each check runs in a child process with a time limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

PRELUDE = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: None)   # as train()'s graceful stop: a forked worker keeps it
"""


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-c", PRELUDE + script, *args], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a process pool's workers outlived its end: the join waited for them")


def test_busy_workers_end_with_the_block() -> None:
    """Workers still drawing (sleeping 120 s here) when the block ends are stopped at once."""
    res = run("""
from finetune.data.pools import process_pool
start = time.monotonic()
with process_pool(2) as pool:
    pool.map_async(time.sleep, [120, 120], chunksize=1)
    time.sleep(1)
print(round(time.monotonic() - start))
""")
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) < 30


def test_shapes_generation_and_file_checks_use_such_pools(tmp_path: Path) -> None:
    res = run("""
from finetune.data.shapes import make_shapes
from finetune.data.loader import scan_bad_files
from finetune.data.samples import scan_folder
root = make_shapes(sys.argv[1], per_class=50, val_per_class=1, size=16)   # 400 images: a pool of processes
print(len(scan_bad_files(scan_folder(root / "train"), workers=2)))
""", str(tmp_path / "shapes"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"

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


def test_a_torchrun_process_spawns_its_pool_workers(tmp_path: Path) -> None:
    """Two real torchrun processes (gloo): their pools do not fork them (a fork of a process whose
    collective threads call into Python can hang the child: CPython gh-112275), and still end
    with their block; one process alone keeps forking."""
    script = tmp_path / "pools.py"
    script.write_text(PRELUDE + """
import os
import torch.distributed as dist
from finetune.data.pools import process_pool

def say(*parts):  # one write(2) per line: the two processes share the pipe (print's pieces interleaved)
    os.write(1, (" ".join(map(str, parts)) + "\\n").encode())

def main():
    alone = process_pool(1)
    say("alone", alone._ctx.get_start_method()); alone.terminate()
    dist.init_process_group("gloo")
    start = time.monotonic()
    with process_pool(2) as pool:
        say(dist.get_rank(), pool._ctx.get_start_method(), pool.map(abs, [-1, -2, 3]))
        pool.map_async(time.sleep, [120, 120], chunksize=1)
        time.sleep(1)
    say(dist.get_rank(), "ended", time.monotonic() - start < 30)
    dist.destroy_process_group()

if __name__ == "__main__":  # (a spawned worker imports this script)
    main()
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              str(script)], capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("a torchrun process's pool hung")
    assert res.returncode == 0, res.stderr
    lines = sorted(res.stdout.splitlines())
    assert lines == ["0 ended True", "0 spawn [1, 2, 3]", "1 ended True", "1 spawn [1, 2, 3]",
                     "alone fork", "alone fork"], res.stdout


UNGUARDED = """
import sys, tempfile
from finetune import TrainConfig, build_loader, make_shapes
from finetune.errors import FinetuneError
from finetune.train import train
try:   # in the script's own process: data that is not there
    train(TrainConfig(data=sys.argv[1], model="squeezenet1_1", device="cpu", workers="0"), quiet=True)
except FinetuneError as e:  # (and in the spawned worker, which imports this script: what to do)
    print(f"train: {type(e).__name__}: {e}")
loader = build_loader(make_shapes(tempfile.mkdtemp(), per_class=1, val_per_class=1, size=16), train=False,
                      img_size=16, batch_size=4, workers=1, start_method="spawn")
try:
    next(iter(loader))
except FinetuneError as e:
    print("loader:", e)
"""


def test_a_script_that_trains_at_import_time_gets_a_clear_error_in_its_workers(tmp_path: Path) -> None:
    """A worker that is not a fork (spawned, as a torchrun process's are) imports the
    script being run: train() there says what to do instead of training again (or, under
    torchrun, waiting forever for the other processes), and the loader says why its worker died."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "missing")], capture_output=True, text=True,
                         timeout=120)
    assert "train: DataError" in res.stdout, res.stdout + res.stderr
    assert "train: ConfigError: train() was called while a worker process imported the script" in res.stdout
    assert "loader: a data worker died before it made a batch" in res.stdout
    assert "workers started by spawn import the script being run first" in res.stdout


def test_a_pool_ended_at_once_ends_its_workers_too() -> None:
    """Ended right after it started (an error in its ``with`` block), before its workers ran their
    setup: they still die of the SIGTERM, which reached them with the parent's handler before."""
    res = run("""
import finetune.data.pools as pools
setup = pools._worker_signals
def slow_setup():                 # a busy machine: the worker is slow to reach its setup
    time.sleep(1)
    setup()
pools._worker_signals = slow_setup
start = time.monotonic()
pools.process_pool(2).terminate()
print(round(time.monotonic() - start))
""")
    assert res.returncode == 0 and int(res.stdout) < 30, res.stderr

"""A SIGTERM that reaches only one process of a torchrun job (not process 0) stops both at the same step; process 0
says how to resume even with -q (it was silent: the run ended with status 0 as if it had finished)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from finetune import make_shapes


def _rank_pid(launcher: int, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_sigterm_to_process_1_only_is_said_by_process_0_with_q(tmp_path: Path) -> None:
    data = make_shapes(tmp_path / "shapes", per_class=40, val_per_class=2, size=32)  # 20 steps an epoch
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("FINETUNE_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "finetune", "train", "-q", "--data", str(data), "--model", "resnet18", "--img-size",
                             "32", "--epochs", "20", "--workers", "0", "--device", "cpu", "--batch-size", "8",
                             "--save-every-steps", "1", "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "checkpoints").glob("ckpt-*.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        rank1 = _rank_pid(proc.pid, 1)
        assert rank1 is not None
        os.kill(rank1, signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "finetune: stopped at epoch" in err and "resume with: torchrun --nproc_per_node 2" in err, err

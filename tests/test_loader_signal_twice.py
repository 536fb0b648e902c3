"""One preemption can reach a data worker twice: a scheduler that signals every process of the job
(systemd, Slurm) and torchrun, which passes its own SIGTERM on to each process's whole process group.
The worker must outlive both, so that the main process finishes its step and saves (under torchrun
it died: "DataLoader worker is killed by signal: Terminated", no checkpoint, one rank's error)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from finetune import build_loader, make_shapes
from finetune.data.samples import find_splits


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_delivered_twice_at_once_is_one_stop(tmp_path, start_method: str, signum: int) -> None:
    samples, _ = find_splits(make_shapes(tmp_path / "shapes", per_class=2, val_per_class=1, size=32))
    loader = build_loader(samples, train=False, img_size=32, batch_size=2, workers=1, start_method=start_method,
                          log=lambda msg: None)
    seen = 0
    for i, (_, labels) in enumerate(loader):
        seen += len(labels)
        if i == 0:
            (worker,) = loader._dataloader._iterator._workers
            os.kill(worker.pid, signum)  # the scheduler's ...
            time.sleep(0.2)
            os.kill(worker.pid, signum)  # ... and torchrun's, a moment later
            time.sleep(0.5)
            assert worker.is_alive()
    assert seen == len(samples)
    loader.close()


def test_a_second_signal_later_still_ends_the_worker(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.data import loader as loader_mod

    monkeypatch.setattr(loader_mod, "SAME_STOP_S", 0.3)  # (a forked worker starts with this value)
    samples, _ = find_splits(make_shapes(tmp_path / "shapes", per_class=2, val_per_class=1, size=32))
    loader = build_loader(samples, train=False, img_size=32, batch_size=2, workers=1, start_method="fork",
                          log=lambda msg: None)
    it = iter(loader)
    next(it)
    (worker,) = loader._dataloader._iterator._workers
    os.kill(worker.pid, signal.SIGTERM)
    time.sleep(0.6)
    with pytest.raises(RuntimeError, match="killed by signal: Terminated"):  # a second request: acts as usual
        os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # (torch's SIGCHLD handler raises here)
            time.sleep(0.05)
    assert worker.exitcode == -signal.SIGTERM
    loader.close()

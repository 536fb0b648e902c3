"""Several processes training together: sharded loaders on one machine, and real ``torchrun``
runs on CPU (gloo) that must train what one process trains and resume exactly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from finetune import build_loader, make_shapes
from finetune.data.loader import shard_order
from finetune.data.samples import find_splits


@pytest.fixture(scope="module")
def shapes_splits(tmp_path_factory: pytest.TempPathFactory):
    return find_splits(make_shapes(tmp_path_factory.mktemp("shapes"), per_class=5, val_per_class=3, size=32))


def test_shard_order_covers_the_epoch_once_padded_evenly() -> None:
    order = np.random.default_rng(0).permutation(11)
    shards = [shard_order(order, r, 3, pad=True) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    assert sorted(np.concatenate(shards).tolist()) == sorted(order.tolist() + order[:1].tolist())
    eval_shards = [shard_order(order, r, 3, pad=False) for r in range(3)]
    assert sorted(np.concatenate(eval_shards).tolist()) == list(range(11))


@pytest.mark.parametrize("train", [True, False])
def test_two_shards_together_give_the_one_process_batch(shapes_splits, train: bool) -> None:
    """Step b of rank 0 and rank 1 (batch 4 each) holds exactly the samples, with exactly the
    augmentation, of step b of one process with batch 8."""
    train_samples, val_samples = shapes_splits
    samples = train_samples if train else val_samples
    kw = dict(train=train, img_size=16, workers=0, seed=3)
    one = build_loader(samples, batch_size=8, **kw)
    ranks = [build_loader(samples, batch_size=4, shard=(r, 2), **kw) for r in range(2)]
    for loader in (one, *ranks):
        loader.set_epoch(1)
    if train:
        assert len(ranks[0]) == len(ranks[1]) == len(one)
    else:  # evaluation: every sample exactly once over the processes
        assert sum(len(lab) for r in ranks for _, lab in r) == len(samples)
        for r in ranks:
            r.set_epoch(1)
    for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks, strict=False):
        merged_x = torch.empty_like(x[: len(x0) + len(x1)])
        merged_x[0::2], merged_x[1::2] = x0, x1[: len(merged_x[1::2])]
        merged_y = torch.empty_like(y[: len(y0) + len(y1)])
        merged_y[0::2], merged_y[1::2] = y0, y1[: len(merged_y[1::2])]
        assert torch.equal(merged_y, y[: len(merged_y)])
        assert torch.equal(merged_x, x[: len(merged_x)])
    for loader in (one, *ranks):
        loader.close()


def test_bad_shard_is_a_config_error(shapes_splits) -> None:
    from finetune import ConfigError

    with pytest.raises(ConfigError, match="rank"):
        build_loader(shapes_splits[0], train=True, img_size=16, workers=0, shard=(2, 2))


# --------------------------------------------------------------------------- real torchrun, CPU (gloo)
def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m finetune train ARGS`` (one thread per process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("FINETUNE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "finetune", "train", *args], capture_output=True, text=True, env=env, timeout=timeout)


def one_process(*args: str) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return run_cli("train", *args, env=env)


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("ddp-shapes"), per_class=6, val_per_class=2, size=32)


def common(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", "resnet18", "--img-size", "32", "--epochs", "2", "--workers", "0",
            "--device", "cpu", "--out", str(out), *extra]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_what_one_process_trains_with_twice_the_batch(ddp_data: Path, tmp_path: Path) -> None:
    """DDP averages the gradients of two batches of 8 drawn, with their augmentation, from the same
    epoch order as one batch of 16: the head trains to the same values (float sums in another order)."""
    one = one_process(*common(ddp_data, tmp_path / "one", "--linear-probe", "--optimizer", "sgd", "--batch-size", "16"))
    assert one.returncode == 0, one.stderr
    two = torchrun(*common(ddp_data, tmp_path / "two", "--linear-probe", "--optimizer", "sgd", "--batch-size", "8"))
    assert two.returncode == 0, two.stderr
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    ma, mb = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in ma] == [m["step"] for m in mb] == [3, 6]
    for x, y in zip(ma, mb, strict=True):  # validation counted over both processes' shards, each image once
        assert x["val_top1"] == y["val_top1"] and x["val_top5"] == y["val_top5"]
        assert x["val_loss"] == pytest.approx(y["val_loss"], abs=1e-5)
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-5)
    # process 0 alone writes and speaks: one epoch line each, one "run directory" line
    assert two.stdout.count("epoch 1/2 ") == 1 and two.stdout.count("run directory:") == 1
    assert "x 2 processes (batch 8 each)" in two.stdout
    state = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2


def test_sync_bn_two_processes_take_the_step_one_process_takes_with_twice_the_batch(ddp_data: Path,
                                                                                     tmp_path: Path) -> None:
    """Full fine-tuning (every BatchNorm in training mode): with --sync-bn, two processes with batch 8
    normalise over all 16 images, so their step equals one process's step with batch 16 (weights and
    running statistics; without it BatchNorm biases differ by ~2x their size, see test_sync_bn.py).
    One step: training this tiny set from scratch is chaotic enough that one process with 1 or 2
    threads drifts apart by 20% within three steps."""
    step = ["--optimizer", "sgd", "--lr", "0.01", "--warmup-epochs", "0", "--max-steps", "1"]
    one = one_process(*common(ddp_data, tmp_path / "one", *step, "--batch-size", "16"))
    assert one.returncode == 0, one.stderr
    two = torchrun(*common(ddp_data, tmp_path / "two", *step, "--batch-size", "8", "--sync-bn"))
    assert two.returncode == 0, two.stderr
    assert "--sync-bn: 20 BatchNorm layers take their statistics over the 2 processes' batches" in two.stdout
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()  # the checkpoint of a synchronised model is the plain model's
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.slow  # (about 40 s on 2 cores: run with -m slow)
def test_two_processes_resume_exactly_after_stops_in_the_middle_of_epochs(ddp_data: Path, tmp_path: Path) -> None:
    args = ("--batch-size", "8", "--workers", "1")
    full = torchrun(*common(ddp_data, tmp_path / "full", *args))
    assert full.returncode == 0, full.stderr
    cut = tmp_path / "cut"
    first = torchrun(*common(ddp_data, cut, *args, "--max-steps", "2"))  # in the middle of epoch 1 (3 steps each)
    assert first.returncode == 0, first.stderr
    assert torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["batches_in_epoch"] == 2
    # one process cannot continue an epoch that two processes split: a clear error, nothing changed
    refused = one_process(*common(ddp_data, cut, *args, "--resume", "auto"))
    assert refused.returncode == 2 and refused.stderr.startswith("finetune: error: ")
    assert "--nproc_per_node 2" in refused.stderr and "Traceback" not in refused.stderr
    rest = torchrun(*common(ddp_data, cut, *args, "--resume", "auto"))
    assert rest.returncode == 0, rest.stderr
    a, b = weights(tmp_path / "full"), weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(tmp_path / "full") == metrics(cut)


def test_a_batch_of_unreadable_files_in_one_process_is_skipped_by_both(ddp_data: Path, tmp_path: Path) -> None:
    """Batch 1 per process and one unreadable image: that process's batch is empty. Both processes
    skip the step together (it used to be a collective mismatch: one process ran a backward less)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(ddp_data, data)
    (data / "train" / "circle" / "zz_bad.jpg").write_text("not an image")  # 49 images: 25 steps per process
    run = tmp_path / "run"
    res = torchrun("--data", str(data), "--model", "resnet18", "--img-size", "32", "--epochs", "1", "--workers", "0",
                   "--device", "cpu", "--batch-size", "1", "--linear-probe", "--out", str(run), timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "zz_bad.jpg" in (run / "bad_files.txt").read_text()
    assert [m["step"] for m in metrics(run)] == [24]


def test_a_run_directory_in_use_stops_every_process_with_its_reason(ddp_data: Path, tmp_path: Path) -> None:
    """Process 0 was refused the run directory; process 1 then said another process "stopped or lost
    its connection" and that the run should be continued with --resume auto."""
    from finetune.train import hold_run_dir

    run = tmp_path / "run"
    with hold_run_dir(run):  # what a running `finetune train --out run` holds
        res = torchrun(*common(ddp_data, run), timeout=240)
    assert res.returncode != 0
    assert "is in use by another finetune process" in res.stderr, res.stderr[-2000:]
    assert "lost its connection" not in res.stderr, res.stderr[-2000:]


def test_torchrun_environment_is_checked() -> None:
    from finetune import ConfigError
    from finetune.distributed import Distributed

    assert Distributed.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}).main is False
    for env in ({"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "two"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(ConfigError):
            Distributed.from_env(env)


def test_sigterm_to_torchrun_finishes_the_step_in_both_processes_and_saves(tmp_path: Path) -> None:
    """A preemption: torchrun gets SIGTERM and passes it to each process's whole process group,
    their (spawned) data workers included. Both processes finish the same step, process 0 saves
    and says how to resume; no worker dies under the step."""
    data = make_shapes(tmp_path / "shapes", per_class=40, val_per_class=2, size=32)  # 20 steps an epoch
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("FINETUNE_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "finetune", "train", *common(data, out, "--batch-size", "8", "--workers", "1",
                                                                "--epochs", "20", "--save-every-steps", "1")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "checkpoints").glob("ckpt-*.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stopped = re.search(r"finetune: stopped at epoch (\d+) step (\d+); resume with: torchrun --nproc_per_node 2 ", err)
    assert stopped, err
    assert "finetune: error" not in err and "DataLoader worker" not in err, err
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == int(stopped.group(2)) and state["world_size"] == 2 and len(state["ranks"]) == 2

"""``--grad-accum N``: one optimizer step per N batches, the step one batch N times larger takes;
exact resume at step boundaries; DDP averages once per step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import error_line, run_here
from finetune import make_shapes
from test_distributed import torchrun


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Bitwise comparisons need the same thread count in every run (in this process: run_here)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("accum-shapes"), per_class=6, val_per_class=2, size=32)


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", "resnet18", "--img-size", "32", "--epochs", "2", "--workers", "0",
            "--device", "cpu", "--optimizer", "sgd", "--out", str(out), *extra]


def train(*a: str):
    res = run_here("train", *a)
    assert res.returncode == 0, res.stderr
    return res


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_batches_of_8_per_step_train_what_one_batch_of_16_trains(data: Path, tmp_path: Path) -> None:
    """The same images with the same augmentation, in the same order: the averaged gradient of two
    batches of 8 is that of one batch of 16 (a linear probe: no BatchNorm batch statistics)."""
    train(*args(data, tmp_path / "big", "--linear-probe", "--batch-size", "16"))
    res = train(*args(data, tmp_path / "accum", "--linear-probe", "--batch-size", "8", "--grad-accum", "2"))
    assert "2 batches per optimizer step (effective batch 16)" in res.stdout
    a, b = weights(tmp_path / "big"), weights(tmp_path / "accum")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    ma, mb = metrics(tmp_path / "big"), metrics(tmp_path / "accum")
    assert [m["step"] for m in ma] == [m["step"] for m in mb] == [3, 6]  # optimizer steps
    for x, y in zip(ma, mb, strict=True):
        assert x["lr"] == pytest.approx(y["lr"]) and x["val_top1"] == y["val_top1"]
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-5)
    without = train(*args(data, tmp_path / "small", "--linear-probe", "--batch-size", "8"))  # (what the above tells apart)
    assert without.returncode == 0 and [m["step"] for m in metrics(tmp_path / "small")] == [6, 12]
    c = weights(tmp_path / "small")
    assert not torch.allclose(c["fc.weight"], a["fc.weight"], atol=1e-4)


def test_an_epoch_that_does_not_divide_ends_with_a_shorter_step(data: Path, tmp_path: Path) -> None:
    """3 batches per epoch, 2 per step: steps of 2 and 1 batches (the last batch's gradient is not halved)."""
    train(*args(data, tmp_path / "run", "--linear-probe", "--batch-size", "16", "--grad-accum", "2"))
    assert [m["step"] for m in metrics(tmp_path / "run")] == [2, 4]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["scheduler"]["steps_per_epoch"] == 2 and state["scheduler"]["total_steps"] == 4
    assert state["batches_in_epoch"] == 0 and state["config"]["grad_accum"] == 2


def test_stopped_between_steps_then_resumed_is_bitwise_identical(data: Path, tmp_path: Path) -> None:
    """--max-steps stops after the first optimizer step (2 of the epoch's 6 batches); the resumed run
    starts the next step with fresh gradients and ends where the uninterrupted run ends, bit for bit."""
    extra = ("--batch-size", "8", "--grad-accum", "2", "--lr", "0.01")
    train(*args(data, tmp_path / "full", *extra))
    train(*args(data, tmp_path / "cut", *extra, "--max-steps", "1"))
    first = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert (first["step"], first["batches_in_epoch"]) == (1, 2)
    res = train(*args(data, tmp_path / "cut", *extra, "--resume", "auto"))
    assert "resumed at epoch 1, step 1 (batch 2 of 6)" in res.stdout
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["train_loss"] for m in metrics(tmp_path / "full")] == [m["train_loss"] for m in metrics(tmp_path / "cut")]


def test_two_processes_accumulating_train_what_one_process_trains(data: Path, tmp_path: Path) -> None:
    """torchrun, 2 processes x batch 4 x 2 batches per step = one process with batch 16, here stopped in
    the middle of epoch 1 and resumed (the bitwise resume of two processes without accumulation:
    test_distributed's slow test)."""
    train(*args(data, tmp_path / "one", "--linear-probe", "--batch-size", "16"))
    cut = tmp_path / "cut"
    accum = ("--linear-probe", "--batch-size", "4", "--grad-accum", "2")
    first = torchrun(*args(data, cut, *accum, "--max-steps", "2"))
    assert first.returncode == 0, first.stderr
    assert "2 batches per optimizer step (effective batch 16)" in first.stdout
    assert [m["step"] for m in metrics(cut)] == []  # stopped before the end of epoch 1 (3 steps)
    rest = torchrun(*args(data, cut, *accum, "--resume", "auto"))
    assert rest.returncode == 0, rest.stderr
    assert [m["step"] for m in metrics(cut)] == [3, 6]
    a, b = weights(tmp_path / "one"), weights(cut)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_bad_grad_accum_is_one_error_line(data: Path, tmp_path: Path) -> None:
    res = run_here("train", *args(data, tmp_path / "bad", "--grad-accum", "0"))
    assert res.returncode == 2
    assert error_line(res) == "finetune: error: grad_accum (--grad-accum) must be at least 1 (batches per optimizer step), got 0"


def test_ctrl_c_in_the_middle_of_a_step_finishes_its_batches_then_resume_is_exact(data: Path, tmp_path: Path,
                                                                                    one_torch_thread) -> None:
    """SIGINT right after the first step's checkpoint lands while the next step's 3 batches are under way:
    the step is finished (the checkpoint is between steps), and the resumed run ends bitwise where the
    uninterrupted run ends."""
    import os
    import signal
    import threading
    import time

    from finetune.checkpoint import Checkpointer
    from finetune.config import TrainConfig
    from finetune.train import train as train_run

    def cfg(out: Path, **kw) -> TrainConfig:
        return TrainConfig(data=str(data), model="resnet18", img_size=32, batch_size=4, grad_accum=3, workers="0",
                           epochs=1, seed=3, optimizer="sgd", lr=0.01, out=str(out), **kw)

    train_run(cfg(tmp_path / "full"), quiet=True)
    out = tmp_path / "cut"

    def interrupt() -> None:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("ckpt-*.pt")) and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    result = train_run(cfg(out, save_every_steps=1), quiet=True)
    thread.join()
    assert result.stopped_early
    stopped = Checkpointer(out).load()
    assert stopped["step"] < 4 and stopped["batches_in_epoch"] == 3 * stopped["step"]  # 12 batches, 4 steps
    train_run(cfg(out, resume="auto"), quiet=True)
    a, b = weights(tmp_path / "full"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)

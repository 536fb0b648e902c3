"""Resume compatibility, flag by flag: a run stopped in the middle of an epoch (step 2 of 4) or at
the end of one (step 4), then resumed with ``--resume auto`` and one flag changed.

What is only *how* the run is computed (workers, device, cache, prefetch, decode, output,
checkpoint cadence) must be accepted and end bitwise where the uninterrupted run ends. What
changes which images an epoch's remaining batches hold must be refused in the middle of an
epoch (one ``finetune: error:`` line, exit 2, nothing written) and accepted at its end.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import error_line, run_here, write_colour_folder
from finetune.checkpoint import Checkpointer

BASE = ["--model", "squeezenet1_1", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--seed", "0",
        "--epochs", "2", "-q"]
MID, BOUNDARY = 2, 4  # 16 training images, batch 4: 4 steps per epoch


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Bitwise comparisons need one intra-op thread in every run."""


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 train / 2 val images per class, red and blue, 40 px."""
    return write_colour_folder(tmp_path_factory.mktemp("audit-data") / "colours", per_class=8, size=40)


def _ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    return res



def _start(colours: Path, run: Path, stop: int | None, *extra: str) -> None:
    _ok(run_here("train", "--data", str(colours), "--out", str(run), *BASE, *extra,
                 *(["--max-steps", str(stop)] if stop else [])))


def _resume(run: Path, *flags: str) -> subprocess.CompletedProcess:
    return run_here("train", "--out", str(run), "--resume", "auto", "-q", *flags)


def _final(run: Path) -> dict:
    state = Checkpointer(run).load()
    metrics = [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"step": state["step"], "model": state["model"], "metrics": metrics}


def _assert_same(run: Path, ref: dict) -> None:
    got = _final(run)
    assert got["step"] == ref["step"]
    assert got["metrics"] == ref["metrics"]
    different = [k for k, v in ref["model"].items() if not torch.equal(v, got["model"][k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"


def _last_step(run: Path) -> int:
    return int(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"])


@pytest.fixture(scope="module")
def reference(colours: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = tmp_path_factory.mktemp("audit-ref") / "run"
    _start(colours, run, None)
    return _final(run)


# --------------------------------------------------------------------------- how, not what: accepted, exact
HOW = [
    ("--workers", "1"),
    ("--device", "cpu"),
    ("--amp", "off"),
    ("--prefetch", "none"),
    ("--decode", "cpu"),
    ("--tensorboard",),
    ("--keep-last", "1"),
    ("--save-every-steps", "1"),
    ("--no-async-save",),
]


@pytest.mark.parametrize("stop", [MID, BOUNDARY], ids=["mid-epoch", "boundary"])
def test_how_the_run_is_computed_may_change_on_resume_and_the_result_is_bitwise_the_same(colours, tmp_path, reference,
                                                                                          stop):
    """All of HOW at once (one resume per position keeps the file fast); each is also written to config.yaml."""
    run = tmp_path / "run"
    _start(colours, run, stop)
    flags = [a for f in HOW for a in f]
    _ok(_resume(run, *flags))
    _assert_same(run, reference)
    cfg = (run / "config.yaml").read_text()
    for line in ("workers: '1'", "prefetch: none", "decode: cpu", "tensorboard: true", "keep-last: 1",
                 "save-every-steps: 1", "async-save: false", "device: cpu", "amp: 'off'"):
        assert line in cfg, line
    # --keep-last 1 applies from the resume on (the best epoch's checkpoint is kept besides)
    assert {p.name for p in (run / "checkpoints").glob("ckpt-*.pt")} <= {"ckpt-e0001-s00000004.pt",
                                                                       "ckpt-e0002-s00000008.pt"}


def test_resumed_twice_with_flags_toggled_back_is_bitwise_the_same(colours, tmp_path, reference):
    """-q off, then on; --workers 1 then 0; the run still ends where the uninterrupted one does."""
    run = tmp_path / "run"
    _start(colours, run, 1)
    _ok(run_here("train", "--out", str(run), "--resume", "auto", "--max-steps", "3", "--workers", "1"))
    _ok(_resume(run, "--max-steps", "6", "--workers", "0", "--tensorboard"))
    _ok(_resume(run, "--no-tensorboard"))
    _assert_same(run, reference)


# --------------------------------------------------------------------------- what the batches hold: refused mid-epoch
REFUSED_MID = [
    (["--batch-size", "8"], "--batch-size 4"),
    (["--linear-probe", "--cache-features"], "no --cache-features"),
]


@pytest.mark.parametrize(("flags", "says"), REFUSED_MID, ids=["batch-size", "cache-features"])
def test_mid_epoch_refusals_name_what_to_do_and_write_nothing(colours, tmp_path, flags, says):
    run = tmp_path / "run"
    _start(colours, run, MID)
    before = (run / "config.yaml").read_text()
    line = error_line(_resume(run, *flags))
    assert says in line and "end of an epoch" in line, line
    assert _last_step(run) == MID and (run / "config.yaml").read_text() == before


def test_always_refused_seed_and_model(colours, tmp_path):
    run = tmp_path / "run"
    _start(colours, run, BOUNDARY)
    assert "--seed 0" in error_line(_resume(run, "--seed", "1"))
    assert "--model squeezenet1_1" in error_line(_resume(run, "--model", "resnet18"))
    assert "without --ema" in error_line(_resume(run, "--ema", "0.9"))
    assert _last_step(run) == BOUNDARY


def test_seed_changed_is_refused_with_cache_features_too(colours, tmp_path):
    """With --cache-features the batches come from FeatureBatches, whose state carries the seed as the
    Loader's does: another --seed (another order, another flat-folder split) was accepted silently."""
    run = tmp_path / "run"
    _start(colours, run, MID, "--linear-probe", "--cache-features")
    line = error_line(_resume(run, "--seed", "1"))
    assert "--seed 0" in line, line
    assert _last_step(run) == MID


# --------------------------------------------------------------------------- what may change at an epoch's end
def test_at_an_epoch_boundary_batch_size_and_cache_features_are_accepted(colours, tmp_path):
    run = tmp_path / "run"
    _start(colours, run, BOUNDARY, "--linear-probe")
    _ok(_resume(run, "--cache-features", "--batch-size", "8", "--max-steps", "5"))  # one step of epoch 2
    assert "cache-features: true" in (run / "config.yaml").read_text()
    assert "--batch-size 8" in error_line(_resume(run, "--batch-size", "4"))  # now mid-epoch
    _ok(_resume(run))
    assert _last_step(run) == 6


def test_max_steps_already_reached_trains_no_further_step(colours, tmp_path):
    """--max-steps is a total: resumed at step 4 with --max-steps 3 (or 4) there is nothing left to do."""
    run = tmp_path / "run"
    _start(colours, run, BOUNDARY)
    for limit in ("3", "4"):
        _ok(_resume(run, "--max-steps", limit))
        assert _last_step(run) == BOUNDARY


def test_epochs_lowered_to_the_current_epoch_ends_the_run_without_training(colours, tmp_path):
    run = tmp_path / "run"
    _start(colours, run, BOUNDARY, "--epochs", "3")
    assert _ok(_resume(run, "--epochs", "1")).stderr == ""  # a finished run, as one that ran 1 epoch
    assert _last_step(run) == BOUNDARY
    assert "epochs: 1" in (run / "config.yaml").read_text()


def test_resuming_a_finished_run_says_there_is_nothing_left_to_train(colours, tmp_path):
    """It said "resumed at epoch 3" of a 2-epoch run, then nothing."""
    run = tmp_path / "run"
    _start(colours, run, None)
    res = _ok(run_here("train", "--out", str(run), "--resume", "auto"))
    said = res.stdout + res.stderr
    assert "the run had finished its 2 epochs (step 8): nothing left to train (a higher --epochs goes on)" in said
    assert "resumed at epoch" not in said
    assert _last_step(run) == 2 * BOUNDARY


def test_epochs_lowered_below_a_mid_epoch_checkpoint(colours, tmp_path):
    """Stopped in epoch 2, resumed with --epochs 1: that epoch is not part of the run any more."""
    run = tmp_path / "run"
    _start(colours, run, 6, "--epochs", "3")
    res = _ok(_resume(run, "--epochs", "1"))
    assert "after 1 epochs and 2 batches (step 6), beyond --epochs 1: nothing left to train" in res.stderr, res.stderr
    assert _last_step(run) == 6
    _ok(_resume(run, "--epochs", "2"))  # raised again: the epoch is finished where it stopped
    assert _last_step(run) == 8


def test_old_checkpoint_without_image_counts_resumes_exactly(colours, tmp_path, reference):
    """A checkpoint written before `train_images`/`val_images` existed: the resume cannot check the data
    count, and goes on exactly (same data)."""
    run = tmp_path / "run"
    _start(colours, run, MID)
    state = Checkpointer(run).load()
    for key in ("train_images", "val_images"):
        state.pop(key)
    import shutil

    shutil.rmtree(run / "checkpoints")
    Checkpointer(run).save(state)
    _ok(_resume(run))
    _assert_same(run, reference)


def test_data_with_more_images_is_refused_mid_epoch_and_accepted_at_the_boundary(colours, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(colours, data)
    run = tmp_path / "run"
    _start(colours, run, MID, "--data", str(data))
    shutil.copy(data / "train" / "red" / "red_000.jpg", data / "train" / "red" / "red_999.jpg")
    line = error_line(_resume(run))
    assert "16 training images" in line and "17" in line, line
    (data / "train" / "red" / "red_999.jpg").unlink()
    _ok(_resume(run, "--max-steps", "4"))
    shutil.copy(data / "train" / "red" / "red_000.jpg", data / "train" / "red" / "red_999.jpg")
    _ok(_resume(run))
    assert _last_step(run) == 8


def test_resume_path_of_another_run_into_a_new_out(colours, tmp_path, reference):
    """--resume PATH with a checkpoint of another run directory and a new --out: the flags must be given
    (the new --out has no config.yaml); with them the run continues exactly, and the other run is untouched."""
    src = tmp_path / "src"
    _start(colours, src, MID)
    new = tmp_path / "new"
    res = run_here("train", "--out", str(new), "--resume", str(src / "checkpoints" / "last.pt"), "--data", str(colours),
                   *BASE)
    _ok(res)
    _assert_same(new, reference)
    assert _last_step(src) == MID


@pytest.mark.parametrize(("stop", "before", "after"), [(MID, 2, 1), (BOUNDARY, 2, 1), (6, 1, 3)],
                         ids=["mid-epoch-earlier", "boundary-earlier", "after-it-happened-later"])
def test_unfreeze_schedule_edited_applies_from_the_resume_and_says_so(colours, tmp_path, stop, before, after):
    """An --unfreeze epoch edited on resume takes effect from the resume on (the parameters it names train, or
    stop training, from here); the optimizer restore says which parameters have fresh state. Accepted:
    a new plan, as a new --lr is."""
    run = tmp_path / "run"
    _start(colours, run, stop, "--train-only", "features.12.*", "--unfreeze", f"classifier.*@{before}",
           "--epochs", "3", "--max-steps", str(stop))
    res = _ok(_resume(run, "--unfreeze", f"classifier.*@{after}", "--max-steps", "9"))
    assert "optimizer state restored by name with differences" in res.stderr, res.stderr
    assert ("2 new (fresh state)" in res.stderr) == (after < before), res.stderr
    assert f"classifier.*@{after}" in (run / "config.yaml").read_text()


def test_batch_size_changed_at_an_epoch_boundary_keeps_the_schedule_at_that_epoch(colours, tmp_path):
    """Stopped after epoch 1 of 3 with batch 4 (step 4), resumed with --batch-size 8: the cosine schedule
    goes on from epoch 2's start, as a run with batch 8 from the start has it. (It went on from step 4 of
    that run's 6, two epochs ahead: epoch 2 at the lr of epoch 3, epoch 3 at lr 0.)"""
    fresh = tmp_path / "fresh"
    _start(colours, fresh, None, "--epochs", "3", "--batch-size", "8")
    run = tmp_path / "run"
    _start(colours, run, BOUNDARY, "--epochs", "3")
    _ok(_resume(run, "--batch-size", "8"))
    lrs = [r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    want = [r["lr"] for r in map(json.loads, (fresh / "metrics.jsonl").read_text().splitlines())]
    assert lrs[1:] == want[1:]
    _ok(_resume(run, "--epochs", "4", "--max-steps", "9"))  # one more resume keeps it (the offset is saved)
    run2 = tmp_path / "fresh2"
    _start(colours, run2, None, "--epochs", "4", "--batch-size", "8", "--max-steps", "7")
    from finetune.train import lr_factor

    state = Checkpointer(run).load()
    assert state["scheduler"]["offset"] == 2 and state["step"] == 9
    assert lr_factor(state["step"] - 2, 8, 2) == lr_factor(7, 8, 2)


def test_cache_changed_on_resume_is_accepted_with_a_warning(colours, tmp_path):
    """--cache ram decodes training images at the cache size before cropping (other pixels than --cache none):
    the run goes on, but not bitwise as it would have; the resume says so."""
    run = tmp_path / "run"
    _start(colours, run, MID)
    res = _ok(_resume(run, "--cache", "ram", "--max-steps", "3"))
    assert "trained with --cache none" in res.stderr and "not bitwise" in res.stderr, res.stderr
    assert "cache: ram" in (run / "config.yaml").read_text()
    assert "--cache" not in _ok(_resume(run)).stderr  # the same cache again: nothing to say


# --------------------------------------------------------------------------- torchrun: 1 -> 2 processes and back
def _torchrun(*args: str) -> subprocess.CompletedProcess:
    import os
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("FINETUNE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "finetune", "train", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_one_process_to_two_and_back(colours, tmp_path):
    """Mid-epoch: another number of processes is refused (each process's share of the epoch differs);
    at an epoch's end it is accepted, and the schedule goes on at that epoch (2 processes: 2 steps an epoch)."""
    from finetune.train import lr_factor

    run = tmp_path / "run"
    _start(colours, run, MID, "--epochs", "3", "--device", "cpu")
    res = _torchrun("--out", str(run), "--resume", "auto", "-q")
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("finetune: error:")]  # (torchrun adds its own report)
    assert res.returncode != 0 and lines and all("one process (finetune train, without torchrun)" in ln for ln in lines)
    _ok(_resume(run, "--max-steps", "4"))  # the end of epoch 1
    _ok(_torchrun("--out", str(run), "--resume", "auto", "-q", "--max-steps", "5"))  # 1 of epoch 2's 2 steps
    assert _last_step(run) == 5
    assert "2 processes" in error_line(_resume(run))
    _ok(_torchrun("--out", str(run), "--resume", "auto", "-q", "--max-steps", "6"))  # the end of epoch 2
    _ok(_resume(run))  # one process again: epoch 3, 4 steps
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 6, 10]
    assert records[1]["lr"] == pytest.approx(0.003 * lr_factor(3, 6, 2))  # epoch 2's last step, in 2-process steps
    assert records[2]["lr"] == pytest.approx(0.003 * lr_factor(11, 12, 4))  # epoch 3's last step, one process

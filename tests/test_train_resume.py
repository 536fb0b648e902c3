"""Issue #4 end to end: an interrupted and resumed run ends exactly where the uninterrupted one does.

One uninterrupted run (in-process, module fixture) is the reference. Every other
run is stopped (``max_steps``, SIGTERM) or killed (SIGKILL at random moments) and
resumed with ``--resume auto``; its final checkpoint must hold bitwise the same
weights and optimizer state, and ``metrics.jsonl`` the same values (all but the
timing field ``images_per_s``).

Training runs on one intra-op thread everywhere (``torch.set_num_threads(1)`` in
this process, ``OMP_NUM_THREADS=1`` in subprocesses): float sums are only
reproducible for a fixed thread count, and with it the CLI in a subprocess, with
or without data-loader workers, computes bit for bit what ``train()`` does here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune.checkpoint import Checkpointer
from finetune.cli import main
from finetune.config import TrainConfig
from finetune.data.shapes import make_shapes
from finetune.train import train

TIMING_FIELDS = {"images_per_s"}
STEPS_PER_EPOCH = 4  # `data`: 8 classes x 4 training images, batch size 8
EPOCHS = 2


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Bitwise comparisons need the same thread count in every run (subprocesses get OMP_NUM_THREADS=1)."""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINETUNE_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def data(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", per_class=4, size=32)


def config(data: Path, out: Path, **kw: Any) -> TrainConfig:
    values: dict[str, Any] = dict(data=str(data), model="resnet18", img_size=32, batch_size=8, workers="0",
                                  epochs=EPOCHS, seed=3, optimizer="sgd", lr=0.01, out=str(out))
    values.update(kw)
    return TrainConfig(**values)


def cli_args(data: Path, out: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    """The `finetune train` flags equal to :func:`config`."""
    return ["train", "-q", "--data", str(data), "--model", "resnet18", "--img-size", "32", "--batch-size", "8",
            "--workers", "0", "--epochs", str(epochs), "--seed", "3", "--optimizer", "sgd", "--lr", "0.01", "--out", str(out), *extra]


def final_state(run_dir: Path, epochs: int = EPOCHS) -> dict[str, Any]:
    """What the run ended with: its newest checkpoint's weights and optimizer state, and its metrics."""
    state = Checkpointer(run_dir).load()
    assert state["epoch"] == epochs and state["step"] == epochs * STEPS_PER_EPOCH
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]
    return {"model": state["model"], "optimizer": state["optimizer"]["state"], "metrics": metrics}


def assert_same_run(run_dir: Path, reference: dict[str, Any], epochs: int = EPOCHS) -> None:
    got = final_state(run_dir, epochs)
    assert got["metrics"] == reference["metrics"]
    assert got["model"].keys() == reference["model"].keys()
    different = [k for k, v in reference["model"].items() if not torch.equal(v, got["model"][k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"
    assert got["optimizer"].keys() == reference["optimizer"].keys()
    for name, values in reference["optimizer"].items():
        for key, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(got["optimizer"][name][key])), (name, key)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = train(config(data, out), quiet=True)
    assert not result.stopped_early and len(result.history) == EPOCHS
    return final_state(out)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_worker_count_does_not_change_the_run(data: Path, reference: dict[str, Any], tmp_path: Path,
                                              workers: str) -> None:
    """The same seed with data workers gives bitwise the run made in the main process."""
    train(config(data, tmp_path / "run", workers=workers), quiet=True)
    assert_same_run(tmp_path / "run", reference)


def finetune_command() -> list[str]:
    script = Path(sys.executable).with_name("finetune")
    return [str(script)] if script.exists() else [sys.executable, "-m", "finetune.cli"]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def has_checkpoint(run_dir: Path) -> bool:
    """A complete checkpoint exists (its manifest is written once the file is durable)."""
    return any((run_dir / "checkpoints").glob("ckpt-*.json"))


def wait_until(condition, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll ``condition`` until true (True) or the process ended (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the training subprocess made no progress")


def run_with_kills(run_dir: Path, args: list[str], kills: int, rng: random.Random, window: float,
                   resume_args: list[str] | None = None) -> int:
    """Start `finetune train ARGS`, SIGKILL it ``kills`` times at random moments of training and start it
    again each time, then let it finish. A start resumes (``resume_args``, default ARGS + `--resume auto`)
    when a complete checkpoint exists, else it starts fresh (`--resume auto` with nothing to resume is an
    error). The kill goes to the process group: data-loader workers die with the trainer.
    Returns how many kills hit a running process."""
    hits = 0
    for attempt in range(kills + 20):
        if has_checkpoint(run_dir):
            command = resume_args if resume_args is not None else [*args, "--resume", "auto"]
        else:
            command = args
        started = time.time_ns()
        proc = subprocess.Popen([*finetune_command(), *command], env=subprocess_env(), start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        table = run_dir / "trainable.json"  # written right before the first step

        def training(table: Path = table, started: int = started) -> bool:
            try:
                return table.stat().st_mtime_ns >= started
            except FileNotFoundError:
                return False

        if attempt < kills and wait_until(training, proc):
            time.sleep(rng.uniform(0.0, window))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                hits += 1
        _, err = proc.communicate(timeout=300)
        if proc.returncode == -signal.SIGKILL:
            continue
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        return hits
    pytest.fail("the run did not finish")


# --------------------------------------------------------------------------- in-process stops
def test_stopped_at_epoch_boundaries_and_mid_epoch_then_resumed_is_bitwise_identical(data, tmp_path, reference):
    """Stops mid-epoch 1 (step 2), at the epoch boundary (4), mid-epoch 2 twice (5, 7); each resume
    continues the data order, the augmentation streams, the loss sums and the schedule."""
    out = tmp_path / "run"
    # the first leg also checkpoints by the clock (every ~6 ms: after each step) besides the stop
    first = train(config(data, out, max_steps=2, save_every_minutes=1e-4, keep_last=10), quiet=True)
    assert first.stopped_early and first.history == []
    names = {p.name for p in Checkpointer(out).checkpoints()}
    assert {"ckpt-e0000-s00000001.pt", "ckpt-e0000-s00000002.pt"} <= names
    for stop in (4, 5, 7):
        result = train(config(data, out, max_steps=stop, resume="auto"), quiet=True)
        assert result.stopped_early
        assert Checkpointer(out).load()["step"] == stop
    result = train(config(data, out, resume="auto"), quiet=True)
    assert not result.stopped_early
    assert_same_run(out, reference)


def test_resume_auto_skips_truncated_and_corrupt_newest(data, tmp_path, reference, capsys):
    """`--save-every-steps` adds step checkpoints to the epoch ones; the newest two are damaged, so
    `--resume auto` reports both and continues from the step checkpoint taken after epoch 1's last
    batch (only that epoch's evaluation left to do)."""
    out = tmp_path / "run"
    train(config(data, out, save_every_steps=STEPS_PER_EPOCH, max_steps=STEPS_PER_EPOCH + 1, keep_last=10),
          quiet=True)
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in Checkpointer(out).checkpoints()) == [
        "ckpt-e0000-s00000004.pt",  # --save-every-steps 4, after the epoch's last batch
        "ckpt-e0001-s00000004.pt",  # end of epoch 1
        "ckpt-e0001-s00000005.pt",  # max_steps stop, mid-epoch
    ]
    newest, epoch_end = ckpts / "ckpt-e0001-s00000005.pt", ckpts / "ckpt-e0001-s00000004.pt"
    os.truncate(newest, newest.stat().st_size // 2)
    with open(epoch_end, "r+b") as f:  # flip bytes inside a tensor record: same size, bad CRC
        f.seek(epoch_end.stat().st_size // 3)
        chunk = f.read(64)
        f.seek(-64, os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))
    capsys.readouterr()
    train(config(data, out, resume="auto"), quiet=True)
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("finetune: warning: skipping checkpoint")]
    assert len(skipped) == 2, err
    assert newest.name in skipped[0] and "truncated" in skipped[0]
    assert epoch_end.name in skipped[1] and "corrupt" in skipped[1]
    assert_same_run(out, reference)


def test_resume_auto_with_nothing_to_resume_is_one_error_line(data, tmp_path, capsys):
    code = main(cli_args(data, tmp_path / "empty", "--resume", "auto"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("finetune: error: resume='auto' (--resume auto): nothing to resume"), err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- the real CLI, signals
def test_sigterm_then_sigkills_at_random_moments_with_workers_then_resume_is_bitwise_identical(data, tmp_path,
                                                                                                 reference):
    """`finetune train --workers 2 --save-every-steps 1` gets SIGTERM in the middle of training, sent to its
    whole process group as a scheduler's preemption does (the data workers get it too and must not die
    under the step): the step finishes, a checkpoint is saved, exit status 0 and a message with the
    resume command. That command
    (the run's own config.yaml: workers 2) is then SIGKILLed at random moments and restarted until it
    finishes: it ends bitwise where the in-process run without workers did."""
    out = tmp_path / "run"
    proc = subprocess.Popen([*finetune_command(), *cli_args(data, out, "--workers", "2", "--save-every-steps", "1")],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert wait_until(lambda: has_checkpoint(out), proc), proc.communicate()
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "SIGTERM" in err
    line = next(line for line in err.splitlines() if "resume with:" in line)
    command = line.split("resume with: ", 1)[1].split()
    assert command[:2] == ["finetune", "train"] and command[-2:] == ["--resume", "auto"]
    assert Checkpointer(out).load()["step"] < EPOCHS * STEPS_PER_EPOCH

    hits = run_with_kills(out, [], kills=2, rng=random.Random(4), window=1.5, resume_args=[*command[1:], "-q"])
    assert hits >= 1
    assert not [p.name for p in (out / "checkpoints").iterdir() if ".tmp." in p.name]  # litter of killed saves
    assert_same_run(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigkill_many_times_then_resume_is_bitwise_identical(data, tmp_path, workers):
    epochs = 6
    train(config(data, tmp_path / "reference", epochs=epochs), quiet=True)
    reference = final_state(tmp_path / "reference", epochs)
    out = tmp_path / "run"
    hits = run_with_kills(out, cli_args(data, out, "--workers", workers, "--save-every-steps", "1", epochs=epochs),
                          kills=15, rng=random.Random(int(workers) + 11), window=1.0)
    assert not [p.name for p in (out / "checkpoints").iterdir() if ".tmp." in p.name]
    assert hits >= 10
    assert_same_run(out, reference, epochs)


def test_dropout_randomness_continues_across_a_mid_epoch_resume(data, tmp_path):
    """mobilenet_v3_small draws dropout masks from torch's global generator: the resumed run must see
    the same stream (the data loader's iterators must not draw from it)."""
    cfg = config(data, tmp_path / "reference", model="mobilenet_v3_small")
    train(cfg, quiet=True)
    reference = final_state(tmp_path / "reference")
    out = tmp_path / "run"
    train(replace(cfg, out=str(out), max_steps=STEPS_PER_EPOCH + 1), quiet=True)
    train(replace(cfg, out=str(out), resume="auto"), quiet=True)
    assert_same_run(out, reference)


def test_sigint_finishes_the_step_saves_and_says_how_to_resume(data, tmp_path, reference, capfd):
    """Ctrl-C (SIGINT) during train(): the current step completes, a checkpoint is written, train()
    returns normally with stopped_early and prints the resume command, even when quiet."""
    import threading

    out = tmp_path / "run"

    def interrupt() -> None:
        deadline = time.monotonic() + 120
        while not has_checkpoint(out) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    capfd.readouterr()
    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    result = train(config(data, out, save_every_steps=1), quiet=True)
    thread.join()
    err = capfd.readouterr().err
    assert result.stopped_early
    assert "SIGINT" in err and f"resume with: finetune train --out {out} --resume auto" in err
    assert Checkpointer(out).load()["step"] < EPOCHS * STEPS_PER_EPOCH
    train(config(data, out, resume="auto"), quiet=True)
    assert_same_run(out, reference)

"""The run directory and the documented promises around it (found by adversarial passes over the
logs and the README): one run at a time in a directory, TensorBoard without repeated epochs after
a resume from an earlier checkpoint, standard JSON in metrics.jsonl, lr-find naming the run flags
it ignores, another architecture's weights refused, '~' in paths, convert --strip-prefix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import error_line, run_here

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu", "-q"]


def test_a_second_run_into_a_directory_in_use_is_refused(colour_data: Path, tmp_path: Path) -> None:
    from finetune.train import hold_run_dir

    out = tmp_path / "run"
    with hold_run_dir(out):  # (what a running `finetune train --out run` holds)
        line = error_line(run_here("train", "--data", str(colour_data), "--out", str(out), "--epochs", "1", *TINY))
        assert list(out.iterdir()) == []  # nothing of the refused run was written
    assert "is in use by another finetune process" in line
    assert run_here("train", "--data", str(colour_data), "--out", str(out), "--epochs", "1", "--max-steps", "1",
                    *TINY).returncode == 0  # free again


def test_tensorboard_after_resuming_from_an_earlier_checkpoint_has_each_epoch_once(colour_data: Path,
                                                                                   tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert run_here("train", "--data", str(colour_data), "--out", str(out), "--epochs", "2", "--tensorboard",
                    "--keep-last", "5", *TINY).returncode == 0
    first = sorted((out / "checkpoints").glob("ckpt-e0001-*.pt"))[0]
    res = run_here("train", "--out", str(out), "--resume", str(first), "-q")
    assert res.returncode == 0, res.stderr
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tag = next(t for t in events.Tags()["scalars"] if "loss" in t)
    assert [e.step for e in events.Scalars(tag)] == [1, 2]  # was [1, 2, 2]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1]


def test_metrics_of_a_diverged_run_are_standard_json() -> None:
    from finetune.logging import json_line

    line = json_line({"epoch": 0, "val_loss": float("nan"), "train_loss": float("-inf"), "lr": 300.0})
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}")) == {
        "epoch": 0, "val_loss": None, "train_loss": None, "lr": 300.0}


def test_lr_find_names_the_run_flags_it_ignores(colour_data: Path, tmp_path: Path) -> None:
    res = run_here("lr-find", "--data", str(colour_data), "--num-steps", "2", "--out", str(tmp_path / "r"),
                   "--max-steps", "1", "--tensorboard", *TINY)
    assert res.returncode == 0, res.stderr
    assert "lr-find writes no run directory and takes --num-steps steps: --out, --tensorboard, --max-steps ignored" \
        in res.stderr
    assert not (tmp_path / "r").exists()


def test_another_architectures_weights_are_refused_even_where_half_of_the_values_fit(colour_data: Path,
                                                                                     tmp_path: Path) -> None:
    weights = tmp_path / "model_best.pth.tar"
    torch.save({"state_dict": torchvision.models.resnet50().state_dict()}, weights)  # names and some shapes fit
    line = error_line(run_here("train", "--data", str(colour_data), "--pretrained", str(weights), "--out",
                               str(tmp_path / "r"), "--epochs", "1", *TINY))
    assert "it looks like weights of another architecture" in line and "of the file's tensors unused" in line


def test_a_home_relative_data_path_in_a_config_file(colour_data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(colour_data.parent))
    config = tmp_path / "run.yaml"
    config.write_text(f"data: ~/{colour_data.name}\nepochs: 1\nmax-steps: 1\n")
    res = run_here("train", "--config", str(config), "--out", str(tmp_path / "r"), *TINY)
    assert res.returncode == 0, res.stderr
    from finetune import build_loader

    assert len(build_loader(f"~/{colour_data.name}/train", train=False, img_size=32, batch_size=8, workers=0)) > 0


def test_convert_strip_prefix_of_a_wrapper_the_reader_removed(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pth")
    for how in ("none", "module."):
        res = run_here("convert", str(tmp_path / "ddp.pth"), str(tmp_path / f"{how}.pt"), "--strip-prefix", how)
        assert res.returncode == 0, res.stderr
        assert sorted(torch.load(tmp_path / f"{how}.pt", weights_only=True)) == ["0.bias", "0.weight"]


def test_data_shapes_with_a_shapes_folder_here_says_which_it_means(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.train import resolve_data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes").mkdir()
    resolve_data("shapes", 0.1, 0)
    assert "give --data ./shapes to train on that folder" in capsys.readouterr().err


def test_the_lock_is_free_at_once_after_a_kill_9_that_leaves_forked_workers(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from finetune.train import hold_run_dir

    script = f"""
import multiprocessing, os, pathlib, signal, sys, time
from finetune.train import hold_run_dir
with hold_run_dir(pathlib.Path({str(tmp_path / 'run')!r})):
    (pathlib.Path({str(tmp_path / 'run')!r}) / "x").write_text("")
    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))  # as a DataLoader worker
    worker.start()
    print(worker.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    orphan = int(proc.stdout.readline())  # (the orphan keeps the pipe open: wait for the process, not the pipe)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    try:
        with hold_run_dir(tmp_path / "run"):  # was: "in use by another finetune process" until the worker ended
            pass
    finally:
        os.kill(orphan, signal.SIGKILL)
        proc.stdout.close()

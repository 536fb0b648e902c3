"""Unreadable images with the newer training knobs (found by an adversarial pass): a step whose
last batch was all unreadable files still stops and saves on time; nothing readable is an error
in train, lr-find and eval, not a score of 0%; lr-find sets up --unfreeze PATTERN@1 as the run does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import error_line, run_here

TINY = ["--img-size", "32", "--workers", "0", "--device", "cpu", "--epochs", "1", "-q"]


def folder(root: Path, good: int, bad: int, val_bad: bool = False) -> Path:
    for split, n in (("train", good + bad), ("val", 3)):
        for cls, colour in (("red", (200, 0, 0)), ("green", (0, 200, 0))):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                path = root / split / cls / f"{i}.png"
                if (split == "train" and i >= good) or (split == "val" and val_bad):
                    path.write_text("garbage")
                else:
                    Image.new("RGB", (40, 40), colour).save(path)
    return root


def steps_saved(run: Path) -> list[int]:
    return sorted({torch.load(p, weights_only=True)["step"] for p in (run / "checkpoints").glob("ckpt-*.pt")})


def test_a_step_ending_in_an_unreadable_batch_stops_and_saves_on_time(tmp_path: Path) -> None:
    data = folder(tmp_path / "d", good=3, bad=7)  # 6 of 20 training images readable
    common = ["--data", str(data), "--model", "squeezenet1_1", "--batch-size", "2", "--grad-accum", "2", "--seed", "1",
              *TINY]  # (no BatchNorm: a batch of one readable image trains)
    res = run_here("train", *common, "--max-steps", "1", "--out", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    assert steps_saved(tmp_path / "a") == [1]  # was 2: the late step skipped the --max-steps check
    res = run_here("train", *common, "--save-every-steps", "1", "--keep-last", "20", "--out", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr
    saved = steps_saved(tmp_path / "b")
    assert saved == list(range(1, saved[-1] + 1))  # a checkpoint after every step


def test_nothing_readable_to_train_on_is_an_error(tmp_path: Path) -> None:
    data = folder(tmp_path / "d", good=0, bad=4)
    line = error_line(run_here("train", "--data", str(data), "--batch-size", "2", "--out", str(tmp_path / "r"), *TINY))
    assert "none of the 8 training images can be read" in line
    assert not (tmp_path / "r" / "checkpoints" / "best.pt").exists()
    line = error_line(run_here("lr-find", "--data", str(data), "--batch-size", "2", "--num-steps", "5", *TINY))
    assert "none of the 8 training images can be read" in line


def test_nothing_readable_to_score_is_an_error(tmp_path: Path) -> None:
    data = folder(tmp_path / "d", good=4, bad=0, val_bad=True)
    line = error_line(run_here("train", "--data", str(data), "--batch-size", "2", "--out", str(tmp_path / "r"), *TINY))
    assert "none of the 6 validation images can be read" in line
    good = folder(tmp_path / "g", good=4, bad=0)
    assert run_here("train", "--data", str(good), "--batch-size", "2", "--out", str(tmp_path / "g_run"),
                    *TINY).returncode == 0
    line = error_line(run_here("eval", "--checkpoint", str(tmp_path / "g_run"), "--data", str(data / "val")))
    assert "none of the 6 images of" in line and "nothing to score" in line


def test_grad_accum_beyond_an_epoch_says_so(tmp_path: Path) -> None:
    data = folder(tmp_path / "d", good=4, bad=0)
    res = run_here("train", "--data", str(data), "--batch-size", "2", "--grad-accum", "100", "--out",
                   str(tmp_path / "r"), *TINY)
    assert res.returncode == 0, res.stderr
    assert "--grad-accum 100 is more than the 4 batches of an epoch: every epoch is one optimizer step" in res.stderr


def test_lr_find_trains_what_unfreeze_at_1_trains_from_the_first_step(tmp_path: Path) -> None:
    data = folder(tmp_path / "d", good=8, bad=0)
    from finetune.cli import build_parser
    from finetune.config import config_from_args
    from finetune.lr_find import lr_find

    def losses(*flags: str) -> list[float]:
        args = build_parser().parse_args(["lr-find", "--data", str(data), "--batch-size", "4", *TINY, *flags])
        return lr_find(config_from_args(args).resolved(), num_steps=4, quiet=True).raw_losses

    unfrozen_at_1 = losses("--train-only", "fc", "--unfreeze", "layer4@1")
    assert unfrozen_at_1 == pytest.approx(losses("--train-only", "fc", "layer4"), rel=1e-5)
    assert unfrozen_at_1 != pytest.approx(losses("--train-only", "fc"), rel=1e-5)

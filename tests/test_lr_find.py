"""The learning-rate range test: a real run on a tiny folder, the readings of a known curve, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import run_cli
from finetune import ConfigError, TrainConfig, lr_find
from finetune.lr_find import readings


def test_readings_of_a_known_curve() -> None:
    lrs = [10 ** (e / 10) for e in range(-60, 11)]  # 1e-6 … 10
    # flat, falls around 1e-3, lowest at 1e-2, rises after
    losses = [2.0 - 1.0 / (1 + math.exp(-4 * (math.log10(lr) + 3))) + max(0.0, math.log10(lr) + 2) ** 2 for lr in lrs]
    lr_min, lr_steep = readings(lrs, losses)
    assert lr_min == pytest.approx(1e-3, rel=0.3)
    assert lr_steep == pytest.approx(1e-3, rel=0.3)


def test_lr_find_on_images_stops_when_the_loss_explodes(colour_data: Path) -> None:
    cfg = TrainConfig(data=str(colour_data), img_size=32, batch_size=16, workers="0", device="cpu", optimizer="sgd")
    result = lr_find(cfg, start_lr=1e-5, end_lr=1e4, num_steps=40, quiet=True)
    assert result.lrs[0] == pytest.approx(1e-5) and all(a < b for a, b in zip(result.lrs, result.lrs[1:], strict=False))
    assert result.stopped and len(result.lrs) < 40  # lr 1e4 on SGD: the loss cannot stay below 4x its minimum
    assert result.lrs[0] / 10 <= result.suggested <= result.lrs[-1] / 10
    assert all(math.isfinite(v) for v in result.losses)
    with pytest.raises(ConfigError):
        lr_find(cfg, start_lr=1.0, end_lr=0.1)


def test_cli_lr_find_json_and_errors(colour_data: Path) -> None:
    done = run_cli("lr-find", "--data", str(colour_data), "--img-size", "32", "--batch-size", "16", "--workers", "0",
                   "--num-steps", "8", "--linear-probe", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert len(out["lrs"]) == len(out["losses"]) <= 8 and out["suggested"] == out["lr_min"] > 0
    bad = run_cli("lr-find", "--data", str(colour_data), "--num-steps", "1")
    assert bad.returncode == 2 and bad.stderr.startswith("finetune: error:") and "Traceback" not in bad.stderr


def test_grad_accum_sweeps_what_the_larger_batch_sweeps(colour_data: Path) -> None:
    """Set up like the run: with --grad-accum 2 and batch 8 each step sees the images (and takes the
    update) of one batch of 16, so the losses along the sweep are the same (a linear probe: no
    BatchNorm batch statistics); without it they are not."""
    common = dict(data=str(colour_data), img_size=32, workers="0", device="cpu", optimizer="sgd", linear_probe=True)
    big = lr_find(TrainConfig(batch_size=16, **common), start_lr=1e-3, end_lr=1.0, num_steps=5, quiet=True)
    accum = lr_find(TrainConfig(batch_size=8, grad_accum=2, **common), start_lr=1e-3, end_lr=1.0, num_steps=5,
                    quiet=True)
    small = lr_find(TrainConfig(batch_size=8, **common), start_lr=1e-3, end_lr=1.0, num_steps=5, quiet=True)
    assert accum.raw_losses == pytest.approx(big.raw_losses, abs=1e-5)
    assert small.raw_losses != pytest.approx(big.raw_losses, abs=1e-3)


def test_a_test_that_ran_all_its_steps_did_not_stop_early(colour_data: Path) -> None:
    cfg = TrainConfig(data=str(colour_data), img_size=32, batch_size=8, workers="0", device="cpu")
    result = lr_find(cfg, start_lr=0.01, end_lr=1.0, num_steps=2, quiet=True)  # (the loss explodes at the last step)
    assert len(result.lrs) == 2 and result.stopped == ""

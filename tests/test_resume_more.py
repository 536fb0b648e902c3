"""Exact resume of two set-ups an adversarial pass found inexact: channels_last parameters with
fused AdamW (optimizer state stored contiguous), and a cached-feature linear probe from
pretrained weights (features were taken from the resumed run's fresh, unloaded backbone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from conftest import run_here
from finetune import make_shapes


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Bitwise comparisons need the same thread count in every run."""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("resume-more"), per_class=4, val_per_class=1, size=32)


def train(*args: str) -> None:
    res = run_here("train", *args)
    assert res.returncode == 0, res.stderr


def final(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_resume_exact(data: Path, tmp_path: Path, *extra: str, stop_steps: int) -> None:
    common = ["--data", str(data), "--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0",
              "--epochs", "2", "--device", "cpu", "-q", *extra]
    train(*common, "--out", str(tmp_path / "full"))
    train(*common, "--out", str(tmp_path / "cut"), "--max-steps", str(stop_steps))
    train(*common, "--out", str(tmp_path / "cut"), "--resume", "auto")
    a, b = final(tmp_path / "full"), final(tmp_path / "cut")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def test_channels_last_with_fused_adamw_resumes_exactly(data: Path, tmp_path: Path) -> None:
    assert_resume_exact(data, tmp_path, "--channels-last", "--optimizer", "adamw", stop_steps=3)


def test_cached_feature_probe_from_pretrained_weights_resumes_exactly(data: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    pretrained = tmp_path / "pretrained.pt"
    torch.save(torchvision.models.resnet18().state_dict(), pretrained)  # not the run's own random init
    assert_resume_exact(data, tmp_path, "--pretrained", str(pretrained), "--linear-probe", "--cache-features",
                        stop_steps=4)  # the end of epoch 1: the resumed run extracts its features again

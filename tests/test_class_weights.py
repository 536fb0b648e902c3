"""``--class-weights balanced``: the training loss weighs each class by n / (classes x count)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import error_line, run_here, write_colour_folder

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--epochs", "1",
        "--optimizer", "sgd", "--lr", "0.01", "--warmup-epochs", "0", "--device", "cpu"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """The same thread count in every run of a comparison."""


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("balanced"), per_class=8)


@pytest.fixture(scope="module")
def imbalanced(balanced: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images with only 2 of the 8 blue training images."""
    root = tmp_path_factory.mktemp("imbalanced") / "data"
    shutil.copytree(balanced, root)
    for image in sorted((root / "train" / "blue").glob("*.jpg"))[2:]:
        image.unlink()
    return root


def test_balanced_weights_leave_a_balanced_set_as_it_was(balanced: Path, tmp_path: Path) -> None:
    """Every class has 8 images: every weight is exactly 1 and the run trains what it trains without them."""
    plain = run_here("train", "--data", str(balanced), "--out", str(tmp_path / "plain"), *TINY)
    assert plain.returncode == 0, plain.stderr
    res = run_here("train", "--data", str(balanced), "--out", str(tmp_path / "w"), "--class-weights", "balanced",
                   *TINY)
    assert res.returncode == 0, res.stderr
    assert "--class-weights balanced: the training loss weighs blue 1, red 1" in res.stdout
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "w")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_rare_class_weighs_more_and_the_setting_is_kept(imbalanced: Path, tmp_path: Path) -> None:
    res = run_here("train", "--data", str(imbalanced), "--out", str(tmp_path / "w"), "--class-weights", "balanced",
                   *TINY)
    assert res.returncode == 0, res.stderr
    assert "the training loss weighs blue 2.5, red 0.625" in res.stdout  # 10 images: 10 / (2 x 2), 10 / (2 x 8)
    plain = run_here("train", "--data", str(imbalanced), "--out", str(tmp_path / "plain"), *TINY)
    assert plain.returncode == 0, plain.stderr
    assert not torch.allclose(weights(tmp_path / "w")["fc.weight"], weights(tmp_path / "plain")["fc.weight"],
                              atol=1e-4)
    state = torch.load(tmp_path / "w" / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["class_weights"] == "balanced"
    assert "class-weights: balanced" in (tmp_path / "w" / "config.yaml").read_text()


def test_bad_class_weights_are_one_error_line(balanced: Path, tmp_path: Path) -> None:
    res = run_here("train", "--data", str(balanced), "--out", str(tmp_path / "x"), "--class-weights", "inverse")
    assert res.returncode == 2 and "invalid choice: 'inverse'" in res.stderr
    (tmp_path / "run.yaml").write_text("class_weights: inverse\n")
    res = run_here("train", "--config", str(tmp_path / "run.yaml"), "--data", str(balanced), "--out",
                   str(tmp_path / "y"))
    assert error_line(res) == "finetune: error: class_weights (--class-weights) must be none or balanced, got 'inverse'"


def test_weighted_loss_is_a_mean_over_images_so_accumulated_batches_train_what_one_batch_trains(
        imbalanced: Path, tmp_path: Path) -> None:
    """PyTorch's weighted "mean" divides a batch by its own sum of weights: two batches of 8 would
    not add up to one of 16. The loss is the mean of the weighted per-image losses instead."""
    common = [*TINY, "--linear-probe", "--class-weights", "balanced", "--no-augment"]
    common[common.index("--batch-size") + 1] = "5"  # 10 images: one batch of 10, or two of 5
    one = run_here("train", "--data", str(imbalanced), "--out", str(tmp_path / "one"), *common)
    assert one.returncode == 0, one.stderr
    common[common.index("--batch-size") + 1] = "10"
    big = run_here("train", "--data", str(imbalanced), "--out", str(tmp_path / "big"), *common)
    assert big.returncode == 0, big.stderr
    common[common.index("--batch-size") + 1] = "5"
    accum = run_here("train", "--data", str(imbalanced), "--out", str(tmp_path / "accum"), *common,
                     "--grad-accum", "2")
    assert accum.returncode == 0, accum.stderr
    a, b = weights(tmp_path / "big"), weights(tmp_path / "accum")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    assert not torch.allclose(weights(tmp_path / "one")["fc.weight"], a["fc.weight"], atol=1e-4)

"""eval --data given the training images another way than the training data's own path (its train/ folder, a
copy of a flat folder while the original is still there) says so / scores the held-out split (evalmap)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from finetune import Checkpointer, create_model


def _folder(root: Path, per_class: int) -> Path:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (12, 12), (i * 20, 0, 0) if c == "cat" else (0, 0, i * 20)).save(root / c / f"{i}.png")
    return root


def _checkpoint(tmp_path: Path, data: Path, train_images: int, val_images: int) -> Path:
    return Checkpointer(tmp_path / "run").save({
        "model": create_model("squeezenet1_1", num_classes=2), "arch": "squeezenet1_1", "classes": ["cat", "dog"],
        "img_size": 32, "epoch": 0, "step": 0, "train_images": train_images, "val_images": val_images,
        "config": {"data": str(data), "val_split": 0.2, "seed": 0}})


def test_eval_of_the_training_split_folder_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.train import evaluate_checkpoint

    data = tmp_path / "photos"
    _folder(data / "train", 4)
    _folder(data / "val", 1)
    path = _checkpoint(tmp_path, data, 8, 2)
    assert evaluate_checkpoint(path, data=str(data / "val"), device="cpu")["images"] == 2
    assert "training images" not in capsys.readouterr().err
    assert evaluate_checkpoint(path, data=str(data / "train"), device="cpu")["images"] == 8
    assert "8 of the 8 images" in capsys.readouterr().err  # (was scored silently, as if held out)


def test_eval_of_a_copy_of_the_flat_training_folder_scores_its_held_out_split(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.train import evaluate_checkpoint

    data = _folder(tmp_path / "flat", 10)
    path = _checkpoint(tmp_path, data, 16, 4)
    copy = shutil.copytree(data, tmp_path / "copy")  # the original is still there
    assert evaluate_checkpoint(path, data=str(copy), device="cpu")["images"] == 4  # was 20: its training images too
    assert "of which it is a copy" in capsys.readouterr().err


def test_a_test_folder_beside_train_is_checked_without_scanning_the_training_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from finetune.train import evaluate_checkpoint

    train_module = importlib.import_module("finetune.train")  # (finetune.train is also the function)

    data = tmp_path / "photos"
    _folder(data / "train", 4)
    _folder(data / "val", 1)
    _folder(data / "test", 2)
    path = _checkpoint(tmp_path, data, 8, 2)
    scanned: list[str] = []
    real = train_module.resolve_data
    monkeypatch.setattr(train_module, "resolve_data", lambda d, *a, **k: scanned.append(str(d)) or real(d, *a, **k))
    assert evaluate_checkpoint(path, data=str(data / "test"), device="cpu")["images"] == 4
    assert "training images" not in capsys.readouterr().err
    assert str(data) not in scanned  # (a test/ beside train/: nothing of it is under train/)

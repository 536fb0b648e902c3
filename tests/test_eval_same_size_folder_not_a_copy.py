"""eval --data of another folder of as many images of the same classes as the flat training folder (the next
fold, a test set) while the training folder is still there: scored whole, not taken for a copy of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from finetune import Checkpointer, create_model


def _folder(root: Path, prefix: str) -> Path:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (12, 12), (i * 20, 0, 0) if c == "cat" else (0, 0, i * 20)).save(root / c / f"{prefix}{i}.png")
    return root


def test_a_same_size_folder_with_other_files_is_scored_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.train import evaluate_checkpoint

    fold_a, fold_b = _folder(tmp_path / "fold_a", "a"), _folder(tmp_path / "fold_b", "b")
    path = Checkpointer(tmp_path / "run").save({
        "model": create_model("squeezenet1_1", num_classes=2), "arch": "squeezenet1_1", "classes": ["cat", "dog"],
        "img_size": 32, "epoch": 0, "step": 0, "train_images": 16, "val_images": 4,
        "config": {"data": str(fold_a), "val_split": 0.2, "seed": 0}})
    assert evaluate_checkpoint(path, data=str(fold_b), device="cpu")["images"] == 20  # was 4: "a copy"
    assert "copy" not in capsys.readouterr().err

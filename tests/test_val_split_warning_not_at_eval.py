"""The --val-split warning (small classes hold out far more than asked) is training's: eval, which has no
--val-split, gave it too, for a separate test folder (drawn as a split by the 'moved training data' check)
and again when it draws the run's own validation split."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image

from finetune.data.samples import eval_samples, find_splits
from finetune.errors import DataWarning
from finetune.train import moved_training_data


def _folder(root: Path, classes: int, per_class: int) -> Path:
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (4, 4)).save(root / f"c{c}" / f"{i}.png")
    return root


def test_eval_gives_no_val_split_warning(tmp_path: Path) -> None:
    photos = _folder(tmp_path / "photos", 12, 10)
    small = _folder(tmp_path / "small", 12, 2)  # (split 0.1: one image of each class, 12 of 24)
    classes = [f"c{c}" for c in range(12)]
    with pytest.warns(DataWarning, match="held out 12 of 24"):  # training on it warns, as it should
        find_splits(small, val_split=0.1, seed=0)
    state = {"classes": classes, "train_images": 108, "val_images": 12}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not moved_training_data(str(small), state, str(photos), val_split=0.1, seed=0)  # a test folder
        assert len(eval_samples(small, classes, trained_on=str(photos), val_split=0.1, seed=0)) == 24
        assert len(eval_samples(small, classes, trained_on=str(small), val_split=0.1, seed=0)) == 12  # its val split

"""Dict keys in saved state: numpy scalars become Python values; other keys are refused at save time."""

import enum
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.checkpoint import Checkpointer
from finetune.errors import CheckpointError


def test_numpy_scalar_keys_are_saved_as_python_values_and_load(tmp_path: Path) -> None:
    labels = np.array([0, 1, 1, 2])
    counts = dict(zip(*np.unique(labels, return_counts=True), strict=True))  # {np.int64(0): np.int64(1), ...}
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save({"w": torch.ones(1), "class_counts": counts, "epoch": 0, "step": 1})
    assert ckpt.load()["class_counts"] == {0: 1, 1: 2, 2: 1}
    assert torch.load(path, weights_only=True)["class_counts"] == {0: 1, 1: 2, 2: 1}


def test_a_key_that_would_not_load_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    class Colour(enum.StrEnum):
        RED = "red"

    ckpt = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match=r"state\['per_class'\]: its key .*Colour"):
        ckpt.save({"per_class": {Colour.RED: 0.5}, "epoch": 0, "step": 1})
    assert ckpt.latest() is None

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


def test_an_averaged_model_is_saved_with_clean_keys_and_loads_back(tmp_path: Path) -> None:
    from torch.optim.swa_utils import AveragedModel

    from finetune.checkpoint import load_model_state

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = AveragedModel(torch.nn.DataParallel(net, device_ids=[]))
    ema.update_parameters(torch.nn.DataParallel(net, device_ids=[]))
    path = Checkpointer(tmp_path).save(model=net, ema=ema, epoch=0, step=1)
    saved = torch.load(path, weights_only=True)["ema"]
    assert sorted(saved) == sorted([*net.state_dict(), "n_averaged"])  # no 'module.' anywhere
    fresh = AveragedModel(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    assert load_model_state(fresh, saved) == ([], [])
    assert int(fresh.n_averaged) == 1 and torch.equal(fresh.module[0].weight, net[0].weight)


def test_an_averaged_model_saved_with_clean_keys_reads_as_weights_without_its_counter(tmp_path: Path) -> None:
    # n_averaged is AveragedModel's update count, no weight: convert --ema must not write it into weights files,
    # and load_weights must not report it as unexpected (as with the 'module.*' keys saved before)
    from torch.optim.swa_utils import AveragedModel

    from finetune.weights import read_checkpoint

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = AveragedModel(net)
    ema.update_parameters(net)
    path = Checkpointer(tmp_path).save(model=net, ema=ema, epoch=0, step=1)
    assert sorted(read_checkpoint(path).ema) == sorted(net.state_dict())

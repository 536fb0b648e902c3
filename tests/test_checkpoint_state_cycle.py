"""A state that contains itself is refused with one CheckpointError (not a RecursionError), and nothing is written."""

import pytest
import torch

from finetune.checkpoint import Checkpointer
from finetune.errors import CheckpointError


@pytest.mark.parametrize("async_save", [False, True])
def test_self_referencing_state_is_refused(tmp_path, async_save):
    extra: dict = {"lr": 0.1}
    extra["history"] = [extra]
    with Checkpointer(tmp_path, async_save=async_save) as ckpt:
        with pytest.raises(CheckpointError, match="contains itself"):
            ckpt.save({"w": torch.zeros(1), "extra": extra, "epoch": 0, "step": 1})
        assert ckpt.latest() is None

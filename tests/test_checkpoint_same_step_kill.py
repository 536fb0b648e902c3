"""A save of the same epoch and step again, killed after the file was replaced but before its manifest
was written, still leaves a checkpoint that latest() returns (the one it replaced, kept by last.pt)."""

import warnings
from pathlib import Path

import pytest
import torch

import finetune.checkpoint as checkpoint
from finetune.checkpoint import Checkpointer, CheckpointWarning


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no cleanup."""


def test_killed_resave_of_the_same_step_still_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = Checkpointer(tmp_path, keep_last=1)
    ckpt.save({"w": torch.ones(4), "epoch": 3, "step": 40}, metrics={"val_top1": 0.5})  # the periodic save

    def killed(*args: object, **kwargs: object) -> None:
        raise _Killed

    monkeypatch.setattr(checkpoint, "_fingerprint", killed)
    with pytest.raises(_Killed):
        ckpt.save({"w": torch.full((4,), 2.0), "epoch": 3, "step": 40})  # the stop-save at the same step
    monkeypatch.undo()

    again = Checkpointer(tmp_path, keep_last=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        path = again.latest()
    assert path is not None, "the run would start again from scratch"
    state = again.load(path)
    assert state["step"] == 40 and torch.equal(state["w"], torch.ones(4))

"""A second Ctrl-C while a checkpoint is being written (the stop after the first one saves) raises
KeyboardInterrupt inside the file object torch.save writes to; torch.save turned it into a RuntimeError
("[enforce fail at inline_container.cc:672] . unexpected pos ..."), reported as a failed write ("cannot
write checkpoint ...: fix the cause") instead of 'finetune: error: interrupted'."""

from __future__ import annotations

import pytest
import torch

import finetune.checkpoint as ck
from finetune.checkpoint import Checkpointer


def _state(step: int) -> dict:
    return {"model": {"w": torch.full((64, 64), float(step))}, "epoch": 0, "step": step}


def test_a_ctrl_c_while_a_checkpoint_is_written_stays_an_interruption(tmp_path, monkeypatch) -> None:
    ckpt = Checkpointer(tmp_path)
    first = ckpt.save(_state(1))
    real = ck._Writer.write

    def write(self, data):  # the default SIGINT handler, run between two writes of torch.save
        if self.size > 1000:
            raise KeyboardInterrupt
        return real(self, data)

    monkeypatch.setattr(ck._Writer, "write", write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(_state(2))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert ckpt.verify(first) is None and ckpt.latest() == first

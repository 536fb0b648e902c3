"""Checkpointer.save of tensors without plain storage (sparse, meta): one CheckpointError naming the key."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from finetune.checkpoint import Checkpointer
from finetune.errors import CheckpointError


def _sparse_sgd_state() -> dict:
    emb = nn.Embedding(10, 4, sparse=True)
    opt = torch.optim.SGD(emb.parameters(), lr=0.1, momentum=0.9)
    emb(torch.tensor([1, 2])).sum().backward()
    opt.step()  # its momentum buffer is a sparse tensor
    return {"model": emb, "optimizer": opt, "epoch": 1, "step": 2}


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("async_save", [False, True])
@pytest.mark.parametrize(("make_state", "where", "what"), [
    (_sparse_sgd_state, "['optimizer']['state']['weight']['momentum_buffer']", "sparse_coo tensor"),
    (lambda: {"x": torch.eye(3).to_sparse_csr(), "epoch": 1, "step": 2}, "['x']", "sparse_csr tensor"),
    (lambda: {"model": nn.Linear(2, 2, device="meta"), "epoch": 1, "step": 2}, "['model']['weight']", "meta tensor"),
])
def test_unsaveable_tensor_is_a_checkpoint_error_and_leaves_the_run_intact(tmp_path, async_save, make_state,
                                                                            where, what):
    with Checkpointer(tmp_path, async_save=async_save) as ckpt:
        first = ckpt.save({"model": nn.Linear(2, 2), "epoch": 0, "step": 1}, metrics={"val_top1": 0.5})
        ckpt.wait()
        before = sorted(os.listdir(ckpt.directory))
        with pytest.raises(CheckpointError) as caught:
            ckpt.save(make_state(), metrics={"val_top1": 0.9})
        ckpt.wait()
    message = str(caught.value)
    assert f"cannot save state{where}" in message and what in message
    assert sorted(os.listdir(ckpt.directory)) == before  # no temp file, no partial checkpoint
    assert Checkpointer(tmp_path).latest() == first and Checkpointer(tmp_path).best_value == 0.5

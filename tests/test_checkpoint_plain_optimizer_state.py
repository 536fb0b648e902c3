"""restore() of a checkpoint whose optimizer was saved as torch's optimizer.state_dict(): says what to do."""

import pytest
import torch
from torch import nn

from finetune.checkpoint import Checkpointer, restore
from finetune.errors import CheckpointError


def test_positional_optimizer_state_says_what_to_do(tmp_path):
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    ckpt = Checkpointer(tmp_path)
    ckpt.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 0, "step": 1})
    with pytest.raises(CheckpointError, match=r"optimizer\.load_state_dict\(\).*save the optimizer object itself"):
        restore(ckpt.load(), model=net, optimizer=opt)

"""restore(scheduler=...) of a scheduler saved for another number of parameter groups: one clear error."""

import pytest
import torch
from torch import nn

from finetune.checkpoint import Checkpointer, restore
from finetune.errors import CheckpointError

S = torch.optim.lr_scheduler


def _saved(tmp_path, make_scheduler):
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = make_scheduler(opt)
    for _ in range(2):
        opt.step()
        sched.step()
    ckpt = Checkpointer(tmp_path)
    ckpt.save({"model": net, "optimizer": opt, "scheduler": sched, "epoch": 0, "step": 2})
    return net, ckpt.load()


@pytest.mark.parametrize("make_scheduler", [
    lambda o: S.LambdaLR(o, lambda s: 0.5 ** s),
    lambda o: S.CosineAnnealingLR(o, 10),
    lambda o: S.ChainedScheduler([S.StepLR(o, 1), S.ExponentialLR(o, 0.9)]),
], ids=["lambda", "cosine", "chained"])
def test_scheduler_of_other_group_count_is_refused(tmp_path, make_scheduler):
    net, state = _saved(tmp_path, make_scheduler)
    opt = torch.optim.SGD([{"params": net[0].parameters(), "lr": 0.01}, {"params": net[1].parameters()}],
                          lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match="saved for 1 parameter group, the optimizer now has 2"):
        restore(state, model=net, optimizer=opt, scheduler=make_scheduler(opt))


def test_scheduler_of_same_group_count_still_restores(tmp_path):
    make = lambda o: S.ChainedScheduler([S.StepLR(o, 1, 0.5), S.ExponentialLR(o, 0.9)])  # noqa: E731
    net, state = _saved(tmp_path, make)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = make(opt)
    restore(state, model=net, optimizer=opt, scheduler=sched)
    assert sched.get_last_lr() == state["scheduler"]["_last_lr"]

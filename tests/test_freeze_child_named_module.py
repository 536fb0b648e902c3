"""A model's own child called ``module`` is not a wrapper: its names are matched as they are."""

from __future__ import annotations

import torch
from torch import nn

from finetune.freeze import add_param_group_for, freeze, freeze_until, param_groups, unfreeze


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))  # a backbone attribute called 'module'
        self.head = nn.Linear(4, 2)


def test_patterns_under_a_child_named_module() -> None:
    net = Net()
    assert freeze(net, "module.*") == ["module.0.weight", "module.0.bias", "module.1.weight", "module.1.bias"]
    assert net.head.weight.requires_grad  # not frozen by 'module.*' read as '*'
    assert unfreeze(net, "module.0") == ["module.0.weight", "module.0.bias"]
    assert freeze_until(net, "module.1") == ["module.0.weight", "module.0.bias"]


def test_wrapper_prefixes_still_stripped_and_new_groups_added() -> None:
    net = Net()
    assert freeze(nn.DataParallel(net), "module.module.1") == ["module.1.weight", "module.1.bias"]
    assert freeze(nn.DataParallel(nn.Sequential(nn.Linear(2, 2))), "module.0") == ["0.weight", "0.bias"]
    opt = torch.optim.SGD(param_groups(net, 0.1), lr=0.1)
    added = add_param_group_for(opt, net, unfreeze(net, "module.1"), 0.1)
    assert added[0]["param_names"] == ["module.1.weight", "module.1.bias"]

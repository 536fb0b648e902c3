"""A model of one's own whose classifier is registered before its body (``self.head = nn.Linear``
first in ``__init__``): ``head_name`` gave the last Linear registered (a block's MLP), so a layer
decay gave the head the smallest learning rate and a linear probe trained a block instead."""

from __future__ import annotations

import torch
from torch import nn

from finetune import freeze_all_but, param_groups
from finetune.models import head_name


class HeadFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 10)
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16)) for _ in range(4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class FcFirstLayer(nn.Module):  # an MLP whose FIRST layer is called fc: not the head
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(x)))


def test_a_head_registered_first_is_the_head() -> None:
    model = HeadFirst()
    assert head_name(model) == "head"
    groups = param_groups(model, 1.0, layer_decay=0.5)
    lr = {g["name"]: g["lr"] for g in groups}
    assert lr["head"] == 1.0 and max(v for k, v in lr.items() if k != "head") == 0.5, lr
    freeze_all_but(model, head_name(model))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_a_first_layer_called_fc_is_not_the_head() -> None:
    assert head_name(FcFirstLayer()) == "out"

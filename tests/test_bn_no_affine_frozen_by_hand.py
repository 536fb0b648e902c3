"""A BatchNorm without affine parameters in a backbone frozen by hand (requires_grad_(False), then
apply_bn_policy as its docstring says): its statistics kept moving (mode 'train': it has no
parameter of its own to tell it is in a frozen part). Where it sits tells; unfreezing undoes it."""

from __future__ import annotations

import torch
from torch import nn

from finetune.freeze import apply_bn_policy


def test_bn_without_affine_after_a_frozen_layer_is_frozen_and_follows_unfreezing() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    m[0].requires_grad_(False)
    assert apply_bn_policy(m) == {"1": "frozen"}
    before = m[1].running_mean.clone()
    m.train()
    m(torch.randn(2, 3, 8, 8))
    assert torch.equal(m[1].running_mean, before)
    m[0].requires_grad_(True)
    assert apply_bn_policy(m) == {"1": "train"}
    m(torch.randn(2, 3, 8, 8))
    assert not torch.equal(m[1].running_mean, before)


def test_bn_without_affine_after_a_trainable_layer_trains() -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    m[3].requires_grad_(False)
    assert apply_bn_policy(m) == {"1": "train"}

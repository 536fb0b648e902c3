"""Freezing on models users build themselves: a module under two names, parametrized weights, spectral_norm."""

import torch
from torch import nn
from torch.nn.utils import parametrizations

from finetune.freeze import freeze, freeze_all_but, freeze_until, param_groups, unfreeze


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.shared = nn.Linear(4, 4)
        self.block_a = self.shared  # the same module, registered under a second name
        self.head = nn.Linear(4, 2)


def test_freeze_until_takes_the_second_name_of_a_shared_module() -> None:
    m = _Shared()
    assert freeze_until(m, "block_a") == ["body.weight", "body.bias"]  # freeze() already takes the name
    assert m.shared.weight.requires_grad and m.head.weight.requires_grad


def _parametrized() -> nn.Sequential:
    m = nn.Sequential()
    m.add_module("conv", parametrizations.weight_norm(nn.Conv2d(3, 4, 3)))
    m.add_module("flat", nn.Flatten())
    m.add_module("sn", parametrizations.spectral_norm(nn.Linear(4, 4)))
    m.add_module("fc", nn.Linear(4, 2))
    return m


def test_a_parametrized_weight_answers_to_its_plain_name() -> None:
    m = _parametrized()
    assert freeze(m, "conv.weight") == ["conv.parametrizations.weight.original0", "conv.parametrizations.weight.original1"]
    assert freeze(m, "sn.weight") == ["sn.parametrizations.weight.original"]
    assert unfreeze(m, "conv.weight.original1") == ["conv.parametrizations.weight.original1"]
    assert m.conv.bias.requires_grad and m.sn.bias.requires_grad
    groups = param_groups(m, 0.1, lr_mult={"conv.weight": 0.5})
    assert {g["name"]: g["param_names"] for g in groups}["conv.weight"] == ["conv.parametrizations.weight.original1"]


def test_spectral_norm_of_a_frozen_weight_keeps_its_power_iteration_buffers() -> None:
    torch.manual_seed(0)
    m = _parametrized()
    sn = m.sn.parametrizations.weight[0]
    x = torch.randn(2, 3, 3, 3)
    freeze_all_but(m, "fc")
    m.train()
    u, v, w = sn._u.clone(), sn._v.clone(), m.sn.weight.detach().clone()
    for _ in range(3):
        m(x)
    assert torch.equal(sn._u, u) and torch.equal(sn._v, v)  # moved in every train-mode forward before
    assert torch.equal(m.sn.weight, w)
    unfreeze(m, "sn")
    m.train()
    m(x)
    assert not torch.equal(sn._u, u)  # a trainable weight's power iteration runs again

"""A module of the user's own that holds the network (a LightningModule's ``self.model``,
``nn.Sequential(Normalize(), net)``): patterns that match nothing as written are tried under the
network it holds; a holder of two networks needs the full names (an error lists them)."""

from __future__ import annotations

import copy

import pytest
from torch import nn

from finetune.errors import ConfigError
from finetune.freeze import freeze, freeze_all_but, freeze_until, param_groups


def _net() -> nn.Module:
    net = nn.Sequential()
    net.add_module("stem", nn.Linear(4, 4))
    net.add_module("layer1", nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    net.add_module("layer2", nn.Sequential(nn.Linear(4, 4)))
    net.add_module("fc", nn.Linear(4, 2))
    return net


class Lit(nn.Module):  # as a LightningModule holds its network
    def __init__(self) -> None:
        super().__init__()
        self.model = _net()
        self.loss = nn.CrossEntropyLoss()


class Normalize(nn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize("make, prefix", [
    (Lit, "model."),
    (lambda: nn.Sequential(Normalize(), _net()), "1."),
    (lambda: nn.DataParallel(Lit()), "model."),
])
def test_patterns_reach_the_network_a_holder_wraps(make, prefix) -> None:
    m = make()
    assert freeze(m, "layer1") == [prefix + n for n in ("layer1.0.weight", "layer1.0.bias", "layer1.1.weight", "layer1.1.bias")]
    m = make()
    assert freeze_all_but(m, "fc") == [prefix + n for n in (
        "stem.weight", "stem.bias", "layer1.0.weight", "layer1.0.bias", "layer1.1.weight", "layer1.1.bias",
        "layer2.0.weight", "layer2.0.bias")]
    m = make()
    assert freeze_until(m, "layer2") == [prefix + n for n in (
        "stem.weight", "stem.bias", "layer1.0.weight", "layer1.0.bias", "layer1.1.weight", "layer1.1.bias")]
    groups = param_groups(m, 1.0, lr_mult={"fc": 0.5})
    assert [(g["name"], g["lr"], g["param_names"]) for g in groups] == [
        ("default", 1.0, [prefix + "layer2.0.weight", prefix + "layer2.0.bias"]),
        ("fc", 0.5, [prefix + "fc.weight", prefix + "fc.bias"]),
    ]


def test_a_holder_of_two_networks_needs_the_full_name() -> None:
    class TeacherStudent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = _net()
            self.ema = copy.deepcopy(self.model)

    m = TeacherStudent()
    with pytest.raises(ConfigError, match=r"did you mean: .*model\.layer1.*ema\.layer1|did you mean: .*ema\.layer1.*model\.layer1"):
        freeze(m, "layer1")
    assert all(p.requires_grad for p in m.parameters())
    assert freeze(m, "ema") and all(p.requires_grad for p in m.model.parameters())

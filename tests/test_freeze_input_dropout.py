"""A dropout registered before every parameter (input dropout) is not a frozen part of a trainable model (freezehunt)."""

from __future__ import annotations

import torch
from torch import nn

from finetune.freeze import freeze, freeze_all_but, set_bn_policy, unfreeze


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def test_input_dropout_stays_on_when_the_first_layer_trains():
    torch.manual_seed(0)
    x = torch.ones(4, 8)
    m = _net()
    set_bn_policy(m, "frozen")  # what finetune train does to every model
    m.train()
    assert not torch.equal(m(x), m(x))
    freeze(m)
    unfreeze(m)
    m.train()
    assert not torch.equal(m(x), m(x))
    freeze(m, "3")  # only the head frozen: the input dropout feeds a trainable layer
    m.train()
    assert not torch.equal(m(x), m(x))


def test_input_dropout_of_a_frozen_backbone_is_off_in_a_linear_probe():
    m = _net()
    freeze_all_but(m, "3")
    m.train()
    x = torch.ones(4, 8)
    assert torch.equal(m(x), m(x))


def test_timm_functional_head_dropout_is_off_in_a_linear_probe_and_back_after_unfreezing():
    # timm's ResNet/EfficientNet/MobileNetV3 drop out with F.dropout(x, self.drop_rate): no layer to switch off
    import finetune
    from finetune.models import head_names

    torch.manual_seed(0)
    m = finetune.create_model("timm:resnet18", 3, drop_rate=0.5)
    set_bn_policy(m, "frozen")
    x = torch.randn(2, 3, 32, 32)
    freeze_all_but(m, *head_names(m))
    m.train()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
    unfreeze(m, "layer4")
    m.train()
    with torch.no_grad():
        assert not torch.equal(m(x), m(x))
    assert m.drop_rate == 0.5

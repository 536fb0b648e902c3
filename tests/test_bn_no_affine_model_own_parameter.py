"""A parameter on the model itself (a frozen constant, a CLIP's trainable logit_scale) says nothing of where
a BatchNorm without affine parameters sits: modules() gives it before every layer."""

from __future__ import annotations

import torch
from torch import nn

from finetune.freeze import apply_bn_policy


class Net(nn.Module):
    def __init__(self, scale_trains: bool) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3, affine=False)  # the input's normalisation, its statistics from the data
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Flatten())
        self.head = nn.Linear(4 * 6 * 6, 2)
        self.scale = nn.Parameter(torch.ones(1), requires_grad=scale_trains)


def test_a_frozen_constant_on_the_model_does_not_freeze_the_statistics_of_a_trained_body() -> None:
    assert apply_bn_policy(Net(scale_trains=False)) == {"norm": "train", "body.1": "train"}  # norm was 'frozen'


def test_a_trainable_parameter_on_the_model_does_not_unfreeze_a_frozen_body() -> None:
    m = Net(scale_trains=True)
    m.body.requires_grad_(False)
    assert apply_bn_policy(m) == {"norm": "train", "body.1": "frozen"}  # body.1 was 'train': its statistics kept moving

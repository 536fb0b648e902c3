"""VGG's and AlexNet's `avgpool` pools to 7x7 / 6x6 whatever the image size: at a small --img-size it
upsamples a 1x1 or 2x2 map, so a CAM from it is flat (min-max scaled rounding noise). The layer chosen
is the last of `features` instead."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from finetune import class_activation_maps, find_cam_layer


def _vgg_like() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(16)),  # 32 px -> 2x2
        avgpool=nn.AdaptiveAvgPool2d(7), flatten=nn.Flatten(), classifier=nn.Linear(8 * 49, 3))).eval()


def test_cam_layer_is_not_a_pool_to_a_fixed_size() -> None:
    model, x = _vgg_like(), torch.randn(2, 3, 32, 32)
    assert find_cam_layer(model, x).name == "features"
    assert class_activation_maps(model, x).layer == "features"
    assert find_cam_layer(model, x, only="avgpool").name == "avgpool"  # asked for by name: still allowed


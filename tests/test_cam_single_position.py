"""CAM of a model whose feature maps are 1x1 at the image size (torchvision's vit_b_32 at 32 px): the error
says so, instead of sending the user to --layer, whose every choice is then refused with a stride it has."""

import pytest
import torch
from torch import nn

from finetune import FinetuneError, class_activation_maps


def _patch32() -> nn.Module:
    torch.manual_seed(0)  # one 32x32 patch: a 1x1 map at 32 px, 2x2 at 64 px
    return nn.Sequential(nn.Conv2d(3, 8, 32, stride=32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3)).eval()


def test_auto_layer_names_the_one_position_maps() -> None:
    with pytest.raises(FinetuneError, match=r"1x1 for 32x32 inputs.*larger"):
        class_activation_maps(_patch32(), torch.randn(1, 3, 32, 32), method="gradcam")
    assert class_activation_maps(_patch32(), torch.randn(1, 3, 64, 64), method="gradcam").maps.shape == (1, 64, 64)


def test_named_layer_with_one_position_says_so() -> None:
    with pytest.raises(FinetuneError, match=r"layer '0' outputs a 1x1 map for 32x32 images"):
        class_activation_maps(_patch32(), torch.randn(1, 3, 32, 32), method="gradcam", layer="0")

"""A module called twice in the forward pass (a shared activation): the layer CAM picks is
judged by its last call, the output a CAM hook on it captures."""

from __future__ import annotations

import torch
from torch import nn

from finetune.cam import class_activation_maps, find_cam_layer


class SharedAct(nn.Module):
    """conv (stride 8) -> act -> conv (stride 2) -> act (the same module) -> pool -> fc: on a 16 x 16
    image ``act`` outputs a 2 x 2 map first, then a 1 x 1 one (as timm's efficientvit_m0 at 64 px)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 8, stride=8)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 2, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv2(self.act(self.conv1(x))))).flatten(1))


def test_shared_module_is_judged_by_its_last_call() -> None:
    torch.manual_seed(0)
    model = SharedAct().eval()
    x = torch.randn(2, 3, 16, 16)
    assert find_cam_layer(model, x).name == "conv1"  # act's last output is 1 x 1: no map
    result = class_activation_maps(model, x, method="gradcam", classes=[0])
    assert result.layer == "conv1"
    assert tuple(result.maps.shape) == (2, 16, 16)
    eigen = class_activation_maps(model, x, method="eigencam")
    assert bool((eigen.maps.amax(dim=(1, 2)) > 0.99).all())  # a 2 x 2 map, not a constant 1 x 1 one scaled to 0

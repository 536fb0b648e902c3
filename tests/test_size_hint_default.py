"""The hint of a size error names a size the model takes: timm's own input size is among those
tried (timm's halonet_h1 takes multiples of 256 only: the hint said 512 "or more")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("timm")

from finetune.errors import ModelError
from finetune.models import check_input_size


class MultiplesOf256(nn.Module):  # as halonet_h1: its halo blocks assert the map divides by the block size
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.finetune_arch = "timm:halonet_h1"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % 256 == 0
        return self.fc(x.mean((2, 3)))


def test_hint_names_the_models_own_size_when_that_is_the_next_that_works() -> None:
    with pytest.raises(ModelError, match=r"use img_size=256 \(--img-size\), the size it was designed for$"):
        check_input_size(MultiplesOf256(), 32)

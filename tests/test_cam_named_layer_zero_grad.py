"""cam2: a named layer whose spatial gradient is zero is refused, not drawn as an empty map."""

from __future__ import annotations

import pytest
import torch

from finetune.cam import class_activation_maps
from finetune.errors import ConfigError


def test_a_named_layer_whose_spatial_gradient_is_zero_is_refused() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", depth=1, embed_dim=24, num_heads=2, img_size=32,
                            num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ConfigError, match="layer 'norm' does not reach the class score"):
        class_activation_maps(vit, x, layer="norm")  # the final norm: only the class token goes on
    assert class_activation_maps(vit, x, layer="blocks.0.norm1").maps.amax() > 0
    assert class_activation_maps(vit, x, method="eigencam", layer="norm").maps.amax() > 0  # no gradient: still a map


"""Swin at 32 px: its last stage is 1x1 (no map), so the layer CAM picks is the output of the stage
before, whose width (half the head's) is not the head's. The patch-merging norm at the start of that
stage happens to be as wide as the head (4 x its input's width): it must not be picked over the
stage's blocks, which come after it."""

from __future__ import annotations

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torchvision.models.swin_transformer import SwinTransformer as TorchvisionSwin

from finetune.cam import class_activation_maps, find_cam_layer

SMALL = {"embed_dim": 8, "depths": (1, 1, 2, 1), "num_heads": (1, 1, 1, 1), "num_classes": 3}


@pytest.mark.parametrize(("build", "layer"), [
    (lambda: SwinTransformer(img_size=32, window_size=7, **SMALL), "layers.2"),
    (lambda: SwinTransformerV2(img_size=32, window_size=8, **SMALL), "layers.2"),  # (was patch_embed.proj, 8x8)
    (lambda: TorchvisionSwin([4, 4], 8, [1, 1, 2, 1], [1, 1, 1, 1], [7, 7], num_classes=3), "features.5"),
])
def test_swin_at_32_px_picks_the_last_stage_with_a_map(build, layer: str) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model, x = build().eval(), torch.randn(2, 3, 32, 32)
    found = find_cam_layer(model, x)
    assert (found.name, found.layout.kind, found.layout.height, found.layout.width) == (layer, "nhwc", 2, 2)
    assert class_activation_maps(model, x, method="eigencam").layer == layer


def test_class_token_vit_still_picks_the_last_norm1_not_qkv() -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3).eval()
    found = find_cam_layer(vit, torch.randn(2, 3, 32, 32))
    assert (found.name, found.layout.kind, found.layout.prefix) == ("blocks.1.norm1", "tokens", 1)


def test_levit_head_width_is_read_through_its_norm_linear() -> None:
    """LeViT's head is a NormLinear (BatchNorm + Linear), not a Linear: the width filter was off and the pick at
    32 px was an attention's key/value projection inside the next stage's downsampling."""
    from timm.models.levit import Levit

    torch.manual_seed(0)
    levit = Levit(img_size=32, num_classes=3, embed_dim=(32, 48, 64), key_dim=8, depth=(1, 1, 1), num_heads=(2, 3, 4),
                  mlp_ratio=2.0, attn_ratio=2.0).eval()
    found = find_cam_layer(levit, torch.randn(2, 3, 32, 32))
    assert (found.name, found.layout.kind, found.layout.height) == ("stages.0", "tokens", 2)

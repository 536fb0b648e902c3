"""A window attention that pads a small map without masking the padding (timm's TinyViT at 32 px:
its last stage's 1x1 map padded to a 7x7 window) is not a feature map: the gradient reaches the
padding, but the padded positions hold one and the same vector; Grad-CAM of it put every map in
the image's top-left corner, whatever the image."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")

from finetune.cam import class_activation_maps
from finetune.models import create_model


def test_padding_filled_map_is_told_from_a_real_one() -> None:
    from finetune.cam import _padding_filled

    padded = torch.zeros(2, 8, 7, 7)
    padded[..., 0, 0] = torch.randn(2, 8)
    assert _padding_filled(padded)
    assert not _padding_filled(torch.randn(2, 8, 7, 7))
    assert not _padding_filled(torch.zeros(2, 8, 7, 7))  # a constant map: no corner that differs


def test_tiny_vit_at_32_px_maps_do_not_sit_in_the_corner() -> None:
    torch.manual_seed(0)
    model = create_model("timm:tiny_vit_5m_224", num_classes=3, img_size=32).eval()
    torch.manual_seed(0)
    result = class_activation_maps(model, torch.randn(1, 3, 32, 32), classes=[1])
    assert ".attn." not in result.layer  # not the padded window inside the last stage's attention
    peak = divmod(int(result.maps[0].argmax()), 32)
    assert peak != (0, 0)

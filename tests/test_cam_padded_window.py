"""DaViT at 32 px: its last stage is 1x1, and its window attention pads that map to the 7x7 window: the
padded tokens (N x 49 x C, as wide as the head) look like a 7x7 map, but only their top-left position is
the image's. CAM must not pick them (a map of one corner), but the last real map (2x2)."""

from __future__ import annotations

import torch
from timm.models.davit import DaVit

from finetune.cam import class_activation_maps, find_cam_layer


def test_davit_at_32_px_does_not_pick_a_padded_window() -> None:
    torch.manual_seed(0)
    model = DaVit(depths=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64), num_heads=(1, 1, 1, 1), num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    found = find_cam_layer(model, x)
    assert (found.layout.height, found.layout.width) == (2, 2), found
    maps = class_activation_maps(model, x, method="eigencam").maps
    assert bool((maps[:, 16:, 16:].amax(dim=(1, 2)) > 0).all())  # not a map of the top-left corner only


def test_a_map_reached_only_at_its_corner_is_still_found_when_no_other_is() -> None:
    from finetune import create_model

    torch.manual_seed(0)  # untrained: zero-initialised residual branches, stride-2 1x1 shortcuts read one corner
    model = create_model("timm:regnetx_002", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    found = find_cam_layer(model, x)
    assert (found.layout.height, found.layout.width) == (2, 2), found

"""A ViT built for a non-square image: its position embedding is resampled to the model's patch grid, as timm does."""

from __future__ import annotations

import pytest
import torch

from finetune.weights import load_weights

timm = pytest.importorskip("timm")


@pytest.mark.parametrize(("img_size", "kwargs"), [((64, 96), {}), ((32, 128), {}), ((64, 128), {}),
                                                  ((64, 96), {"reg_tokens": 4})])
def test_pos_embed_resampled_to_a_non_square_grid_as_timm_does(img_size: tuple[int, int], kwargs: dict) -> None:
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    file = timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=0, **kwargs).state_dict()
    model = timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=0, img_size=img_size, **kwargs)
    report = load_weights(model, file)
    grid = (img_size[0] // 16, img_size[1] // 16)
    expected = resample_abs_pos_embed(file["pos_embed"], grid, num_prefix_tokens=model.num_prefix_tokens)
    assert report.ok and [n for n, _ in report.adapted] == ["pos_embed"]
    assert f"14x14 -> {grid[0]}x{grid[1]}" in report.adapted[0][1] and "dropped" not in report.adapted[0][1]
    torch.testing.assert_close(model.pos_embed.detach(), expected)

"""camhunt: Eigen-CAM's sign on LayerNorm'd tokens, method 'cam' with a named layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune import create_model
from finetune.cam import _eigen_projection, class_activation_maps


def test_eigen_sign_does_not_follow_rounding_noise_on_layernorm_outputs() -> None:
    # a LayerNorm's output sums to 0 over the channels at every position: the channel-sum rule has nothing to go by
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        t = F.layer_norm(torch.randn(2, 16, 48, generator=g), (48,)).transpose(1, 2).reshape(2, 48, 4, 4)
        p = _eigen_projection(t)
        for k in range(4):
            noisy = t + 1e-7 * torch.randn(t.shape, generator=g)  # rounding-size changes only
            assert torch.allclose(_eigen_projection(noisy), p, atol=1e-3), (seed, k)


def test_eigencam_of_a_vit_is_stable_under_tiny_input_changes() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", depth=2, embed_dim=48, num_heads=2, img_size=64,
                            num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    a = class_activation_maps(vit, x, method="eigencam").maps
    b = class_activation_maps(vit, x * (1 + 1e-7), method="eigencam").maps
    assert (a - b).abs().max() < 1e-3


def test_method_cam_takes_the_gap_layer_by_name() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    named = class_activation_maps(model, x, method="cam", layer="layer4")
    assert named.layer == "layer4"
    assert torch.allclose(named.maps, class_activation_maps(model, x, method="gradcam", layer="layer4").maps, atol=1e-4)

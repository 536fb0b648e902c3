"""--drop-path on torchvision's Swin / MaxViT, whose builders pass their own stochastic_depth_prob (README:
"stochastic depth (convnext, efficientnet, swin, timm)")."""

import pytest
import torch
from torchvision.models.swin_transformer import _swin_transformer
from torchvision.ops import StochasticDepth

import finetune


def _rates(model):
    return [m.p for m in model.modules() if isinstance(m, StochasticDepth)]


def test_swin_t_takes_drop_path_as_its_own_argument_would():
    with torch.device("meta"):  # (the rates only: no weights needed)
        model = finetune.create_model("swin_t", num_classes=3, drop_path=0.3)
        want = _swin_transformer(patch_size=[4, 4], embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                                 window_size=[7, 7], stochastic_depth_prob=0.3, weights=None, progress=False,
                                 num_classes=3)
    assert _rates(model) == pytest.approx(_rates(want), abs=1e-12)
    assert max(_rates(model)) == pytest.approx(0.3)

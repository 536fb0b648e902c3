"""--dropout / --drop-path on a torchvision family whose class takes any keyword and ignores it
(ConvNeXt: no dropout; MobileNetV3: no stochastic depth) is an error, as for the families without it."""

import pytest
import torch

import finetune
from finetune.errors import ModelError


@pytest.mark.parametrize(("name", "kw", "flag"), [("convnext_tiny", {"drop_rate": 0.3}, "--dropout"),
                                                   ("mobilenet_v3_small", {"drop_path": 0.1}, "--drop-path")])
def test_ignored_drop_argument_is_an_error(name, kw, flag):
    with torch.device("meta"), pytest.raises(ModelError, match=f"{name} has no .* setting: leave out .*{flag}"):
        finetune.create_model(name, num_classes=3, **kw)


def test_the_families_that_have_them_still_build():
    with torch.device("meta"):
        finetune.create_model("convnext_tiny", num_classes=3, drop_path=0.1)
        finetune.create_model("mobilenet_v3_small", num_classes=3, drop_rate=0.3)


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_encoder_dropout_is_not_taken_for_head_dropout(name):
    # torchvision's `dropout` of ViT / Swin sits in every encoder block; --dropout promises the classifier's
    with torch.device("meta"), pytest.raises(ModelError, match="no dropout before the classifier"):
        finetune.create_model(name, num_classes=3, drop_rate=0.1)


def test_maxvit_takes_drop_path_and_refuses_dropout():
    from torchvision.ops import StochasticDepth

    with torch.device("meta"):
        model = finetune.create_model("maxvit_t", num_classes=3, drop_path=0.1)
        assert max(m.p for m in model.modules() if isinstance(m, StochasticDepth)) == pytest.approx(0.1)
        with pytest.raises(ModelError, match="maxvit_t has no dropout setting"):
            finetune.create_model("maxvit_t", num_classes=3, drop_rate=0.1, drop_path=0.1)

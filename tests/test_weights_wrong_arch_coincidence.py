"""Issue #3: a file of another architecture is refused, not loaded through a tensor whose shape fits by chance."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import finetune
from finetune.errors import NothingMatchedError


@pytest.mark.parametrize("mode", ["skip", "adapt"])
def test_other_architecture_is_not_loaded_through_a_coincidental_bias(tmp_path, mode):
    # a ViT's patch_embed.proj.bias (64,) fits squeezenet's features.3.expand3x3.bias (64,) by shape alone
    torch.save(timm.create_model("test_vit").state_dict(), tmp_path / "vit.pth")
    model = torchvision.models.squeezenet1_1(num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NothingMatchedError, match="wrong architecture"):
        finetune.load_weights(model, tmp_path / "vit.pth", shape_mismatch=mode)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_renamed_encoder_still_aligns(tmp_path):
    src = torchvision.models.squeezenet1_1(num_classes=5)
    sd = {"encoder." + k: v for k, v in src.state_dict().items()}

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torchvision.models.squeezenet1_1(num_classes=5)

    dst = Holder()
    report = finetune.load_weights(dst, sd)
    assert report.ok and len(report.loaded) == len(sd)
    assert torch.equal(dst.backbone.features[0].weight, src.features[0].weight)

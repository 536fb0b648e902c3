"""Hugging Face transformers' ConvNeXt V2 files load into timm's convnextv2_* models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch

from conftest import assert_loads_exactly, transformers_folder

# timm -> transformers' ConvNextV2ForImageClassification (facebook/convnextv2-tiny-1k-224), as modeling_convnextv2.py
# names them: 'convnextv2.' before the network, pwconv1/2 Linear layers, GRN weight / bias of shape 1x1x1xC
_TO_HF = [
    (r"^stem\.0\.", "convnextv2.embeddings.patch_embeddings."),
    (r"^stem\.1\.", "convnextv2.embeddings.layernorm."),
    (r"^stages\.(\d+)\.downsample\.(\d)\.", r"convnextv2.encoder.stages.\1.downsampling_layer.\2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"convnextv2.encoder.stages.\1.layers.\2.dwconv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.", r"convnextv2.encoder.stages.\1.layers.\2.layernorm."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.", r"convnextv2.encoder.stages.\1.layers.\2.pwconv\3."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.", r"convnextv2.encoder.stages.\1.layers.\2.grn."),
    (r"^head\.norm\.", "convnextv2.layernorm."), (r"^head\.fc\.", "classifier."),
]


def _convnextv2_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        name = next(re.sub(rx, to, k) for rx, to in _TO_HF if re.match(rx, k))
        if ".grn." in name:
            v = v.reshape(1, 1, 1, -1)
        elif re.search(r"\.pwconv[12]\.weight$", name):
            v = v.reshape(v.shape[0], v.shape[1])  # (a Linear in transformers, a 1x1 conv in timm's atto ... nano)
        out[name] = v.clone()
    return out


@pytest.mark.parametrize("kwargs", [{}, {"conv_mlp": False}])  # (atto's 1x1 conv MLP, as timm builds it; Linear layers)
def test_a_transformers_convnextv2_folder_loads_into_timm_convnextv2(tmp_path: Path, kwargs: dict) -> None:
    torch.manual_seed(0)
    source = timm.create_model("convnextv2_atto", num_classes=5, depths=(1, 1, 1, 1), **kwargs).eval()
    for name, p in source.named_parameters():  # (GRN starts at zero: random, so that it counts in the logits)
        if ".grn." in name:
            p.data.normal_()
    hf = _convnextv2_to_hf(source.state_dict())
    assert hf["convnextv2.encoder.stages.0.layers.0.grn.weight"].shape == (1, 1, 1, 160)
    folder = transformers_folder(tmp_path / "hf", hf, {"architectures": ["ConvNextV2ForImageClassification"],
                                                       "model_type": "convnextv2", "depths": [1, 1, 1, 1],
                                                       "hidden_sizes": [40, 80, 160, 320], "patch_size": 4, "num_stages": 4})

    target = timm.create_model("convnextv2_atto", num_classes=5, depths=(1, 1, 1, 1), **kwargs).eval()
    assert_loads_exactly(source, target, folder, "ConvNeXtV2")

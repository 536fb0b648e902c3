"""Hugging Face transformers' RegNet files load into timm's regnetx_* / regnety_* models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch

import finetune
from conftest import assert_loads_exactly, transformers_folder
from finetune.models import weights_architecture


def _regnet_to_hf(sd: dict[str, torch.Tensor], prefix: str = "regnet.") -> dict[str, torch.Tensor]:
    """timm regnet names as transformers' RegNetForImageClassification saves them (facebook/regnet-y-040; its
    convert_regnet_to_pytorch.py copies timm's modules in order): the stem as embedder.embedder, block bM of
    stage sN as encoder.stages.N-1.layers.M-1, its convs as layer.0 / layer.1 / last layer, a Y block's
    squeeze-excite as layer.2.attention.0 / .2, the shortcut as shortcut, the head as classifier.1."""
    out = {}
    layer = (0, 1, 3 if any(".se." in n for n in sd) else 2)  # (conv1-3; a Y block's SE is between the 2nd and 3rd)
    for k, v in sd.items():
        if k.startswith("head.fc."):
            out[k.replace("head.fc.", "classifier.1.")] = v
            continue
        k = re.sub(r"^stem\.conv\.", "embedder.embedder.convolution.", k)
        k = re.sub(r"^stem\.bn\.", "embedder.embedder.normalization.", k)
        k = re.sub(r"^s(\d)\.b(\d+)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{int(m[2]) - 1}.", k)
        k = re.sub(r"\.downsample\.conv\.", ".shortcut.convolution.", k)
        k = re.sub(r"\.downsample\.bn\.", ".shortcut.normalization.", k)
        k = re.sub(r"\.se\.fc1\.", ".layer.2.attention.0.", k)
        k = re.sub(r"\.se\.fc2\.", ".layer.2.attention.2.", k)
        k = re.sub(r"\.conv(\d)\.(conv|bn)\.", lambda m: f".layer.{layer[int(m[1]) - 1]}."
                   f"{dict(conv='convolution', bn='normalization')[m[2]]}.", k)
        out[prefix + k] = v
    return out


@pytest.mark.parametrize(("arch", "config"), [
    ("regnety_002", {"layer_type": "y", "depths": [1, 1, 4, 7], "hidden_sizes": [24, 56, 152, 368], "groups_width": 8}),
    ("regnetx_002", {"layer_type": "x", "depths": [1, 1, 4, 7], "hidden_sizes": [24, 56, 152, 368], "groups_width": 8}),
])
def test_a_transformers_regnet_folder_loads_into_timm_regnet(tmp_path: Path, arch: str, config: dict) -> None:
    torch.manual_seed(0)
    source = timm.create_model(arch, num_classes=5).eval()
    with torch.no_grad():  # (BatchNorm's statistics and the zero-initialised last BN not at their defaults)
        for name, t in source.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.1)
    config = {"architectures": ["RegNetForImageClassification"], "model_type": "regnet", "embedding_size": 32,
              "hidden_act": "relu", "downsample_in_first_stage": True, **config}
    folder = transformers_folder(tmp_path / "hf", _regnet_to_hf(source.state_dict()), config)

    target = timm.create_model(arch, num_classes=5).eval()
    assert_loads_exactly(source, target, folder, "RegNet")
    assert weights_architecture(str(folder)) == (
        "RegNetForImageClassification (model_type regnet)", f"timm:{arch}")


def test_a_transformers_regnet_model_file_without_prefix_is_told_from_a_resnet(tmp_path: Path) -> None:
    """RegNetModel (facebook/regnet-y-320-seer) saves no prefix, as ResNetModel does, under the same stem name:
    a 3x3 stem is RegNet's (ResNet's is 7x7), the file loads into timm's regnety_*."""
    torch.manual_seed(0)
    source = timm.create_model("regnety_002", num_classes=0).eval()
    folder = transformers_folder(tmp_path / "hf", _regnet_to_hf(source.state_dict(), prefix=""),
                                 {"architectures": ["RegNetModel"], "model_type": "regnet"})
    target = timm.create_model("regnety_002", num_classes=0).eval()
    report = finetune.load_weights(target, folder, strict=True)
    assert report.ok and len(report.loaded) == len(target.state_dict()), report
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_a_transformers_regnet_config_names_no_timm_model_when_its_sizes_are_not_timms() -> None:
    from finetune.models import _transformers_timm_model

    y040 = {"model_type": "regnet", "layer_type": "y", "depths": [2, 6, 12, 2], "hidden_sizes": [128, 192, 512, 1088],
            "groups_width": 64, "embedding_size": 32, "hidden_act": "relu", "downsample_in_first_stage": True}
    assert _transformers_timm_model(y040) == "timm:regnety_040"
    assert _transformers_timm_model({**y040, "layer_type": "x"}) is None  # (no regnetx_* of these sizes)
    assert _transformers_timm_model({**y040, "hidden_act": "silu"}) is None
    assert _transformers_timm_model({**y040, "groups_width": 32}) is None
    seer = {"model_type": "regnet", "layer_type": "y", "depths": [3, 7, 16, 1], "hidden_sizes": [640, 1696, 2544, 5088],
            "groups_width": 640}  # (regnet-y-2560-seer: not timm's regnety_2560)
    assert _transformers_timm_model(seer) is None

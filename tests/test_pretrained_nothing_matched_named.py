"""A transformers folder of another architecture whose tensors fit none of the model's (a ViT's into resnet18, the
default --model; a ViT-Base's into a ViT-Small): the refusal names the --model its config.json builds, as it does
where a few tensors fit (was: "0 of N tensors match ... use rename={regex: replacement}", no --model named)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

from conftest import transformers_folder
from finetune.config import TrainConfig
from finetune.errors import WeightsError
from finetune.train import build_model

VIT_BASE = {"architectures": ["ViTForImageClassification"], "model_type": "vit", "hidden_size": 768,  # google/vit-base-patch16-224
            "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "patch_size": 16,
            "image_size": 224, "hidden_act": "gelu", "num_channels": 3}


@pytest.mark.parametrize(("model", "said"), [
    ("resnet18", "0 of 2 tensors match"),  # (no name in common)
    ("timm:vit_tiny_patch16_224", "all 2 matching names have other shapes"),  # (its names, another width)
])
def test_a_file_that_fits_nothing_names_the_model_its_config_builds(tmp_path: Path, model: str, said: str) -> None:
    folder = transformers_folder(tmp_path / "vit", {"cls_token": torch.zeros(1, 1, 768), "norm.weight": torch.ones(768)},
                                 VIT_BASE)
    cfg = TrainConfig(model=model, pretrained=str(folder), img_size=32)
    with pytest.raises(WeightsError, match=said) as e:
        build_model(cfg, 2, torch.device("cpu"), quiet=True)
    assert "its config.json says ViTForImageClassification (model_type vit): --model timm:vit_base_patch16_224 builds that" in str(e.value)


def test_nothing_matched_says_what_renames_them_from_the_command_line_too() -> None:
    """The CLI has no rename={...}: the message names convert's --strip-prefix beside the Python argument."""
    from finetune import load_weights

    with pytest.raises(WeightsError, match=r"0 of 1 tensors match.*--strip-prefix PREFIX.*rename=\{regex: replacement\}"):
        load_weights(torch.nn.Linear(2, 2), {"a.b": torch.zeros(3)})

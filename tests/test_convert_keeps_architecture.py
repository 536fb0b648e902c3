"""`finetune convert` of a transformers (or timm) folder to .safetensors records the architecture its config.json
names in the file's metadata, so `--pretrained converted.safetensors` with another --model is refused naming it and
the --model that builds it, as `--pretrained FOLDER` is (was: the converted file, away from the folder, named none)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

from conftest import transformers_folder
from finetune.config import TrainConfig
from finetune.errors import WeightsError
from finetune.train import build_model
from finetune.weights import convert, inspect_checkpoint

VIT_BASE = {"architectures": ["ViTForImageClassification"], "model_type": "vit", "hidden_size": 768,  # google/vit-base-patch16-224
            "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "patch_size": 16,
            "image_size": 224, "hidden_act": "gelu", "num_channels": 3}
SAID = "ViTForImageClassification (model_type vit): --model timm:vit_base_patch16_224 builds that"


def test_a_converted_file_names_its_architecture_when_refused(tmp_path: Path) -> None:
    folder = transformers_folder(tmp_path / "vit", {"cls_token": torch.zeros(1, 1, 768), "norm.weight": torch.ones(768)},
                                 VIT_BASE)
    once = convert(folder, tmp_path / "elsewhere" / "vit.safetensors")
    twice = convert(once, tmp_path / "again" / "vit-half.safetensors", half=True)  # (kept by a second convert)
    for path in (once, twice):
        meta = inspect_checkpoint(path)["metadata"]["safetensors_metadata"]
        assert meta["architecture"] == "ViTForImageClassification (model_type vit)"
        assert meta["architecture_model"] == "timm:vit_base_patch16_224"
        with pytest.raises(WeightsError, match="0 of 2 tensors match") as e:
            build_model(TrainConfig(model="resnet18", pretrained=str(path), img_size=32), 2, torch.device("cpu"),
                        quiet=True)
        assert f"its metadata (from the config.json it was converted from) says {SAID}" in str(e.value)


def test_a_pt_file_says_nothing_new(tmp_path: Path) -> None:
    folder = transformers_folder(tmp_path / "vit", {"norm.weight": torch.ones(768)}, VIT_BASE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no input settings in this folder: nothing to warn about)
        out = convert(folder, tmp_path / "vit.pt")
    assert set(torch.load(out, weights_only=True)) == {"norm.weight"}

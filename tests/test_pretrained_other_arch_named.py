"""Another architecture's weights given as --pretrained: the refusal names the architecture the weights'
config.json says (transformers' architectures / model_type, timm's architecture) and the --model that builds
it where that is plain (was: "it looks like weights of another architecture", nothing more)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from finetune.config import TrainConfig
from finetune.errors import WeightsError
from finetune.models import create_model
from finetune.train import check_pretrained_fit
from finetune.weights import LoadReport

# microsoft/resnet-50's config.json (save_pretrained; id2label cut to two classes)
TRANSFORMERS_RESNET50 = {
    "architectures": ["ResNetForImageClassification"], "depths": [3, 4, 6, 3], "downsample_in_bottleneck": False,
    "downsample_in_first_stage": False, "embedding_size": 64, "hidden_act": "relu",
    "hidden_sizes": [256, 512, 1024, 2048], "id2label": {"0": "tench", "1": "goldfish"},
    "label2id": {"tench": 0, "goldfish": 1}, "layer_type": "bottleneck", "model_type": "resnet", "num_channels": 3,
    "out_features": ["stage4"], "out_indices": [4], "stage_names": ["stem", "stage1", "stage2", "stage3", "stage4"],
    "torch_dtype": "float32", "transformers_version": "4.40.0"}
# timm/resnet50.a1_in1k's config.json (push_to_hub)
TIMM_RESNET50 = {
    "architecture": "resnet50", "num_classes": 1000, "num_features": 2048, "global_pool": "avg", "pretrained_cfg": {
        "tag": "a1_in1k", "custom_load": False, "input_size": [3, 224, 224], "test_input_size": [3, 288, 288],
        "fixed_input_size": False, "interpolation": "bicubic", "crop_pct": 0.95, "test_crop_pct": 1.0,
        "crop_mode": "center", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000,
        "pool_size": [7, 7], "first_conv": "conv1", "classifier": "fc"}}

# facebook/convnext-tiny-224's config.json (the fields that say which network; id2label left out)
CONVNEXT_TINY = {
    "architectures": ["ConvNextForImageClassification"], "model_type": "convnext", "depths": [3, 3, 9, 3],
    "hidden_sizes": [96, 192, 384, 768], "patch_size": 4, "num_stages": 4, "layer_scale_init_value": 1e-6,
    "hidden_act": "gelu", "num_channels": 3}


model_of = functools.cache(lambda name: create_model(name, num_classes=2))


def refusal(pretrained: Path, model: str = "resnet18") -> str:
    """The error check_pretrained_fit gives for a file that loads 3 of the model's tensors."""
    m = model_of(model)
    names = [n for n in m.state_dict() if not n.startswith("fc.")]
    report = LoadReport(source=str(pretrained), loaded=names[:3], missing=names[3:])
    with pytest.raises(WeightsError, match="another architecture") as e:
        check_pretrained_fit(m, report, TrainConfig(model=model, pretrained=str(pretrained)))
    return str(e.value)


@pytest.mark.parametrize(("config", "said"), [
    (TRANSFORMERS_RESNET50, ("its config.json says ResNetForImageClassification (model_type resnet): "
                             "--model resnet50 builds that;")),
    (TIMM_RESNET50, "its config.json says timm architecture resnet50: --model timm:resnet50 builds that;"),
    (CONVNEXT_TINY, ("its config.json says ConvNextForImageClassification (model_type convnext): "
                     "--model timm:convnext_tiny builds that;")),
])
def test_the_refusal_names_the_architecture(tmp_path: Path, config: dict, said: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config, indent=2))
    for pretrained in (tmp_path, tmp_path / "model.safetensors"):  # the folder, or its weights file
        assert said in refusal(pretrained), refusal(pretrained)


def test_no_suggestion_of_the_model_itself_nor_without_a_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**TIMM_RESNET50, "architecture": "resnet18"}))
    assert "says timm architecture resnet18;" in refusal(tmp_path, "timm:resnet18")  # (what it is: no --model)
    vit = {"architectures": ["ViTForImageClassification"], "model_type": "vit", "hidden_size": 768}
    (tmp_path / "config.json").write_text(json.dumps(vit))
    assert "says ViTForImageClassification (model_type vit);" in refusal(tmp_path)
    (tmp_path / "config.json").unlink()
    assert "config.json" not in refusal(tmp_path)

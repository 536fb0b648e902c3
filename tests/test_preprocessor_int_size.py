"""A transformers preprocessor_config.json whose ``size`` is a number (older files, the hub's google/vit-*)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.weights.formats import image_processor_cfg


@pytest.mark.parametrize(("processor", "expected"), [
    ({"feature_extractor_type": "ViTFeatureExtractor", "resample": 2, "size": 224},  # google/vit-base-patch16-224's
     (224, 1.0, "bilinear", "squash")),
    ({"crop_size": 224, "do_center_crop": True, "feature_extractor_type": "DeiTFeatureExtractor", "resample": 3,
      "size": 256}, (224, 0.875, "bicubic", "squash")),  # facebook/deit-*'s: 256x256, then the centre 224
    ({"crop_pct": 0.875, "feature_extractor_type": "ConvNextFeatureExtractor", "resample": 3, "size": 224},
     (224, 0.875, "bicubic", "center")),  # microsoft/resnet-50's: the shorter side, then the crop
])
def test_a_number_as_size_is_read_as_transformers_reads_it(tmp_path: Path, processor: dict, expected: tuple) -> None:
    """ViT's / DeiT's processors read a number as a square (was read as the shorter side: a centre crop
    of a non-square image instead of the squash the weights were trained with)."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    cfg = image_processor_cfg(tmp_path)
    assert (cfg.input_size[1], cfg.crop_pct, cfg.interpolation, cfg.crop_mode) == expected


@pytest.mark.parametrize(("model_type", "mode"), [("vit", "squash"), ("beit", "squash"), ("convnext", "center")])
def test_a_number_as_size_without_a_processor_named_follows_the_model_type(tmp_path: Path, model_type: str,
                                                                           mode: str) -> None:
    """A preprocessor_config.json naming no processor: transformers picks it from config.json's model_type
    (ViT's, BEiT's: a square); it was read as the shorter side whatever the model."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": 224, "resample": 2}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert image_processor_cfg(tmp_path).crop_mode == mode

def test_do_normalize_false_is_no_normalisation(tmp_path: Path) -> None:
    """A processor that does not normalise still lists image_mean / image_std (transformers writes every
    attribute): the model was trained on the 0-1 pixels (was normalised with the listed mean/std)."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": False, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "ViTImageProcessor", "resample": 2, "size": {"height": 224, "width": 224}}))
    cfg = image_processor_cfg(tmp_path)
    assert (cfg.mean, cfg.std) == ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])

"""`finetune convert` of a timm hub / transformers folder keeps the folder's input settings (size, crop,
interpolation, mean/std) in the converted file's metadata, as a run's best.safetensors records them, so
`--pretrained converted.safetensors` trains with the input `--pretrained FOLDER` would (was: the model's defaults)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from finetune.config import TrainConfig
from finetune.models import normalization
from finetune.weights import convert, inspect_checkpoint

LABELS = {"0": "cat", "1": "dog"}


def transformers_folder(folder: Path) -> Path:
    """microsoft/resnet-18's layout (save_pretrained), with input settings unlike the defaults."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["ResNetForImageClassification"], "depths": [2, 2, 2, 2], "downsample_in_first_stage": False,
        "embedding_size": 64, "hidden_act": "relu", "hidden_sizes": [64, 128, 256, 512], "id2label": LABELS,
        "label2id": {"cat": 0, "dog": 1}, "layer_type": "basic", "model_type": "resnet", "num_channels": 3,
        "torch_dtype": "float32", "transformers_version": "4.40.0"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_pct": 0.875, "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "ConvNextImageProcessor", "image_std": [0.25, 0.25, 0.25], "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 64}}))
    save_file({"classifier.1.weight": torch.zeros(2, 512)}, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def timm_folder(folder: Path) -> Path:
    """timm's save_for_hf / push_to_hub layout (timm/resnet18.a1_in1k's config.json, other settings)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architecture": "resnet18", "num_classes": 2, "num_features": 512, "global_pool": "avg",
        "label_names": ["cat", "dog"], "pretrained_cfg": {
            "tag": "a1_in1k", "custom_load": False, "input_size": [3, 48, 48], "test_input_size": [3, 64, 64],
            "fixed_input_size": False, "interpolation": "bicubic", "crop_pct": 0.95, "test_crop_pct": 1.0,
            "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "num_classes": 2,
            "pool_size": [2, 2], "first_conv": "conv1", "classifier": "fc"}}))
    save_file({"fc.weight": torch.zeros(2, 512)}, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize(("make", "model", "expected"), [
    (transformers_folder, "resnet18", (64, 0.875, "bicubic", "center")),
    (timm_folder, "timm:resnet18", (48, 0.95, "bicubic", "center")),
])
def test_converted_file_keeps_the_folders_input_settings(tmp_path: Path, make, model: str, expected: tuple) -> None:
    folder = make(tmp_path / "weights")
    out = convert(folder, tmp_path / "converted.safetensors")
    for source in (folder, out):  # the converted file gives what the folder gives
        cfg = TrainConfig(data=str(tmp_path), model=model, pretrained=str(source)).resolved()
        assert (cfg.img_size, cfg.crop_pct, cfg.interpolation, cfg.crop_mode) == expected, source
        assert normalization(model, str(source)) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), source
    meta = inspect_checkpoint(out)["metadata"]["safetensors_metadata"]  # `finetune inspect` shows them
    assert meta["format"] == "pt" and meta["img_size"] == str(expected[0]) and json.loads(meta["std"]) == [0.25] * 3


def test_a_pt_file_says_the_settings_are_left_out(tmp_path: Path) -> None:
    folder = timm_folder(tmp_path / "weights")
    with pytest.warns(UserWarning, match=r"input settings \(img_size 48.*not written to .*\.pt.*\.safetensors"):
        convert(folder, tmp_path / "converted.pt")


def test_weights_without_settings_get_none(tmp_path: Path) -> None:
    save_file({"fc.weight": torch.zeros(2, 512)}, tmp_path / "w.safetensors")
    out = convert(tmp_path / "w.safetensors", tmp_path / "out" / "converted.safetensors")
    assert set(inspect_checkpoint(out)["metadata"]["safetensors_metadata"]) == {"format", "source_format"}
    cfg = TrainConfig(data=str(tmp_path), model="resnet18", pretrained=str(out)).resolved()
    assert (cfg.img_size, cfg.crop_pct, cfg.interpolation) == (224, 0.875, "bilinear")

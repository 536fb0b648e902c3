"""Hugging Face transformers' EfficientNet files load into timm's tf_efficientnet_b* models."""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch

from conftest import assert_loads_exactly, transformers_folder
from finetune.models import weights_architecture


def _efficientnet_to_hf(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm tf_efficientnet names as transformers' EfficientNetForImageClassification saves them (google/efficientnet-b0,
    from Keras' block1a, block2a, block2b, …): the blocks numbered through, not by stage; a block's expand / depthwise /
    squeeze-excite / project layers under expansion / depthwise_conv / squeeze_excite / projection."""
    flat = {f"{s}.{i}": str(n) for n, (s, i) in enumerate(
        (s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage)))}
    out = {}
    for k, v in model.state_dict().items():
        if m := re.match(r"blocks\.(\d+\.\d+)\.(\w+(?:\.\w+)?)\.(\w+)$", k):
            expands = hasattr(model.blocks[int(m[1].split(".")[0])][int(m[1].split(".")[1])], "conv_pwl")
            layer = ({"conv_pw": "expansion.expand_conv", "bn1": "expansion.expand_bn", "bn2": "depthwise_conv.depthwise_norm",
                      "conv_pwl": "projection.project_conv", "bn3": "projection.project_bn"} if expands else
                     {"bn1": "depthwise_conv.depthwise_norm", "conv_pw": "projection.project_conv",
                      "bn2": "projection.project_bn"}).get(m[2]) or {
                "conv_dw": "depthwise_conv.depthwise_conv", "se.conv_reduce": "squeeze_excite.reduce",
                "se.conv_expand": "squeeze_excite.expand"}[m[2]]
            k = f"efficientnet.encoder.blocks.{flat[m[1]]}.{layer}.{m[3]}"
        else:
            k = re.sub(r"^conv_stem\.", "efficientnet.embeddings.convolution.", k)
            k = re.sub(r"^bn1\.", "efficientnet.embeddings.batchnorm.", k)
            k = re.sub(r"^conv_head\.", "efficientnet.encoder.top_conv.", k)
            k = re.sub(r"^bn2\.", "efficientnet.encoder.top_bn.", k)
        out[k] = v
    return out


def test_a_transformers_efficientnet_folder_loads_into_timm_tf_efficientnet(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("tf_efficientnet_b0", num_classes=5).eval()
    with torch.no_grad():  # (BatchNorm's statistics not at their defaults: a mix-up would show)
        for name, t in source.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.1)
    hf = _efficientnet_to_hf(source)
    assert "efficientnet.encoder.blocks.15.projection.project_conv.weight" in hf  # (b0: 16 blocks, numbered through)
    folder = transformers_folder(tmp_path / "hf", hf, {
        "architectures": ["EfficientNetForImageClassification"], "model_type": "efficientnet", "width_coefficient": 1.0,
        "depth_coefficient": 1.0, "image_size": 224, "hidden_dim": 1280, "depthwise_padding": [], "hidden_act": "swish",
        "batch_norm_eps": 0.001, "squeeze_expansion_ratio": 0.25, "num_channels": 3, "depth_divisor": 8,
        "kernel_sizes": [3, 3, 5, 3, 5, 5, 3], "in_channels": [32, 16, 24, 40, 80, 112, 192],
        "out_channels": [16, 24, 40, 80, 112, 192, 320], "strides": [1, 2, 2, 2, 1, 2, 1],
        "num_block_repeats": [1, 2, 2, 3, 3, 4, 1], "expand_ratios": [1, 6, 6, 6, 6, 6, 6]})

    target = timm.create_model("tf_efficientnet_b0", num_classes=5).eval()
    assert_loads_exactly(source, target, folder, "EfficientNet")
    assert weights_architecture(str(folder)) == (
        "EfficientNetForImageClassification (model_type efficientnet)", "timm:tf_efficientnet_b0")


def test_an_efficientnet_image_processor_divides_by_its_std_twice(tmp_path: Path) -> None:
    """google/efficientnet-*'s EfficientNetImageProcessor normalises with image_std and then, include_top (on by
    default), divides by image_std again (Keras' EfficientNet did): the input settings' std is image_std squared."""
    import json

    from finetune.weights.formats import image_processor_cfg

    std = [0.47853944, 0.4732864, 0.47434163]
    processor = {"image_processor_type": "EfficientNetImageProcessor", "size": {"height": 224, "width": 224},
                 "resample": 0, "do_center_crop": False, "image_mean": [0.485, 0.456, 0.406], "image_std": std,
                 "do_normalize": True, "do_rescale": True, "rescale_offset": False}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    assert image_processor_cfg(tmp_path).std == [s * s for s in std]  # (about ImageNet's 0.229, 0.224, 0.225)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**processor, "include_top": False}))
    assert image_processor_cfg(tmp_path).std == std

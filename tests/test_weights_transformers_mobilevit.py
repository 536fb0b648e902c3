"""Hugging Face transformers' MobileViT files (MobileViTForImageClassification, apple/mobilevit-*) load into timm's
mobilevit_* models (was: their names left as they are, nothing loaded)."""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch

from conftest import assert_loads_exactly, split_qkv, transformers_folder
from finetune.models import weights_architecture

CONVS = {"conv1_1x1": "expand_1x1", "conv2_kxk": "conv_3x3", "conv3_1x1": "reduce_1x1", "conv_kxk": "conv_kxk",
         "conv_proj": "conv_projection", "conv_fusion": "fusion"}
LAYERS = {"conv": "convolution", "bn": "normalization"}
TRANSFORMER = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
               "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
#: apple/mobilevit-xx-small's config.json (as transformers' save_pretrained writes it)
XXS = {"architectures": ["MobileViTForImageClassification"], "model_type": "mobilevit", "num_channels": 3,
       "image_size": 256, "patch_size": 2, "hidden_sizes": [64, 80, 96], "neck_hidden_sizes": [16, 16, 24, 48, 64, 80, 320],
       "num_attention_heads": 4, "mlp_ratio": 2.0, "expand_ratio": 2.0, "hidden_act": "silu", "conv_kernel_size": 3,
       "output_stride": 32, "hidden_dropout_prob": 0.05, "attention_probs_dropout_prob": 0.0,
       "classifier_dropout_prob": 0.1, "initializer_range": 0.02, "layer_norm_eps": 1e-05, "qkv_bias": True}


def _mobilevit_to_hf(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm mobilevit names as transformers' MobileViTForImageClassification saves them: stages 0-1's inverted
    residuals as encoder.layer.N.layer.M, stages 2-4's first as encoder.layer.N.downsampling_layer and their MobileViT
    block's layers directly under encoder.layer.N, the transformer's qkv as query / key / value."""
    out = {}
    for k, v in model.state_dict().items():
        if m := re.match(r"stages\.(\d)\.1\.transformer\.(\d+)\.attn\.qkv\.(weight|bias)$", k):
            split_qkv(out, f"mobilevit.encoder.layer.{m[1]}.transformer.layer.{m[2]}.attention.attention.{{}}.{m[3]}", v)
            continue
        if m := re.match(r"stages\.(\d)\.1\.transformer\.(\d+)\.(\w+(?:\.fc\d|\.proj)?)\.(weight|bias)$", k):
            k = f"mobilevit.encoder.layer.{m[1]}.transformer.layer.{m[2]}.{TRANSFORMER[m[3]]}.{m[4]}"
        elif m := re.match(r"stages\.(\d)\.(\d+)\.(\w+)\.(conv|bn)\.(\w+)$", k):
            s, b = int(m[1]), m[2]
            where = f"layer.{b}" if s < 2 else "downsampling_layer" if b == "0" else None
            k = ".".join(p for p in ("mobilevit.encoder.layer", m[1], where, CONVS[m[3]], LAYERS[m[4]], m[5]) if p)
        elif m := re.match(r"stages\.(\d)\.1\.(conv_1x1|norm)\.(\w+)$", k):
            k = f"mobilevit.encoder.layer.{m[1]}.{'conv_1x1.convolution' if m[2] == 'conv_1x1' else 'layernorm'}.{m[3]}"
        else:
            k = re.sub(r"^stem\.(conv|bn)\.", lambda m: f"mobilevit.conv_stem.{LAYERS[m[1]]}.", k)
            k = re.sub(r"^final_conv\.(conv|bn)\.", lambda m: f"mobilevit.conv_1x1_exp.{LAYERS[m[1]]}.", k)
            k = re.sub(r"^head\.fc\.", "classifier.", k)
        out[k] = v.clone()
    return out


def test_a_transformers_mobilevit_folder_loads_into_timm_mobilevit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("mobilevit_xxs", num_classes=5).eval()
    with torch.no_grad():  # (BatchNorm's statistics not at their defaults: a mix-up would show)
        for name, t in source.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.1)
    hf = _mobilevit_to_hf(source)
    for name in ("mobilevit.encoder.layer.1.layer.2.reduce_1x1.normalization.running_var",  # (names of apple/mobilevit-*)
                 "mobilevit.encoder.layer.4.downsampling_layer.conv_3x3.convolution.weight",
                 "mobilevit.encoder.layer.3.transformer.layer.3.attention.attention.value.bias",
                 "mobilevit.encoder.layer.2.fusion.normalization.weight", "mobilevit.conv_1x1_exp.convolution.weight"):
        assert name in hf, name
    folder = transformers_folder(tmp_path / "hf", hf, XXS)

    target = timm.create_model("mobilevit_xxs", num_classes=5).eval()
    assert_loads_exactly(source, target, folder, "MobileViT", size=64)
    assert weights_architecture(str(folder)) == (
        "MobileViTForImageClassification (model_type mobilevit)", "timm:mobilevit_xxs")


def test_transformers_mobilevit_sizes_name_their_timm_models() -> None:
    from finetune.models import _transformers_timm_model

    small = {**XXS, "hidden_sizes": [144, 192, 240], "neck_hidden_sizes": [16, 32, 64, 96, 128, 160, 640]}
    del small["expand_ratio"]  # (apple/mobilevit-small's config.json: transformers' default, 4.0)
    assert _transformers_timm_model(small) == "timm:mobilevit_s"
    assert _transformers_timm_model({**small, "hidden_sizes": [96, 120, 144],
                                     "neck_hidden_sizes": [16, 32, 48, 64, 80, 96, 384]}) == "timm:mobilevit_xs"
    assert _transformers_timm_model({**XXS, "expand_ratio": 4.0}) is None  # (no timm model of that layout)
    assert _transformers_timm_model({**small, "output_stride": 16}) is None  # (a dilated DeepLab backbone)

"""Hugging Face transformers' Swin V2 files load into timm's swinv2_* models."""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch

from conftest import assert_loads_exactly, split_qkv, transformers_folder


def _swinv2_to_hf(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm swinv2 as transformers' Swinv2ForImageClassification saves it (microsoft/swinv2-tiny-patch4-window8-256,
    as its convert_swinv2_timm_to_pytorch.py names them): q/k/v weights apart, the query / value biases as
    query.bias / value.bias (no key bias), cpb_mlp as continuous_position_bias_mlp, patch merging at the end of the
    stage before, and the relative_coords_table / relative_position_index buffers (the hub's files have them)."""
    out: dict[str, torch.Tensor] = {}
    buffers = {k: b for k, b in model.named_buffers() if k.endswith(("relative_coords_table", "relative_position_index"))}
    for k, v in {**model.state_dict(), **buffers}.items():
        if m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.weight$", k):
            split_qkv(out, f"swinv2.encoder.layers.{m[1]}.blocks.{m[2]}.attention.self.{{}}.weight", v)
            continue
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"swinv2.encoder.layers.{int(m[1]) - 1}.downsample.", k)
        k = re.sub(r"^patch_embed\.proj\.", "swinv2.embeddings.patch_embeddings.projection.", k)
        k = re.sub(r"^patch_embed\.norm\.", "swinv2.embeddings.norm.", k)
        k = re.sub(r"^layers\.(\d+)\.blocks\.(\d+)\.", r"swinv2.encoder.layers.\1.blocks.\2.", k)
        for timm_name, hf_name in (("attn.proj.", "attention.output.dense."), ("attn.q_bias", "attention.self.query.bias"),
                                   ("attn.v_bias", "attention.self.value.bias"),
                                   ("attn.cpb_mlp.", "attention.self.continuous_position_bias_mlp."),
                                   ("attn.", "attention.self."), ("norm1.", "layernorm_before."),
                                   ("norm2.", "layernorm_after."), ("mlp.fc1.", "intermediate.dense."),
                                   ("mlp.fc2.", "output.dense.")):
            k = k.replace(f".{timm_name}", f".{hf_name}")
        out[re.sub(r"^head\.fc\.", "classifier.", re.sub(r"^norm\.", "swinv2.layernorm.", k))] = v.clone()
    return out


def test_a_transformers_swinv2_folder_loads_into_timm_swinv2(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = {"num_classes": 5, "img_size": 64, "embed_dim": 24, "depths": (2, 2, 2, 2), "window_size": 4}  # (small)
    source = timm.create_model("swinv2_tiny_window8_256", **kwargs).eval()
    for p in source.parameters():  # (q/v biases start at zero, logit_scale at log(10): random, so that each counts)
        p.data.add_(torch.randn_like(p) * 0.1)
    hf = _swinv2_to_hf(source)
    assert "swinv2.encoder.layers.0.downsample.reduction.weight" in hf and "swinv2.encoder.layers.3.downsample.norm.weight" not in hf
    assert "swinv2.encoder.layers.0.blocks.0.attention.self.key.weight" in hf
    assert "swinv2.encoder.layers.0.blocks.0.attention.self.key.bias" not in hf
    assert "swinv2.encoder.layers.0.blocks.0.attention.self.continuous_position_bias_mlp.2.weight" in hf
    assert "swinv2.encoder.layers.0.blocks.0.attention.self.relative_coords_table" in hf
    folder = transformers_folder(tmp_path / "hf", hf, {"architectures": ["Swinv2ForImageClassification"], "model_type": "swinv2",
                                                       "embed_dim": 24, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24],
                                                       "window_size": 4, "patch_size": 4, "image_size": 64})

    target = timm.create_model("swinv2_tiny_window8_256", **kwargs).eval()
    assert_loads_exactly(source, target, folder, "Swinv2", size=64)

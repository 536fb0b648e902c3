"""Hugging Face transformers' Swin files load into timm's swin_* models."""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch

import finetune
from conftest import split_qkv, transformers_folder


def _swin_to_hf(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm swin as transformers' SwinForImageClassification saves it (microsoft/swin-tiny-patch4-window7-224):
    q/k/v apart, the persistent relative_position_index buffers, patch merging at the end of the stage before."""
    out: dict[str, torch.Tensor] = {}
    sd = {**model.state_dict(), **{k: b for k, b in model.named_buffers() if k.endswith("relative_position_index")}}
    for k, v in sd.items():
        if m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", k):
            split_qkv(out, f"swin.encoder.layers.{m[1]}.blocks.{m[2]}.attention.self.{{}}.{m[3]}", v)
            continue
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"swin.encoder.layers.{int(m[1]) - 1}.downsample.", k)
        k = re.sub(r"^patch_embed\.proj\.", "swin.embeddings.patch_embeddings.projection.", k)
        k = re.sub(r"^patch_embed\.norm\.", "swin.embeddings.norm.", k)
        k = re.sub(r"^layers\.(\d+)\.blocks\.(\d+)\.", r"swin.encoder.layers.\1.blocks.\2.", k)
        for timm_name, hf_name in (("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
                                   ("attn.proj.", "attention.output.dense."), ("attn.relative_position", "attention.self.relative_position"),
                                   ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense.")):
            k = k.replace(f".{timm_name}", f".{hf_name}")
        out[re.sub(r"^head\.fc\.", "classifier.", re.sub(r"^norm\.", "swin.layernorm.", k))] = v
    return out


def test_a_transformers_swin_folder_loads_into_timm_swin(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = {"num_classes": 5, "img_size": 64, "embed_dim": 24, "depths": (2, 2, 2, 2)}  # (a small swin_tiny)
    source = timm.create_model("swin_tiny_patch4_window7_224", **kwargs).eval()
    hf = _swin_to_hf(source)
    assert "swin.encoder.layers.0.downsample.reduction.weight" in hf and "swin.encoder.layers.3.downsample.norm.weight" not in hf
    folder = transformers_folder(tmp_path / "hf", hf, {"architectures": ["SwinForImageClassification"], "model_type": "swin",
                                           "embed_dim": 24, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24],
                                           "window_size": 7, "patch_size": 4, "image_size": 64})

    target = timm.create_model("swin_tiny_patch4_window7_224", **kwargs).eval()
    report = finetune.load_weights(target, folder, strict=True)
    assert report.ok and not report.unexpected and len(report.loaded) == len(target.state_dict()), report
    assert any("Hugging Face transformers Swin" in n for n in report.notes), report.notes
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))

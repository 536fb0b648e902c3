"""Hugging Face transformers' BEiT files load into timm's beit_* models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import finetune


def _beit_to_hf(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm beit as transformers' BeitForImageClassification saves it (microsoft/beit-base-patch16-224), as
    its convert_beit_unilm_to_pytorch.py writes it: q/k/v weights apart, no key bias, layer scale as lambda_1/2,
    the relative_position_index buffers of each layer, the mean-pooled norm under the pooler."""
    out: dict[str, torch.Tensor] = {}
    sd = {**model.state_dict(), **{k: b for k, b in model.named_buffers() if k.endswith("relative_position_index")}}
    for k, v in sd.items():
        if m := re.match(r"blocks\.(\d+)\.attn\.qkv\.weight$", k):
            for part, tensor in zip(("query", "key", "value"), v.chunk(3), strict=True):
                out[f"beit.encoder.layer.{m[1]}.attention.attention.{part}.weight"] = tensor.clone()
            continue
        k = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings"}.get(k, k)
        k = re.sub(r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection.", k)
        k = re.sub(r"^rel_pos_bias\.", "encoder.relative_position_bias.", k)
        k = re.sub(r"^blocks\.(\d+)\.gamma_([12])$", r"encoder.layer.\1.lambda_\2", k)
        k = re.sub(r"^blocks\.(\d+)\.attn\.([qv])_bias$",
                   lambda m: f"encoder.layer.{m[1]}.attention.attention.{dict(q='query', v='value')[m[2]]}.bias", k)
        k = re.sub(r"^blocks\.(\d+)\.attn\.relative_position_",
                   r"encoder.layer.\1.attention.attention.relative_position_bias.relative_position_", k)
        k = re.sub(r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.output.dense.", k)
        k = re.sub(r"^blocks\.(\d+)\.norm1\.", r"encoder.layer.\1.layernorm_before.", k)
        k = re.sub(r"^blocks\.(\d+)\.norm2\.", r"encoder.layer.\1.layernorm_after.", k)
        k = re.sub(r"^blocks\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense.", k)
        k = re.sub(r"^blocks\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense.", k)
        k = re.sub(r"^norm\.", "layernorm.", re.sub(r"^fc_norm\.", "pooler.layernorm.", k))
        out[re.sub(r"^head\.", "classifier.", k) if k.startswith("head.") else f"beit.{k}"] = v
    return out


@pytest.mark.parametrize("kwargs", [
    {},  # (microsoft/beit-base-patch16-224: a relative position table per layer, mean pooling)
    {"use_abs_pos_emb": True, "use_rel_pos_bias": False, "use_shared_rel_pos_bias": True},  # (one shared table)
])
def test_a_transformers_beit_folder_loads_into_timm_beit(tmp_path: Path, kwargs: dict) -> None:
    torch.manual_seed(0)
    kwargs = {"num_classes": 5, "img_size": 32, "depth": 2, "embed_dim": 64, "num_heads": 2, **kwargs}  # (a small beit)
    source = timm.create_model("beit_base_patch16_224", **kwargs).eval()
    with torch.no_grad():  # (not the zeros / 0.1 they start at: a mix-up would not show)
        for name, p in source.named_parameters():
            if re.search(r"gamma_|_bias$|relative_position_bias_table|pos_embed", name):
                p.normal_()
    hf = _beit_to_hf(source)
    assert "beit.encoder.layer.0.attention.attention.key.bias" not in hf
    (tmp_path / "hf").mkdir()
    save_file({k: v.contiguous() for k, v in hf.items()}, tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({
        "architectures": ["BeitForImageClassification"], "model_type": "beit", "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 16,
        "layer_scale_init_value": 0.1, "use_mean_pooling": True,
        "use_absolute_position_embeddings": kwargs.get("use_abs_pos_emb", False),
        "use_relative_position_bias": kwargs.get("use_rel_pos_bias", True),
        "use_shared_relative_position_bias": kwargs.get("use_shared_rel_pos_bias", False)}))

    target = timm.create_model("beit_base_patch16_224", **kwargs).eval()
    report = finetune.load_weights(target, tmp_path / "hf", strict=True)
    assert report.ok and not report.unexpected and len(report.loaded) == len(target.state_dict()), report
    assert any("Hugging Face transformers Beit" in n for n in report.notes), report.notes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_a_transformers_data2vec_vision_folder_loads_into_timm_beit(tmp_path: Path) -> None:
    """Data2VecVisionForImageClassification (facebook/data2vec-vision-base-ft1k) is BEiT's network under
    'data2vec_vision.' (transformers copies its modules from BEiT's): it loads as a BEiT file does."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 5, "img_size": 32, "depth": 2, "embed_dim": 64, "num_heads": 2}
    source = timm.create_model("beit_base_patch16_224", **kwargs).eval()
    with torch.no_grad():
        for name, p in source.named_parameters():
            if re.search(r"gamma_|_bias$|relative_position_bias_table", name):
                p.normal_()
    hf = {re.sub(r"^beit\.", "data2vec_vision.", k): v.contiguous() for k, v in _beit_to_hf(source).items()}
    (tmp_path / "hf").mkdir()
    save_file(hf, tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({
        "architectures": ["Data2VecVisionForImageClassification"], "model_type": "data2vec-vision"}))

    target = timm.create_model("beit_base_patch16_224", **kwargs).eval()
    report = finetune.load_weights(target, tmp_path / "hf", strict=True)
    assert report.ok and not report.unexpected and len(report.loaded) == len(target.state_dict()), report
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))

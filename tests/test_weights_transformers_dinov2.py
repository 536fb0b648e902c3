"""Hugging Face transformers' DINOv2 files (with registers or without) load into timm's vit_*_dinov2 models."""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch

import finetune
from conftest import split_qkv, transformers_folder


def _dinov2_to_hf(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm vit_*_dinov2 as transformers' Dinov2Model saves it (facebook/dinov2-small: no prefix, no head),
    with the mask_token of its pre-training."""
    out: dict[str, torch.Tensor] = {"embeddings.mask_token": torch.zeros(1, model.embed_dim)}
    for k, v in model.state_dict().items():
        if m := re.match(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", k):
            split_qkv(out, f"encoder.layer.{m[1]}.attention.attention.{{}}.{m[2]}", v)
            continue
        k = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings"}.get(k, k)
        k = re.sub(r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection.", k)
        k = re.sub(r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.output.dense.", k)
        k = re.sub(r"^blocks\.(\d+)\.ls([12])\.gamma$", r"encoder.layer.\1.layer_scale\2.lambda1", k)
        k = re.sub(r"^blocks\.(\d+)\.", r"encoder.layer.\1.", k)
        out[re.sub(r"^norm\.", "layernorm.", k)] = v
    return out


def test_a_transformers_dinov2_folder_loads_into_timm_dinov2(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = {"img_size": 28, "depth": 2}  # (a small vit_small_patch14_dinov2: 2x2 patches, 2 blocks)
    source = timm.create_model("vit_small_patch14_dinov2", num_classes=0, **kwargs).eval()
    torch.nn.init.normal_(source.blocks[0].ls1.gamma)  # (not the 1e-5 every layer scale starts at)
    hf = _dinov2_to_hf(source)
    config = {"architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": 384, "num_hidden_layers": 2,
              "num_attention_heads": 6, "patch_size": 14, "image_size": 28, "layerscale_value": 1.0}
    folder = transformers_folder(tmp_path / "model", hf, config)

    target = timm.create_model("vit_small_patch14_dinov2", num_classes=0, **kwargs).eval()
    report = finetune.load_weights(target, folder, strict=True)
    assert report.ok and not report.unexpected and len(report.loaded) == len(target.state_dict()), report
    assert any("Hugging Face transformers Dinov2" in n for n in report.notes), report.notes
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))

    # Dinov2ForImageClassification: the network under 'dinov2.'; its classifier (on [CLS] and the patch mean
    # side by side, twice the width) has no place in timm's vit: reported, not loaded
    with_head = {f"dinov2.{k}": v for k, v in hf.items()} | {"classifier.weight": torch.zeros(5, 768),
                                                            "classifier.bias": torch.zeros(5)}
    folder = transformers_folder(tmp_path / "classifier", with_head, {**config, "architectures": ["Dinov2ForImageClassification"]})
    target = timm.create_model("vit_small_patch14_dinov2", num_classes=5, **kwargs).eval()
    report = finetune.load_weights(target, folder)
    assert report.ok and sorted(report.unexpected) == ["classifier.bias", "classifier.weight"], report
    with torch.no_grad():
        assert torch.equal(source.forward_features(x), target.forward_features(x))


def test_a_transformers_dinov2_with_registers_folder_loads_into_timm_reg4_dinov2(tmp_path: Path) -> None:
    """facebook/dinov2-with-registers-*: transformers gives [CLS] a position (the first of position_embeddings) and
    the registers none; timm's *_reg4_dinov2 give neither one (no_embed_class): [CLS] takes its position."""
    torch.manual_seed(0)
    kwargs = {"img_size": 28, "depth": 2, "num_classes": 0}
    source = timm.create_model("vit_small_patch14_reg4_dinov2", **kwargs).eval()
    hf_cls, cls_position = torch.randn(1, 1, 384), torch.randn(1, 1, 384)
    with torch.no_grad():
        source.cls_token.copy_(hf_cls + cls_position)
    hf = _dinov2_to_hf(source)
    hf["embeddings.register_tokens"] = hf.pop("reg_token")
    hf["embeddings.position_embeddings"] = torch.cat([cls_position, hf["embeddings.position_embeddings"]], dim=1)
    hf["embeddings.cls_token"] = hf_cls
    folder = transformers_folder(tmp_path / "model", hf, {"architectures": ["Dinov2WithRegistersModel"], "num_register_tokens": 4})

    target = timm.create_model("vit_small_patch14_reg4_dinov2", **kwargs).eval()
    report = finetune.load_weights(target, folder, strict=True)
    assert report.ok and not report.unexpected and not report.adapted, report
    assert torch.equal(target.cls_token, source.cls_token) and torch.equal(target.pos_embed, source.pos_embed)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_inspect_sizes_the_model_from_a_dinov2_files_classifier_not_its_last_weight(tmp_path: Path) -> None:
    """`finetune inspect DINOV2_FOLDER --model timm:vit_small_patch14_dinov2` builds the model with the file's
    classes: Dinov2ForImageClassification's classifier rows (its 2*hidden-wide weight fits no timm head), and
    none for a Dinov2Model (was: the rows of the last 2-d weight, a block's mlp.fc2: a 384-class head, then
    reported missing, for a file that loads completely)."""
    from finetune.weights import read_checkpoint
    from finetune.weights.tools import _num_classes

    model = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=28, depth=2)
    hf = _dinov2_to_hf(model)
    bare = transformers_folder(tmp_path / "model", hf, {"architectures": ["Dinov2Model"], "model_type": "dinov2"})
    with_head = {f"dinov2.{k}": v for k, v in hf.items()} | {"classifier.weight": torch.zeros(5, 768),
                                                            "classifier.bias": torch.zeros(5)}
    classifier = transformers_folder(tmp_path / "classifier", with_head,
                         {"architectures": ["Dinov2ForImageClassification"], "model_type": "dinov2"})
    assert _num_classes(read_checkpoint(bare), model) is None
    assert _num_classes(read_checkpoint(classifier), model) == 5


def test_a_transformers_dinov2_with_registers_classifier_loads_into_timm_reg4_dinov2(tmp_path: Path) -> None:
    """Dinov2WithRegistersForImageClassification: the network under 'dinov2_with_registers.' (was: not renamed,
    nothing loaded); its classifier ([CLS] and the patch mean side by side) is reported, not loaded."""
    torch.manual_seed(0)
    kwargs = {"img_size": 28, "depth": 2}
    source = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=0, **kwargs).eval()
    hf = _dinov2_to_hf(source)
    hf["embeddings.register_tokens"] = hf.pop("reg_token")
    hf["embeddings.position_embeddings"] = torch.cat([torch.zeros(1, 1, 384), hf["embeddings.position_embeddings"]], 1)
    with_head = {f"dinov2_with_registers.{k}": v for k, v in hf.items()} | {
        "classifier.weight": torch.zeros(5, 768), "classifier.bias": torch.zeros(5)}
    folder = transformers_folder(tmp_path / "classifier", with_head, {"architectures": ["Dinov2WithRegistersForImageClassification"],
                                                         "model_type": "dinov2_with_registers", "num_register_tokens": 4})

    target = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=5, **kwargs).eval()
    report = finetune.load_weights(target, folder)
    assert report.ok and sorted(report.unexpected) == ["classifier.bias", "classifier.weight"], report
    assert any("Hugging Face transformers Dinov2" in n for n in report.notes), report.notes
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(source.forward_features(x), target.forward_features(x))

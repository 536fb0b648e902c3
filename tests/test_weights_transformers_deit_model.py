"""A distilled DeiT as transformers' DeiTModel saves it (no 'deit.' prefix) loads as DeiT, not as a ViT."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

import finetune
from conftest import transformers_folder
from test_weights_transformers_names import _deit_to_hf


def test_a_distilled_deit_without_prefix_loads_its_distillation_token(tmp_path: Path) -> None:
    """DeiTModel (facebook/deit-*-distilled-* without its heads), or a DeiTForImageClassificationWithTeacher file
    converted with --strip-prefix deit.: its keys have no 'deit.' (was: read as a ViT's, so its
    embeddings.distillation_token stayed unexpected, dist_token missing and the heads under transformers' names)."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 5, "img_size": 32, "depth": 1}
    source = timm.create_model("deit_tiny_distilled_patch16_224", **kwargs).eval()
    with torch.no_grad():
        source.dist_token.normal_()
    hf = {k.removeprefix("deit."): v for k, v in _deit_to_hf(source.state_dict()).items()}
    assert "embeddings.distillation_token" in hf and "cls_classifier.weight" in hf
    folder = transformers_folder(tmp_path / "hf", hf, {"architectures": ["DeiTModel"], "model_type": "deit"})

    target = timm.create_model("deit_tiny_distilled_patch16_224", **kwargs).eval()
    report = finetune.load_weights(target, folder, strict=True)
    assert report.ok and not report.unexpected and not report.missing, report
    assert any("Hugging Face transformers DeiT" in n for n in report.notes), report.notes
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k

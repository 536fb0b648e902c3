"""DeiT III's own files (facebookresearch/deit), written here with timm."""

from __future__ import annotations

import re

import pytest
import torch

from finetune.weights import load_weights


def test_deit3_official_layer_scale_names_load() -> None:
    """facebookresearch/deit's DeiT III files name the layer scale 'blocks.N.gamma_1'; timm's deit3 'ls1.gamma'."""
    timm = pytest.importorskip("timm")
    kw = {"img_size": 32, "depth": 2, "num_classes": 3}
    src = timm.create_model("deit3_small_patch16_224", **kw).state_dict()
    official = {re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", k): v + 1 for k, v in src.items()}
    model = timm.create_model("deit3_small_patch16_224", **kw)
    report = load_weights(model, {"model": official, "model_ema": official, "epoch": 799})
    assert report.ok and not report.missing and not report.unexpected, report
    assert torch.equal(model.blocks[1].ls2.gamma, official["blocks.1.gamma_2"])

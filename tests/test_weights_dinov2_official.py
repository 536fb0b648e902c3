"""DINOv2's own files (facebookresearch/dinov2), written here with timm."""

from __future__ import annotations

import re

import pytest
import torch

from finetune.weights import load_weights


def _shifted(sd: dict[str, torch.Tensor], d: float) -> dict[str, torch.Tensor]:
    return {k: v + d if v.is_floating_point() else v for k, v in sd.items()}


def _dinov2_official(model: torch.nn.Module, chunks: int = 0) -> dict[str, torch.Tensor]:
    """A timm vit_*_dinov2 state dict as facebookresearch/dinov2 names it: [CLS]'s position inside pos_embed
    for a registers model, 'register_tokens', 'mask_token', blocks.C.N with block_chunks, SwiGLU's w12/w3."""
    sd = dict(model.state_dict())
    pos = sd.pop("pos_embed")
    if "reg_token" in sd:
        pos = torch.cat([torch.randn(1, 1, pos.shape[-1]), pos], 1)
    out = {"cls_token": sd.pop("cls_token"), "pos_embed": pos}
    if "reg_token" in sd:
        out["register_tokens"] = sd.pop("reg_token")
    out["mask_token"] = torch.zeros(1, pos.shape[-1])
    per = len(model.blocks) // chunks if chunks else 0
    for k, v in sd.items():
        if per:
            k = re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m[1]) // per}.{m[1]}.", k)
        out[k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
            if type(model.blocks[0].mlp).__name__ == "GluMlp" else k] = v
    return out


def test_dinov2_official_registers_file_loads_into_timm_reg_model() -> None:
    """dinov2_vits14_reg4_pretrain.pth: register_tokens -> reg_token, [CLS]'s position moved into cls_token."""
    timm = pytest.importorskip("timm")
    kw = {"img_size": 28, "depth": 1, "num_classes": 3}
    official = _dinov2_official(timm.create_model("vit_small_patch14_reg4_dinov2", **kw))
    model = timm.create_model("vit_small_patch14_reg4_dinov2", **kw)
    report = load_weights(model, official)
    assert report.ok and not report.unexpected and not report.adapted, report
    assert torch.equal(model.reg_token, official["register_tokens"])
    assert torch.equal(model.cls_token, official["cls_token"] + official["pos_embed"][:, :1])
    assert torch.equal(model.pos_embed, official["pos_embed"][:, 1:])


def test_dinov2_training_checkpoint_with_block_chunks_loads_the_teacher() -> None:
    """A DINOv2 run's checkpoint: {'model': student.backbone.blocks.C.N..., teacher.backbone...}."""
    timm = pytest.importorskip("timm")
    kw = {"img_size": 28, "depth": 4, "num_classes": 3}
    teacher = _dinov2_official(timm.create_model("vit_small_patch14_reg4_dinov2", **kw), chunks=2)
    assert "blocks.1.3.ls2.gamma" in teacher
    sd = {**{f"student.backbone.{k}": v for k, v in _shifted(teacher, 1.0).items()},
          **{f"teacher.backbone.{k}": v for k, v in teacher.items()},
          "teacher.dino_head.last_layer.weight_v": torch.zeros(16, 8)}
    model = timm.create_model("vit_small_patch14_reg4_dinov2", **kw)
    report = load_weights(model, {"model": sd, "iteration": 12499})
    assert report.ok and "teacher.backbone." in report.mapping, report
    assert torch.equal(model.blocks[3].attn.qkv.weight, teacher["blocks.1.3.attn.qkv.weight"])


def test_dinov2_swiglu_mlp_names_load() -> None:
    """ViT-g's SwiGLU MLP: DINOv2's mlp.w12 / mlp.w3 are timm's mlp.fc1 / mlp.fc2."""
    timm = pytest.importorskip("timm")
    from timm.layers import SwiGLUPacked

    kw = {"img_size": 28, "depth": 1, "num_classes": 3, "mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}
    official = _dinov2_official(timm.create_model("vit_small_patch14_dinov2", **kw))
    model = timm.create_model("vit_small_patch14_dinov2", **kw)
    report = load_weights(model, official)
    assert report.ok and not report.unexpected, report
    assert torch.equal(model.blocks[0].mlp.fc1.weight, official["blocks.0.mlp.w12.weight"])

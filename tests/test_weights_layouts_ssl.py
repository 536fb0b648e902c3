"""Checkpoints as self-supervised / other training libraries lay them out (written here with torch)."""

from __future__ import annotations

import argparse

import pytest
import torch
import torchvision
from torch import nn

from finetune.weights import load_weights, read_checkpoint


def _resnet_sd(shift: float = 0.0) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sd = torchvision.models.resnet18(num_classes=3).state_dict()
    return {k: v + shift if v.is_floating_point() else v for k, v in sd.items() if not k.startswith("fc.")}


def test_dino_checkpoint_loads_the_teacher_not_the_student() -> None:
    """DINO's checkpoint.pth: {'student': DDP state dict, 'teacher': state dict, ...}; DINO evaluates the teacher."""
    student = {f"module.backbone.{k}": v for k, v in _resnet_sd(1.0).items()}
    student["module.head.mlp.0.weight"] = torch.zeros(8, 512)
    teacher = {f"backbone.{k}": v for k, v in _resnet_sd().items()}
    teacher["head.mlp.0.weight"] = torch.zeros(8, 512)
    ck = {"student": student, "teacher": teacher, "optimizer": {}, "epoch": 100,
          "args": argparse.Namespace(arch="resnet18"), "dino_loss": {"center": torch.zeros(1, 8)}}
    assert "teacher" in read_checkpoint(ck).format
    model = torchvision.models.resnet18(num_classes=3)
    report = load_weights(model, ck)
    assert torch.equal(model.conv1.weight, teacher["backbone.conv1.weight"]), report
    assert len(report.loaded) == 120


def test_fastai_vision_learner_body_numbering_loads_into_the_architecture() -> None:
    """fastai's vision_learner: Sequential(body = Sequential(*resnet.children()[:-2]), head): '0.4.0.conv1.weight'."""
    net = torchvision.models.resnet18()
    body = nn.Sequential(*list(net.children())[:-2])
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(512), nn.Dropout(0.25),
                         nn.Linear(512, 512, bias=False), nn.ReLU(True), nn.BatchNorm1d(512), nn.Dropout(0.5),
                         nn.Linear(512, 10, bias=False))
    learner_model = nn.Sequential(body, head)
    model = torchvision.models.resnet18(num_classes=3)
    report = load_weights(model, {"model": learner_model.state_dict(), "opt": {}})
    assert report.missing == ["fc.weight", "fc.bias"], report
    assert torch.equal(model.layer1[0].conv1.weight, net.layer1[0].conv1.weight)
    assert torch.equal(model.bn1.running_var, net.bn1.running_var)


def test_lightly_backbone_of_children_loads() -> None:
    """lightly's examples: backbone = Sequential(*list(resnet.children())[:-1]) beside a projection head."""
    net = torchvision.models.resnet18()
    backbone = nn.Sequential(*list(net.children())[:-1])
    sd = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    sd["projection_head.layers.0.weight"] = torch.zeros(128, 512)
    model = torchvision.models.resnet18(num_classes=3)
    report = load_weights(model, sd)
    assert len(report.loaded) == 120 and torch.equal(model.layer4[1].conv2.weight, net.layer4[1].conv2.weight)


def test_a_sequential_model_still_loads_by_name() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    report = load_weights(model, {f"module.{k}": v for k, v in nn.Sequential(nn.Linear(3, 4), nn.ReLU(),
                                                                              nn.Linear(4, 2)).state_dict().items()})
    assert report.ok and "identity" in report.mapping


def test_unused_ema_hint_names_a_way_that_exists() -> None:
    """finetune train's --ema is a decay for a new average, not a way to load the file's EMA weights."""
    sd = _resnet_sd()
    report = load_weights(torchvision.models.resnet18(num_classes=3),
                          {"state_dict": sd, "state_dict_ema": sd, "version": 2})
    assert "finetune convert" in str(report) and "--ema)" not in str(report)


def test_inspect_text_shows_the_load_reports_notes() -> None:
    """`finetune inspect FILE --model ARCH`: an equally fitting second copy (BYOL's target encoder) is said."""
    from finetune.weights import format_inspect
    from finetune.weights.tools import _report_against

    sd = _resnet_sd()
    both = {**{f"online_encoder.net.{k}": v for k, v in sd.items()}, **{f"target_encoder.net.{k}": v for k, v in sd.items()}}
    info = {"source": "byol.pt", "format": "state_dict", "container": "torch zip", "totals": {"tensors": 0, "numel": 0, "mb": 0.0},
            "tensors": [], "load_report": _report_against(read_checkpoint(both), "resnet18")}
    assert "other keys of the file fit as well: strip 'target_encoder.net.'" in format_inspect(info)


def test_distilled_deit_position_embedding_loads_into_a_plain_deit() -> None:
    timm = pytest.importorskip("timm")
    kw = {"img_size": 64, "depth": 1, "num_classes": 3}
    distilled = timm.create_model("deit_tiny_distilled_patch16_224", **kw)
    plain = timm.create_model("deit_tiny_patch16_224", **kw)
    report = load_weights(plain, distilled.state_dict())
    assert [name for name, _ in report.adapted] == ["pos_embed"] and not report.mismatched, report
    file_pos = distilled.pos_embed.detach()
    assert torch.equal(plain.pos_embed.detach(), torch.cat([file_pos[:, :1], file_pos[:, 2:]], 1))

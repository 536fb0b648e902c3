"""LoadReport.ok: a backbone tensor of another shape keeps the model's random values (not ok, as
train refuses or warns about it); a classifier head for other classes is expected (ok)."""

from __future__ import annotations

import torch
import torchvision

from finetune import load_weights


def test_backbone_tensor_of_another_shape_is_not_ok() -> None:
    sd = torchvision.models.resnet18(num_classes=1000).state_dict()
    report = load_weights(torchvision.models.resnet18(num_classes=10), sd)
    assert report.ok and [n for n, _, _ in report.mismatched] == ["fc.weight", "fc.bias"]  # a new head: expected
    sd["layer4.1.conv2.weight"] = torch.randn(512, 256, 3, 3)  # (a narrower variant's)
    report = load_weights(torchvision.models.resnet18(num_classes=10), sd)
    assert not report.ok and not report.to_dict()["ok"] and report.mismatched_outside_head == ["layer4.1.conv2.weight"]
    assert "INCOMPLETE" in str(report).splitlines()[-1]


def test_aux_heads_and_wrapped_models_count_as_heads() -> None:
    sd = torchvision.models.googlenet(num_classes=1000, aux_logits=True, init_weights=False).state_dict()
    model = torchvision.models.googlenet(num_classes=3, aux_logits=True, init_weights=False)
    report = load_weights(torch.nn.DataParallel(model), sd)
    assert {"fc.weight", "aux1.fc2.weight"} <= {n for n, _, _ in report.mismatched} and report.ok, str(report)


def test_a_backbone_saved_without_its_head_is_ok_a_missing_stage_is_not() -> None:
    """A self-supervised / num_classes=0 backbone has no head: the model's new head is what fine-tuning
    wants (was INCOMPLETE, as if weights were lost); a backbone tensor missing still is INCOMPLETE."""
    sd = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    report = load_weights(torchvision.models.resnet18(num_classes=10), sd)
    assert report.ok and report.missing == ["fc.weight", "fc.bias"] and report.missing_outside_head == []
    assert "no classifier head" in str(report).splitlines()[-1]
    del sd["layer4.1.bn2.running_var"]
    report = load_weights(torchvision.models.resnet18(num_classes=10), sd)
    assert not report.ok and report.missing_outside_head == ["layer4.1.bn2.running_var"]
    assert "INCOMPLETE" in str(report).splitlines()[-1]

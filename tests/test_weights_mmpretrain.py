"""An MMPretrain (OpenMMLab) classifier file: 'backbone.*' and 'head.fc.*' into a torchvision model
whose backbone is its root and whose head is 'fc' (two prefixes in one file)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from finetune import load_weights


@pytest.fixture(scope="module")
def mmpretrain_resnet18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The layout of MMPretrain's model zoo files (resnet18_8xb32_in1k_*.pth): 'meta' and a 'state_dict'
    of 'backbone.conv1.weight', 'backbone.bn1.*', 'backbone.layer1.0.conv1.weight', …, 'head.fc.weight'
    (the GlobalAveragePooling neck has no tensors)."""
    sd = torchvision.models.resnet18(num_classes=1000).state_dict()
    mm = {("head." if k.startswith("fc.") else "backbone.") + k: v for k, v in sd.items()}
    path = tmp_path_factory.mktemp("mmpretrain") / "resnet18_8xb32_in1k_20210831-fbbb1da6.pth"
    torch.save({"meta": {"mmpretrain_version": "1.2.0", "dataset_meta": {"classes": [str(i) for i in range(1000)]}},
                "state_dict": mm}, path)
    return path, sd


def test_mmpretrain_backbone_and_head_load(mmpretrain_resnet18: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, sd = mmpretrain_resnet18
    model = torchvision.models.resnet18(num_classes=1000)
    report = load_weights(model, path)
    assert report.ok and not report.unexpected and not report.missing, str(report)
    assert torch.equal(model.fc.weight, sd["fc.weight"]) and torch.equal(model.layer4[1].bn2.running_var,
                                                                        sd["layer4.1.bn2.running_var"])
    assert "'head.'" in report.mapping


def test_mmpretrain_head_of_other_classes_is_a_shape_mismatch(
        mmpretrain_resnet18: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, sd = mmpretrain_resnet18
    report = load_weights(torchvision.models.resnet18(num_classes=3), path)
    assert not report.missing and not report.unexpected, str(report)
    assert ("fc.weight", (1000, 512), (3, 512)) in report.mismatched
    model = torchvision.models.resnet18(num_classes=2)
    load_weights(model, path, shape_mismatch="adapt", class_map={0: 7, 1: 9})
    assert torch.equal(model.fc.weight[1], sd["fc.weight"][9])

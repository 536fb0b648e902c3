"""Edges of the Python API found by an adversarial pass: class_map, tied weights, idle patterns,
0-d models, a Checkpointer metric that never comes, freezing through a second name."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from finetune import ConfigError, freeze, freeze_all_but, load_weights, param_groups
from finetune.checkpoint import Checkpointer, CheckpointWarning
from finetune.errors import WeightsError


class Tied(nn.Module):
    """A language-model-style head tied to its embedding (one parameter, two names)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.emb(idx)))


def test_class_map_reorders_a_head_of_the_same_size_and_needs_adapt() -> None:
    torch.manual_seed(0)
    src, dst = nn.Linear(4, 3), nn.Linear(4, 3)
    report = load_weights(dst, src.state_dict(), shape_mismatch="adapt", class_map={0: 2, 1: 1, 2: 0})
    assert torch.equal(dst.weight, src.weight[[2, 1, 0]]) and torch.equal(dst.bias, src.bias[[2, 1, 0]])
    assert {name for name, _ in report.adapted} == {"weight", "bias"}
    with pytest.raises(WeightsError, match="class_map .* shape_mismatch='adapt' only"):
        load_weights(nn.Linear(4, 3), src.state_dict(), class_map={0: 2})


def test_a_tied_weight_saved_once_counts_as_loaded(tmp_path: Path) -> None:
    from safetensors.torch import save_model

    torch.manual_seed(0)
    source = Tied()
    save_model(source, str(tmp_path / "model.safetensors"))  # keeps one name of the tied pair
    target = Tied()
    report = load_weights(target, tmp_path / "model.safetensors", strict=True)
    assert report.ok and not report.missing
    assert any("tied tensor loaded through the tensor shared with" in n for n in report.notes)
    idx = torch.tensor([1, 2, 3])
    assert torch.equal(target(idx), source(idx))


def test_an_exclude_pattern_that_matches_nothing_is_noted() -> None:
    import torchvision

    src = torchvision.models.resnet18(num_classes=3).state_dict()
    report = load_weights(torchvision.models.resnet18(num_classes=3), src, exclude=["fc.weigth"])
    assert "fc.weight" in report.loaded
    assert any("'fc.weigth' matched no tensor name" in n for n in report.notes)
    quiet = load_weights(torchvision.models.resnet18(num_classes=3), src, exclude=["fc.*"])
    assert not any("matched no tensor" in n for n in quiet.notes)


def test_a_model_of_zero_dimensional_tensors_loads() -> None:
    class Temperature(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.t = nn.Parameter(torch.tensor(1.0))

    report = load_weights(Temperature(), {"t": torch.tensor(2.5)})
    assert report.loaded == ["t"]
    with pytest.raises(WeightsError):
        load_weights(Temperature(), {"other": torch.tensor(2.5)})


def test_checkpointer_says_when_its_best_metric_never_comes(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, best_metric="val_acc")
    with pytest.warns(CheckpointWarning, match="metrics have no 'val_acc'"):
        ck.save({"epoch": 0, "step": 1}, metrics={"val_top1": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per Checkpointer
        ck.save({"epoch": 0, "step": 2}, metrics={"val_top1": 0.6})
    assert ck.best() is None


def test_freezing_answers_to_every_name_of_a_tied_parameter_or_aliased_module() -> None:
    m = Tied()
    assert freeze(m, "head") == ["emb.weight"] and not m.emb.weight.requires_grad
    m = Tied()
    freeze_all_but(m, "head")
    assert m.head.weight.requires_grad and not m.mid.weight.requires_grad
    m = Tied()
    assert freeze(m, "head.weight") == ["emb.weight"]

    class Alias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Linear(2, 2)
            self.features = self.backbone
            self.fc = nn.Linear(2, 1)

    m = Alias()
    assert sorted(freeze(m, "features")) == ["backbone.bias", "backbone.weight"]
    groups = param_groups(Alias(), 0.1, lr_mult={"features": 0.5})
    assert {g["lr"] for g in groups if any(p is not None for p in g["params"])} == {0.05, 0.1}
    with pytest.raises(ConfigError, match="matches no"):
        freeze(Alias(), "featurez")


def test_a_distillation_file_with_two_equally_fitting_copies_says_so() -> None:
    """student.* and teacher.* both fit: the teacher is loaded (DINO-style self-distillation evaluates
    it) and the report says the student fits too; rename= picks the student (and the note goes)."""
    import torchvision

    sd = torchvision.models.resnet18(num_classes=3).state_dict()
    teacher = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    both = {**{f"student.{k}": v for k, v in sd.items()}, **{f"teacher.{k}": v for k, v in teacher.items()}}
    model = torchvision.models.resnet18(num_classes=3)
    report = load_weights(model, both)
    assert torch.equal(model.conv1.weight, teacher["conv1.weight"])
    assert any("other keys of the file fit as well: strip 'student.'" in n for n in report.notes), report.notes
    model = torchvision.models.resnet18(num_classes=3)
    chosen = load_weights(model, both, rename={r"^student\.": ""})
    assert torch.equal(model.conv1.weight, sd["conv1.weight"]) and not any("fit as well" in n for n in chosen.notes)
    single = load_weights(torchvision.models.resnet18(num_classes=3), {f"module.{k}": v for k, v in sd.items()})
    assert not any("fit as well" in n for n in single.notes)


def test_cam_layer_of_a_small_swin_is_a_feature_map_not_an_attention_matrix() -> None:
    """timm's Swin at 32 px: its windows' softmax attention (N x heads x 4 x 4) looks like a map."""
    pytest.importorskip("timm")
    from finetune import create_model, find_cam_layer

    model = create_model("timm:swin_tiny_patch4_window7_224", num_classes=2, img_size=32).eval()
    layer = find_cam_layer(model, torch.randn(1, 3, 32, 32))
    assert "attn" not in layer.name, layer.name


def test_googlenet_aux_heads_are_frozen_not_reported_as_untrained(colour_data: Path, tmp_path: Path) -> None:
    """The loss takes the main logits only: the aux heads would sit in the optimizer and never train
    (the audit used to warn about 14 parameters the user could do nothing about)."""
    import json

    from conftest import run_here

    res = run_here("train", "--data", str(colour_data), "--model", "googlenet", "--img-size", "32", "--batch-size", "8",
                   "--workers", "0", "--epochs", "1", "--max-steps", "1", "--device", "cpu", "--out", str(tmp_path / "g"))
    assert res.returncode == 0, res.stderr
    assert "no_grad_after_backward" not in res.stderr
    table = {row["block"]: row for row in json.loads((tmp_path / "g" / "trainable.json").read_text())["rows"]}
    assert table["aux1"]["trainable"] == 0 and table["fc"]["trainable"] > 0


def test_a_fixed_size_model_is_told_its_size_not_or_more() -> None:
    pytest.importorskip("timm")
    from finetune import create_model
    from finetune.errors import ModelError
    from finetune.models import check_input_size

    with pytest.raises(ModelError, match=r"use img_size=224 \(--img-size\), the size it was designed for"):
        check_input_size(create_model("timm:efficientformer_l1", num_classes=2, img_size=32), 32)

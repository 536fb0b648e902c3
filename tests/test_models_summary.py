"""`finetune models` (architectures, ImageNet accuracy, cache status) and `finetune summary`
(per-layer output shapes; a forward that fails names the layer and the shape it got)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from conftest import run_cli, run_here
from finetune.models import create_model, format_model_table, layer_summary, model_table


def test_model_table_has_torchvision_metadata_and_cache_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    rows = {r.name: r for r in model_table("*")}
    assert set(rows) == set(torchvision.models.list_models(module=torchvision.models))
    meta = torchvision.models.ResNet50_Weights.DEFAULT.meta
    r = rows["resnet50"]
    assert (r.params, r.top1, r.top5) == (meta["num_params"], meta["_metrics"]["ImageNet-1K"]["acc@1"],
                                          meta["_metrics"]["ImageNet-1K"]["acc@5"])
    assert not r.cached
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / r.weights).write_bytes(b"x")  # only its presence is read
    assert model_table("resnet50")[0].cached and not model_table("resnet18")[0].cached
    text = format_model_table(model_table("resnet5*"))
    assert text.splitlines()[1].split() == ["resnet50", "25.6M", "80.86", "95.43", "yes", r.weights]


def test_model_table_lists_timm_tags_with_their_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rows = {r.name: r for r in model_table("timm:resnet18.*")}
    assert "timm:resnet18.a1_in1k" in rows and all(n.startswith("timm:resnet18.") for n in rows)
    assert not any(r.cached for r in rows.values())
    snapshot = tmp_path / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    row = next(r for r in model_table("timm:resnet18.*") if r.name == "timm:resnet18.a1_in1k")
    assert row.cached and row.weights == "model.safetensors" and row.top1 is None


def test_layer_summary_shapes_and_parameters() -> None:
    model = create_model("resnet18", num_classes=4)
    model.train()
    s = layer_summary(model, 64, depth=2)
    assert s.ok and s.output_shape == (1, 4) and model.training  # the mode is given back
    shapes = {r.name: r.output_shape for r in s.rows}
    assert shapes["conv1"] == (1, 64, 32, 32) and shapes["layer4.1"] == (1, 512, 2, 2) and shapes["fc"] == (1, 4)
    assert max(r.depth for r in s.rows) == 2
    top = [r for r in s.rows if r.depth == 1]
    assert sum(r.params for r in top) == s.params == sum(p.numel() for p in model.parameters())
    model.fc.weight.requires_grad_(False)
    assert next(r for r in layer_summary(model, 64, depth=1).rows if r.name == "fc").trainable == 4


def test_layer_summary_names_the_layer_that_fails() -> None:
    # the notes' bug: a Linear sized for 32 * 3 * 3 after a layer that gives 8 * 3 * 3
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(32 * 3 * 3, 10))
    s = layer_summary(net, 32)
    assert not s.ok and s.failed_at == "4"
    assert "in_features=288" in s.error and "1x72" in s.error
    assert [r.name for r in s.rows] == ["0", "1", "2", "3"]
    assert "FAILED at 4" in str(s)
    # a nested failure names the innermost module
    inc = layer_summary(create_model("inception_v3", num_classes=3), 64)
    assert not inc.ok and inc.failed_at.startswith("Mixed_7a.") and "Kernel size" in inc.error


def test_layer_summary_of_a_model_with_tuple_outputs() -> None:
    s = layer_summary(create_model("googlenet", num_classes=3), 64, depth=1)
    assert s.ok and s.output_shape == (1, 3)  # eval mode: no aux outputs
    assert torch.is_grad_enabled()


def test_models_and_summary_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = run_cli("models", "resnet5*", "--json", env={"TORCH_HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert [r["name"] for r in json.loads(res.stdout)] == ["resnet50"]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    res = run_here("models", "resnet*", "--cached")
    assert res.returncode == 0 and "none of the 5 models matching 'resnet*' has cached weights" in res.stdout
    res = run_here("summary", "resnet18", "--img-size", "64", "--num-classes", "3", "--depth", "1")
    assert res.returncode == 0, res.stderr
    assert "fc       Linear             1x3" in res.stdout
    res = run_cli("summary", "inception_v3", "--img-size", "64")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("finetune: error: inception_v3 fails at 64x64 in layer 'Mixed_7a.")
    assert "FAILED at Mixed_7a." in res.stdout  # the layers that ran are shown

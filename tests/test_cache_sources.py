"""Pretrained weights from the local caches torchvision, timm and Hugging Face write (nothing downloaded)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import torch
import torchvision

from finetune import create_model, load_weights
from finetune.config import TrainConfig
from finetune.errors import WeightsError
from finetune.weights import LoadReport, inspect_checkpoint, sources


def test_torchvision_densenet_file_layout_loads(tmp_path: Path) -> None:
    """torchvision's DenseNet files name 'denselayer1.norm.1.weight' and predate num_batches_tracked."""
    sd = torchvision.models.densenet121().state_dict()
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
           for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    model = create_model("densenet121", num_classes=3)
    report = load_weights(model, old)
    assert report.ok and not report.unexpected, str(report)
    assert len(report.loaded) == len(old) - 2  # all but the 1000-class head
    got = model.state_dict()
    assert torch.equal(got["features.denseblock1.denselayer1.norm1.running_var"],
                       sd["features.denseblock1.denselayer1.norm1.running_var"])


def test_hugginface_hub_cache_old_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "hub"))
    assert sources.hf_hub_cache() == tmp_path / "hub"  # huggingface_hub (and so timm) reads it there too


def test_named_source_of_another_architecture_is_refused() -> None:
    """resnet34's file under resnet18's name fits every resnet18 tensor: its extra tensors give it away."""
    from finetune.train import check_pretrained_fit

    model = create_model("resnet18", num_classes=2)
    names = [n for n in model.state_dict() if not n.startswith("fc.")]
    report = LoadReport(source="resnet18-f37072fd.pth", loaded=names,
                        mismatched=[("fc.weight", (1000, 512), (2, 512)), ("fc.bias", (1000,), (2,))],
                        unexpected=["layer1.2.conv1.weight", "layer1.2.bn1.weight"])
    with pytest.raises(WeightsError, match="2 tensors that resnet18 does not have"):
        check_pretrained_fit(model, report, TrainConfig(model="resnet18", pretrained="torchvision"))
    check_pretrained_fit(model, report, TrainConfig(model="resnet18", pretrained="torchvision:resnet34"))  # asked for


def test_inspect_named_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("FINETUNE_OFFLINE", "1")
    path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    info = inspect_checkpoint("torchvision", model="resnet18")
    assert info["source"] == str(path) and info["load_report"]["missing"] == []


def test_torchvision_download_has_a_timeout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = []

    def fake_download(url: str, dst: str, progress: bool = True) -> None:
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError("timed out")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("FINETUNE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    before = socket.getdefaulttimeout()
    with pytest.raises(WeightsError, match="download failed: TimeoutError"):
        sources.torchvision_file("torchvision", "resnet18")
    assert seen and seen[0] is not None and seen[0] <= 60 and socket.getdefaulttimeout() == before


def test_models_cached_lists_a_cached_non_default_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    v1 = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({}, tmp_path / "hub" / "checkpoints" / v1)  # (the table looks at the name and that the file is whole)
    assert main(["models", "--cached", "resnet5*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50.IMAGENET1K_V1" in out and v1 in out

"""Named sources in the Hugging Face hub / torch hub caches: several snapshots without refs/main, and
downloads that were interrupted (nothing downloaded here)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from finetune import load_weights
from finetune.errors import WeightsError
from finetune.weights import sources

REPO = "models--timm--resnet18.a1_in1k"


@pytest.fixture
def caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FINETUNE_OFFLINE", "1")
    return tmp_path / "hf", tmp_path / "torch" / "hub" / "checkpoints"


def test_several_snapshots_without_refs_main_take_the_newest(caches: tuple[Path, Path]) -> None:
    hf, _ = caches
    for age_s, revision in ((90 * 86400, "0a1b2c3d"), (60, "f9e8d7c6")):  # the older one first by name
        snap = hf / REPO / "snapshots" / revision
        snap.mkdir(parents=True)
        save_file({"weight": torch.full((2, 4), float(age_s)), "bias": torch.zeros(2)}, snap / "model.safetensors")
        then = time.time() - age_s
        os.utime(snap / "model.safetensors", (then, then))
    assert sources.timm_file("resnet18.a1_in1k").parent.name == "f9e8d7c6"
    model = torch.nn.Linear(4, 2)
    report = load_weights(model, "timm:resnet18.a1_in1k")
    assert torch.equal(model.weight, torch.full((2, 4), 60.0))
    assert any("took the newest download, f9e8d7c6" in n for n in report.notes), report.notes
    (hf / REPO / "refs").mkdir()
    (hf / REPO / "refs" / "main").write_text("0a1b2c3d")  # refs/main still wins
    assert sources.timm_file("resnet18.a1_in1k").parent.name == "0a1b2c3d"


def test_interrupted_downloads_are_named(caches: tuple[Path, Path]) -> None:
    hf, checkpoints = caches
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet18-f37072fd.pth.5f0c3b1e9d2a4b7c8e6f1a2b3c4d5e6f.partial").write_bytes(b"0" * 1000)
    with pytest.raises(WeightsError, match=r"not cached \(an interrupted download left .*resnet18-f37072fd\.pth\."
                                           r"5f0c3b1e9d2a4b7c8e6f1a2b3c4d5e6f\.partial.*delete it"):
        sources.resolve("torchvision", "resnet18")
    (hf / REPO / "blobs").mkdir(parents=True)
    (hf / REPO / "snapshots").mkdir()
    (hf / REPO / "blobs" / "8f2a9c0d1e7b.incomplete").write_bytes(b"0" * 1000)
    with pytest.raises(WeightsError, match=r"interrupted download left .*blobs/8f2a9c0d1e7b\.incomplete.*resumes"):
        sources.resolve("timm:resnet18.a1_in1k", None)

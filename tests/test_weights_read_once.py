"""--pretrained FILE is read once: the tensors when the weights load, not also to look for the input
settings a finetune checkpoint records (a large file takes seconds each time)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from finetune.config import TrainConfig
from finetune.models import eval_transform_of, normalization, pretrained_input_size
from finetune.train import build_model


def test_pretrained_file_is_read_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    reads: list[object] = []
    real = torch.load

    def counting_load(f, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(getattr(f, "name", f))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    cfg = TrainConfig(model="resnet18", pretrained=str(path)).resolved()  # (as train does)
    normalization(cfg.model, cfg.pretrained), eval_transform_of(cfg.model, cfg.pretrained)
    build_model(cfg, 2, torch.device("cpu"), quiet=True)
    assert len(reads) == 1, reads


def test_finetune_checkpoint_input_settings_without_reading_its_tensors(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    torch.save({"format": "finetune-checkpoint", "img_size": 96, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                "model": torchvision.models.resnet18(num_classes=2).state_dict()}, path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the tensors were read"))
    assert pretrained_input_size("resnet18", str(path)) == 96
    assert normalization("resnet18", str(path)) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

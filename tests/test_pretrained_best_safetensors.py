"""--pretrained RUN/best.safetensors takes the input settings its metadata records, as
--pretrained RUN/checkpoints/best.pt does (README: "a finetune checkpoint's own input settings")."""

from __future__ import annotations

from pathlib import Path

import torch

from finetune.config import TrainConfig
from finetune.models import normalization
from finetune.train import write_deployment_files


def test_best_safetensors_gives_its_input_settings(tmp_path: Path) -> None:
    state = {"arch": "resnet18", "classes": ["a", "b"], "img_size": 48, "mean": [0.5, 0.5, 0.5],
             "std": [0.25, 0.25, 0.25], "crop_pct": 1.0, "interpolation": "bicubic", "crop_mode": "center",
             "model": {"fc.bias": torch.zeros(2)}}
    write_deployment_files(state, tmp_path)
    cfg = TrainConfig(data=str(tmp_path), model="resnet18", pretrained=str(tmp_path / "best.safetensors")).resolved()
    assert (cfg.img_size, cfg.crop_pct, cfg.interpolation) == (48, 1.0, "bicubic")
    assert normalization("resnet18", str(tmp_path / "best.safetensors")) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_other_safetensors_keep_the_defaults(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"fc.bias": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    cfg = TrainConfig(data=str(tmp_path), model="resnet18", pretrained=str(tmp_path / "w.safetensors")).resolved()
    assert (cfg.img_size, cfg.crop_pct) == (224, 0.875)

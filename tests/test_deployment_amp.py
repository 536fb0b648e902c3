"""best.safetensors carries the run's --amp: `eval` of it runs in the precision the run validated in, as of best.pt."""

from __future__ import annotations

from pathlib import Path

import torch

from finetune.train import read_deployment_file, write_deployment_files


def test_best_safetensors_keeps_the_runs_amp(tmp_path: Path) -> None:
    state = {"arch": "resnet18", "classes": ["cat", "dog"], "img_size": 32, "model": {"fc.bias": torch.zeros(2)},
             "config": {"data": str(tmp_path), "val_split": 0.1, "seed": 0, "amp": "bf16", "lr": 0.1}}
    write_deployment_files(state, tmp_path)
    assert read_deployment_file(tmp_path / "best.safetensors")["config"] == {
        "data": str(tmp_path), "val_split": 0.1, "seed": 0, "amp": "bf16"}

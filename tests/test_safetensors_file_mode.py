"""best.safetensors and `finetune convert`'s .safetensors get the mode any new file gets under the
umask (0644 under 022, as torch.save's checkpoints beside them), not safetensors' own 0600, which
left a run's deployment file unreadable to everyone else."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from conftest import run_here


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_safetensors_files_are_readable_as_torch_save_files_are(tmp_path: Path, umask_022) -> None:
    from finetune.train import write_deployment_files

    write_deployment_files({"arch": "resnet18", "classes": ["a", "b"], "img_size": 32,
                            "model": {"fc.bias": torch.zeros(2)}}, tmp_path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    res = run_here("convert", str(tmp_path / "w.pt"), str(tmp_path / "w.safetensors"), "-q")
    assert res.returncode == 0, res.stderr
    assert _mode(tmp_path / "w.pt") == 0o644
    assert _mode(tmp_path / "best.safetensors") == 0o644
    assert _mode(tmp_path / "w.safetensors") == 0o644

"""fastai's learn.export (a pickled Learner): refused without trust, its .model with trust."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from finetune.errors import UnsafeCheckpointError
from finetune.weights import read_checkpoint


def test_fastai_learn_export_needs_trust_and_then_gives_its_model(tmp_path: Path) -> None:
    # a stand-in for fastai.learner.Learner (learn.export: torch.save of the whole Learner)
    (tmp_path / "fastai").mkdir()
    (tmp_path / "fastai" / "__init__.py").write_text("")
    (tmp_path / "fastai" / "learner.py").write_text(
        "import torch\nclass Learner:\n    def __init__(self, model):\n        self.model, self.opt = model, None\n")
    code = ("import torch, sys; from fastai.learner import Learner; "
            "torch.save(Learner(torch.nn.Sequential(torch.nn.Linear(3, 2))), sys.argv[1], pickle_protocol=2)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "export.pkl")], check=True, cwd=tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="fastai.learner.Learner.*--trust"):
        read_checkpoint(tmp_path / "export.pkl")
    sys.path.insert(0, str(tmp_path))
    try:
        ck = read_checkpoint(tmp_path / "export.pkl", trust=True)
    finally:
        sys.path.remove(str(tmp_path))
        for m in ("fastai.learner", "fastai"):
            sys.modules.pop(m, None)
    assert sorted(ck.weights) == ["0.bias", "0.weight"] and "Learner" in ck.format

"""A path starting with '~' given from Python (no shell to expand it) names the file in the home folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from finetune import load_weights
from finetune.weights import read_checkpoint


def test_a_path_under_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    model = nn.Linear(2, 2)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth.tar")
    assert set(read_checkpoint("~/w.pth.tar").weights) == {"weight", "bias"}
    fresh = nn.Linear(2, 2)
    assert load_weights(fresh, "~/w.pth.tar").ok and torch.equal(fresh.weight, model.weight)

"""`finetune inspect FILE --model timm:NAME`: without timm, or with a name timm does not know, one error line."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import save_file

from finetune.cli import main


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, str(path))
    return path


def test_inspect_timm_model_without_timm(weights, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    assert main(["inspect", str(weights), "--model", "timm:resnet18"]) == 2
    err = capsys.readouterr().err
    assert "needs timm: pip install timm" in err and "bug" not in err


def test_inspect_unknown_timm_model(weights, capsys):
    pytest.importorskip("timm")
    assert main(["inspect", str(weights), "--model", "timm:resnet18x"]) == 2
    err = capsys.readouterr().err
    assert "unknown timm model 'resnet18x'" in err and "bug" not in err

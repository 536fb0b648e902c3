"""`finetune train --compile` for real (torch.compile, inductor on CPU): it trains, its checkpoint holds the
model's own keys (no `_orig_mod.`), loadable with weights_only=True into the plain model, eval reads it, and
inductor's "No CUDA runtime is found" log line (a CPU run needs none) is not printed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from finetune import create_model


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_compiled_run_saves_plain_keys(colour_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = run_cli("train", "--data", str(colour_data), "--model", "squeezenet1_1", "--img-size", "32", "--epochs", "1",
                  "--batch-size", "8", "--workers", "0", "--device", "cpu", "--compile", "--max-steps", "2",
                  "--out", str(run), "-q", timeout=600)
    assert res.returncode == 0, res.stderr
    assert "No CUDA runtime" not in res.stderr, res.stderr
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    plain = create_model("squeezenet1_1", num_classes=len(state["classes"]))
    assert list(state["model"]) == list(plain.state_dict())
    plain.load_state_dict(state["model"])
    res = run_cli("eval", "--checkpoint", str(run), "--workers", "0", "--device", "cpu", "-q")
    assert res.returncode == 0 and res.stdout.startswith("top-1 "), res.stderr

"""benchmarks/profile_train_input.py on a folder smaller than its warm-up + steps batches."""

import runpy
import sys
from pathlib import Path

import pytest

from finetune.data.bench import make_photo_folder

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_train_input.py"


def test_profile_goes_round_a_small_folder(tmp_path, monkeypatch, capsys):
    root = make_photo_folder(tmp_path / "p", count=4, width=40, height=30, classes=2)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--data", str(root), "--decode", "cpu", "--device", "cpu",
                                      "--model", "resnet18", "--img-size", "16", "--batch-size", "64",
                                      "--workers", "0", "--steps", "1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")  # was: StopIteration after the first of 5 warm-up steps
    assert "1 steps, 4 images:" in capsys.readouterr().out


if not SCRIPT.exists():  # an installed package without the repository's benchmarks
    pytestmark = pytest.mark.skip("benchmarks/ not here")

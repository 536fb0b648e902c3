"""lr-find takes --num-steps steps, never a number of epochs: --epochs given to it changes nothing (its curve is the
same), and it says so with the other run-length flags (--max-steps, --early-stop), not in silence."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_here, write_colour_folder

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu",
        "--num-steps", "2", "--json"]


def test_lr_find_names_epochs_as_ignored(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", per_class=4)
    plain = run_here("lr-find", "--data", str(data), *TINY)
    given = run_here("lr-find", "--data", str(data), "--epochs", "3", *TINY)
    assert plain.returncode == 0 and given.returncode == 0, (plain.stderr, given.stderr)
    assert json.loads(given.stdout)["losses"] == json.loads(plain.stdout)["losses"]  # (nothing it changes)
    assert "takes --num-steps steps: --epochs ignored" in given.stderr, given.stderr
    assert "ignored" not in plain.stderr, plain.stderr

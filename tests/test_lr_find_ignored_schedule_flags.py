"""lr-find sets every step's learning rate itself and reads the trained weights' loss: --lr, --warmup-epochs and
--ema given to it change nothing, and it says so (as it does for the run-directory flags), not in silence."""

from __future__ import annotations

from pathlib import Path

from conftest import run_here, write_colour_folder

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu", "-q"]


def test_lr_find_names_the_schedule_flags_it_ignores(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", per_class=4)
    res = run_here("lr-find", "--data", str(data), "--num-steps", "2", "--lr", "0.5", "--warmup-epochs", "3",
                   "--ema", "0.9", *TINY)
    assert res.returncode == 0, res.stderr
    assert "lr-find sets each step's learning rate itself" in res.stderr
    assert "--lr, --warmup-epochs, --ema ignored" in res.stderr
    quiet = run_here("lr-find", "--data", str(data), "--num-steps", "2", *TINY)  # none given: no warning
    assert quiet.returncode == 0 and "ignored" not in quiet.stderr, quiet.stderr

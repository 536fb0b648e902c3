"""--crop-scale is the training crop's area range: with --no-augment or --cache-features (both train on the eval
transform) it would do nothing, so it is refused, as --auto-augment is, not taken in silence."""

from __future__ import annotations

from pathlib import Path

from conftest import error_line, run_here, write_colour_folder

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--epochs", "1",
        "--device", "cpu", "-q"]


def test_crop_scale_with_no_augment_is_refused_not_ignored(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", per_class=2)
    line = error_line(run_here("train", "--data", str(data), "--out", str(tmp_path / "r"), "--no-augment",
                               "--crop-scale", "0.5", "1", *TINY))
    assert "--no-augment trains on the eval transform, so --crop-scale" in line
    assert not (tmp_path / "r").exists()


def test_crop_scale_with_cache_features_is_refused_not_ignored(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", per_class=2)
    line = error_line(run_here("train", "--data", str(data), "--out", str(tmp_path / "r"), "--linear-probe",
                               "--cache-features", "--crop-scale", "0.5", "1", *TINY))
    assert "--cache-features computes the backbone features once" in line and "--crop-scale" in line
    assert not (tmp_path / "r").exists()

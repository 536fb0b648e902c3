"""A --cache-features run records augment: false (its features come from the eval transform); resumed with
cache_features off, its images are augmented again as any run's, and the run says so (they were not, silently)."""

from __future__ import annotations

from pathlib import Path

import yaml

from conftest import run_here, write_colour_folder

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu", "-q"]


def test_resuming_a_cache_features_run_without_them_augments_again(tmp_path: Path) -> None:
    data, out = write_colour_folder(tmp_path / "data", per_class=2), tmp_path / "r"
    res = run_here("train", "--data", str(data), "--out", str(out), "--linear-probe", "--cache-features",
                   "--epochs", "1", *TINY)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load((out / "config.yaml").read_text())["augment"] is False
    (tmp_path / "more.yaml").write_text("cache_features: false\nepochs: 2\n")
    res = run_here("train", "--config", str(tmp_path / "more.yaml"), "--out", str(out), "--resume", "auto", *TINY)
    assert res.returncode == 0, res.stderr
    assert "augmented again" in res.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["augment"] is True and saved["cache-features"] is False


def test_a_config_files_true_switches_are_turned_off_by_their_no_flags(tmp_path: Path) -> None:
    from finetune.cli import build_parser
    from finetune.config import config_from_args

    (tmp_path / "c.yaml").write_text("linear-probe: true\ncache-features: true\nstrict-data: true\n")
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"),
                                      "--no-linear-probe", "--no-cache-features", "--no-strict-data"])
    cfg = config_from_args(args)
    assert (cfg.linear_probe, cfg.cache_features, cfg.strict_data) == (False, False, False)

"""--layer-decay when only the head trains and --bn when nothing is frozen change nothing: the run says so."""

from __future__ import annotations

from pathlib import Path

from conftest import run_here

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--epochs", "1",
        "--max-steps", "1", "--device", "cpu", "-q"]


def test_layer_decay_with_a_linear_probe_is_named_as_doing_nothing(tmp_path: Path) -> None:
    res = run_here("train", "--linear-probe", "--layer-decay", "0.7", "--out", str(tmp_path / "r"), *TINY)
    assert res.returncode == 0, res.stderr
    assert "--layer-decay 0.7 changes nothing" in res.stderr


def test_bn_policy_with_nothing_frozen_is_named_as_doing_nothing_and_is_quiet_when_it_applies(tmp_path: Path) -> None:
    res = run_here("train", "--bn", "eval", "--out", str(tmp_path / "a"), *TINY)
    assert res.returncode == 0, res.stderr
    assert "--bn eval changes nothing" in res.stderr
    res = run_here("train", "--bn", "eval", "--freeze", "layer1", "--layer-decay", "0.7", "--out", str(tmp_path / "b"),
                   *TINY)
    assert res.returncode == 0, res.stderr
    assert "changes nothing" not in res.stderr


def test_dropout_with_a_linear_probe_is_named_as_doing_nothing(tmp_path: Path) -> None:
    import timm  # noqa: F401  (the test's model)

    args = [a if a != "resnet18" else "timm:resnet10t" for a in TINY]
    res = run_here("train", "--linear-probe", "--dropout", "0.3", "--out", str(tmp_path / "r"), *args)
    assert res.returncode == 0, res.stderr
    assert "--dropout 0.3 changes nothing with --linear-probe" in res.stderr

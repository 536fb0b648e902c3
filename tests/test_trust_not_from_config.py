"""Loading never runs code from a file unless the user says --trust: a config file (another run's config.yaml,
one from elsewhere) saying trust: true does not grant it; the flag on the command line does."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import error_line, run_here, write_colour_folder

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--max-steps", "1",
        "--device", "cpu", "-q"]


def test_trust_in_a_config_file_is_not_taken(tmp_path: Path) -> None:
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "whole.pt")  # a pickled module
    (tmp_path / "c.yaml").write_text(f"trust: true\npretrained: {tmp_path / 'whole.pt'}\n")
    data = write_colour_folder(tmp_path / "data", per_class=2)  # (not the built-in dataset: nothing to draw)
    res = run_here("train", "--config", str(tmp_path / "c.yaml"), "--data", str(data), "--out", str(tmp_path / "r"),
                   *TINY)
    assert "trust: true is not taken from a config file" in res.stderr
    assert "refusing to unpickle" in error_line(res)


def test_trust_in_a_config_file_with_the_flag_given_warns_nothing(tmp_path: Path) -> None:
    # another --trust run's config.yaml (it records trust: true) with --trust: the flag is given, as the warning
    # would ask
    import warnings

    from finetune.cli import build_parser
    from finetune.config import config_from_args

    (tmp_path / "c.yaml").write_text("trust: true\nepochs: 3\n")
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--trust"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = config_from_args(args)
    assert cfg.trust and cfg.epochs == 3

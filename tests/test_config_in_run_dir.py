"""`finetune train --config exp/config.yaml --out exp`: the run used to replace the hand-written
settings file (comments and all) with its resolved config.yaml, without a word."""

import argparse

import pytest

from finetune.config import TrainConfig, config_from_args, save_config
from finetune.errors import ConfigError


def test_hand_written_config_inside_out_is_refused(tmp_path) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text("# small lr: see notes.txt\nepochs: 1\nbatch-size: 4\n")
    with pytest.raises(ConfigError, match="comments"):
        config_from_args(argparse.Namespace(config=str(exp / "config.yaml"), out=str(exp), resume=None))
    assert (exp / "config.yaml").read_text().startswith("# small lr")


def test_a_runs_own_config_may_start_it_again(tmp_path) -> None:
    run = tmp_path / "run"  # stopped before its first save: no checkpoints, its own config.yaml
    run.mkdir()
    save_config(TrainConfig(epochs=2, out=str(run)), run / "config.yaml")
    cfg = config_from_args(argparse.Namespace(config=str(run / "config.yaml"), out=str(run), resume=None))
    assert cfg.epochs == 2

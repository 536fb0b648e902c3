"""`--resume auto` on a run killed before its first checkpoint: the error used to say "start without
--resume", which (without the run's settings) trains the defaults, the built-in dataset, into that run."""

import pytest

from finetune.config import TrainConfig, save_config
from finetune.errors import CheckpointError
from finetune.train import train


def test_nothing_to_resume_names_the_runs_config(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    save_config(TrainConfig(epochs=2, out=str(run)), run / "config.yaml")  # all a kill -9 before the first save left
    cfg = TrainConfig(epochs=2, out=str(run), resume="auto", workers="0", device="cpu")
    with pytest.raises(CheckpointError, match=r"--config \S*config\.yaml --out "):
        train(cfg, quiet=True)

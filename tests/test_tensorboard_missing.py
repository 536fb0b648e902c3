"""``--tensorboard`` where the tensorboard package (an optional dependency) cannot be imported: one
``finetune: error:`` line that says what to install, before anything of the run is written; it was
"unexpected ModuleNotFoundError ... this is a bug in finetune", after config.yaml and classes.json."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from finetune import TrainConfig
from finetune.errors import ConfigError
from finetune.logging import RunLog
from finetune.train import train


@pytest.fixture
def no_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import of it raises ImportError


def test_runlog_says_to_install_tensorboard(no_tensorboard: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs the tensorboard package.*pip install tensorboard"):
        RunLog(tmp_path, tensorboard=True, quiet=True)
    RunLog(tmp_path, tensorboard=False, quiet=True).close()  # without --tensorboard nothing is needed


def test_train_refuses_before_writing_the_run_dir(no_tensorboard: None, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(tmp_path / "photos"), model="squeezenet1_1", img_size=32, epochs=1, workers="0",
                      device="cpu", out=str(out), tensorboard=True)
    with pytest.raises(ConfigError, match=r"--tensorboard\) needs the tensorboard package"):
        train(cfg, quiet=True)
    assert not out.exists()

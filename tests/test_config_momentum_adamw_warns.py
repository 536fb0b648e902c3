"""A new run's --config FILE that gives momentum with optimizer adamw (the default): adamw does not use momentum,
so one `finetune: warning:` line says so (it was silently unused; the --momentum flag is refused, see
test_cli_edges). The default momentum, which every run's config.yaml holds whatever the optimizer, says nothing."""

from __future__ import annotations

import argparse
import contextlib
import io
import warnings
from pathlib import Path

import pytest

from finetune.config import config_from_args


def _config(tmp_path: Path, text: str) -> str:
    (tmp_path / "c.yaml").write_text(text)
    return str(tmp_path / "c.yaml")


@pytest.mark.parametrize(("text", "flags"), [
    ("optimizer: adamw\nmomentum: 0.5\n", {}),
    ("momentum: 0.5\n", {}),  # adamw by default
    ("optimizer: sgd\nmomentum: 0.5\n", {"optimizer": "adamw"}),  # another run's settings, another optimizer
])
def test_momentum_unused_by_the_optimizer_warns(tmp_path: Path, text: str, flags: dict) -> None:
    with pytest.warns(UserWarning, match=r"c\.yaml: momentum 0\.5 applies to optimizer sgd only and is not used"):
        cfg = config_from_args(argparse.Namespace(config=_config(tmp_path, text), **flags))
    assert cfg.optimizer == "adamw"


@pytest.mark.parametrize("text", ["optimizer: adamw\nmomentum: 0.9\n", "optimizer: sgd\nmomentum: 0.5\n",
                                  "optimizer: adamw\n"])
def test_default_momentum_or_sgd_says_nothing(tmp_path: Path, text: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config_from_args(argparse.Namespace(config=_config(tmp_path, text)))


def test_the_command_prints_one_warning_line(tmp_path: Path) -> None:
    from finetune.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # (stops at the missing data, after reading the settings)
        rc = main(["train", "--config", _config(tmp_path, "optimizer: adamw\nmomentum: 0.5\n"),
                   "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run")])
    warned = [line for line in err.getvalue().splitlines() if line.startswith("finetune: warning:")]
    assert rc == 2 and len(warned) == 1 and "momentum 0.5 applies to optimizer sgd only" in warned[0]

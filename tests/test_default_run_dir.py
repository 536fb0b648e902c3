"""Two runs without --out started in the same second get two run directories."""
import contextlib

import pytest

from finetune.errors import ConfigError
from finetune.train import claim_default_run_dir, hold_run_dir


def test_default_run_dir_in_use_takes_next_name(tmp_path):
    base = tmp_path / "runs" / "resnet18-photos-20261128-152846"
    with contextlib.ExitStack() as first, contextlib.ExitStack() as second, contextlib.ExitStack() as third:
        assert claim_default_run_dir(first, base) == base
        assert claim_default_run_dir(second, base) == base.with_name(base.name + "-2")
        assert claim_default_run_dir(third, base) == base.with_name(base.name + "-3")


def test_default_run_dir_holding_a_run_is_skipped(tmp_path):
    base = tmp_path / "runs" / "resnet18-photos-20261128-152846"
    base.mkdir(parents=True)
    (base / "config.yaml").write_text("model: resnet18\n")  # a finished run of the same second
    with contextlib.ExitStack() as hold:
        run_dir = claim_default_run_dir(hold, base)
        assert run_dir.name.endswith("-2")
        with pytest.raises(ConfigError, match="in use"), hold_run_dir(run_dir):  # held by the claim
            pass

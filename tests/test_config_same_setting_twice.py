"""A YAML config that gives one setting under both spellings (batch-size and batch_size) is an error, as a key
given twice is: the later one used to win in silence."""

import pytest

from finetune.config import load_config
from finetune.errors import ConfigError


def test_dash_and_underscore_spelling_twice(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("batch-size: 16\nepochs: 2\nbatch_size: 64\n")
    with pytest.raises(ConfigError, match="'batch-size' and 'batch_size'.*keep one"):
        load_config(path)

"""`amp: off` in a YAML config (PyYAML reads an unquoted off as false) means --amp off; another word YAML
turned into true/false says to quote it, instead of "must be a single value (text), got False"."""

import pytest

from finetune.config import load_config
from finetune.errors import ConfigError


def test_amp_off_unquoted(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("amp: off\nepochs: 1\n")
    assert load_config(path).amp == "off"


def test_other_yaml_boolean_word_says_quote_it(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cache: no\n")
    with pytest.raises(ConfigError, match="quote"):
        load_config(path)

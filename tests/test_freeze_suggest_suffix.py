"""A pattern that matches nothing names the close names: a module or parameter whose last part is the
pattern (``fc`` for timm's ``head.fc``) is among them."""

from __future__ import annotations

import pytest
from torch import nn

from finetune.errors import ConfigError
from finetune.freeze import freeze_all_but


def test_unmatched_pattern_suggests_names_ending_in_it() -> None:
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 4, 3))
    net.add_module("head", nn.Sequential())
    net.head.add_module("norm", nn.LayerNorm(4))
    net.head.add_module("fc", nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"did you mean: head\.fc"):
        freeze_all_but(net, "fc")

"""freeze_all_but with patterns that name only parameter-free modules (``fc`` replaced by
``nn.Identity()``) is an error, not a model with nothing left to train."""

from __future__ import annotations

import pytest
from torch import nn

from finetune.errors import ConfigError
from finetune.freeze import freeze_all_but


def test_freeze_all_but_a_parameter_free_module_is_refused() -> None:
    net = nn.Sequential()
    net.add_module("body", nn.Linear(4, 4))
    net.add_module("fc", nn.Identity())
    net.add_module("head", nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"names no parameter.*\bfc\b.*freeze everything"):
        freeze_all_but(net, "fc")
    assert all(p.requires_grad for p in net.parameters())
    assert freeze_all_but(net, "head") == ["body.weight", "body.bias"]

"""Arguments of the wrong kind to ``freeze_until`` and ``param_groups``: a ConfigError naming the
argument (they raised AttributeError / TypeError from inside, and ``no_decay="bias"``, read letter
by letter, silently took weight decay off nearly every parameter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torchvision

import finetune
from finetune import ConfigError


@pytest.mark.parametrize("name", [2, None, Path("layer4"), ""])
def test_freeze_until_takes_a_module_name(name: Any) -> None:
    model = torchvision.models.resnet18(num_classes=2)
    with pytest.raises(ConfigError, match=r"freeze_until takes a module name \(a non-empty string"):
        finetune.freeze_until(model, name)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"no_decay": "bias"}, "no_decay must be a list of name parts"),
    ({"no_decay": ("bias", 3)}, "no_decay must be a list of name parts"),
    ({"layer_decay": "0.7"}, "layer decay must be in (0, 1], got '0.7'"),
    ({"weight_decay": "0.1"}, "weight decay must be >= 0, got '0.1'"),
    ({"weight_decay": None}, "weight decay must be >= 0, got None"),
    ({"lr_mult": ["fc"]}, "lr_mult must map patterns to multipliers"),
    ({"lr_mult": {3: 2.0}}, "an lr_mult pattern must be a non-empty string, got 3"),
], ids=["no_decay-str", "no_decay-int", "layer_decay-str", "weight_decay-str", "weight_decay-none", "lr_mult-list",
        "lr_mult-key"])
def test_param_groups_arguments_of_another_kind(kwargs: dict[str, Any], said: str) -> None:
    model = torchvision.models.resnet18(num_classes=2)
    with pytest.raises(ConfigError) as info:
        finetune.param_groups(model, 0.1, **{"weight_decay": 0.1, **kwargs})
    assert said in str(info.value)


def test_param_groups_no_decay_words_as_a_list_still_work() -> None:
    model = torchvision.models.resnet18(num_classes=2)
    groups = finetune.param_groups(model, 0.1, weight_decay=0.1, no_decay=["bias"])
    assert {g["name"]: len(g["params"]) for g in groups} == {"default": 21, "default/no_decay": 41}

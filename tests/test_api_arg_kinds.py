"""The library's functions of a model given something else (a model's name, None) or create_model a num_classes
of another kind: a finetune error that says what to pass, not an AttributeError / TypeError from inside."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import finetune
from finetune import ConfigError, ModelError

IMAGES = torch.zeros(1, 3, 32, 32)


@pytest.mark.parametrize("call", [
    lambda m: finetune.freeze(m, "layer1"), lambda m: finetune.trainable_table(m), lambda m: finetune.param_groups(m, 0.1),
    lambda m: finetune.layer_summary(m), lambda m: finetune.class_activation_maps(m, IMAGES),
    lambda m: finetune.find_cam_layer(m, IMAGES),
], ids=["freeze", "trainable_table", "param_groups", "layer_summary", "class_activation_maps", "find_cam_layer"])
def test_a_models_name_is_no_model(call: Any) -> None:
    with pytest.raises(ConfigError, match=r"expected a model \(a torch.nn.Module\), got str 'resnet18'"):
        call("resnet18")


def test_audit_without_an_optimizer_and_create_model_with_a_text_class_count() -> None:
    with pytest.raises(ConfigError, match="audit needs the optimizer"):
        finetune.audit(torch.nn.Linear(2, 2), None)
    with pytest.raises(ModelError, match="num_classes must be a whole number, at least 1, got '3'"):
        finetune.create_model("resnet18", num_classes="3")

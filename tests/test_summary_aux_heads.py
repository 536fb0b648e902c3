"""finetune summary checks the size in train mode too where the model has auxiliary heads (GoogLeNet,
Inception v3), as train's own check does: a size the summary passes is one train takes."""

from __future__ import annotations

import torch

from conftest import error_line, run_here
from finetune import create_model, layer_summary


def test_summary_names_the_aux_head_that_cannot_take_the_size() -> None:
    model = create_model("inception_v3", num_classes=2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = layer_summary(model, 128, depth=1)  # the main path fits 128 px; AuxLogits' 5x5 conv does not
    assert not s.ok and s.failed_at.startswith("AuxLogits") and "train mode" in s.error
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training


def test_cli_summary_refuses_what_train_refuses() -> None:
    line = error_line(run_here("summary", "inception_v3", "--img-size", "128", "--depth", "1"))
    assert "in layer 'AuxLogits" in line

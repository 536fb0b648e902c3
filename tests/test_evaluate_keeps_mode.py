"""``finetune.evaluate`` in a user's own training loop: it scores the model in eval mode and leaves
every module in the mode it found it in (it left the whole model in eval, so the loop's next epoch
trained with BatchNorm statistics and dropout off, silently)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import finetune
from conftest import write_colour_folder


def test_evaluate_leaves_each_module_in_its_mode(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", per_class=2, size=16)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))
    model.train()
    model[2].eval()  # a module the caller put in eval on purpose stays so
    stats = model[1].running_mean.clone()
    with finetune.build_loader(data / "val", train=False, img_size=16, batch_size=4, workers="0") as loader:
        first = finetune.evaluate(model, loader)
        second = finetune.evaluate(model, loader)
    assert [m.training for m in model] == [True, True, False, True, True, True]
    assert torch.equal(model[1].running_mean, stats)  # scored in eval mode: no statistics moved
    assert first["loss"] == second["loss"] and first["images"] == 4

"""Two Checkpointers with different best metrics on one run directory: the second is refused, nothing is lost."""

from __future__ import annotations

import os

import pytest
from torch import nn

from finetune.checkpoint import Checkpointer
from finetune.errors import CheckpointError


@pytest.mark.parametrize(("metric", "mode"), [("val_top1", "max"), ("val_loss", "max")])
def test_a_checkpointer_with_another_best_metric_is_refused(tmp_path, metric, mode):
    net = nn.Linear(2, 2)
    by_loss = Checkpointer(tmp_path, keep_last=1, best_metric="val_loss", mode="min")
    by_loss.save({"model": net, "epoch": 0, "step": 1}, metrics={"val_loss": 0.9, "val_top1": 0.2})
    by_loss.save({"model": net, "epoch": 1, "step": 2}, metrics={"val_loss": 0.5, "val_top1": 0.6})
    before = sorted(os.listdir(by_loss.directory))
    other = Checkpointer(tmp_path, keep_last=1, best_metric=metric, mode=mode)
    with pytest.raises(CheckpointError, match=r"by 'val_loss' \(min, best 0.5\).*best_metric='val_loss', mode='min'"):
        other.save({"model": net, "epoch": 2, "step": 3}, metrics={"val_loss": 0.7, "val_top1": 0.5})
    assert sorted(os.listdir(by_loss.directory)) == before  # its best.pt and best checkpoint are untouched
    by_loss.save({"model": net, "epoch": 3, "step": 4}, metrics={"val_loss": 0.8, "val_top1": 0.4})
    assert by_loss.best_value == 0.5 and by_loss.load(by_loss.best())["epoch"] == 1
    again = Checkpointer(tmp_path, keep_last=1, best_metric="val_loss", mode="min")  # a resumed process: as before
    assert again.best_value == 0.5 and again.load(again.directory / "best.pt")["epoch"] == 1

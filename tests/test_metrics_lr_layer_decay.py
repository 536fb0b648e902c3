"""metrics.jsonl's lr is the schedule's --lr, not the first parameter group's (the stem's under --layer-decay)."""

import json

import pytest

from conftest import run_here
from finetune import make_shapes
from finetune.train import lr_factor


def test_metrics_lr_is_the_scheduled_lr_under_layer_decay(tmp_path):
    data = make_shapes(tmp_path / "shapes", per_class=2, val_per_class=1, size=16)
    res = run_here("train", "--data", str(data), "--model", "resnet18", "--img-size", "16", "--epochs", "1",
                   "--batch-size", "16", "--workers", "0", "--device", "cpu", "--lr", "0.01", "--warmup-epochs", "0",
                   "--layer-decay", "0.5", "--out", str(tmp_path / "run"), "-q")
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["lr"] == pytest.approx(0.01 * lr_factor(0, 1, 0))  # not 0.01 x 0.5**6, conv1's

"""predict and cam over many images (minutes for a folder, or ScoreCAM) show a progress bar on a terminal, as
train and eval do; -q (quiet) and a stderr that is no terminal show none."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from PIL import Image

from finetune import Checkpointer, create_model
from finetune.cam import explain
from finetune.train import predict_files


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_predict_and_cam_show_a_bar_on_a_terminal_unless_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                quiet: bool) -> None:
    path = Checkpointer(tmp_path / "run").save({"model": create_model("squeezenet1_1", num_classes=2),
                                                "arch": "squeezenet1_1", "classes": ["cat", "dog"], "img_size": 32,
                                                "epoch": 0, "step": 0})
    for i in range(3):
        Image.new("RGB", (40, 30), (80 * i, 0, 0)).save(tmp_path / f"{i}.jpg")
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    assert len(predict_files(path, [str(tmp_path)], batch_size=2, device="cpu", quiet=quiet)) == 3
    explain(path, [str(tmp_path)], device="cpu", out=tmp_path / "cam", quiet=quiet)
    shown = err.getvalue()
    assert ("predict" in shown and "cam gradcam" in shown) != quiet, shown

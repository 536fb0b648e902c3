"""Eigen-CAM's map is the features' first principal component, the same whatever the class: `cam --method eigencam
--target CLASS` is refused, not run with the target's name on every overlay and record while its maps are those
of no class at all (was: accepted, and only the names and probabilities changed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import error_line, run_here
from finetune import Checkpointer, create_model
from finetune.cam import class_activation_maps, explain
from finetune.errors import ConfigError


def _run(tmp_path: Path) -> Path:
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "imgs" / "red.png")
    run = tmp_path / "run"
    Checkpointer(run).save({"model": create_model("squeezenet1_1", num_classes=2), "arch": "squeezenet1_1",
                            "classes": ["cat", "dog"], "img_size": 32, "epoch": 0, "step": 0})
    return run


def test_eigencam_maps_do_not_depend_on_the_class() -> None:  # (why a target means nothing to it)
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(class_activation_maps(model, x, method="eigencam", classes=[0, 0]).maps,
                       class_activation_maps(model, x, method="eigencam", classes=[2, 2]).maps)


def test_eigencam_with_a_target_is_refused(tmp_path: Path) -> None:
    run = _run(tmp_path)
    with pytest.raises(ConfigError, match=r"eigencam's map does not depend on the class.*--target"):
        explain(run, [str(tmp_path / "imgs")], method="eigencam", target="dog", device="cpu")
    assert not (run / "cam").exists()  # refused before anything is written
    res = run_here("cam", str(run), str(tmp_path / "imgs"), "--method", "eigencam", "--target", "dog", "--device", "cpu")
    assert res.returncode == 2 and "--target" in error_line(res), res.stderr
    # without a target, and eigengradcam (features x the class's gradients) with one, still run
    assert len(explain(run, [str(tmp_path / "imgs")], method="eigencam", device="cpu").records) == 1
    report = explain(run, [str(tmp_path / "imgs")], method="eigengradcam", target="dog", device="cpu")
    assert [r["class"] for r in report.records] == ["dog"]

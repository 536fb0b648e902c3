"""cam2: a boxes.csv at the dataset root scores the val folder or files explained."""

from __future__ import annotations

import pytest
import torch

from finetune import Checkpointer, create_model
from finetune.cam import explain


def _run_and_data(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    run = tmp_path / "run"
    Checkpointer(run).save({"model": create_model("resnet18", num_classes=2), "arch": "resnet18",
                            "classes": ["a", "b"], "img_size": 32, "epoch": 0, "step": 0})
    data = tmp_path / "data"
    (data / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(data / "val" / "a" / "1.png")
    (data / "boxes.csv").write_text("split,path,label,x0,y0,x1,y1\nval,val/a/1.png,a,10,10,30,30\n")  # as make-shapes
    return run, data


@pytest.mark.parametrize("given", ["val", "val/a/1.png"])
def test_boxes_csv_at_the_dataset_root_scores_its_val_folder_and_files(tmp_path, given) -> None:
    run, data = _run_and_data(tmp_path)
    report = explain(run, [str(data / given)], device="cpu", out=tmp_path / "out")
    assert report.localisation is not None and report.localisation.images == 1
    assert "pointing" in report.records[0]

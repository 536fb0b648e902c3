"""`finetune cam RUN/checkpoints` (the folder, as eval and predict take it) writes its overlays to RUN/cam/METHOD, as
`cam RUN` and `cam RUN/checkpoints/best.pt` do (was: into RUN/checkpoints/cam/METHOD, among the checkpoints)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from finetune import Checkpointer, create_model
from finetune.cam import explain


def test_the_checkpoints_folder_writes_to_the_runs_cam_folder(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "imgs" / "red.png")
    run = tmp_path / "run"
    Checkpointer(run).save({"model": create_model("squeezenet1_1", num_classes=2), "arch": "squeezenet1_1",
                            "classes": ["cat", "dog"], "img_size": 32, "epoch": 0, "step": 0},
                           metrics={"val_top1": 0.5})  # (a best.pt: what a folder's checkpoint is)
    for given in (run, run / "checkpoints", run / "checkpoints" / "best.pt"):
        report = explain(given, [str(tmp_path / "imgs")], device="cpu")
        assert report.out_dir == run / "cam" / "gradcam", given
    assert not (run / "checkpoints" / "cam").exists()

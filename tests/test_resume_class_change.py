"""A resume on data whose classes changed names the change (a class added at the end used to read as
two identical lists: "['a', ...]… differ from the data's ['a', ...]…")."""

import shutil

import pytest

from finetune import Checkpointer, TrainConfig, make_shapes
from finetune.errors import CheckpointError
from finetune.train import class_change, train


def test_class_change_names_added_and_missing() -> None:
    assert class_change(list("abcdefg"), list("abcdefg") + ["zebra"]) == "1 class new in the data: 'zebra'"
    assert "'square'" in class_change(["circle", "square"], ["circle", "squares"])


def test_resume_with_a_class_added_names_it(tmp_path) -> None:
    data = make_shapes(tmp_path / "data", per_class=1, val_per_class=1, size=32)
    classes = sorted(p.name for p in (data / "train").iterdir())
    run = tmp_path / "run"
    path = Checkpointer(run).save({"model": {}, "arch": "squeezenet1_1", "classes": classes, "epoch": 0, "step": 1,
                                   "config": {}, "loader": {"position": 0}})
    for split in ("train", "val"):  # 'zzz' sorts last: the first classes are the same as before
        shutil.copytree(data / split / "circle", data / split / "zzz")
    cfg = TrainConfig(data=str(data), model="squeezenet1_1", img_size=32, epochs=2, batch_size=4,
                      workers="0", device="cpu", out=str(run), resume=str(path))
    with pytest.raises(CheckpointError, match=r"1 class new in the data: 'zzz'.*--pretrained"):
        train(cfg, quiet=True)

"""eval on the checkpoint's own training data: a changed folder is warned about, best.safetensors knows its
data's split, a CSV of training rows only is not scored (predhunt)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from finetune import Checkpointer, create_model
from finetune.errors import DataError


def _flat(root: Path, per_class: int = 10) -> Path:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (12, 12), (i * 20, 0, 0) if c == "cat" else (0, 0, i * 20)).save(root / c / f"{i}.png")
    return root


def _checkpoint(tmp_path: Path, data: Path) -> Path:
    return Checkpointer(tmp_path / "run").save({
        "model": create_model("squeezenet1_1", num_classes=2), "arch": "squeezenet1_1", "classes": ["cat", "dog"],
        "img_size": 32, "epoch": 0, "step": 0, "train_images": 16, "val_images": 4,
        "config": {"data": str(data), "val_split": 0.2, "seed": 0}})


def test_eval_warns_when_the_training_folder_changed_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.train import evaluate_checkpoint

    data = _flat(tmp_path / "flat")
    path = _checkpoint(tmp_path, data)
    assert evaluate_checkpoint(path, device="cpu")["images"] == 4
    assert "changed" not in capsys.readouterr().err
    Image.new("RGB", (12, 12)).save(data / "cat" / "new.png")  # the folder's split is drawn anew: not training's
    assert evaluate_checkpoint(path, device="cpu")["images"] == 4
    err = capsys.readouterr().err
    assert "has changed since" in err and "17 + 4" in err and "16 + 4" in err


def test_adding_training_images_beside_a_val_folder_is_not_a_changed_split(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.train import evaluate_checkpoint

    data = tmp_path / "split"
    _flat(data / "train", per_class=8)
    _flat(data / "val", per_class=2)
    path = _checkpoint(tmp_path, data)
    Image.new("RGB", (12, 12)).save(data / "train" / "cat" / "new.png")  # val/ is still val/: nothing leaks
    assert evaluate_checkpoint(path, device="cpu")["images"] == 4
    assert "changed" not in capsys.readouterr().err


def test_best_safetensors_scores_the_validation_split_of_its_training_data(tmp_path: Path) -> None:
    from finetune.train import evaluate_checkpoint, read_deployment_file, write_deployment_files

    data = _flat(tmp_path / "flat")
    state = Checkpointer.read(_checkpoint(tmp_path, data))
    write_deployment_files(state, tmp_path)
    dep = read_deployment_file(tmp_path / "best.safetensors")
    assert dep is not None and dep["config"]["data"] == str(data) and dep["train_images"] == 16
    # given the data it was trained on, its validation images only (4), not the 16 it was trained on with them
    assert evaluate_checkpoint(tmp_path / "best.safetensors", data=str(data), device="cpu")["images"] == 4


def test_eval_refuses_a_csv_of_training_rows_only(tmp_path: Path) -> None:
    from finetune.data.samples import eval_samples

    _flat(tmp_path / "flat", per_class=2)
    (tmp_path / "t.csv").write_text("path,label,split\n" + "".join(
        f"flat/{c}/{i}.png,{c},train\n" for c in ("cat", "dog") for i in range(2)))
    with pytest.raises(DataError, match="training images"):
        eval_samples(tmp_path / "t.csv", ["cat", "dog"])


def test_eval_uses_the_precision_the_run_validated_in(tmp_path: Path) -> None:
    """A run with --amp bf16 (the default on CUDA) validated under bf16 autocast: eval's numbers are its val_*."""
    import torch

    from finetune.data import build_loader
    from finetune.data.samples import eval_samples
    from finetune.train import evaluate, evaluate_checkpoint, load_checkpoint_model

    data = _flat(tmp_path / "flat", per_class=3)
    torch.manual_seed(0)
    path = Checkpointer(tmp_path / "run").save({
        "model": create_model("resnet18", num_classes=2), "arch": "resnet18", "classes": ["cat", "dog"],
        "img_size": 32, "epoch": 0, "step": 0, "config": {"amp": "bf16"}})
    model, _ = load_checkpoint_model(path, torch.device("cpu"))
    with build_loader(eval_samples(data, ["cat", "dog"]), train=False, img_size=32, batch_size=8, workers="0") as loader:
        val = evaluate(model, loader, amp=torch.bfloat16)  # what training's validation computed
    res = evaluate_checkpoint(path, data=str(data), batch_size=8, device="cpu")
    assert res["loss"] == val["loss"] and res["top1"] == val["top1"]

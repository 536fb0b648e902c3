"""``--class-weights balanced`` counts the readable training images only (the loader skips the others)."""

from __future__ import annotations

from pathlib import Path

from conftest import error_line, run_here, write_colour_folder
from finetune.data.samples import find_splits
from finetune.train import class_weights, readable_labels

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--epochs", "1",
        "--max-steps", "1", "--optimizer", "sgd", "--lr", "0.01", "--warmup-epochs", "0", "--device", "cpu", "-q"]


def test_unreadable_images_are_not_counted(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", per_class=4, size=16)
    for image in sorted((data / "train" / "blue").glob("*.jpg"))[2:]:
        image.write_bytes(b"")
    train, _ = find_splits(str(data))
    weights = class_weights(readable_labels(train, "balanced"), train.classes, "balanced")
    assert weights.tolist() == [1.5, 0.75]  # 6 readable: 6 / (2 x 2), 6 / (2 x 4)


def test_a_class_without_one_readable_image_is_an_error(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", per_class=4, size=16)
    for image in (data / "train" / "blue").glob("*.jpg"):
        image.write_bytes(b"not an image")
    res = run_here("train", "--data", str(data), "--out", str(tmp_path / "w"), "--class-weights", "balanced", *TINY)
    assert res.returncode == 2
    assert error_line(res).startswith("finetune: error: class_weights='balanced' (--class-weights balanced): no training image of class 'blue' "
                                      "can be read (4 of them, e.g. ")

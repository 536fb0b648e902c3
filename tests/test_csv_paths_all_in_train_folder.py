"""A CSV without a split column whose paths all sit in one train/ folder (Kaggle's dogs-vs-cats labels, a
hold-out CSV cut from them) has no split to take from its paths: eval scores its rows, as before."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from finetune.data.samples import eval_samples, find_splits


def test_a_csv_of_train_folder_paths_is_scored_by_eval(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    rows = ["path,label"]
    for i in range(4):
        for c in ("cat", "dog"):
            Image.new("RGB", (8, 8)).save(tmp_path / "train" / f"{c}.{i}.jpg")
            rows.append(f"train/{c}.{i}.jpg,{c}")
    (tmp_path / "holdout.csv").write_text("\n".join(rows) + "\n")
    assert len(eval_samples(tmp_path / "holdout.csv", ["cat", "dog"])) == 8  # was: "every row ... has split 'train'"
    train, val = find_splits(tmp_path / "holdout.csv", val_split=0.5)  # a drawn split, as without the folder
    assert (len(train), len(val)) == (4, 4)

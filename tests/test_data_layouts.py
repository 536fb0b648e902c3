"""Dataset layouts that real projects ship (found by an adversarial pass over the data readers):
split folders in any case, test/ splits, Kaggle- and fastai-style split columns, a CSV that lists
an image twice, labels that look like digits."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image

from finetune import DataError
from finetune.data.samples import eval_samples, find_splits


def images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (len(name) * 9 % 256, 0, 0)).save(root / name)


def test_split_folders_are_found_in_any_case(tmp_path: Path) -> None:
    images(tmp_path, [f"Train/{c}/{i}.jpg" for c in ("cat", "dog") for i in range(3)] + ["VAL/cat/0.jpg", "VAL/dog/0.jpg"])
    train, val = find_splits(tmp_path)
    assert list(train.classes) == list(val.classes) == ["cat", "dog"]  # were the classes ['Train', 'VAL']
    assert (len(train), len(val)) == (6, 2)


def test_a_class_named_train_beside_other_classes_is_said_to_be_read_as_the_split(tmp_path: Path) -> None:
    images(tmp_path, [f"{c}/{i}.jpg" for c in ("cat", "dog", "train") for i in range(2)])
    with pytest.raises(DataError, match=r"'train' is read as the training split .* must be renamed"):
        find_splits(tmp_path)


def test_split_named_folders_without_train_are_not_read_as_classes(tmp_path: Path) -> None:
    images(tmp_path, [f"{c}/{i}.jpg" for c in ("cats", "dogs", "test") for i in range(2)])
    with pytest.raises(DataError, match=r"named like data splits but no train/ folder"):
        find_splits(tmp_path)


def test_eval_on_a_folder_with_train_and_test_scores_test(tmp_path: Path) -> None:
    images(tmp_path, [f"train/{c}/{i}.jpg" for c in ("cat", "dog") for i in range(3)] + ["test/cat/0.jpg"])
    samples = eval_samples(tmp_path, ["cat", "dog"])
    assert [Path(p).parts[-3] for p in samples.paths] == ["test"]
    only_train = tmp_path / "only"
    images(only_train, ["train/cat/0.jpg"])
    with pytest.raises(DataError, match=r"has a train/ folder but no val/ or test/ folder"):
        eval_samples(only_train, ["cat", "dog"])


def test_eval_on_a_csv_never_scores_its_train_rows(tmp_path: Path) -> None:
    images(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "l.csv").write_text("path,label,split\na.jpg,cat,train\nb.jpg,dog,train\nc.jpg,cat,test\n")
    samples = eval_samples(tmp_path / "l.csv", ["cat", "dog"])
    assert [Path(p).name for p in samples.paths] == ["c.jpg"]


def test_kaggle_and_fastai_split_columns_are_read(tmp_path: Path) -> None:
    names = [f"{c}{i}.jpg" for c in "ab" for i in range(4)]
    images(tmp_path, names)
    sets = ["train", "train", "valid", "test"] * 2
    (tmp_path / "k.csv").write_text("filepaths,labels,data set\n" + "".join(
        f"{n},{n[0]},{s}\n" for n, s in zip(names, sets, strict=True)))
    train, val = find_splits(tmp_path / "k.csv")
    assert sorted(Path(p).name for p in val.paths) == ["a2.jpg", "b2.jpg"]
    assert len(train) == 4  # the test rows are neither trained nor validated on
    (tmp_path / "f.csv").write_text("fname,label,is_valid\n" + "".join(
        f"{n},{n[0]},{n[1] == '0'}\n" for n in names))
    train, val = find_splits(tmp_path / "f.csv")
    assert sorted(Path(p).name for p in val.paths) == ["a0.jpg", "b0.jpg"]


def test_rows_of_an_unknown_split_are_not_dropped_silently(tmp_path: Path) -> None:
    names = [f"{c}{i}.jpg" for c in "ab" for i in range(4)]
    images(tmp_path, names)
    sets = ["train", "train", "val", "dev"] * 2
    (tmp_path / "s.csv").write_text("path,label,split\n" + "".join(
        f"{n},{n[0]},{s}\n" for n, s in zip(names, sets, strict=True)))
    with pytest.warns(UserWarning, match=r"2 rows are used neither for training nor for validation \(split 'dev': 2\)"):
        find_splits(tmp_path / "s.csv")


def test_an_image_listed_twice(tmp_path: Path) -> None:
    names = [f"{c}{i}.jpg" for c in "ab" for i in range(4)]
    images(tmp_path, names)
    rows = "".join(f"{n},{n[0]}\n" for n in names)
    (tmp_path / "same.csv").write_text("path,label\n" + rows + "a0.jpg,a\n")
    with pytest.warns(UserWarning, match=r"lists 1 image twice"):
        train, val = find_splits(tmp_path / "same.csv", val_split=0.5)
    assert len(train) + len(val) == 8 and not set(train.paths) & set(val.paths)
    (tmp_path / "two.csv").write_text("path,label\n" + rows + "a0.jpg,b\n")
    with pytest.raises(DataError, match=r"lists 'a0.jpg' twice, with labels 'a' and 'b'"):
        find_splits(tmp_path / "two.csv")


def test_labels_that_str_isdigit_calls_digits(tmp_path: Path) -> None:
    images(tmp_path, [f"{i}.jpg" for i in range(4)])
    (tmp_path / "l.csv").write_text("path,label\n0.jpg,²\n1.jpg,³\n2.jpg,²\n3.jpg,³\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, val = find_splits(tmp_path / "l.csv", val_split=0.5)
    assert list(train.classes) == ["²", "³"]


def test_an_unreadable_train_folder_beside_class_folders_is_said_to_be_unreadable(tmp_path: Path, monkeypatch) -> None:
    # the check for a class named 'train' reads the folder again: unreadable, it is the scan's DataError, not a
    # PermissionError out of find_splits
    import os

    images(tmp_path, [f"{c}/0.jpg" for c in ("cat", "dog")])
    (tmp_path / "train").mkdir()
    scandir, listdir = os.scandir, os.listdir

    def refused(real):  # (root reads a chmod 000 folder: refuse it here as it is refused to other users)
        def read(path="."):
            if Path(path) == tmp_path / "train":
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)
        return read

    monkeypatch.setattr(os, "scandir", refused(scandir))
    monkeypatch.setattr(os, "listdir", refused(listdir))
    with pytest.raises(DataError, match="cannot read the folder .*train"):
        find_splits(tmp_path)

"""Datasets laid out as other tools lay them out (Kaggle, Hugging Face imagefolder / datasets, fastai):
read right, or refused with what to do, never trained silently as something else."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from finetune import DataError
from finetune.data.samples import eval_samples, find_splits


def images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (len(name) * 9 % 256, 0, 0)).save(root / name)


def test_a_multi_label_csv_is_refused_not_trained_as_combined_classes(tmp_path: Path) -> None:
    images(tmp_path, [f"{i}.jpg" for i in range(6)])
    (tmp_path / "fastai.csv").write_text("fname,labels\n0.jpg,cat\n1.jpg,dog\n2.jpg,cat dog\n3.jpg,cat\n4.jpg,dog\n5.jpg,dog\n")
    with pytest.raises(DataError, match=r"row '2.jpg,cat dog' several labels \('cat', 'dog'.*one label"):
        find_splits(tmp_path / "fastai.csv")  # was: a third class 'cat dog'
    (tmp_path / "semi.csv").write_text("path,label\n0.jpg,cat\n1.jpg,dog\n2.jpg,cat;dog\n3.jpg,cat\n")
    with pytest.raises(DataError, match=r"several labels"):
        find_splits(tmp_path / "semi.csv")
    (tmp_path / "names.csv").write_text("path,label\n0.jpg,golden retriever\n1.jpg,pug\n2.jpg,golden retriever\n3.jpg,pug\n")
    train, _ = find_splits(tmp_path / "names.csv", val_split=0.5)  # a class name with a space is one class
    assert train.classes == ("golden retriever", "pug")


def test_splits_one_folder_down_are_named_not_read_as_one_class(tmp_path: Path) -> None:
    images(tmp_path / "d", [f"images/{s}/{c}/0.jpg" for s in ("train", "val") for c in ("cat", "dog")])
    for read in (lambda: find_splits(tmp_path / "d"), lambda: eval_samples(tmp_path / "d", ["cat", "dog"])):
        with pytest.raises(DataError, match=r"splits one folder down, in '.*/d/images' \(train/, val/\): give"):
            read()  # was: "has only one class ('images')" / "has classes ['images']"
    images(tmp_path / "n", [f"vehicles/{c}/{i}.jpg" for c in ("train", "bus") for i in range(2)]
           + [f"animals/cat/{i}.jpg" for i in range(2)])
    train, val = find_splits(tmp_path / "n", val_split=0.5)  # nested classes, one named 'train': as ImageFolder
    assert train.classes == ("animals", "vehicles")


def test_eval_of_unlabelled_images_points_to_predict(tmp_path: Path) -> None:
    images(tmp_path, [f"train/{c}/{i}.jpg" for c in ("cat", "dog") for i in range(2)] + ["test/0.jpg", "test/1.jpg"])
    for data in (tmp_path, tmp_path / "test"):  # Kaggle: test/ holds the unlabelled images to submit
        with pytest.raises(DataError, match=r"images without labels .*`finetune predict` predicts unlabelled ones"):
            eval_samples(data, ["cat", "dog"])


def test_hugging_face_layouts_say_what_to_give(tmp_path: Path) -> None:
    images(tmp_path / "hf", ["train/0.jpg", "train/1.jpg", "test/0.jpg"])
    (tmp_path / "hf" / "train" / "metadata.csv").write_text("file_name,label\n0.jpg,cat\n1.jpg,dog\n")
    (tmp_path / "hf" / "test" / "metadata.jsonl").write_text('{"file_name": "0.jpg", "label": "cat"}\n')
    with pytest.raises(DataError, match=r"labels in metadata.csv \(Hugging Face imagefolder\): give '.*/train/metadata.csv'"):
        find_splits(tmp_path / "hf")
    with pytest.raises(DataError, match=r"labels in metadata.jsonl \(Hugging Face imagefolder\): give '.*/test/metadata.jsonl'"):
        eval_samples(tmp_path / "hf", ["cat", "dog"])
    assert eval_samples(tmp_path / "hf" / "test" / "metadata.jsonl", ["cat", "dog"]).labels.tolist() == [0]
    arrow = tmp_path / "arrow" / "train"
    arrow.mkdir(parents=True)
    (arrow / "data-00000-of-00001.arrow").write_bytes(b"\xff" * 8)
    (arrow / "state.json").write_text("{}")
    with pytest.raises(DataError, match=r"Hugging Face datasets dataset .*not image files"):
        find_splits(tmp_path / "arrow")


def test_a_root_metadata_csv_takes_its_splits_from_the_folders(tmp_path: Path) -> None:
    """Hugging Face imagefolder's metadata.csv at the root (file_name train/0.jpg, test/0.jpg, no split
    column): the test rows were trained on; the folders are the splits, as Hugging Face reads them."""
    from PIL import Image

    from finetune.data.samples import eval_samples, find_splits

    rows = ["file_name,label"]
    for split, n in (("train", 6), ("test", 2)):
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / split / f"{i}.jpg")
            rows.append(f"{split}/{i}.jpg,{'cat' if i % 2 else 'dog'}")
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    train, val = find_splits(tmp_path / "metadata.csv", val_split=0.34)
    used = {Path(p).parent.name for p in [*train.paths, *val.paths]}
    assert used == {"train"} and len(train) + len(val) == 6
    scored = eval_samples(tmp_path / "metadata.csv", ["cat", "dog"])
    assert {Path(p).parent.name for p in scored.paths} == {"test"}

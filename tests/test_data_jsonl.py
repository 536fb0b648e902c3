"""Hugging Face imagefolder's metadata.jsonl (one JSON object per line: file_name, label, perhaps other
features) is read as a CSV of file_name,label is: splits from the paths' train/ test/ folders, integer
labels in numeric order, a multi-label list refused, a line that is not an object named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from finetune.data.samples import eval_samples, find_splits, read_csv
from finetune.errors import DataError


def _images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / name)


def _jsonl(path: Path, objects: list[object]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    return path


def test_metadata_jsonl_at_the_root_splits_by_folder(tmp_path: Path) -> None:
    names = [f"train/{i}.jpg" for i in range(6)] + ["test/0.jpg", "test/1.jpg"]
    _images(tmp_path, names)
    meta = _jsonl(tmp_path / "metadata.jsonl", [{"file_name": n, "label": ["cat", "dog"][k % 2],
                                                 "caption": "a photo", "bbox": [1, 2, 3, 4]}
                                                for k, n in enumerate(names)])
    train, val = find_splits(meta)  # (the test rows are eval's: training draws its val split from train/)
    assert (len(train), len(val)) == (4, 2) and train.classes == ("cat", "dog")
    assert {Path(p).parent.name for p in [*train.paths, *val.paths]} == {"train"}
    scored = eval_samples(meta, ["cat", "dog"])
    assert sorted(Path(p).name for p in scored.paths) == ["0.jpg", "1.jpg"] and scored.labels.tolist() == [0, 1]


def test_integer_labels_and_lists_of_one(tmp_path: Path) -> None:
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    meta = _jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "label": 10}, {"file_name": "b.png", "label": 2},
                                                {"file_name": "c.png", "label": [2]}])
    samples, split = read_csv(meta)
    assert samples.classes == ("2", "10") and samples.labels.tolist() == [1, 0, 0] and split is None


def test_bad_jsonl_is_named(tmp_path: Path) -> None:
    _images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "broken.jsonl").write_text('{"file_name": "a.png", "label": "cat"}\n{"file_name": "b.png", label}\n')
    with pytest.raises(DataError, match=r"JSON Lines file '.*broken.jsonl': line 2 is not JSON"):
        read_csv(tmp_path / "broken.jsonl")
    _jsonl(tmp_path / "keys.jsonl", [{"image": "a.png", "caption": "a cat"}])
    with pytest.raises(DataError, match=r"needs a path key .* and a label key .*found \['image', 'caption'\]"):
        read_csv(tmp_path / "keys.jsonl")
    _jsonl(tmp_path / "multi.jsonl", [{"file_name": "a.png", "label": ["cat", "dog"]}, {"file_name": "b.png", "label": "cat"},
                                      {"file_name": "b.png", "label": "dog"}])
    with pytest.raises(DataError, match=r"JSON Lines file .* several labels"):
        read_csv(tmp_path / "multi.jsonl")

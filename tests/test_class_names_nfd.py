"""Class folder names written decomposed (NFD, as macOS and zips made there write them) match the
same names written composed (NFC): 'café' from a Mac is the class 'café' of the other split or the
checkpoint, not an unknown class with an error that lists 'café' as missing from ('café', …)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from PIL import Image

from finetune.data.samples import eval_samples, find_splits


def _folder(root: Path, form: str) -> None:
    for c in ("café", "thé"):
        d = root / unicodedata.normalize(form, c)
        d.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(d / f"{i}.png")


def test_a_val_split_written_on_a_mac_matches_the_train_split(tmp_path: Path) -> None:
    _folder(tmp_path / "train", "NFC")
    _folder(tmp_path / "val", "NFD")
    train, val = find_splits(tmp_path)
    assert val.classes == train.classes and val.class_counts() == {"café": 2, "thé": 2}
    assert [Path(p).parent.name for p in val.paths] == [unicodedata.normalize("NFD", c) for c in ("café",) * 2
                                                          + ("thé",) * 2]


def test_eval_of_a_mac_folder_scores_the_checkpoints_classes(tmp_path: Path) -> None:
    _folder(tmp_path, "NFD")
    s = eval_samples(tmp_path, ["thé", "café"])
    assert s.classes == ("thé", "café") and s.class_counts() == {"thé": 2, "café": 2}
    assert [s.classes[k] for k in s.labels] == [unicodedata.normalize("NFC", Path(p).parent.name) for p in s.paths]

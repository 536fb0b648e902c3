"""Scanning a large folder costs no stat() per image file (as torchvision's ImageFolder: os.scandir's d_type)."""

import os
from pathlib import Path

from PIL import Image

from finetune.data.samples import find_splits


def test_scan_does_not_stat_every_image(tmp_path: Path, monkeypatch) -> None:
    img = tmp_path / "one.png"
    Image.new("RGB", (4, 4)).save(img)
    data = tmp_path / "data"
    for c in ("cat", "dog"):
        (data / c).mkdir(parents=True)
        for i in range(50):
            os.link(img, data / c / f"{i}.png")
    calls: list[str] = []
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        calls.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    train, val = find_splits(data, val_split=0.1)
    assert (len(train), len(val)) == (90, 10)
    per_image = [p for p in calls if p.endswith(".png")]
    assert per_image == [], f"{len(per_image)} stat() calls on image files, e.g. {per_image[:3]}"


class _CountingList(list):
    """A class list that counts `name in classes` (a list's `in` compares with every name: at 10,000 classes,
    one per folder is 10^8 comparisons, seconds before the first step)."""

    lookups = 0

    def __contains__(self, item: object) -> bool:
        type(self).lookups += 1
        return super().__contains__(item)


def test_class_lookups_are_not_linear_scans(tmp_path: Path) -> None:
    from finetune.data.samples import scan_folder

    img = tmp_path / "one.png"
    Image.new("RGB", (4, 4)).save(img)
    names = [f"c{i:03d}" for i in range(30)]
    for c in names:
        (tmp_path / "data" / c).mkdir(parents=True)
        os.link(img, tmp_path / "data" / c / "0.png")
    classes = _CountingList(reversed(names))
    samples = scan_folder(tmp_path / "data", classes=classes)
    assert samples.classes == tuple(reversed(names)) and samples.labels.tolist() == list(range(30))
    assert _CountingList.lookups == 0, f"{_CountingList.lookups} linear lookups in the class list"


def test_stratified_split_is_the_per_class_draw() -> None:
    """The split a seed draws does not change (a resumed run and eval re-draw it): each class's indices,
    ascending, permuted by one generator class after class."""
    import numpy as np

    from finetune.data.samples import Samples, stratified_split

    labels = np.random.default_rng(1).integers(0, 7, 200)
    s = Samples.from_lists([f"{i}.jpg" for i in range(200)], labels, [f"c{i}" for i in range(7)])
    rng = np.random.default_rng(3)
    val = []
    for label in range(7):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        val += idx[:min(max(int(round(len(idx) * 0.1)), 1), len(idx) - 1)].tolist()
    train, held = stratified_split(s, 0.1, seed=3)
    assert held.paths.tolist() == [f"{i}.jpg" for i in sorted(val)]
    assert len(train) + len(held) == 200

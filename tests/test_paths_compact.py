"""Samples.paths is compact: one long path does not make every path that long (a fixed-width '<U' array
spent 4 bytes per character of the longest path on each one: 1,000,000 paths with one of 400 characters
took 1.6 GB), and non-UTF-8 file names come back as os.scandir gave them."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.data.samples import PathArray, Samples, scan_folder, stratified_split


def test_one_long_path_does_not_widen_the_others() -> None:
    paths = [f"/data/class{i % 7}/{i:06d}.jpg" for i in range(20_000)] + ["/data/" + "x" * 400 + ".jpg"]
    s = Samples.from_lists(paths, [0] * len(paths), ["a"])
    size = s.paths.data.nbytes + s.paths.ends.nbytes
    assert size < 2 * sum(len(p) for p in paths) + 8 * len(paths), size  # ('<U': 4 x 405 x 20,001 = 32 MB)
    assert s.path(20_000) == paths[-1] and s.path(3) == paths[3]
    assert pickle.loads(pickle.dumps(s.paths)).tolist() == paths  # (spawned workers get a pickled copy)


def test_subsets_and_splits_keep_the_right_paths(tmp_path: Path) -> None:
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.new("RGB", (4, 4)).save(tmp_path / c / f"{i}.png")
    odd = os.fsdecode(b"caf\xe9.png")  # (a Latin-1 file name: not UTF-8)
    try:
        Image.new("RGB", (4, 4)).save(os.path.join(tmp_path, "cat", odd))
    except (OSError, UnicodeError):
        odd = None
    s = scan_folder(tmp_path)
    names = [Path(p).parent.name for p in s.paths]
    assert [s.classes[k] for k in s.labels] == names
    train, val = stratified_split(s, 0.2, seed=0)
    assert sorted(train.paths.tolist() + val.paths.tolist()) == sorted(s.paths.tolist())
    assert all(Path(p).parent.name == train.classes[k] for p, k in zip(train.paths, train.labels, strict=True))
    if odd is not None:
        assert os.path.join(tmp_path, "cat", odd) in s.paths.tolist()
    picked = s.paths[np.array([len(s) - 1, 0])]
    assert isinstance(picked, PathArray) and picked.tolist() == [s.path(len(s) - 1), s.path(0)]

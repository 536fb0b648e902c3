"""A loop of symbolic links inside the dataset (a -> b -> a) is no folder: the class folder holding it is
read (a link named as an image is a bad file, as a link whose target is missing), not refused as unreadable."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from finetune.data.samples import find_splits, scan_folder


def test_a_loop_of_links_in_a_class_folder_is_not_an_unreadable_folder(tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    os.symlink("loop-b", tmp_path / "cat" / "loop-a")  # no image name: not a sample
    os.symlink("loop-a", tmp_path / "cat" / "loop-b")
    os.symlink("loop-d.jpg", tmp_path / "cat" / "loop-c.jpg")  # an image name: a sample that cannot be read
    os.symlink("loop-c.jpg", tmp_path / "cat" / "loop-d.jpg")
    os.symlink("loop-f", tmp_path / "loop-e")  # beside the class folders
    os.symlink("loop-e", tmp_path / "loop-f")
    samples = scan_folder(tmp_path)
    assert samples.classes == ("cat", "dog")
    assert sorted(Path(p).name for p in samples.paths) == ["0.png", "0.png", "1.png", "1.png", "loop-c.jpg",
                                                            "loop-d.jpg"]
    find_splits(tmp_path)  # (flat class folders, split here)

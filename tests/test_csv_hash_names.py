"""A CSV row whose path starts with '#' is a file to read when that file exists (it was dropped as a
comment line, silently training on one image fewer); a '#' line that names no file is still a comment."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from finetune.data.samples import read_csv


def test_a_file_named_with_a_leading_hash_is_not_a_comment(tmp_path: Path) -> None:
    for name in ("#1.png", "a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "list.csv").write_text("path,label\n# written by scrape.py\n#1.png,cat\na.png,cat\n"
                                       "b.png,dog\nc.png,dog\n")
    samples, _ = read_csv(tmp_path / "list.csv")
    assert [Path(p).name for p in samples.paths] == ["#1.png", "a.png", "b.png", "c.png"]
    assert samples.class_counts() == {"cat": 2, "dog": 2}

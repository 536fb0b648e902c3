"""A CSV listing a file twice with two labels is refused with a message that starts with the file's kind."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from finetune.errors import DataError


def test_listed_twice_with_two_labels_names_the_csv(tmp_path: Path) -> None:
    from finetune.data.samples import read_csv

    for name in ("0.png", "1.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path,label\n0.png,cat\n1.png,dog\n0.png,dog\n")
    with pytest.raises(DataError) as e:
        read_csv(tmp_path / "labels.csv")
    assert str(e.value).startswith(f"CSV file '{tmp_path / 'labels.csv'}' lists '0.png' twice, with labels 'cat' and 'dog'")

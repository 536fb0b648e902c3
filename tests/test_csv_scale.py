"""Reading a large CSV stats each listed file once (whether it exists), no more."""

import os
from collections import Counter
from pathlib import Path

from PIL import Image

from finetune.data.samples import read_csv


def test_csv_stats_each_row_once(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "0.png")
    lines = ["path,label"]
    for i in range(40):
        if i:
            os.link(tmp_path / "img" / "0.png", tmp_path / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{'cat' if i % 2 else 'dog'}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    calls: Counter[str] = Counter()
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        calls[os.path.basename(str(path))] += 1
        return real_stat(path, *args, **kwargs)

    monkeypatch.chdir(tmp_path / "img")  # (paths are the CSV folder's, not the working directory's)
    monkeypatch.setattr(os, "stat", counting_stat)
    samples, split = read_csv(tmp_path / "list.csv")
    assert len(samples) == 40 and split is None and samples.classes == ("cat", "dog")
    assert samples.path(0) == str(tmp_path / "img" / "0.png")
    assert max(calls[f"{i}.png"] for i in range(40)) == 1, calls.most_common(3)


def test_csv_paths_relative_to_cwd_are_explained(tmp_path: Path, monkeypatch) -> None:
    import pytest

    from finetune.errors import DataError

    for c in ("cat", "dog"):
        (tmp_path / "img" / c).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "img" / c / "0.png")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.csv").write_text("path,label\nimg/cat/0.png,cat\nimg/dog/0.png,dog\n")
    monkeypatch.chdir(tmp_path)  # (the paths are the working directory's, not the CSV folder's)
    with pytest.raises(DataError, match="relative paths are read from the CSV's folder .* not the current directory"):
        read_csv(tmp_path / "lists" / "l.csv")

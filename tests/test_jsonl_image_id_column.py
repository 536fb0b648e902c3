"""A metadata.jsonl / CSV with an image_id beside file_name reads the files from file_name (HF imagefolder's
path key), not from the id that came first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image


@pytest.mark.parametrize("name", ["metadata.jsonl", "labels.csv"])
def test_image_id_before_file_name_is_not_the_path(tmp_path: Path, name: str) -> None:
    from finetune.data.samples import read_csv

    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    rows = [{"image_id": i, "file_name": f"{i}.png", "label": "ab"[i % 2]} for i in range(4)]
    if name.endswith(".jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        (tmp_path / name).write_text("image_id,file_name,label\n" + "".join(f"{r['image_id']},{r['file_name']},"
                                                                            f"{r['label']}\n" for r in rows))
    samples, _ = read_csv(tmp_path / name)  # was: "lists 4 files that do not exist, e.g. '.../0'"
    assert [Path(p).name for p in samples.paths] == ["0.png", "1.png", "2.png", "3.png"]
    assert samples.labels.tolist() == [0, 1, 0, 1]

"""bench-data benchmarks the files finetune trains on: what the loader skips (AppleDouble ``._x.jpg``,
hidden folders, ``__MACOSX``) is not fed to the torchvision baseline either, and a PNG named ``.jpg``
(read by content everywhere else) is not sent to the JPEG decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from finetune.data.bench import plain_dataset, run_bench


def test_bench_data_runs_on_a_folder_that_train_reads(tmp_path: Path) -> None:
    for c in ("cat", "dog"):
        for i in range(3):
            (tmp_path / c).mkdir(exist_ok=True)
            Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(tmp_path / c / f"{i}.jpg", "JPEG")
    Image.new("RGB", (20, 24), (9, 9, 9)).save(tmp_path / "cat" / "png_named.jpg", "PNG")
    junk = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)
    (tmp_path / "cat" / "._0.jpg").write_bytes(junk)
    (tmp_path / "dog" / ".thumbnails").mkdir()
    (tmp_path / "dog" / ".thumbnails" / "t.jpg").write_bytes(b"not an image")
    (tmp_path / "__MACOSX" / "cat").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "cat" / "._1.jpg").write_bytes(junk)

    assert len(plain_dataset(tmp_path, 16)) == 7
    report = run_bench(tmp_path, img_size=16, batch_size=2, seconds=0.01, workers=[0], full=False, cache=False,
                       repeats=1)
    assert all(r.images_per_s > 0 for r in report.rows)

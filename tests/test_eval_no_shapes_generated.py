"""`finetune eval --checkpoint CK --data DIR` of a checkpoint saved by one's own loop (no config: it does
not say which data it was trained on) generated the whole built-in shapes dataset (4000 images, ~40 s,
18 MB in the cache) only to see whether DIR is that dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from finetune.data.samples import eval_samples


def test_eval_samples_does_not_generate_shapes_to_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))
    for c in ("cat", "dog"):
        (tmp_path / "test" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "test" / c / "a.png")
    samples = eval_samples(tmp_path / "test", ["cat", "dog"], trained_on="shapes")
    assert len(samples) == 2  # a test folder: every image
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())

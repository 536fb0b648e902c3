"""`finetune cam` on a full disk: no half-written overlay named like a real one, an earlier run's overlays and
cam.jsonl left as they were, and the error names the file."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from PIL import Image

from finetune import Checkpointer, create_model, make_shapes
from finetune.cam import explain
from finetune.data.shapes import CLASSES


def test_a_write_that_fails_leaves_no_half_overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_shapes(tmp_path / "data", per_class=1, val_per_class=1, size=32)
    run = tmp_path / "run"
    Checkpointer(run).save({"model": create_model("squeezenet1_1", num_classes=8), "arch": "squeezenet1_1",
                            "classes": list(CLASSES), "img_size": 32, "epoch": 0, "step": 0,
                            "config": {"data": str(data)}})
    out = tmp_path / "cam"
    explain(run, limit=2, device="cpu", out=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len([n for n in before if n.endswith(".png")]) == 2

    def full_disk(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        with open(fp, "wb") as f:  # type: ignore[arg-type]
            f.write(b"\x89PNG")  # what fitted
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError, match="No space left") as info:
        explain(run, limit=2, device="cpu", out=out, alpha=0.9)
    assert info.value.filename is not None and Path(info.value.filename).parent == out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(OSError):
        explain(run, limit=2, device="cpu", out=tmp_path / "new")
    assert not (tmp_path / "new").exists()

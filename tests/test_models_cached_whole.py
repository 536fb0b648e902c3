"""finetune models' "cached" column: a weights file that is empty or cut short (an interrupted copy) is
not cached weights (--pretrained torchvision would fail on it), a whole one is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune import model_table


def test_an_empty_or_cut_short_file_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save({"w": torch.zeros(64)}, hub / "resnet18-f37072fd.pth")  # whole (as far as a listing can tell)
    (hub / "resnet101-cd907fc2.pth").write_bytes(b"")
    (hub / "resnet152-f82ba261.pth").write_bytes((hub / "resnet18-f37072fd.pth").read_bytes()[:200])
    cached = {r.name: r.cached for r in model_table("resnet1*")}
    assert cached == {"resnet18": True, "resnet101": False, "resnet152": False}

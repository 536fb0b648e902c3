"""`finetune make-shapes DIR` writes the built-in dataset (README: "the built-in dataset, wherever you
like"): 500 training and 50 validation images per class, as `--data shapes` trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import finetune.data.shapes as shapes
from finetune.cli import main


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake(root: str | Path, **kw: Any) -> Path:
        calls.append(kw)
        return Path(root)

    monkeypatch.setattr(shapes, "make_shapes", fake)
    return calls


def test_make_shapes_without_flags_is_the_builtin_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _calls(monkeypatch)
    assert main(["make-shapes", str(tmp_path / "s"), "-q"]) == 0
    spec = shapes.ShapesSpec()
    got = calls[0]
    assert (got["per_class"], got.get("val_per_class"), got["size"]) == (spec.per_class, spec.val_per_class, spec.size)


def test_make_shapes_per_class_keeps_a_sixth_for_validation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _calls(monkeypatch)
    assert main(["make-shapes", str(tmp_path / "s"), "--per-class", "12", "-q"]) == 0
    assert calls[0]["per_class"] == 12 and calls[0].get("val_per_class") is None

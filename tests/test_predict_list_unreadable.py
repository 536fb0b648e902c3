"""`finetune predict --json --list-unreadable`: each image that cannot be read (found in a folder, where it is
skipped with a warning, or named) is a record {"path", "error"} in its place, so a script reading the JSON sees
which inputs gave no prediction (without the flag the output is unchanged: predictions only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_here
from finetune import Checkpointer, create_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("predict_list")
    ck = Checkpointer(root / "run").save({"model": create_model("squeezenet1_1", num_classes=2),
                                          "arch": "squeezenet1_1", "classes": ["cat", "dog"], "img_size": 32,
                                          "epoch": 0, "step": 0})
    (root / "folder").mkdir()
    Image.new("RGB", (40, 30), "red").save(root / "folder" / "a.jpg")
    (root / "folder" / "b.jpg").write_text("not an image")
    Image.new("RGB", (30, 40), "blue").save(root / "c.jpg")
    (root / "d.jpg").write_text("not an image")
    return str(ck), root


def _cli(*args: str) -> tuple[int, str, str]:
    res = run_here(*args)
    return res.returncode, res.stdout, res.stderr


def test_unreadable_images_are_records_in_their_place(setup: tuple[str, Path]) -> None:
    ck, root = setup
    inputs = [str(root / "folder"), str(root / "c.jpg"), str(root / "d.jpg")]
    rc, out, err = _cli("predict", "--checkpoint", ck, *inputs, "--json", "--list-unreadable", "--device", "cpu", "-q")
    records = json.loads(out)
    assert [(Path(r["path"]).name, "top" in r, "error" in r) for r in records] == [
        ("a.jpg", True, False), ("b.jpg", False, True), ("c.jpg", True, False), ("d.jpg", False, True)]
    assert "cannot read image" in records[1]["error"] and "b.jpg" in records[1]["error"]
    assert rc == 2 and "2 other images were predicted" in err  # (the records of unreadable ones are not counted)

    rc, out, _ = _cli("predict", "--checkpoint", ck, *inputs, "--list-unreadable", "--device", "cpu", "-q")
    lines = out.splitlines()
    assert rc == 2 and len(lines) == 4 and lines[1].startswith(f"{root / 'folder' / 'b.jpg'}: error: cannot read image")

    rc, out, _ = _cli("predict", "--checkpoint", ck, *inputs[:2], "--json", "--device", "cpu", "-q")
    assert rc == 0 and [Path(r["path"]).name for r in json.loads(out)] == ["a.jpg", "c.jpg"]  # unchanged without it


def test_library_keeps_its_records_off_by_default(setup: tuple[str, Path]) -> None:
    from finetune import predict

    ck, root = setup
    assert [Path(r["path"]).name for r in predict(ck, [str(root / "folder")], device="cpu")] == ["a.jpg"]
    out = predict(ck, [str(root / "folder")], device="cpu", unreadable_records=True)
    assert [sorted(r) for r in out] == [["path", "top"], ["error", "path"]]

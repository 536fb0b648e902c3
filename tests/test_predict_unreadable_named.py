"""`finetune predict a.jpg broken.jpg b.jpg` (a shell glob naming hundreds of files, one of them broken):
every readable file is predicted and printed, each unreadable one is named on stderr, and the command
ends with one `finetune: error:` line counting them (exit status 2); --json stays one valid JSON list.
The library keeps its return type: the error it raises carries the other files' predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_here
from finetune import Checkpointer, DataError, create_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("predict_named")
    ck = Checkpointer(root / "run").save({"model": create_model("squeezenet1_1", num_classes=2),
                                          "arch": "squeezenet1_1", "classes": ["cat", "dog"], "img_size": 32,
                                          "epoch": 0, "step": 0})
    Image.new("RGB", (40, 30), "red").save(root / "good1.jpg")
    Image.new("RGB", (30, 40), "blue").save(root / "good2.jpg")
    (root / "broken.jpg").write_text("not an image")
    (root / "cut.jpg").write_bytes((root / "good1.jpg").read_bytes()[:200])
    return str(ck), root


def _cli(*args: str) -> tuple[int, str, str]:
    res = run_here(*args)
    return res.returncode, res.stdout, res.stderr


def test_predict_prints_every_readable_named_file_then_errors(setup: tuple[str, Path]) -> None:
    ck, root = setup
    files = [str(root / n) for n in ("good1.jpg", "broken.jpg", "good2.jpg")]
    rc, out, err = _cli("predict", "--checkpoint", ck, *files, "--json", "--device", "cpu", "-q")
    assert rc == 2
    assert [Path(o["path"]).name for o in json.loads(out)] == ["good1.jpg", "good2.jpg"]
    errors = [line for line in err.splitlines() if line.startswith("finetune: error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0] and "Traceback" not in err

    rc, out, err = _cli("predict", "--checkpoint", ck, files[0], str(root / "cut.jpg"), files[1], files[2],
                        "--device", "cpu", "-q")
    assert rc == 2 and [line.split(":")[0] for line in out.splitlines()] == [files[0], files[2]]
    errors = [line for line in err.splitlines() if line.startswith("finetune: error:")]
    assert len(errors) == 1 and "2 of the 4 image files named cannot be read" in errors[0]
    assert "cut.jpg" in err and "broken.jpg" in err  # each one named

    rc, out, err = _cli("predict", "--checkpoint", ck, files[1], "--json", "--device", "cpu", "-q")
    assert rc == 2 and json.loads(out) == [] and len(err.strip().splitlines()) == 1 and "broken.jpg" in err


def test_predict_library_error_carries_the_other_predictions(setup: tuple[str, Path]) -> None:
    from finetune import predict

    ck, root = setup
    with pytest.raises(DataError, match="broken.jpg") as info:
        predict(ck, [str(root / "good1.jpg"), str(root / "broken.jpg"), str(root / "good2.jpg")], device="cpu")
    assert [Path(o["path"]).name for o in info.value.predictions] == ["good1.jpg", "good2.jpg"]
    assert len(info.value.unreadable) == 1 and "broken.jpg" in info.value.unreadable[0]


def test_cam_explains_every_readable_named_file_then_errors(setup: tuple[str, Path], tmp_path: Path) -> None:
    """`finetune cam` as predict: the other images' overlays are written and reported, then one error line."""
    ck, root = setup
    files = [str(root / n) for n in ("good1.jpg", "broken.jpg", "good2.jpg")]
    rc, out, err = _cli("cam", ck, *files, "--out", str(tmp_path / "cam"), "--json", "--device", "cpu",
                        "-q")
    assert rc == 2
    assert [Path(r["file"]).name for r in json.loads(out)] == ["good1.jpg", "good2.jpg"]
    assert len(list((tmp_path / "cam").glob("*.png"))) == 2 and (tmp_path / "cam" / "cam.jsonl").is_file()
    errors = [line for line in err.splitlines() if line.startswith("finetune: error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0] and "1 other image was explained" not in errors[0]
    assert "2 other images were explained" in errors[0] and "Traceback" not in err

    rc, out, err = _cli("cam", ck, files[1], "--out", str(tmp_path / "none"), "--device", "cpu", "-q")
    assert rc == 2 and "broken.jpg" in err and not (tmp_path / "none").exists()  # nothing explained: no folder

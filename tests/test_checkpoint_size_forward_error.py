"""A checkpoint (written by other code, or edited) naming an image size its architecture cannot take:
`eval`, `predict` and `cam` said "unexpected RuntimeError ... this is a bug in finetune"; they name the
layer that fails, as `finetune summary` does, and say what is wrong with the checkpoint."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from PIL import Image

from finetune import Checkpointer, create_model


def _cli(*args: str) -> tuple[int, str]:
    from finetune.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, err.getvalue()


@pytest.mark.parametrize("command", ["predict", "eval", "cam"])
def test_forward_failure_at_the_checkpoints_size_names_the_layer(command: str, tmp_path: Path) -> None:
    ck = str(Checkpointer(tmp_path / "run").save({"model": create_model("squeezenet1_1", num_classes=2),
                                                  "arch": "squeezenet1_1", "classes": ["cat", "dog"], "img_size": 8,
                                                  "epoch": 0, "step": 0}))
    for c, colour in (("cat", "red"), ("dog", "blue")):
        (tmp_path / "data" / c).mkdir(parents=True)
        Image.new("RGB", (12, 12), colour).save(tmp_path / "data" / c / "a.png")
    image = str(tmp_path / "data" / "cat" / "a.png")
    args = {"predict": ["predict", "--checkpoint", ck, image],
            "eval": ["eval", "--checkpoint", ck, "--data", str(tmp_path / "data")],
            "cam": ["cam", ck, image, "--out", str(tmp_path / "cam")]}[command]
    rc, err = _cli(*args, "--device", "cpu", "-q")
    assert rc == 2 and "bug in finetune" not in err, err
    assert "cannot take the 8x8 images" in err and "layer 'features.5'" in err and err.count("\n") == 1, err

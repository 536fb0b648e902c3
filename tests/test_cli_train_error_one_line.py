"""A bad --model / --pretrained / pattern on a small dataset is one stderr line: the "fewer than
--batch-size" warning of the data comes after the model's errors, not before them."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_here, write_colour_folder


@pytest.mark.parametrize("bad", [["--model", "resnt18"], ["--pretrained", "missing.pth"], ["--freeze", "nomatch"]])
def test_bad_train_input_is_one_stderr_line_with_few_images(tmp_path: Path, bad: list[str]) -> None:
    data = write_colour_folder(tmp_path / "few", per_class=3, size=32)  # 6 training images, fewer than batch 64
    res = run_here("train", "--data", str(data), "--out", str(tmp_path / "run"), "--img-size", "32",
                   "--workers", "0", "--epochs", "1", "--device", "cpu", "-q", *(["--model", "resnet18"] + bad))
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith("finetune: error: ")

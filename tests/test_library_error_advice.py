"""Errors raised by library functions name the keyword argument to change, not only the command-line
flag: a caller of `finetune.load_weights(...)` or `build_loader(...)` cannot pass `--exclude` or `--seed`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from finetune import DataError, WeightsError, build_loader, load_weights


def test_load_weights_shape_error_names_the_arguments() -> None:
    model = nn.Sequential(nn.Linear(2, 3))
    with pytest.raises(WeightsError, match=r"exclude=\[\.\.\.\]; --exclude\) or use shape_mismatch='skip'/'adapt' "
                                           r"\(--shape-mismatch skip/adapt\)"):
        load_weights(model, {"0.weight": torch.zeros(4, 2), "0.bias": torch.zeros(3)}, shape_mismatch="error")


def test_loader_seed_error_names_the_argument(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / c / "x.png")
    with build_loader(tmp_path, train=True, img_size=8, batch_size=2, workers=0, seed=1) as loader, \
            pytest.raises(DataError, match=r"resume with seed=7 \(--seed 7\)"):
        loader.load_state_dict({"epoch": 0, "position": 0, "seed": 7})

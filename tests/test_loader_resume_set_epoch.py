"""load_state_dict, then the README's loop (set_epoch at the start of every epoch): the resumed
epoch continues at the saved position instead of silently starting over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.data.loader import build_loader


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def test_set_epoch_of_the_restored_epoch_keeps_the_position(folder: Path) -> None:
    kw = dict(train=True, img_size=16, batch_size=2, workers=0, seed=3)
    with build_loader(folder, **kw) as loader:
        loader.set_epoch(1)
        it = iter(loader)
        next(it), next(it)
        state = loader.state_dict()
        rest = [x.clone() for x, _ in it]
        loader.set_epoch(2)
        epoch2 = [x.clone() for x, _ in loader]
    with build_loader(folder, **kw) as resumed:
        resumed.load_state_dict(state)
        got = []
        for epoch in range(state["epoch"], 3):
            resumed.set_epoch(epoch)                  # README: at the start of every epoch
            got.append([x.clone() for x, _ in resumed])
        assert all(torch.equal(a, b) for a, b in zip(got[0], rest, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(got[1], epoch2, strict=True))
        resumed.load_state_dict(state)
        resumed.set_epoch(2)                          # another epoch: from its first batch
        assert len([x for x, _ in resumed]) == len(epoch2)

"""The Loader in a user's own loop, as a DataLoader is used. Two passes over one Loader alive at once
(iter(loader) again while an earlier iterator is unfinished), or a pass used after loader.close(): it must
not silently lose or swap batches (with workers it did: the passes share the loader's persistent DataLoader
iterator). load_state_dict, then the README's loop (set_epoch at the start of every epoch): the resumed
epoch continues at the saved position instead of silently starting over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.data.loader import build_loader
from finetune.errors import DataError


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("overlap")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_an_overtaken_pass_raises_instead_of_losing_batches(folder: Path, workers: int) -> None:
    with build_loader(folder, train=False, img_size=16, batch_size=3, workers=workers) as loader:
        whole = [y.tolist() for _, y in loader]
        first = iter(loader)
        assert next(first)[1].tolist() == whole[0]
        assert [y.tolist() for _, y in loader] == whole  # the newer pass: the whole epoch
        with pytest.raises(DataError, match="overtaken"):  # (with workers it used to end silently: no more batches)
            next(first)
        with pytest.raises(DataError, match="overtaken"):  # (with workers: half the batches, each pass every other one)
            list(zip(loader, loader, strict=True))
        for i, _ in enumerate(loader):  # a pass left with break, then a new one: as before
            if i == 1:
                break
        assert [y.tolist() for _, y in loader] == whole
        assert [next(iter(loader))[1].tolist() for _ in range(2)] == [whole[0]] * 2


@pytest.mark.parametrize("workers", [0, 1])
def test_a_pass_used_after_close_raises_instead_of_ending_early(folder: Path, workers: int) -> None:
    loader = build_loader(folder, train=False, img_size=16, batch_size=3, workers=workers)
    whole = [y.tolist() for _, y in loader]
    it = iter(loader)
    next(it)
    loader.close()
    with pytest.raises(DataError, match=r"loader.close\(\)"):  # (with workers: no more batches, no error)
        next(it)
    assert [y.tolist() for _, y in loader] == whole  # a new pass after close: as before
    loader.close()


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

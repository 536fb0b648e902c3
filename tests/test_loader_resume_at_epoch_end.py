"""A loader state saved after an epoch's last batch resumes with nothing left of that epoch."""

from pathlib import Path

import torch
from PIL import Image

from finetune import build_loader
from finetune.data.samples import Samples


def _samples(tmp_path: Path) -> Samples:
    paths = []
    for i in range(8):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    return Samples.from_lists(paths, [i % 2 for i in range(8)], ["a", "b"])


def test_resume_after_the_last_batch_of_an_epoch_gives_no_batch_of_it_again(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    loader = build_loader(samples, train=True, img_size=8, batch_size=2, workers=0, seed=3)
    whole = [x for x, _ in loader]                      # an uninterrupted run: the epoch is over here
    state = loader.state_dict()
    assert state["position"] == len(loader) == 4
    resumed = build_loader(samples, train=True, img_size=8, batch_size=2, workers=0, seed=3)
    resumed.load_state_dict(state)
    assert [x for x, _ in resumed] == []                # the rest of the epoch: nothing
    again = [x for x, _ in resumed]                     # the next pass is a whole epoch again
    assert len(again) == 4 and all(torch.equal(a, b) for a, b in zip(again, whole, strict=True))

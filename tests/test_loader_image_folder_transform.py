"""A torchvision ImageFolder given to build_loader with a ``transform`` of its own: the transform is
applied (as for any other dataset object), not silently dropped by the loader's fast file path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from finetune.data.loader import build_loader


def test_an_image_folders_own_transform_is_applied(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    grey = torchvision.datasets.ImageFolder(str(tmp_path), transform=lambda im: im.convert("L"))
    loader = build_loader(grey, train=False, img_size=8, batch_size=4, workers=0, mean=0.5, std=0.5)
    images, labels = next(iter(loader))
    assert labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])  # grey: R = G = B

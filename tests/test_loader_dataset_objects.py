"""Dataset objects given to build_loader: read as the dataset defines its items, its errors are errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from finetune import build_loader
from finetune.errors import DataError


class Items(torch.utils.data.Dataset):
    def __init__(self, item, n: int = 4):
        self.item, self.n = item, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.item(i)


def _labels(loader) -> list[int]:
    return [int(y) for _, labels in loader for y in labels]


def test_image_folder_of_other_files_or_remapped_labels_is_read_through_the_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            np.save(tmp_path / c / f"{i}.npy", rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
            Image.new("RGB", (10, 12), (200 * i, 0, 0)).save(tmp_path / c / f"{i}.png")
    arrays = torchvision.datasets.DatasetFolder(str(tmp_path), loader=np.load, extensions=(".npy",))
    loader = build_loader(arrays, train=False, img_size=8, batch_size=4, workers=0)
    assert _labels(loader) == [0, 0, 1, 1] and loader.bad_count == 0  # (was: 4 "not an image", no batch)
    flipped = torchvision.datasets.ImageFolder(str(tmp_path), target_transform=lambda y: 1 - y)
    assert _labels(build_loader(flipped, train=False, img_size=8, batch_size=4, workers=0)) == [1, 1, 0, 0]
    plain = torchvision.datasets.ImageFolder(str(tmp_path))  # still read as files by the loader itself
    assert build_loader(plain, train=False, img_size=8, batch_size=4, workers=0).samples is not None


def test_a_datasets_own_error_is_raised_not_skipped() -> None:
    def broken(i: int):
        raise RuntimeError("my transform failed")

    with pytest.raises(DataError, match=r"dataset item 0: Items.__getitem__ raised RuntimeError: my transform failed"):
        list(build_loader(Items(broken), train=False, img_size=8, batch_size=2, workers=0))

    def unreadable(i: int):  # a file the dataset cannot read is a bad item, as a bad file is
        if i == 1:
            raise OSError("cannot identify image file")
        return Image.new("RGB", (8, 8)), 0

    loader = build_loader(Items(unreadable), train=False, img_size=8, batch_size=4, workers=0)
    assert _labels(loader) == [0, 0, 0] and list(loader.bad_files) == [1]


def test_a_data_error_in_a_worker_keeps_its_message() -> None:
    with pytest.raises(DataError) as e:
        list(build_loader(Items(lambda i: ("not an image", 0)), train=False, img_size=8, batch_size=2, workers=1))
    assert str(e.value) == "dataset item 0 holds a str: expected a PIL image, a CHW tensor or an HWC numpy array"


def test_an_iterable_dataset_is_refused_clearly() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield Image.new("RGB", (8, 8)), 0

        def __len__(self) -> int:
            return 1

    with pytest.raises(DataError, match="IterableDataset has no items by index"):
        build_loader(Stream(), train=False, img_size=8, batch_size=1, workers=0)


@pytest.mark.parametrize("label, classes", [(-1, None), (2, ("a", "b")), (1.5, None)])
def test_labels_that_are_not_class_indices_are_refused(label, classes) -> None:
    dataset = Items(lambda i: (Image.new("RGB", (8, 8)), label))
    if classes is not None:
        dataset.classes = classes
    with pytest.raises(DataError, match="dataset item 0's label"):
        list(build_loader(dataset, train=False, img_size=8, batch_size=2, workers=0))


def test_a_numpy_image_of_another_layout_is_named_as_given() -> None:
    chw = np.zeros((3, 10, 12), np.uint8)
    with pytest.raises(DataError, match=r"shape \(3, 10, 12\)"):
        list(build_loader(Items(lambda i: (chw, 0)), train=False, img_size=8, batch_size=2, workers=0))

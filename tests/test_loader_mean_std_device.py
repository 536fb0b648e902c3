"""build_loader's mean, std and device: checked when the loader is built, in the user's terms."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from finetune import build_loader
from finetune.errors import ConfigError

ITEMS = [(Image.new("RGB", (8, 8), (255, 0, 0)), 0)] * 2


@pytest.mark.parametrize("mean, std, match", [
    ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "0-255 scale"),  # mmcv's numbers: every batch ~ -2
    ((0.5, 0.5, 0.5), (0.0, 0.5, 0.5), "std must be"),                    # was: NaN batches
    ((0.5,) * 4, (0.5,) * 4, "mean must be 3 numbers"),                   # was: a torch shape error at the first batch
])
def test_mean_and_std_are_checked(mean, std, match) -> None:
    with pytest.raises(ConfigError, match=match):
        build_loader(ITEMS, train=False, img_size=8, batch_size=2, workers=0, mean=mean, std=std)


def test_one_mean_and_std_serve_every_channel() -> None:
    x, _ = next(iter(build_loader(ITEMS, train=False, img_size=8, batch_size=2, workers=0, mean=(0.5,), std=[0.5])))
    assert x[:, 0].unique().tolist() == [1.0] and x[:, 1].unique().tolist() == [-1.0]


def test_a_device_torch_cannot_use_is_a_config_error() -> None:
    if torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    with pytest.raises(ConfigError, match="'mps' is not available here"):
        build_loader(ITEMS, train=False, img_size=8, batch_size=2, workers=0, device="mps")

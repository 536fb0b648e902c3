"""build_loader(device='meta'): a ConfigError when it is built, not batches without values."""

from __future__ import annotations

import pytest
from PIL import Image

from finetune import build_loader
from finetune.errors import ConfigError

ITEMS = [(Image.new("RGB", (8, 8), (255, 0, 0)), 0)] * 2


def test_the_meta_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="device 'meta' holds no values"):
        build_loader(ITEMS, train=False, img_size=8, batch_size=2, workers=0, device="meta")

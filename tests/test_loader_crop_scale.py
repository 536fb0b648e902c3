"""build_loader checks crop_scale as --crop-scale is checked: a scale outside 0 < min <= max <= 1 is a
ConfigError, not good images skipped as unreadable ("math domain error") or a crop that is always the whole image."""

import numpy as np
import pytest
from PIL import Image

import finetune
from finetune.errors import ConfigError


@pytest.fixture
def folder(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(tmp_path / c / "0.png")
    return tmp_path


@pytest.mark.parametrize("scale", [(-0.5, 1.0), (0.0, 0.0), (0.5, 0.1), (2.0, 3.0), (float("nan"), 1.0), (0.5,)])
def test_bad_crop_scale_is_an_error(folder, scale):
    with pytest.raises(ConfigError, match="crop_scale must be"):
        finetune.build_loader(str(folder), train=True, img_size=16, batch_size=2, workers=0, crop_scale=scale)


def test_good_crop_scale_loads_every_image(folder):
    with finetune.build_loader(str(folder), train=True, img_size=16, batch_size=2, workers=0,
                               crop_scale=[0.5, 1]) as loader:
        assert sum(len(y) for _, y in loader) == 2 and loader.bad_count == 0

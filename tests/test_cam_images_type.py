"""``class_activation_maps`` / ``find_cam_layer`` given images in another form than the normalised
float tensor batch they take (a numpy array, a PIL image, a list, uint8 pixels, one 3-D image): a
ConfigError that says what to pass, not an AttributeError / RuntimeError from inside torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import finetune
from finetune import ConfigError


@pytest.mark.parametrize(("images", "said"), [
    (np.zeros((1, 3, 32, 32), np.float32), "got numpy.ndarray (a numpy array: torch.from_numpy"),
    (Image.new("RGB", (32, 32)), "got PIL.Image.Image"),
    ([torch.zeros(3, 32, 32)], "got builtins.list"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating-point tensor (normalised, as the model takes them), "
                                                   "got dtype torch.uint8"),
    (torch.zeros(3, 32, 32), "batch N x C x H x W, got shape (3, 32, 32)"),
], ids=["numpy", "pil", "list", "uint8", "3d"])
def test_images_of_another_kind_are_a_config_error(images: object, said: str) -> None:
    model = finetune.create_model("resnet18", num_classes=2).eval()
    for call in (lambda: finetune.class_activation_maps(model, images), lambda: finetune.find_cam_layer(model, images)):
        with pytest.raises(ConfigError, match="images must be a") as info:
            call()
        assert said in str(info.value)

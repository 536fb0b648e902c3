"""lr-find refuses what train refuses, with the same errors: a model that cannot take the image size,
--lr-mult that leaves nothing to train; and a loss that is not finite before any update is named as such."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune import ConfigError, ModelError, TrainConfig, create_model, lr_find


def test_lr_find_names_an_image_size_the_model_cannot_take(colour_data: Path) -> None:
    cfg = TrainConfig(data=str(colour_data), model="squeezenet1_1", img_size=16, batch_size=8, workers="0", device="cpu", cache="none")
    with pytest.raises(ModelError, match="cannot take 16x16 images"):  # (was: an unexpected RuntimeError)
        lr_find(cfg, num_steps=3, quiet=True)


def test_lr_find_refuses_a_sweep_where_nothing_trains(colour_data: Path) -> None:
    cfg = TrainConfig(data=str(colour_data), model="resnet18", img_size=32, batch_size=8, workers="0", device="cpu", cache="none",
                      linear_probe=True, lr_mult={"fc": 0.0})
    with pytest.raises(ConfigError, match="every trainable parameter to 0"):  # (was: a suggestion read off noise)
        lr_find(cfg, num_steps=3, quiet=True)


def test_lr_find_says_the_first_loss_was_not_finite(colour_data: Path, tmp_path: Path) -> None:
    sd = create_model("resnet18", num_classes=3).state_dict()
    sd["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    cfg = TrainConfig(data=str(colour_data), model="resnet18", img_size=32, batch_size=8, workers="0", device="cpu", cache="none",
                      pretrained=str(tmp_path / "nan.pt"), exclude=["fc.*"])
    with pytest.raises(ModelError, match="nan at the first step, before any update"):  # (was: "took no step")
        lr_find(cfg, num_steps=3, quiet=True)

"""`finetune train --resume OTHER_RUN/checkpoints/ckpt.pt --out NEW`: the run goes on with the settings the
checkpoint was trained with (it used to go on with the defaults' --lr, --epochs, ... for every flag not given)."""

import argparse
import dataclasses

import torch

from finetune.config import TrainConfig, config_from_args


def _checkpoint(tmp_path, **settings):
    trained = TrainConfig(out=str(tmp_path / "A"), max_steps=3, **settings)
    path = tmp_path / "A" / "checkpoints" / "ckpt-e0000-s00000002.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(2)}, "config": dataclasses.asdict(trained)}, path)
    return path



def _from(**given) -> TrainConfig:
    ns = argparse.Namespace(**{f.name: None for f in dataclasses.fields(TrainConfig)}, config=None)
    vars(ns).update(given)
    return config_from_args(ns)


def test_a_new_out_goes_on_with_the_checkpoints_settings(tmp_path) -> None:
    path = _checkpoint(tmp_path, lr=0.05, epochs=3, batch_size=8, img_size=32, optimizer="sgd", freeze=["layer1"])
    cfg = _from(resume=str(path), out=str(tmp_path / "B"))
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.img_size, cfg.optimizer, cfg.freeze) == \
        (0.05, 3, 8, 32, "sgd", ["layer1"])
    assert cfg.out == str(tmp_path / "B") and cfg.resume == str(path)
    assert cfg.max_steps is None  # (where that invocation stopped, not part of the run)


def test_flags_given_still_win(tmp_path) -> None:
    path = _checkpoint(tmp_path, lr=0.05, epochs=3)
    cfg = _from(resume=str(path), out=str(tmp_path / "B"), lr=0.01, max_steps=7)
    assert (cfg.lr, cfg.epochs, cfg.max_steps) == (0.01, 3, 7)


def test_a_file_without_settings_leaves_the_defaults(tmp_path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)  # (not a finetune checkpoint: the resume itself says so)
    cfg = _from(resume=str(path), out=str(tmp_path / "B"))
    assert cfg.lr == TrainConfig().lr and cfg.epochs == TrainConfig().epochs

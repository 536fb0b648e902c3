"""--cache-features runs the backbone once in eval mode: a --bn policy under which backbone BatchNorm
layers train (eval: affine parameters; train: running statistics) cannot hold for the cached features."""

from __future__ import annotations

import pytest

from finetune.config import TrainConfig
from finetune.errors import ConfigError


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_cache_features_refuses_a_bn_policy_that_trains_batchnorm(bn: str) -> None:
    cfg = TrainConfig(linear_probe=True, cache_features=True, bn=bn)
    with pytest.raises(ConfigError, match=rf"cache_features \(--cache-features\) .* bn='{bn}' \(--bn {bn}\)"):
        cfg.validate()


def test_cache_features_with_frozen_bn_is_fine() -> None:
    TrainConfig(linear_probe=True, cache_features=True, bn="frozen").validate()
    TrainConfig(linear_probe=True, bn="eval").validate()  # a live probe may train BN affine parameters


def test_cache_features_refuses_auto_augment() -> None:
    cfg = TrainConfig(linear_probe=True, cache_features=True, auto_augment="trivialaugment")
    with pytest.raises(ConfigError, match=r"cache_features .*auto_augment='trivialaugment'"):
        cfg.validate()


def test_cache_features_with_augment_flag_is_refused_and_without_it_runs_unaugmented(tmp_path, colour_data) -> None:
    """--cache-features computes the features with the eval transform: the run's config.yaml says
    augment: false (it said true, silently not done), and --augment given with it is an error."""
    import argparse
    import dataclasses

    import yaml

    from finetune.config import config_from_args
    from finetune.train import train

    ns = argparse.Namespace(**{f.name: None for f in dataclasses.fields(TrainConfig)}, config=None)
    vars(ns).update(linear_probe=True, cache_features=True, augment=True, out=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="--augment"):
        config_from_args(ns)
    cfg = TrainConfig(data=str(colour_data), model="squeezenet1_1", img_size=32, batch_size=16, epochs=1,
                      workers="0", device="cpu", linear_probe=True, cache_features=True, out=str(tmp_path / "b"))
    train(cfg, quiet=True)
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["augment"] is False

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

"""Several processes training together: sharded loaders on one machine, and real ``torchrun``
runs on CPU (gloo) that must train what one process trains and resume exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune import build_loader, make_shapes
from finetune.data.loader import shard_order
from finetune.data.samples import find_splits


@pytest.fixture(scope="module")
def shapes_splits(tmp_path_factory: pytest.TempPathFactory):
    return find_splits(make_shapes(tmp_path_factory.mktemp("shapes"), per_class=5, val_per_class=3, size=32))


def test_shard_order_covers_the_epoch_once_padded_evenly() -> None:
    order = np.random.default_rng(0).permutation(11)
    shards = [shard_order(order, r, 3, pad=True) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    assert sorted(np.concatenate(shards).tolist()) == sorted(order.tolist() + order[:1].tolist())
    eval_shards = [shard_order(order, r, 3, pad=False) for r in range(3)]
    assert sorted(np.concatenate(eval_shards).tolist()) == list(range(11))


@pytest.mark.parametrize("train", [True, False])
def test_two_shards_together_give_the_one_process_batch(shapes_splits, train: bool) -> None:
    """Step b of rank 0 and rank 1 (batch 4 each) holds exactly the samples, with exactly the
    augmentation, of step b of one process with batch 8."""
    train_samples, val_samples = shapes_splits
    samples = train_samples if train else val_samples
    kw = dict(train=train, img_size=16, workers=0, seed=3)
    one = build_loader(samples, batch_size=8, **kw)
    ranks = [build_loader(samples, batch_size=4, shard=(r, 2), **kw) for r in range(2)]
    for loader in (one, *ranks):
        loader.set_epoch(1)
    if train:
        assert len(ranks[0]) == len(ranks[1]) == len(one)
    else:  # evaluation: every sample exactly once over the processes
        assert sum(len(lab) for r in ranks for _, lab in r) == len(samples)
        for r in ranks:
            r.set_epoch(1)
    for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks, strict=False):
        merged_x = torch.empty_like(x[: len(x0) + len(x1)])
        merged_x[0::2], merged_x[1::2] = x0, x1[: len(merged_x[1::2])]
        merged_y = torch.empty_like(y[: len(y0) + len(y1)])
        merged_y[0::2], merged_y[1::2] = y0, y1[: len(merged_y[1::2])]
        assert torch.equal(merged_y, y[: len(merged_y)])
        assert torch.equal(merged_x, x[: len(merged_x)])
    for loader in (one, *ranks):
        loader.close()


def test_bad_shard_is_a_config_error(shapes_splits) -> None:
    from finetune import ConfigError

    with pytest.raises(ConfigError, match="rank"):
        build_loader(shapes_splits[0], train=True, img_size=16, workers=0, shard=(2, 2))

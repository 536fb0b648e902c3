"""InstanceNorm with running statistics follows the BatchNorm policy in frozen parts (freezehunt)."""

from __future__ import annotations

import torch
from torch import nn

from finetune.freeze import freeze_all_but, trainable_table


def test_frozen_instancenorm_with_running_stats_keeps_them_and_computes_eval_features():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
                      nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    freeze_all_but(m, "3")
    x = torch.randn(2, 3, 8, 8)
    before = m[1].running_mean.clone()
    m.train()
    live = m[:3](x)
    assert torch.equal(m[1].running_mean, before)
    m.eval()
    assert torch.equal(live, m[:3](x))
    assert [r.bn for r in trainable_table(m).rows][1] == "frozen"

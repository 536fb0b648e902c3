"""Freezing through a DistributedDataParallel wrapper is refused with a way out (freeze, then wrap)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from finetune.errors import ConfigError
from finetune.freeze import freeze, freeze_all_but, freeze_until, param_groups, unfreeze


@pytest.fixture()
def gloo():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.parametrize("call", [
    lambda m: freeze(m, "0"),
    lambda m: unfreeze(m, "0"),
    lambda m: freeze_all_but(m, "2"),
    lambda m: freeze_until(m, "2"),
])
def test_changing_what_trains_through_ddp_is_refused(gloo, call) -> None:
    ddp = nn.parallel.DistributedDataParallel(_net())
    with pytest.raises(ConfigError, match=r"DistributedDataParallel.*wrap it again"):
        call(ddp)
    assert all(p.requires_grad for p in ddp.parameters())  # nothing changed


def test_freezing_before_wrapping_trains(gloo) -> None:
    net = _net()
    freeze(net, "0", "1")
    ddp = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(param_groups(ddp, 0.1), momentum=0.9)
    before = net[0].weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        ddp(torch.randn(8, 4)).sum().backward()
        opt.step()
    assert torch.equal(before, net[0].weight)
    assert freeze(nn.DataParallel(net), "2") == ["2.weight", "2.bias"]  # other wrappers still fine


def test_a_bn_policy_that_changes_what_trains_through_ddp_is_refused(gloo) -> None:
    from finetune.freeze import bn_policy, set_bn_policy

    net = _net()
    freeze(net, "0", "1")
    ddp = nn.parallel.DistributedDataParallel(net)
    trains = [p.requires_grad for p in ddp.parameters()]
    set_bn_policy(ddp, "frozen")  # (changes nothing: allowed)
    with pytest.raises(ConfigError, match=r"set_bn_policy\(model, 'eval'\) on a model wrapped in DistributedDataParallel"):
        set_bn_policy(ddp, "eval")  # (would make the frozen BatchNorm's affine parameters train)
    assert [p.requires_grad for p in ddp.parameters()] == trains and bn_policy(ddp) == "frozen"

"""``--sync-bn``: BatchNorm statistics over every process's batch, on CPU (gloo) with real
processes, and the in-place conversion (torch and timm layers, freezing marks, checkpoints)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import finetune
from finetune.sync_bn import SyncBatchNorm, SyncBatchNormAct, convert_sync_batchnorm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _half_batch_step(rank: int, world: int, port: int, sync: bool, out: str) -> None:
    """Process ``rank`` of ``world``: BatchNorm (synchronised or not) over its share of a fixed
    batch; saves output, input/weight/bias gradients and running statistics."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        x = (torch.randn(8, 3, 5, 4, dtype=torch.float64) * 3 + 7).float()  # a large mean: variance by two passes
        weights = torch.randn(8, 3, 5, 4)
        net = nn.Sequential(nn.BatchNorm2d(3, momentum=0.3))
        with torch.no_grad():
            net[0].weight.uniform_(0.5, 1.5)
            net[0].bias.uniform_(-1, 1)
        if sync:
            convert_sync_batchnorm(net)
        share = slice(rank * 8 // world, (rank + 1) * 8 // world)
        xs = x[share].clone().requires_grad_(True)
        y = net(xs)
        (y * weights[share]).sum().backward()
        torch.save({"y": y.detach(), "dx": xs.grad, "dw": net[0].weight.grad, "db": net[0].bias.grad,
                    "mean": net[0].running_mean, "var": net[0].running_var,
                    "tracked": net[0].num_batches_tracked}, f"{out}/rank{rank}.pt")
    finally:
        # torch < 2.8 destroys a gloo group holding the GIL while it joins gloo's worker threads, and a
        # worker that has just finished the last all_reduce may still need the GIL to free its tensors: a
        # deadlock (pytorch/pytorch#154976), one run in ~15 on torch 2.4. A pause lets the workers finish.
        time.sleep(0.1)
        dist.destroy_process_group()


def _run(world: int, sync: bool, tmp_path: Path) -> list[dict]:
    procs = mp.spawn(_half_batch_step, args=(world, _free_port(), sync, str(tmp_path)), nprocs=world, join=False)
    deadline = time.monotonic() + 120
    while not procs.join(timeout=1):  # (a hung process fails the test, rather than holding pytest at its exit)
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail(f"a process of {world} did not finish in 120 s")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _full_batch() -> dict:
    torch.manual_seed(0)
    x = (torch.randn(8, 3, 5, 4, dtype=torch.float64) * 3 + 7).float()
    weights = torch.randn(8, 3, 5, 4)
    bn = nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x.requires_grad_(True)
    y = bn(x)
    (y * weights).sum().backward()
    return {"y": y.detach(), "dx": x.grad, "dw": bn.weight.grad, "db": bn.bias.grad, "mean": bn.running_mean,
            "var": bn.running_var, "tracked": bn.num_batches_tracked}


def test_two_processes_normalise_and_backpropagate_as_one_batch(tmp_path: Path) -> None:
    """Two real processes (gloo) with 4 images each give the outputs, input gradients, running
    statistics and (summed over processes) parameter gradients of one BatchNorm over all 8."""
    full = _full_batch()
    ranks = _run(2, True, tmp_path)
    tol = dict(atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), full["y"], **tol)
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), full["dx"], **tol)
    torch.testing.assert_close(ranks[0]["dw"] + ranks[1]["dw"], full["dw"], **tol)
    torch.testing.assert_close(ranks[0]["db"] + ranks[1]["db"], full["db"], **tol)
    for r in ranks:
        torch.testing.assert_close(r["mean"], full["mean"], **tol)
        torch.testing.assert_close(r["var"], full["var"], **tol)
        assert int(r["tracked"]) == 1


def test_without_sync_each_process_normalises_its_own_half(tmp_path: Path) -> None:
    """The same two processes without conversion: per-process statistics, visibly not the full batch's
    (what the test above would see if the layer did not synchronise)."""
    full = _full_batch()
    ranks = _run(2, False, tmp_path)
    assert not torch.allclose(torch.cat([r["y"] for r in ranks]), full["y"], atol=1e-3)
    assert not torch.allclose(ranks[0]["mean"], ranks[1]["mean"], atol=1e-4)


def test_one_process_group_of_one_is_plain_batchnorm(tmp_path: Path) -> None:
    full = _full_batch()
    (rank,) = _run(1, True, tmp_path)
    for k in ("y", "dx", "dw", "db", "mean", "var"):
        torch.testing.assert_close(rank[k], full[k], atol=2e-5, rtol=1e-5)


def test_conversion_is_in_place_and_keeps_freezing_and_checkpoint_keys() -> None:
    import torchvision

    net = torchvision.models.resnet18(num_classes=3)
    finetune.freeze_all_but(net, "layer4", "fc")  # frozen part: BatchNorm held in eval mode by a hook
    params = {n: p for n, p in net.named_parameters()}
    keys = list(net.state_dict())
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    before = net(x)
    names = convert_sync_batchnorm(net)
    assert len(names) == 20 and all(isinstance(m, SyncBatchNorm) for n, m in net.named_modules() if n in names)
    assert list(net.state_dict()) == keys
    assert all(p is params[n] for n, p in net.named_parameters())
    assert not net.bn1.weight.requires_grad and net.layer4[0].bn1.weight.requires_grad
    assert torch.equal(net(x), before)
    net.train()
    stats = net.layer1[0].bn1.running_mean.clone()
    net(x)  # (no process group: each layer is torch's; the frozen part's hook still holds it in eval mode)
    assert not net.layer1[0].bn1.training and net.layer4[0].bn1.training
    assert torch.equal(net.layer1[0].bn1.running_mean, stats)
    plain = torchvision.models.resnet18(num_classes=3)
    plain.load_state_dict(net.state_dict())  # checkpoints load into the plain model


def test_timm_batchnorm_act_keeps_its_activation() -> None:
    pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d

    net = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=nn.ReLU))
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    convert_sync_batchnorm(net)
    assert type(net[1]) is SyncBatchNormAct
    assert torch.equal(net(x), before) and (net(x) >= 0).all()  # the ReLU is still there
    model = finetune.create_model("timm:efficientnet_b0", num_classes=2)
    assert len(convert_sync_batchnorm(model)) > 40


def test_a_batchnorm_with_its_own_forward_is_refused_before_anything_changes() -> None:
    class Scaled(nn.BatchNorm2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    net = nn.Sequential(nn.BatchNorm2d(3), Scaled(3))
    with pytest.raises(finetune.ConfigError, match=r"cannot synchronise '1' \(Scaled"):
        convert_sync_batchnorm(net)
    assert type(net[0]) is nn.BatchNorm2d


def test_eval_mode_and_no_process_group_talk_to_no_one() -> None:
    assert not dist.is_initialized()
    bn, plain = SyncBatchNorm(3), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 2, 2)
    assert torch.equal(bn(x), plain(x)) and torch.equal(bn.running_var, plain.running_var)
    bn.eval(), plain.eval()
    assert torch.equal(bn(x), plain(x))


def test_a_cuda_model_gets_torch_and_timm_layers() -> None:
    """(On CUDA the fused kernels of torch's own layer; the choice is made from where the model is.)"""
    from finetune.sync_bn import _sync_class

    assert _sync_class(nn.BatchNorm2d(3), cuda=True) is nn.SyncBatchNorm
    assert _sync_class(nn.BatchNorm1d(3), cuda=False) is SyncBatchNorm
    assert _sync_class(nn.SyncBatchNorm(3), cuda=False) is None
    timm = pytest.importorskip("timm")
    assert _sync_class(timm.layers.BatchNormAct2d(3), cuda=True) is timm.layers.norm_act.SyncBatchNormAct

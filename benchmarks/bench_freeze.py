"""Epoch time: full fine-tune vs frozen backbone vs cached-feature linear probe, same data, one run.

Each mode starts from the same initial weights and trains on the same synthetic
batches (kept on the device, so no input pipeline is timed):

- ``full``: every parameter trains (SGD, momentum 0.9, weight decay 1e-4);
- ``frozen``: ``freeze_all_but(model, head)`` with BatchNorm ``frozen``: the
  backbone runs forward only, no autograd graph is kept for it;
- ``cached``: the backbone runs once (``extract_features``), later epochs train
  only the head on the cached features (``train_head_on_features``); the first
  epoch (extraction + one head epoch) and a later epoch are reported apart.

On CUDA: bf16 autocast + channels_last, batch 256, 224 px by default. On CPU
small defaults so the run finishes in about a minute.

    .venv/bin/python benchmarks/bench_freeze.py                  # CPU: resnet50, batch 16, 128 px
    .venv/bin/python benchmarks/bench_freeze.py --device cuda    # GPU: batch 256, 224 px, bf16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from finetune.freeze import (
    extract_features,
    freeze_all_but,
    param_groups,
    split_head,
    train_head_on_features,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def head_module_name(model: nn.Module) -> str:
    _, head = split_head(model)
    return next(n for n, m in model.named_modules() if m is head)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument("--batches", type=int, help="batches per epoch (CPU 4, CUDA 20)")
    p.add_argument("--head-epochs", type=int, default=20, help="cached head epochs to average over")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    bs = args.batch_size or (256 if cuda else 16)
    size = args.img_size or (224 if cuda else 128)
    n_batches = args.batches or (20 if cuda else 4)
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    if cuda:
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    base = getattr(torchvision.models, args.arch)(num_classes=args.num_classes)
    gen = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randn(bs, 3, size, size, generator=gen).to(device, memory_format=memory_format),
            torch.randint(0, args.num_classes, (bs,), generator=gen).to(device),
        )
        for _ in range(n_batches)
    ]
    images = bs * n_batches
    head_name = head_module_name(base)

    def fresh() -> nn.Module:
        return copy.deepcopy(base).to(device, memory_format=memory_format).train()

    def epoch(model: nn.Module, opt: torch.optim.Optimizer, batches: list) -> None:
        for x, y in batches:
            with autocast():
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def optimizer(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(param_groups(model, 0.01, weight_decay=1e-4), momentum=0.9)

    results: list[tuple[str, float]] = []
    for mode in ("full", "frozen"):
        model = fresh()
        if mode == "frozen":
            freeze_all_but(model, head_name)
        opt = optimizer(model)
        epoch(model, opt, data[:1])  # warm-up (kernel selection, optimizer state)
        results.append((mode, timed(lambda model=model, opt=opt: epoch(model, opt, data), device)))
        del model, opt

    model = fresh()
    freeze_all_but(model, head_name)
    backbone, head = split_head(model)
    opt = optimizer(model)
    cache: dict[str, torch.Tensor] = {}

    def extract() -> None:
        with autocast():
            cache["f"], cache["y"] = extract_features(backbone, data)
        cache["f"] = cache["f"].float()

    def head_epoch() -> None:
        train_head_on_features(head, cache["f"], cache["y"], opt, batch_size=bs)

    extract_features(backbone, data[:1])  # warm-up
    t_extract = timed(extract, device)
    head_epoch()  # warm-up
    t_head = timed(lambda: [head_epoch() for _ in range(args.head_epochs)], device) / args.head_epochs
    results.append(("cached, 1st epoch (extract + head)", t_extract + t_head))
    results.append(("cached, later epochs (head only)", t_head))

    print(f"{args.arch}, {images} images/epoch ({n_batches} x {bs}), {size} px, device {device}"
          f"{' ' + torch.cuda.get_device_name(device) if cuda else ''}, "
          f"{'bf16 autocast + channels_last' if cuda else 'fp32'}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {platform.machine()}, load average {os.getloadavg()[0]:.1f}")
    full = results[0][1]
    print(f"{'mode':38} {'epoch s':>10} {'img/s':>12} {'vs full':>9}")
    for name, seconds in results:
        print(f"{name:38} {seconds:10.3f} {images / seconds:12,.0f} {full / seconds:8.1f}x")


if __name__ == "__main__":
    main()

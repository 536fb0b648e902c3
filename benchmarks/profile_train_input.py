"""Where a training step fed by finetune's loader spends its time (torch.profiler), for diagnosis.

Not a benchmark (no baseline, no ratio): it runs the loop of ``bench_data.py --gpu``
(ResNet-50, SGD, bf16 autocast, channels_last) for a few steps under the profiler and
prints the operators by device time and by host time, so the gap between JPEG-fed and
synthetic training (BENCHMARKS.md: 75.7% with ``decode="gpu"``) can be placed: nvjpeg,
the crops, waits on the loader, or the host falling behind.

    python benchmarks/profile_train_input.py --data DIR --decode gpu           # CUDA
    python benchmarks/profile_train_input.py --data DIR --decode cpu --device cpu --model resnet18 --steps 3
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

from finetune.data.loader import build_loader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--decode", default="gpu", choices=["cpu", "gpu"])
    p.add_argument("--cache", default=None, choices=[None, "ram", "gpu"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--steps", type=int, default=15)
    args = p.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = getattr(torchvision.models, args.model)(num_classes=4).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = build_loader(args.data, train=True, img_size=args.img_size, batch_size=args.batch_size, device=dev,
                          channels_last=True, decode=args.decode, cache=args.cache, workers=args.workers, log=print)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def endless():  # a folder smaller than 5 + steps batches goes round again (one epoch ran out: StopIteration)
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    it = endless()
    for _ in range(5):  # warm-up: cuDNN's search, the loader's workers
        step(*next(it))
    sync()
    waits, n, start = [], 0, time.perf_counter()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            t = time.perf_counter()
            x, y = next(it)
            waits.append(time.perf_counter() - t)
            n += len(x)  # a folder smaller than --batch-size gives smaller batches
            step(x, y)
        sync()
    seconds = time.perf_counter() - start
    loader.close()
    print(f"{args.steps} steps, {n} images: {n / seconds:,.0f} img/s under the profiler; host waited "
          f"{sum(waits) * 1e3:.0f} ms for batches in all (max {max(waits) * 1e3:.1f} ms)")
    if cuda:
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))


if __name__ == "__main__":
    main()

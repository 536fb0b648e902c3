"""Eval-pipeline benchmark: finetune's eval loader vs torchvision's ImageFolder eval transform.

What `finetune eval` and every epoch's validation run: decode, Resize(img_size / crop_pct,
interpolation) + CenterCrop(img_size), normalise. The baseline is the plain torchvision
pipeline (ImageFolder, Resize + CenterCrop + ToTensor + Normalize, DataLoader) with the same
settings, best of num_workers 0..2; both are measured in this run, on the same photo-like JPEG
folder (generated under ``$FINETUNE_CACHE/bench``, never committed), for torchvision's classic
transform (0.875, bilinear) and timm's usual one (0.9, bicubic). The largest pixel difference
from torchvision's output is printed next to the speed.

    .venv/bin/python benchmarks/bench_eval.py            # 500x375 JPEGs, 600 images
    .venv/bin/python benchmarks/bench_eval.py --quick    # smaller (smoke run)
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from finetune.data import build_loader
from finetune.data.bench import make_photo_folder
from finetune.data.shapes import cache_dir

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def rate(batches, limit: int) -> float:
    """Images/s over one pass of ``batches`` (at most ``limit`` images), after the first batch."""
    it = iter(batches)
    x, _ = next(it)  # workers started, first batch out
    n, t0 = 0, time.perf_counter()
    for x, _ in it:
        n += len(x)
        if n >= limit:
            break
    return n / (time.perf_counter() - t0)


def torchvision_loader(root, size: int, crop_pct: float, interpolation: str, workers: int):
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    t = T.Compose([T.Resize(int(size / crop_pct + 1e-6), interpolation=T.InterpolationMode(interpolation)),
                   T.CenterCrop(size), T.ToTensor(), T.Normalize(MEAN, STD)])
    return torch.utils.data.DataLoader(ImageFolder(str(root), t), batch_size=64, num_workers=workers,
                                       persistent_workers=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count = 200 if args.quick else 600
    root = make_photo_folder(cache_dir() / "bench" / f"photos-500x375-{count}", count=count, width=500, height=375,
                             processes=os.cpu_count() or 1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {count} JPEGs 500x375, eval at 224")
    print(f"{'transform':<22} {'torchvision (best)':>19} {'finetune (best)':>16} {'ratio':>6} {'max diff':>9}")
    for crop_pct, interpolation in ((0.875, "bilinear"), (0.9, "bicubic")):
        theirs = max(rate(torchvision_loader(root, 224, crop_pct, interpolation, w), count) for w in (0, 1, 2))
        ours = 0.0
        for w in (0, 1, 2):
            with build_loader(str(root), train=False, img_size=224, batch_size=64, workers=w, crop_pct=crop_pct,
                              interpolation=interpolation) as loader:
                ours = max(ours, rate(loader, count))
        # the same first batch from both: the largest difference in 0..255 levels
        ref, _ = next(iter(torchvision_loader(root, 224, crop_pct, interpolation, 0)))
        with build_loader(str(root), train=False, img_size=224, batch_size=64, workers=0, crop_pct=crop_pct,
                          interpolation=interpolation) as loader:
            got, _ = next(iter(loader))
        diff = float(((got - ref).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255).max())
        print(f"{crop_pct} {interpolation:<16} {theirs:>15.0f} img/s {ours:>10.0f} img/s {ours / theirs:>5.2f}x "
              f"{diff:>8.2f}")


if __name__ == "__main__":
    main()

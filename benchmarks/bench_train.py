"""`finetune train` throughput, mode against mode, in one run (issues #5 and #6).

Runs the real command (``python -m finetune train``, one subprocess per mode)
on a generated folder of 500x375 JPEGs and reads each epoch's training
throughput (``images_per_s`` in metrics.jsonl: the loop alone, evaluation and
checkpoints excluded) from the run directory:

- ``full``: every parameter trains;
- ``frozen backbone``: ``--linear-probe`` (all but the head frozen, BatchNorm
  frozen): the backbone runs forward only, no autograd graph is kept;
- ``full, --decode gpu``: full fine-tune fed straight from the JPEG files
  (nvjpeg), no cache (CUDA only).

The first two read batches from ``--cache gpu`` (CUDA) / ``--cache ram`` (CPU),
so the model, not the input pipeline, is what they time. The issue's reference
(plain loop, H200, bf16, channels_last): frozen ResNet-50 15,465 img/s, full
4,726 img/s, a ratio of 3.27x.

    python benchmarks/bench_train.py                       # CUDA: resnet50, batch 256, 224 px, bf16 + channels_last
    python benchmarks/bench_train.py --device cpu --model resnet18 --img-size 64 --batch-size 32 --images 512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from finetune.data.bench import make_photo_folder
from finetune.data.shapes import cache_dir


def run_mode(data: Path, out: Path, extra: list[str], args: argparse.Namespace, device: str) -> dict[str, object]:
    cmd = [sys.executable, "-m", "finetune", "train", "--data", str(data), "--model", args.model,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--img-size", str(args.img_size),
           "--optimizer", "sgd", "--device", device, "--workers", str(args.workers), "--out", str(out), "-q", *extra]
    if device == "cuda":
        cmd += ["--amp", "bf16", "--channels-last"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"],
                "cmd": " ".join(cmd)}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [float(r["images_per_s"]) for r in rows]
    later = rates[1:] or rates  # epoch 1 includes filling the cache and cuDNN's kernel search
    return {"rates": rates, "img_s": statistics.median(later), "wall_s": wall, "val_top1": rows[-1]["val_top1"],
            "cmd": " ".join(cmd), "stderr": proc.stderr.strip().splitlines()[-3:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--images", type=int, default=8000, help="JPEGs in the generated folder (default 8000)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16))
    p.add_argument("--ablations", action="store_true", help="CUDA: also without prefetch / async save")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    cache = "gpu" if device == "cuda" else "ram"
    data = make_photo_folder(cache_dir() / "bench" / f"photos-500x375-{args.images}", count=args.images,
                             width=500, height=375, processes=os.cpu_count() or 1)
    modes = [("full", ["--cache", cache]), ("frozen backbone", ["--cache", cache, "--linear-probe"])]
    if device == "cuda":
        modes.append(("full, --decode gpu", ["--decode", "gpu"]))
        if args.ablations:  # what the defaults buy: the threaded side-stream prefetch, the async checkpoint
            modes += [("full, --prefetch none", ["--cache", cache, "--prefetch", "none"]),
                      ("frozen, --prefetch none", ["--cache", cache, "--linear-probe", "--prefetch", "none"]),
                      ("full, --no-async-save", ["--cache", cache, "--no-async-save"])]
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in modes:
            results[name] = run_mode(data, Path(tmp) / name.replace(" ", "_").replace(",", ""), extra, args, device)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"\nfinetune train, {args.model}, batch {args.batch_size}, {args.img_size} px, {args.images} JPEGs (500x375), "
          f"{args.epochs} epochs, device {gpu}, torch {torch.__version__}, {os.cpu_count()} CPU cores")
    full = results["full"].get("img_s")
    print(f"{'mode':24} {'img/s (median, epochs 2+)':>26} {'vs full':>8}   per epoch")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:24} failed: {r['error']}")
            continue
        ratio = f"{float(r['img_s']) / float(full):7.2f}x" if full else "      -"
        print(f"{name:24} {float(r['img_s']):26,.0f} {ratio}   {', '.join(f'{x:,.0f}' for x in r['rates'])}")
    frozen = results["frozen backbone"].get("img_s")
    if full and frozen:
        print(f"frozen / full = {float(frozen) / float(full):.2f}x (issue's plain-loop reference on an H200: 3.27x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Optimizer step time: torch's default CPU implementation vs the fused one that `finetune train` uses.

Same model, same gradients, one run; prints the median step time of each and the ratio.

    .venv/bin/python benchmarks/bench_optimizer.py [--arch resnet18] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from finetune.models import create_model


def step_ms(make, model: torch.nn.Module, steps: int) -> float:  # type: ignore[no-untyped-def]
    opt = make(model.parameters())
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        opt.step()
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    model = create_model(args.arch, num_classes=8)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    rows = [
        ("AdamW default", lambda ps: torch.optim.AdamW(ps, lr=1e-3)),
        ("AdamW fused", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)),
        ("SGD nesterov default", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
        ("SGD nesterov fused", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, fused=True)),
    ]
    results = {name: step_ms(make, model, args.steps) for name, make in rows}
    print(f"{args.arch}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, ms in results.items():
        print(f"{name:<24} {ms:7.1f} ms/step")
    print(f"AdamW default / fused: {results['AdamW default'] / results['AdamW fused']:.1f}x")
    print(f"SGD default / fused:   {results['SGD nesterov default'] / results['SGD nesterov fused']:.1f}x")


if __name__ == "__main__":
    main()

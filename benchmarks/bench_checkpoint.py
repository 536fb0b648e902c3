"""How long one checkpoint save blocks the training loop: ResNet-50 + SGD-momentum state.

Compares, in one run and on one machine:

* ``torch.save``            the notes' way: ``torch.save({"model": sd, "optimizer": osd}, path)``
* ``Checkpointer sync``     atomic + fsync + manifest + last/best links + pruning, in the caller
* ``Checkpointer async``    the caller waits only for the copy to (pinned) host memory

"blocked" is the time until the call returns (what the training loop loses);
"durable" is the time until the checkpoint is fsync'ed and complete (``wait()`` for async).
The model is on CUDA when available (else CPU); the optimizer state is filled by one step.

    .venv/bin/python benchmarks/bench_checkpoint.py [--repeats 5] [--device cpu|cuda] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from finetune.checkpoint import Checkpointer, clean_state_dict, optimizer_state_by_name


def build(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    size = 224 if device.type == "cuda" else 64  # the state's size does not depend on the input
    x = torch.randn(2, 3, size, size, device=device)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2], device=device)).backward()
    optimizer.step()
    return model, optimizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, optimizer, device: torch.device, directory: Path, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Each repeat runs every method once, in turn, so that a busy machine slows all of them alike."""
    names = ("torch.save", "Checkpointer sync", "Checkpointer async")
    results: dict[str, dict[str, list[float]]] = {n: {"blocked": [], "durable": []} for n in names}
    plain = directory / "plain.pth.tar"
    with Checkpointer(directory / "sync", keep_last=1) as sync_ckpt, \
            Checkpointer(directory / "async", keep_last=1, async_save=True) as async_ckpt:
        for step in range(repeats):
            # the notes: torch.save of the raw state dicts (CUDA tensors are copied inside torch.save)
            sync(device)
            t0 = time.perf_counter()
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0}, plain)
            results["torch.save"]["blocked"].append(time.perf_counter() - t0)
            fd = os.open(plain, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            results["torch.save"]["durable"].append(time.perf_counter() - t0)
            for name, ckpt in (("Checkpointer sync", sync_ckpt), ("Checkpointer async", async_ckpt)):
                sync(device)
                t0 = time.perf_counter()
                ckpt.save({"model": model, "optimizer": optimizer, "epoch": 0, "step": step})
                results[name]["blocked"].append(time.perf_counter() - t0)
                ckpt.wait()
                results[name]["durable"].append(time.perf_counter() - t0)
    return results


def state_bytes(model, optimizer) -> int:
    sd = clean_state_dict(model)
    osd = optimizer_state_by_name(optimizer, model)
    tensors = list(sd.values()) + [t for s in osd["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def ms(xs: list[float]) -> str:
    return f"{1000 * statistics.median(xs):8.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dir", help="where to write (default: a temporary directory, removed afterwards)")
    p.add_argument("--json", help="also write the raw timings here")
    args = p.parse_args()
    device = torch.device(args.device)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench-ckpt-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        model, optimizer = build(device)
        results = measure(model, optimizer, device, directory, args.repeats)
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"ResNet-50 + SGD momentum: {state_bytes(model, optimizer) / 2**20:.0f} MiB of tensors on {device} "
          f"({machine(device)}); torch {torch.__version__}, torchvision {torchvision.__version__}; "
          f"median of {args.repeats}, first save in brackets; writing to {directory}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'':20s} {'blocked ms':>18s} {'durable ms':>18s}")
    for name, r in results.items():
        print(f"{name:20s} {ms(r['blocked'])} ({1000 * r['blocked'][0]:6.1f}) {ms(r['durable'])} ({1000 * r['durable'][0]:6.1f})")
    base = statistics.median(results["torch.save"]["blocked"])
    for name in ("Checkpointer sync", "Checkpointer async"):
        ratio = statistics.median(results[name]["blocked"]) / base
        print(f"{name} blocked / torch.save: {100 * ratio:.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "machine": machine(device),
                                               "torch": torch.__version__, "results": results}, indent=1))


if __name__ == "__main__":
    main()

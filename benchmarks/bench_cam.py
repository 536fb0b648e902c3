"""Class activation maps: finetune's batched maps vs pytorch-grad-cam, same model, same images, one run.

For each method both libraries explain the same batch (the same target classes, the same
feature layer: the one :func:`finetune.cam.find_cam_layer` picks) and the time per batch
is the median of ``--repeats`` runs after one warm-up, each library in turn. The largest
difference between the two maps is printed too: the benchmark compares equal work.

Why finetune is faster: pytorch-grad-cam calls ``loss.backward()``, which runs the backward
pass through the whole network into every parameter's ``.grad``; finetune asks autograd for
the gradient of the feature layer only (no graph is kept for the layers before it, and no
parameter gradient is computed), keeps everything on the device (no NumPy round trip, no
per-image OpenCV resize), and ``cam`` needs no backward at all.

pytorch-grad-cam is not a dependency: ``pip install grad-cam`` (it needs OpenCV, SciPy,
scikit-learn, matplotlib) or point ``--grad-cam-path`` at a folder that holds it.

    .venv/bin/python benchmarks/bench_cam.py                         # CPU: resnet50, batch 8, 224 px
    .venv/bin/python benchmarks/bench_cam.py --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from finetune import create_model
from finetune.cam import class_activation_maps, find_cam_layer


def timed(fn, device: torch.device) -> float:  # noqa: ANN001
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def grad_cam_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grad-cam")
    except PackageNotFoundError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default="gradcam,gradcam++,layercam,cam")
    parser.add_argument("--grad-cam-path", default=os.environ.get("GRAD_CAM_PATH"),
                        help="a folder holding pytorch_grad_cam (pip install --target)")
    args = parser.parse_args()
    if args.grad_cam_path:
        sys.path.append(args.grad_cam_path)
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        raise SystemExit(f"bench_cam: pytorch-grad-cam is needed as the baseline ({e}): pip install grad-cam") from None

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10).to(device).eval()
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    classes = [i % 10 for i in range(args.batch)]
    layer = find_cam_layer(model, images)
    target_layer = model.get_submodule(layer.name)
    theirs_by_method = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM",
                        "xgradcam": "XGradCAM", "hirescam": "HiResCAM", "cam": "GradCAM"}
    print(f"# {args.model}, batch {args.batch} x {args.img_size} px, {device}, layer '{layer.name}'; "
          f"torch {torch.__version__}, pytorch-grad-cam {grad_cam_version()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| method | pytorch-grad-cam ms/batch | finetune ms/batch | speed-up | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        cls = getattr(pytorch_grad_cam, theirs_by_method[method])
        targets = [ClassifierOutputTarget(c) for c in classes]
        cam = cls(model=model, target_layers=[target_layer])
        out: dict[str, object] = {}

        def run_theirs() -> None:
            out["theirs"] = cam(input_tensor=images, targets=targets)  # noqa: B023

        def run_ours() -> None:
            out["ours"] = class_activation_maps(model, images, method=method, classes=classes).maps.cpu()  # noqa: B023

        run_theirs(), run_ours()  # warm-up
        t_theirs, t_ours = [], []
        for _ in range(args.repeats):
            t_theirs.append(timed(run_theirs, device))
            t_ours.append(timed(run_ours, device))
        cam.activations_and_grads.release()
        diff = float(np.abs(out["ours"].numpy() - out["theirs"]).max())  # type: ignore[union-attr]
        a, b = statistics.median(t_theirs) * 1e3, statistics.median(t_ours) * 1e3
        label = method + (" (vs their GradCAM)" if method == "cam" else "")
        print(f"| {label} | {a:.1f} | {b:.1f} | **{a / b:.2f}x** | {diff:.1e} |")


if __name__ == "__main__":
    main()

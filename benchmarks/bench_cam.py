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
    .venv/bin/python benchmarks/bench_cam.py --methods scorecam,ablationcam --batch 1 --img-size 64 \\
        --repeats 2 --warmup 0 --threads 1                            # one forward per channel: slow

``scorecam`` and ``ablationcam`` run ``--perturb-batch`` masked or ablated inputs per forward
in both libraries (pytorch-grad-cam's ``batch_size``). finetune's Score-CAM batches masked
images of different images together and runs a channel that is constant once (a zero
image); its Ablation-CAM replays the layers before the feature layer from one forward
instead of re-running them, and skips channels that are zero everywhere. For the eigen
methods pytorch-grad-cam's projection gets finetune's sign rule (the sign of a principal
component is arbitrary; see :func:`finetune.cam.class_activation_maps`).
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
from finetune.errors import ConfigError


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
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is steadier on a shared machine")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each library first (1)")
    parser.add_argument("--perturb-batch", type=int, default=32,
                        help="masked/ablated inputs per forward, scorecam and ablationcam (32)")
    parser.add_argument("--methods", default="gradcam,gradcam++,layercam,cam")
    parser.add_argument("--grad-cam-path", default=os.environ.get("GRAD_CAM_PATH"),
                        help="a folder holding pytorch_grad_cam (pip install --target)")
    args = parser.parse_args()
    if args.grad_cam_path:
        sys.path.append(args.grad_cam_path)
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam import eigen_cam, eigen_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
    except ImportError as e:
        raise SystemExit(f"bench_cam: pytorch-grad-cam is needed as the baseline ({e}): pip install grad-cam") from None

    def signed_projection(batch: np.ndarray) -> np.ndarray:  # finetune's sign rule for the principal component
        p = get_2d_projection(batch)
        sign = np.sign((p * batch.sum(1)).sum((1, 2)))
        return p * np.where(sign == 0, 1, sign)[:, None, None]

    eigen_cam.get_2d_projection = signed_projection
    eigen_grad_cam.get_2d_projection = signed_projection

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10).to(device).eval()
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    classes = [i % 10 for i in range(args.batch)]
    layer = find_cam_layer(model, images)
    target_layer = model.get_submodule(layer.name)
    theirs_by_method = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM",
                        "xgradcam": "XGradCAM", "hirescam": "HiResCAM", "cam": "GradCAM", "eigencam": "EigenCAM",
                        "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}
    print(f"# {args.model}, batch {args.batch} x {args.img_size} px, {device}, layer '{layer.name}', "
          f"{args.repeats} repeats after {args.warmup} warm-up, perturbation batch {args.perturb_batch}; "
          f"torch {torch.__version__}, pytorch-grad-cam {grad_cam_version()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| method | pytorch-grad-cam ms/batch | finetune ms/batch | speed-up | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        cls = getattr(pytorch_grad_cam, theirs_by_method[method])
        targets = [ClassifierOutputTarget(c) for c in classes]
        cam = cls(model=model, target_layers=[target_layer])
        cam.batch_size = args.perturb_batch
        out: dict[str, object] = {}

        def run_theirs() -> None:
            out["theirs"] = cam(input_tensor=images, targets=targets)  # noqa: B023

        def run_ours() -> None:
            out["ours"] = class_activation_maps(model, images, method=method, classes=classes,  # noqa: B023
                                                batch_size=args.perturb_batch).maps.cpu()

        t_theirs, t_ours = [], []
        try:
            for _ in range(args.warmup):
                run_theirs(), run_ours()
            for _ in range(args.repeats):
                t_theirs.append(timed(run_theirs, device))
                t_ours.append(timed(run_ours, device))
        except ConfigError as e:  # 'cam' on a layer that does not feed the pooled head (small images)
            print(f"| {method} | - | refused: {e} | - | - |")
            continue
        finally:
            cam.activations_and_grads.release()
        keep = slice(None)
        if method == "ablationcam":  # it divides by the logit: a negative one flips its map (finetune: by |logit|)
            with torch.no_grad():
                logits = model(images)[torch.arange(len(classes)), torch.tensor(classes)].cpu()
            keep = (logits > 0).numpy()
        diff = float(np.abs(out["ours"].numpy()[keep] - out["theirs"][keep]).max(initial=0.0))  # type: ignore[union-attr]
        a, b = statistics.median(t_theirs) * 1e3, statistics.median(t_ours) * 1e3
        label = method + (" (vs their GradCAM)" if method == "cam" else "")
        if method == "ablationcam":
            label += f" (diff on the {int(np.sum(keep))} images with a positive logit)"
        print(f"| {label} | {a:.1f} | {b:.1f} | **{a / b:.2f}x** | {diff:.1e} |")


if __name__ == "__main__":
    main()

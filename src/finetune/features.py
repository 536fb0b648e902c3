"""What the model sees at each stage: feature maps of one image, tiled for TensorBoard, and the
model graph (the notes' "feature maps" and "graph" in TensorBoard).

One forward in eval mode without gradients records the output of every module down to two
levels of nesting; for each spatial resolution the last module that produced it (the end of a
stage: ``layer1`` … ``layer4`` of a ResNet, ``stages.N`` of a ConvNeXt, ``layers.N`` of a Swin,
a ViT's final tokens) is kept. Nothing about the model changes: train/eval flags, buffers and
the random number generators are left as they were, so a run logs the same with and without.

>>> from finetune.models import create_model
>>> maps = stage_feature_maps(create_model("resnet18", num_classes=3), torch.zeros(1, 3, 64, 64))
>>> [(name, tuple(m.shape)) for name, m in maps.items()]
[('relu', (64, 32, 32)), ('layer1', (64, 16, 16)), ('layer2', (128, 8, 8)), ('layer3', (256, 4, 4)), ('layer4', (512, 2, 2))]
>>> feature_grid(maps["layer1"]).shape   # the 16 most varied channels, 4 x 4 tiles
(201, 201, 3)
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from finetune.cam import spatial_layout
from finetune.models import modes_kept


def _rng_kept(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def stage_feature_maps(model: nn.Module, image: torch.Tensor, *, depth: int = 2,
                       max_maps: int = 6) -> dict[str, torch.Tensor]:
    """The feature maps (``C x h x w`` float32 on the CPU) of the first image of ``image``
    (a normalised ``N x 3 x H x W`` batch) at the end of each stage, named by module, in
    forward order; at most ``max_maps`` (the deepest ones). Empty if no module of the first
    ``depth`` levels outputs a spatial map (an MLP, say).

    >>> from finetune.models import create_model
    >>> m = create_model("mobilenet_v3_small", num_classes=2)
    >>> list(stage_feature_maps(m, torch.zeros(1, 3, 64, 64), max_maps=2))
    ['features.8', 'features.12']
    """
    names = {id(module): name for name, module in model.named_modules() if name and name.count(".") < depth}
    hw = (image.shape[-2], image.shape[-1])
    done: list[tuple[str, Any, torch.Tensor]] = []  # in the order the modules finished

    first = image[:1]
    started: dict[int, int] = {}  # module -> len(done) when its forward began

    def begin(module: nn.Module, args: Any) -> None:
        started[id(module)] = len(done)

    def record(module: nn.Module, args: Any, output: Any) -> None:
        if args and args[0] is first:  # a container of the whole network (VGG's features), not a stage
            return
        t = output[0] if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor) else output
        layout = spatial_layout(t, hw)
        if layout is None:
            return
        inner = done[started.get(id(module), len(done)):]
        if any((lo.height, lo.width) != (layout.height, layout.width) for _, lo, _ in inner):
            return  # a container of several stages (timm's `stages`), named by the stages inside it
        done.append((names[id(module)], layout, t[:1].detach()))

    hooks = [m.register_forward_pre_hook(begin) for m in model.modules() if id(m) in names]
    hooks += [m.register_forward_hook(record) for m in model.modules() if id(m) in names]
    try:
        with _rng_kept(image.device), torch.no_grad(), modes_kept(model):
            model.eval()
            model(first)
    finally:
        for h in hooks:
            h.remove()
    # a resolution's stage ends at the last module of the shallowest level that produced it
    # (ResNet's layer1 rather than layer1.1; Inception's Mixed_5d rather than a branch inside Mixed_6a)
    best: dict[tuple[int, int], int] = {}
    for i, (name, layout, _) in enumerate(done):
        key = (layout.height, layout.width)
        if key not in best or name.count(".") <= done[best[key]][0].count("."):
            best[key] = i
    chosen = [done[i] for i in sorted(best.values())][-max_maps:]
    return {name: layout.to_nchw(t)[0].float().cpu() for name, layout, t in chosen}


def feature_grid(fmap: torch.Tensor, channels: int = 16, tile: int = 48) -> np.ndarray:
    """The ``channels`` channels of a ``C x h x w`` map that vary most over the image, each
    min-max scaled, enlarged to about ``tile`` pixels (nearest) and tiled in a square grid
    with 3-pixel gaps: a uint8 ``H x W x 3`` grey image.

    >>> feature_grid(torch.arange(8.0).reshape(2, 2, 2), tile=2).shape
    (2, 7, 3)
    """
    if fmap.ndim != 3:
        raise ValueError(f"a feature map is C x h x w, got shape {tuple(fmap.shape)}")
    fmap = fmap.float()
    spread = fmap.flatten(1).std(dim=1) if fmap.shape[1] * fmap.shape[2] > 1 else fmap.flatten(1)[:, 0]
    picked = fmap[spread.argsort(descending=True, stable=True)[:channels]]
    low = picked.amin(dim=(1, 2), keepdim=True)
    high = picked.amax(dim=(1, 2), keepdim=True)
    scaled = ((picked - low) / (high - low).clamp_min(1e-12)).numpy()
    k = max(1, math.ceil(tile / max(fmap.shape[1], fmap.shape[2])))
    tiles = scaled.repeat(k, axis=1).repeat(k, axis=2)
    n, th, tw = tiles.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    gap = 3
    grid = np.ones((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap), np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = tiles[i]
    grey = np.round(grid * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def add_model_graph(writer: Any, model: nn.Module, image: torch.Tensor) -> str | None:
    """Write ``model``'s graph (traced in eval mode on the first image of ``image``) to a
    TensorBoard ``SummaryWriter``; module names become the graph's scopes. Returns None, or
    why there is no graph (a model that cannot be traced: the run goes on without it). Traced
    without gradients (torchvision's ViT fails the tracer's sanity check with them). The
    model's flags, buffers and the random generators are left as they were.

    >>> import pathlib, tempfile
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> from finetune.models import create_model
    >>> writer = SummaryWriter(tempfile.mkdtemp())
    >>> add_model_graph(writer, create_model("resnet18", num_classes=2), torch.zeros(1, 3, 32, 32)); writer.close()
    """
    try:
        with _rng_kept(image.device), modes_kept(model), torch.no_grad(), warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()):  # the tracer prints its errors itself
            warnings.simplefilter("ignore")  # TracerWarnings about data-dependent Python values
            model.eval()
            writer.add_graph(model, image[:1], use_strict_trace=False)
    except Exception as e:  # noqa: BLE001 - any tracing failure only costs the graph
        return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return None

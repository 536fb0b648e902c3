"""Class activation maps: where in the image the model looked for its answer.

:func:`class_activation_maps` computes a batch of maps on the model's device:

* ``cam`` (Zhou et al. 2016): the head's weights times the last feature map, no backward
  at all; only for models whose head is global average pooling + Linear (ResNet,
  EfficientNet, MobileNetV2, RegNet, …; not DenseNet, whose ReLU sits between its last map and the pool),
  checked numerically, not by name;
* ``gradcam``, ``gradcam++``, ``xgradcam``, ``layercam``, ``hirescam``: weights from the
  gradient of the class score, computed only from the output back to the feature layer
  (``torch.autograd.grad`` on that one tensor: the backbone keeps no graph, no parameter
  gets a gradient);
* ``eigencam``: the first principal component of the features, no gradient;
  ``eigengradcam``: the same of features x gradients;
* ``scorecam`` and ``ablationcam``: no gradient, one extra forward per channel and image
  (batched, ``batch_size`` at a time): a channel's weight is the class score of the input
  masked by that channel's map (Score-CAM), or the relative drop of the score when that
  channel is zeroed (Ablation-CAM; only the layers after the feature layer are re-run
  when the model allows it). Both are slow: thousands of forwards per image on a large
  backbone.

The formulas, the ReLU, the per-image min-max scaling and the bilinear upsampling follow
pytorch-grad-cam, so maps agree with its output (``benchmarks/bench_cam.py`` measures both
and prints the largest difference). The feature layer is found by probing the model once:
the last layer, in forward order, whose output is a spatial map (NCHW, NHWC, or ViT tokens
with their class/register tokens dropped) and whose gradient reaches the class score
through its spatial positions (for a class-token ViT that is the last block's ``norm1``,
not the final norm whose patch tokens feed nothing).

>>> import torch
>>> from finetune import create_model
>>> from finetune.cam import class_activation_maps
>>> model = create_model("resnet18", num_classes=3).eval()
>>> result = class_activation_maps(model, torch.randn(2, 3, 64, 64))
>>> result.layer, tuple(result.maps.shape), float(result.maps.min()) >= 0, float(result.maps.max()) <= 1
('layer4', (2, 64, 64), True, True)
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetune.data.transforms import EVAL_CROP_PCT, eval_resize_box
from finetune.errors import ConfigError, DataError, ModelError, UnreadableImagesError
from finetune.logging import progress_bar
from finetune.models import check_model, head_names, logits_of, modes_kept

METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "eigengradcam",
           "scorecam", "ablationcam")
GRADIENT_FREE = ("cam", "eigencam", "scorecam", "ablationcam")
MAX_PREFIX_TOKENS = 16  # class, distillation and register tokens in front of ViT patch tokens


@dataclass(frozen=True)
class Layout:
    """How a layer's output holds a spatial map: ``nchw``, ``nhwc`` or ``tokens`` (a ViT's
    ``N x (prefix + h*w) x C``), and the map's height and width.

    >>> Layout("tokens", 14, 14, prefix=1).to_nchw(torch.zeros(2, 197, 8)).shape
    torch.Size([2, 8, 14, 14])
    """

    kind: str
    height: int
    width: int
    prefix: int = 0

    def to_nchw(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        patches = t[:, self.prefix:, :]
        return patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], self.height, self.width)


def spatial_layout(t: object, input_hw: tuple[int, int], channels: int | None = None, *,
                   min_side: int = 2) -> Layout | None:
    """The :class:`Layout` of ``t`` if it is a feature map of an ``input_hw`` image, else None.

    A map is smaller than the image by one stride (2 to 64 pixels) along both sides; NHWC
    and tokens need their last dimension to be ``channels`` (the model's feature width)
    when it is known, which keeps attention matrices and per-head tensors out. ``min_side``: the
    fewest positions along each side (2: a map of one position is no map; 1 finds those too).

    >>> spatial_layout(torch.zeros(1, 512, 7, 7), (224, 224))
    Layout(kind='nchw', height=7, width=7, prefix=0)
    >>> spatial_layout(torch.zeros(1, 197, 768), (224, 224), channels=768)
    Layout(kind='tokens', height=14, width=14, prefix=1)
    >>> spatial_layout(torch.zeros(1, 12, 197, 197), (224, 224)) is None   # attention, not a map
    True
    """
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return None
    in_h, in_w = input_hw

    def is_map(h: int, w: int) -> bool:
        if h < min_side or w < min_side:
            return False
        stride = in_w / w
        return 2 <= stride <= 64 and abs(h - in_h / stride) < 1

    if t.ndim == 4:
        if _is_attention(t):  # softmax rows (N x heads x queries x keys), not a map: Swin's windows look square
            return None
        if is_map(t.shape[2], t.shape[3]) and (channels is None or t.shape[1] != t.shape[3] or t.shape[1] == channels):
            return Layout("nchw", t.shape[2], t.shape[3])
        if (channels is None or t.shape[3] == channels) and is_map(t.shape[1], t.shape[2]):
            return Layout("nhwc", t.shape[1], t.shape[2])
        return None
    if t.ndim == 3 and (channels is None or t.shape[2] == channels):
        tokens = t.shape[1]
        for prefix in range(min(MAX_PREFIX_TOKENS, tokens - min_side * min_side) + 1):
            n = tokens - prefix
            w = round(math.sqrt(n * in_w / in_h))
            if w > 0 and n % w == 0 and is_map(n // w, w):
                return Layout("tokens", n // w, w, prefix)
    return None


def _is_attention(t: torch.Tensor) -> bool:
    """True for attention probabilities: non-negative rows over the last dimension that sum to 1.

    >>> _is_attention(torch.zeros(1, 3, 4, 4).softmax(-1)), _is_attention(torch.ones(1, 3, 4, 4))
    (True, False)
    """
    with torch.no_grad():
        t = t.detach().float()
        return t.shape[-1] > 1 and bool((t >= 0).all()) and bool(torch.allclose(t.sum(-1), torch.ones(()), atol=1e-3))


def _first_tensor(output: object) -> object:
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return output


def _with_first(output: object, first: torch.Tensor) -> object:
    """``output`` with its (first) tensor replaced: what a forward hook returns to swap it."""
    if isinstance(output, tuple):
        return (first, *output[1:])
    if isinstance(output, list):
        return [first, *output[1:]]
    return first


def _feature_width(model: nn.Module) -> int | None:
    """The head's input width (the features it classifies), if the head is a Linear or holds one (its first:
    timm's LeViT ``NormLinear``, a BatchNorm then a Linear; an MLP head)."""
    try:
        head = model.get_submodule(head_names(model)[0])
    except (ModelError, AttributeError):
        return None
    linear = next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
    return linear.in_features if linear is not None else None


@dataclass(frozen=True)
class CamLayer:
    """The feature layer maps are computed from (:func:`find_cam_layer`).

    ``gap_linear``: the head is global average pooling + Linear on this layer (the
    gradient is the same at every position), so method ``cam`` applies.
    """

    name: str
    layout: Layout
    gap_linear: bool


# pools to a fixed size (VGG's and AlexNet's `avgpool`, to 7x7 / 6x6 whatever the image size): their map holds no
# more than their input's, and upsamples it for small images (a 1x1 map copied to 7x7 is flat: a map of rounding noise)
_FIXED_SIZE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _check_images(images: object) -> None:
    """Raise :class:`ConfigError` unless ``images`` is a floating-point ``N x C x H x W`` tensor.

    >>> _check_images(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    Traceback (most recent call last):
    finetune.errors.ConfigError: images must be a floating-point tensor (normalised, as the model takes them), got dtype torch.uint8
    """
    if not isinstance(images, torch.Tensor):
        raise ConfigError(f"images must be a torch.Tensor batch N x C x H x W (normalised, as the model takes them), "
                          f"got {type(images).__module__}.{type(images).__qualname__} (a numpy array: torch.from_numpy; "
                          "image files: finetune.explain(checkpoint, paths) reads and normalises them)")
    if not images.is_floating_point():
        raise ConfigError(f"images must be a floating-point tensor (normalised, as the model takes them), "
                          f"got dtype {images.dtype}")
    if images.ndim != 4:
        raise ConfigError(f"images must be a batch N x C x H x W, got shape {tuple(images.shape)}")


def find_cam_layer(model: nn.Module, images: torch.Tensor, only: str | None = None) -> CamLayer:
    """Probe ``model`` on ``images`` (one forward and backward with every layer's output
    kept) and return the last layer whose spatial output reaches the top class score, adaptive
    pools to a fixed size left out (``only``: probe that one layer, to know whether it feeds a
    global-average-pool + Linear head).

    The probe runs in eval mode (BatchNorm statistics do not move, dropout is off) and every
    submodule is left in the mode it was in.

    >>> import torch
    >>> from finetune import find_cam_layer
    >>> from finetune import create_model
    >>> find_cam_layer(create_model("resnet18", num_classes=2).eval(), torch.randn(1, 3, 64, 64)).name
    'layer4'
    """
    check_model(model)
    _check_images(images)
    with modes_kept(model):
        model.eval()
        return _find_cam_layer(model, images, only)


def _find_cam_layer(model: nn.Module, images: torch.Tensor, only: str | None) -> CamLayer:
    try:
        heads = head_names(model)
    except ModelError:  # no Linear head to find: the probe scores the top logit instead
        heads = []
    width = _feature_width(model)
    hw = (images.shape[-2], images.shape[-1])
    n = min(2, images.shape[0])  # the probe's batch: windows of a map (N * windows x h x w x C) are no map
    found: list[tuple[str, torch.Tensor, Layout, bool]] = []  # (.., whether its width is the head's)
    last: dict[str, object] = {}  # each module's last output: the one a module called twice (a shared activation) gives maps
    # the widths of the maps that a layer turns into a map of another size (or no map: 1x1): a stage's output
    # (Swin's `layers.2` at 32 px, whose last stage is 1x1), not an attention's qkv nor an MLP's hidden features
    stage_widths: set[tuple[int, int, int]] = set()
    single: list[str] = []  # layers whose map has one position at this size (vit_b_32 at 32 px): nothing to show

    def keep(name: str):  # noqa: ANN202 - a forward hook
        def hook(_module: nn.Module, args: tuple[object, ...], output: object) -> object:
            t = last[name] = _first_tensor(output)
            layout = spatial_layout(t, hw, width)
            loose = layout if width is None or layout is not None else spatial_layout(t, hw)
            x = args[0] if args else None
            if width is not None and isinstance(x, torch.Tensor) and not (isinstance(t, torch.Tensor) and t.shape == x.shape):
                before = spatial_layout(x, hw)
                if before is not None and (loose is None or (loose.height, loose.width) != (before.height, before.width)):
                    stage_widths.add((before.height, before.width, _map_width(x, before)))
            if loose is None and spatial_layout(t, hw, width, min_side=1) is not None:
                single.append(name)
            if loose is None or not isinstance(t, torch.Tensor) or not t.requires_grad or t.shape[0] != n:
                return None
            if layout is not None or loose.kind != "nchw":  # NHWC or tokens of another width: kept if a stage's
                found.append((name, t, loose, layout is not None))
                return _with_first(output, t.clone())  # an in-place op downstream (DenseNet's ReLU) must not change it
            return None
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in model.named_modules()
             if n and (n == only if only is not None else not isinstance(m, _FIXED_SIZE_POOLS))
             and not any(n == h or n.startswith(h + ".") for h in heads)]
    head_inputs: list[torch.Tensor] = []
    if heads:  # the probe scores the head's input (a fixed random projection): an untrained head may be all zeros
        hooks.append(model.get_submodule(heads[0]).register_forward_pre_hook(
            lambda _m, args: head_inputs.append(args[0]) if args and isinstance(args[0], torch.Tensor) else None))
    try:
        with torch.enable_grad():
            probe = images[:2].detach().clone().requires_grad_(True)
            logits = logits_of(model(probe))
            found = [f for f in found if last[f[0]] is f[1]  # an earlier call's map is not what the layer's hook captures
                     and (f[3] or (f[2].height, f[2].width, _map_width(f[1], f[2])) in stage_widths)]
            direction = None
            if head_inputs and head_inputs[-1].requires_grad:
                features = head_inputs[-1].float()
                direction = torch.randn(features.shape[1:], generator=torch.Generator().manual_seed(0))
                score = (features * direction.to(features.device)).sum()
            else:
                score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            grads = torch.autograd.grad(score, [t for _, t, _, _ in found], allow_unused=True) if found else []
    finally:
        for h in hooks:
            h.remove()
    corner: CamLayer | None = None  # the last one reached only in its top-left quarter, if none is reached beyond
    for (name, t, layout, _), g in reversed(list(zip(found, grads, strict=True))):
        if g is None:
            continue
        g = layout.to_nchw(g)
        if float(g.abs().amax()) > 0:
            gap = _is_gap_linear(model, heads, g, direction)
            if not _padded(g) and not _padding_filled(layout.to_nchw(t.detach())):
                return CamLayer(name, layout, gap)
            corner = corner or CamLayer(name, layout, gap)
    if corner is not None:  # (an untrained RegNet at 32 px: its residual branches start at zero, its shortcuts are
        return corner       # 1x1 convs of stride 2: nothing but the top-left position reaches the output)
    if not found and single:
        raise ModelError(f"{type(model).__name__}'s feature maps are 1x1 for {hw[0]}x{hw[1]} inputs (e.g. '{single[-1]}'): "
                         "a map of one position shows nothing; explain larger images (a model trained with a larger "
                         "img_size, --img-size)")
    names = ", ".join(f[0] for f in found[-5:]) or "none"
    raise ModelError(f"cannot find a spatial feature layer in {type(model).__name__} for {hw[0]}x{hw[1]} inputs "
                     f"whose gradient reaches the output (candidates: {names}); pass layer=NAME (--layer)")


def _padded(grads: torch.Tensor) -> bool:
    """True if the gradient (N x C x h x w) reaches only the top-left quarter of the map: a smaller map padded
    on the right and bottom to a window's size (DaViT's window attention at 32 px: its 1x1 map padded to 7x7),
    a layer :func:`find_cam_layer` passes over for an earlier one whose gradient reaches further.

    >>> g = torch.zeros(1, 4, 7, 7); g[..., :1, :1] = 1.0
    >>> _padded(g), _padded(torch.ones(1, 4, 7, 7))
    (True, False)
    """
    reached = grads.abs().amax(dim=(0, 1)) > 0
    h, w = reached.shape
    return not bool(reached[(h + 1) // 2:].any()) and not bool(reached[:, (w + 1) // 2:].any())


def _padding_filled(a: torch.Tensor) -> bool:
    """True if the map (N x C x h x w) holds one and the same vector at every position outside its top-left
    quarter, unlike its top-left corner: a smaller map padded on the right and bottom to a window's size whose
    padding the attention does not mask (TinyViT at 32 px: its 1x1 map padded to 7x7), so the gradient reaches
    the padding too and :func:`_padded` cannot tell.

    >>> a = torch.zeros(1, 4, 7, 7); a[..., 0, 0] = 1.0
    >>> _padding_filled(a), _padding_filled(torch.randn(1, 4, 7, 7))
    (True, False)
    """
    h, w = a.shape[-2:]
    if h < 2 or w < 2:
        return False
    a = a.float().flatten(2)  # N x C x h*w
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    outside = (rows >= (h + 1) // 2) | (cols >= (w + 1) // 2)
    rest = a[..., outside]
    same = torch.allclose(rest, rest[..., :1].expand_as(rest), atol=1e-6, rtol=1e-5)
    return same and not torch.allclose(a[..., :1], rest[..., :1], atol=1e-6, rtol=1e-5)


def _map_width(t: torch.Tensor, layout: Layout) -> int:
    """The channels of ``t``, a map laid out as ``layout``."""
    return t.shape[1] if layout.kind == "nchw" else t.shape[-1]


def _is_gap_linear(model: nn.Module, heads: list[str], grads: torch.Tensor, direction: torch.Tensor | None) -> bool:
    """True if the head is a Linear on the global average of this layer: the probe's
    gradient (of ``direction`` . head input) is then ``direction / (h*w)`` at every position."""
    if direction is None or len(heads) != 1:
        return False
    head = model.get_submodule(heads[0])
    if not isinstance(head, nn.Linear) or head.in_features != grads.shape[1] or direction.ndim != 1:
        return False
    expected = (direction.to(grads.device) / (grads.shape[2] * grads.shape[3]))[None, :, None, None]
    return torch.allclose(grads.float(), expected.expand_as(grads), rtol=1e-3, atol=1e-6 * float(expected.abs().amax()))


@dataclass
class CamResult:
    """Maps (``N x H x W`` in [0, 1], the images' size, on the model's device), the class each
    map explains, that class's probability, and the layer and method used."""

    maps: torch.Tensor
    classes: torch.Tensor
    probs: torch.Tensor
    layer: str
    method: str


def _weights(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-channel weights (N x C) of the gradient methods, as pytorch-grad-cam defines them."""
    if method == "gradcam":
        return g.mean(dim=(2, 3))
    if method == "gradcam++":
        g2 = g * g
        g3 = g2 * g
        alpha = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3 + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (g.clamp(min=0) * alpha).sum(dim=(2, 3))
    if method == "xgradcam":
        return (g * a / (a.sum(dim=(2, 3), keepdim=True) + 1e-7)).sum(dim=(2, 3))
    raise AssertionError(method)


def _eigen_projection(a: torch.Tensor) -> torch.Tensor:
    """Projection of each position's features on their first principal component (N x h x w),
    signed so that it correlates positively with the features' sum; where that sum does not
    vary over the positions (a LayerNorm's output: a ViT's or Swin's tokens), so that its
    largest value is positive (the sign would otherwise follow rounding noise).

    >>> t = torch.nn.functional.layer_norm(torch.randn(1, 5, 16, 8), (8,)).permute(0, 3, 1, 2)
    >>> p, q = _eigen_projection(t), _eigen_projection(t * (1 + 1e-6))
    >>> bool(torch.allclose(p, q, atol=1e-4)), float(p.amax()) > 0
    (True, True)
    """
    n, c, h, w = a.shape
    x = a.reshape(n, c, h * w).transpose(1, 2)  # N x positions x C
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = x @ vh[:, 0, :, None]  # N x positions x 1
    total = a.reshape(n, c, h * w).sum(1)
    total = total - total.mean(1, keepdim=True)
    sign = torch.sign((proj[..., 0] * total).sum(1, keepdim=True))
    flat = total.norm(dim=1, keepdim=True) <= 1e-4 * x.flatten(1).norm(dim=1, keepdim=True)
    peak = torch.sign(proj[..., 0].gather(1, proj[..., 0].abs().argmax(1, keepdim=True)))
    sign = torch.where(flat | (sign == 0), peak, sign)
    return (proj[..., 0] * torch.where(sign == 0, torch.ones_like(sign), sign)).reshape(n, h, w)


def scale_maps(maps: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-map min-max scaling to [0, 1] (pytorch-grad-cam's ``scale_cam_image``: subtract the
    minimum, divide by 1e-7 + the maximum), then a bilinear resize to ``size`` and a second
    scaling, as its single-layer result has.

    >>> scale_maps(torch.tensor([[[1.0, 3.0], [5.0, 9.0]]])).tolist()
    [[[0.0, 0.25], [0.5, 1.0]]]
    """
    def minmax(m: torch.Tensor) -> torch.Tensor:
        m = m - m.amin(dim=(1, 2), keepdim=True)
        return m / (1e-7 + m.amax(dim=(1, 2), keepdim=True))

    maps = minmax(maps.float())
    if size is not None and tuple(maps.shape[1:]) != tuple(size):
        maps = minmax(F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0])
    return maps


def class_activation_maps(model: nn.Module, images: torch.Tensor, *, method: str = "gradcam",
                          layer: str | None = None, classes: Sequence[int] | torch.Tensor | None = None,
                          batch_size: int = 32) -> CamResult:
    """Maps of ``images`` (a normalised ``N x 3 x H x W`` batch) for ``classes`` (default: each
    image's predicted class) by ``method`` (one of :data:`METHODS`), from ``layer`` (default:
    :func:`find_cam_layer`). The model is run in eval mode and every submodule is left in
    the mode it was in (frozen BatchNorm stays in eval under ``train()``); no parameter gets
    a gradient. ``batch_size``: masked or ablated inputs per forward (``scorecam``,
    ``ablationcam``; the maps do not depend on it).

    Differences from pytorch-grad-cam, on purpose:

    * ``eigencam``, ``eigengradcam``: the principal component's sign is arbitrary (it differs
      between SVD implementations); it is chosen here so the projection correlates positively
      with the channels' sum (of the features, or of features x gradients); where that sum is
      the same at every position (a LayerNorm's output, as a ViT's or Swin's default layer can
      be), so that the largest value is positive.
    * ``scorecam`` follows the paper's Algorithm 1 as pytorch-grad-cam does (weights: softmax
      over the channels of the class *logit* of each masked input, masks upsampled with
      ``align_corners=True``; a baseline score would cancel in the softmax); the authors'
      released code weights by the class's softmax probability over the classes instead. A
      channel that is constant gives an all-zero mask (the score of a zero input), exactly,
      instead of its rounding noise min-max scaled.
    * ``ablationcam``: a channel is ablated by setting it to zero (the paper), in every
      position, class/register tokens included; pytorch-grad-cam does so only when the layer's
      minimum is 0 and otherwise writes ``min - 1e7`` (growing by 1e7 with each channel of a
      batch, so its maps depend on its batch size). The weight is ``(y - y_k) / |y|``: the paper
      and pytorch-grad-cam divide by ``y``, which flips the map of a class whose logit is
      negative. Channels that are zero everywhere are not run (their weight is 0).

    >>> from finetune import class_activation_maps
    >>> import torch
    >>> from finetune import create_model
    >>> m = create_model("resnet18", num_classes=3).eval()
    >>> x = torch.randn(2, 3, 64, 64)
    >>> a = class_activation_maps(m, x, method="cam", classes=[0, 2])
    >>> b = class_activation_maps(m, x, method="gradcam", classes=[0, 2])
    >>> a.classes.tolist(), bool(torch.allclose(a.maps, b.maps, atol=1e-4))   # CAM = Grad-CAM for GAP + Linear
    ([0, 2], True)
    >>> c = class_activation_maps(m, x, method="ablationcam", classes=[0, 2], batch_size=256)
    >>> tuple(c.maps.shape), float(c.maps.max()) <= 1
    ((2, 64, 64), True)
    """
    if method not in METHODS:
        raise ConfigError(f"unknown CAM method '{method}': choose one of {', '.join(METHODS)}")
    check_model(model)
    _check_images(images)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    with modes_kept(model):
        model.eval()
        return _maps(model, images, method, layer, classes, batch_size)


def _maps(model: nn.Module, images: torch.Tensor, method: str, layer: str | None,
          classes: Sequence[int] | torch.Tensor | None, batch_size: int = 32) -> CamResult:
    hw = (images.shape[-2], images.shape[-1])
    chosen = _chosen_layer(model, images, layer)
    if method == "cam" and not chosen.gap_linear:
        raise ConfigError(f"method 'cam' needs the layer that feeds a global-average-pool + Linear head, and "
                          f"'{chosen.name}' does not (at a small image size the last stage's maps may be too small "
                          "to be chosen): pass layer=NAME (--layer), larger images (--img-size), or use gradcam")
    needs_grad = method not in GRADIENT_FREE
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: object, output: object) -> object:
        t = _first_tensor(output)
        if not isinstance(t, torch.Tensor):
            return None
        if not needs_grad:
            captured.append(t.detach())
            return None
        leaf = t.detach().requires_grad_(True)  # the graph starts here: nothing before it is kept
        captured.append(leaf)
        return _with_first(output, leaf.clone())  # (an in-place op downstream must not touch the leaf)

    params = [p for p in model.parameters() if p.requires_grad]
    handle = model.get_submodule(chosen.name).register_forward_hook(hook)
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad() if needs_grad else torch.no_grad():
            logits = logits_of(model(images.detach()))
            if not captured:
                raise ModelError(f"layer '{chosen.name}' did not run in the forward pass")
            targets = _targets(logits, classes)
            score = logits.gather(1, targets[:, None]).sum()
            grads = torch.autograd.grad(score, captured[-1]) [0] if needs_grad else None
    finally:
        handle.remove()
        for p in params:
            p.requires_grad_(True)
    a = chosen.layout.to_nchw(captured[-1].detach()).float()
    g = chosen.layout.to_nchw(grads).float() if grads is not None else None
    if g is not None and layer is not None and not bool(g.ne(0).any()):
        raise ConfigError(f"layer '{layer}' does not reach the class score through its spatial positions (its gradient "
                          f"there is zero: a class-token ViT's final norm passes only its class token on), so {method} "
                          "maps of it are empty: choose an earlier layer, or leave layer (--layer) out to find one")
    if method == "cam":
        head = model.get_submodule(head_names(model)[0])
        raw = torch.einsum("nc,nchw->nhw", head.weight.detach().float()[targets], a)
    elif method == "eigencam":
        raw = _eigen_projection(a)
    elif method == "eigengradcam":
        raw = _eigen_projection(g * a)  # type: ignore[operator]
    elif method == "scorecam":
        raw = (_score_weights(model, images.detach(), a, targets, batch_size)[:, :, None, None] * a).sum(1)
    elif method == "ablationcam":
        weights = _ablation_weights(model, images.detach(), chosen, targets, batch_size)
        raw = (weights[:, :, None, None] * a).sum(1)
    elif method == "layercam":
        raw = (g.clamp(min=0) * a).sum(1)  # type: ignore[union-attr]
    elif method == "hirescam":
        raw = (g * a).sum(1)  # type: ignore[operator]
    else:
        raw = (_weights(method, a, g)[:, :, None, None] * a).sum(1)  # type: ignore[arg-type]
    maps = scale_maps(raw.clamp(min=0), hw)
    probs = logits.detach().float().softmax(1).gather(1, targets[:, None])[:, 0]
    return CamResult(maps, targets, probs, chosen.name, method)


def _chosen_layer(model: nn.Module, images: torch.Tensor, layer: str | None) -> CamLayer:
    cache: dict[tuple[int, int, str | None], CamLayer] = model.__dict__.setdefault("_finetune_cam_layers", {})
    key = (images.shape[-2], images.shape[-1], layer)
    if key not in cache:
        if layer is None:
            cache[key] = find_cam_layer(model, images)
        else:
            cache[key] = _named_layer(model, images, layer)
    return cache[key]


def _named_layer(model: nn.Module, images: torch.Tensor, layer: str) -> CamLayer:
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        import difflib

        close = difflib.get_close_matches(layer, names, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"no layer '{layer}' in {type(model).__name__}{hint}")
    seen: list[object] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _a, out: seen.append(_first_tensor(out)))
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        handle.remove()
    layout = spatial_layout(seen[-1], (images.shape[-2], images.shape[-1])) if seen else None
    if layout is None and seen and spatial_layout(seen[-1], (images.shape[-2], images.shape[-1]), min_side=1):
        raise ConfigError(f"layer '{layer}' outputs a 1x1 map for {images.shape[-2]}x{images.shape[-1]} images "
                          f"(its output: {tuple(seen[-1].shape)}): a map of one position shows nothing; choose an earlier "
                          "layer with a larger map, or explain larger images (a model trained with a larger --img-size)")
    if layout is None:
        shape = tuple(seen[-1].shape) if seen and isinstance(seen[-1], torch.Tensor) else None
        raise ConfigError(f"layer '{layer}' does not output a feature map smaller than the image by a stride of "
                          f"2 to 64 (its output: {shape}, the image: {tuple(images.shape[-2:])}); "
                          "choose a later convolutional stage or a transformer block")
    try:  # method 'cam' applies when this layer feeds a global-average-pool + Linear head, named or found
        gap = find_cam_layer(model, images, only=layer).gap_linear
    except ModelError:
        gap = False
    return CamLayer(layer, layout, gap_linear=gap)


def _targets(logits: torch.Tensor, classes: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    if classes is None:
        return logits.argmax(1)
    t = torch.as_tensor(classes, dtype=torch.long, device=logits.device).reshape(-1)
    if len(t) == 1:
        t = t.expand(logits.shape[0])
    if len(t) != logits.shape[0] or int(t.min()) < 0 or int(t.max()) >= logits.shape[1]:
        raise ConfigError(f"classes must be one index or one per image, each in 0..{logits.shape[1] - 1}")
    return t


# --------------------------------------------------------------------------- perturbation methods
def _score_weights(model: nn.Module, images: torch.Tensor, a: torch.Tensor, targets: torch.Tensor,
                   batch_size: int) -> torch.Tensor:
    """Score-CAM's channel weights (N x C): the softmax over channels of the target logit of
    the image times each channel's upsampled, min-max scaled map; ``batch_size`` masked
    images (of any images of the batch) per forward."""
    n, c, h, w = a.shape
    size = (images.shape[-2], images.shape[-1])
    flat = a.reshape(n, c, h * w)
    constant = flat.amax(2) == flat.amin(2)  # its mask is zero everywhere: the score of a zero image
    scores = torch.empty(n, c, device=a.device)
    pairs = (~constant).nonzero()
    with torch.no_grad():
        if bool(constant.any()):
            zero = logits_of(model(torch.zeros_like(images[:1]))).float()[0]
            scores[constant] = zero[targets][:, None].expand(n, c)[constant]
        for start in range(0, len(pairs), batch_size):
            img, ch = pairs[start:start + batch_size].unbind(1)
            masks = F.interpolate(a[img, ch][:, None], size=size, mode="bilinear", align_corners=True)
            low = masks.amin(dim=(2, 3), keepdim=True)
            masks = (masks - low) / (masks.amax(dim=(2, 3), keepdim=True) - low + 1e-8)
            logits = logits_of(model(images[img] * masks.to(images.dtype))).float()
            scores[img, ch] = logits[torch.arange(len(img), device=logits.device), targets[img]]
    return scores.softmax(dim=1)


class _NotReplayable(Exception):
    """The layers before the feature layer cannot be skipped: run the whole model."""


def _rows(value: object, i: int, count: int, n: int) -> object:
    """Image ``i``'s slice of a module's output for a batch of ``n``, as ``count`` rows (a view
    when ``count`` > 1: an in-place op downstream fails instead of changing it)."""
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 or value.shape[0] != n:
            raise _NotReplayable
        row = value[i:i + 1]
        return row.expand(count, *row.shape[1:]) if count > 1 else row.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, i, count, n) for v in value)
    if isinstance(value, dict):
        return {k: _rows(v, i, count, n) for k, v in value.items()}
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    raise _NotReplayable


class _Replay:
    """Runs a model with its feature layer's output given, re-running only what comes after it.

    A probe on one image records every module call in order; the calls that end before the
    feature layer starts (the outermost of them) are replayed from the outputs a forward of
    the batch kept, and the feature layer itself returns the given tensor. The layers
    before it are not computed again; the glue code between modules (a residual sum, a
    class token) is. :meth:`check` compares a replayed forward with the real logits; when
    anything does not fit (a module called differently, an output without the batch
    dimension) the whole model is run with the feature layer's output swapped by a hook.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, layer: str) -> None:
        self.model, self.layer, self.n = model, layer, images.shape[0]
        self.target = model.get_submodule(layer)
        self.memo: dict[tuple[str, int], object] = {}
        self.fast = True
        modules = [(name, m) for name, m in model.named_modules() if name]
        spans: dict[tuple[str, int], list[int]] = {}
        counts: dict[str, int] = {}
        clock = [0]

        def before(name: str):  # noqa: ANN202 - hooks
            def hook(_m: nn.Module, _args: object) -> None:
                key = (name, counts.get(name, 0))
                counts[name] = key[1] + 1
                spans[key] = [clock[0], -1]
                clock[0] += 1
            return hook

        def after(name: str):  # noqa: ANN202
            def hook(_m: nn.Module, _args: object, _out: object) -> None:
                key = (name, counts[name] - 1)
                spans[key][1] = clock[0]
                clock[0] += 1
            return hook

        handles = [m.register_forward_pre_hook(before(name)) for name, m in modules]
        handles += [m.register_forward_hook(after(name)) for name, m in modules]
        try:
            with torch.no_grad():
                model(images[:1])
        finally:
            for h in handles:
                h.remove()
        if counts.get(layer) != 1 or any(end < 0 for _, end in spans.values()):
            self.fast = False  # a shared feature layer, or a module whose calls do not nest
            self.full = self._forward_full(images)
            return
        start = spans[(layer, 0)][0]
        outermost: list[tuple[str, int]] = []
        reach = -1
        for key, (s, e) in sorted(spans.items(), key=lambda kv: kv[1][0]):
            if e < start and s > reach:
                outermost.append(key)
                reach = e
        wanted = set(outermost)
        seen: dict[str, int] = {}

        def keep(name: str):  # noqa: ANN202
            def hook(_m: nn.Module, _args: object, out: object) -> None:
                k = seen.get(name, 0)
                seen[name] = k + 1
                if (name, k) in wanted:
                    self.memo[(name, k)] = out
            return hook

        handles = [m.register_forward_hook(keep(name)) for name, m in modules if name in {k for k, _ in wanted}]
        self.full = None
        handles.append(self.target.register_forward_hook(
            lambda _m, _a, out: setattr(self, "full", out)))
        try:
            with torch.no_grad():
                self.logits = logits_of(model(images)).float()
        finally:
            for h in handles:
                h.remove()
        self.by_module: dict[str, set[int]] = {}
        for name, k in wanted:
            self.by_module.setdefault(name, set()).add(k)

    def _forward_full(self, images: torch.Tensor) -> object:
        kept: list[object] = []
        handle = self.target.register_forward_hook(lambda _m, _a, out: kept.append(out))
        try:
            with torch.no_grad():
                self.logits = logits_of(self.model(images)).float()
        finally:
            handle.remove()
        return kept[-1]

    def features(self, i: int, count: int) -> torch.Tensor:
        """Image ``i``'s feature-layer output (its first tensor), ``count`` copies to change."""
        first = _first_tensor(self.full)
        assert isinstance(first, torch.Tensor)
        return first[i:i + 1].repeat(count, *([1] * (first.ndim - 1)))

    def logits_with(self, images: torch.Tensor, i: int, features: torch.Tensor) -> torch.Tensor:
        """Logits of image ``i`` (``images[i]``) with the feature layer's output set to ``features``."""
        count = features.shape[0]
        if self.fast:
            try:
                return self._replayed(images, i, features)
            except (_NotReplayable, RuntimeError):
                self.fast = False
        output = self._output(i, features)
        handle = self.target.register_forward_hook(lambda _m, _a, _out: output)
        try:
            with torch.no_grad():
                return logits_of(self.model(images[i:i + 1].expand(count, *images.shape[1:]).contiguous())).float()
        finally:
            handle.remove()

    def _output(self, i: int, features: torch.Tensor) -> object:
        """The feature layer's output for image ``i`` with its tensor replaced by ``features``."""
        if isinstance(self.full, torch.Tensor):
            return features
        return _with_first(_rows(self.full, i, features.shape[0], self.n), features)

    def _replayed(self, images: torch.Tensor, i: int, features: torch.Tensor) -> torch.Tensor:
        count = features.shape[0]
        output = self._output(i, features)
        patched: list[nn.Module] = []

        def replay(name: str, module: nn.Module, calls: set[int]):  # noqa: ANN202
            real = module.forward
            seen = [0]

            def forward(*args: object, **kwargs: object) -> object:
                k = seen[0]
                seen[0] += 1
                if k in calls:
                    return _rows(self.memo[(name, k)], i, count, self.n)
                return real(*args, **kwargs)
            return forward

        try:
            for name, calls in self.by_module.items():
                module = self.model.get_submodule(name)
                if "forward" in module.__dict__:
                    raise _NotReplayable
                module.forward = replay(name, module, calls)  # type: ignore[method-assign]
                patched.append(module)
            if "forward" in self.target.__dict__:
                raise _NotReplayable
            self.target.forward = lambda *_a, **_k: output  # type: ignore[method-assign]
            patched.append(self.target)
            with torch.no_grad():
                return logits_of(self.model(images[i:i + 1].expand(count, *images.shape[1:]))).float()
        finally:
            for module in patched:
                del module.forward

    def check(self, images: torch.Tensor) -> None:
        """Fall back to whole forwards unless a replay of image 0 gives its real logits."""
        if not self.fast:
            return
        try:
            got = self._replayed(images, 0, self.features(0, 2))
        except Exception:  # noqa: BLE001 - whatever a replay trips on (a shape assert), whole forwards work
            self.fast = False
            return
        want = self.logits[0].expand_as(got)
        self.fast = bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + float(want.abs().amax()))))


def _ablation_weights(model: nn.Module, images: torch.Tensor, chosen: CamLayer, targets: torch.Tensor,
                      batch_size: int) -> torch.Tensor:
    """Ablation-CAM's channel weights (N x C): ``(y - y_k) / |y|``, ``y`` the target logit and
    ``y_k`` the same with channel ``k`` of the feature layer zeroed (everywhere, prefix tokens
    included); ``batch_size`` ablated copies of one image per forward."""
    replay = _Replay(model, images, chosen.name)
    replay.check(images)
    channel_dim = 1 if chosen.layout.kind == "nchw" else -1
    n = images.shape[0]
    original = replay.logits[torch.arange(n, device=replay.logits.device), targets.to(replay.logits.device)]
    features = _first_tensor(replay.full)
    assert isinstance(features, torch.Tensor)
    c = features.shape[channel_dim]
    live = features.detach().movedim(channel_dim, 1).reshape(n, c, -1).ne(0).any(2)
    ablated = original[:, None].expand(n, c).clone()  # a channel that is zero everywhere changes nothing
    for i in range(n):
        channels = live[i].nonzero()[:, 0]
        for start in range(0, len(channels), batch_size):
            ch = channels[start:start + batch_size]
            x = replay.features(i, len(ch))
            x.movedim(channel_dim, 1)[torch.arange(len(ch), device=x.device), ch] = 0
            logits = replay.logits_with(images, i, x)
            ablated[i, ch.to(ablated.device)] = logits[:, int(targets[i])]
    scale = original.abs()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return ((original[:, None] - ablated) / scale[:, None]).to(features.device)


# --------------------------------------------------------------------------- drawing
def jet(values: np.ndarray) -> np.ndarray:
    """The jet colour map (blue → cyan → yellow → red) of values in [0, 1], as uint8 RGB.

    >>> jet(np.array([0.0, 0.5, 1.0])).tolist()
    [[0, 0, 128], [128, 255, 128], [128, 0, 0]]
    """
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def overlay(image: np.ndarray | torch.Tensor, heat: np.ndarray | torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """``image`` (H x W x 3 uint8) blended with the jet colours of ``heat`` (H x W in [0, 1]):
    ``alpha`` of the colours, ``1 - alpha`` of the image.

    >>> import numpy as np
    >>> from finetune import overlay
    >>> overlay(np.zeros((2, 2, 3), np.uint8), np.ones((2, 2)), alpha=1.0)[0, 0].tolist()
    [128, 0, 0]
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be between 0 and 1, got {alpha}")
    img = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    h = heat.detach().float().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat, dtype=np.float32)
    if img.shape[:2] != h.shape:
        raise ConfigError(f"image {img.shape[:2]} and map {h.shape} differ in size")
    out = alpha * jet(h).astype(np.float32) + (1.0 - alpha) * img.astype(np.float32)
    return np.round(out).astype(np.uint8)


# --------------------------------------------------------------------------- localisation
@dataclass(frozen=True)
class Localisation:
    """How well maps point at known boxes (means over images; ``images`` counted).

    ``pointing``: share of maps whose maximum lies in the box (the pointing game; a plateau
    of equal maxima counts by its centre);
    ``energy``: mean share of the map's total inside the box; ``iou``: mean IoU of the box
    with the bounding box of the pixels at or above ``threshold`` of the maximum (the
    original CAM paper's localisation, threshold 0.2). An empty map (all zero: nothing
    supports the class) scores 0 on all three.
    """

    images: int
    pointing: float
    energy: float
    iou: float


def localisation(maps: torch.Tensor, boxes: torch.Tensor, threshold: float = 0.2) -> Localisation:
    """Score ``maps`` (N x H x W) against ``boxes`` (N x 4: x0, y0, x1, y1 in map pixels, x1/y1
    exclusive).

    >>> import torch
    >>> from finetune import localisation
    >>> m = torch.zeros(1, 8, 8); m[0, 2:4, 2:4] = 1.0
    >>> localisation(m, torch.tensor([[2, 2, 4, 4]]))
    Localisation(images=1, pointing=1.0, energy=1.0, iou=1.0)
    """
    n, h, w = maps.shape
    if boxes.shape != (n, 4):
        raise ConfigError(f"boxes must be N x 4 (x0, y0, x1, y1), got {tuple(boxes.shape)} for {n} maps")
    if n == 0:
        return Localisation(0, float("nan"), float("nan"), float("nan"))
    maps = maps.detach().float().cpu()
    b = boxes.detach().float().cpu().round().long()
    x0, y0 = b[:, 0].clamp(0, w), b[:, 1].clamp(0, h)
    x1, y1 = b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    inside = ((ys >= y0[:, None, None]) & (ys < y1[:, None, None]) & (xs >= x0[:, None, None]) & (xs < x1[:, None, None]))
    flat = maps.reshape(n, -1)
    # the peak: the maximum, or the centre of a plateau of equal maxima (an upsampled coarse map has one)
    top = maps >= flat.amax(1)[:, None, None] - 1e-6
    count = top.sum(dim=(1, 2)).clamp(min=1)
    py = ((top * ys).sum(dim=(1, 2)) / count).round().long()
    px = ((top * xs).sum(dim=(1, 2)) / count).round().long()
    empty = flat.amax(1) <= 0  # a map with nothing in it points nowhere and covers nothing
    pointing = (inside[torch.arange(n), py, px] & ~empty).float().mean().item()
    total = flat.sum(1).clamp(min=1e-12)
    energy = ((maps * inside).reshape(n, -1).sum(1) / total).mean().item()
    hot = maps >= threshold * maps.reshape(n, -1).amax(1)[:, None, None]
    rows, cols = hot.any(2), hot.any(1)
    first = lambda m: m.float().argmax(1)  # noqa: E731
    last = lambda m: m.shape[1] - m.flip(1).float().argmax(1)  # noqa: E731
    hx0, hx1, hy0, hy1 = first(cols), last(cols), first(rows), last(rows)
    iw = (torch.minimum(hx1, x1) - torch.maximum(hx0, x0)).clamp(min=0)
    ih = (torch.minimum(hy1, y1) - torch.maximum(hy0, y0)).clamp(min=0)
    inter = (iw * ih).float()
    union = ((hx1 - hx0) * (hy1 - hy0) + (x1 - x0) * (y1 - y0)).float() - inter
    iou = torch.where(empty, torch.zeros_like(inter), inter / union.clamp(min=1)).mean().item()
    return Localisation(n, pointing, energy, iou)


# --------------------------------------------------------------------------- checkpoints and files
def read_boxes(root: str | Path) -> dict[str, tuple[float, float, float, float]]:
    """Object boxes of a dataset, from ``ROOT/boxes.csv`` (columns ``path,x0,y0,x1,y1`` at least,
    paths relative to ``ROOT``; what ``finetune make-shapes`` writes), keyed by resolved path.
    No file: an empty dict.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "boxes.csv").write_text("split,path,label,x0,y0,x1,y1\\nval,val/a/1.jpg,a,1,2,30,40\\n")
    >>> list(read_boxes(root).values())
    [(1.0, 2.0, 30.0, 40.0)]
    """
    path = Path(root) / "boxes.csv"
    if not path.is_file():
        return {}
    out: dict[str, tuple[float, float, float, float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                box = (float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"]))
                out[str((Path(root) / row["path"]).resolve())] = box
            except (KeyError, TypeError, ValueError):
                raise DataError(f"'{path}' needs columns path,x0,y0,x1,y1 with numbers (row: {row})") from None
            if not (box[2] > box[0] and box[3] > box[1]):
                raise DataError(f"'{path}': the box of '{row['path']}' has x1 <= x0 or y1 <= y0 ({row['x0']}, "
                                f"{row['y0']}, {row['x1']}, {row['y1']}): columns x0,y0,x1,y1 are two corners "
                                "(COCO's x,y,width,height needs x1 = x + width, y1 = y + height)")
    return out


def boxes_roots(inputs: Sequence[str | Path]) -> list[Path]:
    """The folders whose ``boxes.csv`` covers ``inputs`` (files or folders): for each, the nearest
    folder at or above it that has one (``DATA/val`` or one of its images: ``DATA``, where
    ``finetune make-shapes`` writes it, with paths ``val/...``).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "val" / "a").mkdir(parents=True)
    >>> _ = (root / "boxes.csv").write_text("path,x0,y0,x1,y1\\n")
    >>> boxes_roots([root / "val", root / "val" / "a" / "1.jpg"]) == [root.resolve()]
    True
    """
    roots: list[Path] = []
    for i in inputs:
        path = Path(i).resolve()
        start = path if path.is_dir() else path.parent
        root = next((d for d in (start, *start.parents) if (d / "boxes.csv").is_file()), None)
        if root is not None and root not in roots:
            roots.append(root)
    return roots


def box_in_crop(box: tuple[float, float, float, float], image_wh: tuple[int, int], size: int,
                crop_pct: float = EVAL_CROP_PCT, crop_mode: str = "center") -> tuple[float, ...]:
    """A box in source pixels mapped onto the ``size`` x ``size`` eval crop (Resize(size / crop_pct)
    + CenterCrop(size)).

    >>> box_in_crop((0, 0, 256, 256), (256, 256), 224)   # the whole image: beyond the crop on every side
    (-16.0, -16.0, 240.0, 240.0)
    """
    left, top, right, bottom = eval_resize_box(*image_wh, size, crop_pct, crop_mode)
    sx, sy = size / (right - left), size / (bottom - top)
    x0, y0, x1, y1 = box
    return ((x0 - left) * sx, (y0 - top) * sy, (x1 - left) * sx, (y1 - top) * sy)


@dataclass
class CamReport:
    """What :func:`explain` wrote: the folder, one record per image, and the localisation
    scores where the data has boxes (None otherwise)."""

    out_dir: Path
    records: list[dict[str, Any]]
    localisation: Localisation | None


def _run_dir_checkpoint(checkpoint: str | Path) -> tuple[Path, Path]:
    """(checkpoint file, run directory) of a checkpoint file or a run directory."""
    from finetune.train import run_checkpoint

    path = Path(checkpoint)
    if path.is_dir():  # a run directory, or its checkpoints/ folder: the run's directory either way
        found = run_checkpoint(path)
        return found, found.parent.parent if found.parent.name == "checkpoints" else path
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path, run_dir


def _write_file(path: Path, write: Any) -> None:
    """``write(tmp)`` to a temporary file beside ``path`` that then replaces it: a failure (a full disk) leaves
    no half-written file named like an output, and an earlier run's file as it was; its OSError names ``path``."""
    from finetune.checkpoint import _replacing

    try:
        with _replacing(path) as tmp:
            write(tmp)
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def explain(checkpoint: str | Path, inputs: Sequence[str] | None = None, *, method: str = "gradcam",
            layer: str | None = None, target: str | None = None, out: str | Path | None = None,
            limit: int = 32, alpha: float = 0.5, batch_size: int = 16, device: str = "auto",
            quiet: bool = False) -> CamReport:
    """Write CAM overlays (PNG) of a finetune checkpoint's predictions (``finetune cam``).

    ``checkpoint``: a checkpoint file or a run directory (its ``best.pt``). ``inputs``: image
    files or folders; default: ``limit`` images of the run's validation split, spread over
    it. ``target``: a class name to explain instead of each prediction. The overlays go to
    ``out`` (default ``RUN/cam/METHOD/``) with ``cam.jsonl`` (one record per image: file,
    class explained, its probability, true class if known, and box scores where the data
    has a ``boxes.csv``), and ``summary.json``.

    >>> from finetune import explain
    >>> import tempfile
    >>> from finetune import Checkpointer, create_model, make_shapes
    >>> from finetune.data.shapes import CLASSES
    >>> data = make_shapes(tempfile.mkdtemp(), per_class=1, val_per_class=1, size=32)
    >>> run = tempfile.mkdtemp()
    >>> _ = Checkpointer(run).save({"model": create_model("resnet18", num_classes=8), "arch": "resnet18",
    ...     "classes": list(CLASSES), "img_size": 64, "epoch": 0, "step": 0, "config": {"data": str(data)}})
    >>> report = explain(run, limit=4, device="cpu")
    >>> len(report.records), report.out_dir.name, report.localisation.images
    (4, 'gradcam', 4)
    """
    from PIL import Image

    from finetune.data.normalize import Normalizer
    from finetune.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from finetune.train import (
        _found_inputs,
        eval_crop,
        eval_transform_of_checkpoint,
        forward_failures_named,
        load_checkpoint_model,
        resolve_data,
        resolve_device,
        spread_indices,
        warn,
    )

    if method not in METHODS:
        raise ConfigError(f"unknown CAM method '{method}': choose one of {', '.join(METHODS)}")
    if limit < 1 or batch_size < 1:
        raise ConfigError(f"limit (--limit) and batch_size (--batch-size) must be at least 1, "
                          f"got {limit} and {batch_size}")
    if target is not None and method == "eigencam":  # its map is the features' principal component, of no class
        raise ConfigError(f"eigencam's map does not depend on the class (the first principal component of the "
                          f"features): target='{target}' (--target) would change only the names, not the maps; "
                          "drop it, or use a method that explains a class (eigengradcam, gradcam, …)")
    ckpt_path, run_dir = _run_dir_checkpoint(checkpoint)
    dev = resolve_device(device)
    model, state = load_checkpoint_model(ckpt_path, dev)
    classes = list(state["classes"])
    size, crop_pct, interpolation, crop_mode = eval_transform_of_checkpoint(state)
    cfg = state.get("config", {}) or {}
    target_index = None
    if target is not None:
        if target not in classes:
            close = ", ".join(classes[:10])
            raise ConfigError(f"unknown class '{target}': the checkpoint's classes are {close}")
        target_index = classes.index(target)
    truth: dict[str, int] = {}
    named: set[Path] = set()  # files named on the command line: unreadable is an error (found ones are skipped)
    if inputs:
        found = _found_inputs(list(inputs))
        files = [f for f, _ in found]
        named = {f for f, in_folder in found if not in_folder}
        boxes = {}
        for root in boxes_roots(inputs):
            boxes.update(read_boxes(root))
    else:
        if "data" not in cfg:  # saved by other code (a loop of one's own): not the built-in shapes
            raise DataError(f"'{ckpt_path}' does not say which data it was trained on (no config with a 'data' in "
                            "it): give the images to explain (files or folders)")
        data = cfg["data"]
        from finetune.data.samples import relabel, split_drawn_again

        with split_drawn_again():  # (training gave that warning)
            _, val = resolve_data(data, cfg.get("val_split", 0.1), cfg.get("seed", 0))

        val = relabel(val, classes, data)  # the true labels by class name: the data may have changed since training
        picks = spread_indices(len(val), limit)
        files = [Path(val.paths[i]) for i in picks]
        truth = {str(Path(val.paths[i])): int(val.labels[i]) for i in picks}
        if data == "shapes":
            from finetune.data.shapes import shapes_root

            root = shapes_root()
        else:
            root = Path(data) if Path(data).is_dir() else Path(data).parent
        boxes = read_boxes(root)
    out_dir = Path(out) if out is not None else run_dir / "cam" / method
    made = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:  # a failure before the first overlay (a method that does not fit the model) leaves no empty folder
        normalizer = Normalizer(tuple(state.get("mean", IMAGENET_MEAN)), tuple(state.get("std", IMAGENET_STD)), dev,
                                channels_last=False)
        records: list[dict[str, Any]] = []
        scored: list[Localisation] = []  # one per image with a box
        pending, tried = iter(files), 0  # `limit` readable images: an unreadable one found in a folder is replaced
        unreadable: list[str] = []  # the files named that cannot be read
        bar = progress_bar(min(limit, len(files)), desc=f"cam {method}", quiet=quiet)
        while len(records) < limit:
            chunk, crops = [], []
            for f in pending:
                tried += 1
                try:
                    crops.append(eval_crop(f, size, crop_pct, interpolation, crop_mode))
                except DataError as e:
                    if f in named:  # an error once the others are explained (as predict)
                        unreadable.append(str(e))
                    else:
                        warn(f"{e} (skipped)")  # as predict does: one unreadable image does not stop the others
                    continue
                chunk.append(f)
                if len(chunk) == min(batch_size, limit - len(records)):
                    break
            if not chunk:
                break
            batch = normalizer(torch.stack(crops).to(dev))
            with forward_failures_named(model, state, ckpt_path):
                result = class_activation_maps(model, batch, method=method, layer=layer,
                                               classes=None if target_index is None else [target_index])
            maps = result.maps.cpu()
            for k, f in enumerate(chunk):
                n = len(records)
                cls = int(result.classes[k])
                name = f"{n:04d}_{_safe(f.stem)}_{_safe(classes[cls])}.png"
                picture = Image.fromarray(overlay(crops[k], maps[k], alpha))
                _write_file(out_dir / name, lambda tmp, picture=picture: picture.save(tmp, "PNG"))
                record: dict[str, Any] = {"file": str(f), "overlay": name, "class": classes[cls],
                                          "prob": round(float(result.probs[k]), 6), "layer": result.layer}
                if str(f) in truth:
                    record["true_class"] = classes[truth[str(f)]]
                box = boxes.get(str(f.resolve()))
                if box is not None:
                    with Image.open(f) as im:  # (the header only: the box is in the source image's pixels)
                        crop_box = box_in_crop(box, im.size, size, crop_pct, crop_mode)
                    if min(crop_box[2], size) <= max(crop_box[0], 0) or min(crop_box[3], size) <= max(crop_box[1], 0):
                        record["box"] = "outside the crop"  # the model never saw the object: not scored
                    else:
                        scores = localisation(maps[k:k + 1], torch.tensor([crop_box]))
                        record.update(pointing=bool(scores.pointing), energy=round(scores.energy, 6),
                                      iou=round(scores.iou, 6))
                        scored.append(scores)
                records.append(record)
            bar.update(len(chunk))
        bar.close()
        if files and not records:
            if unreadable:
                raise UnreadableImagesError(unreadable, named=len(named))
            raise DataError(f"none of the {tried} images to explain can be read")
    except BaseException:
        if made and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    loc = (Localisation(len(scored), *(float(np.mean([getattr(x, k) for x in scored])) for k in ("pointing", "energy", "iou")))
           if scored else None)
    _remove_previous_overlays(out_dir, {r["overlay"] for r in records})
    _write_file(out_dir / "cam.jsonl", lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in records)))
    summary = {"checkpoint": str(ckpt_path), "method": method, "layer": records[0]["layer"] if records else layer,
               "images": len(records), "localisation": asdict(loc) if loc is not None else None}
    _write_file(out_dir / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    report = CamReport(out_dir, records, loc)
    if unreadable:
        raise UnreadableImagesError(unreadable, records, named=len(named), done="explained", result=report)
    return report


def _remove_previous_overlays(out_dir: Path, keep: set[str]) -> None:
    """Remove the overlays an earlier run into ``out_dir`` wrote (those its ``cam.jsonl`` lists) that
    this run did not overwrite, so the folder shows what its ``cam.jsonl`` says; nothing else is touched.

    >>> import json, tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "0000_a_cat.png").write_bytes(b""), (d / "mine.png").write_bytes(b"")
    >>> _ = (d / "cam.jsonl").write_text(json.dumps({"overlay": "0000_a_cat.png"}) + "\\n")
    >>> _remove_previous_overlays(d, {"0000_b_dog.png"}); sorted(p.name for p in d.iterdir())
    ['cam.jsonl', 'mine.png']
    """
    try:
        lines = (out_dir / "cam.jsonl").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return
    for line in lines:
        try:
            name = json.loads(line).get("overlay")
        except (ValueError, AttributeError):
            continue
        if isinstance(name, str) and name not in keep and re.fullmatch(r"\d{4}_[\w.-]*\.png", name):
            (out_dir / name).unlink(missing_ok=True)


def _safe(text: str) -> str:
    """``text`` for a part of a file name: letters, digits, ``-_.``, at most 60 bytes of UTF-8 (not 60
    characters: 60 CJK characters are 180 bytes, and a file's and a class's name would pass the 255 bytes
    a file name can have).

    >>> _safe("a cat/dog"), len(_safe("猫" * 70).encode()), _safe("x" * 70) == "x" * 60
    ('a_cat_dog', 60, True)
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return safe.encode("utf-8")[:60].decode("utf-8", "ignore")  # (a character cut in two is left out)

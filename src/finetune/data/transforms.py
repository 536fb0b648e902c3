"""Crop geometry and uint8 tensor ops with torchvision's semantics.

The boxes of RandomResizedCrop and of eval's Resize + CenterCrop, the DCT scale a
crop allows, and the resizes, crops and augmentations the loader runs on uint8
images (decoding itself is in :mod:`finetune.data.decode`). Every random choice
comes from a source seeded per sample, so a sample's augmentation depends only
on (seed, epoch, position), not on which worker drew it: this is what makes
resume exact.

>>> from finetune.data.transforms import center_crop_box, dct_reduction
>>> center_crop_box(400, 300, 224), dct_reduction(300, 224)
(CropBox(top=19, left=69, height=262, width=262), 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_PCT = 0.875
#: how eval's resize samples: torchvision's default and timm's usual one (``interpolation``)
INTERPOLATIONS = ("bilinear", "bicubic")
#: how eval resizes before its centre crop (timm's ``crop_mode``): the shorter side to
#: size / crop_pct keeping the aspect ratio ("center"), or both sides to it ("squash")
CROP_MODES = ("center", "squash")


def eval_resize_side(size: int, crop_pct: float = EVAL_CROP_PCT) -> int:
    """The shorter side eval resizes to before its centre crop of ``size``: ``floor(size / crop_pct)``
    as timm computes it (torchvision's ``resize_size``), robust to the float error of a
    ``crop_pct`` written as ``crop / resize`` (224 / 232).

    >>> eval_resize_side(224), eval_resize_side(224, 0.95), eval_resize_side(224, 224 / 232), eval_resize_side(32)
    (256, 235, 232, 36)
    """
    return int(size / crop_pct + 1e-6)


@dataclass(frozen=True)
class CropBox:
    """A crop in source-pixel coordinates: top, left, height, width.

    >>> from finetune.data.transforms import CropBox, center_crop_box
    >>> box = center_crop_box(120, 80, 32)         # the middle of a landscape image
    >>> box, box.left + box.width / 2, box.top + box.height / 2
    (CropBox(top=4, left=24, height=71, width=71), 59.5, 39.5)
    """

    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(width: int, height: int, rng: Any,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> CropBox:
    """torchvision's RandomResizedCrop.get_params, drawn from ``rng`` (anything with numpy
    Generator's ``uniform`` and ``integers``: a Generator or the loader's ``SampleRandom``).

    >>> import numpy as np
    >>> b = random_resized_crop_box(100, 80, np.random.default_rng(0))
    >>> 0 < b.width <= 100 and 0 < b.height <= 80
    True
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropBox(top, left, h, w)
    in_ratio = width / height  # fallback: central crop
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def center_crop_box(width: int, height: int, size: int, crop_pct: float = EVAL_CROP_PCT,
                    crop_mode: str = "center") -> CropBox:
    """The region that ``Resize(size / crop_pct)`` + ``CenterCrop(size)`` keeps, in source pixels
    (``crop_mode="squash"``: ``Resize((size / crop_pct, size / crop_pct))``, the same share of
    each side).

    >>> center_crop_box(100, 100, 56, 0.875), center_crop_box(200, 100, 56, 0.875, "squash")
    (CropBox(top=6, left=6, height=88, width=88), CropBox(top=6, left=12, height=88, width=175))
    """
    resize_to = eval_resize_side(size, crop_pct)
    scale_w = scale_h = resize_to / min(width, height)  # shorter side becomes resize_to
    if crop_mode == "squash":
        scale_w, scale_h = resize_to / width, resize_to / height
    side_w = min(width, int(round(size / scale_w)))
    side_h = min(height, int(round(size / scale_h)))
    return CropBox((height - side_h) // 2, (width - side_w) // 2, side_h, side_w)


def eval_resize_box(width: int, height: int, size: int, crop_pct: float = EVAL_CROP_PCT,
                    crop_mode: str = "center") -> tuple[float, float, float, float]:
    """The source region (left, top, right, bottom; fractional pixels) that torchvision's
    ``Resize(int(size / crop_pct))`` + ``CenterCrop(size)`` maps onto the output (``crop_mode=
    "squash"``: timm's ``Resize((int(size / crop_pct),) * 2)`` + ``CenterCrop(size)``).

    Resizing exactly this region to ``size`` x ``size`` (PIL ``resize(box=...)``)
    gives torchvision's eval result without resizing the whole image first.

    >>> tuple(round(v, 1) for v in eval_resize_box(500, 375, 224))
    (85.0, 23.4, 413.5, 351.6)
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short = eval_resize_side(size, crop_pct)
    new_long = new_short if crop_mode == "squash" else int(new_short * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    sx, sy = new_w / width, new_h / height
    return (left / sx, top / sy, (left + size) / sx, (top + size) / sy)


def dct_reduction(crop_side: int, out_side: int) -> int:
    """The largest libjpeg DCT scale 1/r (r in 1, 2, 4, 8) that leaves the crop's
    shorter side ``crop_side`` at least ``out_side`` pixels: never upsample.

    >>> dct_reduction(375, 224), dct_reduction(448, 224), dct_reduction(2000, 224)
    (1, 2, 8)
    """
    reduce = 1
    while reduce < 8 and crop_side / (reduce * 2) >= out_side:
        reduce *= 2
    return reduce


def draft_size(width: int, height: int, reduce: int) -> tuple[int, int]:
    """The size to ask PIL's ``draft`` for so that libjpeg decodes at scale 1/``reduce``.

    PIL picks the scale from ``width // asked_width`` (and the same for the height),
    rounded down to 1, 2, 4 or 8: asking for the rounded-up ``ceil(width / reduce)``
    gives a smaller scale whenever a side is not a multiple of ``reduce`` (a 500x375
    image asked for 1/2 would decode at full size); the rounded-down size gives exactly
    1/``reduce`` (the decoded image is then ``ceil(side / reduce)``).

    >>> from PIL import Image
    >>> import io
    >>> buf = io.BytesIO(); Image.new("RGB", (1001, 751)).save(buf, "JPEG")
    >>> img = Image.open(buf); _ = img.draft("RGB", draft_size(*img.size, 2)); img.size
    (501, 376)
    """
    return max(1, width // reduce), max(1, height // reduce)


def resize_hwc(image: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Bilinear (or ``mode="bicubic"``) resize, antialiased when shrinking as PIL does, of a
    uint8 HWC tensor.

    Uses torch's uint8 channels-last kernel: no float copy of the image.

    >>> resize_hwc(torch.zeros(40, 60, 3, dtype=torch.uint8), (20, 30)).shape
    torch.Size([20, 30, 3])
    """
    if tuple(image.shape[:2]) == tuple(size):
        return image.contiguous()
    x = image.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last)
    y = torch.nn.functional.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).contiguous()


def crop_hwc(image: torch.Tensor, box: CropBox) -> torch.Tensor:
    """A view of ``box`` in a HWC tensor (no copy).

    >>> import torch
    >>> from finetune.data.transforms import CropBox, crop_hwc
    >>> image = torch.zeros(10, 20, 3, dtype=torch.uint8)
    >>> crop = crop_hwc(image, CropBox(top=2, left=5, height=4, width=6))
    >>> crop.shape, crop.data_ptr() == image[2, 5].data_ptr()
    (torch.Size([4, 6, 3]), True)
    """
    return image[box.top:box.top + box.height, box.left:box.left + box.width]


def capped_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after shrinking so that the shorter side is at most ``short_side``.

    >>> capped_size(500, 375, 256), capped_size(100, 80, 256)
    ((341, 256), (100, 80))
    """
    short = min(width, height)
    if short <= short_side:
        return width, height
    scale = short_side / short
    return (short_side, max(1, round(height * scale))) if width == short else (max(1, round(width * scale)), short_side)


AUGMENTS = ("trivialaugment", "randaugment")


def _augment_op(name: str):  # type: ignore[no-untyped-def]
    from torchvision.transforms import v2

    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "randaugment":
        return v2.RandAugment()
    raise ValueError(f"unknown augmentation {name!r}: choose one of {AUGMENTS}")


_AUGMENT_CACHE: dict[str, object] = {}


def augment_hwc(image: torch.Tensor, name: str, seed: int) -> torch.Tensor:
    """TrivialAugmentWide / RandAugment (torchvision v2, on uint8) with a per-sample seed.

    torchvision's ``forward`` draws its choices from torch's global generator, which every
    thread shares (forking and seeding it here let a prefetch thread's augmentation and the
    training thread's dropout masks interleave: both then depended on timing). The same
    choices, in the same order, are drawn here from a generator of this call's own, so the
    result depends on ``seed`` only and no other random stream is touched.

    >>> x = torch.randint(0, 255, (16, 16, 3), dtype=torch.uint8)
    >>> torch.equal(augment_hwc(x, "trivialaugment", 3), augment_hwc(x, "trivialaugment", 3))
    True
    """
    op: Any = _AUGMENT_CACHE.get(name)
    if op is None:
        op = _AUGMENT_CACHE[name] = _augment_op(name)
    out = image.permute(2, 0, 1)
    if not (hasattr(op, "_AUGMENTATION_SPACE") and hasattr(op, "_apply_image_or_video_transform")):
        with torch.random.fork_rng(devices=[]):  # (a torchvision without those internals: its own forward, seeded)
            torch.manual_seed(seed)
            return op(out).permute(1, 2, 0).contiguous()
    g = torch.Generator().manual_seed(seed)
    height, width = out.shape[-2:]
    space = op._AUGMENTATION_SPACE
    for _ in range(getattr(op, "num_ops", 1)):  # (RandAugment: num_ops at its fixed magnitude; TrivialAugment: one)
        key = tuple(space)[int(torch.randint(len(space), (), generator=g))]
        magnitudes_fn, signed = space[key]
        magnitudes = magnitudes_fn(op.num_magnitude_bins, height, width)
        magnitude = 0.0
        if magnitudes is not None:
            index = op.magnitude if name == "randaugment" else int(torch.randint(op.num_magnitude_bins, (), generator=g))
            magnitude = float(magnitudes[index])
            if signed and torch.rand((), generator=g) <= 0.5:
                magnitude *= -1
        out = op._apply_image_or_video_transform(out, key, magnitude, interpolation=op.interpolation, fill=op._fill)
    return out.permute(1, 2, 0).contiguous()


def crop_resize_flip_float(image: torch.Tensor, box: CropBox, size: int, flip: bool,
                           mode: str = "bilinear") -> torch.Tensor:
    """Device-side crop + resize + flip of a uint8 CHW tensor into float32 CHW (0..255).

    Used by the GPU paths (nvjpeg decode, GPU cache): CUDA's antialiased
    resize works on floats, and the float batch is normalised in place next.

    >>> crop_resize_flip_float(torch.zeros(3, 40, 60, dtype=torch.uint8), CropBox(0, 0, 40, 40), 20, True).shape
    torch.Size([3, 20, 20])
    """
    x = image[:, box.top:box.top + box.height, box.left:box.left + box.width].unsqueeze(0).float()
    if (box.height, box.width) != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False)
        x = x.clamp_(0, 255) if mode == "bicubic" else x  # (bicubic overshoots at edges)
    x = x[0]
    return x.flip(-1) if flip else x


def crop_resize_flip_batch(images: torch.Tensor, boxes: torch.Tensor, size: int, flips: torch.Tensor) -> torch.Tensor:
    """Crop + resize + flip a batch of same-size uint8 NCHW images in one kernel, float32 out (0..255).

    The GPU paths' fast case (every image of the batch has the same size, no
    per-sample augmentation): ``torchvision.ops.roi_align`` with adaptive
    sampling, which is bilinear when upscaling and averages
    ceil(crop/size)^2 bilinear samples per output pixel when downscaling
    (an area filter, where torchvision's resize uses an antialiased triangle
    filter: the two agree within a few levels on photos). ``boxes`` is int
    ``[B, 4]`` of (top, left, height, width); an identity box returns the
    pixels exactly.

    >>> x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    >>> out = crop_resize_flip_batch(x, torch.tensor([[0, 0, 4, 4], [1, 1, 2, 2]]), 4, torch.tensor([False, True]))
    >>> torch.equal(out[0], x[0].float()), out.shape
    (True, torch.Size([2, 3, 4, 4]))
    """
    from torchvision.ops import roi_align

    # NCHW-contiguous in one pass: roi_align makes its input contiguous, and a permuted NHWC store's
    # .float() keeps the NHWC strides (a second full-size float copy per batch)
    x = images.to(torch.float32, memory_format=torch.contiguous_format)
    b = boxes.to(device=x.device, dtype=torch.float32)
    top, left, height, width = b.unbind(1)
    rois = torch.stack([torch.arange(len(b), device=x.device, dtype=torch.float32),
                        left, top, left + width, top + height], dim=1)
    out = roi_align(x, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    flips = flips.to(device=out.device).view(-1, 1, 1, 1)
    return torch.where(flips, out.flip(3), out)

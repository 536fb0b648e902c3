"""The input pipeline: ``build_loader`` turns samples into normalised batches on a device.

Order and augmentation are functions of ``(seed, epoch, position)`` only, so
``state_dict()``/``load_state_dict()`` resume in the middle of an epoch with
the same batches that an uninterrupted run would see, whatever the number of
workers or the prefetch mode. The cache is not among them: ``cache="ram"``
decodes training images at ``default_cache_side(img_size)`` before cropping,
so its pixels differ slightly from ``cache=None`` (same images, same order).

Where the time goes and what is done about it (measurements in BENCHMARKS.md):

* images stay uint8 HWC from the file to the batch; workers send uint8 batches
  (a quarter of the bytes of float32), stacked straight into shared memory;
* decoding crops before it resizes and uses libjpeg DCT scaling when the crop
  is at least twice the output size (:mod:`finetune.data.decode`);
* normalisation is one pass into recycled buffers on the device
  (:mod:`finetune.data.normalize`);
* ``cache="ram"`` decodes each image once into a shared-memory store
  (:mod:`finetune.data.cache`); ``cache="gpu"`` keeps it on the GPU and crops
  there; ``decode="gpu"`` decodes JPEG batches with nvjpeg;
* on CUDA the next batch is copied and normalised on a side stream while the
  current one computes; ``prefetch="thread"`` is the notes' background thread.

>>> import tempfile
>>> from finetune.data.shapes import make_shapes
>>> from finetune.data.samples import find_splits
>>> train, val = find_splits(make_shapes(tempfile.mkdtemp(), per_class=4, size=32))
>>> loader = build_loader(train, train=True, img_size=32, batch_size=8, workers=0)
>>> images, labels = next(iter(loader))
>>> images.shape, images.dtype, labels.dtype
(torch.Size([8, 3, 32, 32]), torch.float32, torch.int64)
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue
import random
import re
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from finetune.checkpoint import SAME_STOP_S
from finetune.data import cache as cache_mod
from finetune.data.decode import (
    DECODE_ERRORS,
    BadFile,
    bad_reason,
    check_file,
    chroma_halved_vertically_only,
    decode_capped,
    decode_crop,
    decode_eval,
    decode_jpegs_on_device,
    image_size,
    is_complete_jpeg,
    open_header,
    read_file,
)
from finetune.data.normalize import Normalizer, intra_op_threads
from finetune.data.pools import (
    sigterm_blocked,
    unblock_sigterm,
    worker_context,
    worker_start_method,
)
from finetune.data.samples import Samples, find_splits
from finetune.data.transforms import (
    AUGMENTS,
    CROP_MODES,
    EVAL_CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    CropBox,
    augment_hwc,
    center_crop_box,
    crop_hwc,
    crop_resize_flip_batch,
    crop_resize_flip_float,
    eval_resize_side,
    random_resized_crop_box,
    resize_hwc,
)
from finetune.errors import ConfigError, DataError

DECODES = ("auto", "cpu", "gpu")
CACHES = (None, "none", "ram", "gpu")
PREFETCHES = ("auto", "none", "thread", "cuda")
BAD_FILES_NAME = "bad_files.txt"


class SampleRandom(random.Random):
    """The random source of one sample: Python's Mersenne Twister, seeded in ~5 µs (a numpy
    ``Generator`` takes ~40 µs, which at thousands of images/s is a core's worth of time), with
    the numpy method names the transforms call (``uniform``, ``random``, ``integers``).

    >>> r = sample_rng(0, 1, 2)
    >>> 0 <= r.integers(10) < 10 and 5 <= r.integers(5, 7) < 7 and 0.0 <= r.random() < 1.0
    True
    """

    def integers(self, low: int, high: int | None = None) -> int:
        if high is None:
            low, high = 0, low
        return self.randrange(low, high)


def sample_rng(seed: int, epoch: int, position: int) -> SampleRandom:
    """The random source of the sample at ``position`` in ``epoch``'s order: a function of
    these three numbers only, so a sample's augmentation does not depend on the worker
    that draws it, and a resumed run draws exactly what the uninterrupted one did.

    >>> sample_rng(0, 1, 2).random() == sample_rng(0, 1, 2).random() != sample_rng(0, 1, 3).random()
    True
    """
    return SampleRandom(((seed % 2**32) << 64) | ((epoch % 2**32) << 32) | (position % 2**32))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Sample indices in the order epoch ``epoch`` visits them.

    >>> epoch_order(5, seed=0, epoch=0, shuffle=False).tolist()
    [0, 1, 2, 3, 4]
    """
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def shard_order(order: np.ndarray, rank: int, world: int, pad: bool) -> np.ndarray:
    """The part of an epoch's ``order`` that process ``rank`` of ``world`` visits: every
    ``world``-th sample from ``rank`` on (torch's ``DistributedSampler``), after repeating the
    first samples so that every process gets as many (``pad``: training, where the processes
    step together) or not (evaluation: each sample counted once).

    >>> order = np.arange(5)
    >>> shard_order(order, 0, 2, pad=True).tolist(), shard_order(order, 1, 2, pad=True).tolist()
    ([0, 2, 4], [1, 3, 0])
    >>> shard_order(order, 1, 2, pad=False).tolist()
    [1, 3]
    """
    if world == 1:
        return order
    if pad:
        order = np.resize(order, -(-len(order) // world) * world)
    return order[rank::world]


def default_cache_side(img_size: int) -> int:
    """Shorter side of cached training images: what eval resizes to (256 for 224).

    >>> default_cache_side(224)
    256
    """
    return int(img_size / EVAL_CROP_PCT)


# --------------------------------------------------------------------------- what workers send
@dataclass(frozen=True)
class BatchSpec:
    """One batch to make: its epoch, the position of its first sample, the sample indices.

    >>> import tempfile, numpy as np
    >>> from finetune import build_loader, make_shapes
    >>> from finetune.data.loader import BatchSpec
    >>> from finetune.data.samples import find_splits
    >>> train, _ = find_splits(make_shapes(tempfile.mkdtemp(), per_class=1, val_per_class=1, size=32))
    >>> loader = build_loader(train, train=True, img_size=16, batch_size=2, workers=0)
    >>> raw = loader.dataset.__getitems__(BatchSpec(epoch=0, start=0, indices=np.array([5, 0])))  # what a worker does
    >>> raw.images.shape, raw.labels.tolist()
    (torch.Size([2, 3, 16, 16]), [5, 0])
    """

    epoch: int
    start: int
    indices: np.ndarray
    stride: int = 1  # the k-th sample's position in the epoch is start + k * stride (several processes)


class RawBatch(NamedTuple):
    """A batch decoded on CPU: uint8 images (NHWC, or NCHW when the loader's output is not
    channels_last), labels, and the samples that failed.

    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> from finetune import build_loader
    >>> from finetune.data.loader import BatchSpec
    >>> from finetune.data.samples import Samples
    >>> d = tempfile.mkdtemp(); Image.new("RGB", (8, 8)).save(f"{d}/ok.png")
    >>> samples = Samples.from_lists([f"{d}/ok.png", f"{d}/missing.jpg"], [0, 1], ["a", "b"])
    >>> loader = build_loader(samples, train=False, img_size=8, workers=0, channels_last=True)
    >>> raw = loader.dataset.__getitems__(BatchSpec(epoch=0, start=0, indices=np.array([0, 1])))
    >>> raw.images.shape, raw.images.dtype, raw.labels.tolist(), [i for i, _ in raw.bad]
    (torch.Size([1, 8, 8, 3]), torch.uint8, [0], [1])
    """

    images: torch.Tensor
    labels: torch.Tensor
    bad: list[tuple[int, str]]
    buffer: tuple[int, int] = (-1, -1)  # (worker, slot) of a pooled buffer, given back once read


class JpegBatch(NamedTuple):
    """A batch for device decoding: JPEG bytes back to back plus the random choices.

    Samples that are not plain JPEGs are decoded on CPU into ``ready``.

    >>> import tempfile, numpy as np
    >>> from finetune import make_shapes
    >>> from finetune.data.loader import BatchSpec, Loader
    >>> from finetune.data.samples import find_splits
    >>> train, _ = find_splits(make_shapes(tempfile.mkdtemp(), per_class=1, val_per_class=1, size=32))
    >>> loader = Loader(train, train=True, img_size=16, batch_size=2, workers=0, device="cpu", seed=0,
    ...                 drop_last=True, channels_last=False, mean=(0.5,) * 3, std=(0.5,) * 3,
    ...                 crop_scale=(0.5, 1.0), decode="gpu")          # (nvjpeg's path, run on CPU)
    >>> batch = loader.dataset.__getitems__(BatchSpec(epoch=0, start=0, indices=np.array([0, 1])))
    >>> batch.is_jpeg.tolist(), int(batch.sizes.sum()) == batch.data.numel(), batch.boxes.shape, batch.labels.tolist()
    ([True, True], True, torch.Size([2, 4]), [0, 1])
    """

    data: torch.Tensor  # uint8 [total bytes]
    sizes: torch.Tensor  # int64 [n_jpeg]
    boxes: torch.Tensor  # int64 [B, 4]: top, left, height, width in full-size pixels
    flips: torch.Tensor  # bool [B]
    aug_seeds: torch.Tensor  # int64 [B]
    is_jpeg: torch.Tensor  # bool [B]
    ready: torch.Tensor  # uint8 [B, S, S, 3], filled where not is_jpeg
    labels: torch.Tensor  # int64 [B]
    bad: list[tuple[int, str]]


def _identity(batch: Any) -> Any:
    return batch


POOL_SLOTS = 8  # reusable batch buffers per worker (at most prefetch_factor + 2 are ever in flight)


class BufferPool:
    """Reusable uint8 batch buffers, one set per worker, in shared memory.

    A fresh shared-memory batch costs its page faults every time (measured 75 µs per
    224 px image, a sixth of the cached path's work). The loader's batches are read
    once, by :class:`Normalizer`, right after they arrive: the main process then marks
    the buffer free in ``flags`` (shared, one byte per slot) and the worker that owns
    it writes its next batch there. A worker that finds no free slot allocates a
    fresh buffer, so a slow consumer never corrupts a batch, it only loses the reuse.

    >>> from finetune.data.loader import BufferPool
    >>> pool = BufferPool(workers=1)
    >>> a, slot_a = pool.take((2, 3)); b, slot_b = pool.take((2, 3))
    >>> slot_a, slot_b                      # (worker, slot): both in use
    ((0, 0), (0, 1))
    >>> pool.give_back(slot_a); pool.take((1, 3))[1]    # a slot given back is reused
    (0, 0)
    >>> pool.reset(); [pool.take((2, 3))[1] for _ in range(2)]
    [(0, 0), (0, 1)]
    """

    def __init__(self, workers: int):
        self.flags = cache_mod._shared_uint8(max(workers, 1) * POOL_SLOTS).view(max(workers, 1), POOL_SLOTS)
        self.flags.zero_()
        self.buffers: dict[int, torch.Tensor] = {}  # this process's own buffers (in a worker: that worker's)

    def take(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, int]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        flags = self.flags.numpy()[worker]
        numel = int(np.prod(shape))
        for slot in range(POOL_SLOTS):
            buf = self.buffers.get(slot)
            if flags[slot] == 0 and (buf is None or buf.numel() >= numel):
                if buf is None:
                    buf = self.buffers[slot] = _worker_uint8((numel,))
                flags[slot] = 1
                return buf[:numel].view(shape), (worker, slot)
        return _worker_uint8(shape), (-1, -1)

    def give_back(self, buffer: tuple[int, int]) -> None:
        if buffer[0] >= 0:
            self.flags[buffer] = 0

    def reset(self) -> None:
        """A new pass: batches of an abandoned one were dropped unread, so every slot is free."""
        self.flags.zero_()

    def __getstate__(self) -> dict[str, Any]:  # workers start with no buffers of their own
        return {"flags": self.flags, "buffers": {}}


def _worker_uint8(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a worker it is allocated in shared memory so
    that sending it to the main process copies nothing."""
    n = int(np.prod(shape))
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    return cache_mod._shared_uint8(n).view(shape)


# --------------------------------------------------------------------------- dataset objects
IMAGE_KEYS = ("image", "img", "pixel_values")  # the keys of a dict item (Hugging Face datasets' names)
LABEL_KEYS = ("label", "labels", "fine_label", "target")


def dataset_classes(dataset: Any) -> tuple[str, ...]:
    """A dataset object's class names: ``classes`` (torchvision), else the label feature's ``names``
    (Hugging Face datasets), else none.

    >>> import torchvision
    >>> dataset_classes(torchvision.datasets.FakeData(size=1, num_classes=3)), dataset_classes([1, 2])
    ((), ())
    """
    classes = getattr(dataset, "classes", None)
    if classes is None:
        features = getattr(dataset, "features", None)
        for key in LABEL_KEYS:
            try:
                classes = features[key].names  # type: ignore[index]
                break
            except (TypeError, KeyError, AttributeError, IndexError):
                continue
    try:
        return tuple(str(c) for c in classes) if classes is not None else ()
    except TypeError:
        return ()


def object_image(image: Any, where: str = "dataset item") -> Any:
    """What a dataset object's item may hold, as an RGB PIL image or a uint8 CHW tensor of 3 channels.

    * a PIL image of any mode (``convert("RGB")``, as torchvision's loader; 16-bit greyscale
      keeps its high byte, as for files: :func:`finetune.data.decode.to_rgb`);
    * a tensor (torchvision's ``tv_tensors.Image`` too) CHW with 1, 3 or 4 channels (alpha dropped)
      or HW: uint8, or float in [0, 1] (``ToTensor()``'s output), turned into uint8 as
      torchvision's ``ToDtype(torch.uint8, scale=True)`` does;
    * a numpy array HWC (1, 3 or 4 channels) or HW, uint8 or float in [0, 1].

    Anything else, and a float image outside [0, 1] (already normalised), is a :class:`DataError`.

    >>> object_image(torch.full((1, 2, 3), 0.5)).shape, object_image(np.zeros((2, 3, 4), np.uint8)).shape
    (torch.Size([3, 2, 3]), torch.Size([3, 2, 3]))
    >>> object_image(torch.full((3, 2, 2), -1.5))
    Traceback (most recent call last):
    finetune.errors.DataError: dataset item holds a float image with values in [-1.5, -1.5]: expected [0, 1] (ToTensor()'s range) or uint8; leave normalisation to the loader
    """
    from PIL import Image

    from finetune.data.decode import to_rgb

    if isinstance(image, Image.Image):
        return to_rgb(image)
    given = tuple(getattr(image, "shape", ()))  # (what the message names: the layout the dataset gave)
    if isinstance(image, np.ndarray):
        if image.ndim == 3:
            image = np.moveaxis(image, 2, 0)
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise DataError(f"{where} holds a {type(image).__name__}: expected a PIL image, a CHW tensor or an HWC numpy array")
    x = image.as_subclass(torch.Tensor).detach().cpu()
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3 or x.shape[0] not in (1, 3, 4) or x.shape[1] == 0 or x.shape[2] == 0:
        raise DataError(f"{where} holds an image of shape {given}: expected CHW with 1, 3 or 4 channels "
                        f"(a tensor) or HWC (a numpy array)")
    if x.dtype.is_floating_point:
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= -1e-3 and hi <= 1 + 1e-3):  # (also catches NaN)
            raise DataError(f"{where} holds a float image with values in [{lo:g}, {hi:g}]: expected [0, 1] "
                            "(ToTensor()'s range) or uint8; leave normalisation to the loader")
        from torchvision.transforms.v2 import functional as F

        x = F.to_dtype(x.clamp(0, 1), torch.uint8, scale=True)
    elif x.dtype != torch.uint8:
        raise DataError(f"{where} holds a {x.dtype} image: expected uint8, or float in [0, 1]")
    x = x[:3] if x.shape[0] == 4 else x.expand(3, -1, -1) if x.shape[0] == 1 else x
    return x


def hwc_of(image: Any) -> torch.Tensor:
    """uint8 HWC of :func:`object_image`'s result (a view for a tensor).

    >>> hwc_of(torch.zeros(3, 4, 5, dtype=torch.uint8)).shape
    torch.Size([4, 5, 3])
    """
    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0)
    return torch.from_numpy(np.array(image, dtype=np.uint8))


def object_eval(image: Any, size: int, crop_pct: float = EVAL_CROP_PCT, interpolation: str = "bilinear",
                crop_mode: str = "center") -> torch.Tensor:
    """torchvision's eval transform ``Resize(int(size / crop_pct), interpolation)`` +
    ``CenterCrop(size)`` of :func:`object_image`'s result, as uint8 HWC: PIL's resize for a PIL
    image, torchvision's tensor resize (antialiased) for a tensor, as torchvision would do to each.

    >>> object_eval(torch.zeros(3, 9, 13, dtype=torch.uint8), 16).shape
    torch.Size([16, 16, 3])
    """
    from finetune.data.decode import eval_image

    if not isinstance(image, torch.Tensor):
        return eval_image(image, size, crop_pct, interpolation=interpolation, crop_mode=crop_mode)
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    side = eval_resize_side(size, crop_pct)
    x = F.resize(image, [side, side] if crop_mode == "squash" else [side],
                 interpolation=InterpolationMode(interpolation), antialias=True)
    return F.center_crop(x, [size, size]).permute(1, 2, 0)


# --------------------------------------------------------------------------- the per-sample work
class _BatchDataset(Dataset):
    """Makes whole batches (``__getitems__``) from a :class:`BatchSpec`.

    Holds the file list as numpy arrays (no per-item Python objects, so
    workers do not copy it page by page) and, in cache mode, the shared store.
    """

    def __init__(self, *, samples: Samples | None, obj: Any, train: bool, img_size: int,
                 crop_scale: tuple[float, float], seed: int, augment: str | None, decode: str,
                 store: cache_mod.ImageStore | None, cache_side: int, slots: torch.Tensor, dct: bool = True,
                 nchw: bool = False, pool: BufferPool | None = None, crop_pct: float = EVAL_CROP_PCT,
                 interpolation: str = "bilinear", crop_mode: str = "center"):
        self.samples = samples
        self.crop_pct = crop_pct  # eval: Resize(img_size / crop_pct, interpolation) + CenterCrop(img_size)
        self.interpolation = interpolation
        self.crop_mode = crop_mode
        self.pool = pool
        self.nchw = nchw  # assemble batches as NCHW (the transposing copy runs here, in parallel workers)
        self.dct = dct
        self.obj = obj
        self.train = train
        self.img_size = img_size
        self.crop_scale = crop_scale
        self.seed = seed
        self.augment = augment
        self.decode = decode
        self.store = store
        self.cache_side = cache_side
        self.slots = slots  # int64 [workers, 2]: pid and sample index in progress, for crash reports
        self.classes = dataset_classes(obj) if obj is not None else ()  # (a dataset object's labels are checked)

    def __len__(self) -> int:
        return len(self.samples) if self.samples is not None else len(self.obj)

    # -- sources
    def _rng(self, epoch: int, position: int) -> SampleRandom:
        return sample_rng(self.seed, epoch, position)

    def _box_for(self, rng: SampleRandom | None) -> Callable[[int, int], CropBox]:
        size, scale = self.img_size, self.crop_scale
        if self.train:
            return lambda w, h: random_resized_crop_box(w, h, rng, scale)  # type: ignore[arg-type]
        crop_pct, crop_mode = self.crop_pct, self.crop_mode
        return lambda w, h: center_crop_box(w, h, size, crop_pct, crop_mode)

    def _object_image(self, index: int) -> tuple[Any, int]:
        """Item ``index`` of the dataset object: an RGB PIL image or a uint8 CHW tensor (3 channels),
        and its label. See :func:`object_image` for what an item may hold.

        An OSError of the dataset (a file it cannot read) skips the item, as a bad file; any other
        error of its ``__getitem__`` (a bug in its code or its transform) is a :class:`DataError`:
        skipping it would silently drop every item it fails on."""
        try:
            item = self.obj[index]
        except OSError:
            raise
        except Exception as e:
            raise DataError(f"dataset item {index}: {type(self.obj).__name__}.__getitem__ raised "
                            f"{type(e).__name__}: {e}") from e
        if isinstance(item, dict):  # (Hugging Face datasets: {"image": PIL image, "label": int})
            image = next((item[k] for k in IMAGE_KEYS if k in item), None)
            label = next((item[k] for k in LABEL_KEYS if k in item), None)
            if image is None or label is None:
                raise DataError(f"dataset item {index} is a dict with keys {sorted(item)[:8]}: expected "
                                f"'{IMAGE_KEYS[0]}' and '{LABEL_KEYS[0]}'")
        elif isinstance(item, (tuple, list)) and len(item) >= 2:
            image, label = item[0], item[1]
        else:
            raise DataError(f"dataset item {index} is a {type(item).__name__}: expected an (image, label) pair")
        try:
            value = label.item() if isinstance(label, (torch.Tensor, np.ndarray)) else label
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            label = int(value)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise DataError(f"dataset item {index}'s label is a {type(label).__name__} ({label!r}): "
                            "expected a class index (int)") from None
        classes = self.classes
        if label < 0 or (classes and label >= len(classes)):
            within = f"0 to {len(classes) - 1} ({len(classes)} classes)" if classes else "0 or more"
            raise DataError(f"dataset item {index}'s label is {label}: expected a class index, {within}")
        return object_image(image, f"dataset item {index}"), label

    def _label(self, index: int) -> int:
        return int(self.samples.labels[index])  # type: ignore[union-attr]

    def _cached(self, index: int) -> torch.Tensor:
        store = self.store
        assert store is not None and self.samples is not None
        if store.filled(index):
            return store.get(index)
        if store.bad(index):
            raise OSError("unreadable image (header)")
        path = self.samples.path(index)
        try:
            image = (decode_capped(path, self.cache_side, dct=self.dct) if self.train
                     else self._decode_eval(path))
        except DECODE_ERRORS:
            store.mark_bad(index)
            raise
        store.put(index, image)
        return store.get(index)

    def _decode_eval(self, path: str) -> torch.Tensor:
        return decode_eval(path, self.img_size, self.crop_pct, dct=self.dct, interpolation=self.interpolation,
                           crop_mode=self.crop_mode)

    def load(self, index: int, rng: SampleRandom | None) -> tuple[torch.Tensor, int]:
        """Sample ``index`` as uint8 HWC [S, S, 3] and its label (``rng`` is None for eval)."""
        out, label, flip = self.load_unflipped(index, rng)
        if flip:
            out = out.flip(1)
        if rng is not None and self.augment:
            out = augment_hwc(out, self.augment, int(rng.integers(2**62)))
        return out, label

    def load_unflipped(self, index: int, rng: SampleRandom | None) -> tuple[torch.Tensor, int, bool]:
        """Sample ``index`` before its horizontal flip (uint8 HWC, maybe a view), its label, and
        whether to flip it (the flip is drawn right after the crop)."""
        s = self.img_size
        box_for = self._box_for(rng)
        if self.store is not None:
            src = self._cached(index)
            if not self.train:
                return src, self._label(index), False
            out = resize_hwc(crop_hwc(src, box_for(src.shape[1], src.shape[0])), (s, s))
            label = self._label(index)
        elif self.samples is not None and not self.train:
            return self._decode_eval(self.samples.path(index)), self._label(index), False
        elif self.samples is not None:
            out = resize_hwc(decode_crop(self.samples.path(index), box_for, s, dct=self.dct), (s, s))
            label = self._label(index)
        else:
            image, label = self._object_image(index)
            if not self.train:  # torchvision's Resize + CenterCrop, on the PIL image or on the tensor
                return object_eval(image, s, self.crop_pct, self.interpolation, self.crop_mode), label, False
            hwc = hwc_of(image)
            out = resize_hwc(crop_hwc(hwc, box_for(hwc.shape[1], hwc.shape[0])), (s, s))
        return out, label, bool(rng is not None and rng.random() < 0.5)

    # -- batches
    def _slot(self) -> np.ndarray:
        info = get_worker_info()
        return self.slots.numpy()[info.id if info is not None else 0]

    def __getitems__(self, spec: BatchSpec) -> RawBatch | JpegBatch:
        # per-image ops on small tensors gain nothing from torch's thread pool, and on a
        # busy machine its threads wait for each other (measured 50x slower): one thread
        # here (DataLoader workers already run with one)
        with intra_op_threads(1):
            try:
                if self.decode == "gpu":
                    return self._jpeg_batch(spec)
                return self._cpu_batch(spec)
            except DataError as e:  # sent as it is: a worker's exception would reach the caller
                return _Raised(e)   # as "Caught DataError in DataLoader worker process 0" + a traceback

    def _cpu_batch(self, spec: BatchSpec) -> RawBatch:
        slot = self._slot()
        slot[0] = os.getpid()
        s, n = self.img_size, 0
        shape = (len(spec.indices), 3, s, s) if self.nchw else (len(spec.indices), s, s, 3)
        out, buffer = self.pool.take(shape) if self.pool is not None else (_worker_uint8(shape), (-1, -1))
        dst = out.numpy()
        labels: list[int] = []
        bad: list[tuple[int, str]] = []
        for k, index in enumerate(spec.indices.tolist()):
            slot[1] = index
            rng = self._rng(spec.epoch, spec.start + k * spec.stride) if self.train else None
            try:
                if self.augment and rng is not None:
                    image, label = self.load(index, rng)
                    flip = False
                else:
                    image, label, flip = self.load_unflipped(index, rng)
            except DECODE_ERRORS as e:
                bad.append((index, bad_reason(e)))
                continue
            # one pass into the batch: flip (a reversed view) and, for NCHW, the transpose
            src = image.numpy()
            src = src[:, ::-1] if flip else src
            np.copyto(dst[n], src.transpose(2, 0, 1) if self.nchw else src)
            labels.append(label)
            n += 1
        slot[1] = -1
        return RawBatch(out[:n], torch.tensor(labels, dtype=torch.int64), bad, buffer)

    def _jpeg_batch(self, spec: BatchSpec) -> JpegBatch:
        """Read bytes and draw the random choices; decoding happens on the device."""
        assert self.samples is not None
        slot = self._slot()
        slot[0] = os.getpid()
        s = self.img_size
        datas, boxes, flips, seeds, is_jpeg, readies, labels = [], [], [], [], [], [], []
        bad: list[tuple[int, str]] = []
        for k, index in enumerate(spec.indices.tolist()):
            slot[1] = index
            rng = self._rng(spec.epoch, spec.start + k * spec.stride) if self.train else None
            path = self.samples.path(index)
            try:
                data = read_file(path)
                header = open_header(data)
                box = self._box_for(rng)(*header.size)
                flip = bool(rng is not None and rng.random() < 0.5)
                seed = int(rng.integers(2**62)) if rng is not None and self.augment else -1
                jpeg = (header.format == "JPEG" and header.mode in ("RGB", "L") and is_complete_jpeg(data.numpy())
                        and not chroma_halved_vertically_only(header))  # 4:4:0: PIL's pixels, see there
                if jpeg:
                    ready = None
                elif not self.train:  # the CPU eval transform exactly
                    ready = self._decode_eval(path)
                else:
                    ready = resize_hwc(decode_crop(path, lambda w, h, b=box: b, s, data=data, dct=self.dct), (s, s))
                    ready = ready.flip(1) if flip else ready
                    ready = augment_hwc(ready, self.augment, seed) if seed >= 0 else ready  # type: ignore[arg-type]
            except DECODE_ERRORS as e:
                bad.append((index, bad_reason(e)))
                continue
            if jpeg:
                datas.append(data)
            boxes.append((box.top, box.left, box.height, box.width))
            flips.append(flip)
            seeds.append(seed)
            is_jpeg.append(jpeg)
            readies.append(ready)
            labels.append(self._label(index))
        slot[1] = -1
        n = len(labels)
        ready_t = torch.zeros((n, s, s, 3), dtype=torch.uint8)
        for k, r in enumerate(readies):
            if r is not None:
                ready_t[k] = r
        flat = torch.cat(datas) if datas else torch.empty(0, dtype=torch.uint8)
        return JpegBatch(flat, torch.tensor([len(d) for d in datas], dtype=torch.int64),
                         torch.tensor(boxes, dtype=torch.int64).reshape(n, 4), torch.tensor(flips, dtype=torch.bool),
                         torch.tensor(seeds, dtype=torch.int64), torch.tensor(is_jpeg, dtype=torch.bool), ready_t,
                         torch.tensor(labels, dtype=torch.int64), bad)


class _CappedDataset(Dataset):
    """Decode whole images at the cache size (fills the GPU store)."""

    def __init__(self, inner: _BatchDataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        inner = self.inner
        assert inner.samples is not None
        path = inner.samples.path(index)
        try:
            if inner.train:
                return index, decode_capped(path, inner.cache_side, dct=inner.dct), None
            return index, inner._decode_eval(path), None
        except DECODE_ERRORS as e:
            return index, None, bad_reason(e)


class _BatchSampler:
    """Yields the :class:`BatchSpec` of each batch of the loader's epoch, from its start position."""

    def __init__(self, loader: Loader):
        # a weak reference: a strong one would make Loader -> DataLoader -> sampler -> Loader a
        # cycle, left to the garbage collector, which closes the workers' queues before the
        # DataLoader can send them the stop signal (each worker then costs a 5 s join timeout)
        self.loader = weakref.proxy(loader)

    def __len__(self) -> int:
        return len(self.loader) - self.loader.start_position

    def __iter__(self) -> Iterator[BatchSpec]:
        ld = self.loader
        epoch = ld.epoch
        order = shard_order(epoch_order(ld.num_samples, ld.seed, epoch, ld.shuffle), ld.rank, ld.world, ld.drop_last)
        bs = ld.batch_size
        for b in range(ld.start_position, len(ld)):
            # positions in the whole epoch's order: a sample's augmentation does not depend on the process
            yield BatchSpec(epoch, b * bs * ld.world + ld.rank, order[b * bs:(b + 1) * bs].copy(), ld.world)


# --------------------------------------------------------------------------- prefetching
class _Raised(NamedTuple):
    error: BaseException


_END = object()


class _Pass:
    """One pass over a :class:`Loader` (the state of one ``iter(loader)``): a newer pass or ``close()``
    ends it, and ``ended`` then says why (the error its next batch raises)."""

    __slots__ = ("batches", "ended", "__weakref__")

    def __init__(self) -> None:
        self.batches: Any = None
        self.ended: str | None = None


def background(iterable: Iterable[Any], depth: int = 1) -> Iterator[Any]:
    """Run ``iterable`` in a thread, ``depth`` items ahead (prefetch_generator's
    ``BackgroundGenerator`` with ``max_prefetch=depth``), stopping it when the consumer stops.

    >>> list(background(iter(range(5))))
    [0, 1, 2, 3, 4]
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in iterable:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer
            put(_Raised(e))

    thread = threading.Thread(target=run, name="finetune-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- the loader
class Loader:
    """Iterable of ``(images, labels)`` batches; see :func:`build_loader`.

    >>> import tempfile, torch
    >>> from finetune import build_loader, make_shapes
    >>> from finetune.data.samples import find_splits
    >>> train, _ = find_splits(make_shapes(tempfile.mkdtemp(), per_class=1, val_per_class=1, size=32))
    >>> loader = build_loader(train, train=True, img_size=16, batch_size=2, workers=0)
    >>> len(loader), loader.classes[:2]
    (4, ('circle', 'cross'))
    >>> loader.set_epoch(1); it = iter(loader); _ = next(it); state = loader.state_dict()
    >>> state
    {'epoch': 1, 'position': 1, 'seed': 0}
    >>> resumed = build_loader(train, train=True, img_size=16, batch_size=2, workers=0)
    >>> resumed.load_state_dict(state)
    >>> torch.equal(next(iter(resumed))[0], next(it)[0])      # the batch an uninterrupted run gets next
    True
    >>> loader.close(); resumed.close()
    """

    def __init__(self, samples: Samples | None, *, train: bool, img_size: int, batch_size: int, workers: int,
                 device: str | torch.device, seed: int, drop_last: bool, channels_last: bool,
                 mean: tuple[float, float, float], std: tuple[float, float, float],
                 crop_scale: tuple[float, float], decode: str = "cpu", cache: str | None = None,
                 prefetch: str = "auto", augment: str | None = None, cache_side: int | None = None,
                 cache_max_bytes: int | None = None, dataset: Any = None,
                 log: Callable[[str], None] | None = None, dct_scaling: bool | None = None, shuffle: bool | None = None,
                 shard: tuple[int, int] = (0, 1), crop_pct: float = EVAL_CROP_PCT, interpolation: str = "bilinear",
                 crop_mode: str = "center", start_method: str | None = None):
        num = len(samples) if samples is not None else len(dataset)
        if num == 0:
            raise DataError("no samples to load")
        self.rank, self.world = shard
        self.samples = samples
        self.classes = samples.classes if samples is not None else dataset_classes(dataset)
        self.num_samples = num
        self.train = train
        self.shuffle = train if shuffle is None else shuffle  # the order; ``train`` picks the transform
        self.img_size = img_size
        self.batch_size = batch_size
        self.workers = workers
        self.device = torch.device(device)
        self.seed = seed
        self.drop_last = drop_last and num >= batch_size
        self.channels_last = channels_last
        self.decode = decode
        self.augment = augment
        self.start_method = start_method or worker_start_method(self.world)
        self.epoch = 0
        self.start_position = 0
        self.position = 0
        self._resume = False  # load_state_dict was called: the next pass continues at its position
        self._pass: weakref.ref[_Pass] | None = None  # the pass in progress (a weak reference: no cycle)
        self.bad_files: dict[int, str] = {}
        self.probe: Any = None  # the ProbeResult when workers="auto" measured
        self._log = log or (lambda msg: None)  # nothing is printed unless asked for
        if prefetch == "auto":
            prefetch = "cuda" if self.device.type == "cuda" else "none"
        self.prefetch = prefetch
        self.cache_side = cache_side or default_cache_side(img_size)
        self.cache: str | None = None if cache in (None, "none") else cache
        self.store: cache_mod.ImageStore | None = None
        if self.cache is not None:
            self.store = self._plan_store(self.cache, cache_max_bytes)
        self._normalizer = Normalizer(mean, std, self.device, channels_last)
        self._pid = os.getpid()  # the process whose workers these are (see _leave_parents_workers)
        self._slots = _new_slots(workers)
        self._pool = BufferPool(workers)
        self.dataset = _BatchDataset(
            samples=samples, obj=dataset, train=train, img_size=img_size, crop_scale=crop_scale, seed=seed,
            augment=augment, decode=decode, store=self.store if self.cache == "ram" else None,
            cache_side=self.cache_side, slots=self._slots, dct=train if dct_scaling is None else dct_scaling,
            nchw=not channels_last,
            pool=self._pool, crop_pct=crop_pct, interpolation=interpolation, crop_mode=crop_mode)
        self._dataloader = DataLoader(
            self.dataset,
            batch_sampler=_BatchSampler(self),
            num_workers=workers,
            collate_fn=_identity,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            # its own generator: each new iterator draws a worker base seed, which from the global
            # RNG would shift dropout & co. between an uninterrupted and a resumed run
            generator=torch.Generator().manual_seed(seed),
            worker_init_fn=_outlive_one_signal,
            multiprocessing_context=worker_context(self.start_method) if workers > 0 else None,
        )
        # stops the workers when the loader goes, even from inside a garbage cycle of the
        # caller's objects: the registry keeps the DataLoader and its queues alive until then
        weakref.finalize(self, _stop_workers, self._dataloader)

    def _leave_parents_workers(self) -> None:
        """In a fork of the process that started the workers (``os.fork``, a fork-context Pool): the
        workers, their shared batch buffers and crash slots are still in use by that process. This
        copy leaves them alone (stopping them from here would hang the parent's next pass: their
        stop event is shared) and starts its own on its next pass."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        _stop_workers(self._dataloader)  # (forgets the parent's workers without signalling them)
        self._slots = self.dataset.slots = _new_slots(self.workers)
        self._pool = self.dataset.pool = BufferPool(self.workers)

    # -- cache planning
    def _plan_store(self, mode: str, max_bytes: int | None) -> cache_mod.ImageStore | None:
        if self.samples is None:
            raise DataError("cache needs image files (a folder or CSV), not a dataset object")
        if self.train:
            sizes: list[tuple[int, int] | None] = []
            for i in range(len(self.samples)):
                try:
                    sizes.append(image_size(self.samples.path(i)))
                except DECODE_ERRORS as e:
                    sizes.append(None)
                    self.bad_files[i] = bad_reason(e)
            heights, widths = cache_mod.planned_sizes(sizes, self.cache_side)
        else:
            n = len(self.samples)
            heights = widths = np.full(n, self.img_size, np.int32)
        need = int((heights.astype(np.int64) * widths * 3).sum())
        if mode == "gpu":  # (build_loader insists on CUDA; on CPU this runs the same code, for tests)
            budget = max_bytes if max_bytes is not None else cache_mod.free_gpu_memory(self.device) // 2
            if need <= budget:
                return cache_mod.ImageStore.allocate(heights, widths, self.device)
            self._log(f"cache='gpu' needs {need / 2**30:.1f} GiB, {budget / 2**30:.1f} GiB allowed: using cache='ram'")
            mode = self.cache = "ram"
        budget = max_bytes if max_bytes is not None else cache_mod.available_ram() // 2
        if need > budget:
            self._log(f"cache='ram' needs {need / 2**30:.1f} GiB, {budget / 2**30:.1f} GiB allowed: not caching")
            self.cache = None
            return None
        return cache_mod.ImageStore.allocate(heights, widths, torch.device("cpu"))

    def _fill_device_store(self) -> None:
        """Decode every image once (CPU workers) into the GPU store."""
        store = self.store
        assert store is not None
        todo = np.flatnonzero(store.state.numpy() == cache_mod.EMPTY).tolist()  # (every epoch: no Python loop)
        if not todo:
            return
        capped = _CappedDataset(self.dataset)
        dl = DataLoader(torch.utils.data.Subset(capped, todo), batch_size=None, num_workers=self.workers,
                        prefetch_factor=16 if self.workers else None, generator=torch.Generator().manual_seed(self.seed),
                        multiprocessing_context=worker_context(self.start_method) if self.workers else None)
        with sigterm_blocked(self.start_method):
            decoded = iter(dl)
        for index, image, reason in decoded:
            if image is None:
                store.mark_bad(index)
                self.bad_files.setdefault(int(index), reason)
            else:
                store.put(int(index), image.to(self.device, non_blocking=False))

    # -- contract
    def __len__(self) -> int:
        n = self.num_samples
        if self.world > 1:  # this process's share (see shard_order)
            n = -(-n // self.world) if self.drop_last else len(range(self.rank, n, self.world))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (the order depends on seed and epoch); except right
        after :meth:`load_state_dict`, whose epoch keeps its position (a loop that calls set_epoch
        at the start of every epoch resumes in the middle of the saved one, as with a resumable
        DataLoader and DistributedSampler.set_epoch)."""
        if self._resume and epoch == self.epoch:
            return
        self.epoch = epoch
        self.start_position = 0
        self.position = 0
        self._resume = False

    def state_dict(self) -> dict[str, int]:
        """Where the loader stands: epoch, batches delivered in it, seed."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state``'s position: the next pass starts with the batch an uninterrupted run
        would get next (later passes, as every pass without it, start the epoch from its first batch)."""
        if int(state["seed"]) != self.seed:
            raise DataError(f"loader seed {self.seed} differs from the checkpoint's {state['seed']}: resume with seed={state['seed']} (--seed {state['seed']})")
        self.epoch = int(state["epoch"])
        self.start_position = self.position = int(state["position"])
        self._resume = True

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is garbage collected,
        or at the end of a ``with build_loader(...) as loader:`` block)."""
        self._end_pass("this pass over the loader was ended by loader.close() (or the end of its with block) "
                       "before its last batch: finish the pass first, or close the loader after it")
        self._leave_parents_workers()
        _stop_workers(self._dataloader)

    # -- bad files
    @property
    def bad_count(self) -> int:
        return len(self.bad_files)

    def bad_file_list(self) -> list[BadFile]:
        """The samples skipped so far because they could not be decoded."""
        return [BadFile(i, self._name(i), r) for i, r in sorted(self.bad_files.items())]

    def write_bad_files(self, run_dir: str | Path) -> Path | None:
        """Write ``RUN_DIR/bad_files.txt`` (``path<TAB>reason``) if any sample was skipped; return its path.

        >>> import tempfile
        >>> from PIL import Image
        >>> from finetune import build_loader
        >>> from finetune.data.samples import Samples
        >>> d = tempfile.mkdtemp(); Image.new("RGB", (8, 8)).save(f"{d}/ok.png")
        >>> _ = open(f"{d}/bad.jpg", "wb").write(b"not a jpeg")
        >>> with build_loader(Samples.from_lists([f"{d}/ok.png", f"{d}/bad.jpg"], [0, 0], ["a"]),
        ...                   train=False, img_size=8, workers=0) as loader:
        ...     [labels.tolist() for _, labels in loader]          # the bad file is skipped
        [[0]]
        >>> loader.bad_count, [b.reason for b in loader.bad_file_list()]
        (1, ['not an image (cannot identify image file)'])
        >>> path = loader.write_bad_files(d)
        >>> path.name, path.read_text() == f"{d}/bad.jpg\\tnot an image (cannot identify image file)\\n"
        ('bad_files.txt', True)
        """
        if not self.bad_files:
            return None
        path = Path(run_dir) / BAD_FILES_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{b.path}\t{b.reason}" for b in self.bad_file_list()]
        path.write_text("\n".join(lines) + "\n", errors="surrogateescape")  # (file names that are not UTF-8)
        return path

    def _name(self, index: int) -> str:
        return self.samples.path(index) if self.samples is not None else f"dataset item {index}"

    def _note_bad(self, bad: list[tuple[int, str]]) -> None:
        for index, reason in bad:
            if index not in self.bad_files:
                self.bad_files[index] = reason

    # -- making batches on the device
    def _finish(self, raw: RawBatch | JpegBatch | BatchSpec | _Raised) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(raw, _Raised):
            raise raw.error
        if isinstance(raw, BatchSpec):
            return self._finish_device_store(raw)
        self._note_bad(raw.bad)
        if isinstance(raw, JpegBatch):
            return self._finish_jpeg(raw)
        images = raw.images
        if self.device.type != "cpu":  # (from the pinned copy the DataLoader made)
            images = images.to(self.device, non_blocking=True)
        out = self._normalizer(images, nchw=self.dataset.nchw)
        self._pool.give_back(raw.buffer)  # read (or copied to pinned memory): the worker may refill it
        return out, raw.labels.to(self.device, non_blocking=True)

    def _device_augment(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if seed < 0 or not self.augment:
            return x
        hwc = x.round().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
        return augment_hwc(hwc, self.augment, seed).permute(2, 0, 1).float()

    def _finish_jpeg(self, raw: JpegBatch) -> tuple[torch.Tensor, torch.Tensor]:
        s, dev = self.img_size, self.device
        n = len(raw.labels)
        datas = list(torch.split(raw.data, raw.sizes.tolist())) if len(raw.sizes) else []
        try:
            decoded = decode_jpegs_on_device(datas, dev) if datas else []
        except RuntimeError:  # one file nvjpeg cannot take: decode on CPU, crop on the device
            decoded = [read_jpeg_cpu(d).to(dev, non_blocking=True) for d in datas]
        # eval's bicubic resize is per image below (the batched kernel samples bilinearly)
        mode = "bilinear" if self.train else self.dataset.interpolation
        if (decoded and len(decoded) == n and not self.augment and mode == "bilinear"
                and len({tuple(d.shape) for d in decoded}) == 1):
            out = crop_resize_flip_batch(torch.stack(decoded), raw.boxes, s, raw.flips)  # one kernel for the batch
            return self._normalizer.normalize_float_(out), raw.labels.to(dev, non_blocking=True)
        out = torch.empty((n, 3, s, s), dtype=torch.float32, device=dev)
        ready = raw.ready.to(dev, non_blocking=True) if (~raw.is_jpeg).any() else None
        boxes, is_jpeg = raw.boxes.tolist(), raw.is_jpeg.tolist()
        flips, seeds = raw.flips.tolist(), raw.aug_seeds.tolist()
        j = 0
        for k in range(n):
            if is_jpeg[k]:
                x = crop_resize_flip_float(decoded[j], CropBox(*boxes[k]), s, flips[k], mode)
                out[k] = self._device_augment(x, seeds[k])
                j += 1
            else:
                out[k] = ready[k].permute(2, 0, 1)  # type: ignore[index]
        return self._normalizer.normalize_float_(out), raw.labels.to(dev, non_blocking=True)

    def _finish_device_store(self, spec: BatchSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """``cache='gpu'``: crop, resize and flip from the device-resident store."""
        store = self.store
        assert store is not None and self.samples is not None
        s = self.img_size
        ok = store.state.numpy()[spec.indices] != cache_mod.BAD
        keep = spec.indices[ok]
        labels = torch.from_numpy(self.samples.labels[keep]).to(self.device, non_blocking=True)
        hs, ws = store.heights[keep], store.widths[keep]
        if len(keep) and not self.augment and (hs == hs[0]).all() and (ws == ws[0]).all():
            # every image of the batch has one size: gather them, then one batched crop/resize (or none)
            grid = store.grid
            if grid is not None:
                src = grid.index_select(0, torch.from_numpy(keep).to(self.device, non_blocking=True))
            else:
                src = torch.stack([store.get(int(i)) for i in keep])
            src = src.permute(0, 3, 1, 2)
            if not self.train:
                return self._normalizer.normalize_float_(src.float()), labels
            boxes, flips = [], []
            h, w, scale = int(hs[0]), int(ws[0]), self.dataset.crop_scale
            for k in np.flatnonzero(ok).tolist():
                rng = self.dataset._rng(spec.epoch, spec.start + k * spec.stride)  # the same draws as the per-image path
                box = random_resized_crop_box(w, h, rng, scale)
                boxes.append((box.top, box.left, box.height, box.width))
                flips.append(rng.random() < 0.5)
            out = crop_resize_flip_batch(src, torch.tensor(boxes), s, torch.tensor(flips))
            return self._normalizer.normalize_float_(out), labels
        out = torch.empty((len(keep), 3, s, s), dtype=torch.float32, device=self.device)
        for k_out, (k, index) in enumerate(zip(np.flatnonzero(ok).tolist(), keep.tolist(), strict=True)):
            src = store.get(index).permute(2, 0, 1)
            if self.train:
                rng = self.dataset._rng(spec.epoch, spec.start + k * spec.stride)
                box = random_resized_crop_box(src.shape[2], src.shape[1], rng, self.dataset.crop_scale)
                flip = rng.random() < 0.5
                x = crop_resize_flip_float(src, box, s, flip)
                if self.augment:
                    x = self._device_augment(x, int(rng.integers(2**62)))
            else:
                x = src.float()
            out[k_out] = x
        return self._normalizer.normalize_float_(out), labels

    # -- iteration
    def _crash_error(self, error: RuntimeError) -> DataError:
        found = re.search(r"pid(?:\(s\))?\s+([\d,\s]+)", str(error))
        pids = {int(p) for p in re.findall(r"\d+", found.group(1))} if found else set()
        causes = [str(e) for e in (error, error.__cause__, error.__context__) if e is not None]  # (torch chains them)
        workers = getattr(getattr(self._dataloader, "_iterator", None), "_workers", [])
        killed = (any(w.pid in pids and w.exitcode == -signal.SIGKILL for w in workers)
                  or any("killed by signal: Killed" in c for c in causes))  # not a decoder's crash: most likely memory
        slots = [(int(pid), int(idx)) for pid, idx in self._slots.tolist()]  # (pid, item) of each worker
        if pids and not pids & {pid for pid, _idx in slots} and not killed:  # it never began a batch
            method = self.start_method or multiprocessing.get_all_start_methods()[0]
            if method != "fork":  # spawn / fork server: the worker imported the main script first
                return DataError(f"a data worker died before it made a batch ({error}); workers started by "
                                 f"{method} import the script being run first: is its code under "
                                 "`if __name__ == \"__main__\":`? (the worker's own error is above)")
            return DataError(f"a data worker died before it made a batch ({error}); use workers=0 (--workers 0) to see why")
        rows = [(pid, idx) for pid, idx in slots if idx >= 0]
        own = [idx for pid, idx in rows if pid in pids]
        if killed:
            during = " while decoding " + ", ".join(f"'{self._name(i)}'" for i in own) if own else ""
            return DataError(f"a data worker was killed (SIGKILL, what the out-of-memory killer sends){during} "
                             f"({error}): if memory is short, use fewer workers (--workers) or a smaller "
                             "batch_size (--batch-size)")
        names = ", ".join(f"'{self._name(i)}'" for i in own or [idx for _pid, idx in rows])
        if not names:
            return DataError(f"a data worker died between files ({error}); use workers=0 (--workers 0) to see why")
        return DataError(f"a data worker crashed while decoding {names} ({error}); "
                         f"check or remove that file, or use workers=0 (--workers 0) to see the crash directly")

    def _raw_batches(self) -> Iterator[RawBatch | JpegBatch | BatchSpec]:
        if self.cache == "gpu":
            self._fill_device_store()
            yield from _BatchSampler(self)
            return
        self._leave_parents_workers()
        with sigterm_blocked(self.start_method):  # (the workers start here, the first time)
            batches = iter(self._dataloader)
        batches._finetune_pid = os.getpid()  # type: ignore[attr-defined]  # (whose workers: _stop_workers)
        yield from batches

    def _cuda_prefetched(self, raw: Iterator[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Make the next batches on a side stream, in a background thread, while this one computes.

        The thread does the host work of a batch (reading the workers' output, nvjpeg's
        CPU stage, the random crops of the GPU cache) and queues its kernels on its own
        stream, so neither the host nor the GPU waits for it; an event per batch orders
        its use on the training stream.
        """
        side = torch.cuda.Stream(device=self.device)
        main = torch.cuda.current_stream(self.device)

        def staged() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.cuda.Event]]:
            with torch.cuda.device(self.device), torch.cuda.stream(side):  # this thread's current stream
                for r in raw:
                    x, y = self._finish(r)
                    ready = torch.cuda.Event()
                    ready.record(side)
                    yield x, y, ready

        for x, y, ready in background(staged(), depth=2):
            main.wait_event(ready)
            x.record_stream(main)  # the allocator reuses their memory only after the training stream is done
            y.record_stream(main)
            yield x, y

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raw = self._raw_batches()
        if self.prefetch == "cuda" and self.device.type == "cuda":
            return self._cuda_prefetched(raw)
        finished = map(self._finish, raw)
        if self.prefetch == "thread":
            return background(finished, depth=1)
        return finished

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # every pass is the whole epoch (as a DataLoader's: ``next(iter(loader))`` then ``list(loader)``
        # gives every batch), except the first after load_state_dict, which continues where it says
        if self._resume and self.position >= len(self):  # saved after the epoch's last batch: nothing is left
            self._resume = False
            return
        if not self._resume:
            self.position = 0
        self._resume = False
        self._end_pass("this pass over the loader was overtaken by a newer one (iter(loader) again while it was "
                       "unfinished, e.g. zip(loader, loader)): a loader makes one pass at a time, its workers and "
                       "position are shared; finish or drop a pass before starting the next, or build a second loader")
        this = _Pass()
        self._pass = weakref.ref(this)
        self.start_position = self.position
        self._pool.reset()
        batches = this.batches = self._batches()
        try:
            while True:
                if this.ended is not None:  # (with workers it would silently end, or share batches with another pass)
                    raise DataError(this.ended)
                try:
                    images, labels = next(batches)
                except StopIteration:
                    break
                self.position += 1
                # every image of the batch was unreadable: skipped, except in a shard of several processes,
                # whose batches must stay in step (the training loop skips it in all of them together)
                if len(labels) == 0 and self.world == 1:
                    continue
                yield images, labels
        except RuntimeError as e:
            if "DataLoader worker" in str(e):
                raise self._crash_error(e) from e
            raise
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            if self._pass is not None and self._pass() is this:
                self._pass = None
        self.start_position = self.position

    def _end_pass(self, why: str) -> None:
        """A new pass begins, or the loader closes: the unfinished pass (an iterator still held) ends
        here, its prefetching stopped (it would read the shared workers' batches), and raises ``why``
        if used again."""
        previous = self._pass() if self._pass is not None else None
        if previous is None:
            return
        previous.ended = why
        self._pass = None
        close = getattr(previous.batches, "close", None)
        if close is not None:
            with contextlib.suppress(ValueError):  # (being iterated in another thread this moment)
                close()


def _outlive_one_signal(_worker_id: int) -> None:
    """In a data worker: ignore the first SIGTERM / SIGINT. A scheduler's preemption (SIGTERM to
    the whole process group) or Ctrl-C reaches the workers too; torch's own worker handler
    dies of an outside SIGTERM, and the main process then fails in the middle of its step
    ("DataLoader worker is killed by signal") instead of finishing it and saving. The main
    process stops the workers itself; a second signal acts as usual, once :data:`SAME_STOP_S`
    have passed since the first (before that it is the same stop, delivered twice)."""
    first: list[float] = []

    def once(signum: int, frame: Any) -> None:
        if not first:
            first.append(time.monotonic())
        if time.monotonic() - first[0] < SAME_STOP_S:
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signum)  # (this one acts as usual: SIGTERM ends the worker, SIGINT raises)

    signal.signal(signal.SIGTERM, once)
    signal.signal(signal.SIGINT, once)
    unblock_sigterm()  # (blocked from its start: sigterm_blocked)


def _new_slots(workers: int) -> torch.Tensor:
    """int64 [workers, 2] in shared memory: each worker's pid and the sample it is decoding (-1: none)."""
    slots = cache_mod._shared_uint8(max(workers, 1) * 16).view(torch.int64).view(max(workers, 1), 2)
    return slots.fill_(-1)


def _stop_workers(dataloader: DataLoader) -> None:
    it = getattr(dataloader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        if getattr(it, "_finetune_pid", os.getpid()) == os.getpid():
            if getattr(it, "_worker_pids_set", False):
                # stopping them: one that dies of a signal meanwhile (torchrun's SIGTERM to the process group) is no error
                from torch.utils.data._utils import signal_handling

                with contextlib.suppress(ValueError):
                    signal_handling._remove_worker_pids(id(it))
                it._worker_pids_set = False
            it._shutdown_workers()
        else:  # a fork of the process that started them: theirs to stop (their stop event is shared)
            it._shutdown = True
            # ... but this copy's registry of worker pids (torch's SIGCHLD check) forgets them: else a
            # new iterator that happens to get the freed one's id() here fails ("_set_worker_pids
            # should be called only once"): a forked child's next pass failed now and then
            from torch.utils.data._utils import signal_handling

            with contextlib.suppress(ValueError):  # (not registered: nothing to forget)
                signal_handling._remove_worker_pids(id(it))
    dataloader._iterator = None


def read_jpeg_cpu(data: torch.Tensor) -> torch.Tensor:
    """CPU decode of JPEG bytes into uint8 CHW (the fallback of the device path).

    >>> import tempfile
    >>> from PIL import Image
    >>> from finetune.data.decode import read_file
    >>> from finetune.data.loader import read_jpeg_cpu
    >>> path = tempfile.mkdtemp() + "/a.jpg"; Image.new("L", (40, 30), 128).save(path)   # greyscale
    >>> x = read_jpeg_cpu(read_file(path))
    >>> x.shape, x.dtype, x[:, 0, 0].tolist()
    (torch.Size([3, 30, 40]), torch.uint8, [128, 128, 128])
    """
    import torchvision.io

    return torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)


# --------------------------------------------------------------------------- bad files
def scan_bad_files(samples: Samples, workers: int = 0) -> list[BadFile]:
    """Decode every file completely; return those that fail (unreadable, truncated, not images).

    >>> s = Samples.from_lists(["/nonexistent.jpg"], [0], ["a"])
    >>> [b.index for b in scan_bad_files(s)]
    [0]
    """
    paths = [samples.path(i) for i in range(len(samples))]
    if workers > 1 and len(paths) > 64:
        from finetune.data.pools import process_pool

        with process_pool(workers) as pool:  # its workers end with the block, also inside train()
            reasons = pool.map(check_file, paths, chunksize=32)
    else:
        reasons = [check_file(p) for p in paths]
    return [BadFile(i, p, r) for i, (p, r) in enumerate(zip(paths, reasons, strict=True)) if r is not None]


# --------------------------------------------------------------------------- building
_PROBES: dict[tuple, Any] = {}


def raise_for_bad_files(*sets: Samples, workers: int = 0) -> None:
    """Raise one :class:`DataError` listing every file of ``sets`` (e.g. the train and val splits
    together, as ``--strict-data`` checks them) that cannot be decoded; return if there is none.

    >>> good = Samples.from_lists([], [], ["a"])
    >>> raise_for_bad_files(good, Samples.from_lists(["/nonexistent.jpg"], [0], ["a"]))
    Traceback (most recent call last):
    finetune.errors.DataError: 1 of 1 images cannot be read:
      /nonexistent.jpg: FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent.jpg'
    fix or remove them, or drop strict=True (--strict-data) to skip them
    """
    bad = [b for samples in sets for b in scan_bad_files(samples, workers=workers)]
    if bad:
        listing = "\n".join(f"  {b.path}: {b.reason}" for b in bad)
        raise DataError(f"{len(bad)} of {sum(len(s) for s in sets)} images cannot be read:\n{listing}\n"
                        f"fix or remove them, or drop strict=True (--strict-data) to skip them")


def path_samples(source: str | Path, train: bool, seed: int = 0) -> Samples:
    """The samples of a path given to :func:`build_loader`.

    A split source gives the part ``train`` asks for: a folder with ``train/`` (and ``val/``;
    without it, 10 % of ``train/`` held out as ``finetune train`` does), a CSV with a split
    column. Any other source, a folder of class sub-folders (torchvision's ``ImageFolder(root)``)
    or a CSV without a split column, gives all its images, to train and to evaluate alike:
    holding out a part is ``finetune train``'s business (``--val-split``), not the loader's.

    >>> import pathlib, tempfile
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("cat/0.jpg", "cat/1.jpg", "dog/0.jpg"):
    ...     (root / name).parent.mkdir(exist_ok=True); Image.new("RGB", (8, 8)).save(root / name)
    >>> len(path_samples(root, train=False)), len(path_samples(root, train=True))
    (3, 3)
    """
    from finetune.data.samples import (
        LIST_SUFFIXES,
        TRAIN_SPLIT_NAMES,
        VAL_DIR_NAMES,
        read_csv,
        scan_folder,
        split_dir,
    )

    path = Path(source)
    split_source = False
    if path.is_dir():
        split_source = split_dir(path, (*TRAIN_SPLIT_NAMES, *VAL_DIR_NAMES)) is not None
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        samples, split = read_csv(path)
        if split is None or not np.isin(split, (*TRAIN_SPLIT_NAMES, *VAL_DIR_NAMES)).any():
            return samples
        split_source = True
    if split_source or not path.is_dir():  # (find_splits also says what is wrong with a path that is neither)
        train_s, val_s = find_splits(path, seed=seed)
        return train_s if train else val_s
    return scan_folder(path)


def _resolve_source(source: Any, train: bool, seed: int) -> tuple[Samples | None, Any]:
    if isinstance(source, Samples):
        return source, None
    if isinstance(source, (str, Path)):
        if str(source) == "shapes":
            from finetune.data.shapes import shapes_root

            source = shapes_root()
        return path_samples(Path(source).expanduser(), train, seed), None
    folder = image_folder_samples(source)
    if folder is not None:
        return folder, None
    if isinstance(source, torch.utils.data.IterableDataset):
        raise DataError(f"cannot load from a {type(source).__name__}: an IterableDataset has no items by index; "
                        "give a map-style dataset (__getitem__ and __len__), a folder or a CSV")
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        return None, source
    raise DataError(f"cannot load from a {type(source).__name__}: give a folder, a CSV, 'shapes', Samples or a dataset")


def image_folder_samples(source: Any) -> Samples | None:
    """The files of a torchvision ``ImageFolder`` that the loader may read itself (its own decoder
    and transforms), or None: only where the dataset's items are those files' images with their
    folder's label: torchvision's default loader, no ``transform`` nor ``target_transform``,
    DatasetFolder's own ``__getitem__``. Any other dataset (a custom ``loader`` such as
    ``np.load``, remapped labels, a ``transform`` of its own) is read item by item, as it defines them.

    >>> import tempfile, numpy as np, torchvision
    >>> from PIL import Image
    >>> d = tempfile.mkdtemp(); os.mkdir(f"{d}/a"); Image.new("RGB", (8, 8)).save(f"{d}/a/0.png")
    >>> len(image_folder_samples(torchvision.datasets.ImageFolder(d)))
    1
    >>> image_folder_samples(torchvision.datasets.ImageFolder(d, target_transform=lambda y: y + 1)) is None
    True
    >>> image_folder_samples(torchvision.datasets.ImageFolder(d, transform=lambda im: im.convert("L"))) is None
    True
    """
    from torchvision.datasets import DatasetFolder
    from torchvision.datasets.folder import default_loader, pil_loader

    if not isinstance(source, DatasetFolder) or type(source).__getitem__ is not DatasetFolder.__getitem__:
        return None
    if (source.loader not in (default_loader, pil_loader) or source.transform is not None
            or source.target_transform is not None):
        return None
    items = source.samples
    if not items or not all(isinstance(p, (str, os.PathLike)) for p, _ in items):
        return None
    return Samples.from_lists([os.fspath(p) for p, _ in items], [int(y) for _, y in items], source.classes)


def _crop_scale(value: Any) -> tuple[float, float]:
    """``crop_scale`` of :func:`build_loader` as (min, max) with 0 < min <= max <= 1, the share of the
    image's area a RandomResizedCrop keeps (as ``--crop-scale`` is checked), or a :class:`ConfigError`:
    outside that range every draw fails and the crop is silently the whole image (min > 1, 0), or
    each image fails as an unreadable file (min < 0: "math domain error").

    >>> _crop_scale([0.08, 1])
    (0.08, 1.0)
    >>> _crop_scale((-0.5, 1.0))
    Traceback (most recent call last):
    finetune.errors.ConfigError: crop_scale must be (min, max) with 0 < min <= max <= 1 (the share of the image's area a random crop keeps; torchvision's default: (0.08, 1.0)), got (-0.5, 1.0)
    """
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not 0 < lo <= hi <= 1:  # (False for NaN too)
        raise ConfigError(f"crop_scale must be (min, max) with 0 < min <= max <= 1 (the share of the image's area "
                          f"a random crop keeps; torchvision's default: (0.08, 1.0)), got {value!r}")
    return lo, hi


def channel_values(name: str, values: Any) -> tuple[float, float, float]:
    """``mean`` or ``std`` of :func:`build_loader` as three numbers on the 0-1 scale of
    ``ToTensor()``'s images (one number: the same for every channel, as torchvision's ``Normalize``).

    >>> channel_values("std", [0.5]), channel_values("mean", torch.tensor([0.25, 0.5, 0.75]))
    ((0.5, 0.5, 0.5), (0.25, 0.5, 0.75))
    >>> channel_values("mean", (123.675, 116.28, 103.53))
    Traceback (most recent call last):
    finetune.errors.ConfigError: mean must be 3 numbers from 0 to 1 (the 0-1 scale of ToTensor()'s images; ImageNet's: (0.485, 0.456, 0.406)), got (123.675, 116.28, 103.53): values on the 0-255 scale are divided by 255
    """
    try:
        given = values.tolist() if isinstance(values, (torch.Tensor, np.ndarray)) else values
        numbers = tuple(float(v) for v in (given if isinstance(given, (list, tuple)) else [given]))
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) == 1:
        numbers = numbers * 3
    low_ok = (lambda v: v >= 0) if name == "mean" else (lambda v: v > 0)
    if len(numbers) == 3 and all(math.isfinite(v) and low_ok(v) and v <= 1 for v in numbers):
        return numbers  # type: ignore[return-value]
    imagenet = IMAGENET_MEAN if name == "mean" else IMAGENET_STD
    hint = ": values on the 0-255 scale are divided by 255" if any(v > 1 for v in numbers) else ""
    lowest = "from 0 to 1" if name == "mean" else "above 0, at most 1"
    raise ConfigError(f"{name} must be 3 numbers {lowest} (the 0-1 scale of ToTensor()'s images; ImageNet's: "
                      f"{imagenet}), got {values!r}{hint}")


def _probe_key(samples: Samples | None, num: int, **kw: Any) -> tuple:
    ends = (samples.path(0), samples.path(num - 1)) if samples is not None else ()
    return (num, ends, os.cpu_count(), *sorted(kw.items()))


def build_loader(source: Samples | str | Path | Any, *, train: bool, img_size: int = 224, batch_size: int = 64,
                 workers: int | str = "auto", device: str | torch.device = "cpu", decode: str = "auto",
                 cache: str | None = None, seed: int = 0, drop_last: bool | None = None,
                 channels_last: bool = False, mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD, crop_scale: tuple[float, float] = (0.08, 1.0),
                 augment: str | None = None, prefetch: str = "auto", strict: bool = False,
                 cache_side: int | None = None, cache_max_bytes: int | None = None,
                 probe_seconds: float = 1.0, log: Callable[[str], None] | None = None,
                 dct_scaling: bool | None = None, shuffle: bool | None = None,
                 shard: tuple[int, int] | None = None, crop_pct: float = EVAL_CROP_PCT,
                 interpolation: str = "bilinear", crop_mode: str = "center",
                 start_method: str | None = None) -> Loader:
    """Build a loader over ``source`` (Samples, an ImageFolder root, a CSV, 'shapes', or a dataset object).

    A path gives all its images, except a split one (a folder with ``train/`` and ``val/``, a CSV
    with a split column, 'shapes'), which gives the part ``train`` asks for (:func:`path_samples`).

    Training loaders shuffle (seeded by ``seed`` and the epoch), apply
    RandomResizedCrop(``crop_scale``) + horizontal flip (+ ``augment``:
    'trivialaugment' or 'randaugment') and drop the last partial batch (``drop_last``; not when
    there are fewer images than one batch: that one partial batch is the epoch); eval
    loaders keep file order and apply resize(img_size/``crop_pct``, ``interpolation``) + center
    crop (torchvision's defaults 0.875 and "bilinear"; a timm model's or a torchvision weight's own
    values: :func:`finetune.models.eval_transform_of`; ``crop_mode="squash"`` resizes both sides,
    as timm's squash mode). Images are normalised with ``mean``/``std`` on ``device``.

    * ``shuffle``: the seeded per-epoch order without the training transform
      (``train=False, shuffle=True, drop_last=True``: training batches, no augmentation);
      default: ``train``;
    * ``workers``: processes decoding in parallel (0: in this process), or "auto": a short
      probe (``probe_seconds`` per candidate) picks the fastest here and logs it;
    * ``log``: where the loader's messages go (what the probe picked, a cache that did not
      fit); default: nowhere, nothing is printed;
    * ``decode``: "cpu", "gpu" (nvjpeg, needs CUDA) or "auto" (the probe
      decides on CUDA when ``workers="auto"``, else "cpu");
    * ``cache``: None, "ram" (decoded once into shared memory, shorter side
      ``cache_side``, default img_size/0.875) or "gpu" (that store on the GPU);
      it falls back, with a message, when it does not fit ``cache_max_bytes``
      (default half the free RAM / GPU memory);
    * ``prefetch``: "auto" (CUDA side-stream on CUDA, else none), "none",
      "thread" (a background thread, like prefetch_generator) or "cuda";
    * ``dct_scaling``: decode JPEGs at 1/2, 1/4 or 1/8 scale when the crop is at
      least twice, 4 or 8 times the output size (close to, not equal to, a full
      decode: libjpeg's scaled IDCT is another downsampling filter); False: always
      full size, torchvision's result within rounding. Default (None): on for
      training transforms, off for eval, so evaluation equals torchvision's
      ``Resize`` + ``CenterCrop`` within rounding whatever the image size;
    * ``strict``: decode every file first and raise listing all the bad ones;
      otherwise bad files are skipped and counted (``loader.bad_files``,
      ``loader.write_bad_files(run_dir)``);
    * ``shard``: ``(rank, world)`` when ``world`` processes train together (torchrun): this
      process gets every ``world``-th sample of each epoch's order (training pads the order so
      that all get as many batches; evaluation counts each sample once), with the
      augmentation the sample would get in one process;
    * ``start_method``: how worker processes start ("fork", "forkserver", "spawn"); default:
      :func:`finetune.data.pools.worker_start_method` ("spawn" for a shard of several processes:
      forking a process whose collective threads call into Python can hang the worker).

    >>> from finetune import build_loader
    >>> from finetune.data.samples import Samples
    >>> build_loader(Samples.from_lists(["x.jpg"], [0], ["a"]), train=False, workers=0).batch_size
    64
    """
    if workers != "auto":
        try:
            if isinstance(workers, bool) or isinstance(workers, float):
                raise ValueError
            workers = int(workers)
        except (TypeError, ValueError):
            raise ConfigError(f"workers must be a whole number or 'auto', got {workers!r}") from None
        if workers < 0:
            raise ConfigError(f"workers must be 0 (decode in this process) or more, or 'auto', got {workers}")
    for name, value in (("batch_size", batch_size), ("img_size", img_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
    samples, obj = _resolve_source(source, train, seed)
    if decode not in DECODES:
        raise DataError(f"decode must be one of {DECODES}, got {decode!r}")
    if cache not in CACHES:
        raise DataError(f"cache must be one of {CACHES[1:]}, got {cache!r}")
    if prefetch not in PREFETCHES:
        raise DataError(f"prefetch must be one of {PREFETCHES}, got {prefetch!r}")
    if not (isinstance(crop_pct, (int, float)) and 0 < crop_pct <= 1):
        raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    crop_scale = _crop_scale(crop_scale)
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if crop_mode not in CROP_MODES:
        raise ConfigError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")
    if augment is not None and augment not in AUGMENTS:
        raise DataError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if start_method is not None and start_method not in multiprocessing.get_all_start_methods():
        raise ConfigError(f"start_method must be one of {tuple(multiprocessing.get_all_start_methods())} here, "
                          f"got {start_method!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(dev)!r}: CUDA is not available here; use device='cpu'")
    if dev.type == "meta":  # torch makes tensors there, without values: every batch would be an empty shell
        raise ConfigError("device 'meta' holds no values (batches there would have shapes but no pixels): give the "
                          "device the model trains on once its weights are real, e.g. device='cpu' or 'cuda'")
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError):  # (mps without MPS, a CUDA index past the last GPU, ...)
        raise ConfigError(f"device {str(dev)!r} is not available here (torch cannot make a tensor on it); "
                          "use device='cpu'") from None
    mean, std = channel_values("mean", mean), channel_values("std", std)
    if decode == "gpu" and (dev.type != "cuda" or samples is None):
        raise DataError("decode='gpu' needs device='cuda' and image files")
    if cache == "gpu" and dev.type != "cuda":
        raise DataError("cache='gpu' needs device='cuda': use cache='ram'")
    if prefetch == "cuda" and dev.type != "cuda":
        raise DataError("prefetch='cuda' needs device='cuda': use prefetch='thread' or 'none'")
    if strict:
        if samples is None:
            raise DataError("strict data checking needs image files")
        raise_for_bad_files(samples, workers=workers if isinstance(workers, int) else (os.cpu_count() or 1))
    if drop_last is None:
        drop_last = train
    rank, world = shard if shard is not None else (0, 1)
    if not (isinstance(rank, int) and isinstance(world, int) and 0 <= rank < world):
        raise ConfigError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
    say = log or (lambda msg: None)  # nothing is printed unless asked for (-q, eval, library use)
    common = dict(train=train, img_size=img_size, batch_size=batch_size, device=dev, seed=seed,
                  drop_last=drop_last, channels_last=channels_last, mean=mean, std=std, crop_scale=crop_scale,
                  augment=augment, prefetch=prefetch, cache_side=cache_side, cache_max_bytes=cache_max_bytes,
                  dataset=obj, log=say, dct_scaling=dct_scaling, shuffle=shuffle, shard=(rank, world),
                  crop_pct=float(crop_pct), interpolation=interpolation, crop_mode=crop_mode,
                  start_method=start_method)
    probe_result = None
    if workers == "auto":
        workers, decode, probe_result = _auto(samples, obj, decode, probe_seconds, common)
        say(probe_result.describe())
    if decode == "auto":
        decode = "cpu"
    loader = Loader(samples, workers=workers, decode=decode, cache=cache, **common)  # type: ignore[arg-type]
    loader.probe = probe_result
    return loader


def _auto(samples: Samples | None, obj: Any, decode: str, seconds: float, common: dict[str, Any]) -> tuple[int, str, Any]:
    """Pick workers (and decode mode) for ``workers='auto'``: measured, remembered per dataset."""
    from finetune.data.probe import ProbeResult, candidate_workers, probe

    num = len(samples) if samples is not None else len(obj)
    # several training processes on this machine (torchrun sets LOCAL_WORLD_SIZE) share its cores
    cpus = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    dev = common["device"]
    decodes = [decode] if decode != "auto" else (["cpu", "gpu"] if dev.type == "cuda" and samples is not None else ["cpu"])
    n_batches = num // common["batch_size"]
    if n_batches < 4:  # too little data to measure, and worker start-up would dominate
        return 0, decodes[0], ProbeResult(0, decodes[0], (), f"{num} images: too few to measure, no workers")
    key = _probe_key(samples, num, decodes=tuple(decodes), **{k: str(v) for k, v in common.items() if k not in ("log", "dataset")})
    if key not in _PROBES:
        probe_common = {**common, "log": lambda msg: None}

        def make(w: int, d: str) -> Loader:
            return Loader(samples, workers=w, decode=d, cache=None, **probe_common)

        _PROBES[key] = probe(make, [(w, d) for d in decodes for w in candidate_workers(cpus)], seconds)
    result = _PROBES[key]
    return result.workers, result.decode, result


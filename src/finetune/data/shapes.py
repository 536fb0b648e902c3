"""The built-in ``shapes`` dataset: procedurally drawn shapes on cluttered, textured backgrounds.

Written once as real JPEG files in an ImageFolder layout (``train/<class>/*.jpg``,
``val/<class>/*.jpg``) plus ``boxes.csv`` (``split,path,label,x0,y0,x1,y1``)
with each object's bounding box. The same parameters and seed give the same
bytes, so the cache directory is keyed by them.

>>> import tempfile
>>> root = make_shapes(tempfile.mkdtemp(), per_class=2, val_per_class=1, size=32, seed=0)
>>> sorted(p.name for p in (root / "train").iterdir())[:3]
['circle', 'cross', 'heart']
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "heart")
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapesSpec:
    """Parameters of a shapes dataset; they key its cache directory.

    >>> from finetune.data.shapes import ShapesSpec
    >>> ShapesSpec(per_class=2, size=32).key()  # doctest: +ELLIPSIS
    'shapes-32px-2pc-s0-...'
    >>> ShapesSpec(seed=1).key() != ShapesSpec(seed=2).key()
    True
    """

    per_class: int = 500
    val_per_class: int = 50
    size: int = 64
    seed: int = 0
    version: int = 2  # bump when the drawing changes

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return f"shapes-{self.size}px-{self.per_class}pc-s{self.seed}-{hashlib.sha1(blob).hexdigest()[:8]}"


def cache_dir() -> Path:
    """Where generated datasets live: ``$FINETUNE_CACHE`` or ``~/.cache/finetune``.

    >>> import os, pathlib
    >>> from unittest import mock
    >>> from finetune.data.shapes import cache_dir
    >>> with mock.patch.dict(os.environ, {"FINETUNE_CACHE": "/data/cache"}):
    ...     cache_dir()
    PosixPath('/data/cache')
    >>> with mock.patch.dict(os.environ):
    ...     _ = os.environ.pop("FINETUNE_CACHE", None)
    ...     cache_dir() == pathlib.Path.home() / ".cache" / "finetune"
    True
    """
    env = os.environ.get("FINETUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "finetune"


def shapes_root(spec: ShapesSpec | None = None) -> Path:
    """Return the cached dataset for ``spec``, generating it on first use.

    >>> import os, tempfile
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"FINETUNE_CACHE": tempfile.mkdtemp()}):
    ...     root = shapes_root(ShapesSpec(per_class=2, val_per_class=1, size=32))
    >>> (root / "boxes.csv").exists()
    True
    """
    spec = spec or ShapesSpec()
    root = cache_dir() / spec.key()
    if (root / ".complete").exists():
        return root
    return make_shapes(root, per_class=spec.per_class, val_per_class=spec.val_per_class, size=spec.size, seed=spec.seed)


# --------------------------------------------------------------------------- drawing
def _polygon(kind: str, r: float) -> list[list[tuple[float, float]]]:
    """Outline(s) of a shape of radius ``r`` centred at the origin (before rotation)."""

    def regular(n: int, radius: float, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
        return [(radius * math.cos(phase + 2 * math.pi * i / n), radius * math.sin(phase + 2 * math.pi * i / n)) for i in range(n)]

    if kind == "circle":
        return [regular(64, r)]
    if kind == "square":
        return [regular(4, r * 1.1, math.pi / 4)]
    if kind == "triangle":
        return [regular(3, r * 1.15)]
    if kind == "hexagon":
        return [regular(6, r)]
    if kind == "star":
        pts = []
        for i in range(10):
            rad = r * 1.1 if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + math.pi * i / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        return [pts]
    if kind == "cross":
        w = r * 0.33
        return [[(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]]
    if kind == "heart":
        pts = []
        for i in range(64):
            t = 2 * math.pi * i / 64
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 16, (y + 2) * r / 16))
        return [pts]
    if kind == "ring":
        return [regular(64, r), regular(64, r * 0.55)]  # second outline is cut out
    raise ValueError(kind)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A colour gradient with low-frequency blotches and pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle) + 1) / 2
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    coarse = rng.normal(0, 18, (max(2, size // 8), max(2, size // 8), 3)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float32) - 128
    img = img + blotch + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if np.abs(c - background).sum() > 250:
            return tuple(int(v) for v in c)
    return tuple(int(v) for v in 255 - background)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """Thin lines, arcs and dots: edges and colours that are not any class."""
    for _ in range(int(rng.integers(1, 4))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        width = max(1, int(size * rng.uniform(0.005, 0.012)))
        if kind == 0:
            draw.line((x0, y0, x1, y1), fill=colour, width=width)
        elif kind == 1:
            box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)
            draw.arc(box, float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=colour, width=width)
        else:
            r = size * rng.uniform(0.01, 0.03)
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Draw one image of ``kind``; return it and the object's box ``(x0, y0, x1, y1)``.

    >>> img, box = draw_shape("star", 64, np.random.default_rng(0))
    >>> img.size, all(0 <= v <= 64 for v in box)
    ((64, 64), True)
    """
    big = size * _SUPERSAMPLE
    bg = _background(rng, size).resize((big, big), Image.BILINEAR)
    draw = ImageDraw.Draw(bg)
    _clutter(draw, rng, big)
    r = big * rng.uniform(0.22, 0.34)
    cx, cy = (float(v) for v in rng.uniform(r * 1.1, big - r * 1.1, 2))
    rot = rng.uniform(0, 2 * math.pi)
    cos, sin = math.cos(rot), math.sin(rot)
    outlines = [[(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in pts] for pts in _polygon(kind, r)]
    mask = Image.new("L", (big, big), 0)
    mdraw = ImageDraw.Draw(mask)
    mdraw.polygon(outlines[0], fill=255)
    for hole in outlines[1:]:
        mdraw.polygon(hole, fill=0)
    local = np.asarray(bg, np.float32)[np.asarray(mask) > 0].mean(0)  # what the object sits on
    colour = _contrasting_colour(rng, local)
    fill = Image.new("RGB", (big, big), colour)
    if rng.random() < 0.25:  # a textured object now and then
        noise = rng.normal(0, 15, (size, size, 3))
        fill = Image.fromarray(np.clip(np.asarray(fill, np.float32)[:size, :size] + noise, 0, 255).astype(np.uint8)).resize((big, big))
    bg.paste(fill, (0, 0), mask)
    if rng.random() < 0.25:  # an occluding line across the object now and then
        draw.line((cx - r, cy + rng.uniform(-r, r), cx + r, cy + rng.uniform(-r, r)),
                  fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=max(1, big // 150))
    img = bg.resize((size, size), Image.LANCZOS)
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.6)))
    x0, y0, x1, y1 = mask.getbbox() or (0, 0, big, big)
    box = (x0 // _SUPERSAMPLE, y0 // _SUPERSAMPLE, -(-x1 // _SUPERSAMPLE), -(-y1 // _SUPERSAMPLE))
    return img, box


def _draw_class(job: tuple) -> list[tuple]:
    """Draw and save one split's images of one class; return their boxes.csv rows."""
    tmp, split, n, rng_key, kind, size, quality = job
    rng = np.random.default_rng(rng_key)
    folder = tmp / split / kind
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img, box = draw_shape(kind, size, rng)
        rel = f"{split}/{kind}/{kind}_{i:05d}.jpg"
        img.save(tmp / rel, quality=quality)
        rows.append((split, rel, kind, *box))
    return rows


def make_shapes(root: str | Path, *, per_class: int = 300, val_per_class: int | None = None,
                size: int = 64, seed: int = 0, quality: int = 90) -> Path:
    """Write the shapes dataset into ``root`` and return ``root``.

    ``val_per_class`` defaults to a sixth of ``per_class`` (at least 1). Writing
    goes to a temporary sibling folder renamed into place at the end, so an
    interrupted run never leaves a half-written dataset behind.

    >>> import tempfile
    >>> from finetune import make_shapes
    >>> root = make_shapes(tempfile.mkdtemp() + "/shapes", per_class=2, val_per_class=1, size=32)
    >>> len(list(root.glob("train/*/*.jpg"))), len(list(root.glob("val/*/*.jpg")))
    (16, 8)
    >>> (root / "boxes.csv").read_text().splitlines()[0]
    'split,path,label,x0,y0,x1,y1'
    >>> again = make_shapes(tempfile.mkdtemp() + "/shapes", per_class=2, val_per_class=1, size=32)
    >>> (again / "train/star/star_00000.jpg").read_bytes() == (root / "train/star/star_00000.jpg").read_bytes()
    True
    """
    root = Path(root)
    if val_per_class is None:
        val_per_class = max(1, per_class // 6)
    if (root / ".complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    jobs = [(tmp, split, n, [seed, split_seed, label], kind, size, quality)
            for split, n, split_seed in (("train", per_class, 0), ("val", val_per_class, 1))
            for label, kind in enumerate(CLASSES)]
    workers = min(len(jobs), os.cpu_count() or 1)
    try:
        if workers > 1 and per_class * len(CLASSES) >= 400:  # one process per core; each class has its own RNG
            import multiprocessing

            # (a Pool, not a ProcessPoolExecutor: leaving the block on Ctrl-C/SIGTERM terminates the
            # workers at once instead of waiting for the classes they are drawing)
            with multiprocessing.get_context().Pool(workers) as pool:
                parts = pool.map(_draw_class, jobs, chunksize=1)
        else:
            parts = [_draw_class(job) for job in jobs]
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # interrupted: no half-written folder left behind
        raise
    rows = [row for part in parts for row in part]
    with (tmp / "boxes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "label", "x0", "y0", "x1", "y1"])
        w.writerows(rows)
    (tmp / "spec.json").write_text(json.dumps({"per_class": per_class, "val_per_class": val_per_class,
                                               "size": size, "seed": seed, "classes": CLASSES}))
    (tmp / ".complete").touch()
    if root.exists():  # an incomplete earlier attempt
        shutil.rmtree(root)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / ".complete").exists():
            raise
    return root

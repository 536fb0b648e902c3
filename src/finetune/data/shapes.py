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
import re
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from finetune.processes import pid_alive

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
    from finetune.errors import DataError

    spec = spec or ShapesSpec()
    root = cache_dir() / spec.key()
    if (root / ".complete").exists():
        return root
    try:
        return make_shapes(root, per_class=spec.per_class, val_per_class=spec.val_per_class, size=spec.size,
                           seed=spec.seed)
    except (OSError, DataError) as e:  # a cache that cannot be written (read-only home, full disk): not --out's fault
        cause = e if isinstance(e, OSError) else e.__cause__
        if not isinstance(cause, OSError):
            raise
        why = cause.strerror or str(cause)
        raise DataError(f"cannot write the built-in shapes dataset into the cache '{root.parent}' "
                        f"($FINETUNE_CACHE, else ~/.cache/finetune): {why}: set FINETUNE_CACHE to a writable "
                        "folder with room, or train on your own images (--data)") from e


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


def _check_number(name: str, value: object, low: int, what: str = "") -> int:
    """``value`` as an int of at least ``low``, or a ConfigError naming ``name``."""
    from finetune.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be a whole number{what}, got {value!r}")
    if value < low:
        raise ConfigError(f"{name} must be at least {low}{what}, got {value}")
    return int(value)


_OUR_FILES = frozenset({"boxes.csv", "spec.json"})


def _is_our_leftover(root: Path) -> bool:
    """Whether the folder ``root`` holds nothing but what :func:`make_shapes` writes (or nothing at all):
    ``train/<class>/<class>_NNNNN.jpg``, ``val/…``, ``boxes.csv``, ``spec.json``. Only such a folder may be
    replaced; anything else in it (or a folder that cannot be read) makes it someone else's."""
    try:
        for entry in os.scandir(root):
            if entry.is_symlink():
                return False
            if entry.name in _OUR_FILES and entry.is_file():
                continue
            if entry.name not in ("train", "val") or not entry.is_dir():
                return False
            for cls in os.scandir(entry.path):
                if cls.is_symlink() or cls.name not in CLASSES or not cls.is_dir():
                    return False
                for f in os.scandir(cls.path):
                    stem, ext = os.path.splitext(f.name)
                    if (f.is_symlink() or not f.is_file() or ext != ".jpg" or not stem.startswith(cls.name + "_")
                            or not stem[len(cls.name) + 1:].isdigit()):
                        return False
    except OSError:
        return False
    return True


def _existing(root: Path, spec: dict) -> bool:
    """True when ``root`` already holds the complete dataset of ``spec``; False when it is free to
    write (absent, empty, or an incomplete earlier attempt of ours); a DataError otherwise."""
    from finetune.errors import DataError

    if not os.path.lexists(root):
        return False
    if not root.is_dir():
        kind = "a broken link" if root.is_symlink() else "a file"
        raise DataError(f"'{root}' is {kind}, not a folder: give a new or empty folder for the shapes dataset")
    if (root / ".complete").exists():
        try:
            found = json.loads((root / "spec.json").read_text())
        except (OSError, ValueError):
            found = None
        if not isinstance(found, dict):
            raise DataError(f"'{root}' holds a shapes dataset without a readable spec.json: "
                            f"give another folder, or remove it first")
        found = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in found.items()}
        differ = [k for k, v in spec.items() if (k in found or k not in ("quality", "version")) and found.get(k) != v]
        if differ:
            have = ", ".join(f"{k}={found.get(k)!r}" for k in differ)
            want = ", ".join(f"{k}={spec[k]!r}" for k in differ)
            raise DataError(f"'{root}' already holds a shapes dataset with {have} (asked for {want}): "
                            f"give another folder, or remove it first")
        return True
    if not _is_our_leftover(root):
        names = sorted(os.listdir(root)) if os.access(root, os.R_OK) else []
        held = f" (it holds {', '.join(repr(n) for n in names[:3])}{'…' if len(names) > 3 else ''})" if names else ""
        raise DataError(f"'{root}' already exists and is not a shapes dataset{held}: give a new or empty "
                        f"folder; nothing was changed")
    return False


def _writer_tag() -> str:
    """This process's part of a temporary folder's name: host and pid (a cache in a home folder shared by
    several machines: a pid says whether its writer lives only on its own host)."""
    import socket

    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) + f"-{os.getpid()}"


def _remove_stale_temp_folders(root: Path) -> None:
    """The temporary folders of earlier writers of ``root`` on this host that died (kill -9) before renaming
    theirs into place are litter: remove them. Those of live processes (another process drawing the same
    dataset) and of other hosts stay."""
    host = _writer_tag().rsplit("-", 1)[0]
    own = re.compile(re.escape(f".{root.name}.{host}-") + r"(\d+)\.[a-z0-9_]+")
    try:
        names = os.listdir(root.parent)
    except OSError:
        return
    for name in names:
        m = own.fullmatch(name)
        if m is not None and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            shutil.rmtree(root.parent / name, ignore_errors=True)


def make_shapes(root: str | Path, *, per_class: int = 300, val_per_class: int | None = None,
                size: int = 64, seed: int = 0, quality: int = 90) -> Path:
    """Write the shapes dataset into ``root`` and return ``root``.

    ``val_per_class`` defaults to a sixth of ``per_class`` (at least 1). Writing
    goes to a temporary sibling folder renamed into place at the end, so an
    interrupted run never leaves a half-written dataset behind. ``root`` may be
    absent or an empty folder; one that already holds this very dataset (same
    ``spec.json``) is returned as it is; anything else there is a ``DataError``:
    a folder of other files is never replaced.

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
    >>> make_shapes(root, per_class=3, val_per_class=1, size=32)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.DataError: '...shapes' already holds a shapes dataset with per_class=2 (asked for per_class=3): ...
    """
    root = Path(root)
    per_class = _check_number("per_class", per_class, 1, " (training images per class)")
    val_per_class = max(1, per_class // 6) if val_per_class is None else _check_number("val_per_class", val_per_class, 1)
    size = _check_number("size", size, 16, " (pixels)")
    seed = _check_number("seed", seed, 0)
    quality = _check_number("quality", quality, 1)
    if quality > 100:
        from finetune.errors import ConfigError

        raise ConfigError(f"quality must be at most 100 (JPEG quality), got {quality}")
    spec = {"per_class": per_class, "val_per_class": val_per_class, "size": size, "seed": seed,
            "classes": list(CLASSES), "quality": quality, "version": ShapesSpec.version}
    if root.is_symlink() and root.is_dir():  # a link to a folder: write where it points
        root = Path(os.path.realpath(root))
    if _existing(root, spec):
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_folders(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.{_writer_tag()}.", dir=root.parent))
    except OSError as e:
        from finetune.errors import DataError, describe_os_error

        raise DataError(f"cannot write the shapes dataset '{root}': {describe_os_error(e)}") from e
    jobs = [(tmp, split, n, [seed, split_seed, label], kind, size, quality)
            for split, n, split_seed in (("train", per_class, 0), ("val", val_per_class, 1))
            for label, kind in enumerate(CLASSES)]
    workers = min(len(jobs), os.cpu_count() or 1)
    try:
        if workers > 1 and per_class * len(CLASSES) >= 400:  # one process per core; each class has its own RNG
            from finetune.data.pools import process_pool

            # (a Pool, not a ProcessPoolExecutor: leaving the block on Ctrl-C/SIGTERM terminates the
            # workers at once instead of waiting for the classes they are drawing; inside train(),
            # whose SIGTERM handler a forked worker would inherit and outlive the pool's end with)
            with process_pool(workers) as pool:
                parts = pool.map(_draw_class, jobs, chunksize=1)
        else:
            parts = [_draw_class(job) for job in jobs]
        rows = [row for part in parts for row in part]
        with (tmp / "boxes.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["split", "path", "label", "x0", "y0", "x1", "y1"])
            w.writerows(rows)
        (tmp / "spec.json").write_text(json.dumps(spec))
        (tmp / ".complete").touch()
        # mkdtemp made the folder private (0700): give it the mode its sub-folders got from the umask
        os.chmod(tmp, stat.S_IMODE((tmp / "train").stat().st_mode))
        if _existing(root, spec):  # another process finished the same dataset meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return root
        if os.path.lexists(root):  # empty, or an incomplete earlier attempt of ours (checked just now)
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first
            if not _existing(root, spec):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # interrupted or failed: no half-written folder left behind
        raise
    return root

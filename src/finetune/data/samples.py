"""Find labelled images on disk: ImageFolder trees, flat class folders, CSV files.

A :class:`Samples` holds paths and labels in numpy arrays (fixed-width strings,
no per-item Python objects), so DataLoader workers that read it do not slowly
copy it page by page the way they copy a Python list of tuples.

>>> import tempfile, pathlib
>>> from PIL import Image
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for c in ("cat", "dog"):
...     (root / c).mkdir()
...     for i in range(3):
...         Image.new("RGB", (8, 8)).save(root / c / f"{i}.jpg")
>>> s = scan_folder(root)
>>> s.classes, len(s)
(('cat', 'dog'), 6)
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VAL_DIR_NAMES = ("val", "valid", "validation")


@dataclass(frozen=True)
class Samples:
    """Image paths with integer labels and the class names they index.

    >>> s = Samples.from_lists(["a.jpg", "b.jpg"], [0, 1], ("x", "y"))
    >>> s.path(1), int(s.labels[1])
    ('b.jpg', 1)
    """

    paths: np.ndarray  # dtype '<U…', one absolute path per image
    labels: np.ndarray  # int64, index into classes
    classes: tuple[str, ...]

    @classmethod
    def from_lists(cls, paths: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> Samples:
        return cls(np.asarray([str(p) for p in paths], dtype=str), np.asarray(labels, dtype=np.int64), tuple(classes))

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> str:
        return str(self.paths[index])

    def subset(self, indices: np.ndarray) -> Samples:
        return Samples(self.paths[indices], self.labels[indices], self.classes)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_folder(root: str | Path, classes: Sequence[str] | None = None) -> Samples:
    """Scan ``root/<class>/**/<image>`` (torchvision ImageFolder layout).

    ``classes`` fixes the class list and its order (e.g. the train split's for
    the val split); by default the sorted sub-folder names are the classes.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder '{root}' does not exist")
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder: give a folder of class sub-folders or a CSV file")
    found = [d.name for d in _class_dirs(root)]
    if classes is None:
        classes = found
    missing = sorted(set(found) - set(classes))
    if missing:
        raise DataError(f"'{root}' has class folders {missing} that the training split does not have")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        paths += [str(p.resolve()) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise DataError(
            f"no images found in '{root}': expected class sub-folders holding "
            f"{', '.join(IMG_EXTENSIONS[:3])}… files (root/<class>/<image>)"
        )
    return Samples.from_lists(paths, labels, classes)


def read_csv(path: str | Path, classes: Sequence[str] | None = None) -> tuple[Samples, np.ndarray | None]:
    """Read a CSV of ``path,label`` rows (an optional ``split`` column).

    Paths are relative to the CSV's folder unless absolute. Labels are class
    names (or integers). Returns the samples and the ``split`` column, if any.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file '{path}' does not exist")
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        header = [c.strip().lower() for c in rows[0]]
        rows = rows[1:]
    else:
        header = ["path", "label", "split"][: len(rows[0]) if rows else 2]
    if not rows:
        raise DataError(f"CSV file '{path}' has no rows: expected 'path,label' lines")
    try:
        ip, il = header.index("path"), header.index("label")
    except ValueError:
        raise DataError(f"CSV file '{path}' needs 'path' and 'label' columns, found {header}") from None
    isplit = header.index("split") if "split" in header else None
    names = [r[il].strip() for r in rows]
    if classes is None:
        classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(f"CSV file '{path}' has labels {unknown[:5]} that are not among the classes {list(classes)[:10]}")
    base = path.parent
    paths = [str((base / r[ip].strip()).resolve()) for r in rows]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"CSV file '{path}' lists {len(missing)} files that do not exist, e.g. '{missing[0]}'")
    split = np.asarray([r[isplit].strip() for r in rows]) if isplit is not None else None
    return Samples.from_lists(paths, [index[n] for n in names], classes), split


def stratified_split(samples: Samples, val_fraction: float, seed: int) -> tuple[Samples, Samples]:
    """Split into train/val keeping each class's share; the same seed gives the same split.

    Every class with at least two images gets at least one in each split.

    >>> s = Samples.from_lists([f"{i}.jpg" for i in range(20)], [i % 2 for i in range(20)], ("a", "b"))
    >>> tr, va = stratified_split(s, 0.2, seed=0)
    >>> len(tr), len(va), va.class_counts()
    (16, 4, {'a': 2, 'b': 2})
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-split must be between 0 and 1 (exclusive), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for label in range(len(samples.classes)):
        idx = np.flatnonzero(samples.labels == label)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    tr = np.sort(np.concatenate(train_idx))
    va = np.sort(np.concatenate(val_idx))
    if len(va) == 0:
        raise DataError("the validation split is empty: add images or raise --val-split")
    return samples.subset(tr), samples.subset(va)


def find_splits(data: str | Path, *, val_split: float = 0.1, seed: int = 0) -> tuple[Samples, Samples]:
    """Resolve ``--data`` into (train, val) samples.

    Accepts a folder with ``train/`` and ``val/`` sub-folders (ImageFolder), a
    flat folder of class sub-folders (split with ``val_split``, stratified and
    seeded), or a CSV of ``path,label[,split]``.
    """
    data = Path(data)
    if not data.exists():
        raise DataError(f"data path '{data}' does not exist: give an image folder, a CSV file, or 'shapes'")
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise DataError(f"'{data}' is a file but not a .csv: give an image folder or a CSV of path,label")
        samples, split = read_csv(data)
        if split is not None:
            train_mask = split == "train"
            val_mask = np.isin(split, VAL_DIR_NAMES)
            if train_mask.any() and val_mask.any():
                return samples.subset(np.flatnonzero(train_mask)), samples.subset(np.flatnonzero(val_mask))
        return stratified_split(samples, val_split, seed)
    train_dir = data / "train"
    val_dir = next((data / n for n in VAL_DIR_NAMES if (data / n).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        train = scan_folder(train_dir)
        return train, scan_folder(val_dir, classes=train.classes)
    if train_dir.is_dir():
        return stratified_split(scan_folder(train_dir), val_split, seed)
    return stratified_split(scan_folder(data), val_split, seed)

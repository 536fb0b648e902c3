"""Find labelled images on disk: ImageFolder trees, flat class folders, CSV files.

A :class:`Samples` holds paths and labels in numpy arrays (the paths' UTF-8 bytes in one
buffer, no per-item Python objects), so DataLoader workers that read it do not slowly
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

import contextlib
import csv
import errno
import json
import math
import os
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune.errors import DataError, DataWarning, named

# torchvision's list, plus GIF and APNG (first frame), the JPEG spellings Windows and browsers
# use, and other kinds Pillow reads
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                  ".gif", ".jfif", ".jpe", ".avif", ".apng", ".jp2", ".j2k", ".jpx", ".pnm", ".pbm", ".tga",
                  ".qoi", ".dib", ".mpo")  # (.mpo: multi-picture JPEGs of 3D cameras; the first picture is read)
# images that Pillow does not read (phone photos, camera raw, vector, HDR, layered): not samples,
# but counted and named (a folder of iPhone .heic photos would otherwise train on what is left)
UNREAD_IMAGE_EXTENSIONS = (".heic", ".heif", ".hif", ".jxl", ".svg", ".exr", ".hdr", ".psd", ".dng", ".cr2",
                           ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw")
VAL_DIR_NAMES = ("val", "valid", "validation")
TRAIN_SPLIT_NAMES = ("train", "training")  # a CSV's split column (any case); other values (test, …) are not used
TEST_SPLIT_NAMES = ("test", "testing")
SPLIT_NAMES = (*TRAIN_SPLIT_NAMES, *VAL_DIR_NAMES, *TEST_SPLIT_NAMES)
# folders that tools leave in datasets and that never hold samples (hidden ones, starting
# with '.', are skipped too): macOS zip resource forks, Synology NAS thumbnails, Windows drives
SKIP_DIRS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information"})


class PathArray:
    """Strings packed as UTF-8 in one numpy byte buffer with their end offsets: two arrays, no
    per-item Python objects (a worker reading one does not copy it page by page), one byte per
    ASCII character. A fixed-width ``'<U'`` array spends 4 bytes per character of the LONGEST
    path on every path: one 400-character path among 1,000,000 made it 1.6 GB.

    >>> a = PathArray.from_strings(["/d/cat/1.jpg", "/d/chat/ü.png", "/d/dog/3.jpg"])
    >>> len(a), a[1], a[-1], a[np.array([2, 0])].tolist(), a[np.array([True, False, True])].tolist()
    (3, '/d/chat/ü.png', '/d/dog/3.jpg', ['/d/dog/3.jpg', '/d/cat/1.jpg'], ['/d/cat/1.jpg', '/d/dog/3.jpg'])
    >>> a.data.nbytes + a.ends.nbytes  # (38 bytes of text, 3 offsets)
    62
    """

    __slots__ = ("data", "ends")

    def __init__(self, data: np.ndarray, ends: np.ndarray) -> None:
        self.data = data  # uint8: every string's bytes, one after the other
        self.ends = ends  # int64: where each string's bytes end in data

    @classmethod
    def from_strings(cls, strings: Sequence[str]) -> PathArray:
        # (surrogateescape: a file name that is not UTF-8, as os.scandir gives it, comes back the same)
        encoded = [str(text).encode("utf-8", "surrogateescape") for text in strings]
        ends = np.cumsum(np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded)))
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ends.astype(np.int64))

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index: int | np.integer | np.ndarray | slice | Sequence[int]) -> Any:
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {int(index)} is out of range for {len(self)} paths")
            return self.data[self.ends[i - 1] if i else 0:self.ends[i]].tobytes().decode("utf-8", "surrogateescape")
        picks = np.arange(len(self))[index]  # (a slice, integer indices or a boolean mask)
        starts = np.concatenate(([0], self.ends[:-1]))[picks]
        lengths = self.ends[picks] - starts
        ends = np.cumsum(lengths)
        data = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint8)
        for k in range(0, len(picks), 1 << 16):  # gathered byte by byte, 65,536 paths at a time (bounded memory)
            length, end = lengths[k:k + (1 << 16)], ends[k:k + (1 << 16)]
            first = int(end[0] - length[0])
            shift = np.repeat(starts[k:k + (1 << 16)] - (end - length), length)
            data[first:int(end[-1])] = self.data[shift + np.arange(first, int(end[-1]))]
        return PathArray(data, ends)

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def tolist(self) -> list[str]:
        return list(self)

    def __repr__(self) -> str:
        return f"PathArray({len(self)} paths, {self.data.nbytes:,} bytes)"


@dataclass(frozen=True)
class Samples:
    """Image paths with integer labels and the class names they index.

    >>> s = Samples.from_lists(["a.jpg", "b.jpg"], [0, 1], ("x", "y"))
    >>> s.path(1), int(s.labels[1])
    ('b.jpg', 1)
    """

    paths: PathArray  # one absolute path per image
    labels: np.ndarray  # int64, index into classes
    classes: tuple[str, ...]

    @classmethod
    def from_lists(cls, paths: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> Samples:
        return cls(PathArray.from_strings(paths), np.asarray(labels, dtype=np.int64), tuple(classes))

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> str:
        return self.paths[index]

    def subset(self, indices: np.ndarray) -> Samples:
        """The samples at ``indices``, with the same classes.

        >>> from finetune.data.samples import Samples
        >>> s = Samples.from_lists(["a.jpg", "b.jpg", "c.jpg"], [0, 1, 1], ("x", "y")).subset(np.array([2, 0]))
        >>> s.paths.tolist(), s.labels.tolist(), s.classes
        (['c.jpg', 'a.jpg'], [1, 0], ('x', 'y'))
        """
        return Samples(self.paths[indices], self.labels[indices], self.classes)

    def class_counts(self) -> dict[str, int]:
        """Images per class, every class listed (also those with none).

        >>> from finetune.data.samples import Samples
        >>> Samples.from_lists(["a.jpg", "b.jpg"], [1, 1], ("x", "y")).class_counts()
        {'x': 0, 'y': 2}
        """
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}


def is_image_name(name: str) -> bool:
    """An image extension (any case) and not hidden: ``._x.jpg`` (macOS AppleDouble) is not an image.

    >>> [is_image_name(n) for n in ("a.JPG", "b.Png", "c.gif", "._c.jpg", ".DS_Store", "Thumbs.db")]
    [True, True, True, False, False, False]
    """
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def is_image_file(path: Path) -> bool:
    """:func:`is_image_name` of the file name.

    >>> from pathlib import Path
    >>> from finetune.data.samples import is_image_file
    >>> is_image_file(Path("cats/a.JPEG")), is_image_file(Path("cats/._a.jpg")), is_image_file(Path("cats/notes.txt"))
    (True, False, False)
    """
    return is_image_name(path.name)


def _is_skipped_dir(name: str) -> bool:
    return name.startswith(".") or name in SKIP_DIRS


def _unreadable(folder: str | Path, e: OSError) -> DataError:
    """The DataError for a folder of the dataset that cannot be listed."""
    why = (e.strerror or str(e)).lower()
    return DataError(f"cannot read the folder '{folder}' ({why}): fix its permissions (e.g. chmod a+rx) "
                     f"or move it out of the dataset")


def _entry_is_dir(entry: os.DirEntry[str]) -> bool:
    """``entry.is_dir()``, False for a link that cannot be followed (a loop of links, ELOOP): like a link whose
    target is missing, it is no folder (and a bad file if it is named as an image), not an unreadable folder."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def split_dir(root: str | Path, names: Sequence[str]) -> Path | None:
    """The sub-folder of ``root`` named one of ``names`` in any case (``Train/``, ``VAL/``,
    ``Validation/``), the earlier name first and the exact spelling before other cases; None if none.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / "Train").mkdir(); (d / "Validation").mkdir()
    >>> split_dir(d, TRAIN_SPLIT_NAMES).name, split_dir(d, VAL_DIR_NAMES).name, split_dir(d, ("test",))
    ('Train', 'Validation', None)
    """
    root = Path(root)
    try:
        with os.scandir(root) as entries:  # (no stat per entry: a flat folder of 10,000 classes is listed at once)
            children = sorted(e.name for e in entries if _entry_is_dir(e))
    except OSError:
        return None
    for name in names:
        match = [n for n in children if n.lower() == name]
        if match:
            return root / next((n for n in match if n == name), match[0])
    return None


def _nfc(name: str) -> str:
    """``name`` in Unicode's composed form (NFC): macOS (and zips made there) write names decomposed (NFD),
    so a class folder 'café' copied from a Mac matches the 'café' typed elsewhere.

    >>> _nfc("cafe\\u0301") == "caf\\u00e9"
    True
    """
    return unicodedata.normalize("NFC", name)


def _class_dirs(root: Path) -> list[Path]:
    """The sub-folders of ``root`` that are not skipped, sorted (listed with ``os.scandir``: a folder of
    100,000 images costs no ``stat`` per file, as ``Path.is_dir`` would; links to folders count).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / "b").mkdir(); (d / "a").mkdir(); (d / ".git").mkdir()
    >>> _ = (d / "x.jpg").write_bytes(b""); [p.name for p in _class_dirs(d)]
    ['a', 'b']
    """
    try:
        with os.scandir(root) as entries:
            names = [e.name for e in entries if not _is_skipped_dir(e.name) and _entry_is_dir(e)]
        return [root / name for name in sorted(names)]  # (names sorted: Path comparisons are slow at 10,000)
    except OSError as e:
        raise _unreadable(root, e) from None


def image_files(folder: str | Path, unread: Counter[str] | None = None) -> list[str]:
    """The image files under ``folder``, in torchvision ImageFolder's order: folder by folder
    (``sorted(os.walk(folder, followlinks=True))``), files sorted within each.

    Symbolic links are followed (each folder is visited once, so a link to a parent does not
    loop) and keep their own names; a link whose target is missing is kept, to be reported as
    a bad file. Hidden files and folders and :data:`SKIP_DIRS` are skipped. A folder that cannot
    be read is a :class:`DataError` naming it (os.walk, and so torchvision, would skip it and
    silently lose its images). ``unread`` counts, by extension, the images of kinds that are
    not read (:data:`UNREAD_IMAGE_EXTENSIONS`: ``.heic``, camera raw…).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for name in ("b.JPG", "a.png", "sub/c.jpg", "._a.png", ".cache/d.jpg", "__MACOSX/._b.JPG", "Thumbs.db"):
    ...     (d / name).parent.mkdir(parents=True, exist_ok=True)
    ...     _ = (d / name).write_bytes(b"")
    >>> [os.path.relpath(p, d) for p in image_files(d)]
    ['a.png', 'b.JPG', 'sub/c.jpg']
    """
    found: list[tuple[str, list[str]]] = []
    seen: set[tuple[int, int]] = set()
    stack = [os.path.abspath(folder)]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
        except FileNotFoundError:  # removed meanwhile
            continue
        except OSError as e:
            raise _unreadable(directory, e) from None
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        names: list[str] = []
        subdirs: list[str] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if _entry_is_dir(entry):
                        if not _is_skipped_dir(entry.name):
                            subdirs.append(entry.path)
                    elif is_image_name(entry.name) and (entry.is_symlink() or entry.is_file()):
                        names.append(entry.name)
                    elif unread is not None and not entry.name.startswith("."):
                        ext = os.path.splitext(entry.name)[1].lower()
                        if ext in UNREAD_IMAGE_EXTENSIONS:
                            unread[ext] += 1
        except OSError as e:
            if e.errno == errno.ENOENT:  # removed meanwhile
                continue
            raise _unreadable(directory, e) from None
        found.append((directory, sorted(names)))
        stack += sorted(subdirs, reverse=True)  # visited in sorted order: which of two links to one folder counts is fixed
    found.sort(key=lambda item: item[0])
    return [os.path.join(directory, name) for directory, names in found for name in names]


def describe_unread(unread: Counter[str]) -> str:
    """What :func:`image_files` counted in ``unread``, and what to do ("" for nothing).

    >>> describe_unread(Counter({".heic": 3, ".dng": 1}))
    '4 images of kinds finetune does not read (.heic: 3, .dng: 1): convert them to JPEG or PNG to use them'
    """
    total = sum(unread.values())
    if not total:
        return ""
    kinds = ", ".join(f"{ext}: {n}" for ext, n in unread.most_common())
    return (f"{total} image{'s' if total > 1 else ''} of kinds finetune does not read ({kinds}): "
            "convert them to JPEG or PNG to use them")


def _other_tool_layout(root: Path) -> str | None:
    """What to do with a folder that holds its labels (or its images) the way another tool keeps them:
    Hugging Face ``imagefolder``'s ``metadata.csv`` / ``metadata.jsonl``, a ``datasets`` folder of
    ``.arrow`` / ``.parquet`` files (``save_to_disk``, a hub download); None for any other folder.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "metadata.parquet").write_text("")
    >>> _other_tool_layout(d).replace(str(d), "D")
    "'D' keeps its labels in metadata.parquet (Hugging Face imagefolder), which finetune does not read: write them as a CSV of file_name,label and give that file as --data"
    """
    names = set(os.listdir(root))
    for listed in ("metadata.csv", "metadata.jsonl"):
        if listed in names:
            return (f"'{root}' keeps its labels in {listed} (Hugging Face imagefolder): give "
                    f"'{root / listed}' as --data (its file_name and label columns are read)")
    meta = next((n for n in sorted(names) if n.startswith("metadata.")), None)
    if meta is not None and meta.endswith((".json", ".parquet")):
        return (f"'{root}' keeps its labels in {meta} (Hugging Face imagefolder), which finetune does not read: "
                "write them as a CSV of file_name,label and give that file as --data")
    if any(n.endswith((".arrow", ".parquet")) for n in names) or names & {"dataset_dict.json", "dataset_info.json"}:
        return (f"'{root}' holds a Hugging Face datasets dataset (.arrow / .parquet files, save_to_disk), not image "
                "files: save its images into class folders (root/<class>/<image>) or list them in a CSV of path,label")
    return None


def scan_folder(root: str | Path, classes: Sequence[str] | None = None) -> Samples:
    """Scan ``root/<class>/**/<image>`` (torchvision ImageFolder layout).

    ``classes`` fixes the class list and its order (e.g. the train split's for
    the val split); by default the sorted sub-folder names are the classes, and
    a class folder without images is an error (torchvision raises too), where
    skipping it would silently train a different set of classes. Hidden files
    (``.DS_Store``, ``._x.jpg``), hidden folders, :data:`SKIP_DIRS` and files without
    an image extension (``Thumbs.db``) are not samples; see :func:`image_files`.

    >>> import pathlib, tempfile
    >>> from PIL import Image
    >>> from finetune.data.samples import scan_folder
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("dog/1.jpg", "cat/1.jpg", "cat/2.png", "cat/.DS_Store"):
    ...     (root / name).parent.mkdir(exist_ok=True); Image.new("RGB", (8, 8)).save(root / name, "PNG")
    >>> s = scan_folder(root)
    >>> s.classes, s.labels.tolist(), [pathlib.Path(p).name for p in s.paths]
    (('cat', 'dog'), [0, 0, 1], ['1.jpg', '2.png', '1.jpg'])
    >>> scan_folder(root, classes=["dog", "cat", "bird"]).class_counts()   # the train split's classes
    {'dog': 1, 'cat': 2, 'bird': 0}
    """
    root = Path(os.path.abspath(root))
    if not root.exists():
        raise DataError(f"data folder '{root}' does not exist")
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder: give a folder of class sub-folders or a CSV file")
    found = [d.name for d in _class_dirs(root)]
    fixed = classes is not None
    if classes is None:
        classes = found
    by_nfc = {_nfc(n): n for n in found}  # a class matches its folder also when one is NFD (macOS) and one NFC
    named = {_nfc(c) for c in classes}
    known, on_disk = set(classes), set(found)  # (sets: at 10,000 classes a list's `in` is 10^8 comparisons)
    missing = sorted(n for n in found if n not in known and _nfc(n) not in named)
    if missing:
        shown = ", ".join(repr(c) for c in list(classes)[:20]) + (", …" if len(classes) > 20 else "")
        raise DataError(f"'{root}' has class folders {missing} that are not among the {len(classes)} classes "
                        f"it is read with (the training split's or the checkpoint's: {shown}); class names "
                        f"match exactly, case included")
    paths: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    unread: Counter[str] = Counter()
    for label, name in enumerate(classes):
        folder = root / name
        if name not in on_disk:
            folder = root / by_nfc.get(_nfc(name), name)
        if not folder.is_dir():
            continue
        files = image_files(folder, unread)
        if not files:
            empty.append(name)
        paths += files
        labels += [label] * len(files)
    not_read = describe_unread(unread)
    if not paths:
        loose = [n for n in os.listdir(root) if is_image_name(n)]  # (root was listed above: readable)
        where = (f"'{root}' holds {len(loose)} images but no class sub-folders: put each class's images "
                 f"in its own folder (root/<class>/<image>), or list them with their labels in a CSV of path,label"
                 if loose else
                 f"no images found in '{root}': expected class sub-folders holding "
                 f"{', '.join(IMG_EXTENSIONS[:3])}… files (root/<class>/<image>)")
        raise DataError((_other_tool_layout(root) or where) + (f"; it holds {not_read}" if not_read else ""))
    if empty and not fixed:
        raise DataError(f"class folder{'s' if len(empty) > 1 else ''} {', '.join(repr(e) for e in empty)} in '{root}' "
                        f"hold{'' if len(empty) > 1 else 's'} no images ({', '.join(IMG_EXTENSIONS)}): add images "
                        f"or remove the folder{'s' if len(empty) > 1 else ''}"
                        + (f"; '{root}' holds {not_read}" if not_read else ""))
    if not_read:
        warnings.warn(DataWarning(f"'{root}': skipped {not_read}"), stacklevel=2)
    return Samples.from_lists(paths, labels, classes)


PATH_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "file_name", "fname", "image",
                "image_path", "image_file", "image_name", "img", "img_path",
                "paths", "filepaths", "files", "filenames", "images", "image_id", "image_filename", "img_name")
LABEL_COLUMNS = ("label", "class", "class_name", "classname", "category", "target", "label_name", "y",
                 "labels", "classes", "class_label", "category_name")
# a boolean column that marks validation rows (fastai's ColSplitter reads 'is_valid')
VALID_FLAG_COLUMNS = ("is_valid", "is_val", "is_validation", "valid")
_TRUE, _FALSE = ("true", "1", "yes", "y", "t"), ("false", "0", "no", "n", "f")


#: files of labelled image paths: CSV, and JSON Lines (Hugging Face imagefolder's metadata.jsonl)
LIST_SUFFIXES = (".csv", ".jsonl")


def _jsonl_rows(path: Path, text: str) -> list[list[str]]:
    """A JSON Lines file's objects as a CSV's rows (Hugging Face imagefolder's ``metadata.jsonl``: one object a
    line, ``{"file_name": "a.png", "label": "cat"}``): the keys as a header line, then each object's values
    (numbers and flags as text, a list of labels as one space-separated label, as a multi-label CSV row).

    >>> _jsonl_rows(Path("m.jsonl"), '{"file_name": "a.png", "label": 3}\\n\\n{"file_name": "b.png", "label": ["dog"]}')
    [['file_name', 'label'], ['a.png', '3'], ['b.png', 'dog']]
    """
    objects = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"JSON Lines file '{path}': line {number} is not JSON ({e.msg}): each line must be one "
                            'object, e.g. {"file_name": "a.png", "label": "cat"}') from None
        if not isinstance(obj, dict):
            raise DataError(f"JSON Lines file '{path}': line {number} is not an object but {line.strip()[:60]!r}: each "
                            'line must be one object, e.g. {"file_name": "a.png", "label": "cat"}')
        objects.append(obj)

    def cell(value: object) -> str:
        if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
            return " ".join(str(v) for v in value)
        return "" if value is None else value if isinstance(value, str) else json.dumps(value)

    keys = list(dict.fromkeys(k for obj in objects for k in obj))
    return [keys, *([cell(obj.get(k)) for k in keys] for obj in objects)]


def _header(row: list[str]) -> list[str] | None:
    """Canonical column names ('path', 'label', 'split', …) if ``row`` is a header line, else None."""
    cells = [c.strip().lower() for c in row]
    if not any(c in PATH_COLUMNS for c in cells) or not any(c in LABEL_COLUMNS for c in cells):
        return None
    # the first path-like column, but not an id beside a file's name ({"image_id": 7, "file_name": "7.png"})
    like = [k for k, c in enumerate(cells) if c in PATH_COLUMNS]
    first = next((k for k in like if cells[k] != "image_id"), like[0])
    out, seen = [], set()
    for k, c in enumerate(cells):
        name = ("path" if k == first else c + "_") if c in PATH_COLUMNS else "label" if c in LABEL_COLUMNS else c
        if name in seen:  # a second label-like column: keep the first
            name = c + "_"
        seen.add(name)
        out.append(name)
    return out


def _split_like(header: list[str], rows: list[list[str]], skip: tuple[int, ...]) -> np.ndarray | None:
    """The split of each row from a column not named 'split' that holds one: all its values are split
    names ('data set', 'subset', 'fold' … of train/valid/test), or it is a true/false ``is_valid``."""
    for k, name in enumerate(header):
        if k in skip:
            continue
        values = np.asarray([r[k].strip().lower() if k < len(r) else "" for r in rows])
        if name.strip().lower().replace(" ", "_") in VALID_FLAG_COLUMNS and np.isin(values, _TRUE + _FALSE).all():
            return np.where(np.isin(values, _TRUE), "val", "train")
        if np.isin(values, SPLIT_NAMES).all() and np.isin(values, TRAIN_SPLIT_NAMES).any():
            return values
    return None


def _class_order(names: Sequence[str]) -> list[str]:
    """Sorted class names; numbers in numeric order (``'2' < '10'``, ``'2.0' < '10.0'``).

    Labels a pandas float column writes (``0.0``, ``10.0``) count as numbers too.

    >>> _class_order(["10", "2", "1"]), _class_order(["b", "a", "10"]), _class_order(["³", "²", "+-1"])
    (['1', '2', '10'], ['10', 'a', 'b'], ['+-1', '²', '³'])
    >>> _class_order(["10.0", "2.0", "0.5"]), _class_order(["nan", "1.0"])
    (['0.5', '2.0', '10.0'], ['1.0', 'nan'])
    """
    unique = set(names)

    def number(n: str) -> float | None:
        try:  # (str.isdigit() is true of '²', which int() and float() refuse)
            value = float(n)
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    if all(number(n) is not None for n in unique):
        return sorted(unique, key=lambda n: (number(n), n))
    return sorted(unique)


def _several_labels(names: Sequence[str]) -> tuple[int, list[str]] | None:
    """The first row (index, parts) whose label is several other rows' labels joined by a space, ``;``,
    ``|`` or ``,`` (a multi-label CSV: fastai's ``label_delim``, Kaggle's tags); None if there is none.
    A class name with a space of its own ('golden retriever') is not split: its parts are not labels.

    >>> _several_labels(["cat", "dog", "cat dog"]), _several_labels(["golden retriever", "pug", "golden"])
    ((2, ['cat', 'dog']), None)
    >>> _several_labels(["a", "b", "a;b"]), _several_labels(["a", "b", "a|b"])
    ((2, ['a', 'b']), (2, ['a', 'b']))
    """
    labels = dict.fromkeys(names)  # (each label once, in the order of the rows)
    for name in labels:
        for sep in (None, ";", "|", ","):
            parts = [p.strip() for p in name.split(sep)]
            if len(parts) > 1 and all(p in labels and p != name for p in parts):
                return list(names).index(name), parts
    return None


def _split_from_paths(paths: Sequence[str]) -> np.ndarray | None:
    """Each row's split from the first folder of its path as the CSV gives it, when every path starts with
    a split folder (``train/``, ``val/``, ``test/``, any case), some with a training one and some with another,
    as Hugging Face's ``imagefolder`` takes a root ``metadata.csv``'s splits; None otherwise (every path in
    ``train/``, as Kaggle's labels of its train/ folder: no split to take, a drawn one or a score of them all).

    >>> _split_from_paths(["train/a.jpg", "Test/b.jpg", "val/c.jpg"]).tolist(), _split_from_paths(["a/b.jpg"])
    (['train', 'test', 'val'], None)
    >>> _split_from_paths(["train/a.jpg", "train/b.jpg"])
    """
    first = [p.strip().replace("\\", "/").lstrip("./").split("/")[0].lower() if "/" in p.replace("\\", "/") else ""
             for p in paths]
    if (first and all(f in SPLIT_NAMES for f in first) and any(f in TRAIN_SPLIT_NAMES for f in first)
            and not all(f in TRAIN_SPLIT_NAMES for f in first)):
        return np.asarray(first)
    return None


def read_csv(path: str | Path, classes: Sequence[str] | None = None) -> tuple[Samples, np.ndarray | None]:
    """Read a CSV of ``path,label`` rows (an optional ``split`` column).

    Paths are relative to the CSV's folder unless absolute. Labels are class
    names or integers (integer classes are ordered numerically). A header line
    is recognised by its column names (``path``/``filename``/``image``…,
    ``label``/``class``/``category``…, in any order), or by a first row whose
    path is neither an image name nor a file when the second row's is a file.
    What spreadsheets write is read too: a UTF-8 byte-order mark, CRLF, ``;`` or
    tab separators, quoting.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "img").mkdir()
    >>> for n in ("a.jpg", "b.jpg"):
    ...     _ = (d / "img" / n).write_bytes(b"")
    >>> _ = (d / "list.csv").write_text("filename;class\\nimg/a.jpg;dog\\nimg/b.jpg;cat\\n", encoding="utf-8-sig")
    >>> s, split = read_csv(d / "list.csv")
    >>> s.classes, s.labels.tolist(), split is None
    (('cat', 'dog'), [1, 0], True)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{'JSON Lines' if path.suffix.lower() == '.jsonl' else 'CSV'} file '{path}' does not exist")
    try:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            text = path.read_text(encoding="latin-1")
    except OSError as e:
        raise DataError(f"cannot read the file '{path}' ({(e.strerror or str(e)).lower()}): check its permissions") from None
    base = path.parent
    jsonl = path.suffix.lower() == ".jsonl"
    what = "JSON Lines file" if jsonl else "CSV file"
    if jsonl:
        rows, delimiter = _jsonl_rows(path, text), ","
        if rows[0] and _header(rows[0]) is None:
            raise DataError(f"{what} '{path}' needs a path key (file_name, path, image, …) and a label key (label, "
                            f"class, category, …) in its objects, found {rows[0]}")
    else:
        lines = text.splitlines()
        first = next((ln for ln in lines if ln.strip() and not ln.startswith("#")), "")
        delimiter = "," if "," in first or not ("\t" in first or ";" in first) else ("\t" if "\t" in first else ";")
        # '#' starts a comment line, unless it starts the name of a file there ('#1.jpg', as scrapers name them)
        rows = [r for r in csv.reader(lines, delimiter=delimiter) if r and any(c.strip() for c in r)
                and not (r[0].startswith("#") and not (base / r[0].strip()).is_file())]
    header = _header(rows[0]) if rows and rows[0] else None
    positional = False
    if header is not None:
        rows = rows[1:]
    elif jsonl:
        rows = []
    else:
        header = ["path", "label", "split"][: len(rows[0]) if rows else 2]
        positional = True  # no header line: a third column is a split column only if it holds split names
        cell = rows[0][0].strip() if rows else ""
        if (len(rows) >= 2 and not is_image_name(os.path.basename(cell)) and not (base / cell).exists()
                and (base / rows[1][0].strip()).exists()):
            header = [c.strip().lower() for c in rows[0]]  # a header with unknown names: columns by position
            header[:2] = ["path", "label"]
            positional = False
            rows = rows[1:]
    if not rows:
        raise DataError(f"{what} '{path}' has no rows: expected 'path,label' lines")
    try:
        ip, il = header.index("path"), header.index("label")
    except ValueError:
        raise DataError(f"{what} '{path}' needs 'path' and 'label' columns, found {header}") from None
    isplit = header.index("split") if "split" in header else None
    need = max(ip, il, isplit if isplit is not None else 0) + 1
    short = [k for k, r in enumerate(rows) if len(r) < need]
    if short:
        raise DataError(f"{what} '{path}' has {len(short)} rows with fewer than {need} columns, "
                        f"e.g. {delimiter.join(rows[short[0]])!r}")
    names = [r[il].strip() for r in rows]
    blank = [k for k, n in enumerate(names) if not n]
    if blank:  # (a class named '' would be trained silently)
        raise DataError(f"{what} '{path}' has {len(blank)} rows without a label, e.g. "
                        f"{delimiter.join(rows[blank[0]])!r}: give every row a class")
    if (several := _several_labels(names)) is not None:  # (trained as a class of its own, 'cat dog', silently)
        k, parts = several
        raise DataError(f"{what} '{path}' gives the row {delimiter.join(rows[k])!r} several labels "
                        f"({', '.join(repr(p) for p in parts)}, each a label of other rows): a multi-label CSV "
                        "(fastai's label_delim); finetune trains one class per image: give each row one label (a class of its "
                        "own that joins others' names: call it otherwise, e.g. 'cat+dog')")
    if classes is None:
        classes = _class_order(names)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(f"{what} '{path}' has labels {unknown[:5]} that are not among the classes {list(classes)[:10]}")
    paths = []
    folder = os.path.abspath(base)  # (once: os.path.abspath per row asks for the working directory each time)
    for r in rows:
        p = os.path.join(folder, r[ip].strip())
        if "\\" in p and not os.path.exists(p) and os.path.exists(p.replace("\\", "/")):  # written on Windows
            p = p.replace("\\", "/")
        paths.append(os.path.normpath(p))
    missing = [p for p in paths if not os.path.isfile(p)]  # (one stat a row)
    if missing:
        hint = (f": its first line {delimiter.join(rows[0])!r} was read as data; if it names the columns, "
                f"call them path,label[,split]" if positional and missing[0] == paths[0] else "")
        given = rows[paths.index(missing[0])][ip].strip()
        if not hint and not os.path.isabs(given) and os.path.isfile(given):  # (written from another folder)
            hint = (f": relative paths are read from the CSV's folder '{folder}', not the current directory, "
                    f"where '{given}' is: write them relative to the CSV's folder (or absolute)")
        raise DataError(f"{what} '{path}' lists {len(missing)} files that do not exist, e.g. '{missing[0]}'"
                        + hint)
    split = np.asarray([r[isplit].strip().lower() for r in rows]) if isplit is not None else None
    if split is not None and positional and not np.isin(split, SPLIT_NAMES).all():
        split = None
    if split is None and not positional:  # a split column by another name ('data set', 'subset', 'is_valid')
        split = _split_like(header, rows, (ip, il))
    if split is None:  # no split column, paths under split folders (Hugging Face imagefolder's metadata.csv at
        split = _split_from_paths([r[ip] for r in rows])  # the root: train/0.jpg, test/0.jpg): the folder says
    # a file listed twice: with two labels (a multi-label CSV) it would be trained as both; with the same
    # label, the held-out split could put one copy in training and the other in validation
    first: dict[str, int] = {}
    keep: list[int] = []
    for k, p in enumerate(paths):
        j = first.setdefault(p, k)  # (absolute, normalised: no stat per row)
        if j == k:
            keep.append(k)
        elif names[j] != names[k] or (split is not None and split[j] != split[k]):
            differ = (f"labels {names[j]!r} and {names[k]!r}" if names[j] != names[k] else
                      f"splits {split[j]!r} and {split[k]!r}")  # type: ignore[index]
            raise DataError(f"{what} '{path}' lists '{rows[k][ip].strip()}' twice, with {differ}: give each "
                            "image one row (finetune trains one class per image)")
    if len(keep) < len(paths):
        twice = len(paths) - len(keep)
        warnings.warn(DataWarning(f"'{path}' lists {twice} image{'s' if twice != 1 else ''} twice (the same file, "
                                  f"same label); each is read once"), stacklevel=2)
        paths, names = [paths[k] for k in keep], [names[k] for k in keep]
        split = split[keep] if split is not None else None
    return Samples.from_lists(paths, [index[n] for n in names], classes), split


def stratified_split(samples: Samples, val_fraction: float, seed: int) -> tuple[Samples, Samples]:
    """Split into train/val keeping each class's share; the same seed gives the same split.

    Every class with at least two images gets at least one in each split; a class with a
    single image keeps it for training.

    >>> s = Samples.from_lists([f"{i}.jpg" for i in range(20)], [i % 2 for i in range(20)], ("a", "b"))
    >>> tr, va = stratified_split(s, 0.2, seed=0)
    >>> len(tr), len(va), va.class_counts()
    (16, 4, {'a': 2, 'b': 2})
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"{named('val_fraction', flag='--val-split')} must be between 0 and 1 (exclusive), "
                        f"got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    order = np.argsort(samples.labels, kind="stable")  # each class's indices, ascending (not a pass per class)
    ends = np.cumsum(np.bincount(samples.labels, minlength=len(samples.classes)))
    for label in range(len(samples.classes)):
        idx = order[ends[label - 1] if label else 0:ends[label]]
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    tr = np.sort(np.concatenate(train_idx))
    va = np.sort(np.concatenate(val_idx))
    if len(va) == 0:
        raise DataError("no class has two images, so none can be held out for validation: "
                        "add images, or give a folder with train/ and val/ sub-folders")
    asked = val_fraction * len(samples)
    if len(va) >= 2 * asked and len(va) >= asked + 5:  # (many small classes: one each is far more than asked)
        counts = np.bincount(samples.labels, minlength=len(samples.classes))
        single = int((counts == 1).sum())
        warnings.warn(HeldOutWarning(
            f"{named('val_fraction', flag='--val-split')} {val_fraction:g} held out {len(va)} of {len(samples)} images "
            f"({len(va) / len(samples):.0%}): every class with two or more images keeps one for validation"
            + (f", and the {single} classes with one image are trained on but never validated" if single else "")
            + ": give more images per class, or a folder with train/ and val/ sub-folders"), stacklevel=2)
    return samples.subset(tr), samples.subset(va)


class HeldOutWarning(DataWarning):
    """:func:`stratified_split` held out far more than ``--val-split`` asked (many classes of one or two images)."""


@contextlib.contextmanager
def split_drawn_again() -> Iterator[None]:
    """Around drawing again the split that training drew (eval, cam and their checks find the validation
    images that way): no warning that it holds out more than ``--val-split`` asked, which training gave
    and which eval cannot change (it has no ``--val-split``; the folder it scores may not be split at all).

    >>> s = Samples.from_lists([f"{i}.jpg" for i in range(20)], [i // 2 for i in range(20)], [str(c) for c in range(10)])
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error")
    ...     with split_drawn_again():
    ...         len(stratified_split(s, 0.1, seed=0)[1])
    10
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeldOutWarning)
        yield


def check_classes(train: Samples, where: str | Path) -> Samples:
    """``train`` if images of at least two classes are in it, else a DataError: a classifier of one
    class learns nothing (its loss is zero from the first step) and would train "successfully".

    >>> check_classes(Samples.from_lists(["a.jpg", "b.jpg"], [0, 0], ("cat", "dog")), "data/")
    Traceback (most recent call last):
    finetune.errors.DataError: 'data/' has only one class ('cat'): a classifier needs at least two: add a class folder (or CSV label) for each other class
    """
    present = [train.classes[i] for i in np.unique(train.labels)]
    if len(present) < 2:
        name = repr(present[0]) if present else "none"
        raise DataError(f"'{where}' has only one class ({name}): a classifier needs at least two: "
                        f"add a class folder (or CSV label) for each other class")
    return train


def find_splits(data: str | Path, *, val_split: float = 0.1, seed: int = 0) -> tuple[Samples, Samples]:
    """Resolve ``--data`` into (train, val) samples.

    Accepts a folder with ``train/`` and ``val/`` sub-folders (ImageFolder), a
    flat folder of class sub-folders (split with ``val_split``, stratified and
    seeded), or a CSV of ``path,label[,split]``. A CSV's split column (any case) names the
    ``train`` and ``val`` rows; without ``val`` rows, ``val_split`` of the ``train`` rows is held
    out; other rows (``test``, …) are used for neither. The training split must hold images of at
    least two classes (:func:`check_classes`).

    >>> import pathlib, tempfile
    >>> from PIL import Image
    >>> from finetune.data.samples import find_splits
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for c in ("cat", "dog"):
    ...     (root / c).mkdir()
    ...     for i in range(10):
    ...         Image.new("RGB", (8, 8)).save(root / c / f"{i}.jpg")
    >>> train, val = find_splits(root, val_split=0.2)                 # a flat folder: split per class
    >>> train.class_counts(), val.class_counts()
    ({'cat': 8, 'dog': 8}, {'cat': 2, 'dog': 2})
    """
    data = Path(data)
    if not data.exists():
        raise DataError(f"data path '{data}' does not exist: give an image folder, a CSV file, or 'shapes'")
    if data.is_file():
        if data.suffix.lower() not in LIST_SUFFIXES:
            raise DataError(f"'{data}' is a file but not a .csv (or .jsonl): give an image folder or a CSV of path,label")
        samples, split = read_csv(data)
        if split is not None:
            train_mask = np.isin(split, TRAIN_SPLIT_NAMES)
            val_mask = np.isin(split, VAL_DIR_NAMES)
            other = Counter(split[~np.isin(split, SPLIT_NAMES)].tolist())
            if other and train_mask.any():  # ('test' rows are left out by design; 'dev' or '' by a slip)
                shown = ", ".join(f"{v!r}: {n}" for v, n in other.most_common(5))
                warnings.warn(DataWarning(f"'{data}': {sum(other.values())} rows are used neither for training nor "
                                          f"for validation (split {shown}): mark them train or val"), stacklevel=2)
            if not train_mask.any():
                found = ", ".join(repr(v) for v in sorted(set(split.tolist()))[:10])
                raise DataError(f"'{data}' has a split column but no rows with split 'train' (found {found}): "
                                f"mark the training rows 'train' (and validation rows 'val'), or drop the column")
            if not val_mask.any():  # hold out part of the 'train' rows; 'test' (or other) rows stay out
                return stratified_split(check_classes(samples.subset(np.flatnonzero(train_mask)), data),
                                        val_split, seed)
            if train_mask.any() and val_mask.any():
                train = check_classes(samples.subset(np.flatnonzero(train_mask)), data)
                val = samples.subset(np.flatnonzero(val_mask))
                untrained = sorted(set(val.labels.tolist()) - set(train.labels.tolist()))
                if untrained:
                    names = ", ".join(repr(samples.classes[i]) for i in untrained)
                    raise DataError(f"'{data}': class {names} has rows with split 'val' but none with 'train': "
                                    "the model could never predict it; add training rows for it or drop it")
                return train, val
        return stratified_split(check_classes(samples, data), val_split, seed)
    train_dir = split_dir(data, TRAIN_SPLIT_NAMES)  # train/, Train/, training/
    val_dir = split_dir(data, VAL_DIR_NAMES)
    if train_dir is not None and val_dir is not None:
        train = check_classes(_scan_train_split(train_dir), train_dir)
        return train, scan_folder(val_dir, classes=train.classes)
    if train_dir is not None:
        return stratified_split(check_classes(_scan_train_split(train_dir), train_dir), val_split, seed)
    splits = [d.name for d in _class_dirs(data) if d.name.lower() in SPLIT_NAMES] if data.is_dir() else []
    if splits:  # (read as class folders, 'val' and 'test' would be trained as classes)
        raise DataError(f"'{data}' has folders {splits} named like data splits but no train/ folder: put the "
                        f"training images in '{data / 'train'}' (one folder per class), or give the folder of "
                        f"class folders itself as --data")
    _refuse_wrapped_splits(data)
    return stratified_split(check_classes(scan_folder(data), data), val_split, seed)


def _scan_train_split(train_dir: Path) -> Samples:
    """:func:`scan_folder` of the training split; a DataError that says why when ``train/`` holds images of its
    own beside class folders: a class named like the split (``cat/ dog/ train/``) is read as the split."""
    try:
        return scan_folder(train_dir)
    except DataError:
        others = [d.name for d in _class_dirs(train_dir.parent) if d != train_dir and d.name.lower() not in SPLIT_NAMES]
        try:
            own_images = any(is_image_name(n) for n in os.listdir(train_dir))
        except OSError:  # (an unreadable folder: the scan's error says so)
            own_images = False
        if others and own_images:
            raise DataError(f"'{train_dir}' holds images, not class folders, beside the folders "
                            f"{', '.join(others[:5])}{', …' if len(others) > 5 else ''}: a folder named "
                            f"'{train_dir.name}' is read as the training split (train/<class>/<image>), so a class "
                            "of that name must be renamed (e.g. to "
                            f"'{train_dir.name}_')") from None
        raise


def _refuse_wrapped_splits(root: Path) -> None:
    """A DataError if one sub-folder of ``root`` holds nothing but split folders, one of them ``train/``
    (``images/train/<class>``, ``dataset/train``: a zip's own top folder): read as class folders, it
    would be one class, its splits' images trained as one class. Splits inside every class folder
    (``cat/train/``, ``dog/train/``) are read as ImageFolder reads them.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / "images" / "train").mkdir(parents=True); (d / "images" / "val").mkdir()
    >>> try:
    ...     _refuse_wrapped_splits(d)
    ... except DataError as e:
    ...     print(str(e).replace(str(d), "D"))
    'D' holds its data splits one folder down, in 'D/images' (train/, val/): give 'D/images' as the data folder (--data)
    >>> (d / "images" / "cat").mkdir(); _refuse_wrapped_splits(d)   # (class 'images' with a class 'train' in it)
    >>> (d / "images" / "cat").rmdir(); (d / "dogs" / "train").mkdir(parents=True); _refuse_wrapped_splits(d)
    """
    wrappers = []
    for folder in _class_dirs(root):
        subs = [d.name for d in _class_dirs(folder)]
        if subs and all(n.lower() in SPLIT_NAMES for n in subs) and any(n.lower() in TRAIN_SPLIT_NAMES for n in subs):
            wrappers.append((folder, subs))
    if len(wrappers) == 1:  # (splits inside every class folder, cat/train/, dog/train/: read as ImageFolder reads it)
        folder, subs = wrappers[0]
        raise DataError(f"'{root}' holds its data splits one folder down, in '{folder}' "
                        f"({', '.join(n + '/' for n in subs)}): give '{folder}' as the data folder (--data)")


def split_is_drawn(data: str | Path) -> bool:
    """Whether :func:`find_splits` draws the validation split from ``data`` (``val_split``, ``seed``):
    a flat folder, a ``train/`` folder alone, a CSV without ``val`` rows; not a folder with
    ``train/`` and ``val/`` or a CSV with ``val`` rows (their validation images are given).

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "train").mkdir(); split_is_drawn(root)
    True
    >>> (root / "val").mkdir(); split_is_drawn(root)
    False
    """
    path = Path(data)
    if path.is_file():
        _, split = read_csv(path)
        return split is None or not np.isin(split, VAL_DIR_NAMES).any()
    return not (split_dir(path, TRAIN_SPLIT_NAMES) is not None and split_dir(path, VAL_DIR_NAMES) is not None)


def relabel(samples: Samples, classes: Sequence[str], where: str | Path) -> Samples:
    """``samples`` with labels indexing ``classes`` (a checkpoint's), matched by class name.

    A class of ``samples`` that ``classes`` lacks is a :class:`DataError` (scoring it with
    another class's index would be silently wrong); classes it does not hold are simply absent.

    >>> s = Samples.from_lists(["a.jpg", "b.jpg"], [0, 1], ("cat", "dog"))
    >>> relabel(s, ["dog", "bird", "cat"], "data/").labels.tolist()
    [2, 0]
    >>> relabel(Samples.from_lists(["a.jpg"], [0], ("cafe\u0301",)), ["caf\u00e9"], "data/").labels.tolist()  # NFD, NFC
    [0]
    >>> relabel(s, ["dog"], "data/")
    Traceback (most recent call last):
    finetune.errors.DataError: 'data/' has classes ['cat'] that are not among the checkpoint's 1 classes ('dog'); class names match exactly, case included
    """
    classes = tuple(classes)
    if samples.classes == classes:
        return samples
    exact = {c: i for i, c in enumerate(classes)}
    composed = {_nfc(c): i for i, c in enumerate(classes)}  # ('café' typed matches the 'café' a Mac's folder gave)
    index = {c: exact[c] if c in exact else composed[_nfc(c)]
             for c in samples.classes if c in exact or _nfc(c) in composed}
    present = sorted({samples.classes[i] for i in np.unique(samples.labels)})
    unknown = [c for c in present if c not in index]
    if unknown:
        shown = ", ".join(repr(c) for c in classes[:20]) + (", …" if len(classes) > 20 else "")
        raise DataError(f"'{where}' has classes {unknown[:10]} that are not among the checkpoint's {len(classes)} "
                        f"classes ({shown}); class names match exactly, case included")
    mapping = np.asarray([index.get(c, -1) for c in samples.classes], dtype=np.int64)
    return Samples(samples.paths, mapping[samples.labels], classes)


def _same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def eval_samples(data: str | Path, classes: Sequence[str], *, trained_on: str | Path | None = None,
                 val_split: float = 0.1, seed: int = 0) -> Samples:
    """What ``finetune eval --data DATA`` scores, labelled with a checkpoint's ``classes`` by name.

    * the data the checkpoint was trained on (``trained_on``, the same path): its validation
      split, exactly as training held it out (``val_split``, ``seed``), never its training images;
    * a CSV: its ``val`` rows when it has a split column with some, else its ``test`` rows, else
      every row but ``train`` ones (one whose rows are all ``train`` is refused);
    * a folder with ``val/`` (``valid/``, ``validation/``, any case): that folder; else its ``test/``
      (``testing/``); a folder with only ``train/`` is refused (those are training images);
    * any other folder of class sub-folders: all its images (a test set).

    A class that ``classes`` lacks is a :class:`DataError` (:func:`relabel`); ``'shapes'`` is the
    built-in dataset.

    >>> import pathlib, tempfile
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for c in ("cat", "dog"):
    ...     (root / c).mkdir()
    ...     for i in range(10):
    ...         Image.new("RGB", (8, 8)).save(root / c / f"{i}.jpg")
    >>> len(eval_samples(root, ["dog", "cat"])), len(eval_samples(root, ["dog", "cat"], trained_on=str(root)))
    (20, 2)
    >>> s = eval_samples(root, ["dog", "cat", "bird"])      # scored by name, in the checkpoint's order
    >>> s.classes, s.class_counts(), pathlib.Path(s.path(0)).parent.name, int(s.labels[0])
    (('dog', 'cat', 'bird'), {'dog': 10, 'cat': 10, 'bird': 0}, 'dog', 0)
    """
    if str(data) == "shapes":
        from finetune.data.shapes import shapes_root

        data = shapes_root()
    if trained_on is not None and str(trained_on) == "shapes":  # (what `data` is compared with: not generated)
        from finetune.data.shapes import ShapesSpec, cache_dir

        trained_on = cache_dir() / ShapesSpec().key()
    path = Path(data)
    if not path.exists():
        raise DataError(f"data path '{data}' does not exist: give an image folder or a CSV file")
    if trained_on is not None and Path(trained_on).exists() and _same_path(path, trained_on):
        with split_drawn_again():
            val = find_splits(path, val_split=val_split, seed=seed)[1]
        return relabel(val, classes, data)
    if path.is_file():
        if path.suffix.lower() not in LIST_SUFFIXES:
            raise DataError(f"'{data}' is a file but not a .csv (or .jsonl): give an image folder or a CSV of path,label")
        samples, split = read_csv(path)
        if split is not None and np.isin(split, TRAIN_SPLIT_NAMES).all():
            raise DataError(f"every row of '{data}' has split 'train': those are training images, not a score; "
                            "give a CSV of val or test rows (or one without a split column)")
        if split is not None:
            for keep in (np.isin(split, VAL_DIR_NAMES), np.isin(split, TEST_SPLIT_NAMES),
                         ~np.isin(split, TRAIN_SPLIT_NAMES)):
                if keep.any():  # (a score over training rows is not a score)
                    samples = samples.subset(np.flatnonzero(keep))
                    break
        return relabel(samples, classes, data)
    folder = split_dir(path, VAL_DIR_NAMES) or split_dir(path, TEST_SPLIT_NAMES)
    if folder is None and split_dir(path, TRAIN_SPLIT_NAMES) is not None:
        raise DataError(f"'{data}' has a {split_dir(path, TRAIN_SPLIT_NAMES).name}/ folder but no val/ or test/ "
                        f"folder to evaluate: give the folder of test images (class sub-folders) as data (--data)")
    if folder is None and path.is_dir():
        _refuse_wrapped_splits(path)
    folder = folder or path
    if not _class_dirs(folder) and _other_tool_layout(folder) is None and any(map(is_image_name, os.listdir(folder))):
        raise DataError(f"'{folder}' holds images without labels (no class sub-folders, as a Kaggle test/ folder): "
                        "eval scores labelled images (<class>/<image>, or a CSV of path,label); "
                        "`finetune predict` predicts unlabelled ones")
    # every class folder, the checkpoint's first: an empty one is allowed here (nothing to score), and one
    # with images that the checkpoint lacks is refused by relabel
    named, known = {_nfc(c) for c in classes}, set(classes)
    extra = sorted(d.name for d in _class_dirs(folder) if d.name not in known and _nfc(d.name) not in named)
    return relabel(scan_folder(folder, classes=[*classes, *extra]), classes, folder)

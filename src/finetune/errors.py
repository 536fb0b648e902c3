"""Errors that finetune raises on bad input.

Every error a user can cause is a :class:`FinetuneError`; the CLI prints it as
``finetune: error: <message>`` and exits with status 2. Messages say what went
wrong and what to do about it.

>>> from finetune.errors import DataError
>>> try:
...     raise DataError("no images in 'x/': put class folders with .jpg files there")
... except FinetuneError as e:
...     print(e)
no images in 'x/': put class folders with .jpg files there
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any


class FinetuneError(Exception):
    """Base class of every error caused by bad input or a bad environment.

    >>> from finetune import FinetuneError, TrainConfig
    >>> try:
    ...     TrainConfig(epochs=0).validate()
    ... except FinetuneError as e:
    ...     print(type(e).__name__, "-", e)
    ConfigError - epochs (--epochs) must be at least 1, got 0
    """


class ConfigError(FinetuneError):
    """A configuration value or command-line flag is invalid.

    >>> from finetune import load_config
    >>> load_config("missing.yaml")
    Traceback (most recent call last):
    finetune.errors.ConfigError: config file 'missing.yaml' does not exist
    """


class DataError(FinetuneError):
    """A dataset folder, CSV or image cannot be used.

    >>> from finetune.data.samples import find_splits
    >>> find_splits("/nonexistent")
    Traceback (most recent call last):
    finetune.errors.DataError: data path '/nonexistent' does not exist: give an image folder, a CSV file, or 'shapes'
    """


class UnreadableImagesError(DataError):
    """Image files named to ``predict`` (or ``cam``) that cannot be read: raised once every other image
    is done, with one ``cannot read image …`` message per unreadable file in ``unreadable``, the
    other images' predictions in ``predictions`` (what :func:`finetune.predict` returns; ``cam``:
    its records) and, for ``cam``, its :class:`~finetune.cam.CamReport` in ``result``.

    >>> e = UnreadableImagesError(["cannot read image 'b.jpg': not an image"], [{"path": "a.jpg", "top": []}])
    >>> print(e); len(e.predictions), isinstance(e, DataError)
    cannot read image 'b.jpg': not an image; 1 other image was predicted
    (1, True)
    >>> print(UnreadableImagesError(["cannot read image 'b.jpg': x", "cannot read image 'c.jpg': y"], named=5))
    2 of the 5 image files named cannot be read (the first: cannot read image 'b.jpg': x)
    """

    def __init__(self, unreadable: list[str], predictions: list | None = None, *, named: int | None = None,
                 done: str = "predicted", result: Any = None) -> None:
        self.unreadable, self.predictions, self.result = list(unreadable), list(predictions or []), result
        n = len(self.unreadable)  # (predict's records of unreadable images, with "error", are not predictions)
        count = sum(not (isinstance(p, dict) and "error" in p) for p in self.predictions)
        of = f"{n} of the {named} image files named" if named is not None else f"{n} of the image files named"
        head = self.unreadable[0] if n == 1 else f"{of} cannot be read (the first: {self.unreadable[0]})"
        tail = f"; {count} other image{' was' if count == 1 else 's were'} {done}" if count else ""
        super().__init__(head + tail)


class DataWarning(UserWarning):
    """Data that is used, with a part left out the user should know about (images of kinds
    that are not read). The command prints it as one ``finetune: warning:`` line.

    >>> import pathlib, tempfile, warnings
    >>> from PIL import Image
    >>> from finetune import DataWarning
    >>> from finetune.data.samples import find_splits
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for c in ("cat", "dog"):
    ...     (root / c).mkdir()
    ...     for i in range(10):
    ...         Image.new("RGB", (8, 8)).save(root / c / f"{i}.jpg")
    >>> _ = (root / "cat" / "photo.heic").write_bytes(b"")             # a kind finetune does not read
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     train, val = find_splits(root)
    >>> caught[0].category is DataWarning, len(train) + len(val)
    (True, 20)
    >>> print(str(caught[0].message).replace(str(root), "DATA"))
    'DATA': skipped 1 image of kinds finetune does not read (.heic: 1): convert them to JPEG or PNG to use them
    """


class ModelError(FinetuneError):
    """An architecture name is unknown or a model cannot be built.

    >>> from finetune import create_model
    >>> create_model("resnet19", num_classes=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.ModelError: unknown torchvision model 'resnet19'; did you mean resnet18, ...?
    """


class CheckpointError(FinetuneError):
    """A checkpoint file is missing, unreadable, truncated or incomplete.

    >>> import tempfile
    >>> from finetune import Checkpointer
    >>> Checkpointer(tempfile.mkdtemp()).load()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.CheckpointError: no complete checkpoint in '...checkpoints': nothing to resume from (Checkpointer.latest() is None): start without resuming (no --resume)
    """


class WeightsError(FinetuneError):
    """Weights cannot be read or do not fit the model.

    >>> import torch
    >>> from finetune import load_weights
    >>> load_weights(torch.nn.Linear(2, 2), {"weight": torch.zeros(3, 2)})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.NothingMatchedError: <state dict>: 0 tensors loaded: all 1 matching names have other shapes ...
    """


class NothingMatchedError(WeightsError):
    """Not one tensor of the weights fits the model (no name in common, or every common name of another shape):
    another architecture's file, as a whole."""


class UnsafeCheckpointError(WeightsError):
    """A file needs code execution to load and the user did not pass ``--trust``.

    >>> import fractions, tempfile, torch
    >>> from finetune import read_state_dict
    >>> path = tempfile.mkdtemp() + "/old.pt"
    >>> torch.save({"state_dict": {"w": torch.zeros(1)}, "ratio": fractions.Fraction(1, 3)}, path)
    >>> read_state_dict(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.UnsafeCheckpointError: ...: refusing to unpickle fractions.Fraction: loading it could run code ...
    >>> list(read_state_dict(path, trust=True))
    ['w']
    """


_GIVEN_AS_NAME = object()
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def one_line(message: object) -> str:
    """``message`` as one line for stderr: newlines, other control characters and terminal escapes (of a file
    name, say) folded into single spaces.

    >>> one_line("skipped 'a\\nb\\x1b[31m.jpg':\\n  not an image")
    "skipped 'a b .jpg': not an image"
    """
    return " ".join(_CONTROL.sub(" ", str(message)).split())


def named(name: str, value: Any = _GIVEN_AS_NAME, *, flag: str | None = None) -> str:
    """How a message names a setting: the Python argument (or config.yaml field) first, then the CLI flag,
    since a Python caller or a config file's editor has no flags. ``value`` is shown with both; ``flag``
    replaces the one made from the name (``--img-size`` of img_size), with any value it should show.

    >>> named("img_size"), named("bn", "train"), named("augment", False, flag="--no-augment")
    ('img_size (--img-size)', "bn='train' (--bn train)", 'augment=False (--no-augment)')
    """
    if flag is None:
        flag = "--" + name.replace("_", "-") + ("" if value is _GIVEN_AS_NAME else f" {value}")
    return f"{name} ({flag})" if value is _GIVEN_AS_NAME else f"{name}={value!r} ({flag})"


_OS_HINTS = {
    errno.EACCES: "check its permissions, or use another path",
    errno.EPERM: "check its permissions, or use another path",
    errno.ENOSPC: "the disk is full: free some space, or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.ENOENT: "it does not exist",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder where a file is expected",
    errno.EEXIST: "something of that name is already there",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer --workers",
}


def describe_os_error(e: OSError) -> str:
    """One line for an OSError from the file system: the path, what the system said, what to do.

    >>> import errno
    >>> describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/data/run"))
    "'/data/run': Permission denied: check its permissions, or use another path"
    >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device"))
    'No space left on device: the disk is full: free some space, or write elsewhere'
    """
    what = e.strerror or (os.strerror(e.errno) if e.errno else str(e) or type(e).__name__)
    paths = [os.fsdecode(p) for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(f"'{p}'" for p in paths)
    hint = _OS_HINTS.get(e.errno) if e.errno is not None else None
    if e.errno == errno.EEXIST and paths and os.path.exists(paths[0]) and not os.path.isdir(paths[0]):
        hint = "it is a file where a folder is needed: move it, or use another path"
    return ": ".join(part for part in (where, what, hint) if part)

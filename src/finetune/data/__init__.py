"""Datasets and the input pipeline.

>>> from finetune.data import Samples
>>> Samples.__name__
'Samples'
"""

from __future__ import annotations

import importlib
from typing import Any

from finetune.data.samples import Samples, find_splits, read_csv, scan_folder, stratified_split

_LAZY = {
    "make_shapes": "finetune.data.shapes",
    "shapes_root": "finetune.data.shapes",
    "ShapesSpec": "finetune.data.shapes",
    "build_loader": "finetune.data.loader",
    "Loader": "finetune.data.loader",
}

__all__ = ["Samples", "find_splits", "read_csv", "scan_folder", "stratified_split", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'finetune.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

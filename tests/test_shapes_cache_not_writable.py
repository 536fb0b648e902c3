"""The built-in dataset's cache that cannot be written (a read-only or full home on a cluster): the error names
the cache and FINETUNE_CACHE, not --out (the run directory has nothing to do with it)."""

import errno
import os

import pytest

from finetune.data import shapes
from finetune.data.shapes import ShapesSpec, shapes_root
from finetune.errors import DataError


@pytest.mark.parametrize("err", [errno.EROFS, errno.ENOSPC])
def test_unwritable_cache_names_finetune_cache(tmp_path, monkeypatch, err):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))

    def refuse(*args, **kwargs):
        raise OSError(err, os.strerror(err), str(tmp_path / "cache"))

    monkeypatch.setattr(shapes.tempfile, "mkdtemp", refuse)
    with pytest.raises(DataError, match="cache .*FINETUNE_CACHE") as info:
        shapes_root(ShapesSpec(per_class=1, val_per_class=1, size=16))
    assert "--out" not in str(info.value)

"""A 16-bit image holding 12- or 10-bit data (every value under 4096, as scientific and medical cameras
write it) is read by its high byte, as torchvision's ``ToDtype(torch.uint8, scale=True)`` does, so it comes
out nearly black: one ``finetune: warning:`` per run names the first such file (the pixels are unchanged)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.data import decode
from finetune.data.decode import check_file, decode_crop, decode_eval
from finetune.data.loader import build_loader
from finetune.data.samples import Samples
from finetune.data.transforms import CropBox


def _grey16(path: Path, top: int, seed: int = 0) -> str:
    values = np.random.default_rng(seed).integers(0, top, (24, 28), dtype=np.uint16)
    values[0, 0] = top
    Image.fromarray(values).save(path)  # a 16-bit greyscale PNG (PIL mode I;16)
    return str(path)


@pytest.fixture(autouse=True)
def _not_warned_yet() -> Iterator[None]:
    """The warning is given once per process (and its forked workers): an earlier test may have given it."""
    flag = getattr(decode, "_DARK_WARNED", bytearray(1))
    before, flag[0] = flag[0], 0
    yield
    flag[0] = before


def _dark(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "16-bit image whose values all lie below 4096" in str(w.message)]


def test_twelve_bit_data_is_named_once_and_read_as_before(tmp_path: Path) -> None:
    paths = [_grey16(tmp_path / f"{i}.png", 3000, seed=i) for i in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crops = [decode_eval(p, 16) for p in paths] + [decode_crop(p, lambda w, h: CropBox(0, 0, h, w), 16) for p in paths]
        assert all(check_file(p) is None for p in paths)
    messages = _dark(caught)
    assert len(messages) == 1 and messages[0].startswith(f"'{paths[0]}' is a 16-bit image"), messages
    assert "rescale such files to the full 16-bit range" in messages[0]
    assert max(int(c.max()) for c in crops) == 3000 >> 8  # still the high byte: only a warning


def test_full_range_and_8_bit_values_are_not_warned_about(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for top in (4096, 65535, 255):  # 0..255 in a 16-bit file is read as it is, not as its high byte
            decode_eval(_grey16(tmp_path / f"{top}.png", top), 16)
    assert not _dark(caught)


def test_worker_processes_warn_once_between_them(tmp_path: Path) -> None:
    paths = [_grey16(tmp_path / f"{i}.png", 3000, seed=i) for i in range(8)]
    said = tmp_path / "said.txt"

    def show(message: Warning | str, *args: object, **kwargs: object) -> None:  # (also in forked workers)
        with open(said, "a") as f:
            f.write(f"{message}\n")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        with build_loader(Samples.from_lists(paths, [0, 1] * 4, ["a", "b"]), train=True, img_size=16, batch_size=2,
                          workers=2, log=lambda msg: None) as loader:
            for _epoch in range(2):
                assert sum(len(y) for _x, y in loader) == 8
    lines = said.read_text().splitlines() if said.exists() else []
    assert len([line for line in lines if "below 4096" in line]) == 1, lines

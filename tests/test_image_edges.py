"""Image files at the edges (found by an adversarial pass over every command's decoding): huge
images named in one warning, files closed after eval decoding, one reason for an empty file, .mpo."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest
from PIL import Image

from finetune import DataWarning
from finetune.data.decode import DECODE_ERRORS, bad_reason, decode_eval, read_file
from finetune.data.samples import scan_folder


def test_an_image_over_the_decompression_bomb_limit_is_named_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40), (9, 9, 9)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: over the warning limit, under twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        decode_eval(str(path), 32)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1 and f"'{path}' is 40x40" in messages[0], messages
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over twice the limit: PIL refuses it
    with pytest.raises(DECODE_ERRORS) as error:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decode_eval(str(path), 32)
    assert "downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS" in bad_reason(error.value)


def test_eval_decoding_closes_a_multi_frame_file(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), (c, 0, 0)) for c in (0, 120, 250)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        decode_eval(str(path), 16)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_an_empty_file_has_one_reason_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    reasons = []
    for decode in (lambda: decode_eval(str(path), 32), lambda: read_file(str(path))):
        with pytest.raises(DECODE_ERRORS) as error:
            decode()
        reasons.append(bad_reason(error.value))
    assert all("empty file (0 bytes)" in r for r in reasons), reasons


def test_mpo_files_are_samples(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.mpo"):
        (tmp_path / "cat").mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "cat" / name, format="JPEG")
    assert sorted(Path(p).name for p in scan_folder(tmp_path).paths) == ["a.jpg", "b.mpo"]

"""Images written by other tools than PIL, as users have them: OpenCV, imageio, tifffile, scikit-image,
matplotlib, libjpeg-turbo's cjpeg and imagecodecs, pillow-heif, and byte-level flavours cameras and
uploaders leave (EXIF/XMP/ICC segments, Samsung trailers, appended thumbnails, RLE and 16-bit BMPs,
interlaced PNGs, decompression-bomb headers).

The files are committed (tests/fixtures/other_tools_images/, written by
tests/fixtures/make_other_tools_images.py, tool versions in its versions.json), so these tests need
none of those tools. The reference is torchvision's ImageFolder: ``Image.open(f).convert("RGB")``, then
``Resize(int(S / 0.875))`` + ``CenterCrop(S)`` for eval, with the loader's two documented exceptions
(16-bit greyscale keeps its high byte; float greyscale in [0, 1] is scaled to 0..255, where PIL gives
black). A file torchvision cannot read either is skipped with a one-line reason that says what it is.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.data.decode import check_file, decode_capped, decode_crop, decode_eval
from finetune.data.loader import build_loader, scan_bad_files
from finetune.data.samples import is_image_name, scan_folder
from finetune.data.transforms import IMAGENET_MEAN, IMAGENET_STD, CropBox, resize_hwc
from finetune.errors import DataError, DataWarning

ROOT = Path(__file__).resolve().parent / "fixtures" / "other_tools_images"
MANIFEST: dict[str, int] = json.loads((ROOT / "manifest.json").read_text())["files"]
S = 32
TOL = 3  # levels of 255, per pixel, between the loader and torchvision's float pipeline
quiet = {"log": lambda msg: None}

# what PIL (and so torchvision's ImageFolder) cannot read, and what the one-line reason must say
UNREADABLE = {
    "handmade/huge_header_100000x100000.png": "DecompressionBombError: Image size (10000000000 pixels) exceeds limit",
    "handmade/huge_header_60000x60000.bmp": "DecompressionBombError",
    "handmade/huge_header_65500x65500.jpg": "DecompressionBombError",
    "handmade/huge_header_65535x65535.gif": "DecompressionBombError",
    "libjpeg/imagecodecs_12bit.jpg": "a 12-bit JPEG",
    "libjpeg/imagecodecs_12bit_grey.jpg": "a 12-bit JPEG",
    "libjpeg/imagecodecs_lossless_grey16.jpg": "a 16-bit JPEG",
    "pillow_heif/iphone_export_really_heic.jpg": "an HEIF/HEIC image",
    "opencv/float32_rgb.tif": "a TIFF with 3 samples per pixel of 32-bit floats",
    "tifffile/float32_rgb.tif": "a TIFF with 3 samples per pixel of 32-bit floats",
    "tifffile/float64_grey.tif": "a TIFF with 1 sample per pixel of 64-bit floats",
    "skimage/camera_float.tif": "of 64-bit floats",
    "tifffile/five_channels.tif": "a TIFF with 5 samples per pixel of 8-bit unsigned integers",
    "tifffile/jpegxl.tif": "JPEG XL compression",
    "tifffile/webp.tif": "WebP compression",
}
SCANNED = {rel for rel in MANIFEST if is_image_name(Path(rel).name)}
READABLE = sorted(SCANNED - set(UNREADABLE))
CLASSES = tuple(sorted({rel.split("/")[0] for rel in MANIFEST}))


def reference_rgb(path: str | Path) -> Image.Image:
    """``Image.open(path).convert("RGB")`` with the loader's two documented exceptions: 16-bit
    greyscale keeps its high byte (PIL clips it to white) and float greyscale whose values all lie in
    [0, 1] is scaled to 0..255 (PIL truncates it to black)."""
    img = Image.open(path)
    if img.mode == "I" or img.mode.startswith("I;16"):
        values = np.asarray(img).astype(np.int64).clip(0, 65535)
        return Image.fromarray((values >> 8 if values.max() > 255 else values).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if values.min() >= 0 and values.max() <= 1:
            return Image.fromarray((values * 255).round().astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def reference_eval(path: str | Path) -> torch.Tensor:
    from torchvision import transforms as T

    return T.Compose([T.Resize(int(S / 0.875)), T.CenterCrop(S), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(reference_rgb(path))


def levels(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean) * 255


def _rel(path: str) -> str:
    return Path(os.path.relpath(path, ROOT)).as_posix()


@pytest.fixture(autouse=True)
def _no_bomb_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


# --------------------------------------------------------------------------- the corpus and scanning
def test_the_corpus_is_small_and_complete() -> None:
    assert sum(MANIFEST.values()) < 1_000_000
    for rel, size in MANIFEST.items():
        assert (ROOT / rel).stat().st_size == size, rel
    versions = json.loads((ROOT / "versions.json").read_text())
    assert {"opencv-python-headless", "imageio", "tifffile", "scikit-image", "matplotlib", "imagecodecs"} <= set(versions)
    assert set(UNREADABLE) <= SCANNED


def test_scanning_finds_exactly_the_image_files() -> None:
    with pytest.warns(DataWarning, match=r"skipped 4 images of kinds finetune does not read \(\.jxl: 1, \.svg: 1, "
                                         r"\.hdr: 1, \.heic: 1\)"):
        s = scan_folder(ROOT)
    assert s.classes == CLASSES
    assert {_rel(p) for p in s.paths.tolist()} == SCANNED  # not .heic, .jxl, .hdr, .pfm, .pam, .svg, .pdf
    # torchvision's own scan, told the same extensions, gives the same files in the same order with the same labels
    from torchvision.datasets import ImageFolder

    tv = ImageFolder(str(ROOT), is_valid_file=lambda p: is_image_name(Path(p).name), allow_empty=True)
    assert tv.classes == list(CLASSES)
    assert [(p, y) for p, y in tv.samples] == list(zip(s.paths.tolist(), s.labels.tolist(), strict=True))


# --------------------------------------------------------------------------- decoding, file by file
@pytest.mark.parametrize("rel", READABLE)
def test_every_readable_file_decodes_like_torchvision(rel: str) -> None:
    path = str(ROOT / rel)
    assert check_file(path) is None
    ref = torch.from_numpy(np.array(reference_rgb(path))).int()
    whole = decode_crop(path, lambda w, h: CropBox(0, 0, h, w), 10**6, dct=False)  # the train decoder
    assert whole.shape == ref.shape and whole.dtype == torch.uint8
    assert (whole.int() - ref).abs().max() <= 1
    capped = decode_capped(path, 36, dct=False)  # what cache="ram" stores for training
    assert (capped.int() - resize_hwc(ref.to(torch.uint8), tuple(capped.shape[:2])).int()).abs().max() <= 1
    ours = decode_eval(path, S, dct=False).permute(2, 0, 1).float()
    assert (ours - levels(reference_eval(path))).abs().max() <= TOL
    scaled = decode_eval(path, S).permute(2, 0, 1).float()  # DCT-scaled for the 160 px JPEGs: close, not equal
    assert (scaled - levels(reference_eval(path))).abs().mean() < 3


@pytest.mark.parametrize("rel", sorted(UNREADABLE))
def test_what_torchvision_cannot_read_is_a_one_line_reason(rel: str) -> None:
    path = str(ROOT / rel)
    with pytest.raises(Exception):  # noqa: B017,PT011 (torchvision's ImageFolder would crash on it)
        Image.open(path).convert("RGB")
    reason = check_file(path)
    assert reason is not None and "\n" not in reason and UNREADABLE[rel] in reason, reason
    assert "BytesIO" not in reason and str(ROOT) not in reason


def test_float_greyscale_is_scaled_not_black() -> None:
    """A float TIFF in [0, 1] (skimage's and OpenCV users' convention): PIL's convert("RGB") truncates every
    value to 0 or 1 (a black image); the loader scales it, as ``ToDtype(torch.uint8, scale=True)`` does."""
    for rel in ("opencv/float32_grey.tif", "tifffile/float32_grey.tif"):
        path = str(ROOT / rel)
        assert Image.open(path).mode == "F" and np.asarray(Image.open(path).convert("L")).max() <= 1
        got = decode_crop(path, lambda w, h: CropBox(0, 0, h, w), 10**6)
        values = np.asarray(Image.open(path), dtype=np.float64)
        assert np.array_equal(got[..., 0].numpy(), (values * 255).round().astype(np.uint8))
        assert int(got.max()) > 200


# --------------------------------------------------------------------------- through the loader
@pytest.mark.parametrize(("workers", "cache"), [(0, None), (2, None), (0, "ram"), (2, "ram")])
def test_eval_batches_match_torchvision(workers: int, cache: str | None) -> None:
    s = scan_folder(ROOT)
    with build_loader(s, train=False, img_size=S, batch_size=32, workers=workers, cache=cache, decode="cpu",
                      dct_scaling=False, **quiet) as loader:
        got = [(x.clone(), y.clone()) for x, y in loader]
        bad = {_rel(b.path): b.reason for b in loader.bad_file_list()}
    assert set(bad) == set(UNREADABLE)
    assert all(UNREADABLE[rel] in reason and "\n" not in reason for rel, reason in bad.items())
    images, labels = torch.cat([x for x, _ in got]), torch.cat([y for _, y in got])
    good = [i for i in range(len(s)) if _rel(s.path(i)) not in UNREADABLE]
    assert images.shape == (len(good), 3, S, S) and labels.tolist() == s.labels[good].tolist()
    for row, i in enumerate(good):
        diff = (levels(images[row]) - levels(reference_eval(s.path(i)))).abs().max()
        assert diff <= TOL, (s.path(i), float(diff))


@pytest.mark.parametrize(("workers", "cache"), [(0, "ram"), (2, None)])
def test_train_batches_are_right(workers: int, cache: str | None) -> None:
    s = scan_folder(ROOT)
    good = [i for i in range(len(s)) if _rel(s.path(i)) not in UNREADABLE]
    with build_loader(s, train=True, img_size=S, batch_size=16, workers=workers, cache=cache, drop_last=False,
                      dct_scaling=False, **quiet) as loader:
        images, labels = zip(*[(x.clone(), y.clone()) for x, y in loader], strict=True)
        assert {_rel(b.path) for b in loader.bad_file_list()} == set(UNREADABLE)
        if cache == "ram":  # the store holds every readable image as the reference decodes it (capped)
            for i in range(len(s)):
                if i not in good:
                    assert not loader.store.filled(i)
                    continue
                stored = loader.store.get(i)
                ref = torch.from_numpy(np.array(reference_rgb(s.path(i))))
                assert (stored.int() - resize_hwc(ref, tuple(stored.shape[:2])).int()).abs().max() <= 1, s.path(i)
    x = torch.cat(images)
    assert x.shape == (len(good), 3, S, S) and torch.isfinite(x).all()
    lv = levels(x)
    assert lv.min() > -0.5 and lv.max() < 255.5
    assert sorted(torch.cat(labels).tolist()) == sorted(s.labels[good].tolist())


def test_strict_lists_exactly_what_cannot_be_read() -> None:
    s = scan_folder(ROOT)
    assert {_rel(b.path): UNREADABLE[_rel(b.path)] in b.reason for b in scan_bad_files(s, workers=2)} == {
        rel: True for rel in UNREADABLE}
    with pytest.raises(DataError) as e:
        build_loader(s, train=True, img_size=S, batch_size=8, workers=0, strict=True, **quiet)
    message = str(e.value)
    assert f"{len(UNREADABLE)} of {len(s)}" in message
    assert all(f"{rel}: " in message for rel in UNREADABLE) and not any(f"{rel}: " in message for rel in READABLE)


# --------------------------------------------------------------------------- the command line
TINY = ["--model", "squeezenet1_1", "--img-size", str(S), "--batch-size", "16", "--workers", "0", "--seed", "0",
        "--epochs", "1", "--warmup-epochs", "0", "-q"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune.cli import main

    out = tmp_path_factory.mktemp("other_tools") / "run"
    assert main(["train", "--data", str(ROOT), "--out", str(out), *TINY]) == 0
    return out


def test_train_on_the_folder_end_to_end(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.cli import main

    assert json.loads((trained / "classes.json").read_text()) == list(CLASSES)
    assert (trained / "checkpoints" / "best.pt").exists()
    listed = (trained / "bad_files.txt").read_text().splitlines()
    assert listed and {_rel(line.split("\t")[0]) for line in listed} <= set(UNREADABLE)
    capsys.readouterr()
    assert main(["train", "--data", str(ROOT), "--out", str(tmp_path / "strict"), "--strict-data", *TINY]) == 2
    err = capsys.readouterr().err
    before, error = err.split("finetune: error: ", 1)
    assert "images cannot be read" in error
    # (libtiff's own lines; the once-per-run warning about tifffile/grey12bit_in_16.tif comes where it comes first)
    assert [line for line in before.splitlines()
            if not line.startswith("tempfile.tif:") and "whose values all lie below 4096" not in line] == [
        f"finetune: warning: '{ROOT}': skipped 4 images of kinds finetune does not read (.jxl: 1, .svg: 1, .hdr: 1, "
        ".heic: 1): convert them to JPEG or PNG to use them"]
    assert {rel for rel in UNREADABLE if f"{rel}: " in err} and all(f"{rel}: " not in err for rel in READABLE)


def test_strict_data_lists_the_bad_files_of_both_splits() -> None:
    """The flat folder is split 90/10: one unreadable file lands in the validation split."""
    from finetune.data.loader import raise_for_bad_files
    from finetune.train import resolve_data

    train, val = resolve_data(str(ROOT), 0.1, 0)
    assert {rel for rel in UNREADABLE if rel in {_rel(p) for p in val.paths.tolist()}}  # (else this tests nothing)
    with pytest.raises(DataError) as e:
        raise_for_bad_files(train, val, workers=0)
    assert f"{len(UNREADABLE)} of {len(train) + len(val)} images" in str(e.value)
    assert all(f"{rel}: " in str(e.value) for rel in UNREADABLE)


def test_strict_check_with_worker_processes_inside_train_does_not_hang() -> None:
    """``--strict-data`` with ``--workers auto`` checks the files in a process pool, inside ``train()``, whose
    GracefulExit lets forked processes outlive their first SIGTERM: the pool's terminate then waited forever."""
    import subprocess
    import sys

    code = ("from finetune.checkpoint import GracefulExit\n"
            "from finetune.data.loader import scan_bad_files\n"
            "from finetune.data.samples import scan_folder\n"
            "with GracefulExit():\n"
            f"    print(len(scan_bad_files(scan_folder({str(ROOT)!r}), workers=2)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0 and done.stdout.strip() == str(len(UNREADABLE)), done.stderr[-2000:]


def test_cli_strict_data_lists_the_bad_files_of_both_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.cli import main

    assert main(["train", "--data", str(ROOT), "--out", str(tmp_path / "strict"), "--strict-data", *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{len(UNREADABLE)} of {len(SCANNED)} images" in err and all(f"{rel}: " in err for rel in UNREADABLE)


def test_predict_each_file_works_or_says_why(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.cli import main

    ck = str(trained / "checkpoints" / "best.pt")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", ck, "--json", "--topk", "1", *(str(ROOT / r) for r in READABLE)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [_rel(o["path"]) for o in out] == READABLE and all(o["top"][0]["class"] in CLASSES for o in out)
    for rel in sorted(UNREADABLE):
        assert main(["predict", "--checkpoint", ck, str(ROOT / rel)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("finetune: error:") and UNREADABLE[rel] in err, err

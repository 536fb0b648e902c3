"""Image folders as other programs write them: every format, flavour and oddity that real
datasets hold goes through ``build_loader`` (train and eval, 0 and 2 workers, no cache and
``cache="ram"``, ``decode="auto"``) and comes out as the right float batch.

The reference is torchvision's ImageFolder pipeline: ``PIL.Image.open(p).convert("RGB")``,
then ``Resize(int(S / 0.875))``, ``CenterCrop(S)``, ``ToTensor()``, ``Normalize(mean, std)``.
Where real files leave a choice, the loader (and so this reference) decides:

* EXIF orientation is ignored, as torchvision's ImageFolder (PIL without ``exif_transpose``)
  and ``torchvision.io.decode_jpeg`` ignore it: a phone photo is fed as its pixels are stored,
  the way the pretrained weights saw their training images;
* 16-bit greyscale (PNG, TIFF): PIL's ``convert("RGB")`` clips every value above 255 to
  white. The loader keeps the high byte (``v >> 8``, what ``ToDtype(torch.uint8, scale=True)``
  does); an image whose values all fit in 8 bits keeps them as they are (there PIL's result
  is right and is kept). :func:`reference_rgb` does the same, so 16-bit images are compared
  with that, not with PIL's white;
* hidden files (``.DS_Store``, AppleDouble ``._x.jpg``), hidden folders, ``__MACOSX`` and
  ``@eaDir`` (Synology thumbnails) folders and files without an image extension
  (``Thumbs.db``) are not samples; sub-folders of a class and symlinks are followed as
  torchvision follows them (a link back to a parent is walked once); a class folder with no
  images is a ``DataError`` naming it (torchvision raises too) rather than a class that
  silently never trains;
* the content decides the decoder, not the extension (a JPEG named ``.png`` loads as a JPEG);
* bad files (empty, truncated, not an image, a PNG whose CRC is wrong, a link to nothing) are
  skipped and listed, or with ``strict=True`` one ``DataError`` lists them all; bytes after a
  JPEG's end marker are harmless and load.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from finetune.data.bench import _photo
from finetune.data.decode import check_file, decode_capped, decode_crop
from finetune.data.loader import build_loader, scan_bad_files
from finetune.data.samples import SKIP_DIRS, is_image_name, read_csv, scan_folder
from finetune.data.transforms import IMAGENET_MEAN, IMAGENET_STD, CropBox, resize_hwc
from finetune.errors import DataError, DataWarning

S = 32  # output side: Resize(36) + CenterCrop(32)
TOL = 3  # levels of 255 between the loader and the reference, per pixel
quiet = {"log": lambda msg: None}

JPEG_CLASS = "jpeg flavours"
PNG_CLASS = "png & other formats"
ODD_CLASS = "ünïcödé 猫 shapes"
CLASSES = (JPEG_CLASS, PNG_CLASS, ODD_CLASS)  # sorted: 'j' < 'p' < 'ü'


# --------------------------------------------------------------------------- writing the files
def _rgb(seed: int, w: int = 48, h: int = 40) -> np.ndarray:
    return _photo(np.random.default_rng(seed), w, h)


def _jpeg(path: Path, arr: np.ndarray | Image.Image, **kw: object) -> None:
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    img.save(path, format="JPEG", quality=kw.pop("quality", 90), **kw)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG (grey HxW or RGB HxWx3 uint16) written by hand, as scanners and science tools do."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def _palette_with_transparency(path: Path) -> None:
    img = Image.fromarray(_rgb(7)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    img.save(path, transparency=3)


def _rgba(path: Path) -> None:
    arr = np.dstack([_rgb(8), np.linspace(0, 255, 48 * 40).reshape(40, 48).astype(np.uint8)])
    Image.fromarray(arr, "RGBA").save(path)


def _animated_gif(path: Path) -> None:
    first = Image.fromarray(_rgb(9)).convert("P", palette=Image.Palette.ADAPTIVE)
    second = Image.fromarray(255 - _rgb(9)).convert("P", palette=Image.Palette.ADAPTIVE)
    first.save(path, format="GIF", save_all=True, append_images=[second], duration=100, loop=0)


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": what phones write for a portrait shot
    _jpeg(path, _rgb(10, 56, 40), exif=exif.tobytes())


def _icc(path: Path) -> None:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    _jpeg(path, _rgb(11), icc_profile=profile)


def _mpo(path: Path) -> None:
    """A multi-picture JPEG (what phones write for portrait/depth shots), named .jpg."""
    Image.fromarray(_rgb(12)).save(path, format="MPO", save_all=True, append_images=[Image.fromarray(_rgb(13))])


def _torchvision_jpeg(path: Path) -> None:
    import torchvision.io

    data = torchvision.io.encode_jpeg(torch.from_numpy(_rgb(14)).permute(2, 0, 1).contiguous(), quality=85)
    path.write_bytes(data.numpy().tobytes())


def _torchvision_png(path: Path) -> None:
    import torchvision.io

    torchvision.io.write_png(torch.from_numpy(_rgb(15)).permute(2, 0, 1).contiguous(), str(path))


def _jpeg_bytes(seed: int, **kw: object) -> bytes:
    buf = io.BytesIO()
    _jpeg(buf, _rgb(seed), **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def _png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(seed)).save(buf, format="PNG")
    return buf.getvalue()


def _bad_crc_png() -> bytes:
    """Pixel data intact, IDAT's CRC wrong: PIL alone would load it, libpng refuses it."""
    data = bytearray(_png_bytes(16))
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4:at])[0]
    data[at + 4 + length] ^= 0xFF
    return bytes(data)


Writer = Callable[[Path], None]
GOOD: dict[str, Writer] = {
    # JPEG flavours
    f"{JPEG_CLASS}/baseline.jpg": lambda p: _jpeg(p, _rgb(1)),
    f"{JPEG_CLASS}/progressive.jpg": lambda p: _jpeg(p, _rgb(2), progressive=True),
    f"{JPEG_CLASS}/subsampling_444.jpg": lambda p: _jpeg(p, _rgb(3), subsampling=0),
    f"{JPEG_CLASS}/subsampling_422.jpg": lambda p: _jpeg(p, _rgb(4), subsampling=1),
    f"{JPEG_CLASS}/SUBSAMPLING_420.JPG": lambda p: _jpeg(p, _rgb(5), subsampling=2),
    f"{JPEG_CLASS}/grey.JPEG": lambda p: _jpeg(p, Image.fromarray(_rgb(6)).convert("L")),
    f"{JPEG_CLASS}/cmyk_photoshop.jpg": lambda p: _jpeg(p, Image.fromarray(_rgb(17)).convert("CMYK")),
    f"{JPEG_CLASS}/exif_orientation_6.jpg": _exif_rotated,
    f"{JPEG_CLASS}/restart_markers.jpg": lambda p: _jpeg(p, _rgb(18), restart_marker_blocks=1),
    f"{JPEG_CLASS}/icc_profile.jpg": _icc,
    f"{JPEG_CLASS}/phone_mpo.jpg": _mpo,
    f"{JPEG_CLASS}/torchvision_encoded.jpeg": _torchvision_jpeg,
    f"{JPEG_CLASS}/garbage_after_end.jpg": lambda p: p.write_bytes(_jpeg_bytes(19) + b"\x00trailing junk" * 50),
    f"{JPEG_CLASS}/jpeg_named.png": lambda p: p.write_bytes(_jpeg_bytes(20)),
    f"{JPEG_CLASS}/nested/deeper/inside.jpg": lambda p: _jpeg(p, _rgb(21)),
    # other formats
    f"{PNG_CLASS}/rgb.png": lambda p: Image.fromarray(_rgb(22)).save(p),
    f"{PNG_CLASS}/rgba.png": _rgba,
    f"{PNG_CLASS}/palette_transparency.png": _palette_with_transparency,
    f"{PNG_CLASS}/la.png": lambda p: Image.fromarray(_rgb(23)).convert("LA").save(p),
    f"{PNG_CLASS}/grey.png": lambda p: Image.fromarray(_rgb(24)).convert("L").save(p),
    f"{PNG_CLASS}/bilevel.png": lambda p: Image.fromarray(_rgb(25)).convert("1").save(p),
    f"{PNG_CLASS}/grey16.png": lambda p: _png16(p, np.asarray(Image.fromarray(_rgb(26)).convert("L")).astype(np.uint16) * 257),
    f"{PNG_CLASS}/grey16_low_values.png": lambda p: _png16(p, np.asarray(Image.fromarray(_rgb(27)).convert("L")).astype(np.uint16)),
    f"{PNG_CLASS}/rgb16.png": lambda p: _png16(p, _rgb(28).astype(np.uint16) * 257),
    f"{PNG_CLASS}/grey16.tif": lambda p: Image.fromarray(np.asarray(Image.fromarray(_rgb(29)).convert("L")).astype(np.uint16) * 257).save(p),
    f"{PNG_CLASS}/torchvision_written.png": _torchvision_png,
    f"{PNG_CLASS}/UPPER.Png": lambda p: Image.fromarray(_rgb(30)).save(p, format="PNG"),
    f"{PNG_CLASS}/png_named.jpg": lambda p: p.write_bytes(_png_bytes(31)),
    f"{PNG_CLASS}/bitmap.bmp": lambda p: Image.fromarray(_rgb(32)).save(p),
    f"{PNG_CLASS}/animated.gif": _animated_gif,
    f"{PNG_CLASS}/photo.webp": lambda p: Image.fromarray(_rgb(33)).save(p, quality=90),
    f"{PNG_CLASS}/scan.tiff": lambda p: Image.fromarray(_rgb(34)).save(p),
    # sizes: smaller than the crop, extreme aspect ratios
    f"{ODD_CLASS}/one_pixel.jpg": lambda p: _jpeg(p, _rgb(35, 1, 1)),
    f"{ODD_CLASS}/one_pixel.png": lambda p: Image.fromarray(_rgb(36, 1, 1)).save(p),
    f"{ODD_CLASS}/narrow_7x300.png": lambda p: Image.fromarray(_rgb(37, 7, 300)).save(p),
    f"{ODD_CLASS}/flat_300x7.jpg": lambda p: _jpeg(p, _rgb(38, 300, 7)),
    f"{ODD_CLASS}/panorama_900x6.jpg": lambda p: _jpeg(p, _rgb(39, 900, 6)),
    f"{ODD_CLASS}/sliver_3x500.png": lambda p: Image.fromarray(_rgb(40, 3, 500)).save(p),
    f"{ODD_CLASS}/small_20x15.jpg": lambda p: _jpeg(p, _rgb(41, 20, 15)),
}
if features.check("avif"):  # Pillow built with libavif (the wheels are)
    GOOD[f"{PNG_CLASS}/photo.avif"] = lambda p: Image.fromarray(_rgb(47)).save(p, quality=90)
# other kinds Pillow reads (torchvision's ImageFolder skips them)
if features.check("jpg_2000"):
    GOOD[f"{PNG_CLASS}/photo.jp2"] = lambda p: Image.fromarray(_rgb(50)).save(p)
    GOOD[f"{PNG_CLASS}/codestream.J2K"] = lambda p: Image.fromarray(_rgb(51)).save(p)
GOOD[f"{PNG_CLASS}/netpbm.pnm"] = lambda p: Image.fromarray(_rgb(52)).save(p)
GOOD[f"{PNG_CLASS}/bilevel.pbm"] = lambda p: Image.fromarray(_rgb(53)).convert("1").save(p)
GOOD[f"{PNG_CLASS}/targa.tga"] = lambda p: Image.fromarray(_rgb(54)).save(p)
GOOD[f"{PNG_CLASS}/windows.dib"] = lambda p: Image.fromarray(_rgb(55)).save(p)
GOOD[f"{PNG_CLASS}/animated.apng"] = lambda p: Image.fromarray(_rgb(56)).save(
    p, format="PNG", save_all=True, append_images=[Image.fromarray(_rgb(57))])
if "QOI" in Image.SAVE:
    GOOD[f"{PNG_CLASS}/quite_ok.qoi"] = lambda p: Image.fromarray(_rgb(58)).save(p)
BAD: dict[str, Callable[[], bytes]] = {
    f"{JPEG_CLASS}/zero_bytes.jpg": lambda: b"",
    f"{JPEG_CLASS}/truncated_mid_scan.jpg": lambda: _jpeg_bytes(42)[:900],
    f"{PNG_CLASS}/actually_text.jpg": lambda: b"this is a text file, not a photo\n" * 10,
    f"{PNG_CLASS}/bad_crc.png": _bad_crc_png,
    f"{ODD_CLASS}/truncated.png": lambda: _png_bytes(43)[:700],
    f"{ODD_CLASS}/truncated_progressive.jpg": lambda: _jpeg_bytes(48, progressive=True)[:1500],
}
LINKED = f"{ODD_CLASS}/symlinked.jpg"  # -> a file outside the tree
LINKED_DIR = f"{ODD_CLASS}/linked folder"  # -> a folder outside the tree, holding one image
LOOP = f"{ODD_CLASS}/loop"  # -> its own class folder: scanned once
DANGLING = f"{PNG_CLASS}/dangling link.jpg"  # -> nothing: a bad file, listed
# a name that is not UTF-8 (an old zip's Latin-1 'café'): Python keeps it as surrogates
NON_UTF8 = f"{ODD_CLASS}/" + b"caf\xe9.jpg".decode("utf-8", "surrogateescape") if sys.platform == "linux" else None
JUNK = {  # never samples: hidden, AppleDouble, OS droppings, not images
    ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(64),
    f"{JPEG_CLASS}/.DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(64),
    f"{JPEG_CLASS}/._baseline.jpg": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64),
    f"{PNG_CLASS}/Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64),
    f"{PNG_CLASS}/desktop.ini": b"[.ShellClassInfo]\r\n",
    f"{ODD_CLASS}/readme.txt": b"collected 2024\n",
    f"{ODD_CLASS}/.thumbnails/hidden_folder.jpg": _jpeg_bytes(44),
    f"__MACOSX/{JPEG_CLASS}/._baseline.jpg": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64),
    f"{PNG_CLASS}/@eaDir/rgb.png/SYNOPHOTO_THUMB_S.jpg": _jpeg_bytes(49),  # Synology NAS thumbnails
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("formats")
    root = base / "data"
    for rel, write in GOOD.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write(root / rel)
    for rel, make in BAD.items():
        (root / rel).write_bytes(make())
    for rel, data in JUNK.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    outside = base / "elsewhere"
    (outside / "folder").mkdir(parents=True)
    _jpeg(outside / "target.jpg", _rgb(45))
    _jpeg(outside / "folder" / "via_linked_folder.jpg", _rgb(46))
    os.symlink(outside / "target.jpg", root / LINKED)
    os.symlink(outside / "folder", root / LINKED_DIR, target_is_directory=True)
    os.symlink(root / ODD_CLASS, root / LOOP, target_is_directory=True)
    os.symlink(outside / "deleted.jpg", root / DANGLING)
    if NON_UTF8 is not None:
        _jpeg(root / NON_UTF8, _rgb(50))
    return root


GOOD_NAMES = {*GOOD, LINKED, f"{LINKED_DIR}/via_linked_folder.jpg"}  # (test ids: printable names only)
LOADED = GOOD_NAMES | ({NON_UTF8} if NON_UTF8 is not None else set())
BAD_NAMES = {*BAD, DANGLING}


def _rel(root: Path, path: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def reference_rgb(path: str | Path) -> Image.Image:
    """``Image.open(path).convert("RGB")``, except that 16-bit greyscale keeps its high byte
    (PIL clips it to white): the loader's documented semantics."""
    img = Image.open(path)
    if img.mode == "I" or img.mode.startswith("I;16"):
        values = np.asarray(img).astype(np.int64).clip(0, 65535)
        return Image.fromarray((values >> 8 if values.max() > 255 else values).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def reference_eval(path: str | Path) -> torch.Tensor:
    from torchvision import transforms as T

    tv = T.Compose([T.Resize(int(S / 0.875)), T.CenterCrop(S), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return tv(reference_rgb(path))


def levels(x: torch.Tensor) -> torch.Tensor:
    """Normalised float CHW (or NCHW) back to 0..255 levels, unrounded."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean) * 255


# --------------------------------------------------------------------------- finding the files
def test_scan_finds_every_image_and_no_junk(root: Path) -> None:
    s = scan_folder(root)
    assert s.classes == CLASSES
    found = {_rel(root, p) for p in s.paths.tolist()}
    assert found == LOADED | BAD_NAMES  # bad files are samples (skipped when read); junk is not
    for p, label in zip(s.paths.tolist(), s.labels.tolist(), strict=True):
        assert _rel(root, p).split("/")[0] == CLASSES[label]
    # torchvision's order within a class (its file filter told to skip what is skipped here)
    from torchvision.datasets.folder import make_dataset

    def valid(path: str) -> bool:
        parts = Path(path).relative_to(root).parts
        return is_image_name(parts[-1]) and not any(p.startswith(".") or p in SKIP_DIRS for p in parts[:-1])

    for label in (0, 1):  # (not the class with a link to itself: torchvision's walk would follow it round)
        tv = make_dataset(str(root), {CLASSES[label]: label}, is_valid_file=valid)
        assert [p for p, y in zip(s.paths.tolist(), s.labels.tolist(), strict=True) if y == label] == [p for p, _ in tv]


def test_empty_class_folder_is_a_clear_error(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _jpeg(tmp_path / name / "x.jpg", _rgb(1))
    (tmp_path / "empty class").mkdir()
    (tmp_path / "empty class" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # junk only: still empty
    with pytest.raises(DataError, match="empty class"):
        scan_folder(tmp_path)
    with pytest.raises(DataError, match="empty class"):
        build_loader(str(tmp_path), train=True, img_size=S, batch_size=2, workers=0, **quiet)
    # a split scanned with the training split's classes may lack some of them
    assert scan_folder(tmp_path, classes=("a", "b", "empty class")).class_counts() == {"a": 1, "b": 1, "empty class": 0}


def test_images_of_kinds_not_read_are_counted_and_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """iPhone .heic photos or camera raw files among the JPEGs were left out without a word."""
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        for i in range(2):
            _jpeg(data / name / f"x{i}.jpg", _rgb(i))
    (data / "a" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (data / "a" / "IMG_0002.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (data / "b" / "raw.DNG").write_bytes(b"II*\x00")
    (data / "b" / "._raw.DNG").write_bytes(b"")  # (AppleDouble: not counted)
    with pytest.warns(DataWarning, match=r"skipped 3 images of kinds finetune does not read \(\.heic: 2, \.dng: 1\)"):
        assert len(scan_folder(data)) == 4
    from finetune.cli import main

    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--val-split", "0.5", *TINY]) == 0
    assert "finetune: warning: " in capsys.readouterr().err.split("skipped 3 images")[0].splitlines()[-1]
    with pytest.warns(DataWarning, match=r"skipped 2 images of kinds"):  # predict's folders too
        from finetune.train import _expand_inputs

        assert [p.name for p in _expand_inputs([str(data / "a")])] == ["x0.jpg", "x1.jpg"]
    (data / "c").mkdir()  # a class of such images only: the error says what the folders hold
    (data / "c" / "IMG_0003.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(DataError, match=r"'c' .* no images .*; '.*' holds 4 images of kinds finetune does not read"):
        scan_folder(data)
    with pytest.raises(DataError, match=r"no images found in .*; it holds 1 image of kinds"):
        _expand_inputs([str(data / "c")])


def test_predict_folders_skip_what_dataset_folders_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jupyter's .ipynb_checkpoints copies (and __MACOSX, hidden folders) were predicted too."""
    from finetune.train import _expand_inputs

    imgs = tmp_path / "imgs"
    for rel in ("a.jpg", "sub/b.jpg", ".ipynb_checkpoints/a-checkpoint.jpg", "__MACOSX/c.jpg", "._d.jpg"):
        (imgs / rel).parent.mkdir(parents=True, exist_ok=True)
        _jpeg(imgs / rel, _rgb(1))
    monkeypatch.chdir(tmp_path)
    assert _expand_inputs(["imgs"]) == [Path("imgs/a.jpg"), Path("imgs/sub/b.jpg")]  # as the folder was spelled


# --------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("rel", sorted(GOOD_NAMES))
def test_every_good_file_decodes_like_the_reference(root: Path, rel: str) -> None:
    path = str(root / rel)
    assert check_file(path) is None  # strict mode does not flag it
    ref = torch.from_numpy(np.array(reference_rgb(path))).int()
    whole = decode_crop(path, lambda w, h: CropBox(0, 0, h, w), 10**6)  # the train path, full size
    assert whole.shape == ref.shape and whole.dtype == torch.uint8
    assert (whole.int() - ref).abs().max() <= 1, rel
    capped = decode_capped(path, 36)  # what cache="ram" stores for training
    want = resize_hwc(ref.to(torch.uint8), tuple(capped.shape[:2]))
    assert min(capped.shape[:2]) <= 36 and (capped.int() - want.int()).abs().max() <= 1, rel


def test_exif_orientation_is_ignored_like_torchvision(root: Path) -> None:
    path = root / JPEG_CLASS / "exif_orientation_6.jpg"
    assert Image.open(path).getexif().get(0x0112) == 6
    assert tuple(decode_crop(str(path), lambda w, h: CropBox(0, 0, h, w), 10**6).shape) == (40, 56, 3)  # as stored


def test_sixteen_bit_images_are_scaled_not_clipped(root: Path) -> None:
    for name, seed in (("grey16.png", 26), ("grey16.tif", 29)):
        path = str(root / PNG_CLASS / name)
        got = decode_crop(path, lambda w, h: CropBox(0, 0, h, w), 10**6)[..., 0].numpy()
        assert np.array_equal(got, np.asarray(Image.fromarray(_rgb(seed)).convert("L")))  # not PIL's white
    low = decode_crop(str(root / PNG_CLASS / "grey16_low_values.png"), lambda w, h: CropBox(0, 0, h, w), 10**6)
    assert np.array_equal(low[..., 0].numpy(), np.asarray(Image.fromarray(_rgb(27)).convert("L")))
    rgb = decode_crop(str(root / PNG_CLASS / "rgb16.png"), lambda w, h: CropBox(0, 0, h, w), 10**6)
    assert np.array_equal(rgb.numpy(), _rgb(28))


BIG_JPEGS: dict[str, Callable[[Path, np.ndarray], None]] = {
    "baseline.jpg": lambda p, a: _jpeg(p, a),
    "progressive.jpg": lambda p, a: _jpeg(p, a, progressive=True),
    "subsampling_444.jpg": lambda p, a: _jpeg(p, a, subsampling=0),
    "subsampling_422.jpg": lambda p, a: _jpeg(p, a, subsampling=1),
    "grey.jpg": lambda p, a: _jpeg(p, Image.fromarray(a).convert("L")),
    "cmyk.jpg": lambda p, a: _jpeg(p, Image.fromarray(a).convert("CMYK")),
    "restart_markers.jpg": lambda p, a: _jpeg(p, a, restart_marker_rows=1),
    "mpo.jpg": lambda p, a: Image.fromarray(a).save(p, format="MPO", save_all=True, append_images=[Image.fromarray(a)]),
}


def test_dct_scaled_decoding_handles_every_jpeg_flavour(tmp_path: Path) -> None:
    """Big JPEGs take libjpeg's 1/2..1/8-scale decode (PIL ``draft``): close to the full decode, and a
    truncated one still fails instead of coming out grey."""
    from finetune.data.decode import DECODE_ERRORS, decode_eval

    arr = _rgb(60, 256, 192)
    for name, write in BIG_JPEGS.items():
        path = tmp_path / name
        write(path, arr)
        reduced = decode_crop(str(path), lambda w, h: CropBox(0, 0, h, w), 32)  # 192 / 4 >= 32: 1/4 scale
        assert tuple(reduced.shape) == (48, 64, 3), name
        ref = torch.from_numpy(np.array(reference_rgb(path)))
        small, want = resize_hwc(reduced, (24, 32)).float(), resize_hwc(ref, (24, 32)).float()
        assert (small - want).abs().mean() < 3, (name, float((small - want).abs().mean()))
        ours = decode_eval(str(path), 48).float()  # crop side 168 -> 1/2 scale
        full = decode_eval(str(path), 48, dct=False).float()
        assert (ours - full).abs().mean() < 3, name
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(DECODE_ERRORS):
            decode_crop(str(cut), lambda w, h: CropBox(0, 0, h, w), 32)
        with pytest.raises(DECODE_ERRORS):
            decode_eval(str(cut), 48)


# --------------------------------------------------------------------------- through the loader
def _check_bad(loader, root: Path) -> None:  # type: ignore[no-untyped-def]
    assert {_rel(root, b.path) for b in loader.bad_file_list()} == BAD_NAMES


@pytest.mark.parametrize(("workers", "cache"), [(0, None), (2, None), (0, "ram"), (2, "ram")])
def test_eval_batches_match_torchvision(root: Path, workers: int, cache: str | None) -> None:
    s = scan_folder(root)
    with build_loader(s, train=False, img_size=S, batch_size=16, workers=workers, cache=cache, decode="auto",
                      **quiet) as loader:
        assert loader.cache == cache
        got = [(x.clone(), y.clone()) for x, y in loader]
        _check_bad(loader, root)
    images = torch.cat([x for x, _ in got])
    labels = torch.cat([y for _, y in got])
    good = [i for i in range(len(s)) if _rel(root, s.path(i)) not in BAD_NAMES]  # eval keeps file order
    assert images.shape == (len(good), 3, S, S) and images.dtype == torch.float32
    assert torch.isfinite(images).all()
    assert labels.tolist() == s.labels[good].tolist()
    for row, i in enumerate(good):
        diff = (levels(images[row]) - levels(reference_eval(s.path(i)))).abs()
        assert diff.max() <= TOL, (s.path(i), float(diff.max()))


@pytest.mark.parametrize(("workers", "cache"), [(0, None), (2, "ram")])
def test_train_batches_are_right(root: Path, tmp_path: Path, workers: int, cache: str | None) -> None:
    s = scan_folder(root)
    n_good = len(s) - len(BAD_NAMES)
    with build_loader(s, train=True, img_size=S, batch_size=8, workers=workers, cache=cache, drop_last=False,
                      **quiet) as loader:
        for epoch in range(2):  # with the cache: the epoch that fills it, then one read from it
            loader.set_epoch(epoch)
            got = [(x.clone(), y.clone()) for x, y in loader]
            images = torch.cat([x for x, _ in got])
            labels = torch.cat([y for _, y in got])
            assert images.shape == (n_good, 3, S, S) and torch.isfinite(images).all()
            lv = levels(images)
            assert lv.min() > -0.5 and lv.max() < 255.5  # normalised 0..255 data, nothing else
            assert sorted(labels.tolist()) == sorted(y for p, y in zip(s.paths.tolist(), s.labels.tolist(), strict=True)
                                                     if _rel(root, p) not in BAD_NAMES)
        _check_bad(loader, root)
        listed = loader.write_bad_files(tmp_path / "run")
        assert listed is not None and all(Path(rel).name in listed.read_text() for rel in BAD_NAMES)
        if cache == "ram":  # the store holds each good image (capped), as the reference decodes it
            for i in range(len(s)):
                if _rel(root, s.path(i)) in BAD_NAMES:
                    assert not loader.store.filled(i)
                    continue
                stored = loader.store.get(i)
                ref = torch.from_numpy(np.array(reference_rgb(s.path(i))))
                want = resize_hwc(ref, tuple(stored.shape[:2]))
                assert (stored.int() - want.int()).abs().max() <= 1, s.path(i)


def test_folder_path_source_splits_and_loads(root: Path) -> None:
    with build_loader(str(root), train=True, img_size=S, batch_size=4, workers=0, **quiet) as loader:
        assert loader.classes == CLASSES
        n = sum(len(y) for _, y in loader)
        assert n > 0 and torch.isfinite(next(iter(loader))[0]).all()


# --------------------------------------------------------------------------- bad files
def test_strict_lists_exactly_the_bad_files(root: Path) -> None:
    s = scan_folder(root)
    assert {_rel(root, b.path) for b in scan_bad_files(s)} == BAD_NAMES
    with pytest.raises(DataError) as e:
        build_loader(s, train=True, img_size=S, batch_size=4, workers=0, strict=True, **quiet)
    message = str(e.value)
    assert f"{len(BAD_NAMES)} of {len(s)}" in message
    for rel in BAD_NAMES:
        assert f"/{Path(rel).name}: " in message
    for rel in LOADED:
        assert f"/{Path(rel).name}: " not in message, rel


# --------------------------------------------------------------------------- CSV sources
def _csv_tree(tmp_path: Path, root: Path) -> list[tuple[str, str]]:
    """Copies of a few images under tmp_path/images/<dir>/, and the (relative path, label) rows."""
    rows = []
    for k, rel in enumerate([f"{JPEG_CLASS}/baseline.jpg", f"{JPEG_CLASS}/grey.JPEG", f"{PNG_CLASS}/rgba.png",
                             f"{PNG_CLASS}/grey16.png", f"{ODD_CLASS}/one_pixel.png", f"{ODD_CLASS}/flat_300x7.jpg"]):
        dst = tmp_path / "images" / f"d{k % 2}" / Path(rel).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((root / rel).read_bytes())
        rows.append((f"images/d{k % 2}/{dst.name}", ("cat", "dog", "sea lion")[k % 3]))
    return rows


@pytest.mark.parametrize("style", ["header", "no header", "excel", "other header"])
def test_csv_with_relative_paths_and_string_labels(root: Path, tmp_path: Path, style: str) -> None:
    rows = _csv_tree(tmp_path, root)
    if style == "header":
        text = "path,label\n" + "".join(f"{p},{y}\n" for p, y in rows)
    elif style == "no header":
        text = "".join(f"{p},{y}\n" for p, y in rows)
    elif style == "excel":  # a byte-order mark, CRLF, other column names, label first, quoted cells
        text = "\ufefflabel,filename\r\n" + "".join(f'"{y}","{p}"\r\n' for p, y in rows)
    else:  # column names it cannot know, ';' separators (a German spreadsheet), a blank line
        text = "Datei;Art\n\n" + "".join(f"{p};{y}\n" for p, y in rows)
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(text, encoding="utf-8")
    samples, split = read_csv(csv_path)
    assert split is None and samples.classes == ("cat", "dog", "sea lion")
    assert [_rel(tmp_path, p) for p in samples.paths.tolist()] == [p for p, _ in rows]
    assert [samples.classes[y] for y in samples.labels.tolist()] == [y for _, y in rows]
    with build_loader(samples, train=False, img_size=S, batch_size=4, workers=0, **quiet) as loader:
        images = torch.cat([x for x, _ in loader])
    assert images.shape == (len(rows), 3, S, S)
    for row in range(len(rows)):
        assert (levels(images[row]) - levels(reference_eval(samples.path(row)))).abs().max() <= TOL


def test_csv_split_column_and_path_source(root: Path, tmp_path: Path) -> None:
    rows = _csv_tree(tmp_path, root)
    split = ["train", "train", "train", "val", "val", "val"]
    (tmp_path / "list.csv").write_text("path,label,split\n" + "".join(
        f"{p},{y},{k}\n" for (p, y), k in zip(rows, split, strict=True)))
    for train, want in ((True, 3), (False, 3)):
        with build_loader(str(tmp_path / "list.csv"), train=train, img_size=S, batch_size=1, workers=0,
                          drop_last=False, **quiet) as loader:
            images = torch.cat([x for x, _ in loader])
        assert images.shape == (want, 3, S, S) and torch.isfinite(images).all()


def test_csv_errors_say_what_is_wrong(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg", _rgb(1, 16, 16))
    (tmp_path / "missing_first.csv").write_text("gone.jpg,x\na.jpg,y\n")  # not mistaken for a header
    with pytest.raises(DataError, match="1 files that do not exist.*gone.jpg"):
        read_csv(tmp_path / "missing_first.csv")
    (tmp_path / "short.csv").write_text("path,label\na.jpg,x\na.jpg\n")
    with pytest.raises(DataError, match="fewer than 2 columns"):
        read_csv(tmp_path / "short.csv")


def test_csv_integer_labels_keep_their_numeric_order(tmp_path: Path) -> None:
    for i in range(12):
        _jpeg(tmp_path / f"{i}.jpg", _rgb(i, 16, 16))
    (tmp_path / "labels.csv").write_text("".join(f"{i}.jpg,{i}\n" for i in range(12)))
    samples, _ = read_csv(tmp_path / "labels.csv")
    assert samples.classes == tuple(str(i) for i in range(12)) and samples.labels.tolist() == list(range(12))



def test_csv_float_labels_pandas_wrote_keep_their_numeric_order(tmp_path: Path) -> None:
    """A label column pandas wrote as floats (0.0, 2.0, 10.0) is ordered as numbers, not as strings."""
    for i in range(12):
        _jpeg(tmp_path / f"{i}.jpg", _rgb(i, 16, 16))
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"{i}.jpg,{float(i)}\n" for i in range(12)))
    samples, _ = read_csv(tmp_path / "labels.csv")
    assert samples.classes == tuple(f"{float(i)}" for i in range(12)) and samples.labels.tolist() == list(range(12))

# --------------------------------------------------------------------------- the command line
TINY = ["--model", "resnet18", "--img-size", str(S), "--batch-size", "8", "--workers", "0", "--seed", "0",
        "--epochs", "1", "--warmup-epochs", "0", "-q"]


def test_cli_trains_on_the_folder_and_lists_its_bad_files(root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.cli import main

    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY]) == 0
    listed = (tmp_path / "run" / "bad_files.txt").read_text()
    assert {_rel(root, line.split("\t")[0]) for line in listed.splitlines()} <= BAD_NAMES  # those the split drew
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "strict"), "--strict-data", *TINY]) == 2
    err = capsys.readouterr().err
    assert all(f"/{Path(rel).name}: " in err for rel in BAD_NAMES)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    _jpeg(tmp_path / "empty" / "a" / "x.jpg", _rgb(1))
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run2"), *TINY]) == 2
    assert "'b'" in capsys.readouterr().err


def test_split_keeps_single_image_classes_for_training():
    from finetune.data.samples import Samples, stratified_split

    files = [f"{i}.jpg" for i in range(7)]
    s = Samples.from_lists(files, [0, 0, 0, 0, 0, 1, 2], ("a", "b", "c"))
    for fraction in (0.1, 0.5, 0.9):
        tr, va = stratified_split(s, fraction, seed=0)
        assert tr.class_counts()["b"] == tr.class_counts()["c"] == 1  # never moved to val
        assert va.class_counts()["a"] >= 1 and tr.class_counts()["a"] >= 1
    only_singles = Samples.from_lists(files[:3], [0, 1, 2], ("a", "b", "c"))
    with pytest.raises(DataError, match="no class has two images.*val/"):
        stratified_split(only_singles, 0.5, seed=0)


def test_csv_class_with_validation_rows_only_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    from finetune.data.samples import find_splits

    rows = ["path,label,split"]
    for i, (label, split) in enumerate([("cat", "train"), ("cat", "val"), ("dog", "train"), ("dog", "val"),
                                        ("bird", "val")]):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.jpg")
        rows.append(f"{tmp_path / f'{i}.jpg'},{label},{split}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="class 'bird' has rows with split 'val' but none with 'train'"):
        find_splits(tmp_path / "data.csv")

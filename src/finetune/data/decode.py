"""Decode image files into uint8 crops, by the cheapest path that gives the same image.

Per file, after reading only its header to learn the size and pick the crop:

* a JPEG whose crop is at least twice the output size: PIL with ``draft``,
  so libjpeg decodes at 1/2, 1/4 or 1/8 scale (DCT scaling): a 6 MP phone
  photo then costs about what a 0.1-0.4 MP one does;
* any other complete JPEG: ``torchvision.io.decode_jpeg`` (libjpeg-turbo into a
  tensor, measured ~30 % faster than PIL here), cropped as a view;
* everything else (PNG, WebP, truncated or odd JPEGs): PIL, which raises on
  truncated data instead of filling it with grey.

Everything returned is uint8 HWC; nothing here makes a float. The content decides
the decoder, never the file name (a JPEG called ``x.png`` decodes as a JPEG). The
pixels are those of torchvision's ImageFolder, ``PIL.Image.open(p).convert("RGB")``:

* EXIF orientation is ignored, as PIL (without ``exif_transpose``) and
  ``torchvision.io.decode_jpeg`` ignore it; ICC profiles are not applied;
* alpha is dropped (RGBA, LA, palette transparency), GIFs give their first frame,
  CMYK JPEGs (Adobe-inverted, as Photoshop writes them) are converted by libjpeg/PIL;
* one exception: 16-bit (and 32-bit integer) greyscale, which PIL's
  ``convert("RGB")`` clips to white above 255, keeps its high byte (``v >> 8``,
  what ``ToDtype(torch.uint8, scale=True)`` does), unless every value fits in
  8 bits, where PIL's result is right and is kept (:func:`to_rgb`); likewise float greyscale
  (a TIFF from skimage or OpenCV) whose values all lie in [0, 1] is scaled to 0..255, where
  PIL's ``convert("RGB")`` truncates it to a black image;
* a PNG whose chunk CRCs do not match is a bad file (libpng's rule; PIL alone
  would decode it), and so is any file PIL cannot decode completely. Bytes after
  a JPEG's end marker are ignored, as libjpeg ignores them. An image PIL cannot
  identify is named for what it is where that can be told (a 12-bit JPEG, HEIC,
  a float RGB TIFF: :func:`describe_unsupported`), not called "not an image".

>>> import tempfile, os
>>> from PIL import Image
>>> path = os.path.join(tempfile.mkdtemp(), "a.jpg")
>>> Image.new("RGB", (64, 48), (200, 10, 10)).save(path)
>>> crop = decode_crop(path, lambda w, h: CropBox(0, 0, h, w), 32)
>>> crop.shape, crop.dtype
(torch.Size([48, 64, 3]), torch.uint8)
"""

from __future__ import annotations

import contextlib
import io
import math
import mmap
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from finetune.data.transforms import (
    EVAL_CROP_PCT,
    CropBox,
    capped_size,
    dct_reduction,
    draft_size,
    eval_resize_box,
    eval_resize_side,
)
from finetune.errors import DataWarning

BoxFor = Callable[[int, int], CropBox]
# torchvision 0.29 warns that torchvision.io decoding moves to torchcodec; it still works and is the
# fastest CPU JPEG decoder here. Silence only that message.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)
# PIL's own warning names no file and comes again from each crop of the image: warn_if_huge says it once, by name
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# what PIL and torchvision raise for unreadable, truncated or non-image files
DECODE_ERRORS = (OSError, ValueError, SyntaxError, RuntimeError, EOFError, struct.error, zlib.error,
                 Image.DecompressionBombError)
# what PIL's decoders raise on some corrupt files (seen fuzzing TIFFs): turned into OSError by
# load_rgb, only around PIL's decoding, so that a bug elsewhere is not mistaken for a bad file
_CORRUPT_ERRORS = (TypeError, IndexError, KeyError, ZeroDivisionError, MemoryError)
# PIL formats that are JPEG streams (MPO: phones' multi-picture JPEGs, frame 0 is the photo)
JPEG_FORMATS = ("JPEG", "MPO")
_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# PIL raw modes of 16 bits a channel that PIL itself reads as their high byte (RGB, RGBA, grey + alpha)
_SIXTEEN_BIT_COLOUR = ("RGB;16", "RGBA;16", "LA;16")
# set once the few-bits warning was given: a shared page, so that forked loader workers give it once between them
_DARK_WARNED = mmap.mmap(-1, 1)


def warn_if_huge(img: Image.Image, path: str) -> None:
    """A :class:`DataWarning` naming ``path`` when the image is over PIL's decompression-bomb warning
    limit (``Image.MAX_IMAGE_PIXELS``; twice that is an error): it decodes, but slowly and with much memory."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = img.width * img.height
    if limit is not None and pixels > limit:
        warnings.warn(DataWarning(f"'{path}' is {img.width}x{img.height} ({pixels / 1e6:.0f} megapixels, over PIL's "
                                  f"decompression-bomb limit of {limit / 1e6:.0f}): it is decoded whole, slowly and "
                                  "with GiBs of memory; downscale it if that is not meant"), stacklevel=2)


def warn_if_dark(path: str, high_byte: int) -> None:
    """One :class:`DataWarning` per run (the first file only) when a 16-bit image read as its high byte
    comes out nearly black (``high_byte``, its brightest value read, under 16: every 16-bit value under
    4096): 12- or 10-bit data in a 16-bit file, as scientific and medical cameras write it."""
    if high_byte >= 16 or _DARK_WARNED[0]:
        return
    _DARK_WARNED[0] = 1
    warnings.warn(DataWarning(f"'{path}' is a 16-bit image whose values all lie below 4096 (12- or 10-bit data?): "
                              f"16-bit images are read by their high byte, so it comes out nearly black (at most "
                              f"{high_byte} of 255); rescale such files to the full 16-bit range (12-bit data: "
                              "multiply by 16) or save them as 8-bit (said once, for the first such file)"),
                  stacklevel=2)


def read_file(path: str) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor (what ``decode_jpeg`` takes).

    torchvision's reader, or Python's where it fails: for a name that is not valid UTF-8
    (torchvision cannot take it; Python can) and for a missing or unreadable file (whose
    ``OSError`` then says why).

    >>> read_file("/nonexistent.jpg")
    Traceback (most recent call last):
    FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent.jpg'
    """
    import torchvision.io

    try:
        data = torchvision.io.read_file(path)
    except RuntimeError:
        with open(path, "rb") as f:
            raw = f.read()
        if not raw:  # (torch.frombuffer refuses an empty buffer with a message about buffers)
            raise OSError("empty file (0 bytes)") from None
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    if data.numel() == 0:
        raise OSError("empty file (0 bytes)")
    return data


def chroma_halved_vertically_only(img: Image.Image) -> bool:
    """True for a JPEG whose luma is sampled more finely down than across (4:4:0, "h1v2").

    libjpeg-turbo before 2.1 (the one in torchvision 0.19's wheels) upsamples such chroma by
    repeating rows, up to ~55 levels off PIL's smooth upsampling at colour edges; these
    (rare) files are decoded by PIL, the reference, whatever torchvision is installed.

    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (16, 16)).save(buf, "JPEG", subsampling="4:2:2")
    >>> chroma_halved_vertically_only(Image.open(buf))          # 4:2:2 halves it across only
    False
    """
    layers = getattr(img, "layer", None) or []
    return bool(layers) and layers[0][2] > layers[0][1]  # (id, h, v, table) of the first component


def is_complete_jpeg(data: np.ndarray) -> bool:
    """Starts with SOI and ends with EOI (``FFD9``, allowing trailing padding bytes).

    >>> is_complete_jpeg(np.frombuffer(b"\\xff\\xd8abc\\xff\\xd9", np.uint8))
    True
    >>> is_complete_jpeg(np.frombuffer(b"\\xff\\xd8abc", np.uint8))
    False
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    tail = bytes(data[-16:]).rstrip(b"\x00\n\r ")
    return tail.endswith(b"\xff\xd9")


def open_header(data: torch.Tensor) -> Image.Image:
    """PIL image over ``data`` with only the header read (size, format, mode).

    >>> import tempfile
    >>> from PIL import Image
    >>> from finetune.data.decode import open_header, read_file
    >>> path = tempfile.mkdtemp() + "/a.jpg"; Image.new("RGB", (640, 480), (200, 10, 10)).save(path)
    >>> img = open_header(read_file(path))
    >>> img.size, img.format, img.mode
    ((640, 480), 'JPEG', 'RGB')
    """
    return open_image(io.BytesIO(data.numpy().tobytes()))


class UnsupportedImageError(Image.UnidentifiedImageError):
    """An image file PIL cannot decode, with what it is (its message is the bad-file reason)."""


def open_image(source: str | io.BytesIO) -> Image.Image:
    """``Image.open(source)``; an image that PIL cannot identify but :func:`describe_unsupported` can
    name raises :class:`UnsupportedImageError` saying what it is.

    >>> import struct
    >>> sof = b"\\xff\\xc0" + struct.pack(">HBHHB", 17, 12, 8, 8, 3) + bytes(9)   # a 12-bit baseline JPEG's frame
    >>> open_image(io.BytesIO(b"\\xff\\xd8" + sof + b"\\xff\\xd9"))
    Traceback (most recent call last):
    finetune.data.decode.UnsupportedImageError: unsupported image: a 12-bit JPEG (PIL decodes 8-bit JPEGs only)
    """
    try:
        return Image.open(source)
    except Image.UnidentifiedImageError:
        if isinstance(source, str) and os.path.getsize(source) == 0:  # (what read_file says, on the training path)
            raise OSError("empty file (0 bytes)") from None
        what = None
        with contextlib.suppress(*DECODE_ERRORS):
            if isinstance(source, str):
                with open(source, "rb") as f:
                    what = describe_unsupported(f)
            else:
                source.seek(0)
                what = describe_unsupported(source)
        if what is None:
            raise
        raise UnsupportedImageError(f"unsupported image: {what}") from None


_TIFF_COMPRESSIONS = {1: "no", 5: "LZW", 7: "JPEG", 8: "Deflate", 32773: "PackBits", 32946: "Deflate",
                      34925: "LZMA", 50000: "Zstandard", 50001: "WebP", 50002: "JPEG XL", 52546: "JPEG XL"}
_TIFF_SAMPLE_FORMATS = {1: "unsigned integers", 2: "signed integers", 3: "floats"}
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


def describe_unsupported(f: io.BufferedIOBase | io.BytesIO) -> str | None:
    """What the image in the binary file ``f`` is, for an image that PIL cannot open (None if the
    first bytes do not say): a JPEG of more than 8 bits, HEIF/HEIC, JPEG XL, or a TIFF whose samples
    or compression PIL cannot decode.

    >>> describe_unsupported(io.BytesIO(b"\\x00\\x00\\x00\\x18ftypheic" + bytes(12)))
    'an HEIF/HEIC image, which PIL cannot decode (convert it to JPEG or PNG)'
    >>> describe_unsupported(io.BytesIO(b"plain text")) is None
    True
    """
    head = f.read(64 * 1024)
    if head[:3] == b"\xff\xd8\xff":
        pos = 2
        while pos + 9 < len(head) and head[pos] == 0xFF:
            marker, length = head[pos + 1], int.from_bytes(head[pos + 2:pos + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                bits = head[pos + 4]
                return f"a {bits}-bit JPEG (PIL decodes 8-bit JPEGs only)" if bits != 8 else None
            pos += 2 + length
        return None
    if head[4:8] == b"ftyp" and (head[8:12] in _HEIF_BRANDS or any(b in head[16:64] for b in _HEIF_BRANDS[:2])):
        return "an HEIF/HEIC image, which PIL cannot decode (convert it to JPEG or PNG)"
    if head[:2] == b"\xff\x0a" or head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "a JPEG XL image, which PIL cannot decode (convert it to JPEG or PNG)"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        from PIL import TiffImagePlugin

        ifd = TiffImagePlugin.ImageFileDirectory_v2(head[:16] if head[2] == 0x2B or head[3] == 0x2B else head[:8])
        f.seek(ifd.next)
        ifd.load(f)
        return f"{tiff_description(ifd)}, which PIL cannot decode"
    return None


def tiff_description(tags: Any) -> str:
    """A TIFF's samples and compression in words, from its tags (PIL's ``img.tag_v2``, or any mapping).

    >>> tiff_description({277: 3, 258: (32, 32, 32), 339: (3, 3, 3), 259: 50001})
    'a TIFF with 3 samples per pixel of 32-bit floats, WebP compression'
    """
    def first(tag: int, default: int) -> int:
        value = tags.get(tag, default)
        return int(value[0] if isinstance(value, tuple) else value)

    n, bits, kind, compression = first(277, 1), first(258, 1), first(339, 1), first(259, 1)
    return (f"a TIFF with {n} sample{'s' if n != 1 else ''} per pixel of {bits}-bit "
            f"{_TIFF_SAMPLE_FORMATS.get(kind, f'sample format {kind}')}, "
            f"{_TIFF_COMPRESSIONS.get(compression, f'type {compression}')} compression")


def png_crc_error(data: bytes | memoryview | np.ndarray) -> str | None:
    """Why the PNG ``data`` fails its chunk CRCs, or None if every chunk up to IEND checks out.

    PIL checks the CRCs of the chunks before the pixel data only; libpng (and so
    torchvision) rejects a file whose IDAT CRC is wrong. A chunk cut short is left to
    the decoder (it raises when pixel data is missing). Costs one ``crc32`` over the file.

    >>> import zlib, struct
    >>> chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    >>> good = b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IDAT", b"abc") + chunk(b"IEND", b"")
    >>> png_crc_error(good) is None
    True
    >>> png_crc_error(good[:18] + b"x" + good[19:])
    "bad CRC in the PNG's IDAT chunk"
    """
    view = memoryview(data).cast("B")
    pos, end = 8, len(view)
    while pos + 12 <= end:
        length = int.from_bytes(view[pos:pos + 4], "big")
        stop = pos + 8 + length
        if stop + 4 > end:
            return None
        if zlib.crc32(view[pos + 4:stop]) != int.from_bytes(view[stop:stop + 4], "big"):
            return f"bad CRC in the PNG's {bytes(view[pos + 4:pos + 8]).decode('latin-1')} chunk"
        if view[pos + 4:pos + 8] == b"IEND":
            return None
        pos = stop + 4
    return None


def _check_png(data: bytes | memoryview | np.ndarray) -> None:
    reason = png_crc_error(data)
    if reason is not None:
        raise OSError(reason)


def to_rgb(img: Image.Image, path: str | None = None) -> Image.Image:
    """``img.convert("RGB")`` (decoding it), except that 16-bit greyscale keeps its high byte
    and float greyscale in [0, 1] is scaled to 0..255. With ``path``, a 16-bit image that comes out
    nearly black is named once per run (:func:`warn_if_dark`).

    PIL clips ``I;16`` values above 255 to white; here they become ``v >> 8`` unless
    every value fits in 8 bits (then they are kept, equal to PIL's result). PIL truncates
    ``F`` values to integers, so an image in [0, 1] comes out black; here, when every value
    lies in [0, 1], they become ``round(v * 255)`` (what ``ToDtype(torch.uint8, scale=True)``
    does with floats); other float images are PIL's result. An RGB image is returned as it
    is, decoded, without PIL's copy.

    >>> grey16 = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))
    >>> np.asarray(to_rgb(grey16))[0, :, 0].tolist(), np.asarray(grey16.convert("RGB"))[0, :, 0].tolist()
    ([0, 100, 255], [0, 255, 255])
    >>> floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    >>> np.asarray(to_rgb(floats))[0, :, 0].tolist(), np.asarray(floats.convert("RGB"))[0, :, 0].tolist()
    ([0, 128, 255], [0, 0, 1])
    """
    args = img.tile[0][3] if path is not None and img.tile else None  # (read before decoding: it forgets the tile)
    raw = args[0] if isinstance(args, tuple) and args else args  # the raw mode: PNG's alone, TIFF's first
    wide = isinstance(raw, str) and raw.startswith(_SIXTEEN_BIT_COLOUR)
    if img.mode == "RGB":
        img.load()
        if wide:
            warn_if_dark(str(path), max(hi for _lo, hi in img.getextrema()))
        return img
    if img.mode in _SIXTEEN_BIT_GREY:
        values = np.asarray(img).astype(np.int32).clip(0, 65535)
        if values.size and values.max() > 255:
            values >>= 8
            if path is not None:
                warn_if_dark(path, int(values.max()))
        return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        floats = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if floats.size and floats.min() >= 0 and floats.max() <= 1:
            return Image.fromarray((floats * 255).round().astype(np.uint8), "L").convert("RGB")
    rgb = img.convert("RGB")
    if wide:  # (16-bit RGBA, grey + alpha)
        warn_if_dark(str(path), max(hi for _lo, hi in rgb.getextrema()))
    return rgb


def load_rgb(img: Image.Image, path: str | None = None) -> Image.Image:
    """:func:`to_rgb`; the odd exceptions PIL's decoders raise on some corrupt files become
    ``OSError`` (one of :data:`DECODE_ERRORS`), so the file counts as bad.

    A TIFF that libtiff cannot decode (e.g. a compression this PIL's libtiff was built without)
    says what it is: "decoder error -2 (a TIFF with 3 samples per pixel of 8-bit unsigned
    integers, WebP compression)".

    >>> load_rgb(Image.new("LA", (4, 2))).mode
    'RGB'
    """
    try:
        return to_rgb(img, path)
    except _CORRUPT_ERRORS as e:
        raise OSError(f"corrupt image data ({type(e).__name__}: {e})") from e
    except OSError as e:
        if img.format != "TIFF" or isinstance(e, UnsupportedImageError):
            raise
        # libtiff's own message (e.g. "WEBP compression support is not configured") goes to stderr;
        # PIL says only "decoder error -2"
        raise OSError(f"{e} ({tiff_description(img.tag_v2)})") from e


def _pil_crop(img: Image.Image, full: tuple[int, int], box: CropBox, path: str | None = None) -> torch.Tensor:
    """Crop ``box`` (full-size pixels) out of ``img`` (maybe DCT-reduced), as HWC uint8."""
    img = load_rgb(img, path)  # decodes; raises on truncated data
    sx, sy = img.size[0] / full[0], img.size[1] / full[1]
    left, top = box.left * sx, box.top * sy
    region = (round(left), round(top), max(round(left) + 1, round(left + box.width * sx)),
              max(round(top) + 1, round(top + box.height * sy)))
    return torch.from_numpy(np.array(img.crop(region), dtype=np.uint8))


def decode_crop(path: str, box_for: BoxFor, out_side: int, *, data: torch.Tensor | None = None,
                dct: bool = True) -> torch.Tensor:
    """Decode the crop ``box_for(width, height)`` of the image at ``path`` as uint8 HWC.

    ``out_side`` is the side the crop will be resized to: the DCT reduction is
    the largest that keeps the crop's shorter side at least that long
    (``dct=False``: always full size, for exact torchvision results).
    Raises one of :data:`DECODE_ERRORS` for a bad file.

    >>> import tempfile
    >>> from PIL import Image
    >>> from finetune.data.decode import decode_crop
    >>> from finetune.data.transforms import CropBox
    >>> path = tempfile.mkdtemp() + "/a.jpg"; Image.new("RGB", (640, 480), (200, 10, 10)).save(path)
    >>> decode_crop(path, lambda w, h: CropBox(0, 0, 100, 200), 100).shape    # full-size decode
    torch.Size([100, 200, 3])
    >>> decode_crop(path, lambda w, h: CropBox(0, 0, 480, 480), 100).shape    # at 1/4 scale: still >= 100 px
    torch.Size([120, 120, 3])
    >>> decode_crop(path, lambda w, h: CropBox(0, 0, 480, 480), 100, dct=False).shape
    torch.Size([480, 480, 3])
    """
    import torchvision.io

    if data is None:
        data = read_file(path)
    img = open_header(data)
    warn_if_huge(img, path)
    full = img.size
    box = box_for(*full)
    if img.format in JPEG_FORMATS:
        reduce = dct_reduction(min(box.width, box.height), out_side) if dct else 1
        if reduce > 1:
            img.draft("RGB", draft_size(*full, reduce))
        elif img.mode in ("RGB", "L") and not chroma_halved_vertically_only(img) and is_complete_jpeg(data.numpy()):
            try:
                chw = torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)
            except RuntimeError:
                pass  # e.g. an unusual JPEG flavour: PIL below
            else:
                hwc = chw.permute(1, 2, 0)  # decode_jpeg's memory is HWC: this is free
                return hwc[box.top:box.top + box.height, box.left:box.left + box.width]
    elif img.format == "PNG":
        _check_png(data.numpy())
    return _pil_crop(img, full, box, path)


def decode_eval(path: str, size: int, crop_pct: float = EVAL_CROP_PCT, *, dct: bool = True,
                interpolation: str = "bilinear", crop_mode: str = "center") -> torch.Tensor:
    """torchvision's ``Resize(int(size / crop_pct), interpolation)`` + ``CenterCrop(size)``, as
    uint8 HWC, computed on the centre region only (and DCT-reduced when it is at least twice ``size``).

    Equal to torchvision's PIL result to within rounding with ``dct=False``; with DCT
    reduction (big images) libjpeg's scaled decode replaces the first part of the resize.

    >>> import tempfile, numpy as np, torchvision.transforms as T
    >>> from PIL import Image
    >>> from finetune.data.decode import decode_eval
    >>> path = tempfile.mkdtemp() + "/a.png"
    >>> Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    >>> ours = decode_eval(path, 32, dct=False)
    >>> theirs = T.PILToTensor()(T.CenterCrop(32)(T.Resize(36)(Image.open(path).convert("RGB"))))
    >>> ours.shape, int((ours.permute(2, 0, 1).int() - theirs.int()).abs().max()) <= 2
    (torch.Size([32, 32, 3]), True)
    """
    with open_image(path) as img:  # (closed also on a bad file: PIL keeps multi-frame files open)
        warn_if_huge(img, path)
        full = img.size
        left, top, right, bottom = eval_resize_box(*full, size, crop_pct, crop_mode)
        if img.format in JPEG_FORMATS:
            reduce = dct_reduction(int(min(right - left, bottom - top)), size) if dct else 1
            if reduce > 1:
                img.draft("RGB", draft_size(*full, reduce))
        elif img.format == "PNG":
            with open(path, "rb") as f:
                _check_png(f.read())
        return eval_image(img, size, crop_pct, full=full, interpolation=interpolation, crop_mode=crop_mode, path=path)


def eval_image(img: Image.Image, size: int, crop_pct: float = EVAL_CROP_PCT, *,
               full: tuple[int, int] | None = None, interpolation: str = "bilinear",
               crop_mode: str = "center", path: str | None = None) -> torch.Tensor:
    """torchvision's ``Resize(int(size / crop_pct), interpolation)`` + ``CenterCrop(size)`` of a
    PIL image, after ``convert("RGB")`` (:func:`to_rgb`), as uint8 HWC: the centre region only
    is resized (``interpolation``: "bilinear" or "bicubic", both antialiased as PIL's are;
    ``crop_mode="squash"``: both sides resized to ``size / crop_pct``, as timm's squash mode).

    ``full``: the size the crop geometry refers to, when ``img`` was DCT-reduced (``draft``)
    from it. Used for files (:func:`decode_eval`) and for dataset objects that return PIL images.

    >>> import torchvision.transforms as T
    >>> img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (13, 9, 3), dtype=np.uint8))  # < the crop
    >>> ours = eval_image(img, 32)
    >>> theirs = T.PILToTensor()(T.CenterCrop(32)(T.Resize(36)(img)))
    >>> ours.shape, int((ours.permute(2, 0, 1).int() - theirs.int()).abs().max()) <= 2
    (torch.Size([32, 32, 3]), True)
    """
    full = full or img.size
    left, top, right, bottom = eval_resize_box(*full, size, crop_pct, crop_mode)
    img = load_rgb(img, path)
    sx, sy = img.size[0] / full[0], img.size[1] / full[1]
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    whole = _eval_resized_size(*full, size, crop_pct, crop_mode)
    if whole is not None:
        # resize the whole image, as torchvision's Resize does: PIL picks its own pass order for
        # that (columns first for some shapes: portrait images, squashed ones), which rows first on
        # the centre box cannot follow (up to ~19 levels off timm's at hard edges)
        new_w, new_h = whole
        left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))  # CenterCrop's
        out = img.resize(whole, resample).crop((left, top, left + size, top + size))
        return torch.from_numpy(np.array(out, dtype=np.uint8))
    out = resize_box_rows_first(img, size, (left * sx, top * sy, right * sx, bottom * sy), resample)
    return torch.from_numpy(np.array(out, dtype=np.uint8))


def _eval_resized_size(width: int, height: int, size: int, crop_pct: float, crop_mode: str) -> tuple[int, int] | None:
    """The (width, height) torchvision's eval ``Resize`` gives a ``width`` x ``height`` image, when
    eval resizes the whole image (then crops): a squashed image or a portrait one (where PIL may
    resize columns first), unless that is over 4 times the crop's pixels; else None (the centre
    box alone is resized, rows first, as PIL does for landscape images).

    >>> _eval_resized_size(300, 400, 224, 0.875, "center"), _eval_resized_size(400, 300, 224, 0.875, "center")
    ((256, 341), None)
    >>> _eval_resized_size(400, 300, 224, 1.0, "squash"), _eval_resized_size(20, 1000, 224, 0.875, "center")
    ((224, 224), None)
    """
    side = eval_resize_side(size, crop_pct)
    if crop_mode == "squash":
        new = (side, side)
    elif height > width:
        new = (side, int(side * height / width))
    else:
        return None
    return new if new[0] * new[1] <= 4 * size * size else None


def resize_box_rows_first(img: Image.Image, size: int, box: tuple[float, float, float, float],
                          resample: int) -> Image.Image:
    """``img.resize((size, size), resample, box=box)`` computed in the order PIL's resize of a whole
    landscape image takes: along rows first (on the band of rows the second pass reads), then along
    columns (portrait and squashed images: :func:`eval_image` resizes them whole).

    PIL picks the cheaper order for a box, and the two orders round (and clip bicubic's
    overshoot) differently: up to 13 levels apart at hard edges. In this order the result is
    torchvision's ``Resize`` + ``CenterCrop`` within 1 level, rarely 2 (bicubic at hard edges: 8 of 300
    random landscape images; only the band of rows the crop reads is resized, so the first pass's
    fixed-point rounding can differ).

    >>> import numpy as np, torchvision.transforms as T
    >>> from finetune.data.transforms import eval_resize_box
    >>> img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (97, 151, 3), dtype=np.uint8))  # landscape
    >>> ours = np.array(resize_box_rows_first(img, 64, eval_resize_box(151, 97, 64, 0.95), Image.BICUBIC))
    >>> theirs = np.array(T.CenterCrop(64)(T.Resize(67, interpolation=T.InterpolationMode.BICUBIC)(img)))
    >>> int(np.abs(ours.astype(int) - theirs).max()) <= 1
    True
    """
    left, top, right, bottom = box
    # the rows the column pass reads: its filter's support (2 for bicubic, 1 for bilinear, scaled
    # when shrinking) around the box, plus one for rounding
    reach = (2 if resample == Image.BICUBIC else 1) * max(1.0, (bottom - top) / size) + 1
    y0, y1 = max(0, int(top - reach)), min(img.height, math.ceil(bottom + reach))
    band = img.crop((0, y0, img.width, y1))
    band = band.resize((size, y1 - y0), resample, box=(left, 0, right, y1 - y0))  # rows only
    return band.resize((size, size), resample, box=(0, top - y0, size, bottom - y0))  # columns only


def decode_capped(path: str, short_side: int, *, dct: bool = True) -> torch.Tensor:
    """The whole image, shrunk so its shorter side is at most ``short_side`` (HWC uint8).

    What the RAM/GPU caches store: DCT reduction first, then an antialiased resize.

    >>> import tempfile
    >>> from PIL import Image
    >>> from finetune.data.decode import decode_capped
    >>> path = tempfile.mkdtemp() + "/a.jpg"; Image.new("RGB", (640, 480), (200, 10, 10)).save(path)
    >>> decode_capped(path, 100).shape, decode_capped(path, 1000).shape
    (torch.Size([100, 133, 3]), torch.Size([480, 640, 3]))
    """
    from finetune.data.transforms import resize_hwc

    def whole(w: int, h: int) -> CropBox:
        return CropBox(0, 0, h, w)

    data = read_file(path)
    w, h = open_header(data).size
    cw, ch = capped_size(w, h, short_side)
    image = decode_crop(path, whole, min(cw, ch), data=data, dct=dct)
    return resize_hwc(image, (ch, cw))


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the header only. Raises for files PIL cannot identify.

    >>> import tempfile
    >>> from PIL import Image
    >>> from finetune.data.decode import image_size
    >>> path = tempfile.mkdtemp() + "/a.jpg"; Image.new("RGB", (640, 480), (200, 10, 10)).save(path)
    >>> image_size(path)
    (640, 480)
    """
    with open_image(path) as img:
        return img.size


@dataclass(frozen=True)
class BadFile:
    """A sample that could not be decoded, and why.

    >>> import tempfile
    >>> from finetune.data.decode import BadFile, check_file
    >>> path = tempfile.mkdtemp() + "/x.jpg"
    >>> _ = open(path, "wb").write(b"not a jpeg")
    >>> BadFile(0, path, check_file(path)).reason
    'not an image (cannot identify image file)'
    """

    index: int
    path: str
    reason: str


def bad_reason(error: BaseException) -> str:
    """What went wrong with a file, in one line (PIL names the in-memory buffer it read,
    not the file: that part is dropped).

    >>> bad_reason(Image.UnidentifiedImageError("cannot identify image file <_io.BytesIO object at 0x7f>"))
    'not an image (cannot identify image file)'
    >>> bad_reason(UnsupportedImageError("unsupported image: a 12-bit JPEG (PIL decodes 8-bit JPEGs only)"))
    'unsupported image: a 12-bit JPEG (PIL decodes 8-bit JPEGs only)'
    """
    if isinstance(error, UnsupportedImageError):
        return str(error)
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image (cannot identify image file)"
    text = " ".join(str(error).split())
    if isinstance(error, Image.DecompressionBombError):  # (PIL's guard, not a broken file: say how to pass it)
        text += (" (PIL's decompression-bomb guard: downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS "
                 "where finetune is used from Python)")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_file(path: str) -> str | None:
    """None if ``path`` decodes completely, else the reason it does not.

    >>> check_file("/nonexistent.jpg") is not None
    True
    """
    try:
        with open_image(path) as img:
            if img.format == "PNG":
                with open(path, "rb") as f:
                    _check_png(f.read())
            load_rgb(img, path)
    except DECODE_ERRORS as e:
        return bad_reason(e)
    return None


# --------------------------------------------------------------------------- device (nvjpeg) decoding
def decode_jpegs_on_device(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode a batch of JPEG byte tensors on ``device`` (nvjpeg on CUDA) into uint8 CHW tensors.

    ``torchvision.io.decode_jpeg`` takes a list and decodes it as one batch on
    CUDA (torchvision >= 0.19). On a CPU device it decodes one by one (for tests).

    >>> import tempfile, torch
    >>> from PIL import Image
    >>> from finetune.data.decode import decode_jpegs_on_device, read_file
    >>> path = tempfile.mkdtemp() + "/a.jpg"; Image.new("RGB", (640, 480), (200, 10, 10)).save(path)
    >>> [x.shape for x in decode_jpegs_on_device([read_file(path)] * 2, torch.device("cpu"))]
    [torch.Size([3, 480, 640]), torch.Size([3, 480, 640])]
    """
    import torchvision.io

    mode = torchvision.io.ImageReadMode.RGB
    if device.type == "cuda":
        out = torchvision.io.decode_jpeg(datas, mode=mode, device=device)
        return list(out) if not isinstance(out, list) else out
    return [torchvision.io.decode_jpeg(d, mode=mode) for d in datas]

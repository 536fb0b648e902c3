"""pyproject.toml declares torch >= 2.4: what finetune writes must load there too.

A checkpoint is promised to load with ``torch.load(weights_only=True)`` on any machine; torch
2.4's weights_only unpickler knows fewer globals (no ``_codecs.encode`` for bytes, no ``set``,
``complex``, ``uint16``…) and fewer pickle opcodes than today's. CI runs a newer torch, so these
tests read the pickle inside a finetune checkpoint and check every GLOBAL and opcode against
torch 2.4.1's lists (copied from ``torch/_weights_only_unpickler.py`` of torch 2.4.1).
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_here
from finetune.checkpoint import Checkpointer, CheckpointError

_DTYPES_2_4 = ("bfloat16 bits16 bits1x8 bits2x4 bits4x2 bits8 bool complex128 complex32 complex64 float16 "
               "float32 float64 float8_e4m3fn float8_e4m3fnuz float8_e5m2 float8_e5m2fnuz int16 int32 int64 "
               "int8 qint32 qint8 quint2x4 quint4x2 quint8 uint8").split()
_TENSOR_KINDS_2_4 = "BFloat16 Bool Byte Char Double Float Half Int Long Short".split()
_STORAGE_KINDS_2_4 = [*_TENSOR_KINDS_2_4, "ComplexDouble", "ComplexFloat"]
_REBUILD_2_4 = ("_rebuild_meta_tensor_no_storage _rebuild_nested_tensor _rebuild_parameter "
                "_rebuild_parameter_with_state _rebuild_qtensor _rebuild_sparse_tensor _rebuild_tensor "
                "_rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_wrapper_subclass").split()

#: torch 2.4.1's ``_weights_only_unpickler._get_allowed_globals()``: the only GLOBALs it loads
TORCH_2_4_GLOBALS = frozenset({
    "collections.OrderedDict", "collections.Counter", "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout", "torch.Size", "torch.Tensor", "torch.device",
    "torch._tensor._rebuild_from_type_v2", "torch.storage.TypedStorage", "torch.storage.UntypedStorage",
    *(f"torch.{d}" for d in _DTYPES_2_4),
    *(f"torch.{q}" for q in ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
                             "per_channel_symmetric", "per_channel_affine_float_qparams")),
    *(f"torch._utils.{f}" for f in _REBUILD_2_4),
    *(f"torch.{p}{k}Tensor" for p in ("", "cuda.", "sparse.", "cuda.sparse.") for k in _TENSOR_KINDS_2_4
      if not (p.endswith("sparse.") and k == "Bool")),
    *(f"torch.{p}{k}Storage" for p in ("", "cuda.") for k in _STORAGE_KINDS_2_4),
    *(f"torch.{q}Storage" for q in ("QInt32", "QInt8", "QUInt2x4", "QUInt4x2", "QUInt8")),
})

#: the pickle opcodes torch 2.4.1's weights_only unpickler implements (any other is an error there)
TORCH_2_4_OPCODES = frozenset(
    "APPEND APPENDS BINFLOAT BINGET BININT BININT1 BININT2 BINPERSID BINPUT BINUNICODE BUILD EMPTY_DICT "
    "EMPTY_LIST EMPTY_SET EMPTY_TUPLE GLOBAL LONG1 LONG_BINGET LONG_BINPUT MARK NEWFALSE NEWOBJ NEWTRUE "
    "NONE PROTO REDUCE SETITEM SETITEMS SHORT_BINSTRING STOP TUPLE TUPLE1 TUPLE2 TUPLE3".split())


def pickle_globals_and_opcodes(path: Path) -> tuple[set[str], set[str]]:
    """The GLOBALs (``module.name``) and opcode names of the ``data.pkl`` inside a torch.save zip."""
    with zipfile.ZipFile(path) as z:
        (name,) = [n for n in z.namelist() if n.endswith("/data.pkl")]
        data = z.read(name)
    ops = list(pickletools.genops(data))
    found = {str(arg).replace(" ", ".") for op, arg, _ in ops if op.name == "GLOBAL"}
    return found, {op.name for op, _, _ in ops}


def assert_loads_on_torch_2_4(path: Path) -> None:
    found, opcodes = pickle_globals_and_opcodes(path)
    assert found, path  # a checkpoint always references its tensors' rebuild function
    assert found <= TORCH_2_4_GLOBALS, f"{path.name}: torch 2.4 refuses {sorted(found - TORCH_2_4_GLOBALS)}"
    assert opcodes <= TORCH_2_4_OPCODES, f"{path.name}: torch 2.4 cannot read {sorted(opcodes - TORCH_2_4_OPCODES)}"


def test_the_torch_2_4_lists_are_within_the_installed_torchs() -> None:
    """torch only ever added to its weights_only allowlist: every name above must be known to the
    installed torch (a typo here would let a refused global through); on torch 2.4 they are equal."""
    from torch import _weights_only_unpickler as wou

    installed = set(wou._get_allowed_globals())
    assert TORCH_2_4_GLOBALS <= installed, sorted(TORCH_2_4_GLOBALS - installed)
    if torch.__version__.startswith("2.4."):
        assert installed == TORCH_2_4_GLOBALS, sorted(installed ^ TORCH_2_4_GLOBALS)


def test_the_check_catches_what_torch_2_4_refuses(tmp_path: Path) -> None:
    """bytes (``_codecs.encode`` at torch.save's protocol 2) and sets load only on newer torch."""
    for i, value in enumerate((b"abc", {1, 2}, 1 + 2j)):
        path = tmp_path / f"{i}.pt"
        torch.save({"w": torch.zeros(1), "x": value}, path)
        with pytest.raises(AssertionError, match="torch 2.4 refuses"):
            assert_loads_on_torch_2_4(path)


TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--seed", "0",
        "--optimizer", "adamw", "--lr", "0.002", "--warmup-epochs", "0", "-q"]


def test_a_runs_checkpoints_load_with_torch_2_4s_weights_only(colour_data: Path, tmp_path: Path) -> None:
    """Every file of a run (numbered checkpoints, last.pt, best.pt), with EMA, label smoothing and
    the RNG / optimizer / scheduler state, references only globals torch 2.4 allows."""
    out = tmp_path / "run"
    res = run_here("train", "--data", str(colour_data), *TINY, "--epochs", "1", "--ema", "0.9", "--label-smoothing", "0.1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    files = sorted((out / "checkpoints").glob("*.pt"))
    assert {"last.pt", "best.pt"} <= {p.name for p in files}, files
    for path in files:
        assert_loads_on_torch_2_4(path)
    assert (out / "best.safetensors").stat().st_size > 0  # safetensors: no pickle at all


def test_checkpointer_keeps_every_value_it_accepts_loadable_on_torch_2_4(tmp_path: Path) -> None:
    """What :meth:`Checkpointer.save` accepts (numbers of every size, None, str, paths, numpy
    scalars, dtypes, devices, sizes, nested containers, tensors of the common dtypes) is what
    torch 2.4 loads; values it cannot load are refused when saving, with a one-line reason."""
    state = {
        "model": torch.nn.Linear(2, 2), "epoch": 0, "step": 1,
        "extra": {"ints": [0, -1, 255, 2**31, -(2**40), 2**70], "floats": [0.5, float("inf"), float("nan")],
                  "flags": (True, False, None), "text": "é", "path": Path("/tmp/x"), "np": np.float32(0.25),
                  "dtypes": [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8, torch.bool],
                  "device": torch.device("cpu"), "size": torch.Size([2, 3]), "tuple": (1, 2, 3, 4),
                  "tensors": [torch.zeros(2, dtype=d) for d in (torch.float32, torch.bfloat16, torch.float16,
                                                                 torch.int64, torch.uint8, torch.bool)]},
    }
    path = Checkpointer(tmp_path / "a").save(state)
    assert_loads_on_torch_2_4(Path(path))
    for i, raw in enumerate((b"\x00raw", bytearray(b"raw"), np.bytes_(b"raw"))):
        with pytest.raises(CheckpointError, match=r"\['extra'\]: a byte.* torch 2.4"):
            Checkpointer(tmp_path / f"b{i}").save({**state, "extra": raw})


def _batch_is_kept(normalize_module) -> bool:
    """Normalise two batches while holding the first: is the first still its own values?"""
    norm = normalize_module.Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu"), channels_last=False)
    first = norm(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), nchw=True)
    norm(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), nchw=True)
    return first.unique().tolist() == [-2.0]


def test_a_batch_still_held_is_not_overwritten_by_the_next() -> None:
    """The Normalizer recycles an output buffer only when nothing else holds its storage, read off
    ``torch._C._storage_Use_Count``, which counts the temporary storage object on recent torch but
    not on 2.4: there a held batch read as free and the next batch was written over it (a loader's
    batches came out as copies of the one after). Checked as installed and with 2.4's counting."""
    import importlib

    from finetune.data import normalize

    assert _batch_is_kept(normalize)
    real = torch._C._storage_Use_Count
    offset = real(torch.empty(1).untyped_storage()._cdata) - 1  # 0 on torch 2.4, 1 later
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch._C, "_storage_Use_Count", lambda cdata: real(cdata) - offset)  # 2.4's counting
        try:
            assert _batch_is_kept(importlib.reload(normalize))
        finally:
            mp.undo()
            importlib.reload(normalize)


def test_a_4_4_0_jpeg_is_decoded_by_pil_whatever_torchvision_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision 0.19's libjpeg-turbo upsamples 4:4:0 chroma by repeating rows (up to 55 levels
    off PIL's on this file); the train decoder leaves such files to PIL on every version."""
    import torchvision.io

    from finetune.data.decode import decode_crop
    from finetune.data.transforms import CropBox

    path = Path(__file__).parent / "fixtures" / "other_tools_images" / "opencv" / "sampling_440.jpg"
    calls: list[int] = []
    real = torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda *a, **k: calls.append(1) or real(*a, **k))
    whole = decode_crop(str(path), lambda w, h: CropBox(0, 0, h, w), 10**6, dct=False)
    from PIL import Image

    ref = torch.from_numpy(np.array(Image.open(path).convert("RGB")))
    assert torch.equal(whole, ref) and calls == []


def test_the_device_decode_path_leaves_a_4_4_0_jpeg_to_the_cpu_decoder(tmp_path: Path) -> None:
    """decode="gpu" sends plain JPEGs' bytes to the device (nvjpeg, or torchvision's CPU decoder
    when there is no GPU); a 4:4:0 one is decoded on CPU by PIL like the others' ``ready`` images."""
    import shutil

    from finetune.data.loader import BatchSpec, Loader
    from finetune.data.samples import find_splits

    fixtures = Path(__file__).parent / "fixtures" / "other_tools_images" / "opencv"
    for split in ("train", "val"):
        for cls, name in (("a", "sampling_440.jpg"), ("b", "sampling_422.jpg")):
            (tmp_path / split / cls).mkdir(parents=True)
            shutil.copy(fixtures / name, tmp_path / split / cls / name)
    train, _ = find_splits(str(tmp_path))
    loader = Loader(train, train=True, img_size=16, batch_size=2, workers=0, device="cpu", seed=0, drop_last=False,
                    channels_last=False, mean=(0.5,) * 3, std=(0.5,) * 3, crop_scale=(0.5, 1.0), decode="gpu")
    batch = loader.dataset.__getitems__(BatchSpec(epoch=0, start=0, indices=np.arange(len(train))))
    names = [Path(train.path(i)).name for i in range(len(train))]
    assert dict(zip(names, batch.is_jpeg.tolist(), strict=True)) == {"sampling_440.jpg": False,
                                                                       "sampling_422.jpg": True}

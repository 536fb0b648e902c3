"""Read any checkpoint: detect the container from its bytes, the layout from its structure.

:func:`read_checkpoint` returns a :class:`Checkpoint`: the model weights (flat, CPU,
wrapper prefixes removed), EMA weights when the file has them, metadata and the
optimizer state. Nothing in a file runs unless ``trust=True``.

>>> import torch
>>> ck = read_checkpoint({"state_dict": {"module.fc.weight": torch.zeros(2, 3)}, "best_acc1": 0.5})
>>> ck.format, list(ck.weights)
('pytorch/examples imagenet', ['fc.weight'])
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import struct
import types
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from finetune.errors import CheckpointError, FinetuneError, UnsafeCheckpointError, WeightsError
from finetune.weights.deepspeed_zero import (
    OPTIM_RE,
    find_tag_folder,
    from_model_states,
    is_model_states,
    is_optim_partition,
    read_deepspeed,
)
from finetune.weights.keys import unwrap_names
from finetune.weights.unpickle import (
    RESTRICTED_ONLY,
    PartialStandIn,
    RestrictedUnpickler,
    allowlist,
    torch_load,
    unsafe_error,
)

StateDict = dict[str, Tensor]

#: keys under which checkpoints nest their model weights, most specific first
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params", "module")
#: keys under which checkpoints keep EMA weights
EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict", "model_ema_state_dict", "ema_model", "ema_state")
#: keys that hold optimizer state
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_states", "opt", "optim")
#: file names a weights folder (accelerate save_state, Hugging Face) keeps its model in
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "model.bin", "model.pt", "model.pth")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
#: how a legacy (non-zip) torch.save file starts: protocol 2, then the magic number 0x1950a86a20f9469cfc6c
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".tar")
#: the weights description of a model in a ``torch.export.save`` archive (``.pt2``)
PT2_WEIGHTS_RE = re.compile(r"(^|/)data/weights/([^/]+)_weights_config\.json$")


@dataclass
class Checkpoint:
    """What a checkpoint holds, read safely.

    ``format`` is the layout (``timm``, ``lightning``, …); ``container`` the file kind
    (``torch zip``, ``safetensors``, …); ``unwrapped`` lists wrapper prefixes removed.

    >>> import torch
    >>> from finetune.weights import read_checkpoint
    >>> ck = read_checkpoint({"state_dict": {"fc.weight": torch.ones(1)}, "state_dict_ema": {"fc.weight": torch.ones(1)},
    ...                       "arch": "resnet50", "epoch": 3})
    >>> ck.description, list(ck.weights), ck.ema is not None, ck.metadata
    ('timm CheckpointSaver (in memory)', ['fc.weight'], True, {'arch': 'resnet50', 'epoch': 3})
    """

    source: str
    container: str
    format: str
    weights: StateDict
    ema: StateDict | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    optimizer: Any = None
    unwrapped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        """``format (container)``, e.g. ``'timm CheckpointSaver (torch zip)'``."""
        return f"{self.format} ({self.container})"


# --------------------------------------------------------------------------- public entry
def read_checkpoint(source: str | os.PathLike[str] | Mapping[str, Any], *, trust: bool = False) -> Checkpoint:
    """Read a file, folder or in-memory dict into a :class:`Checkpoint`.

    >>> import torch
    >>> read_checkpoint({"fc.weight": torch.ones(1)}).format
    'state_dict'
    """
    if isinstance(source, Mapping):
        return interpret(dict(source), source="<state dict>", container="in memory")
    if isinstance(source, torch.nn.Module):
        return interpret(source, source=f"<{type(source).__name__}>", container="in memory")
    path = Path(source).expanduser()  # ('~/x.pth' from Python: the shell expands it only on a command line)
    name = str(path)
    if not path.exists():
        named = ("" if len(path.parts) > 1 or path.suffix.lower() in _FILE_SUFFIXES else  # a bare word, a timm tag
                 " (weights by name are 'torchvision', 'torchvision:TAG' or 'timm:NAME')")
        raise CheckpointError(f"{name}: no such file or folder{named}")
    if path.is_dir():
        return _read_folder(path, trust=trust)
    kind = sniff(path)
    if kind == "safetensors":
        return _with_container(interpret(_read_safetensors(path), source=name), "safetensors",
                               metadata=_safetensors_metadata(path))
    if kind == "index":
        return interpret(_read_sharded(path, trust=trust), source=name, container="sharded")
    if kind == "pt2":
        return interpret(_read_pt2(path, trust=trust), source=name, container="torch.export archive (.pt2)",
                         fmt="torch.export")
    if kind == "torchscript":
        return interpret(_read_torchscript(path, trust=trust), source=name, container="TorchScript archive",
                         fmt="TorchScript")
    if kind in ("torch zip", "pickle"):
        obj = _torch_file(path, kind=kind, trust=trust)
        if is_model_states(obj) or (is_optim_partition(obj) and OPTIM_RE.match(path.name)):
            return read_deepspeed(path, trust=trust, loaded=obj)  # DeepSpeed: the files beside it too
        container = "torch zip" if kind == "torch zip" else "legacy torch.save"
        return interpret(obj, source=name, container=container)
    if kind == "raw pickle":
        return interpret(_read_raw_pickle(path, trust=trust), source=name, container="plain pickle")
    if kind == "npz":
        return interpret(_read_npz(path), source=name, container="NumPy .npz")
    raise CheckpointError(f"{name}: {kind}")


def sniff(path: Path) -> str:
    """The container kind from the first bytes, or a reason why it is not a checkpoint.

    Kinds: ``torch zip``, ``torchscript``, ``pickle``, ``safetensors``, ``index``, ``npz``;
    anything else is a message (``empty file``, ``a text file, …``).

    >>> import pathlib, tempfile, torch
    >>> from finetune.weights.formats import sniff
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> torch.save({"w": torch.ones(1)}, d / "a.pt"); _ = (d / "notes.txt").write_text("hello")
    >>> sniff(d / "a.pt"), sniff(d / "notes.txt")
    ('torch zip', 'a text file, not a checkpoint')
    """
    size = path.stat().st_size
    if size == 0:
        return "empty file: not a checkpoint (was the save interrupted?)"
    with path.open("rb") as f:
        head = f.read(64)
    if head[:4] == b"PK\x03\x04":
        return _sniff_zip(path)
    if len(head) >= 10 and _is_safetensors_header(head, size):
        return "safetensors"
    if head.startswith(LEGACY_MAGIC) or _framed_legacy_magic(head):
        return "pickle"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "raw pickle"
    if head.lstrip()[:1] == b"{":
        try:
            obj = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("weight_map"), dict):
            return "index"
    if (other := _other_framework(head)) is not None:  # (after torch's own kinds: a guess from a few bytes)
        return other
    if _looks_like_text(path):
        return "a text file, not a checkpoint"
    return "unrecognised format: not a PyTorch, safetensors or TorchScript file (corrupt or truncated?)"


#: the endings of weights files (a name without one, such as 'resnet50.a1_in1k', may be meant as a source's name)
_FILE_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar", ".npz", ".pkl", ".pickle", ".pt2", ".h5",
                  ".onnx", ".keras", ".json", ".gz", ".zip", ".msgpack", ".model"}

#: how to get weights finetune reads out of another framework's model file
_NOT_TORCH = ("finetune reads PyTorch weights (torch.save, safetensors, TorchScript): load the network's PyTorch "
              "weights instead, or convert it to PyTorch and save its state_dict()")


def _other_framework(head: bytes) -> str | None:
    """Why a file of another framework (ONNX, Keras / TensorFlow HDF5, TensorFlow Lite) is not a checkpoint,
    from its first bytes; None for anything else.

    >>> _other_framework(b"\\x08\\x08\\x12\\x07pytorch").split(":")[0]
    'an ONNX model, not a PyTorch checkpoint'
    >>> _other_framework(b"\\x89HDF\\r\\n\\x1a\\n").split(":")[0]
    'an HDF5 file (Keras .h5 / TensorFlow weights), not a PyTorch checkpoint'
    """
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return f"an HDF5 file (Keras .h5 / TensorFlow weights), not a PyTorch checkpoint: {_NOT_TORCH}"
    if head[4:8] == b"TFL3":
        return f"a TensorFlow Lite model, not a PyTorch checkpoint: {_NOT_TORCH}"
    # ONNX ModelProto: ir_version (field 1, a small varint), then producer_name, domain, graph, ...
    if len(head) > 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42):
        return (f"an ONNX model, not a PyTorch checkpoint: {_NOT_TORCH} (onnx2torch converts ONNX models; "
                "then torch.save(model.state_dict(), PATH))")
    return None


def _framed_legacy_magic(head: bytes) -> bool:
    """The legacy magic number pickled with protocol 4 or 5 (``torch.save(..., pickle_protocol=4)``),
    which opens with a frame: ``\\x80\\x04``, FRAME and its 8-byte length, then the number."""
    return head[:1] == b"\x80" and head[1:2] in (b"\x04", b"\x05") and head[2:3] == b"\x95" \
        and head[11:].startswith(LEGACY_MAGIC[2:])


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return "truncated or corrupt zip archive (was the save interrupted?)"
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") for n in names) and any(PT2_WEIGHTS_RE.search(n) for n in names):
        return "pt2"
    if any(n.endswith("data.pkl") for n in names):
        return "torch zip"
    if any(n.endswith("model.weights.h5") for n in names) and "metadata.json" in names:
        return f"a Keras .keras model archive, not a PyTorch checkpoint: {_NOT_TORCH}"
    if names and all(n.endswith(".npy") for n in names) and not any("/" in n for n in names):
        return "npz"  # np.savez of a state dict: torch's names
    if names and all(n.endswith(".npy") for n in names):  # BiT's / big_vision's ViT .npz
        return ("a NumPy .npz archive (JAX/Flax weights), not a PyTorch checkpoint: its names need a model-specific "
                "conversion; timm converts BiT/ViT .npz files (timm.create_model(NAME, pretrained=True, "
                "pretrained_cfg_overlay={'file': PATH}), then save its state_dict() as .safetensors)")
    return "a zip archive that is not a PyTorch checkpoint"


def _is_safetensors_header(head: bytes, size: int) -> bool:
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _looks_like_text(path: Path) -> bool:
    with path.open("rb") as f:
        chunk = f.read(4096)
    if b"\x00" in chunk:
        return False
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start > len(chunk) - 4  # cut inside a multi-byte character
    return True


def _with_container(ck: Checkpoint, container: str, metadata: dict[str, Any] | None = None) -> Checkpoint:
    ck.container = container
    if container == "safetensors" and ck.format == "state_dict":
        ck.format = "safetensors"
    ck.metadata.update(metadata or {})
    return ck


# --------------------------------------------------------------------------- structure
def interpret(obj: Any, *, source: str, container: str = "in memory", fmt: str | None = None) -> Checkpoint:
    """Find the weights, EMA weights, metadata and optimizer state in a loaded object.

    >>> import torch
    >>> from finetune.weights.formats import interpret
    >>> ck = interpret({"state_dict": {"module.fc.weight": torch.ones(1)}, "epoch": 3, "optimizer": {}}, source="x.pt")
    >>> ck.format, list(ck.weights), ck.unwrapped, ck.metadata, ck.optimizer
    ("state dict under 'state_dict'", ['fc.weight'], ['module.'], {'epoch': 3}, {})
    """
    if isinstance(obj, torch.nn.Module):
        ck = Checkpoint(source, container, fmt or "pickled nn.Module", _module_state(obj),
                        metadata={"class": f"{type(obj).__module__}.{type(obj).__qualname__}"})
        return _unwrap(ck)
    if not isinstance(obj, Mapping) and isinstance(getattr(obj, "model", None), torch.nn.Module):
        # fastai's learn.export (a pickled Learner, read with trust=True): the network is its .model
        ck = interpret(obj.model, source=source, container=container, fmt=fmt or f"pickled {type(obj).__name__}")
        ck.notes.append(f"the weights of its .model ({type(obj.model).__name__})")
        return ck
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    obj = dict(obj)
    if is_model_states(obj):
        return from_model_states(obj, source=source)
    if is_optim_partition(obj):
        raise CheckpointError(f"{source}: one rank's DeepSpeed optimizer partition (*_optim_states.pt): "
                              "read the checkpoint folder, which holds the model states and every rank's partition")
    fmt_name, weights, ema, optimizer = _layout(obj, source)
    meta = {} if _is_flat(obj) else _metadata(obj)  # a state dict's scalars (num_batches_tracked) are weights
    ck = Checkpoint(source, container, fmt or fmt_name, weights, ema, meta, optimizer)
    return _unwrap(ck)


def _layout(obj: dict[str, Any], source: str) -> tuple[str, StateDict, StateDict | None, Any]:
    """(format name, weights, ema weights, optimizer state) of a checkpoint dict."""
    opt = next((obj[k] for k in OPTIMIZER_KEYS if k in obj), None)
    if obj.get("format") == "finetune-checkpoint":
        # --ema runs keep the average under 'model_ema' (train.py's make_state)
        ema = _maybe(obj.get("model_ema")) if obj.get("model_ema") is not None else _maybe(obj.get("ema"))
        return "finetune", _need(obj, "model", source), ema, opt
    if "pytorch-lightning_version" in obj:
        if "current_model_state" in obj and _maybe(obj.get("current_model_state")) is not None:
            # WeightAveraging / EMAWeightAveraging callback: 'state_dict' holds the average
            return ("PyTorch Lightning", _need(obj, "current_model_state", source),
                    _need(obj, "state_dict", source), opt)
        sd = _need(obj, "state_dict", source)
        ema = _lightning_ema(obj)
        if ema is None:
            sd, ema = split_ema_attribute(sd)
        return "PyTorch Lightning", sd, ema, opt
    if "state_dict" in obj and "meta" in obj and ("message_hub" in obj or "ema_state_dict" in obj):
        raw = _maybe(obj.get("ema_state_dict"))
        if raw is not None and "steps" in raw:  # EMAHook swaps: 'state_dict' is the EMA, its own field the raw
            weights = {k.removeprefix("module."): v for k, v in raw.items() if k.startswith("module.")}
            return "mmengine Runner (EMAHook)", weights, _need(obj, "state_dict", source), opt
        return "mmengine Runner", _need(obj, "state_dict", source), None, opt
    if "state_dict" in obj and "best_acc1" in obj:  # timm never writes best_acc1; derived scripts add 'args'
        return "pytorch/examples imagenet", _need(obj, "state_dict", source), _maybe(obj.get("state_dict_ema")), opt
    if "state_dict" in obj and ("state_dict_ema" in obj or "version" in obj or "args" in obj or "metric" in obj):
        return "timm CheckpointSaver", _need(obj, "state_dict", source), _maybe(obj.get("state_dict_ema")), opt
    if "state_dict" in obj and ("best_acc1" in obj or "arch" in obj):
        return "pytorch/examples imagenet", _need(obj, "state_dict", source), None, opt
    if "model" in obj and ("model_ema" in obj or "lr_scheduler" in obj or isinstance(obj.get("args"), argparse.Namespace)):
        return "torchvision references", _need(obj, "model", source), _maybe(obj.get("model_ema")), opt
    if "model" in obj and "opt" in obj and set(obj) <= {"model", "opt"}:
        return "fastai Learner.save", _need(obj, "model", source), None, opt
    if (flat := flat_tensors(obj)) is not None:
        return "state_dict", flat, None, None
    ema = next((e for k in EMA_KEYS if (e := _maybe(obj.get(k))) is not None), None)
    teacher = _maybe(obj.get("teacher"))
    if teacher is not None and _maybe(obj.get("student")) is not None:
        # DINO / iBOT / EsViT: the teacher (the students' average) is the network they evaluate and release
        return "teacher/student self-distillation (the teacher's weights)", teacher, ema, opt
    for key in NESTED_KEYS:
        sd = _maybe(obj.get(key))
        if sd is not None:
            return f"state dict under '{key}'", sd, ema, opt
    candidates = {k: sd for k, v in obj.items() if k not in OPTIMIZER_KEYS + EMA_KEYS
                  and (sd := _maybe(v)) is not None}
    if candidates:
        key = max(candidates, key=lambda k: len(candidates[k]))
        return f"state dict under '{key}'", candidates[key], ema, opt
    if ema is not None:
        return "EMA-only checkpoint", ema, ema, opt
    keys = ", ".join(repr(k) for k in list(obj)[:12])
    raise CheckpointError(f"{source}: no model weights found (top-level keys: {keys or 'none'})")


def _is_flat(obj: Mapping[str, Any]) -> bool:
    return flat_tensors(obj) is not None


#: the entry ``nn.Module.get_extra_state()`` returns under, in a state dict (any object)
EXTRA_STATE = "_extra_state"

#: the entry a quantized ``Linear`` (``torch.ao.nn.quantized``) keeps its weight and bias in
PACKED = "_packed_params._packed_params"


def flat_tensors(obj: Mapping[str, Any]) -> StateDict | None:
    """``obj`` as a flat state dict when it is one, else None.

    A quantized model's state dict (``torch.ao.quantization.convert``) is one too: a quantized
    ``Linear`` keeps ``P._packed_params.dtype`` (a ``torch.dtype``) and ``P._packed_params._packed_params``
    (a ``(weight, bias)`` tuple); they become ``P.weight`` and ``P.bias``, the float layer's names
    (as a quantized ``Conv2d`` keeps them), so that the model is inspected, converted and loaded
    like any other. Such a file converted is no longer loadable into the quantized module itself.

    >>> import torch
    >>> w = torch.quantize_per_tensor(torch.ones(2, 3), 0.5, 0, torch.qint8)
    >>> sd = flat_tensors({"fc.scale": torch.tensor(1.0), "fc._packed_params.dtype": torch.qint8,
    ...                    "fc._packed_params._packed_params": (w, torch.zeros(2))})
    >>> {k: str(v.dtype) for k, v in sd.items()}
    {'fc.scale': 'torch.float32', 'fc.weight': 'torch.qint8', 'fc.bias': 'torch.float32'}
    >>> print(flat_tensors({"w": torch.ones(1), "epoch": 3}))
    None
    """
    if not obj or not all(isinstance(k, str) for k in obj):
        return None
    if all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj)
    out: StateDict = {}
    for k, v in obj.items():
        if isinstance(v, Tensor):
            out[k] = v
        elif k.endswith("_packed_params.dtype") and isinstance(v, torch.dtype):
            continue
        elif k == EXTRA_STATE or k.endswith("." + EXTRA_STATE):  # a module's get_extra_state(): not a weight
            continue
        elif (k.endswith(PACKED) and isinstance(v, tuple | list) and len(v) == 2 and isinstance(v[0], Tensor)
              and (v[1] is None or isinstance(v[1], Tensor))):
            layer = k[: -len(PACKED)]
            out[layer + "weight"] = v[0]
            if v[1] is not None:
                out[layer + "bias"] = v[1]
        else:
            return None
    return out


def _maybe(value: Any) -> StateDict | None:
    """A state dict from a value: a flat dict, a module, or a dict nesting one."""
    if isinstance(value, torch.nn.Module):
        return _module_state(value)
    if not isinstance(value, Mapping):
        return None
    if (flat := flat_tensors(value)) is not None:
        return flat
    for key in NESTED_KEYS:
        if key in value and (sd := _maybe(value[key])) is not None:
            return sd
    return None


def _need(obj: Mapping[str, Any], key: str, source: str) -> StateDict:
    sd = _maybe(obj.get(key))
    if sd is None:
        raise CheckpointError(f"{source}: '{key}' holds no weights ({type(obj.get(key)).__name__})")
    return sd


def _lightning_ema(obj: Mapping[str, Any]) -> StateDict | None:
    """Averaged weights a Lightning callback keeps in its state (EMA callbacks, StochasticWeightAveraging)."""
    for state in (obj.get("callbacks") or {}).values():
        if isinstance(state, Mapping):
            for k in (*EMA_KEYS, "average_model_state"):
                if (sd := _maybe(state.get(k))) is not None:
                    return sd
    return None


#: LightningModule attributes that hold an EMA copy of the network (timm ModelEma*, AveragedModel)
EMA_ATTRIBUTES = ("model_ema", "ema", "ema_model", "net_ema", "ema_net", "averaged_model", "swa_model")


def split_ema_attribute(sd: StateDict) -> tuple[StateDict, StateDict | None]:
    """(weights, EMA weights) of a module that keeps an EMA copy of its network as an attribute.

    ``self.model_ema = ModelEmaV3(self.model)`` or ``self.ema = AveragedModel(self.model)``
    in a LightningModule puts ``model_ema.module.*`` beside ``model.*``. When the copy's
    names (without ``module.`` / ``n_averaged``) are exactly another attribute's, the copy
    becomes the EMA weights under that attribute's names; anything else stays as it is.

    >>> import torch
    >>> w, e = split_ema_attribute({"model.fc.weight": torch.zeros(1), "model_ema.module.fc.weight": torch.ones(1)})
    >>> list(w), list(e), e["model.fc.weight"].item()
    (['model.fc.weight'], ['model.fc.weight'], 1.0)
    """
    by_attr: dict[str, dict[str, Tensor]] = {}
    for k, v in sd.items():
        attr, _, rest = k.partition(".")
        by_attr.setdefault(attr, {})[rest] = v
    for attr in EMA_ATTRIBUTES:
        copy = by_attr.get(attr)
        if not copy:
            continue
        copy = {k.removeprefix("module."): v for k, v in copy.items() if k != "n_averaged"}
        for other, part in by_attr.items():
            if other != attr and set(part) == set(copy):
                weights = {k: v for k, v in sd.items() if not k.startswith(attr + ".")}
                return weights, {f"{other}.{k}": v for k, v in copy.items()}
    return sd, None


def _module_state(module: torch.nn.Module) -> StateDict:
    return {k: v.detach() for k, v in module.state_dict().items() if isinstance(v, Tensor)}  # (not _extra_state)


def _unwrap(ck: Checkpoint) -> Checkpoint:
    ck.weights, removed = _unwrap_sd(ck.weights)
    ck.unwrapped = removed
    if ck.ema is not None:
        ck.ema, ema_removed = _unwrap_sd(ck.ema)
        ck.unwrapped += [r for r in ema_removed if r not in removed]
    ck.weights = {k: _cpu(v, ck.source, k) for k, v in ck.weights.items()}
    if ck.ema is not None:
        ck.ema = {k: _cpu(v, ck.source, k) for k, v in ck.ema.items()}
    return ck


def _unwrap_sd(sd: StateDict) -> tuple[StateDict, list[str]]:
    count = sd.get("n_averaged")
    if count is not None and (all(k.startswith("module.") for k in sd if k != "n_averaged")
                              or (isinstance(count, Tensor) and count.ndim == 0 and not count.is_floating_point())):
        # torch.optim.swa_utils.AveragedModel's counter: beside 'module.*' keys, or beside the model's own
        # names (finetune's Checkpointer saves an AveragedModel with clean keys)
        sd = {k: v for k, v in sd.items() if k != "n_averaged"}
    mapping, removed = unwrap_names(sd)
    return {mapping[k]: v for k, v in sd.items()}, removed


def _cpu(t: Tensor, source: str = "", name: str = "") -> Tensor:
    """A plain CPU tensor; a DTensor (``torch.save`` of an FSDP2 model's state dict) becomes its
    local tensor when that is the whole tensor (one rank, or replicated), else an error."""
    if type(t).__name__ == "DTensor" and hasattr(t, "to_local"):
        if t.device_mesh.size() != 1 and not all(p.is_replicate() for p in t.placements):
            raise CheckpointError(f"{source}: '{name}' is one rank's shard of a DTensor {tuple(t.shape)} "
                                  f"({t.placements}): save a full state dict (get_model_state_dict with "
                                  "StateDictOptions(full_state_dict=True)) or use torch.distributed.checkpoint")
        t = t.to_local()
    t = t.detach()
    return t if t.device.type == "cpu" else t.cpu()


# --------------------------------------------------------------------------- metadata
_META_SKIP = set(NESTED_KEYS + EMA_KEYS + OPTIMIZER_KEYS) | {
    "scheduler", "lr_scheduler", "lr_schedulers", "param_schedulers", "scaler", "amp_scaler", "loops",
    "current_model_state"}


def _metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-friendly scalars and small structures of a checkpoint dict."""
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or k in _META_SKIP or (isinstance(v, Tensor) and v.numel() > 1):
            continue
        val = jsonable(v)
        if val is not _SKIP:
            out[k] = val
    return out


_SKIP = object()


def jsonable(v: Any, depth: int = 0) -> Any:
    """Scalars, short lists and small dicts as JSON values; bulky things are skipped.

    >>> import argparse, torch
    >>> jsonable({"lr": torch.tensor(0.5), "args": argparse.Namespace(model="resnet18")})
    {'lr': 0.5, 'args': {'model': 'resnet18'}}
    """
    if isinstance(v, PartialStandIn):
        return v.describe()
    if type(v).__module__.startswith("numpy"):
        if hasattr(v, "item"):  # before float: np.float64 is a float
            return v.item() if getattr(v, "size", 1) == 1 else _SKIP
        if hasattr(v, "itemsize") and hasattr(v, "kind"):  # np.dtype('float32'), numpy.dtypes.Float32DType
            return str(v)
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, Tensor):
        return v.item() if v.numel() == 1 else _SKIP
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if depth > 3:
        return _SKIP
    if isinstance(v, argparse.Namespace):
        v = vars(v)
    if isinstance(v, Mapping):
        try:
            pairs = list(v.items())[:200]
        except Exception:  # noqa: BLE001 - a trusted file's own mapping (an OmegaConf interpolation) may fail
            return _SKIP
        if any(isinstance(x, Tensor) and x.numel() > 1 for _, x in pairs):
            return _SKIP  # weights (e.g. a callback's averaged model), not metadata
        items = {(k.__qualname__ if isinstance(k, type) else str(k)): jsonable(x, depth + 1) for k, x in pairs}
        items = {k: x for k, x in items.items() if x is not _SKIP}
        return items if items or not v else _SKIP
    if isinstance(v, list | tuple) and len(v) <= 1000:
        items = [jsonable(x, depth + 1) for x in v]
        return [x for x in items if x is not _SKIP] if items else []
    if isinstance(v, torch.dtype | torch.Size):
        return str(v)
    return _SKIP


# --------------------------------------------------------------------------- plain pickles
def _read_raw_pickle(path: Path, *, trust: bool) -> Any:
    """A plain ``pickle.dump`` file (e.g. detectron2's numpy weights): allowlisted types only.

    NumPy arrays become tensors. Tensors pickled with plain pickle need ``trust``
    (their storages are restored by ``torch.load`` without ``weights_only``).
    """
    import codecs
    import pickle

    try:
        with path.open("rb") as f:
            if trust:
                obj = pickle.load(f, encoding="latin1")  # noqa: S301 - the user said the file is trusted
            else:
                allowed = {**_allowlist_map(), "_codecs.encode": codecs.encode}
                # Python 2 pickles (Detectron's model zoo) hold numpy data as str: latin1, as detectron2 reads them
                obj = RestrictedUnpickler(f, allowed, name=str(path), encoding="latin1").load()
    except WeightsError:
        raise
    except ImportError as e:  # (trust=True) a class of the file whose library is not installed here
        raise CheckpointError(f"{path}: cannot read ({type(e).__name__}: {e}): the pickle needs that library "
                              "installed") from None
    except Exception as e:  # noqa: BLE001 - any failure of a pickle is a corrupt file
        raise CheckpointError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {e})") from None
    return _numpy_to_torch(obj)


def _read_npz(path: Path) -> StateDict:
    """The arrays of a ``numpy.savez`` archive (``np.savez(f, **{k: v.numpy() ...})`` of a state dict) as
    tensors, read with ``allow_pickle=False``: an array of Python objects is refused, nothing runs."""
    import numpy as np

    out: StateDict = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for k in npz.files:
                a = npz[k]
                if a.dtype.kind not in "fiub":
                    raise CheckpointError(f"{path}: array '{k}' holds {a.dtype} values, not numbers")
                out[k] = torch.from_numpy(np.array(a, order="C"))  # (0-d arrays stay 0-d)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if "allow_pickle" in str(e):
            raise CheckpointError(f"{path}: a .npz archive of pickled Python objects, not of weights") from None
        raise CheckpointError(f"{path}: corrupt or truncated .npz archive ({e})") from None
    return out


def _numpy_to_torch(obj: Any, depth: int = 0) -> Any:
    if type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray" and obj.dtype.kind in "fiub":
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Mapping) and depth < 6:
        return {k: _numpy_to_torch(v, depth + 1) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- safetensors / shards
def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None


def _safetensors_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {"safetensors_metadata": dict(meta)} if meta else {}


def _read_weights_file(path: Path, *, trust: bool) -> StateDict:
    kind = sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind in ("torch zip", "pickle"):
        sd = _maybe(_torch_file(path, kind=kind, trust=trust))
        if sd is None:
            raise CheckpointError(f"{path}: holds no flat state dict")
        return sd
    raise CheckpointError(f"{path}: {kind}")


def _read_sharded(index: Path, *, trust: bool) -> StateDict:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a shard index json ({e})") from None
    sd: StateDict = {}
    for shard in dict.fromkeys(weight_map.values()):
        file = index.parent / shard
        if not file.is_file():
            raise CheckpointError(f"{index}: shard '{shard}' is missing from {index.parent}")
        sd.update(_read_weights_file(file, trust=trust))
    lost = [k for k in weight_map if k not in sd]
    if lost:
        raise CheckpointError(f"{index}: {len(lost)} tensors listed in the index are in no shard (e.g. {lost[0]})")
    return sd


# --------------------------------------------------------------------------- folders
def _read_folder(path: Path, *, trust: bool) -> Checkpoint:
    name = str(path)
    if (path / ".metadata").is_file():
        return interpret(read_dcp(path), source=name, container="torch.distributed.checkpoint folder")
    if find_tag_folder(path) is not None:  # DeepSpeed: 'latest' + the tag folder, or the tag folder
        return read_deepspeed(path, trust=trust)
    files = {p.name: p for p in path.iterdir()}
    if "snapshots" in files and files["snapshots"].is_dir() and ("refs" in files or "blobs" in files):
        return _with_folder_note(read_checkpoint(hf_cache_snapshot(path), trust=trust), name)
    accelerate = any(n in files for n in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "scaler.pt"))
    fmt = "accelerate save_state" if accelerate else "weights folder"
    ck: Checkpoint | None = None
    for index in INDEX_FILES:
        if index in files:
            ck = Checkpoint(name, f"sharded, {index}", fmt, _read_sharded(files[index], trust=trust))
            break
    if ck is None:
        main = next((files[n] for n in FOLDER_FILES if n in files), None)
        if main is None:
            weights = [p for p in files.values() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
                       and p.name not in ("optimizer.bin", "scheduler.bin", "scaler.pt", "sampler.bin")]
            if len(weights) == 1:
                return _with_folder_note(read_checkpoint(weights[0], trust=trust), name)
            ds_dirs = [p for p in files.values() if p.is_dir() and p.name.endswith(WEIGHT_SUFFIXES)
                       and find_tag_folder(p) is not None]
            if not weights and len(ds_dirs) == 1:  # Lightning DeepSpeedStrategy: runs/epoch=1-step=6.ckpt/
                return _with_folder_note(read_checkpoint(ds_dirs[0], trust=trust), name)
        if main is not None:
            sd = _read_weights_file(main, trust=trust)
            ck = Checkpoint(name, main.name, fmt, sd)
    if ck is None:
        dcp_dirs = [p for p in files.values() if p.is_dir() and (p / ".metadata").is_file()]
        if dcp_dirs:  # accelerate FSDP: pytorch_model_fsdp_0/
            return _with_folder_note(read_checkpoint(sorted(dcp_dirs)[0], trust=trust), name)
        shown = ", ".join(sorted(files)[:8]) or "nothing"
        raise CheckpointError(f"{name}: folder holds no model weights (looked for {', '.join(FOLDER_FILES)}, "
                              f"a shard index or a .metadata; found {shown})")
    others = sorted(n for n in files if n.startswith("model_") and n.endswith((".safetensors", ".bin")))
    if others:
        ck.notes.append(f"read the first model only; the folder also has {', '.join(others)}")
    if accelerate and "optimizer.bin" in files:
        try:
            ck.optimizer = torch_load(files["optimizer.bin"], name=str(files["optimizer.bin"]), trust=trust)
        except CheckpointError as e:
            ck.notes.append(f"optimizer.bin not read: {e}")
    ck.metadata["files"] = sorted(files)
    if "config.json" in files:
        ck.metadata.update(folder_config(files["config.json"]))
    return _unwrap(ck)


#: what a model folder's config.json says about the model: timm's hub format (``architecture``,
#: ``num_classes``, ``label_names``, ``pretrained_cfg``) and Hugging Face transformers'
#: (``architectures``, ``model_type``, ``id2label``)
CONFIG_KEYS = ("architecture", "architectures", "model_type", "num_classes", "num_labels", "label_names", "id2label")


def folder_config(path: Path) -> dict[str, Any]:
    """The model description in a weights folder's ``config.json`` (timm's ``save_for_hf`` /
    ``push_to_hub`` folders, Hugging Face transformers' ``save_pretrained``), as ``config.KEY``
    metadata: the architecture, the number of classes and their names, and the eval settings of
    timm's ``pretrained_cfg``. Plain JSON is read, nothing else; an unreadable file gives ``{}``.

    >>> import json, tempfile
    >>> path = Path(tempfile.mkdtemp()) / "config.json"
    >>> _ = path.write_text(json.dumps({"architecture": "resnet18", "num_classes": 2, "label_names": ["cat", "dog"],
    ...                                 "pretrained_cfg": {"crop_pct": 0.95, "interpolation": "bicubic"}}))
    >>> folder_config(path)
    {'config.architecture': 'resnet18', 'config.num_classes': 2, 'config.label_names': ['cat', 'dog'], 'config.crop_pct': 0.95, 'config.interpolation': 'bicubic'}
    """
    try:
        if path.stat().st_size > 4 << 20:
            return {}
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    out = {f"config.{k}": config[k] for k in CONFIG_KEYS if k in config}
    labels = _id2label_list(config.get("id2label"))
    if labels is not None:  # one list, as timm's label_names, not one row per class (200 of ImageNet's 1000)
        out["config.id2label"] = labels
    pretrained = config.get("pretrained_cfg")
    if isinstance(pretrained, dict):
        out.update({f"config.{k}": pretrained[k] for k in ("input_size", "crop_pct", "interpolation", "crop_mode",
                                                           "mean", "std") if k in pretrained})
    else:  # a transformers folder: the input settings of its image processor, as a run takes them
        processor = image_processor_cfg(path.parent)
        if processor is not None:
            out.update({f"preprocessor.{k}": v for k, v in vars(processor).items() if v is not None})
    return {k: jsonable(v) for k, v in out.items()}


#: PIL's resampling filters by number, as transformers' image processors store them
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

#: transformers' image processors whose ``size`` as a plain number (older files: google/vit-*, facebook/deit-*)
#: is a square; the others (ConvNeXt's, ResNet's, CLIP's, BiT's) resize the shorter side to it
_SQUARE_INT_SIZE = frozenset({"ViTImageProcessor", "ViTFeatureExtractor", "DeiTImageProcessor", "DeiTFeatureExtractor",
                              "BeitImageProcessor", "BeitFeatureExtractor"})
#: config.json model types whose processor (as transformers' AutoImageProcessor picks it when
#: preprocessor_config.json names none) is one of those: ViT's, DeiT's, BEiT's
_SQUARE_INT_SIZE_MODELS = frozenset({"vit", "vit_mae", "vit_msn", "swin", "swinv2", "deit", "beit", "data2vec-vision"})


def _model_type(folder: Any) -> str | None:
    """The ``model_type`` of a transformers folder's ``config.json``; None without one."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) and isinstance(config.get("model_type"), str) else None


def image_processor_cfg(folder: Any) -> Any:
    """The input settings (as timm's ``pretrained_cfg``: input_size, crop_pct, interpolation,
    crop_mode, mean, std) of a Hugging Face transformers folder's ``preprocessor_config.json``: its
    ``image_mean`` / ``image_std``, ``resample``, and ``size`` / ``crop_size`` / ``crop_pct`` (a
    ``{"height", "width"}`` size is a squash resize; ``{"shortest_edge"}`` a resize of the shorter
    side, then the centre crop; a plain number, as older files have it, is the side of a square for
    ViT's / DeiT's / BEiT's processors (where the file names none: those of such a ``config.json``
    ``model_type``, as transformers picks it), the shorter side for the others; ``do_normalize: false`` is a
    mean of 0 and a std of 1; EfficientNet's ``include_top``, on unless false, divides by ``image_std`` once more);
    None without one.

    >>> import json, pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "preprocessor_config.json").write_text(json.dumps({  # microsoft/resnet-50's
    ...     "crop_pct": 0.875, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    ...     "resample": 3, "size": {"shortest_edge": 224}}))
    >>> cfg = image_processor_cfg(folder)
    >>> cfg.input_size, cfg.crop_pct, cfg.interpolation, cfg.crop_mode, cfg.mean
    ([3, 224, 224], 0.875, 'bicubic', 'center', [0.485, 0.456, 0.406])
    >>> _ = (folder / "preprocessor_config.json").write_text(json.dumps({  # google/vit-base-patch16-224's
    ...     "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
    ...     "size": {"height": 224, "width": 224}}))
    >>> cfg = image_processor_cfg(folder)
    >>> cfg.input_size, cfg.crop_pct, cfg.interpolation, cfg.crop_mode, cfg.std
    ([3, 224, 224], 1.0, 'bilinear', 'squash', [0.5, 0.5, 0.5])
    >>> _ = (folder / "preprocessor_config.json").write_text(json.dumps({  # the same, as the hub has it
    ...     "feature_extractor_type": "ViTFeatureExtractor", "resample": 2, "size": 224}))
    >>> cfg = image_processor_cfg(folder)
    >>> cfg.input_size, cfg.crop_pct, cfg.crop_mode
    ([3, 224, 224], 1.0, 'squash')
    >>> _ = (folder / "preprocessor_config.json").write_text(json.dumps({"size": 224}))  # no processor named:
    >>> _ = (folder / "config.json").write_text(json.dumps({"model_type": "vit"}))  # the model type's, as transformers
    >>> image_processor_cfg(folder).crop_mode
    'squash'
    """
    try:
        cfg = json.loads((Path(folder) / "preprocessor_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None

    def square(value: Any) -> int | None:  # an int, or {"height": n, "width": n}
        if isinstance(value, dict) and value.get("height") == value.get("width"):
            value = value.get("height")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    size, crop = cfg.get("size"), square(cfg.get("crop_size"))
    kind = str(cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or "").removesuffix("Fast")
    if isinstance(size, int) and (kind in _SQUARE_INT_SIZE or not kind and _model_type(folder) in _SQUARE_INT_SIZE_MODELS):
        size = {"height": size, "width": size}  # (transformers reads it as {"height": n, "width": n})
    shortest = size.get("shortest_edge") if isinstance(size, dict) else size if isinstance(size, int) else None
    side, crop_pct, crop_mode = None, None, None
    if isinstance(size, dict) and "height" in size:  # resized to height x width (squashed), maybe then cropped
        resized = square(size)
        if resized is not None:
            side, crop_pct, crop_mode = resized, 1.0, "squash"
            if cfg.get("do_center_crop") and crop is not None and crop <= resized:
                side, crop_pct = crop, crop / resized
    elif isinstance(shortest, int) and shortest > 0:
        pct = cfg.get("crop_pct")
        if isinstance(pct, (int, float)) and 0 < pct <= 1:  # ConvNeXt's processor (ResNet's too)
            side, crop_pct, crop_mode = (shortest, float(pct), "center") if shortest < 384 else (shortest, 1.0, "squash")
        elif cfg.get("do_center_crop") and crop is not None and crop <= shortest:
            side, crop_pct, crop_mode = crop, crop / shortest, "center"
        else:
            side, crop_pct, crop_mode = shortest, 1.0, "center"
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if cfg.get("do_normalize") is False:  # the model takes the 0-1 pixels as they are (the file still lists a mean)
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    three = lambda v: [float(x) for x in v] if isinstance(v, list) and len(v) == 3 else None  # noqa: E731
    if (kind == "EfficientNetImageProcessor" or not kind and _model_type(folder) == "efficientnet") \
            and cfg.get("include_top", True) and three(cfg.get("image_std")) and three(std):
        # (google/efficientnet-*: include_top divides by image_std once more, as Keras' EfficientNet did)
        std = [a * b for a, b in zip(three(std), three(cfg.get("image_std")), strict=True)]
    return types.SimpleNamespace(input_size=[3, side, side] if side else None, crop_pct=crop_pct,
                                 interpolation=_PIL_RESAMPLE.get(cfg.get("resample")), crop_mode=crop_mode,
                                 mean=three(mean), std=three(std), fixed_input_size=None)


def hf_cache_snapshot(repo: Path) -> Path:
    """The snapshot folder of a Hugging Face hub cache repository folder
    (``$HF_HUB_CACHE/models--ORG--NAME``): the one ``refs/main`` names, else the only one.

    >>> import tempfile
    >>> repo = Path(tempfile.mkdtemp()) / "models--org--net"
    >>> (repo / "snapshots" / "abc123").mkdir(parents=True); (repo / "refs").mkdir()
    >>> _ = (repo / "refs" / "main").write_text("abc123")
    >>> hf_cache_snapshot(repo).name
    'abc123'
    """
    snapshots = sorted(p for p in (repo / "snapshots").iterdir() if p.is_dir())
    ref = repo / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text(errors="replace").strip()
        if (repo / "snapshots" / commit).is_dir():
            return repo / "snapshots" / commit
    if len(snapshots) == 1:
        return snapshots[0]
    shown = ", ".join(p.name for p in snapshots[:4]) or "none"
    raise CheckpointError(f"{repo}: a Hugging Face cache folder whose refs/main names no snapshot; give one of its "
                          f"snapshots/ folders ({shown})")


def _id2label_list(id2label: Any) -> list[Any] | None:
    """transformers' ``id2label`` (``{"0": "cat", "1": "dog"}``) as the list of names by class index,
    when its keys are exactly 0..n-1; else None.

    >>> _id2label_list({"1": "dog", "0": "cat"}), _id2label_list({"a": 1})
    (['cat', 'dog'], None)
    """
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        index = {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    if sorted(index) != list(range(len(index))):
        return None
    return [index[i] for i in range(len(index))]


def _with_folder_note(ck: Checkpoint, folder: str) -> Checkpoint:
    ck.notes.append(f"read {ck.source} from folder {folder}")
    return ck


# --------------------------------------------------------------------------- torch.distributed.checkpoint
def read_dcp(path: Path) -> dict[str, Any]:
    """A ``torch.distributed.checkpoint`` folder as a nested dict, without a process group.

    The ``.metadata`` pickle is read with a restricted unpickler (DCP's own reader
    uses plain ``pickle.load``, which would run code from a crafted file).

    >>> import pathlib, tempfile, warnings, torch
    >>> import torch.distributed.checkpoint as dcp
    >>> from finetune.weights.formats import read_dcp
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "dcp"
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")        # "torch.distributed is ... uninitialized": fine here
    ...     _ = dcp.save({"model": {"w": torch.ones(2)}}, checkpoint_id=str(folder))
    >>> read_dcp(folder)
    {'model': {'w': tensor([1., 1.])}}
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.metadata import StorageMeta
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    metadata = _safe_dcp_metadata(path / ".metadata")

    class SafeReader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    sd: dict[str, Any] = {}
    try:
        _load_state_dict(sd, storage_reader=SafeReader(str(path)), planner=_EmptyStateDictLoadPlanner(),
                         no_dist=True)
    except Exception as e:  # noqa: BLE001 - DCP raises CheckpointException and friends
        raise CheckpointError(f"{path}: cannot read torch.distributed.checkpoint folder "
                              f"({type(e).__name__}: {str(e).strip()[:200]})") from None
    return sd


def _safe_dcp_metadata(file: Path) -> Any:
    import importlib

    def resolve(module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint."):
            obj = getattr(importlib.import_module(module), name, None)
            return obj if isinstance(obj, type) else None
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype
                                                            | torch.layout | torch.memory_format)):
            return getattr(torch, name)
        if (module, name) in (("torch.serialization", "_get_layout"), ("torch._utils", "_get_layout")):
            return getattr(importlib.import_module(module), name)
        return None

    try:
        with file.open("rb") as f:
            return RestrictedUnpickler(f, _allowlist_map(), resolve, name=str(file)).load()
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, struct.error) as e:
        raise CheckpointError(f"{file}: corrupt torch.distributed.checkpoint metadata ({e})") from None
    except Exception as e:
        if isinstance(e, WeightsError):
            raise
        raise CheckpointError(f"{file}: corrupt torch.distributed.checkpoint metadata ({e})") from None


def _allowlist_map() -> dict[str, Any]:
    out: dict[str, Any] = {"collections.OrderedDict": __import__("collections").OrderedDict}
    for g in allowlist():
        obj, name = g if isinstance(g, tuple) else (g, f"{g.__module__}.{g.__qualname__}")
        out[name] = obj
    return out


# --------------------------------------------------------------------------- torch.export (.pt2)
#: torch.export's serialized ``ScalarType`` numbers (``torch._export.serde.schema``)
PT2_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32", 8: "float64",
              9: "complex32", 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16", 28: "uint16",
              29: "float8_e4m3fn", 30: "float8_e5m2", 31: "float8_e4m3fnuz", 32: "float8_e5m2fnuz",
              33: "float8_e8m0fnu", 34: "uint32", 35: "uint64"}


def _read_pt2(path: Path, *, trust: bool) -> StateDict:
    """The parameters and buffers of a ``torch.export.save`` archive, read from its JSON weights
    description and raw tensor records; nothing of the program is loaded or run. A weight stored
    pickled (a tensor subclass) needs ``trust`` (torch.export.load unpickles it with weights_only=False).

    (torch < 2.6 wrote another layout, a pickled ``serialized_state_dict.pt``: not read.)

    >>> import pathlib, tempfile, torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).eval()
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.pt2"
    >>> torch.export.save(torch.export.export(m, (torch.randn(2, 3),)), str(path))
    >>> sd = _read_pt2(path, trust=False)  # doctest: +SKIP
    >>> sorted(sd) == sorted(m.state_dict()) and all(torch.equal(sd[k], v) for k, v in m.state_dict().items())  # doctest: +SKIP
    True
    """
    try:
        with zipfile.ZipFile(path) as zf:
            configs = {m.group(2): n for n in zf.namelist() if (m := PT2_WEIGHTS_RE.search(n))}
            model = "model" if "model" in configs else sorted(configs)[0]
            config_name = configs[model]
            base = config_name.rpartition("/")[0] + "/"
            config = json.loads(zf.read(config_name))["config"]
            records: dict[str, Tensor] = {}
            out: StateDict = {}
            for fqn, meta in config.items():
                if meta.get("use_pickle"):
                    if not trust:
                        raise UnsafeCheckpointError(
                            f"{path}: torch.export archive stores '{fqn}' pickled (a tensor subclass): loading it "
                            "could run code stored in the file; if you trust where the file comes from, pass --trust "
                            "(trust=True)")
                    out[fqn] = torch.load(io.BytesIO(zf.read(base + meta["path_name"])), map_location="cpu",
                                          weights_only=False)
                    continue
                tm = meta["tensor_meta"]
                dtype = getattr(torch, PT2_DTYPES.get(tm["dtype"], ""), None)
                if not isinstance(dtype, torch.dtype):
                    raise CheckpointError(f"{path}: '{fqn}' has a dtype this torch does not know ({tm['dtype']})")
                sizes = [d["as_int"] for d in tm["sizes"]]
                strides = [d["as_int"] for d in tm["strides"]]
                offset = tm["storage_offset"]["as_int"]
                if meta["path_name"] not in records:  # weights that alias one another share a record
                    raw = bytearray(zf.read(base + meta["path_name"]))
                    records[meta["path_name"]] = torch.frombuffer(raw, dtype=torch.uint8) if raw \
                        else torch.empty(0, dtype=torch.uint8)
                record = records[meta["path_name"]]
                out[fqn] = (torch.as_strided(record.view(dtype), sizes, strides, offset) if record.numel()
                            else torch.zeros(sizes, dtype=dtype))  # torch.export writes no bytes for empty tensors
    except WeightsError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, IndexError, RuntimeError, OSError) as e:
        raise CheckpointError(f"{path}: corrupt torch.export archive ({type(e).__name__}: {e})") from None
    if not out:
        raise CheckpointError(f"{path}: torch.export archive holds no weights")
    return out


# --------------------------------------------------------------------------- TorchScript
class _ScriptObject:
    """Stand-in for a TorchScript class: keeps its attributes, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, Mapping):
            self.__dict__.update(state)
        else:
            self.__dict__["__state__"] = state


def _read_torchscript(path: Path, *, trust: bool) -> StateDict:
    """Parameters and buffers of a TorchScript archive, read without running its code."""
    try:
        return _script_tensors(path)
    except WeightsError:
        if not trust:
            raise
    except (zipfile.BadZipFile, KeyError, EOFError, ValueError, TypeError, RuntimeError) as e:
        if not trust:
            raise CheckpointError(f"{path}: TorchScript archive not readable without running it ({e}); "
                                  "pass --trust (trust=True) to load it with torch.jit.load") from None
    try:
        return _module_state(torch.jit.load(str(path), map_location="cpu"))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot load TorchScript archive ({e})") from None


def _zip_unpickle(path: Path, allowed: Mapping[str, Any], resolve: Any, *, data: bool = True) -> Any:
    """The object in a torch zip or TorchScript archive's ``data.pkl``, unpickled by
    :class:`RestrictedUnpickler` (any pickle protocol), tensors read from its ``data/`` records
    (without ``data``: on the meta device, nothing of them read)."""
    with zipfile.ZipFile(path) as zf:
        data_pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
        prefix = data_pkl[: -len("data.pkl")]
        storages: dict[str, Any] = {}

        def persistent_load(pid: Any) -> Any:
            typename, storage_type, key, _location, numel = pid
            if typename != "storage":
                raise CheckpointError(f"{path}: unknown record type {typename!r}")
            if isinstance(storage_type, torch.dtype):
                dtype = storage_type
            elif storage_type is torch.UntypedStorage:  # _rebuild_tensor_v3 gives the dtype itself
                dtype = torch.uint8
            else:  # a legacy storage class (torch.FloatStorage): its .dtype warns that TypedStorage is deprecated
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    dtype = storage_type.dtype
            if not data:
                storages.setdefault(key, torch.UntypedStorage(numel * dtype.itemsize, device="meta"))
            if key not in storages:  # views of one storage share it
                raw = bytearray(zf.read(f"{prefix}data/{key}"))
                storages[key] = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage() if raw \
                    else torch.UntypedStorage(0)
            return torch.storage.TypedStorage(wrap_storage=storages[key], dtype=dtype, _internal=True)

        unpickler = RestrictedUnpickler(io.BytesIO(zf.read(data_pkl)), dict(allowed), resolve, name=str(path))
        unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
        return unpickler.load()


def peek_torch_zip(path: Path) -> Any:
    """The object a torch zip checkpoint holds, its tensors on the meta device: its metadata
    without reading the tensors' data (milliseconds whatever the file's size); the same
    allowlist as :func:`read_zip_restricted`.

    >>> import pathlib, tempfile, torch
    >>> from finetune.weights.formats import peek_torch_zip
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.pt"
    >>> torch.save({"model": {"w": torch.ones(2, 3)}, "epoch": 4}, path)
    >>> obj = peek_torch_zip(path)
    >>> obj["epoch"], obj["model"]["w"].shape, obj["model"]["w"].device.type
    (4, torch.Size([2, 3]), 'meta')
    """
    import codecs

    allowed = {**_allowlist_map(), **_tensor_globals(), **RESTRICTED_ONLY, "_codecs.encode": codecs.encode}
    with warnings.catch_warnings():  # (a legacy storage class's .dtype: TypedStorage is deprecated)
        warnings.simplefilter("ignore", UserWarning)
        return _zip_unpickle(path, allowed, _torch_name, data=False)


def peek_names(path: Path) -> set[str]:
    """The tensor names of a weights file, read without its tensors' data (a safetensors header, the
    pickle of a torch zip or TorchScript archive, tensors on the meta device); empty for anything else.

    >>> import pathlib, tempfile, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.pt"
    >>> torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 4}, path)
    >>> sorted(peek_names(path))
    ['w']
    """
    try:
        kind = sniff(path)
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return set(f.keys())
        if kind == "torchscript":
            return set(_script_tensors(path, data=False))
        obj = peek_torch_zip(path) if kind == "torch zip" else None
    except Exception:  # noqa: BLE001 - not readable here: loading the weights says why
        return set()
    if not isinstance(obj, Mapping):
        return set()
    names = {str(k) for k, v in obj.items() if isinstance(v, Tensor)}
    for v in obj.values():  # a checkpoint's state dict one level down ('state_dict', 'model', ...)
        if isinstance(v, Mapping):
            names |= {str(n) for n, t in v.items() if isinstance(t, Tensor)}
    return names


def _tensor_globals() -> dict[str, Any]:
    import collections

    from torch import _utils

    return {"collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor_v2": _utils._rebuild_tensor_v2,
            # float8, uint16 and other dtypes without a legacy storage class: torch.save writes these
            "torch._utils._rebuild_tensor_v3": _utils._rebuild_tensor_v3,
            "torch.storage.UntypedStorage": torch.UntypedStorage,  # their storages' record type
            "torch._utils._rebuild_parameter": _utils._rebuild_parameter}


def _torch_name(module: str, name: str) -> Any:
    """torch's storage classes, dtypes and ``Size`` by name (what a checkpoint pickle names), else None."""
    if module != "torch":
        return None
    obj = getattr(torch, name, None)
    if name.endswith("Storage") and isinstance(obj, type) or name == "Size" or isinstance(obj, torch.dtype):
        return obj
    return storage_dtype(name)


def storage_dtype(name: str) -> torch.dtype | None:
    """The dtype of a storage that has no legacy class in ``torch`` (``Float8_e4m3fnStorage``,
    ``UInt16Storage``: TorchScript archives name the storages of newer dtypes so), else None.

    >>> storage_dtype("Float8_e4m3fnStorage"), storage_dtype("UInt16Storage"), storage_dtype("os")
    (torch.float8_e4m3fn, torch.uint16, None)
    """
    if not name.endswith("Storage"):
        return None
    wanted = name.removesuffix("Storage").lower()
    dtype = getattr(torch, wanted, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def read_zip_restricted(path: Path) -> Any:
    """A torch zip checkpoint read without torch's weights_only unpickler, for pickles it cannot
    parse (``torch.save(..., pickle_protocol=4)`` or 5: torch's has no protocol-4 opcodes) or fill
    (a yacs ``CfgNode``: :data:`~finetune.weights.unpickle.RESTRICTED_ONLY`). The same allowlist
    applies: any other class is refused with the usual error.

    >>> import pathlib, tempfile, torch
    >>> from finetune.weights.formats import read_zip_restricted
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "p5.pt"
    >>> torch.save({"w": torch.ones(2)}, path, pickle_protocol=5)
    >>> read_zip_restricted(path)
    {'w': tensor([1., 1.])}
    """
    import codecs

    allowed = {**_allowlist_map(), **_tensor_globals(), **RESTRICTED_ONLY, "_codecs.encode": codecs.encode}
    try:
        return _zip_unpickle(path, allowed, _torch_name)
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the pickle is a corrupt file
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {e})") from None


def _torch_file(path: Path, *, kind: str, trust: bool) -> Any:
    """``torch_load``, and for a zip whose pickle torch's safe unpickler cannot parse, :func:`read_zip_restricted`.

    With ``trust``, a file whose classes' library is not installed here (omegaconf, fastcore,
    mmengine, yacs) is read the safe way, with the stand-ins, rather than not at all."""
    try:
        return torch_load(path, name=str(path), trust=trust)
    except CheckpointError as e:
        if not trust or not isinstance(e.__cause__, ImportError | AttributeError):
            raise
        try:
            return _torch_file(path, kind=kind, trust=False)
        except FinetuneError:
            raise e from None
    except UnsafeCheckpointError as e:
        unsafe = getattr(e, "unsafe_globals", None)
        fillable = bool(unsafe) and all(g in RESTRICTED_ONLY for g in unsafe or ())
        if kind != "torch zip" or not ("Unsupported operand" in str(e) or fillable):
            raise
        return read_zip_restricted(path)


def _script_tensors(path: Path, *, data: bool = True) -> StateDict:
    import importlib

    jit_pickle = importlib.import_module("torch.jit._pickle")
    allowed = _tensor_globals()
    for fn in ("build_intlist", "build_floatlist", "build_boollist", "build_doublelist",
               "build_tensorlist", "build_complexlist", "restore_type_tag"):
        if hasattr(jit_pickle, fn):
            allowed[f"torch.jit._pickle.{fn}"] = getattr(jit_pickle, fn)

    def resolve(module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name, None) or storage_dtype(name)
        return None

    root = _zip_unpickle(path, allowed, resolve, data=data)
    out: StateDict = {}
    _collect(root, "", out, set())
    if not out:
        with zipfile.ZipFile(path) as zf:
            constants = any("/constants/" in n for n in zf.namelist())
        why = (" (its weights are unnamed constants, as torch.jit.freeze leaves them: save the module before "
               "freezing it)") if constants else ""
        raise CheckpointError(f"{path}: TorchScript archive holds no named tensors{why}")
    return out


def _collect(obj: Any, prefix: str, out: StateDict, seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for k, v in vars(obj).items():
        if isinstance(v, Tensor):
            out[prefix + k] = v.detach()
        elif isinstance(v, _ScriptObject):
            _collect(v, f"{prefix}{k}.", out, seen)


__all__ = ["Checkpoint", "read_checkpoint", "interpret", "sniff", "read_dcp", "jsonable", "unsafe_error"]

"""``read_state_dict``, ``inspect_checkpoint`` and ``convert``: the reading side of the CLI.

>>> import torch
>>> sorted(read_state_dict({"model": {"_orig_mod.fc.bias": torch.zeros(2)}, "opt": {}}))
['fc.bias']
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from finetune.errors import WeightsError, describe_os_error
from finetune.weights import sources
from finetune.weights.formats import Checkpoint, jsonable, read_checkpoint
from finetune.weights.open_clip_names import from_open_clip
from finetune.weights.transformers_names import from_transformers

StateDict = dict[str, Tensor]


def read_state_dict(source: str | os.PathLike[str] | Mapping[str, Any], *, ema: bool = False,
                    trust: bool = False) -> StateDict:
    """A flat state dict of CPU tensors from any checkpoint, wrapper prefixes removed.

    ``ema=True`` picks the EMA weights where the file has them (a warning and the raw
    weights otherwise). A pickled ``nn.Module`` needs ``trust=True``.

    >>> from finetune import read_state_dict
    >>> import torch
    >>> ck = {"state_dict": {"module.w": torch.ones(1)}, "state_dict_ema": {"module.w": torch.zeros(1)}, "version": 2}
    >>> read_state_dict(ck)["w"].item(), read_state_dict(ck, ema=True)["w"].item()
    (1.0, 0.0)
    """
    ck = read_checkpoint(source, trust=trust)
    if ema:
        if ck.ema is not None:
            return ck.ema
        warnings.warn(f"{ck.source}: no EMA weights in the file; returning the raw weights", stacklevel=2)
    return ck.weights


# --------------------------------------------------------------------------- inspect
def inspect_checkpoint(source: str | os.PathLike[str], *, model: str | None = None, optimizer: bool = False,
                       trust: bool = False) -> dict[str, Any]:
    """What a checkpoint holds, as a JSON-ready dict.

    Keys: ``source``, ``format``, ``container``, ``metadata``, ``tensors`` (name, shape,
    dtype, numel), ``totals`` (tensors, numel, MB), ``ema``, ``notes``; ``optimizer``
    (a summary) when asked; ``load_report`` against architecture ``model`` when given.

    >>> import torch, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.pt"); torch.save({"w": torch.ones(2, 2)}, p)
    >>> info = inspect_checkpoint(p)
    >>> info["format"], info["totals"]["numel"]
    ('state_dict', 4)
    """
    if sources.is_named(source):  # torchvision / timm:NAME: the file in the local cache, as --pretrained reads it
        source = sources.resolve(str(source), model)
    ck = read_checkpoint(source, trust=trust)
    info: dict[str, Any] = {
        "source": ck.source, "format": ck.format, "container": ck.container,
        "metadata": ck.metadata, "wrappers_removed": ck.unwrapped,
        "tensors": tensor_table(ck.weights), "totals": totals(ck.weights),
        "ema": totals(ck.ema) if ck.ema is not None else None, "notes": ck.notes,
    }
    if optimizer:
        info["optimizer"] = optimizer_summary(ck.optimizer)
    if model:
        info["load_report"] = _report_against(ck, model)
    return info


def tensor_table(sd: Mapping[str, Tensor]) -> list[dict[str, Any]]:
    """One row per tensor: name, shape, dtype, numel.

    >>> import torch
    >>> from finetune.weights.tools import tensor_table
    >>> tensor_table({"fc.weight": torch.zeros(2, 3, dtype=torch.float16)})
    [{'name': 'fc.weight', 'shape': [2, 3], 'dtype': 'float16', 'numel': 6}]
    """
    return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "numel": v.numel()}
            for k, v in sd.items()]


def totals(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Tensor count, element count and size in MB (10^6 bytes).

    >>> totals({"a": torch.zeros(250_000)})
    {'tensors': 1, 'numel': 250000, 'mb': 1.0}
    """
    numel = sum(v.numel() for v in sd.values())
    size = sum(tensor_bytes(v) for v in sd.values())
    return {"tensors": len(sd), "numel": numel, "mb": round(size / 1e6, 3)}


def tensor_bytes(t: Tensor) -> int:
    """The bytes that ``t``'s own values take: its elements, not the storage it may be a view of;
    for a sparse tensor, its stored values and indices (not the dense size).

    >>> big = torch.zeros(1000, 1000)
    >>> tensor_bytes(big[:2]), tensor_bytes(torch.eye(1000).to_sparse())
    (8000, 20000)
    """
    if t.layout == torch.sparse_coo:
        return tensor_bytes(_stored_values(t)) + tensor_bytes(t._indices())
    if t.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
        compressed, plain = ((t.crow_indices(), t.col_indices()) if t.layout in (torch.sparse_csr, torch.sparse_bsr)
                             else (t.ccol_indices(), t.row_indices()))
        return tensor_bytes(t.values()) + tensor_bytes(compressed) + tensor_bytes(plain)
    return t.numel() * t.element_size()


def optimizer_summary(opt: Any) -> dict[str, Any] | None:
    """Type-free summary of an optimizer state dict (or a list of them, as Lightning keeps).

    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(3)); o = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    >>> p.grad = torch.ones(3); o.step()
    >>> s = optimizer_summary(o.state_dict()); s["param_groups"][0]["lr"], s["state_keys"]
    (0.1, ['momentum_buffer'])
    """
    if opt is None:
        return None
    if isinstance(opt, list | tuple):
        return {"optimizers": [optimizer_summary(o) for o in opt]}
    if not isinstance(opt, Mapping) or "state" not in opt:
        return {"summary": str(type(opt).__name__)}
    state = opt.get("state") or {}
    values = state.values() if isinstance(state, Mapping) else state
    keys: set[str] = set()
    numel = nbytes = 0
    for entry in values:
        if isinstance(entry, Mapping):
            for k, v in entry.items():
                keys.add(str(k))
                if isinstance(v, Tensor):
                    numel += v.numel()
                    nbytes += v.numel() * v.element_size()
    groups = []
    for g in opt.get("param_groups") or opt.get("hypers") or opt.get("groups") or []:
        if isinstance(g, Mapping):
            if isinstance(g.get("hparams"), Mapping):  # finetune's own: {"name", "params": [names], "hparams"}
                g = {"name": g.get("name"), **g["hparams"], "params": g.get("params") or []}
            row = {k: jsonable(v) for k, v in g.items() if k != "params"}
            row = {k: v for k, v in row.items() if isinstance(v, bool | int | float | str | type(None) | list)}
            if "params" in g:  # fastai's hypers have none
                row["params"] = len(g["params"])
            groups.append(row)
    kind = {"optimizer": opt["optimizer"]} if isinstance(opt.get("optimizer"), str) else {}
    return {**kind, "param_groups": groups, "states": len(state), "state_keys": sorted(keys),
            "state_numel": numel, "state_mb": round(nbytes / 1e6, 3)}


def _report_against(ck: Checkpoint, arch: str) -> dict[str, Any]:
    from finetune.weights.load import load_weights

    model = _build_model(arch, ck)
    try:
        report = load_weights(model, ck.weights).to_dict()
    except WeightsError as e:
        return {"ok": False, "error": str(e).replace("<state dict>", ck.source, 1)}
    return {**report, "source": ck.source}


def _build_model(arch: str, ck: Checkpoint) -> torch.nn.Module:
    """An untrained model of ``arch`` (timm:NAME or torchvision), sized from the file's classifier:
    the rows of the file's tensor named as the model's head weight (a safetensors file keeps its
    tensors sorted by name, so the last 2-d weight of the file is not necessarily the head)."""
    model = _new_model(arch, None)
    wanted = _num_classes(ck, model)
    if wanted is None or wanted == _head_rows(model):
        return model
    return _new_model(arch, wanted)


def _new_model(arch: str, num_classes: int | None) -> torch.nn.Module:
    if arch.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise WeightsError(f"'{arch}' needs timm: pip install timm") from None
        if not timm.is_model(arch[5:]):
            from finetune.models import _unknown

            raise WeightsError(str(_unknown(arch[5:], timm.list_models(), "timm")))
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(arch[5:], pretrained=False, **kwargs)
    import torchvision

    try:
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    except ValueError as e:
        raise WeightsError(f"unknown architecture '{arch}': {e}") from None


def _head_weight(model: torch.nn.Module) -> str | None:
    try:
        from finetune.models import head_names

        head = head_names(model)[0]
    except Exception:  # noqa: BLE001 - no recognisable head: size the model from the file's last weight
        return None
    return f"{head}.weight"


def _head_rows(model: torch.nn.Module) -> int | None:
    name = _head_weight(model)
    t = model.state_dict().get(name) if name else None
    return int(t.shape[0]) if t is not None and t.dim() >= 2 else None


def _num_classes(ck: Checkpoint, model: torch.nn.Module | None = None) -> int | None:
    """The number of classes of the file's classifier: its tensor named as ``model``'s head weight
    (also under a prefix, ``timm_model.fc.weight``; a transformers file's ``classifier.1.weight`` as
    the ``fc.weight`` it loads into), else the last 2-d weight of the file. A transformers file whose
    classifier has no place in the model (``Dinov2ForImageClassification``'s, on [CLS] and the patch mean
    side by side) has the rows of its ``classifier.weight``, one without a classifier (``Dinov2Model``) none."""
    name = _head_weight(model) if model is not None else None
    if model is not None:
        weights, transformers = from_transformers(ck.weights, model.state_dict())
        weights = from_open_clip(weights, model.state_dict())[0]  # (CLIP's visual.proj: the head it is loaded as)
        found = [v for k, v in weights.items() if name and (k == name or k.endswith("." + name)) and v.dim() >= 2]
        if found:
            return int(found[0].shape[0])
        if transformers:  # (its last 2-d weight is a block's: dinov2-small's mlp.fc2, 384 rows, is no head)
            kept = weights.get("classifier.weight")
            return int(kept.shape[0]) if kept is not None and kept.dim() == 2 else None
    last = [v for k, v in ck.weights.items() if k.endswith("weight") and v.dim() >= 2]
    return int(last[-1].shape[0]) if last else None


# --------------------------------------------------------------------------- convert
def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, ema: bool = False, half: bool = False,
            strip_prefix: str = "auto", trust: bool = False, overwrite: bool = True) -> Path:
    """Write the clean weights of any checkpoint as ``.safetensors`` or ``.pt`` (by ``dst``'s suffix).

    ``overwrite=False`` refuses a ``dst`` that exists (what ``finetune convert`` does without
    ``--force``: a checkpoint written over by mistake is lost). ``dst`` is never ``src`` itself.

    ``strip_prefix="auto"`` removes wrapper prefixes and, for Lightning files, the
    LightningModule attribute that holds the network (:func:`lightning_attribute`; the
    small buffers of its other attributes, such as a loss's class weights, are left out
    so that the file loads into the bare network); any other value is a literal
    prefix to strip (``"none"`` keeps the LightningModule attribute). Wrapper prefixes
    (``module.``, ``_orig_mod.``) are always removed, whatever ``strip_prefix`` says.

    The input settings the weights carry (a timm hub folder's ``pretrained_cfg``, a transformers
    folder's ``preprocessor_config.json``, a finetune checkpoint's: :func:`input_metadata`) go into a
    ``.safetensors`` file's metadata as a run's ``best.safetensors`` records them, so ``finetune train
    --pretrained DST`` takes its input as ``--pretrained SRC`` would; so does the architecture their
    ``config.json`` names (:func:`architecture_metadata`), for the refusal of another ``--model`` to name
    it; a ``.pt`` file holds the weights only (a warning says what input settings are left out).

    ``half`` stores float32 and float64 tensors as float16; tensors of 16 bits or fewer
    (bfloat16, float8) keep their dtype (bfloat16 to float16 would turn values beyond 65504
    into inf, and the file is no smaller), and so do integer, bool, complex and quantized
    ones (buffers such as ``num_batches_tracked`` and masks), and quantization scales (a
    ``scale`` next to a ``zero_point``: a quantized model's or a QAT observer's), which
    float16 would round (below 6e-5 to a few bits) and so move every dequantized value. A
    float32 tensor with finite values beyond float16's range is an error that names it, not a
    file of infs.

    Each tensor is written with its own values only: a view of a larger storage (a slice, a
    transposed weight) becomes a tensor of its own, so the file is not the size of the
    storage; tied weights (one tensor under two names) are written twice to ``.safetensors``,
    which refuses shared memory, and once to ``.pt``. Sparse and quantized tensors are
    written to ``.pt`` as they are; ``.safetensors`` cannot hold them: an error names the
    tensor.

    >>> import torch, tempfile, os
    >>> d = tempfile.mkdtemp(); torch.save({"state_dict": {"module.w": torch.ones(2)}, "best_acc1": 1}, f"{d}/a.pt")
    >>> out = convert(f"{d}/a.pt", f"{d}/b.safetensors", half=True)
    >>> from safetensors.torch import load_file; load_file(out)["w"].dtype
    torch.float16
    """
    dst = Path(dst).expanduser()  # ('~/x.safetensors' from Python: the shell expands it only on a command line)
    if dst.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise WeightsError(f"{dst}: the output name must end in .safetensors, .pt, .pth or .bin")
    if dst.exists() and Path(src).expanduser().exists() and os.path.samefile(Path(src).expanduser(), dst):
        raise WeightsError(f"{dst} is the file being converted: give another output name (the original is kept)")
    if not overwrite and os.path.lexists(dst):
        raise WeightsError(f"'{dst}' already exists: give another dst, or overwrite=True (--force) to replace it")
    ck = read_checkpoint(src, trust=trust)
    if ema and ck.ema is None:
        raise WeightsError(f"{ck.source}: ema=True (--ema) given but the file has no EMA weights")
    for note in ck.notes:  # what the file holds that is not written (a second model of an accelerate folder)
        if note.startswith("read the first model only"):
            warnings.warn(f"{ck.source}: {note} (not written to {dst})", stacklevel=2)
    sd = dict(ck.ema if ema and ck.ema is not None else ck.weights)
    sd = _strip(sd, strip_prefix, ck)
    if half:
        kept = quantization_scales(sd)
        sd = {k: v if k in kept else half_precision(k, v) for k, v in sd.items()}
    sd = {k: _plain(v) for k, v in sd.items()}
    if dst.suffix == ".safetensors":
        _check_safetensors_can_hold(sd, ck.source)
    settings = input_metadata(src)
    if dst.suffix == ".safetensors":  # (what the weights are, for a refusal of another --model to name)
        settings.update(architecture_metadata(src))
    if settings and dst.suffix != ".safetensors":
        shown = ", ".join(f"{k} {v}" for k, v in settings.items())
        warnings.warn(f"{ck.source}: its input settings ({shown}) are not written to {dst}, which holds the weights "
                      "only: convert to .safetensors to keep them", stacklevel=2)
    dst.parent.mkdir(parents=True, exist_ok=True)
    from finetune.checkpoint import _write_atomic, write_safetensors

    try:  # all or nothing: a full disk leaves neither a partial dst nor a temporary file
        if dst.suffix == ".safetensors":
            write_safetensors(_unshare(sd), dst, {"format": "pt", "source_format": ck.format, **settings})
        else:
            _write_atomic(dst, lambda w: torch.save(_compact(sd), w))
    except OSError as e:
        raise WeightsError(f"cannot write '{dst}': {describe_os_error(OSError(e.errno, e.strerror))}") from e
    return dst


def input_metadata(src: str | os.PathLike[str]) -> dict[str, str]:
    """The input settings the weights at ``src`` were made for, as :func:`finetune.models.local_pretrained_cfg`
    finds them for ``--pretrained SRC`` (a timm hub folder's ``pretrained_cfg``, a transformers folder's
    ``preprocessor_config.json``, a finetune checkpoint's own), in the form of a run's ``best.safetensors``
    metadata: ``img_size`` and the JSON of :data:`finetune.checkpoint.DEPLOYMENT_KEYS`; {} when they name none.

    >>> import json, pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "pretrained_cfg": {
    ...     "input_size": [3, 160, 160], "crop_pct": 0.95, "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5]}}))
    >>> input_metadata(folder)
    {'img_size': '160', 'mean': '[0.5, 0.5, 0.5]', 'crop_pct': '0.95', 'interpolation': '"bicubic"'}
    """
    from finetune.checkpoint import DEPLOYMENT_KEYS, settings_metadata
    from finetune.models import local_pretrained_cfg

    cfg = local_pretrained_cfg(str(Path(src).expanduser()))
    if cfg is None:
        return {}
    size = getattr(cfg, "input_size", None)
    square = isinstance(size, list | tuple) and len(size) == 3 and size[-1] == size[-2] and isinstance(size[-1], int)
    return settings_metadata(size[-1] if square else None, {k: jsonable(getattr(cfg, k, None)) for k in DEPLOYMENT_KEYS})


def architecture_metadata(src: str | os.PathLike[str]) -> dict[str, str]:
    """The architecture the ``config.json`` of the weights at ``src`` names (:func:`finetune.models.weights_architecture`;
    for a file converted before, what it records), as ``convert`` writes it into a ``.safetensors`` file's metadata:
    ``architecture`` and ``architecture_model`` (the ``--model`` that builds it, where that is plain); {} when none.

    >>> import json, pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "pretrained_cfg": {}}))
    >>> architecture_metadata(folder)
    {'architecture': 'timm architecture resnet18', 'architecture_model': 'timm:resnet18'}
    """
    from finetune.models import converted_architecture, weights_architecture

    known = converted_architecture(str(src)) or weights_architecture(str(src))
    if known is None:
        return {}
    said, model = known
    return {"architecture": said, **({"architecture_model": model} if model else {})}


def _strip(sd: StateDict, prefix: str, ck: Checkpoint) -> StateDict:
    if prefix in ("none", ""):
        return sd
    if prefix == "auto":
        attr = lightning_attribute(sd) if "PyTorch Lightning" in ck.format else None
        if attr is None:
            return sd
        p = attr + "."
        return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    p = prefix if prefix.endswith(".") else prefix + "."
    if p in ck.unwrapped and not any(k.startswith(p) for k in sd):
        return sd  # a wrapper prefix (module., _orig_mod.): the reader removed it already
    if not any(k.startswith(p) for k in sd):
        raise WeightsError(f"{ck.source}: no key starts with '{p}' (keys look like '{next(iter(sd), '')}')")
    both = [k for k in sd if k.startswith(p) and k[len(p):] in sd]  # two tensors for one name: one would be lost
    if both:
        raise WeightsError(f"{ck.source}: removing '{p}' from '{both[0]}' gives '{both[0][len(p):]}', a key the file "
                           f"also has ({len(both)} such name{'s' if len(both) > 1 else ''}): one of the two tensors "
                           "would be lost; give the prefix of the weights you want with nothing else under that name")
    return {(k[len(p):] if k.startswith(p) else k): v for k, v in sd.items()}


def lightning_attribute(sd: Mapping[str, Tensor]) -> str | None:
    """The LightningModule attribute that holds the network, or None when that is not clear.

    It is the only attribute when there is one; otherwise the only one with weight
    matrices, when the others hold 1-D tensors that are no layer's (a loss's class
    weights, metric states: no ``bias`` or running statistics), which a bare network has
    no place for. Two attributes with weights (``backbone`` and ``head``), or layers
    defined on the LightningModule itself (``fc`` and ``bn``), give None: the names stay.

    >>> import torch
    >>> lightning_attribute({"model.fc.weight": torch.ones(3, 4), "criterion.weight": torch.ones(3)})
    'model'
    >>> print(lightning_attribute({"backbone.conv.weight": torch.ones(3, 4), "head.weight": torch.ones(2, 3)}))
    None
    >>> print(lightning_attribute({"fc.weight": torch.ones(3, 4), "bn.weight": torch.ones(3), "bn.bias": torch.ones(3)}))
    None
    """
    if not sd or not all("." in k for k in sd):
        return None
    heavy: dict[str, bool] = {}
    layer_like: dict[str, bool] = {}
    for k, v in sd.items():
        attr = k.split(".", 1)[0]
        heavy[attr] = heavy.get(attr, False) or v.dim() >= 2
        layer_like[attr] = layer_like.get(attr, False) or k.endswith((".bias", ".running_mean", ".running_var"))
    if len(heavy) == 1:
        return next(iter(heavy))
    with_weights = [a for a, h in heavy.items() if h]
    if len(with_weights) != 1 or any(layer_like[a] for a in heavy if a != with_weights[0]):
        return None
    return with_weights[0]


def quantization_scales(names: Iterable[str]) -> set[str]:
    """The names of quantization scales among ``names``: a ``scale`` that has a ``zero_point``
    beside it (quantized modules, QuantStubs, fake-quant observers).

    >>> sorted(quantization_scales(["fc.scale", "fc.zero_point", "norm.scale", "q.scale", "q.zero_point"]))
    ['fc.scale', 'q.scale']
    """
    names = set(names)
    return {n for n in names if n.rpartition(".")[2] == "scale" and n[: -len("scale")] + "zero_point" in names}


#: dtypes that ``convert(half=True)`` stores as float16
HALVED = (torch.float32, torch.float64)


def half_precision(name: str, t: Tensor) -> Tensor:
    """``t`` as float16 when it is float32 or float64 (see :func:`convert`), else as it is.

    >>> half_precision("w", torch.ones(2)).dtype, half_precision("n", torch.tensor(3)).dtype
    (torch.float16, torch.int64)
    >>> half_precision("b", torch.ones(2, dtype=torch.bfloat16)).dtype
    torch.bfloat16
    >>> half_precision("big", torch.tensor([1.0, 1e6]))
    Traceback (most recent call last):
    finetune.errors.WeightsError: 'big' has values up to 1e+06, beyond float16's range (65504): convert without --half (half=False)
    """
    if t.dtype not in HALVED:
        return t
    values = _stored_values(t)
    finite = values[torch.isfinite(values)].abs()
    largest = float(finite.max()) if finite.numel() else 0.0
    if largest > torch.finfo(torch.float16).max:
        raise WeightsError(f"'{name}' has values up to {largest:.3g}, beyond float16's range (65504): "
                           "convert without --half (half=False)")
    return t.half()


def _stored_values(t: Tensor) -> Tensor:
    """The values a tensor stores: itself, or a sparse tensor's non-zero values."""
    if t.layout == torch.sparse_coo:
        return t._values()
    return t.values() if t.layout != torch.strided else t


def _plain(t: Tensor) -> Tensor:
    """A detached CPU tensor, contiguous where its layout has strides (sparse ones have none)."""
    t = t.detach().cpu()
    return t.contiguous() if t.layout == torch.strided else t


def _check_safetensors_can_hold(sd: StateDict, source: str) -> None:
    for k, v in sd.items():
        if v.layout != torch.strided:
            kind = str(v.layout).removeprefix("torch.").replace("_", " ")
            raise WeightsError(f"{source}: '{k}' is a {kind} tensor, which .safetensors cannot store: "
                               "write a .pt file instead")
        if v.is_quantized:
            raise WeightsError(f"{source}: '{k}' is a quantized tensor ({str(v.dtype).removeprefix('torch.')}), "
                               "which .safetensors cannot store: write a .pt file instead")


def _compact(sd: StateDict) -> StateDict:
    """Copies of the tensors that are views of a larger storage, so that ``torch.save`` writes
    their values and not the whole storage; tensors that are the whole storage (tied weights
    too) stay shared."""
    return {k: v.clone() if v.layout == torch.strided and not v.is_quantized and v.numel()
            and v.untyped_storage().nbytes() != v.numel() * v.element_size() else v for k, v in sd.items()}


def _unshare(sd: StateDict) -> StateDict:
    """Copies for tensors that share memory (safetensors refuses shared storage)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in sd.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        if v.numel() and (key in seen or v.untyped_storage().nbytes() != v.numel() * v.element_size()):
            v = v.clone()
        seen.add(key)
        out[k] = v
    return out


def format_inspect(info: Mapping[str, Any], *, max_rows: int | None = None) -> str:
    """The text ``finetune inspect`` prints for :func:`inspect_checkpoint`'s result.

    >>> import torch
    >>> from finetune.weights import format_inspect, inspect_checkpoint
    >>> info = inspect_checkpoint({"state_dict": {"module.fc.weight": torch.zeros(2, 3),
    ...                                           "module.fc.bias": torch.zeros(2)}, "epoch": 3})
    >>> print(format_inspect(info, max_rows=1))
    file      <state dict>
    format    state dict under 'state_dict' (in memory)
    wrappers  removed 'module.'
    metadata
      epoch  3
    tensors   2 tensors, 8 values, 0.00 MB
      fc.weight  (2, 3)  float32              6
      … 1 more
    """
    lines = [f"file      {info['source']}", f"format    {info['format']} ({info['container']})"]
    if info.get("wrappers_removed"):
        lines.append("wrappers  removed " + ", ".join(f"'{w}'" for w in info["wrappers_removed"]))
    meta = _flatten(info.get("metadata") or {})
    if meta:
        lines.append("metadata")
        width = min(max(len(k) for k in meta), 32)
        lines += [f"  {k:<{width}}  {_short(v)}" for k, v in meta.items()]
    t = info["totals"]
    lines.append(f"tensors   {t['tensors']} tensors, {t['numel']:,} values, {t['mb']:.2f} MB")
    rows = info["tensors"] if max_rows is None else info["tensors"][:max_rows]
    if rows:
        nw = max(len(r["name"]) for r in rows)
        sw = max(len(_shape(r["shape"])) for r in rows)
        lines += [f"  {r['name']:<{nw}}  {_shape(r['shape']):<{sw}}  {r['dtype']:<9} {r['numel']:>12,}" for r in rows]
        if len(rows) < len(info["tensors"]):
            lines.append(f"  … {len(info['tensors']) - len(rows)} more")
    if info.get("ema"):
        e = info["ema"]
        lines.append(f"ema       {e['tensors']} tensors, {e['numel']:,} values, {e['mb']:.2f} MB "
                     "(convert --ema / load_weights(ema=True) uses them)")
    if "optimizer" in info:
        lines.append("optimizer " + ("none in the file" if info["optimizer"] is None else ""))
        if info["optimizer"] is not None:
            lines += [f"  {k}: {_short(v)}" for k, v in _flatten(info["optimizer"]).items()]
    lines += [f"note      {n}" for n in info.get("notes") or []]
    if "load_report" in info:
        r = info["load_report"]
        if "error" in r:
            lines.append(f"load report: {r['error']}")
        else:
            lines.append(f"load report ({r['mapping']}): {'ok' if r['ok'] else 'INCOMPLETE'}")
            lines.append(f"  loaded {len(r['loaded'])}, missing {len(r['missing'])}, unexpected {len(r['unexpected'])}, "
                         f"mismatched {len(r['mismatched'])}")
            for kind in ("missing", "unexpected"):
                if r[kind]:
                    lines.append(f"  {kind}: " + _short(", ".join(r[kind])))
            for m in r["mismatched"]:
                lines.append(f"  mismatched: {m['name']} file {_shape(m['file_shape'])}, model {_shape(m['model_shape'])}")
            lines += [f"  note: {n}" for n in r.get("notes") or []]
    return "\n".join(lines)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v and len(prefix) < 40:
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v) and len(v) <= 16:
            for i, x in enumerate(v):
                out.update(_flatten(x, f"{prefix}{k}[{i}]."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(v: Any, width: int = 100) -> str:
    text = str(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def _shape(shape: list[int]) -> str:
    return str(tuple(shape))

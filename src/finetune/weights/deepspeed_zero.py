"""DeepSpeed checkpoints (``engine.save_checkpoint``, Lightning's DeepSpeedStrategy, accelerate with
DeepSpeed): the weights consolidated from every rank's files, fp32 master weights first.

A DeepSpeed checkpoint is a folder holding ``latest`` (the tag's name) and the tag folder
(``global_step300/``; Lightning's is ``checkpoint/``) with

* ``mp_rank_00_model_states.pt`` (ZeRO stage 0 to 2) or ``zero_pp_rank_R_mp_rank_00_model_states.pt``
  (stage 3, one per rank): the module's state dict under ``module`` (with stage 3, empty
  placeholders for the parameters), ``buffer_names``, ``param_shapes``, ``global_steps``,
  ``ds_config``, ``ds_version`` and whatever ``client_state`` the caller saved;
* ``zero_pp_rank_R_mp_rank_00_optim_states.pt`` (``bf16_zero_pp_...`` with bf16), one per rank
  from stage 1 on: that rank's part of the fp32 master weights, flat, per parameter group:
  ``single_partition_of_fp32_groups`` (stage 1 and 2: the group's flat vector cut in
  consecutive pieces) or ``fp32_flat_groups`` (stage 3: every parameter cut in ``ceil(n / ranks)``
  pieces, rank R holding piece R of each).

The layout is the one DeepSpeed's ``zero_to_fp32.py`` reads; this is finetune's own reader of it.
Every file is unpickled safely (DeepSpeed's enums, loss scalers and records become inert
stand-ins), so neither DeepSpeed nor ``trust=True`` is needed. Buffers come from the model states
(upcast to fp32, as ``zero_to_fp32.py`` does); with fp16/bf16 training the module's 16-bit weights
are replaced by the fp32 master weights, which are the truth.

>>> import torch
>>> from finetune.weights.deepspeed_zero import zero3_gather
>>> parts = [torch.tensor([0., 1., 4.]), torch.tensor([2., 3., 0.])]   # 2 ranks: 'w' (4 values), 'b' (1 value)
>>> {k: v.tolist() for k, v in zero3_gather(parts, {"w": torch.Size([2, 2]), "b": torch.Size([1])}).items()}
{'w': [[0.0, 1.0], [2.0, 3.0]], 'b': [4.0]}
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from finetune.errors import CheckpointError

StateDict = dict[str, Tensor]

#: keys of a model-states file that are DeepSpeed's bookkeeping, not metadata worth showing
INTERNAL_KEYS = ("module", "buffer_names", "param_shapes", "frozen_param_shapes", "frozen_param_fragments",
                 "shared_params", "data_sampler", "random_ltd", "sparse_tensor_module_names", "optimizer",
                 "lr_scheduler", "checkpoint_parallel_dimensions", "ds_config", "ds_version")
#: DeepSpeed's own scalars, shown first
SCALAR_KEYS = ("global_steps", "global_samples", "skipped_steps", "dp_world_size", "mp_world_size", "ds_version")
OPTIM_RE = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
MODEL_RE = re.compile(r"^(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt$")


def is_model_states(obj: Any) -> bool:
    """Whether a loaded object is a DeepSpeed model-states dict (``mp_rank_00_model_states.pt``).

    >>> import torch
    >>> is_model_states({"module": {"w": torch.ones(1)}, "buffer_names": [], "ds_version": "0.16.0"})
    True
    >>> is_model_states({"module": {"w": torch.ones(1)}, "epoch": 3})
    False
    """
    return isinstance(obj, Mapping) and isinstance(obj.get("module"), Mapping) and "buffer_names" in obj \
        and ("ds_version" in obj or "param_shapes" in obj or "dp_world_size" in obj)


def is_optim_partition(obj: Any) -> bool:
    """Whether a loaded object is one rank's DeepSpeed optimizer partition (``*_optim_states.pt``).

    >>> is_optim_partition({"optimizer_state_dict": {"zero_stage": 2, "partition_count": [1]}, "ds_version": "0.16"})
    True
    """
    osd = obj.get("optimizer_state_dict") if isinstance(obj, Mapping) else None
    return isinstance(osd, Mapping) and "zero_stage" in osd and "partition_count" in osd


def find_tag_folder(path: Path) -> Path | None:
    """The folder holding a DeepSpeed checkpoint's ``*model_states.pt`` for ``path``: the top folder
    (through ``latest``, or its only tag folder), the tag folder itself; None when ``path`` is no
    DeepSpeed checkpoint folder.

    >>> import pathlib, tempfile
    >>> top = pathlib.Path(tempfile.mkdtemp()); (top / "global_step3").mkdir()
    >>> _ = (top / "global_step3" / "mp_rank_00_model_states.pt").write_bytes(b"")
    >>> _ = (top / "latest").write_text("global_step3")
    >>> find_tag_folder(top).name, find_tag_folder(top / "global_step3").name, find_tag_folder(top.parent / "nope")
    ('global_step3', 'global_step3', None)
    """
    if not path.is_dir():
        return None
    if _model_files(path):
        return path
    latest = path / "latest"
    if latest.is_file():
        try:
            tag = latest.read_text().strip()
        except (OSError, UnicodeDecodeError):
            tag = ""
        if tag and "/" not in tag and (path / tag).is_dir():
            return path / tag
        if tag and "/" not in tag and not tag.endswith((".pt", ".pth", ".bin", ".ckpt", ".safetensors")):
            raise CheckpointError(f"{path}: 'latest' names the DeepSpeed tag '{tag[:80]}', but there is no folder "
                                  f"{path / tag} (copy the whole checkpoint folder)")
    subs = [p for p in path.iterdir() if p.is_dir() and _model_files(p)]
    return subs[0] if len(subs) == 1 else None


def _model_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.name.endswith("model_states.pt") and p.is_file())
    except OSError:
        return []


def read_deepspeed(path: Path, *, trust: bool = False, loaded: Mapping[str, Any] | None = None,
                   source: str | None = None) -> Any:
    """A :class:`~finetune.weights.formats.Checkpoint` of a DeepSpeed checkpoint: ``path`` is the top
    folder, the tag folder or a model-states file (``loaded``: that file's object, already read).

    Stage 3 (and the fp32 master weights of stages 1 and 2) need every rank's
    ``*_optim_states.pt``: a missing one is an error that names it.

    >>> import pathlib, tempfile, torch
    >>> top = pathlib.Path(tempfile.mkdtemp()); tag = top / "global_step1"; tag.mkdir()
    >>> _ = (top / "latest").write_text("global_step1")
    >>> for r, piece in enumerate([torch.tensor([1., 2.]), torch.tensor([3., 0.])]):   # stage 3, 2 ranks
    ...     torch.save({"module": {"w": torch.empty(0)}, "buffer_names": [], "param_shapes": [{"w": torch.Size([3])}],
    ...                 "dp_world_size": 2, "global_steps": 1, "ds_version": "0.16.0"},
    ...                tag / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
    ...     torch.save({"optimizer_state_dict": {"zero_stage": 3, "partition_count": 2, "fp32_flat_groups": [piece]}},
    ...                tag / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    >>> ck = read_deepspeed(top)
    >>> ck.format, ck.container, ck.weights["w"].tolist(), ck.metadata["global_steps"]
    ('DeepSpeed (ZeRO stage 3)', "DeepSpeed checkpoint, tag 'global_step1', 2 ranks", [1.0, 2.0, 3.0], 1)
    >>> (tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    >>> read_deepspeed(top)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.CheckpointError: ...: DeepSpeed optimizer partition 'zero_pp_rank_1_mp_rank_00_optim_states.pt' is missing ...
    """
    from finetune.weights.formats import Checkpoint

    source = source or str(path)
    if path.is_file() and OPTIM_RE.match(path.name) and loaded is not None and not is_model_states(loaded):
        path, loaded = path.parent, None  # one rank's optimizer partition: read the whole checkpoint
    main_file = path if path.is_file() else None
    folder = path.parent if main_file is not None else find_tag_folder(path)
    if folder is None:
        raise CheckpointError(f"{source}: not a DeepSpeed checkpoint folder (no 'latest' and no *model_states.pt)")
    if main_file is None:
        main_file = _main_model_file(folder, source)
    states = dict(loaded) if loaded is not None else _load(main_file, trust)
    if not is_model_states(states):
        raise CheckpointError(f"{main_file}: not a DeepSpeed model-states file (no 'module' and 'buffer_names')")
    ck = Checkpoint(source, "", "", {})
    weights, stage, ranks = _consolidate(states, folder, main_file, trust, ck)
    ck.weights = weights
    _finish(ck, states, stage, ranks, folder)
    return ck


def from_model_states(states: Mapping[str, Any], *, source: str) -> Any:
    """A Checkpoint of a model-states dict alone (in memory: no partition files to read). Stage 3
    holds no weights there (empty placeholders): an error says to read the folder.

    >>> import torch
    >>> ck = from_model_states({"module": {"w": torch.ones(2)}, "buffer_names": [], "ds_version": "0.16",
    ...                         "global_steps": 7}, source="<state dict>")
    >>> ck.format, ck.metadata["global_steps"], ck.weights["w"].tolist()
    ('DeepSpeed (ZeRO stage 0)', 7, [1.0, 1.0])
    """
    from finetune.weights.formats import Checkpoint

    states = dict(states)
    ck = Checkpoint(source, "", "", {})
    stage = _config_stage(states)
    if stage == 3 or _has_placeholders(states):
        raise CheckpointError(f"{source}: a DeepSpeed ZeRO stage 3 model-states dict holds empty placeholders; "
                              "read the checkpoint folder, whose *_optim_states.pt files hold the weights")
    ck.weights = _module_weights(states, ck)
    _finish(ck, states, stage, int(states.get("dp_world_size") or 1), None)
    return ck


# --------------------------------------------------------------------------- files
def _main_model_file(folder: Path, source: str) -> Path:
    files = _model_files(folder)
    names = {p.name: p for p in files}
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if name in names:
            others = [n for n in names if (m := MODEL_RE.match(n)) and int(m.group(2)) > 0]
            if others:
                raise CheckpointError(f"{source}: a DeepSpeed checkpoint with tensor (model) parallelism "
                                      f"({others[0]}): not supported; consolidate it with DeepSpeed first")
            return names[name]
    if any(n.startswith("layer_") for n in names):
        raise CheckpointError(f"{source}: a DeepSpeed pipeline-parallel checkpoint (layer_*-model_states.pt): "
                              "not supported; consolidate it with DeepSpeed first")
    shown = ", ".join(sorted(names)[:4]) or "none"
    raise CheckpointError(f"{folder}: no mp_rank_00_model_states.pt or zero_pp_rank_0_mp_rank_00_model_states.pt "
                          f"(found {shown})")


def _load(file: Path, trust: bool) -> Any:
    from finetune.weights.formats import _torch_file, sniff

    kind = sniff(file)
    if kind not in ("torch zip", "pickle"):
        raise CheckpointError(f"{file}: {kind}")
    return _torch_file(file, kind=kind, trust=trust)


def _optim_files(folder: Path) -> tuple[str, dict[int, Path]]:
    """(name prefix, rank -> file) of the mp_rank_00 optimizer partitions in ``folder``."""
    found: dict[str, dict[int, Path]] = {}
    for p in folder.iterdir():
        m = OPTIM_RE.match(p.name)
        if m and int(m.group(3)) == 0:
            found.setdefault(m.group(1) or "", {})[int(m.group(2))] = p
    if not found:
        return "", {}
    prefix = max(found, key=lambda k: len(found[k]))
    return prefix, found[prefix]


def _optim_name(prefix: str, rank: int) -> str:
    return f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


# --------------------------------------------------------------------------- consolidation
def _consolidate(states: dict[str, Any], folder: Path, main_file: Path, trust: bool,
                 ck: Any) -> tuple[StateDict, int, int]:
    """(weights, ZeRO stage, ranks) from the model states and, from stage 1 on, the partitions."""
    prefix, files = _optim_files(folder)
    config_stage = _config_stage(states)
    ranks = int(states.get("dp_world_size") or 1)
    if not files:
        if config_stage == 3 or _has_placeholders(states):
            raise CheckpointError(f"{folder}: DeepSpeed ZeRO stage 3 checkpoint without its optimizer partitions: "
                                  f"'{_optim_name(prefix, 0)}' is missing (the weights are in every rank's "
                                  "*_optim_states.pt; copy all of them)")
        weights = _module_weights(states, ck)
        if config_stage:
            dtype = _param_dtype(states)
            ck.notes.append("no *_optim_states.pt beside the model states: the module's "
                            f"{str(dtype).removeprefix('torch.')} weights are used, not the fp32 master weights")
        return weights, config_stage, ranks
    if 0 not in files:
        raise CheckpointError(f"{folder}: DeepSpeed optimizer partition '{_optim_name(prefix, 0)}' is missing "
                              "(every rank saves its own *_optim_states.pt; copy all of them)")
    first = _partition(_load(files[0], trust), files[0])
    stage = _stage_of(first.get("zero_stage"), files[0])
    count = first.get("partition_count")
    count = max(count) if isinstance(count, list | tuple) and count else count
    ranks = int(count) if isinstance(count, int) else ranks
    missing = [r for r in range(ranks) if r not in files]
    if missing:
        raise CheckpointError(f"{folder}: DeepSpeed optimizer partition '{_optim_name(prefix, missing[0])}' is missing "
                              f"(ZeRO stage {stage} over {ranks} ranks: every rank's *_optim_states.pt is needed)")
    extra = sorted(r for r in files if r >= ranks)
    if extra:
        raise CheckpointError(f"{folder}: '{files[extra[0]].name}' is a partition of rank {extra[0]}, but the "
                              f"checkpoint was saved by {ranks} ranks (a stale file from another run?)")
    partitions = [first] + [_partition(_load(files[r], trust), files[r]) for r in range(1, ranks)]
    key = "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"
    groups = []
    for r, part in enumerate(partitions):
        flat = part.get(key)
        if not isinstance(flat, list | tuple) or not all(isinstance(t, Tensor) for t in flat):
            raise CheckpointError(f"{files[r]}: no '{key}' (a ZeRO stage {stage} optimizer partition holds it)")
        groups.append([t.reshape(-1) for t in flat])
    if len({len(g) for g in groups}) != 1:
        raise CheckpointError(f"{folder}: the optimizer partitions hold different numbers of parameter groups")
    shapes = states.get("param_shapes")
    if not isinstance(shapes, list | tuple) or not all(isinstance(s, Mapping) for s in shapes):
        raise CheckpointError(f"{main_file}: no 'param_shapes': cannot tell which values are which parameter")
    try:
        if stage == 3:
            params = zero3_gather([torch.cat(g) if len(g) != 1 else g[0] for g in groups],
                                  {k: v for s in shapes for k, v in s.items()}, source=str(folder))
        else:
            params = zero12_gather(groups, list(shapes), first.get("param_alignment_paddings"), source=str(folder))
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder}: DeepSpeed partitions do not fit the parameter shapes ({e})") from None
    ck.optimizer = first.get("base_optimizer_state") or first.get("optimizer_state_dict")
    frozen = _frozen(states, folder, stage, ranks, trust)
    dtype = _param_dtype(states)
    if dtype is not None and dtype != torch.float32:
        ck.notes.append(f"the fp32 master weights of the optimizer partitions are used (the module holds "
                        f"{str(dtype).removeprefix('torch.')} copies)")
    return _assemble(states, {**frozen, **params}), stage, ranks


def _partition(obj: Any, file: Path) -> dict[str, Any]:
    osd = obj.get("optimizer_state_dict") if isinstance(obj, Mapping) else None
    if not isinstance(osd, Mapping):
        raise CheckpointError(f"{file}: not a DeepSpeed optimizer partition (no 'optimizer_state_dict')")
    return dict(osd)


def _stage_of(value: Any, file: Path) -> int:
    value = getattr(value, "args", (value,))[0] if not isinstance(value, int) else value
    if isinstance(value, int) and 0 <= value <= 3:
        return int(value)
    raise CheckpointError(f"{file}: unknown ZeRO stage {value!r}")


def _config_stage(states: Mapping[str, Any]) -> int:
    config = states.get("ds_config")
    zero = config.get("zero_optimization") if isinstance(config, Mapping) else None
    stage = zero.get("stage", 0) if isinstance(zero, Mapping) else 0
    return int(stage) if isinstance(stage, int | str) and str(stage).isdigit() else 0


def _has_placeholders(states: Mapping[str, Any]) -> bool:
    buffers = set(states.get("buffer_names") or ())
    shapes = {k: v for s in states.get("param_shapes") or () if isinstance(s, Mapping) for k, v in s.items()}
    return any(isinstance(v, Tensor) and k not in buffers and k in shapes and v.numel() != math.prod(shapes[k])
               for k, v in states["module"].items())


def _param_dtype(states: Mapping[str, Any]) -> torch.dtype | None:
    buffers = set(states.get("buffer_names") or ())
    return next((v.dtype for k, v in states["module"].items()
                 if isinstance(v, Tensor) and k not in buffers and v.is_floating_point()), None)


def zero12_gather(groups: Sequence[Sequence[Tensor]], shapes: Sequence[Mapping[str, Any]],
                  paddings: Any = None, *, source: str = "partitions") -> StateDict:
    """Parameters from ZeRO stage 1/2 partitions: ``groups[rank][group]`` is that rank's consecutive
    piece of the group's flat fp32 vector; the group's parameters follow each other in it, in
    ``shapes[group]``'s order (each followed by its ``paddings[group][i]`` alignment values, when given).

    >>> import torch
    >>> ranks = [[torch.tensor([1., 2., 3.])], [torch.tensor([4., 5.])]]   # 2 ranks, 1 group: 5 values
    >>> sd = zero12_gather(ranks, [{"w": torch.Size([2, 2]), "b": torch.Size([1])}])
    >>> sd["w"].tolist(), sd["b"].tolist()
    ([[1.0, 2.0], [3.0, 4.0]], [5.0])
    """
    out: StateDict = {}
    for g, group_shapes in enumerate(shapes):
        flat = torch.cat([rank[g] for rank in groups])
        pads = paddings[g] if isinstance(paddings, list | tuple) and g < len(paddings) else None
        offset = 0
        for i, (name, shape) in enumerate(group_shapes.items()):
            n = math.prod(shape)
            if offset + n > flat.numel():
                raise ValueError(f"'{name}' {tuple(shape)} needs values {offset}..{offset + n} of group {g}, "
                                 f"which has {flat.numel()}")
            out[name] = flat[offset:offset + n].view(tuple(shape)).clone()
            offset += n + (int(pads[i]) if pads is not None and i < len(pads) else 0)
    return out


def zero3_gather(flat: Sequence[Tensor], shapes: Mapping[str, Any], *, source: str = "partitions") -> StateDict:
    """Parameters from ZeRO stage 3 partitions: ``flat[rank]`` is that rank's flat fp32 vector, in
    which every parameter (in ``shapes``' order) has a piece of ``ceil(numel / ranks)`` values; the
    pieces of all ranks, in rank order, are the parameter (its last piece padded).

    >>> import torch
    >>> zero3_gather([torch.tensor([1., 2.]), torch.tensor([3., 0.])], {"w": torch.Size([3])})["w"].tolist()
    [1.0, 2.0, 3.0]
    """
    ranks = len(flat)
    sizes = {t.numel() for t in flat}
    if len(sizes) != 1:
        raise ValueError(f"the ranks' partitions differ in size ({sorted(sizes)})")
    avail = sizes.pop()
    out: StateDict = {}
    offset = 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        piece = math.ceil(n / ranks)
        if offset + piece > avail:
            raise ValueError(f"'{name}' {tuple(shape)} needs values {offset}..{offset + piece} of each rank's "
                             f"partition, which has {avail}")
        out[name] = torch.cat([t[offset:offset + piece] for t in flat])[:n].view(tuple(shape)).clone()
        offset += piece
    return out


def _frozen(states: Mapping[str, Any], folder: Path, stage: int, ranks: int, trust: bool) -> StateDict:
    """Parameters that were not trained (``requires_grad=False``): whole in the model states
    (stage 1 and 2), one piece per rank's model states (stage 3)."""
    shapes = states.get("frozen_param_shapes") or {}
    if not shapes:
        return {}
    fragments = [states.get("frozen_param_fragments") or {}]
    if stage == 3:
        for r in range(1, ranks):
            file = folder / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"
            if not file.is_file():
                raise CheckpointError(f"{folder}: DeepSpeed model states '{file.name}' is missing (ZeRO stage 3 "
                                      f"keeps a piece of each frozen parameter in every rank's model states)")
            fragments.append(_load(file, trust).get("frozen_param_fragments") or {})
    out: StateDict = {}
    for name, shape in shapes.items():
        n = math.prod(shape)
        try:
            pieces = [f[name].reshape(-1) for f in fragments] if stage == 3 else [fragments[0][name].reshape(-1)]
        except KeyError:
            raise CheckpointError(f"{folder}: frozen parameter '{name}' has no stored values") from None
        out[name] = torch.cat(pieces)[:n].view(tuple(shape)).clone()
    return out


def _module_weights(states: Mapping[str, Any], ck: Any) -> StateDict:
    """Stage 0 to 2 without partitions: the module; with an FP16/BF16 optimizer's fp32 copies (stage 0,
    ``optimizer['fp32_groups']``), those for the parameters."""
    module = {k: v for k, v in states["module"].items() if isinstance(v, Tensor)}
    opt = states.get("optimizer")
    if isinstance(opt, Mapping):
        ck.optimizer = opt.get("optimizer_state_dict") or opt
    fp32 = opt.get("fp32_groups") if isinstance(opt, Mapping) else None
    if isinstance(fp32, list | tuple):
        flat = [t for g in fp32 for t in (g if isinstance(g, list | tuple) else [g]) if isinstance(t, Tensor)]
        buffers = set(states.get("buffer_names") or ())
        params = [k for k in module if k not in buffers]
        if len(flat) == len(params) and all(tuple(t.shape) == tuple(module[k].shape) for k, t in zip(params, flat, strict=True)):
            dtype = _param_dtype(states)
            if dtype is not None and dtype != torch.float32:
                ck.notes.append(f"the fp32 master weights of the FP16 optimizer are used (the module holds "
                                f"{str(dtype).removeprefix('torch.')} copies)")
            return _assemble(states, dict(zip(params, flat, strict=True)))
        ck.notes.append("the optimizer's fp32 copies do not line up with the module's parameters: "
                        "the module's weights are used")
    return _assemble(states, {k: v for k, v in module.items() if k not in set(states.get("buffer_names") or ())})


def _assemble(states: Mapping[str, Any], params: StateDict) -> StateDict:
    """Buffers (upcast to fp32) and parameters in the module's order; shared parameters filled in."""
    module = states["module"]
    buffers = {k: (v.float() if v.is_floating_point() else v) for k in states.get("buffer_names") or ()
               if isinstance(v := module.get(k), Tensor)}
    out = {**buffers, **params}
    for name, src in (states.get("shared_params") or {}).items():
        if src in out:
            out[name] = out[src]
    order = [k for k in module if k in out] + [k for k in out if k not in module]
    return {k: out[k].detach() for k in order}


# --------------------------------------------------------------------------- the rest
def _finish(ck: Any, states: dict[str, Any], stage: int, ranks: int, folder: Path | None) -> None:
    from finetune.weights.formats import (
        EMA_KEYS,
        _lightning_ema,
        _maybe,
        _metadata,
        _unwrap,
        split_ema_attribute,
    )

    lightning = "pytorch-lightning_version" in states
    ck.format = f"DeepSpeed (ZeRO stage {stage})" + (", PyTorch Lightning DeepSpeedStrategy" if lightning else "")
    where = f", tag '{folder.name}'" if folder is not None else ""
    ck.container = f"DeepSpeed checkpoint{where}, {ranks} rank{'s' if ranks != 1 else ''}" if folder is not None \
        else "in memory"
    ck.weights, removed = _strip_forward_module(ck.weights)
    if lightning:
        ema = _lightning_ema(states)
        if ema is None:
            ck.weights, ema = split_ema_attribute(ck.weights)
    else:
        ema = next((e for k in EMA_KEYS if (e := _maybe(states.get(k))) is not None), None)
    ck.ema = ema
    meta: dict[str, Any] = {k: states[k] for k in SCALAR_KEYS if k in states}
    meta["zero_stage"] = stage
    config = states.get("ds_config")
    if isinstance(config, Mapping):
        meta["precision"] = next((p for p in ("bf16", "fp16") if isinstance(config.get(p), Mapping)
                                  and config[p].get("enabled")), "fp32")
    meta.update(_metadata({k: v for k, v in states.items() if k not in INTERNAL_KEYS and k not in meta}))
    if isinstance(config, Mapping):
        meta["ds_config"] = _metadata({"c": config}).get("c", {})
    ck.metadata = meta
    _unwrap(ck)
    ck.unwrapped = removed + [u for u in ck.unwrapped if u not in removed]


def _strip_forward_module(sd: StateDict) -> tuple[StateDict, list[str]]:
    """Lightning 2's ``_forward_module.`` wrapper prefix, when every key has it.

    >>> import torch
    >>> _strip_forward_module({"_forward_module.model.w": torch.ones(1)})[0].keys()
    dict_keys(['model.w'])
    """
    p = "_forward_module."
    if sd and all(k.startswith(p) for k in sd):
        return {k[len(p):]: v for k, v in sd.items()}, [p]
    return sd, []


__all__ = ["find_tag_folder", "from_model_states", "is_model_states", "is_optim_partition", "read_deepspeed",
           "zero12_gather",
           "zero3_gather"]

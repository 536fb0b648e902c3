"""Checkpoints that survive ``kill -9`` at any instant, load on any device, into any wrapper.

A :class:`Checkpointer` writes numbered checkpoints into ``RUN/checkpoints/``::

    ckpt-e0003-s00001234.pt     the state (torch.save zip; loads with weights_only=True)
    ckpt-e0003-s00001234.json   its manifest: size + sha256 of the zip directory, written once the .pt is durable
    last.pt                     the newest checkpoint (hard link, or an atomic copy)
    best.pt                     the best one by ``best_metric`` (hard link, or an atomic copy)

Every file appears under its final name only complete (temporary file in the same
directory, flush, fsync, ``os.replace``, fsync of the directory); a checkpoint counts
only once its manifest exists and matches (size, sha256 of the file's last MiB, and the
CRC32 that torch.save stores for every record), so :meth:`Checkpointer.latest` skips a
truncated or corrupt newest file and returns the previous good one. Old checkpoints are
pruned only after the new one is durable, and the best one is never pruned.

Model weights are stored with clean keys (no ``module.`` / ``_orig_mod.``) as CPU
tensors; optimizer state is stored per parameter *name*, so it can be restored after
the trainable set or the parameter groups changed.

Use in your own PyTorch loop (kill it at any moment and run it again: it resumes)::

    import torch
    from torch import nn
    from finetune.checkpoint import Checkpointer, capture_rng_state, restore, restore_rng_state

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = [(torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))) for _ in range(5)]
    with Checkpointer("runs/example", keep_last=2) as ckpt:
        start = 0
        if (path := ckpt.latest()) is not None:          # resume if there is something to resume
            state = ckpt.load(path)
            restore(state, model=model, optimizer=optimizer)
            restore_rng_state(state["rng"])
            start = state["epoch"] + 1
        for epoch in range(start, 3):
            for x, y in data:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
            top1 = (model(x).argmax(1) == y).float().mean().item()
            ckpt.save({"model": model, "optimizer": optimizer, "epoch": epoch,
                       "step": (epoch + 1) * len(data), "rng": capture_rng_state()},
                      metrics={"val_top1": top1})
    print(ckpt.latest().name, ckpt.best().name)

Only one process may write into a run directory at a time.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import pickle
import random
import re
import secrets
import shlex
import shutil
import signal
import stat
import sys
import threading
import time
import warnings
import weakref
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from finetune.errors import CheckpointError, ConfigError
from finetune.processes import pid_alive

FORMAT = "finetune-checkpoint"
FORMAT_VERSION = 1
MANIFEST_FORMAT = "finetune-checkpoint-manifest"
OPTIMIZER_FORMAT = "finetune-optimizer-by-name"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"

_NUMBERED = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")
_MANIFEST = re.compile(r"^ckpt-e(\d+)-s(\d+)\.json$")
_TEMP = re.compile(r"^\..+\.tmp\.(\d+)\.[0-9a-f]{8}$")
_CHUNK = 1 << 20
_TAIL = 1 << 20


class CheckpointerArgumentError(ConfigError, ValueError):
    """An invalid argument of :class:`Checkpointer` (a :class:`ConfigError` and a ``ValueError``).

    >>> import tempfile
    >>> from finetune.checkpoint import Checkpointer
    >>> Checkpointer(tempfile.mkdtemp(), keep_last=0)
    Traceback (most recent call last):
    finetune.checkpoint.CheckpointerArgumentError: keep_last must be an integer >= 1 (or None: keep every checkpoint), got 0
    >>> try:
    ...     Checkpointer(tempfile.mkdtemp(), mode="best")
    ... except ValueError as e:
    ...     print(e)
    mode must be 'max' or 'min', got 'best'
    """


class CheckpointWriteError(CheckpointError, RuntimeError):
    """torch.save failed while writing a checkpoint (a :class:`CheckpointError`, and the
    ``RuntimeError`` that torch raises for it). A failed write of the file system (a full disk, no
    permission) is a plain :class:`CheckpointError`. Either way the earlier checkpoints are intact.

    >>> from finetune import CheckpointError
    >>> from finetune.checkpoint import CheckpointWriteError
    >>> issubclass(CheckpointWriteError, CheckpointError), issubclass(CheckpointWriteError, RuntimeError)
    (True, True)
    """


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped or could not be cleaned up (training goes on).

    >>> import tempfile, warnings, torch
    >>> from finetune.checkpoint import Checkpointer, CheckpointWarning
    >>> ckpt = Checkpointer(tempfile.mkdtemp())
    >>> path = ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": 1})
    >>> _ = path.write_bytes(path.read_bytes()[:100])                 # truncate it
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     ckpt.latest()
    >>> caught[0].category is CheckpointWarning, "truncated" in str(caught[0].message)
    (True, True)
    """


# --------------------------------------------------------------------------- model wrappers
def _wrapped_attr(module: nn.Module) -> str | None:
    """The attribute under which ``module`` wraps another module, or None if it is no wrapper.

    ``torch.compile`` wraps in ``_orig_mod``; DataParallel, DistributedDataParallel and
    similar wrappers hold exactly one child named ``module`` and no tensors of their own.
    """
    children = module._modules
    if children.get("_orig_mod") is not None:
        return "_orig_mod"
    if list(children) == ["module"] and children["module"] is not None \
            and not module._parameters and not module._buffers:
        return "module"
    return None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DDP / ``torch.compile`` wrappers, any nesting.

    >>> from torch import nn
    >>> from finetune.checkpoint import unwrap_model
    >>> net = nn.Linear(2, 2)
    >>> unwrap_model(nn.DataParallel(nn.DataParallel(net), device_ids=[])) is net
    True
    """
    while (attr := _wrapped_attr(model)) is not None:
        model = model._modules[attr]  # type: ignore[assignment]
    return model


def _key_wrapper_attr(module: nn.Module) -> str | None:
    """:func:`_wrapped_attr`, and also ``module`` of an averaging wrapper that keeps counters beside the
    model it holds (``AveragedModel``'s ``n_averaged``, EMA classes): its weights are the model's."""
    attr = _wrapped_attr(module)
    if attr is None and list(module._modules) == ["module"] and module._modules["module"] is not None \
            and not module._parameters:
        return "module"
    return attr


def _clean_key(root: nn.Module, key: str) -> str:
    """``key`` of ``root.state_dict()`` without the segments that name a wrapper's inner module.

    >>> from torch.optim.swa_utils import AveragedModel
    >>> sorted(_clean_key(m, k) for m in [AveragedModel(nn.Linear(1, 1))] for k in m.state_dict())
    ['bias', 'n_averaged', 'weight']
    """
    kept: list[str] = []
    module: nn.Module | None = root
    for part in key.split("."):
        if module is not None and _key_wrapper_attr(module) == part:
            module = module._modules[part]
            continue
        kept.append(part)
        module = module._modules.get(part) if module is not None else None
    return ".".join(kept)


def _strip_wrapper_segments(key: str) -> str:
    return ".".join(p for p in key.split(".") if p not in ("module", "_orig_mod"))


def _own_cpu_tensor(t: torch.Tensor, seen: set[int]) -> torch.Tensor:
    """``t`` on the CPU, detached, contiguous, owning exactly its storage (shared by nothing else saved)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    storage = t.untyped_storage()
    if (not t.is_contiguous() or t.storage_offset() != 0 or storage.nbytes() != t.numel() * t.element_size()
            or storage.data_ptr() in seen):
        t = t.clone(memory_format=torch.contiguous_format)
        storage = t.untyped_storage()
    if storage.nbytes():
        seen.add(storage.data_ptr())
    return t


def clean_state_dict(model_or_sd: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """Weights with clean keys as detached, contiguous CPU tensors that share no storage.

    From a module, exactly the segments that belong to wrappers are dropped (also wrappers
    nested inside the model). From a plain state dict, every ``module`` / ``_orig_mod``
    key segment is dropped. CPU tensors may share memory with the model's parameters
    (copy them if you keep the dict while training goes on; ``Checkpointer`` does).

    >>> import torch
    >>> from torch import nn
    >>> from finetune.checkpoint import clean_state_dict
    >>> sd = clean_state_dict(torch.compile(nn.DataParallel(nn.Linear(2, 3), device_ids=[])))
    >>> sorted(sd), sd["weight"].device.type
    (['bias', 'weight'], 'cpu')
    >>> sorted(clean_state_dict({"module.fc.weight": torch.zeros(1)}))
    ['fc.weight']
    """
    seen: set[int] = set()
    return {k: _own_cpu_tensor(v, seen) if isinstance(v, torch.Tensor) else v
            for k, v in _renamed_weights(model_or_sd).items()}


def _renamed_weights(model_or_sd: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """The state dict with clean keys; tensors detached but where they are (no copy)."""
    if isinstance(model_or_sd, nn.Module):
        raw = model_or_sd.state_dict()
        names = {k: _clean_key(model_or_sd, k) for k in raw}
    else:
        raw = dict(model_or_sd)
        names = {k: _strip_wrapper_segments(k) for k in raw}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = names[key]
        if name in out:
            raise CheckpointError(f"two weights map to the same name {name!r} once wrapper prefixes are removed")
        out[name] = value.detach() if isinstance(value, torch.Tensor) else value
    return out


def load_model_state(model: nn.Module, state_dict: Mapping[str, Any], *, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load clean (or wrapper-prefixed) weights into ``model``, wrapped or bare, on any device.

    Returns ``(missing, unexpected)`` key lists; with ``strict`` a mismatch raises
    :class:`CheckpointError` naming the first keys. Without ``strict``, tensors whose shape
    differs (a new head) are not loaded and listed in ``missing``.

    >>> import torch
    >>> from torch import nn
    >>> from finetune.checkpoint import clean_state_dict, load_model_state, unwrap_model
    >>> src = nn.DataParallel(nn.Linear(2, 2), device_ids=[])
    >>> dst = torch.compile(nn.Linear(2, 2))
    >>> load_model_state(dst, clean_state_dict(src))
    ([], [])
    >>> torch.equal(unwrap_model(dst).weight, src.module.weight)
    True
    """
    missing, unexpected, _ = _load_model_state(model, state_dict, strict=strict)
    return missing, unexpected


def _load_model_state(model: nn.Module, state_dict: Mapping[str, Any], *,
                      strict: bool) -> tuple[list[str], list[str], list[str]]:
    """:func:`load_model_state` that also returns the names whose shape differs (not loaded, listed in missing)."""
    current = model.state_dict()
    target = {_clean_key(model, k): k for k in current}
    inverse = {v: k for k, v in target.items()}
    renamed: dict[str, Any] = {}
    mismatched: list[str] = []
    for key, value in state_dict.items():
        name = key if key in target else _strip_wrapper_segments(key)
        full = target.get(name, key)
        have = current.get(full)
        if isinstance(value, torch.Tensor) and isinstance(have, torch.Tensor) and value.shape != have.shape:
            mismatched.append(f"{inverse.get(full, full)} {list(value.shape)} -> {list(have.shape)}")
            continue
        renamed[full] = value
    if strict and mismatched:
        raise CheckpointError(f"the checkpoint's weights do not fit the model: shape of {', '.join(mismatched[:3])}"
                              f"{' …' if len(mismatched) > 3 else ''} (a different architecture or number of classes?)")
    try:
        result = model.load_state_dict(renamed, strict=False)
    except RuntimeError as e:  # anything else load_state_dict refuses
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3]) or _first_line(e)
        raise CheckpointError(f"the checkpoint's weights do not fit the model: {detail[:300]}") from e
    missing = [inverse.get(k, k) for k in result.missing_keys]
    unexpected = list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise CheckpointError(f"the checkpoint's weights do not fit the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]} (a different architecture or number of classes?)")
    return missing, unexpected, [m.split(" ")[0] for m in mismatched]


# --------------------------------------------------------------------------- optimizer state by name
_IMPLEMENTATION_FLAGS = frozenset({"params", "param_names", "foreach", "fused", "capturable", "differentiable"})


@dataclass
class OptimizerRestoreReport:
    """What :func:`load_optimizer_state_by_name` restored and what it could not.

    >>> import torch
    >>> from finetune.checkpoint import load_optimizer_state_by_name, optimizer_state_by_name
    >>> net = torch.nn.Linear(2, 2)
    >>> saved = optimizer_state_by_name(torch.optim.SGD(net.parameters(), lr=0.1), net)
    >>> report = load_optimizer_state_by_name(torch.optim.SGD(net.parameters(), lr=0.5), net, saved)
    >>> report.exact, str(report)
    (True, 'optimizer state restored for 2 parameters')
    >>> print(load_optimizer_state_by_name(torch.optim.AdamW(net.parameters()), net, saved))
    optimizer state not restored: the optimizer changed (SGD -> AdamW)
    """

    restored: list[str] = field(default_factory=list)
    """Parameters whose saved state (e.g. momentum) was loaded."""
    missing: list[str] = field(default_factory=list)
    """Parameters in the optimizer now that the checkpoint has no entry for (start fresh)."""
    unexpected: list[str] = field(default_factory=list)
    """Parameters in the checkpoint that the optimizer no longer holds (dropped)."""
    shape_mismatch: list[str] = field(default_factory=list)
    """Parameters whose shape changed (e.g. a new head): their state starts fresh."""
    groups_restored: list[str] = field(default_factory=list)
    """Parameter groups whose hyperparameters (lr, momentum, ...) were restored."""
    groups_fresh: list[str] = field(default_factory=list)
    """Parameter groups with no saved counterpart: they keep their current hyperparameters."""
    optimizer_changed: str | None = None
    """``"SGD -> AdamW"`` when the optimizer class changed: nothing was restored."""

    @property
    def exact(self) -> bool:
        """Everything matched: the optimizer is exactly as it was saved.

        >>> from finetune.checkpoint import OptimizerRestoreReport
        >>> OptimizerRestoreReport(restored=["weight", "bias"]).exact
        True
        >>> OptimizerRestoreReport(restored=["weight"], shape_mismatch=["bias"]).exact   # a new head: fresh state
        False
        """
        return not (self.missing or self.unexpected or self.shape_mismatch or self.groups_fresh
                    or self.optimizer_changed)

    def __str__(self) -> str:
        if self.optimizer_changed:
            return f"optimizer state not restored: the optimizer changed ({self.optimizer_changed})"
        parts = [f"optimizer state restored for {len(self.restored)} parameters"]
        for label, names in (("new (fresh state)", self.missing), ("no longer optimized", self.unexpected),
                             ("shape changed (fresh state)", self.shape_mismatch),
                             ("groups with fresh hyperparameters", self.groups_fresh)):
            if names:
                parts.append(f"{len(names)} {label}: {', '.join(names[:4])}{' …' if len(names) > 4 else ''}")
        return "; ".join(parts)


def _group_label(group: Mapping[str, Any], index: int) -> str:
    return str(group["name"]) if group.get("name") is not None else f"#{index}"


def _optimizer_param_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[list[str]]:
    """For each parameter group, the clean names of its parameters."""
    by_id = {id(p): _clean_key(model, name) for name, p in model.named_parameters()}
    names: list[list[str]] = []
    for g, group in enumerate(optimizer.param_groups):
        group_names = []
        for i, p in enumerate(group["params"]):
            if id(p) not in by_id:
                raise CheckpointError(f"optimizer parameter {i} of group {g} is not a parameter of the model: "
                                      "pass the module that owns every optimized parameter")
            group_names.append(by_id[id(p)])
        names.append(group_names)
    return names


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name instead of position.

    Returns ``{"format", "version", "optimizer": class name, "state": {name: {key: value}},
    "shapes": {name: [sizes]}, "groups": [{"name", "params": [names], "hparams": {...}}]}``;
    it loads with ``torch.load(weights_only=True)``.

    >>> import torch
    >>> from torch import nn
    >>> from finetune.checkpoint import optimizer_state_by_name
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> net(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> saved = optimizer_state_by_name(opt, net)
    >>> sorted(saved["state"]), saved["groups"][0]["hparams"]["lr"]
    (['0.bias', '0.weight'], 0.1)
    """
    names = _optimizer_param_names(optimizer, model)
    sd = optimizer.state_dict()
    state: dict[str, dict[str, Any]] = {}
    shapes: dict[str, list[int]] = {}
    groups: list[dict[str, Any]] = []
    for group_names, group_sd, group in zip(names, sd["param_groups"], optimizer.param_groups, strict=True):
        for name, index, p in zip(group_names, group_sd["params"], group["params"], strict=True):
            if index in sd["state"]:
                state[name] = dict(sd["state"][index])
            shapes[name] = list(p.shape)
        hparams = {k: v for k, v in group_sd.items() if k not in ("params", "param_names")}
        groups.append({"name": group.get("name"), "params": list(group_names), "hparams": hparams})
    return {"format": OPTIMIZER_FORMAT, "version": 1, "optimizer": type(optimizer).__name__,
            "state": state, "shapes": shapes, "groups": groups}


def _match_group(current: Mapping[str, Any], names: list[str], saved_groups: list[dict[str, Any]],
                 used: set[int]) -> int | None:
    """Index of the saved group that ``current`` continues: same "name", else the same members."""
    if current.get("name") is not None:
        for i, g in enumerate(saved_groups):
            if i not in used and g.get("name") == current["name"]:
                return i
    for i, g in enumerate(saved_groups):
        if i not in used and set(g["params"]) == set(names):
            return i
    return None


def load_optimizer_state_by_name(optimizer: torch.optim.Optimizer, model: nn.Module,
                                 saved: Mapping[str, Any]) -> OptimizerRestoreReport:
    """Restore :func:`optimizer_state_by_name` output into ``optimizer``, matching by name.

    Works when parameters were unfrozen, a head replaced, or the groups reordered: each
    parameter gets its saved state if its name and shape match; each group gets its saved
    hyperparameters if a saved group has the same ``"name"`` or exactly the same members.
    Everything else starts fresh and is listed in the report. Never raises PyTorch's
    "parameter group doesn't match".

    >>> import torch
    >>> from torch import nn
    >>> from finetune.checkpoint import load_optimizer_state_by_name, optimizer_state_by_name
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> opt = torch.optim.SGD(net[1].parameters(), lr=0.1, momentum=0.9)   # head only
    >>> net(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> saved = optimizer_state_by_name(opt, net)
    >>> opt2 = torch.optim.SGD([{"params": net[0].parameters(), "lr": 0.01},
    ...                         {"params": net[1].parameters()}], lr=0.1, momentum=0.9)
    >>> report = load_optimizer_state_by_name(opt2, net, saved)
    >>> report.restored, report.missing
    (['1.weight', '1.bias'], ['0.weight', '0.bias'])
    """
    if not isinstance(saved, Mapping) or saved.get("format") != OPTIMIZER_FORMAT:
        if isinstance(saved, Mapping) and "state" in saved and "param_groups" in saved:  # optimizer.state_dict()
            raise CheckpointError("the checkpoint's optimizer state is torch's optimizer.state_dict() (by position), "
                                  "not stored by parameter name: load it with optimizer.load_state_dict(), and save "
                                  "the optimizer object itself (save({'model': model, 'optimizer': optimizer, ...})) "
                                  "to restore it by name")
        raise CheckpointError("the checkpoint's optimizer state is not stored by parameter name "
                              "(not written by finetune.checkpoint.optimizer_state_by_name)")
    report = OptimizerRestoreReport()
    if saved["optimizer"] != type(optimizer).__name__:
        report.optimizer_changed = f"{saved['optimizer']} -> {type(optimizer).__name__}"
        return report
    names = _optimizer_param_names(optimizer, model)
    current_sd = optimizer.state_dict()
    saved_state, saved_shapes, saved_groups = saved["state"], saved["shapes"], saved["groups"]
    new_state: dict[int, Any] = {}
    new_groups: list[dict[str, Any]] = []
    used: set[int] = set()
    for g, (group_names, group_sd, group) in enumerate(
            zip(names, current_sd["param_groups"], optimizer.param_groups, strict=True)):
        for name, index, p in zip(group_names, group_sd["params"], group["params"], strict=True):
            if name not in saved_shapes:
                report.missing.append(name)
            elif list(saved_shapes[name]) != list(p.shape):
                report.shape_mismatch.append(name)
            else:
                report.restored.append(name)
                if name in saved_state:
                    new_state[index] = saved_state[name]
        match = _match_group(group, group_names, saved_groups, used)
        new_group = dict(group_sd)
        if match is None:
            report.groups_fresh.append(_group_label(group, g))
        else:
            used.add(match)
            report.groups_restored.append(_group_label(group, g))
            new_group.update({k: v for k, v in saved_groups[match]["hparams"].items() if k not in _IMPLEMENTATION_FLAGS})
        new_groups.append(new_group)
    current = {n for group_names in names for n in group_names}
    report.unexpected = [n for n in saved_shapes if n not in current]
    optimizer.load_state_dict({"state": new_state, "param_groups": new_groups})
    # checkpoints store contiguous tensors: give the state its parameter's memory format again
    # (torch's fused AdamW reads param and state as one flat layout; channels_last params would get
    # another element's moments)
    for p, st in optimizer.state.items():
        for key, value in st.items():
            if (isinstance(value, torch.Tensor) and value.shape == p.shape and value.dim() > 1
                    and value.stride() != p.stride()):
                st[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
    return report


# --------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator a training step draws from, as tensors and plain types.

    Python ``random``, numpy's global generator, torch CPU and every CUDA device.
    Safe for ``torch.load(weights_only=True)`` (numpy's state is converted to a tensor).

    >>> import random
    >>> import numpy as np
    >>> import torch
    >>> from finetune.checkpoint import capture_rng_state, restore_rng_state
    >>> s = capture_rng_state(); a = random.random(), np.random.rand(), torch.rand(1).item()
    >>> restore_rng_state(s); a == (random.random(), np.random.rand(), torch.rand(1).item())
    True
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` returned (call it last, right before training goes on).

    CUDA states are restored for the devices present; a different number of devices is
    reported with a :class:`CheckpointWarning` (CPU and the devices present are still restored).

    >>> import torch
    >>> from finetune.checkpoint import capture_rng_state, restore_rng_state
    >>> state = capture_rng_state(); first = torch.randn(3)
    >>> restore_rng_state(state); torch.equal(torch.randn(3), first)
    True
    """
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), int(npy["pos"]),
                         int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    cuda = list(state.get("cuda", []))
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda and present:
        for device, s in enumerate(cuda[:present]):
            torch.cuda.set_rng_state(s.to("cpu", torch.uint8), device)
    if len(cuda) != present and (cuda or present):
        warnings.warn(f"the checkpoint holds RNG states of {len(cuda)} CUDA devices, this machine has {present}: "
                      "CUDA random streams will differ from the original run", CheckpointWarning, stacklevel=2)


# --------------------------------------------------------------------------- restore in one call
@dataclass
class RestoreReport:
    """What :func:`restore` loaded.

    >>> import torch
    >>> from finetune.checkpoint import restore
    >>> state = {"model": {"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2)}}
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> report = restore(state, model=net, strict=False)     # the new head is not in the checkpoint
    >>> report.missing, report.unexpected, report.optimizer
    (['1.weight', '1.bias'], [], None)
    """

    missing: list[str]
    """Model weights not loaded from the checkpoint (absent there, or of another shape)."""
    unexpected: list[str]
    """Checkpoint weights the model has no place for."""
    optimizer: OptimizerRestoreReport | None
    shape_mismatch: list[str] = field(default_factory=list)
    """Model weights whose shape differs from the checkpoint's (also in ``missing``; only without ``strict``)."""


def restore(state: Mapping[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
            scheduler: Any = None, scaler: Any = None, strict: bool = True) -> RestoreReport:
    """Load a checkpoint's model, optimizer (by name), scheduler and GradScaler state.

    Call it after building the optimizer for the current layout; restore the RNG
    (:func:`restore_rng_state`) separately, right before training goes on.

    >>> import tempfile, torch
    >>> from finetune.checkpoint import Checkpointer, restore
    >>> net = torch.nn.Linear(2, 2); opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> ckpt = Checkpointer(tempfile.mkdtemp())
    >>> _ = ckpt.save({"model": net, "optimizer": opt, "epoch": 0, "step": 1})
    >>> net2 = torch.nn.Linear(2, 2); opt2 = torch.optim.SGD(net2.parameters(), lr=0.1, momentum=0.9)
    >>> report = restore(ckpt.load(), model=net2, optimizer=opt2)
    >>> torch.equal(net2.weight, net.weight), report.optimizer.exact
    (True, True)
    """
    missing, unexpected, mismatched = _load_model_state(model, state["model"], strict=strict)
    report = None
    for key, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is not None and key not in state:
            raise CheckpointError(f"the checkpoint holds no {key} state (saved keys: {sorted(state)})")
    if optimizer is not None:
        report = load_optimizer_state_by_name(optimizer, model, state["optimizer"])
    if scheduler is not None:
        _check_scheduler_groups(scheduler, state["scheduler"])
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    return RestoreReport(missing, unexpected, report, mismatched)


def _check_scheduler_groups(scheduler: Any, saved: Any) -> None:
    """Refuse a scheduler state saved for another number of parameter groups than the scheduler's optimizer
    has now: torch loads it without a word and then fails inside ``step()`` (LambdaLR) or schedules the groups
    with the old groups' values (its per-group lists: ``_last_lr``, ``base_lrs``; timm's ``base_values``).

    >>> opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))]}, {"params": [nn.Parameter(torch.zeros(1))]}])
    >>> _check_scheduler_groups(torch.optim.lr_scheduler.StepLR(opt, 1), {"base_lrs": [0.1], "_last_lr": [0.1]})
    Traceback (most recent call last):
    finetune.errors.CheckpointError: the checkpoint's scheduler was saved for 1 parameter group, ...
    """
    optimizer = getattr(scheduler, "optimizer", None)
    if not isinstance(saved, Mapping) or not isinstance(getattr(optimizer, "param_groups", None), list):
        return
    now = len(optimizer.param_groups)
    for key in ("_last_lr", "base_lrs", "base_values"):
        values = saved.get(key)
        if isinstance(values, list) and len(values) != now:
            raise CheckpointError(
                f"the checkpoint's scheduler was saved for {len(values)} parameter group{'s' * (len(values) != 1)}, "
                f"the optimizer now has {now}: its schedule cannot continue on these groups; restore without "
                "scheduler= and build a scheduler for the new groups")


# --------------------------------------------------------------------------- what may go into a file
_SCALARS = (bool, int, float, str, type(None))  # not bytes: torch 2.4 cannot load them
_TORCH_VALUES = (torch.dtype, torch.device, torch.Size)


def _check_tensor(t: torch.Tensor, path: tuple) -> None:
    """Refuse a tensor that cannot be copied into a checkpoint (a meta tensor has no data; sparse ones no storage).

    >>> _check_tensor(torch.empty(2, device="meta"), ("model", "weight"))
    Traceback (most recent call last):
    finetune.errors.CheckpointError: cannot save state['model']['weight']: a meta tensor holds no values ...
    """
    if t.is_meta:
        raise CheckpointError(f"cannot save state{_where(path)}: a meta tensor holds no values (a model built on "
                              "device='meta' and never filled): give it storage first, e.g. "
                              "model.to_empty(device='cpu') and load its weights")
    if t.layout != torch.strided:
        raise CheckpointError(f"cannot save state{_where(path)}: a {str(t.layout).removeprefix('torch.')} tensor "
                              "(e.g. the momentum of a sparse nn.Embedding's gradients) is not saved; store it "
                              "dense (t.to_dense()) or as its indices and values")


def _plain(obj: Any, on_tensor: Callable[[torch.Tensor, tuple], torch.Tensor], path: tuple = ()) -> Any:
    """A copy of ``obj`` that ``torch.load(weights_only=True)`` accepts: tensors via ``on_tensor``."""
    if isinstance(obj, torch.Tensor):
        _check_tensor(obj, path)
        return on_tensor(obj, path)
    if type(obj) in _SCALARS or isinstance(obj, _TORCH_VALUES):
        return obj
    if isinstance(obj, bytes | bytearray):  # pickled as _codecs.encode, which torch < 2.5 refuses
        raise CheckpointError(f"cannot save state{_where(path)}: a {type(obj).__qualname__} does not load with "
                              "torch.load(weights_only=True) on torch 2.4; store it as a str or a uint8 tensor")
    if isinstance(obj, Mapping):
        return {_plain_key(k, path): _plain(v, on_tensor, (*path, k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v, on_tensor, (*path, i)) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_plain(v, on_tensor, (*path, i)) for i, v in enumerate(obj))
    if isinstance(obj, np.generic):  # its Python value: bytes and complex are refused like Python's own
        return _plain(obj.item(), on_tensor, path)
    if isinstance(obj, PurePath):
        return str(obj)
    raise CheckpointError(f"cannot save state{_where(path)}: a {type(obj).__qualname__} is not among what "
                          "torch.load(weights_only=True) loads on every torch finetune supports (2.4 and later); "
                          "store it as a dict, list, str, number or tensor")


def _plain_state(state: Mapping[str, Any], on_tensor: Callable[[torch.Tensor, tuple], torch.Tensor]) -> Any:
    """:func:`_plain` of the whole state, with one error for a dict or list that contains itself.

    >>> loop = {"epoch": 0}; loop["me"] = loop
    >>> _plain_state(loop, lambda t, _: t)
    Traceback (most recent call last):
    finetune.errors.CheckpointError: cannot save the state: a dict, list or tuple in it contains itself ...
    """
    try:
        return _plain(state, on_tensor)
    except RecursionError:
        raise CheckpointError("cannot save the state: a dict, list or tuple in it contains itself (or is nested "
                              "thousands of levels deep), which torch.load cannot rebuild; save a copy without "
                              "the loop") from None


def _plain_key(key: Any, path: tuple) -> Any:
    """A dict key that ``torch.load(weights_only=True)`` accepts (a numpy scalar becomes its Python value).

    >>> _plain_key(np.int64(3), ()), _plain_key(("a", np.float32(0.5)), ())
    (3, ('a', 0.5))
    """
    if type(key) in _SCALARS or isinstance(key, _TORCH_VALUES):
        return key
    if isinstance(key, np.generic) and type(key.item()) in _SCALARS:
        return key.item()
    if isinstance(key, PurePath):
        return str(key)
    if isinstance(key, tuple):
        return tuple(_plain_key(k, path) for k in key)
    raise CheckpointError(f"cannot save state{_where(path)}: its key {key!r}, a {type(key).__qualname__}, does not "
                          "load with torch.load(weights_only=True); use str, int, float or bool keys")


def _where(path: tuple) -> str:
    """``["optimizer"]["state"][0]``: where in the state a value sits."""
    return "".join(f"[{k!r}]" for k in path)


def _without_wrapper_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    """``sd`` without a ``module.`` / ``_orig_mod.`` prefix that every key has (DataParallel, DDP, torch.compile).

    >>> list(_without_wrapper_prefix({"_orig_mod.module.fc.weight": 1, "_orig_mod.module.fc.bias": 2}))
    ['fc.weight', 'fc.bias']
    >>> list(_without_wrapper_prefix({"module.weight": 1, "head.weight": 2}))   # not every key: a real submodule
    ['module.weight', 'head.weight']
    """
    out = dict(sd)
    while out and all(isinstance(k, str) for k in out):
        prefix = next((p for p in ("module.", "_orig_mod.") if all(k.startswith(p) for k in out)), None)
        if prefix is None:
            break
        out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def _prepare(state: Mapping[str, Any]) -> dict[str, Any]:
    """Replace live objects by their state: a module by clean weights, an optimizer by names, others' state_dict()."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"save() takes a dict of state, not a {type(state).__qualname__}")
    out = dict(state)
    model = state.get("model")
    if isinstance(model, Mapping):  # a wrapper's state_dict(): its keys without the wrapper's prefix
        out["model"] = _without_wrapper_prefix(model)
    for key, value in state.items():
        if isinstance(value, nn.Module):  # copied to the CPU later: pinned and asynchronously with async_save
            out[key] = _renamed_weights(value)
        elif isinstance(value, torch.optim.Optimizer):
            if not isinstance(model, nn.Module):
                raise CheckpointError(f"to save state[{key!r}] by parameter name, pass the model module as state['model']")
            out[key] = optimizer_state_by_name(value, model)
        elif callable(getattr(value, "state_dict", None)) and not isinstance(value, Mapping):
            out[key] = value.state_dict()
    for key in ("epoch", "step"):
        value = out.get(key)
        if isinstance(value, np.integer) or (isinstance(value, torch.Tensor) and value.numel() == 1
                                             and not value.is_floating_point() and value.dtype != torch.bool):
            value = out[key] = int(value)  # a numpy or tensor counter
        if type(value) is not int or value < 0:
            raise CheckpointError(f"save() needs state[{key!r}] as an int >= 0, got {value!r}")
    return out


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Memory copies on one thread: a memory-bound copy gains nothing from more, and OpenMP
    threads that wait for a core taken by data-loader workers made it 5-15x slower (2-core machine)."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def _copy_all(dsts: list[torch.Tensor], srcs: list[torch.Tensor], *, non_blocking: bool) -> None:
    """``dst.copy_(src)`` for all pairs, in one call where torch offers it."""
    try:
        torch._foreach_copy_(dsts, srcs, non_blocking=non_blocking)
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        for dst, src in zip(dsts, srcs, strict=True):
            dst.copy_(src, non_blocking=non_blocking)


@functools.cache
def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    import finetune

    try:
        tv: str | None = version("torchvision")
    except PackageNotFoundError:
        tv = None
    return {"finetune": str(finetune.__version__), "torch": str(torch.__version__), "torchvision": tv,
            "python": ".".join(map(str, sys.version_info[:3]))}


# --------------------------------------------------------------------------- durable files
class _Writer:
    """A write-only file object that counts what goes through and keeps the first OSError.

    torch.save turns an error of the file object into a RuntimeError; the OSError kept
    here lets the caller say "disk full" instead.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.size, self.error = f, 0, None

    def write(self, data: Any) -> int:
        try:
            n = self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise
        self.size += memoryview(data).nbytes
        return n

    def flush(self) -> None:
        self.f.flush()


def _serialize(payload: dict[str, Any], writer: _Writer) -> None:
    """The one place bytes of a checkpoint are produced (tests replace it to simulate crashes)."""
    torch.save(payload, writer)


_STARTED_NS = time.time_ns()  # no temp file of this process is older than this
_WRITING: set[str] = set()  # temp files this process is writing now


def _temp_name(final: Path) -> Path:
    """A new temporary name next to ``final``, registered as being written by this process."""
    tmp = final.with_name(f".{final.name}.tmp.{os.getpid()}.{secrets.token_hex(4)}")
    _WRITING.add(str(tmp))
    return tmp


def _remove_quietly(path: Path) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that cannot open directories (Windows)
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(final: Path) -> Iterator[Path]:
    """A new temporary path beside ``final`` to write (and fsync) in the block: at its end it replaces
    ``final`` and the folder is fsynced; on any failure it is removed, ``final`` left as it was."""
    tmp = _temp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        _remove_quietly(tmp)
        raise
    finally:
        _WRITING.discard(str(tmp))
    _fsync_dir(final.parent)


def _write_atomic(final: Path, produce: Callable[[_Writer], None]) -> int:
    """Write ``final`` all or nothing and durably; returns its size. Leaves no temp file on failure."""
    with _replacing(final) as tmp, open(tmp, "xb") as f:
        writer = _Writer(f)
        try:
            produce(writer)
        except OSError:
            raise
        except Exception as e:  # torch.save turns the writer's OSError into a RuntimeError
            if writer.error is not None:
                raise writer.error from e
            if isinstance(e.__context__, KeyboardInterrupt):  # and a Ctrl-C (a second one) during a write too:
                raise e.__context__ from None  # an interruption, not a failed write ("unexpected pos ...")
            raise
        f.flush()
        os.fsync(f.fileno())
    return writer.size


def _copy_from(src: Path) -> Callable[[_Writer], None]:
    def produce(writer: _Writer) -> None:
        with open(src, "rb") as f:
            shutil.copyfileobj(f, writer, _CHUNK)
    return produce


def _link_atomic(src: Path, final: Path) -> str:
    """Make ``final`` the same file as ``src``: a hard link, else an atomic copy. Returns which."""
    tmp = _temp_name(final)
    try:
        try:
            os.link(src, tmp)
        except (OSError, AttributeError, NotImplementedError):
            _remove_quietly(tmp)
            _write_atomic(final, _copy_from(src))
            return "copy"
        try:
            os.replace(tmp, final)
        except BaseException:
            _remove_quietly(tmp)
            raise
    finally:
        _WRITING.discard(str(tmp))
    _fsync_dir(final.parent)
    return "hardlink"


def write_safetensors(tensors: Mapping[str, torch.Tensor], final: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` into ``final`` all or nothing and durably (a temporary file beside it,
    fsync, ``os.replace``). A failed write (disk full, file too large) raises the OSError of its cause, not
    safetensors' own error, and leaves no temporary file.

    >>> from finetune.checkpoint import write_safetensors
    >>> import pathlib, tempfile, torch
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_safetensors({"w": torch.zeros(4)}, folder / "w.safetensors", {"format": "pt"})
    >>> sorted(p.name for p in folder.iterdir())
    ['w.safetensors']
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with _replacing(final) as tmp:
        # the mode a new file gets under the umask, as torch.save's: safetensors' own write leaves it 0600
        open(tmp, "xb").close()
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        try:
            save_file(dict(tensors), str(tmp), metadata=metadata)
        except SafetensorError as e:  # an I/O error as safetensors reports it: "... I/O error: ... (os error 28)"
            found = re.search(r"\(os error (\d+)\)", str(e))
            if found is None:
                raise
            code = int(found.group(1))
            raise OSError(code, os.strerror(code), str(final)) from e
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())


_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full: free space",
    errno.EDQUOT: "the disk quota is exceeded: free space",
    errno.EACCES: "permission denied: make the directory writable",
    errno.EPERM: "operation not permitted: make the directory writable",
    errno.EROFS: "the file system is read-only: choose another directory (--out)",
}


def _write_error(what: str, path: Path, err: BaseException) -> CheckpointError:
    """One line: what could not be written, why, that the earlier checkpoints are intact, what to do."""
    if isinstance(err, OSError):
        code = errno.errorcode.get(err.errno or 0, "error")
        hint = _WRITE_HINTS.get(err.errno or 0, "fix the cause")
        why = f"{err.strerror or err} [{code}]"
    else:  # torch.save's own error (it reports a failed write as a RuntimeError)
        hint, why = "fix the cause", f"{type(err).__name__}: {_first_line(err)[:200]}"
    try:
        earlier = any(_NUMBERED.match(p.name) for p in path.parent.glob("ckpt-*.pt")) if path.parent.is_dir() else False
    except OSError:
        earlier = False
    then = ("earlier checkpoints in '{0}' are intact; {1}, then resume from them (--resume auto)" if earlier
            else "no checkpoint of this run was written yet; {1}, then start it again").format(path.parent, hint)
    kind = CheckpointError if isinstance(err, OSError) else CheckpointWriteError
    return kind(f"cannot write {what} '{path}': {why}; {then}")


def _fingerprint(path: Path, *, full: bool) -> dict[str, Any]:
    """What a manifest records to recognise a file: its size and the sha256 of its last MiB.

    The last MiB holds the zip directory with the CRC32 of every record, so with the
    records' own CRC check (:func:`_check_zip`) this detects truncation and corruption
    without hashing the whole file at save time. ``full`` adds the whole file's sha256
    (used when torch.save was configured to write no CRC32s).
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - _TAIL))
        out: dict[str, Any] = {"bytes": size, "tail_sha256": hashlib.sha256(f.read()).hexdigest()}
        if full:
            f.seek(0)
            out["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def _torch_writes_crc32() -> bool:
    get = getattr(torch.serialization, "get_crc32_options", None)
    return bool(get()) if get is not None else True


def _check_zip(path: Path) -> str | None:
    """Why a torch zip file without a manifest is unusable (truncated, CRC mismatch), or None."""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.CRC == 0 and info.file_size:  # written without CRCs: nothing to check
                    continue
                with z.open(info) as member:
                    while member.read(_CHUNK):
                        pass
    except zipfile.BadZipFile as e:
        if "CRC" in str(e):
            return f"checksum mismatch ({e}): the file is corrupt"
        if _looks_like_safetensors(path):
            return f"a safetensors file of weights, not a finetune checkpoint{_OTHER_FILE_HINT}"
        return _other_kind(path) or "truncated or not a checkpoint (no complete zip directory)"
    except (OSError, EOFError, ValueError) as e:
        return f"unreadable: {_first_line(e)}"
    return _other_kind(path)


#: files ``torch.load(weights_only=True)`` cannot read as a finetune checkpoint, by what finetune.weights reads them as
_OTHER_KINDS = {"torchscript": "a TorchScript archive (a whole compiled model)", "pt2": "a torch.export archive (.pt2)",
                "pickle": "a legacy (not zip) torch.save file", "raw pickle": "a plain pickle file",
                "npz": "a NumPy .npz archive of weights", "index": "the index of a sharded checkpoint"}


def _other_kind(path: Path) -> str | None:
    """What a file of weights that is no finetune checkpoint is, one line with what to do (a TorchScript
    archive, a legacy torch.save file, ...); None for a torch zip file, which may be one, and for anything else.

    >>> import pathlib, tempfile, torch
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> torch.save({"w": torch.ones(1)}, d / "old.pt", _use_new_zipfile_serialization=False)
    >>> _other_kind(d / "old.pt").split(";")[0]
    'a legacy (not zip) torch.save file, not a finetune checkpoint'
    >>> torch.save({"w": torch.ones(1)}, d / "new.pt"); _other_kind(d / "new.pt") is None
    True
    """
    from finetune.weights.formats import sniff

    try:
        kind = sniff(path)
    except (OSError, ValueError):
        return None
    if kind in _OTHER_KINDS:
        return f"{_OTHER_KINDS[kind]}, not a finetune checkpoint{_OTHER_FILE_HINT}"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a finetune checkpoint, with one-line errors.

    Does not verify a manifest; :meth:`Checkpointer.load` and :meth:`Checkpointer.read` do.

    >>> import tempfile, torch
    >>> from finetune.checkpoint import Checkpointer, read_checkpoint
    >>> path = Checkpointer(tempfile.mkdtemp()).save({"w": torch.ones(2), "epoch": 0, "step": 5})
    >>> state = read_checkpoint(path)
    >>> state["format"], state["step"], state["w"].tolist()
    ('finetune-checkpoint', 5, [1.0, 1.0])
    >>> read_checkpoint(path.with_name("nothing.pt"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.CheckpointError: checkpoint '...nothing.pt': no such file
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint '{path}': no such file") from e
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint '{path}': not a finetune checkpoint, and loading it would run code it "
                              f"holds (a whole pickled model?){_OTHER_FILE_HINT}") from e
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        if _looks_like_safetensors(path):
            raise CheckpointError(f"checkpoint '{path}': a safetensors file of weights, not a finetune checkpoint"
                                  f"{_OTHER_FILE_HINT}") from e
        raise CheckpointError(f"checkpoint '{path}': truncated or not a checkpoint ({_first_line(e)[:160]})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{path}': not a finetune checkpoint (no format {FORMAT!r} inside)"
                              f"{_OTHER_FILE_HINT}")
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint '{path}': written by a newer finetune (format version "
                              f"{obj['format_version']}, this one reads {FORMAT_VERSION}): upgrade finetune")
    return obj


_OTHER_FILE_HINT = ("; give a run's checkpoints/best.pt, start from other weights with `finetune train "
                    "--pretrained FILE`, or see what it holds with `finetune inspect FILE`")


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size


# --------------------------------------------------------------------------- a run's best.safetensors
#: what ``best.safetensors`` carries besides the weights (JSON in its metadata): enough for
#: ``predict``, ``eval --data`` and ``cam`` to rebuild the model and its eval transform
DEPLOYMENT_KEYS = ("mean", "std", "crop_pct", "interpolation", "crop_mode")
DEPLOYMENT_FORMAT = "finetune-weights"


def deployment_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What a run's ``best.safetensors`` records in its header, decoded (``arch``, ``classes``,
    ``img_size``, the eval settings of :data:`DEPLOYMENT_KEYS`, the data ``config``, ``train_images``
    and ``val_images`` where present); None for any other file. Only the header is read, not the
    tensors. A finetune file whose header cannot be decoded is a :class:`CheckpointError`.

    >>> from finetune.checkpoint import deployment_metadata
    >>> import pathlib, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "best.safetensors"
    >>> save_file({"fc.bias": torch.zeros(2)}, str(path), metadata={"format": "finetune-weights", "arch": "resnet18",
    ...           "classes": '["cat", "dog"]', "img_size": "32", "crop_pct": "0.9"})
    >>> deployment_metadata(path)
    {'arch': 'resnet18', 'classes': ['cat', 'dog'], 'img_size': 32, 'crop_pct': 0.9}
    >>> save_file({"w": torch.zeros(1)}, str(path)); deployment_metadata(path) is None
    True
    """
    path = Path(path)
    from safetensors import SafetensorError

    try:
        meta = _header_metadata(path)
        if meta is None or meta.get("format") != DEPLOYMENT_FORMAT:
            return None
        decoded: dict[str, Any] = {"arch": meta["arch"], "classes": json.loads(meta["classes"]), **_settings_of(meta)}
        if "config" in meta:
            decoded["config"] = dict(json.loads(meta["config"]))
        decoded.update({k: int(meta[k]) for k in ("train_images", "val_images") if k in meta})
        if "global_pool" in meta:  # (how the model is built: a timm ViT's pooling)
            decoded["global_pool"] = meta["global_pool"]
    except (OSError, SafetensorError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"'{path}': cannot read it as a finetune best.safetensors ({e}): "
                              "`finetune inspect` shows what it holds") from None
    return decoded


def input_settings(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The input settings (``img_size`` and :data:`DEPLOYMENT_KEYS`) a safetensors file's header records
    as a run's ``best.safetensors`` does: that file's, or those ``finetune convert`` carried over from
    the weights it converted (a timm or transformers folder's); None when it records none, or for any
    other file. Only the header is read.

    >>> from finetune.checkpoint import input_settings
    >>> import pathlib, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
    >>> save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "pt", "img_size": "64", "mean": "[0.5, 0.5, 0.5]"})
    >>> input_settings(path)
    {'img_size': 64, 'mean': [0.5, 0.5, 0.5]}
    >>> save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "pt"}); input_settings(path) is None
    True
    """
    from safetensors import SafetensorError

    try:
        meta = _header_metadata(Path(path))
        settings = _settings_of(meta) if meta is not None else {}
    except (OSError, SafetensorError, ValueError, TypeError):
        return None  # (a header that is not finetune's: no settings; loading the weights says what is wrong)
    return settings or None


def _header_metadata(path: Path) -> dict[str, str] | None:
    """A ``.safetensors`` file's header metadata ({} when it has none); None for any other file (only the
    header is read; what safetensors raises for a broken file is raised)."""
    if not path.is_file() or path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def settings_metadata(img_size: int | None, settings: Any) -> dict[str, str]:
    """Input settings as a safetensors header's metadata holds them (what :func:`input_settings` reads back):
    ``img_size`` as text, the :data:`DEPLOYMENT_KEYS` of the ``settings`` mapping as JSON; None left out.

    >>> from finetune.checkpoint import settings_metadata
    >>> settings_metadata(64, {"mean": [0.5, 0.5, 0.5], "crop_pct": None})
    {'img_size': '64', 'mean': '[0.5, 0.5, 0.5]'}
    """
    meta = {"img_size": str(img_size)} if img_size else {}
    meta.update({k: json.dumps(settings[k]) for k in DEPLOYMENT_KEYS if settings.get(k) is not None})
    return meta


def _settings_of(meta: dict[str, str]) -> dict[str, Any]:
    """The input settings in a header's metadata: ``img_size`` and :data:`DEPLOYMENT_KEYS`, decoded."""
    settings: dict[str, Any] = {"img_size": int(meta["img_size"])} if meta.get("img_size") else {}
    settings.update({k: json.loads(meta[k]) for k in DEPLOYMENT_KEYS if k in meta})
    return settings


# --------------------------------------------------------------------------- the Checkpointer
def _numbered_key(name: str) -> tuple[int, int] | None:
    m = _NUMBERED.match(name) or _MANIFEST.match(name)
    return (int(m.group(2)), int(m.group(1))) if m else None


def _manifest_path(path: Path) -> Path | None:
    return path.with_suffix(".json") if _NUMBERED.match(path.name) else None


def _read_manifest(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        m = json.loads(f.read())
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise ValueError("not a finetune checkpoint manifest")
    return m


def _plain_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, torch.Tensor):
            v = v.item()
        elif isinstance(v, np.generic):
            v = v.item()
        out[str(k)] = v if type(v) in _SCALARS else str(v)
    return out


@dataclass
class _Pending:
    """The one background write in flight."""

    name: str
    thread: threading.Thread | None = None
    error: BaseException | None = None


class Checkpointer:
    """Atomic, durable, pruned checkpoints of one run in ``run_dir/checkpoints/``.

    ``keep_last`` numbered checkpoints are kept (None: all of them), plus the best one by
    ``metrics[best_metric]`` (``mode`` "max" or "min"). With ``async_save`` the state is
    copied to (pinned, on CUDA) host memory and written by a background thread; at most
    one write is in flight and its error is raised by the next :meth:`save`,
    :meth:`wait` or :meth:`close`.

    >>> import tempfile, torch
    >>> from finetune.checkpoint import Checkpointer
    >>> net = torch.nn.Linear(2, 2)
    >>> with Checkpointer(tempfile.mkdtemp(), keep_last=1) as ckpt:
    ...     for epoch, top1 in enumerate([0.5, 0.9, 0.7]):
    ...         _ = ckpt.save({"model": net, "epoch": epoch, "step": epoch + 1}, metrics={"val_top1": top1})
    >>> [p.name for p in ckpt.checkpoints()]       # keep_last=1, plus the best one
    ['ckpt-e0001-s00000002.pt', 'ckpt-e0002-s00000003.pt']
    >>> ckpt.latest().name, ckpt.best().name, ckpt.best_value
    ('ckpt-e0002-s00000003.pt', 'best.pt', 0.9)
    >>> state = ckpt.load(ckpt.best())
    >>> state["epoch"], torch.equal(state["model"]["weight"], net.weight)
    (1, True)
    """

    def __init__(self, run_dir: str | os.PathLike[str], keep_last: int | None = 3, best_metric: str = "val_top1",
                 mode: str = "max", async_save: bool = False) -> None:
        if keep_last is not None and (type(keep_last) is not int or keep_last < 1):
            raise CheckpointerArgumentError(f"keep_last must be an integer >= 1 (or None: keep every checkpoint), "
                                            f"got {keep_last!r}")
        if mode not in ("max", "min"):
            raise CheckpointerArgumentError(f"mode must be 'max' or 'min', got {mode!r}")
        self.run_dir = Path(run_dir)
        if self.run_dir.is_file():  # (a checkpoint's own path: it would fail at the first save or latest())
            raise CheckpointerArgumentError(f"Checkpointer takes a run directory, and '{run_dir}' is a file: give the "
                                            "folder its checkpoints/ is in (to read one checkpoint file: "
                                            "Checkpointer(RUN_DIR).load(path) or finetune.read_state_dict(path))")
        self.directory = self.run_dir / CHECKPOINT_DIR
        self.keep_last, self.best_metric, self.mode, self.async_save = keep_last, best_metric, mode, bool(async_save)
        self.skipped: list[tuple[Path, str]] = []
        """(path, reason) of each checkpoint the last :meth:`latest` call passed over."""
        self._best: tuple[float | None, str | None] | None = None  # (value, numbered file), loaded lazily
        self._best_seen: str | None = None  # the newest numbered file when _best was read: newer ones re-read it
        self._other_best: tuple[Any, Any, Any] | None = None  # (metric, mode, value) of a best by another metric
        self._verified: dict[str, tuple[tuple, str | None]] = {}
        self._pending: _Pending | None = None
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._atexit_registered = False
        self._warned_metric = False
        self._remove_stale_temp_files()

    def __repr__(self) -> str:
        return (f"Checkpointer({str(self.run_dir)!r}, keep_last={self.keep_last}, best_metric={self.best_metric!r}, "
                f"mode={self.mode!r}, async_save={self.async_save})")

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- listing and verification
    def _names(self) -> list[str]:
        """Numbered checkpoint file names, oldest first (by step, then epoch)."""
        try:
            names = [n for n in os.listdir(self.directory) if _NUMBERED.match(n)]
        except FileNotFoundError:
            return []
        except OSError as e:
            raise CheckpointError(f"cannot list '{self.directory}': {e.strerror}") from e
        return sorted(names, key=_numbered_key)  # type: ignore[arg-type,return-value]

    def verify(self, path: str | os.PathLike[str]) -> str | None:
        """Why ``path`` is not a complete checkpoint (one line), or None if it is.

        A numbered checkpoint is checked against its manifest (size, sha256 of the zip
        directory) and the CRC32 of every record; ``last.pt``
        / ``best.pt`` through the numbered file they link to; any other file by the CRCs of
        its zip records.

        >>> import tempfile, torch
        >>> from finetune.checkpoint import Checkpointer
        >>> ckpt = Checkpointer(tempfile.mkdtemp())
        >>> path = ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": 1})
        >>> ckpt.verify(path) is None, ckpt.verify(path.with_name("last.pt")) is None
        (True, True)
        >>> _ = path.write_bytes(path.read_bytes()[:-10])
        >>> ckpt.verify(path)  # doctest: +ELLIPSIS
        'truncated: ... bytes'
        """
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            return "no such file"
        except OSError as e:
            return f"cannot read: {e.strerror}"
        manifest = _manifest_path(path)
        if manifest is not None and (manifest.exists() or self._is_ours(path)):
            return self._verify_against(path, manifest, st)
        twin = self._twin(path, st)
        if twin is not None:
            return self.verify(twin)
        return _check_zip(path)

    def _is_ours(self, path: Path) -> bool:
        try:
            return path.parent.resolve() == self.directory.resolve()
        except OSError:
            return False

    def _twin(self, path: Path, st: os.stat_result) -> Path | None:
        """The numbered checkpoint that ``path`` is a hard link of, if any."""
        if st.st_nlink < 2:
            return None
        for name in self._names_in(path.parent):
            other = path.parent / name
            try:
                o = other.stat()
            except OSError:
                continue
            if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino) and other.name != path.name:
                return other
        return None

    def _names_in(self, directory: Path) -> list[str]:
        try:
            return [n for n in os.listdir(directory) if _NUMBERED.match(n)]
        except OSError:
            return []

    def _verify_against(self, path: Path, manifest: Path, st: os.stat_result) -> str | None:
        try:
            mst = manifest.stat()
        except FileNotFoundError:
            return "incomplete: no manifest (the save did not finish)"
        except OSError as e:
            return f"manifest unreadable: {e.strerror}"
        key = (st.st_size, st.st_mtime_ns, st.st_ino, mst.st_mtime_ns, mst.st_size)
        cached = self._verified.get(str(path))
        if cached is not None and cached[0] == key:
            return cached[1]
        reason = self._compare(path, manifest, st.st_size)
        self._verified[str(path)] = (key, reason)
        return reason

    @staticmethod
    def _compare(path: Path, manifest: Path, size: int) -> str | None:
        try:
            m = _read_manifest(manifest)
            expected = int(m["bytes"])
            str(m["tail_sha256"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"manifest '{manifest.name}' unreadable: {_first_line(e)}"
        if m.get("file") != path.name:
            return f"manifest '{manifest.name}' describes {m.get('file')!r}"
        if size < expected:
            return f"truncated: {size} of {expected} bytes"
        if size > expected:
            return f"{size} bytes where the manifest says {expected}: the file was changed"
        try:
            actual = _fingerprint(path, full="sha256" in m)
        except OSError as e:
            return f"cannot read: {e.strerror}"
        if actual["tail_sha256"] != m["tail_sha256"] or actual.get("sha256") != m.get("sha256"):
            return "checksum mismatch: the file is corrupt or not the one its manifest describes"
        return None if "sha256" in m else _check_zip(path)

    def checkpoints(self) -> list[Path]:
        """Numbered checkpoints that have a manifest, oldest first (not hashed; see :meth:`verify`).

        >>> import tempfile, torch
        >>> from finetune.checkpoint import Checkpointer
        >>> ckpt = Checkpointer(tempfile.mkdtemp(), keep_last=2)
        >>> for step in (1, 2, 3):
        ...     _ = ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": step})
        >>> [p.name for p in ckpt.checkpoints()]                          # the oldest one was pruned
        ['ckpt-e0000-s00000002.pt', 'ckpt-e0000-s00000003.pt']
        """
        return [self.directory / n for n in self._names() if (self.directory / n).with_suffix(".json").exists()]

    def latest(self) -> Path | None:
        """The newest complete checkpoint; newer truncated/corrupt ones are skipped and listed in ``skipped``.

        >>> import tempfile, warnings, torch
        >>> from finetune.checkpoint import Checkpointer
        >>> ckpt = Checkpointer(tempfile.mkdtemp())
        >>> ckpt.latest() is None                                          # nothing saved yet
        True
        >>> for step in (1, 2):
        ...     path = ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": step})
        >>> _ = path.write_bytes(path.read_bytes()[:100])                 # the newest one truncated
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")                            # (a CheckpointWarning names it)
        ...     ckpt.latest().name
        'ckpt-e0000-s00000001.pt'
        >>> [(p.name, reason.split(":")[0]) for p, reason in ckpt.skipped]
        [('ckpt-e0000-s00000002.pt', 'truncated')]
        """
        self._join()
        self.skipped = []
        for name in reversed(self._names()):
            path = self.directory / name
            reason = self.verify(path)
            if reason is None:
                return path
            self.skipped.append((path, reason))
            warnings.warn(f"skipping checkpoint '{path}': {reason}", CheckpointWarning, stacklevel=2)
        # a save of the same epoch and step again, killed between replacing the file and writing its
        # manifest, leaves no complete numbered file; last.pt still holds the one it replaced
        last = self.directory / LAST
        if self.skipped and last.exists() and self.verify(last) is None:
            return last
        return None

    def set_aside_after(self, step: int) -> Path | None:
        """Move the checkpoints saved after global step ``step`` (with their manifests, and
        ``last.pt``/``best.pt`` where they are links to them) into ``checkpoints/superseded-<time>/``.

        Resuming from an earlier checkpoint starts a new line of the run: the newer files
        belong to the abandoned one, and ``latest()`` (``--resume auto``) or pruning must not
        mix the two. Nothing is deleted. Returns the folder, or None when nothing was newer.

        >>> from finetune import Checkpointer
        >>> import tempfile, torch
        >>> ckpt = Checkpointer(tempfile.mkdtemp())
        >>> for step in (1, 2, 3):
        ...     _ = ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": step})
        >>> folder = ckpt.set_aside_after(1)
        >>> sorted(p.name for p in folder.iterdir() if p.suffix == ".pt")
        ['ckpt-e0000-s00000002.pt', 'ckpt-e0000-s00000003.pt', 'last.pt']
        >>> ckpt.load()["step"], torch.load(ckpt.directory / "last.pt", weights_only=True)["step"]
        (1, 1)
        """
        self._join()
        newer = [n for n in self._names() if _numbered_key(n)[0] > step]  # type: ignore[index]
        if not newer:
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        folder = self.directory / f"superseded-{stamp}"
        k = 1
        while folder.exists():
            k += 1
            folder = self.directory / f"superseded-{stamp}-{k}"
        try:
            folder.mkdir()
            moved: set[tuple[int, int]] = set()
            for name in reversed(newer):  # newest first: an interruption leaves the oldest of them
                path = self.directory / name
                st = path.stat()
                moved.add((st.st_dev, st.st_ino))
                manifest = path.with_suffix(".json")
                if manifest.exists():
                    os.replace(manifest, folder / manifest.name)
                os.replace(path, folder / name)
            for link in (LAST, BEST):
                path = self.directory / link
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    if (st.st_dev, st.st_ino) in moved:
                        os.replace(path, folder / link)
            remaining = self._names()
            if remaining and not (self.directory / LAST).exists():  # last.pt: the checkpoint resumed from
                _link_atomic(self.directory / remaining[-1], self.directory / LAST)
            _fsync_dir(folder)
            _fsync_dir(self.directory)
        except OSError as e:
            raise CheckpointError(f"cannot move the checkpoints newer than step {step} into '{folder}': "
                                  f"{e.strerror or e}") from e
        self._best = None
        self._verified.clear()
        return folder

    def best(self) -> Path | None:
        """``best.pt`` if it holds the best checkpoint, else the numbered best one, else None.

        >>> import tempfile, torch
        >>> from finetune.checkpoint import Checkpointer
        >>> ckpt = Checkpointer(tempfile.mkdtemp(), best_metric="val_loss", mode="min")
        >>> for step, loss in [(1, 0.9), (2, 0.4), (3, 0.6)]:
        ...     _ = ckpt.save({"w": torch.zeros(1), "epoch": step - 1, "step": step}, metrics={"val_loss": loss})
        >>> ckpt.best().name, ckpt.load(ckpt.best())["step"]
        ('best.pt', 2)
        """
        self._join()
        value, name = self._best_state()
        best = self.directory / BEST
        if name is None:
            return best if best.exists() and self.verify(best) is None else None
        numbered = self.directory / name
        if self.verify(numbered) is not None:
            return best if best.exists() and self.verify(best) is None else None
        if best.exists() and self._same_content(best, numbered) and self.verify(best) is None:
            return best
        return numbered

    @property
    def best_value(self) -> float | None:
        """The best ``metrics[best_metric]`` saved so far in this run (also across restarts).

        >>> import tempfile, torch
        >>> from finetune.checkpoint import Checkpointer
        >>> ckpt = Checkpointer(tempfile.mkdtemp(), best_metric="val_loss", mode="min")
        >>> ckpt.best_value is None
        True
        >>> for step, loss in [(1, 0.9), (2, 0.4), (3, 0.6)]:
        ...     _ = ckpt.save({"w": torch.zeros(1), "epoch": step - 1, "step": step}, metrics={"val_loss": loss})
        >>> ckpt.best_value, Checkpointer(ckpt.run_dir, best_metric="val_loss", mode="min").best_value  # a restart
        (0.4, 0.4)
        """
        self._join()
        return self._best_state()[0]

    def _same_content(self, a: Path, b: Path) -> bool:
        try:
            if os.path.samefile(a, b):
                return True
            manifest = _read_manifest(b.with_suffix(".json"))
            actual = _fingerprint(a, full=False)
            return (actual["bytes"], actual["tail_sha256"]) == (manifest["bytes"], manifest["tail_sha256"])
        except (OSError, ValueError, KeyError):
            return False

    def _best_state(self) -> tuple[float | None, str | None]:
        """(best value, numbered file) as recorded by the newest complete checkpoint's manifest.

        Read again when a newer numbered file appeared than the one seen last (another
        Checkpointer on the same directory saved), so that it is never taken for worse.
        """
        names = self._names()
        newest = names[-1] if names else None
        if self._best is None or newest != self._best_seen:
            self._best, self._best_seen, self._other_best = (None, None), newest, None
            for name in reversed(names):
                path = self.directory / name
                if self.verify(path) is not None:
                    continue
                try:
                    m = _read_manifest(path.with_suffix(".json"))
                except (OSError, ValueError):
                    continue
                if m.get("best_metric") == self.best_metric and m.get("mode") == self.mode:
                    self._best = (m.get("best_value"), m.get("best_file"))
                elif m.get("best_value") is not None:
                    self._other_best = (m.get("best_metric"), m.get("mode"), m.get("best_value"))
                break
        return self._best

    # ---- loading
    def load(self, path: str | os.PathLike[str] | None = None, map_location: Any = "cpu") -> dict[str, Any]:
        """Verify and load a checkpoint (default: :meth:`latest`) with ``torch.load(weights_only=True)``.

        Raises :class:`CheckpointError` with one line naming the file and what is wrong.

        >>> import tempfile, torch
        >>> from finetune.checkpoint import Checkpointer
        >>> ckpt = Checkpointer(tempfile.mkdtemp())
        >>> _ = ckpt.save({"model": torch.nn.Linear(2, 2), "epoch": 3, "step": 30})
        >>> state = ckpt.load()                                            # the latest
        >>> state["epoch"], state["step"], sorted(state["model"]), state["format"]
        (3, 30, ['bias', 'weight'], 'finetune-checkpoint')
        >>> ckpt.load(ckpt.directory / "best.pt")                          # no metrics were saved  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        finetune.errors.CheckpointError: checkpoint '...best.pt': no such file
        """
        self._join()
        if path is None:
            path = self.latest()
            if path is None:
                raise CheckpointError(f"no complete checkpoint in '{self.directory}': nothing to resume from "
                                      "(Checkpointer.latest() is None): start without resuming (no --resume)")
        path = Path(path)
        reason = self.verify(path)
        if reason is not None:
            raise CheckpointError(f"checkpoint '{path}': {reason}")
        return read_checkpoint(path, map_location)

    @staticmethod
    def read(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
        """Verify and load one checkpoint file, wherever it lies (``finetune eval --checkpoint``).

        >>> import tempfile, torch
        >>> from finetune.checkpoint import Checkpointer
        >>> path = Checkpointer(tempfile.mkdtemp()).save({"w": torch.ones(1), "epoch": 2, "step": 9})
        >>> Checkpointer.read(path)["epoch"], Checkpointer.read(path.with_name("last.pt"))["step"]
        (2, 9)
        """
        path = Path(path)
        return Checkpointer(path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent).load(
            path, map_location)

    # ---- saving
    def save(self, state: Mapping[str, Any] | None = None, *, metrics: Mapping[str, Any] | None = None,
             **fields: Any) -> Path:
        """Write ``state`` as the next checkpoint; returns its path (complete once save/wait returns).

        ``state`` needs int ``epoch`` and ``step``; modules, optimizers and objects with
        ``state_dict()`` are replaced by their state (a module by :func:`clean_state_dict`,
        an optimizer by :func:`optimizer_state_by_name` with ``state["model"]``). The file
        gets ``format``, ``format_version``, ``versions`` and ``saved_at``. ``best.pt`` is
        updated when ``metrics[best_metric]`` improves. The entries may also be given as
        keywords: ``save(model=net, optimizer=opt, epoch=1, step=100, metrics={...})``.

        >>> from finetune import Checkpointer
        >>> import tempfile, torch
        >>> ckpt = Checkpointer(tempfile.mkdtemp())
        >>> ckpt.save(model=torch.nn.Linear(2, 2), epoch=0, step=10, metrics={"val_top1": 0.5}).name
        'ckpt-e0000-s00000010.pt'
        """
        if fields:
            state = {**(state or {}), **fields}
        if state is None:
            raise CheckpointError("save() needs the state to write: save({'model': ..., 'epoch': ..., 'step': ...})")
        self._raise_pending()
        self._best_state()
        if self._other_best is not None:  # its best.pt would be replaced and its best checkpoint pruned
            metric, mode, value = self._other_best
            raise CheckpointError(f"'{self.directory}' keeps its best checkpoint by {metric!r} ({mode}, best {value}), "
                                  f"this Checkpointer by {self.best_metric!r} ({self.mode}): pass best_metric={metric!r}, "
                                  f"mode={mode!r}, or save into another run directory")
        prepared = _prepare(state)
        name = f"ckpt-e{prepared['epoch']:04d}-s{prepared['step']:08d}.pt"
        if any(_numbered_key(n)[0] > prepared["step"] and self.verify(self.directory / n) is None  # type: ignore[index]
               for n in self._names()):
            # an earlier step than the directory's newest complete checkpoint: a new line of the run (a
            # fresh start in an old directory, a loop that resumed from an older file); the newer files
            # would stay latest() and be resumed from, so they are moved aside (nothing is deleted)
            folder = self.set_aside_after(prepared["step"])
            warnings.warn(f"saving step {prepared['step']} in '{self.directory}', which holds checkpoints of later "
                          f"steps: those were moved to '{folder}' ('step' counts the run's optimizer steps: it never goes "
                          "down within a run, a per-epoch counter does)", CheckpointWarning, stacklevel=2)
        self._best_state()
        if self.async_save:
            payload, ready = self._snapshot_async(prepared)
        else:
            seen: set[int] = set()
            payload, ready = _plain_state(prepared, lambda t, _: _own_cpu_tensor(t, seen)), None
        payload.update(format=FORMAT, format_version=FORMAT_VERSION, versions=dict(_versions()),
                       saved_at=datetime.now(UTC).isoformat(timespec="milliseconds"))
        plain_metrics = _plain_metrics(metrics)
        if plain_metrics and self.best_metric not in plain_metrics and not self._warned_metric:
            self._warned_metric = True  # e.g. best_metric='val_acc' with metrics={'val_top1': ...}: no best.pt ever
            warnings.warn(f"metrics have no {self.best_metric!r} (only {', '.join(map(repr, plain_metrics))}): "
                          f"best.pt is not updated; pass best_metric= one of them", CheckpointWarning, stacklevel=2)
        if not self.async_save:
            self._commit(name, payload, plain_metrics)
            return self.directory / name
        if not self._atexit_registered:
            atexit.register(_report_at_exit, weakref.ref(self))
            self._atexit_registered = True
        pending = _Pending(name)
        pending.thread = threading.Thread(target=self._commit_in_background, args=(pending, payload, plain_metrics, ready),
                                          name=f"finetune-checkpoint {name}", daemon=False)
        self._pending = pending
        pending.thread.start()
        return self.directory / name

    def _snapshot_async(self, state: dict[str, Any]) -> tuple[dict[str, Any], list[torch.cuda.Event]]:
        """Copy every tensor into reused host buffers (pinned on CUDA); device copies are only queued."""
        buffers: dict[tuple, torch.Tensor] = {}
        copies: dict[torch.device, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

        def buffer_for(t: torch.Tensor, path: tuple) -> torch.Tensor:
            t = t.detach()
            key = (path, tuple(t.shape), t.dtype, t.device.type)
            buf = self._buffers.get(key)
            if buf is None:
                buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.is_cuda)
            buffers[key] = buf
            dsts, srcs = copies.setdefault(t.device, ([], []))
            dsts.append(buf)
            srcs.append(t)
            return buf

        payload = _plain_state(state, buffer_for)
        self._buffers = buffers
        events = []
        for device, (dsts, srcs) in copies.items():
            if device.type == "cuda":
                _copy_all(dsts, srcs, non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(device))
                events.append(event)
            else:
                with _one_thread():
                    _copy_all(dsts, srcs, non_blocking=False)
        return payload, events

    def _commit_in_background(self, pending: _Pending, payload: dict[str, Any], metrics: dict[str, Any],
                              ready: list[torch.cuda.Event]) -> None:
        try:
            for event in ready:
                event.synchronize()
            self._commit(pending.name, payload, metrics)
        except BaseException as e:  # kept for the next save()/wait()/close(), never lost
            pending.error = e

    def _commit(self, name: str, payload: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Write data, then manifest, then last/best, then prune: each step durable before the next."""
        try:
            new_dir = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
            if new_dir:
                _fsync_dir(self.directory.parent)
        except OSError as e:
            raise _write_error("checkpoint directory", self.directory, e) from e
        final = self.directory / name
        manifest_path = final.with_suffix(".json")
        value = metrics.get(self.best_metric)
        best_value, best_file = self._best_state()
        improved = self._improves(value, best_value)
        if improved:
            best_value, best_file = float(value), name  # type: ignore[arg-type]
        elif best_file == name:  # the best file is saved over (the same epoch and step again): best.pt keeps it
            best_file = None
        try:
            _write_atomic(final, lambda w: _serialize(payload, w))
        except Exception as e:  # nothing was replaced (OSError, or torch.save's RuntimeError)
            raise _write_error("checkpoint", final, e) from e
        try:
            fingerprint = _fingerprint(final, full=not _torch_writes_crc32())
        except OSError as e:
            _remove_quietly(final)  # without its manifest it would only be skipped later
            raise _write_error("checkpoint", final, e) from e
        manifest = {"format": MANIFEST_FORMAT, "format_version": FORMAT_VERSION, "file": name, **fingerprint,
                    "epoch": payload["epoch"], "step": payload["step"], "saved_at": payload["saved_at"],
                    "metrics": metrics, "best_metric": self.best_metric, "mode": self.mode,
                    "best_value": best_value, "best_file": best_file, "is_best": improved}
        try:
            _write_atomic(manifest_path, lambda w: w.write(json.dumps(manifest, indent=1).encode()))
        except OSError as e:
            _remove_quietly(final)  # without its manifest it would only be skipped later
            raise _write_error("checkpoint manifest", manifest_path, e) from e
        self._best = (best_value, best_file)  # the checkpoint is complete and durable from here on
        names = self._names()
        self._best_seen = names[-1] if names else name
        try:
            _link_atomic(final, self.directory / LAST)
            if improved:
                _link_atomic(final, self.directory / BEST)
            elif best_file is not None:
                self._repair_best(best_file)
        except OSError as e:
            raise _write_error("last/best link of", final, e) from e
        self._prune(newest=name)

    def _repair_best(self, best_file: str) -> None:
        """Point ``best.pt`` at the best numbered checkpoint again if it is not that file (deleted, or
        damaged together with a newer best that a resume skipped)."""
        numbered, best = self.directory / best_file, self.directory / BEST
        if self.verify(numbered) is not None or (best.exists() and self._same_content(best, numbered)):
            return
        _link_atomic(numbered, best)

    def _improves(self, value: Any, best: float | None) -> bool:
        if type(value) not in (int, float) or not math.isfinite(value):
            return False
        return best is None or (value > best if self.mode == "max" else value < best)

    def _prune(self, newest: str) -> None:
        """Delete numbered checkpoints older than ``newest`` beyond the last ``keep_last``; never the best."""
        names = self._names()
        complete = [n for n in names if (self.directory / n).with_suffix(".json").exists()]
        if self.keep_last is None:  # keep every checkpoint: only orphaned manifests are litter
            keep = set(names)
        else:
            keep = set(complete[-self.keep_last:]) | {self._best_state()[1]}
        limit = _numbered_key(newest)
        doomed = [n for n in names if n not in keep and _numbered_key(n) < limit]  # type: ignore[operator]
        present = set(names)
        orphans = [n for n in os.listdir(self.directory)
                   if _MANIFEST.match(n) and n[:-5] + ".pt" not in present]
        for name in doomed:
            for path in (self.directory / name, (self.directory / name).with_suffix(".json")):
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    warnings.warn(f"cannot delete old checkpoint '{path}': {e.strerror}", CheckpointWarning, stacklevel=2)
        for name in orphans:
            _remove_quietly(self.directory / name)
        if doomed or orphans:
            try:  # the new checkpoint is complete and durable already: a failure here loses nothing
                _fsync_dir(self.directory)
            except OSError as e:
                warnings.warn(f"cannot sync '{self.directory}' after deleting old checkpoints: {e.strerror or e}",
                              CheckpointWarning, stacklevel=2)

    def _remove_stale_temp_files(self) -> None:
        """Temp files of writers that died (kill -9) are litter: remove them.

        Also those that carry this process's id but are older than it and not being written
        by it: a container restarted after a kill often gives the trainer the same pid again.
        """
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            m = _TEMP.match(name)
            if not m:
                continue
            path = self.directory / name
            if int(m.group(1)) != os.getpid():
                if not pid_alive(int(m.group(1))):
                    _remove_quietly(path)
                continue
            try:
                older = path.stat().st_mtime_ns < _STARTED_NS - 2_000_000_000  # (coarse file system clocks)
            except OSError:
                continue
            if older and str(path) not in _WRITING:
                _remove_quietly(path)

    # ---- the background write
    def _join(self) -> None:
        if self._pending is not None and self._pending.thread is not None:
            self._pending.thread.join()

    def _raise_pending(self) -> None:
        """Wait for the write in flight; raise its error (once) as CheckpointError."""
        pending = self._pending
        if pending is None:
            return
        if pending.thread is not None:
            pending.thread.join()
        self._pending = None
        if pending.error is not None:
            e = pending.error
            message = str(e) if isinstance(e, CheckpointError) else f"{type(e).__name__}: {_first_line(e)}"
            raise CheckpointError(f"background save of '{self.directory / pending.name}' failed: {message}") from e

    def wait(self) -> None:
        """Block until the write in flight is durable; raise its error if it failed.

        >>> import tempfile, torch
        >>> from finetune.checkpoint import Checkpointer
        >>> ckpt = Checkpointer(tempfile.mkdtemp(), async_save=True)
        >>> path = ckpt.save({"w": torch.ones(1), "epoch": 0, "step": 1})   # written in the background
        >>> ckpt.wait(); ckpt.verify(path) is None
        True
        >>> ckpt.close()
        """
        self._raise_pending()

    def close(self) -> None:
        """Wait for the write in flight (raising its error) and free the host buffers. Reads still work.

        >>> import tempfile, torch
        >>> from finetune.checkpoint import Checkpointer
        >>> ckpt = Checkpointer(tempfile.mkdtemp(), async_save=True)
        >>> path = ckpt.save({"w": torch.ones(1), "epoch": 0, "step": 1})   # written in the background
        >>> ckpt.close()                                                   # durable from here on
        >>> ckpt.verify(path) is None, ckpt.load()["step"]
        (True, 1)
        """
        try:
            self._raise_pending()
        finally:
            self._buffers = {}


def _report_at_exit(ref: weakref.ref[Checkpointer]) -> None:
    """At interpreter exit, an async write error nobody asked for is printed, not lost."""
    ckpt = ref()
    if ckpt is None or ckpt._pending is None:
        return
    try:
        ckpt._raise_pending()
    except CheckpointError as e:
        print(f"finetune: error: {e}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- SIGTERM / SIGINT
def stop_message(run_dir: str | os.PathLike[str], epoch: int, step: int) -> str:
    """What to print after a graceful stop.

    >>> from finetune.checkpoint import stop_message
    >>> stop_message("runs/a b", 3, 120)
    "stopped at epoch 3 step 120; resume with: finetune train --out 'runs/a b' --resume auto"
    """
    return f"stopped at epoch {epoch} step {step}; resume with: finetune train --out {shlex.quote(str(run_dir))} --resume auto"


# a signal this soon after the first is the same stop delivered again, not a second request: a scheduler
# that signals every process of the job (systemd, Slurm) and torchrun, which passes its SIGTERM on to each
# process's group, reach a training process (and its data workers) twice
SAME_STOP_S = 5.0


class GracefulExit:
    """While active, SIGTERM / SIGINT only set ``stop_requested``; a second one acts as usual.

    The loop checks ``stop_requested`` after each step, saves, prints
    :func:`stop_message` and returns (exit status 0). The first signal restores the
    previous handlers, so a second Ctrl-C raises KeyboardInterrupt and a second SIGTERM
    terminates, but a SIGTERM within ``same_stop_s`` (:data:`SAME_STOP_S`) of the first is
    that stop delivered again and changes nothing: a scheduler that signals every process of
    the job and torchrun, which passes its own SIGTERM on, reach a training process twice.
    Outside the main thread nothing is installed (``installed`` is False).

    >>> import os
    >>> import signal
    >>> from finetune.checkpoint import GracefulExit
    >>> with GracefulExit() as stop:
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     stop.stop_requested, stop.signal_name
    (True, 'SIGTERM')
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT), *,
                 announce: bool = True, same_stop_s: float = SAME_STOP_S) -> None:
        self.signals = signals
        self.announce = announce
        self.same_stop_s = same_stop_s
        self._first_at = 0.0
        self.stop_requested = False
        self.signal_name: str | None = None
        self.installed = False
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> GracefulExit:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.getsignal(s)
                signal.signal(s, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous and self._within_same_stop():
            # stopped by a SIGTERM a moment ago: its repeat may still be on its way (torchrun's follows the
            # scheduler's), and would end this process while it tears down; the handler stays until the
            # next SIGTERM, which it ignores within the window and passes on as usual after it
            return
        self._restore()

    def _within_same_stop(self) -> bool:
        return self.signal_name == "SIGTERM" and time.monotonic() - self._first_at < self.same_stop_s

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            # a data worker forked while this was installed, hit by a signal sent to the whole process
            # group (Ctrl-C, a scheduler's SIGTERM): it keeps working, silently, so that the main
            # process can finish its step and save; the main process then stops it
            self._restore()
            if self.stop_requested:  # forked from a process that kept this handler after its stop (a
                signal.raise_signal(signum)  # library's later multiprocessing): as usual, terminate() ends it
            return
        if self.stop_requested:  # the SIGTERM handler kept after a SIGTERM (below)
            if self._within_same_stop():
                return  # the same stop, delivered again
            self._restore()
            signal.raise_signal(signum)  # a second request: acts as usual
            return
        self.stop_requested = True
        self.signal_name = signal.Signals(signum).name
        self._first_at = time.monotonic()
        # a second Ctrl-C acts at once; after a SIGTERM, a second SIGTERM only once same_stop_s have passed
        kept = {s: h for s, h in self._previous.items() if s == signum == signal.SIGTERM}
        self._previous = {s: h for s, h in self._previous.items() if s not in kept}
        self._restore()
        self._previous = kept
        # os.write: safe even if the signal arrived in the middle of a print; under torchrun process 0 speaks
        if self.announce and os.environ.get("RANK", "0") in ("", "0"):
            again = "send it again" if not kept else f"send it again after {self.same_stop_s:g} s"
            os.write(2, f"\nfinetune: {self.signal_name}: finishing the current step, then saving a checkpoint "
                        f"({again} to stop at once)\n".encode())

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self.installed = False


"""The training loop: one readable function, every knob in :class:`TrainConfig`.

config -> data + model -> loop -> checkpoints/logs, in that order and no other.

>>> import os, tempfile
>>> os.environ.setdefault("FINETUNE_CACHE", tempfile.mkdtemp())  # doctest: +ELLIPSIS
'...'
>>> from finetune.config import TrainConfig
>>> from finetune.data.shapes import make_shapes
>>> data = make_shapes(tempfile.mkdtemp(), per_class=4, size=32)
>>> cfg = TrainConfig(data=str(data), model="resnet18", img_size=32, epochs=1, batch_size=8,
...                   workers="0", out=tempfile.mkdtemp())
>>> result = train(cfg, quiet=True)
>>> {"best.pt", "last.pt"} <= {p.name for p in (result.run_dir / "checkpoints").glob("*.pt")}
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from finetune.checkpoint import (
    DEPLOYMENT_FORMAT,
    Checkpointer,
    GracefulExit,
    capture_rng_state,
    deployment_metadata,
    load_model_state,
    load_optimizer_state_by_name,
    optimizer_state_by_name,
    restore_rng_state,
    settings_metadata,
)
from finetune.config import TrainConfig, check_run_dir, parse_unfreeze, save_config
from finetune.data.decode import DECODE_ERRORS, BadFile, bad_reason, decode_eval
from finetune.data.loader import Loader, build_loader
from finetune.data.normalize import Normalizer
from finetune.data.samples import (
    TRAIN_SPLIT_NAMES,
    Samples,
    eval_samples,
    find_splits,
    split_dir,
    split_drawn_again,
    split_is_drawn,
)
from finetune.data.transforms import EVAL_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, eval_resize_side
from finetune.distributed import Distributed
from finetune.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DataWarning,
    FinetuneError,
    UnreadableImagesError,
    named,
    one_line,
)
from finetune.logging import RunLog, progress, summary_writer_class
from finetune.mixing import mix_batch
from finetune.models import (
    aux_head_names,
    check_input_size,
    converted_architecture,
    count_parameters,
    create_model,
    head_names,
    logits_of,
    modes_kept,
    normalization,
    pretrained_input_size,
    weights_architecture,
)


def warn(message: str) -> None:
    """Print a one-line ``finetune: warning:`` message on stderr.

    >>> import contextlib, io
    >>> from finetune.train import warn
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     warn("3 images were skipped")
    >>> err.getvalue()
    'finetune: warning: 3 images were skipped\\n'

    Under torchrun only process 0 warns (the others would repeat it).
    """
    if os.environ.get("RANK", "0") not in ("", "0"):
        return
    print(f"finetune: warning: {one_line(message)}", file=sys.stderr, flush=True)


@dataclass
class TrainResult:
    """What :func:`train` returns: the run directory, the best validation accuracies and the history.

    >>> from pathlib import Path
    >>> from finetune.train import TrainResult
    >>> r = TrainResult(Path("runs/a"), best_top1=0.9, best_top5=1.0, best_epoch=3, history=[{"epoch": 0}])
    >>> r.best_top1, r.stopped_early
    (0.9, False)
    """

    run_dir: Path
    best_top1: float
    best_top5: float
    best_epoch: int
    history: list[dict[str, Any]]
    stopped_early: bool = False  # interrupted (signal, --max-steps): --resume auto continues
    early_stopped: bool = False  # --early-stop: val top-1 stopped improving
    rank: int = 0  # this process under torchrun (0: the one that wrote the run directory)


# --------------------------------------------------------------------------- set-up helpers
def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error.

    >>> import torch
    >>> from finetune.train import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    True
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{named('device', 'cuda')} was asked for but no CUDA device is available: use "
                          f"{named('device', 'cpu')}")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA ``device`` computes in bf16 natively: compute capability 8.0 on (Ampere), or ROCm.
    Older GPUs (T4, V100, P100) only emulate it, slower than fp32 (as most CPUs do). True where no CUDA
    device can be asked.

    >>> import torch
    >>> from finetune.train import native_bf16
    >>> native_bf16(torch.device("cuda")) == (not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] >= 8
    ...                                      or bool(torch.version.hip))
    True
    """
    if torch.version.hip or not torch.cuda.is_available():
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_amp(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 on CUDA by default (fp16, with its GradScaler, on GPUs without native bf16:
    T4, V100), none on CPU (where it is slower for training).

    >>> import torch
    >>> from finetune.train import resolve_amp
    >>> resolve_amp("auto", torch.device("cpu")), resolve_amp("auto", torch.device("cuda"))
    (None, torch.bfloat16)
    >>> resolve_amp("fp16", torch.device("cuda")), resolve_amp("off", torch.device("cuda"))
    (torch.float16, None)
    >>> resolve_amp("fp16", torch.device("cpu"))
    Traceback (most recent call last):
    finetune.errors.ConfigError: amp='fp16' (--amp fp16) needs a CUDA device (on CPU its gradients overflow): use amp='bf16' (--amp bf16) or amp='off' (--amp off)
    """
    if name == "off" or (name == "auto" and device.type != "cuda"):
        return None
    if name == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"{named('amp', 'fp16')} needs a CUDA device (on CPU its gradients overflow): use "
                              f"{named('amp', 'bf16')} or {named('amp', 'off')}")
        return torch.float16
    if name == "auto" and not native_bf16(device):  # emulated bf16: fp16's tensor cores instead, as timm's --amp
        return torch.float16
    return torch.bfloat16


def audit_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *,
               unscaled: bool = False) -> list[Any] | None:
    """:func:`finetune.audit` of one step's gradients, taken off fp16's loss scale first (``unscaled``:
    already done); None when the scaled gradients overflowed: the scaler skips that step (and lowers
    its scale), so it says nothing of the model: audit the next step instead.

    >>> import torch
    >>> model = torch.nn.Linear(2, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)
    >>> scaler.scale(model(torch.full((1, 2), 1e20)).sum()).backward()  # gradients overflow to inf
    >>> print(audit_step(model, opt, scaler))
    None
    """
    from finetune.freeze import audit

    if scaler.is_enabled() and not unscaled:
        scaler.unscale_(optimizer)  # (scaler.step does not unscale again)
    findings = audit(model, optimizer)
    if scaler.is_enabled() and any(f.kind == "nonfinite_grad" for f in findings):
        return None
    return findings


def resolve_data(data: str, val_split: float, seed: int) -> tuple[Samples, Samples]:
    """(train, val) samples of ``--data``: the built-in ``shapes`` (generated once) or a path.

    >>> import tempfile
    >>> from finetune import make_shapes
    >>> from finetune.train import resolve_data
    >>> train, val = resolve_data(str(make_shapes(tempfile.mkdtemp(), per_class=2, val_per_class=1, size=32)), 0.1, 0)
    >>> len(train), len(val), train.classes[:2]
    (16, 8, ('circle', 'cross'))
    """
    if data == "shapes":
        from finetune.data.shapes import shapes_root

        if Path("shapes").is_dir():  # e.g. `finetune make-shapes shapes` here, then `--data shapes`
            warn("--data shapes is the built-in dataset, not the folder 'shapes' here: "
                 "give --data ./shapes to train on that folder")
        return find_splits(shapes_root(), val_split=val_split, seed=seed)
    return find_splits(data, val_split=val_split, seed=seed)


def warn_unused_val_split(data: str, val_split: float) -> None:
    """Warn when ``--val-split`` is not the default but ``data`` has its own validation split (``train/`` and
    ``val/`` folders, a CSV's ``val`` rows), which is used instead: the fraction is not taken in silence.

    >>> import contextlib, io, tempfile
    >>> from finetune import make_shapes
    >>> root = str(make_shapes(tempfile.mkdtemp(), per_class=1, val_per_class=1, size=16))
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     warn_unused_val_split(root, 0.3); warn_unused_val_split(root, 0.1)
    >>> err.getvalue().count("warning"), "--val-split 0.3 is not used" in err.getvalue()
    (1, True)
    """
    from finetune.data.samples import split_is_drawn

    if val_split == TrainConfig.val_split:
        return
    path = Path(data)
    if data == "shapes":
        from finetune.data.shapes import shapes_root

        path = shapes_root()
    if not split_is_drawn(path):
        where = "its own val/ folder" if path.is_dir() else "the rows its split column marks 'val'"
        warn(f"--val-split {val_split:g} is not used: '{data}' has a validation split of its own ({where}), "
             "which is what validates; leave --val-split out, or give data without one")


@contextlib.contextmanager
def hold_run_dir(run_dir: Path):  # type: ignore[no-untyped-def]
    """Hold an exclusive ``flock`` on the run directory while a run writes it: a second ``finetune train``
    with the same ``--out`` is refused instead of mixing its checkpoints, metrics and TensorBoard events
    into the first one's. Nothing is written for it; the kernel drops the lock when the process dies
    (kill -9 too).

    >>> import pathlib, tempfile
    >>> from finetune.train import hold_run_dir
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "runs" / "run"
    >>> with hold_run_dir(run):
    ...     with hold_run_dir(run): pass  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.ConfigError: out (--out) '...run' is in use by another finetune process: wait for it to end, or give another out (--out)
    >>> run.exists(), run.parent.exists()  # made for the run (its parent too) and left empty: removed again
    (False, False)
    """
    try:
        import fcntl
    except ImportError:  # (not POSIX: no lock)
        yield
        return
    created = list(itertools.takewhile(lambda p: not p.exists(), [run_dir, *run_dir.parents]))
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    _LOCK_FDS.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{named('out')} '{run_dir}' is in use by another finetune process: wait for it to "
                              f"end, or give another {named('out')}") from None
        try:
            yield
        finally:
            for made in created:  # nothing written (setup failed): leave no empty run, nor the folders made for it
                try:
                    made.rmdir()
                except OSError:  # (not empty)
                    break
    finally:
        _LOCK_FDS.discard(fd)
        os.close(fd)


#: the run-directory locks this process holds. A flock belongs to the open file: forked children
#: (DataLoader workers) share it and would hold it after a kill -9 of this process until they notice
#: and exit, so they close their copies at once (closing a copy does not unlock the parent's)
_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    while _LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(_LOCK_FDS.pop())


if hasattr(os, "register_at_fork"):  # (POSIX)
    os.register_at_fork(after_in_child=_close_inherited_locks)


def default_run_dir(cfg: TrainConfig) -> Path:
    """``runs/<model>-<data>-<date>-<time>``, where a run goes without ``--out``.

    >>> from finetune import TrainConfig
    >>> from finetune.train import default_run_dir
    >>> default_run_dir(TrainConfig(data="photos/", model="timm:vit_small"))  # doctest: +ELLIPSIS
    PosixPath('runs/timm-vit_small-photos-...-...')
    """
    data_name = Path(cfg.data).stem or "data"
    model_name = cfg.model.replace(":", "-").replace("/", "-")
    return Path("runs") / f"{model_name}-{data_name}-{datetime.now():%Y%m%d-%H%M%S}"


def claim_default_run_dir(hold: contextlib.ExitStack, base: Path) -> Path:
    """Hold the default run directory ``base``, or ``base-2``, ``base-3``, … when it is in use or holds a
    run: two runs without ``--out`` started in the same second (a loop of seeds run with ``&``) each get
    their own directory instead of the second being refused.

    >>> import contextlib, pathlib, tempfile
    >>> from finetune.train import claim_default_run_dir
    >>> base = pathlib.Path(tempfile.mkdtemp()) / "runs" / "resnet18-photos-20261128-152846"
    >>> with contextlib.ExitStack() as a, contextlib.ExitStack() as b:
    ...     claim_default_run_dir(a, base).name, claim_default_run_dir(b, base).name
    ('resnet18-photos-20261128-152846', 'resnet18-photos-20261128-152846-2')
    """
    for n in range(1, 1000):
        run_dir = base if n == 1 else base.with_name(f"{base.name}-{n}")
        if run_dir.is_dir() and any(run_dir.iterdir()):  # an earlier run's
            continue
        try:
            hold.enter_context(hold_run_dir(run_dir))
        except ConfigError:  # in use by a run started in the same second
            continue
        return run_dir
    raise ConfigError(f"no free run directory next to '{base}': give one with {named('out')}")


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup then cosine decay to zero: the learning-rate factor of optimizer step ``step``.

    A pure function of the step, so resuming needs no scheduler state and
    parameter groups added later (gradual unfreezing) follow the same curve.

    >>> [round(lr_factor(s, 10, 2), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's lr = its base lr (lr x its multiplier) x ``factor``.

    >>> import torch
    >>> from finetune.train import set_lr
    >>> opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1},
    ...                        {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.01}])
    >>> set_lr(opt, 0.5); [g["lr"] for g in opt.param_groups]
    [0.05, 0.005]
    >>> set_lr(opt, 1.0); [g["lr"] for g in opt.param_groups]
    [0.1, 0.01]
    """
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def class_weights(labels: Any, classes: Sequence[str], kind: str) -> torch.Tensor | None:
    """Per-class weights of the training loss (``--class-weights``): None for ``"none"``; for
    ``"balanced"``, ``n / (classes x count_c)`` (scikit-learn's "balanced"), so that every class
    weighs in the loss as if each had the same number of images (all 1.0 when they have).

    >>> [round(w, 4) for w in class_weights([0, 0, 0, 1], ("cat", "dog"), "balanced").tolist()]
    [0.6667, 2.0]
    >>> class_weights([0, 1], ("cat", "dog"), "balanced").tolist(), class_weights([0, 1], ("cat", "dog"), "none")
    ([1.0, 1.0], None)
    >>> class_weights([0, 0], ("cat", "dog"), "balanced")
    Traceback (most recent call last):
    finetune.errors.DataError: class_weights='balanced' (--class-weights balanced): class 'dog' has no training images (a weight of n / 0): drop the class or use class_weights='none' (--class-weights none)
    """
    if kind == "none":
        return None
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64), minlength=len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(f"{named('class_weights', kind)}: class{'es' if len(empty) > 1 else ''} "
                        f"{', '.join(repr(c) for c in empty[:5])}{' …' if len(empty) > 5 else ''} "
                        f"{'have' if len(empty) > 1 else 'has'} no training images (a weight of n / 0): drop "
                        f"the class or use {named('class_weights', 'none')}")
    return (int(counts.sum()) / (len(classes) * counts.double())).float()


def readable_labels(samples: Samples, kind: str) -> Any:
    """The training labels that ``--class-weights`` counts: those of images whose header reads (the
    loader skips the others, so they must not weigh in n / count_c). A class whose every image is
    unreadable is an error (it would get a weight and train on nothing). A file whose header reads
    but whose data is damaged is still counted (only decoding it all would tell: ``--strict-data``).

    >>> import tempfile
    >>> from PIL import Image
    >>> from finetune.data.samples import Samples
    >>> d = tempfile.mkdtemp(); Image.new("RGB", (8, 8)).save(f"{d}/a.jpg"); _ = open(f"{d}/b.jpg", "wb").write(b"no")
    >>> readable_labels(Samples.from_lists([f"{d}/a.jpg", f"{d}/b.jpg", f"{d}/a.jpg"], [0, 1, 1], ["cat", "dog"]),
    ...                 "balanced").tolist()
    [0, 1]
    """
    import numpy as np

    from finetune.data.decode import image_size

    labels = np.asarray(samples.labels, dtype=np.int64)
    keep = np.ones(len(labels), dtype=bool)
    example: dict[int, tuple[str, str]] = {}
    for i in range(len(samples)):
        try:
            image_size(samples.path(i))
        except DECODE_ERRORS as e:
            keep[i] = False
            example.setdefault(int(labels[i]), (samples.path(i), bad_reason(e)))
    for c, (path, reason) in example.items():
        if not keep[labels == c].any():
            raise DataError(f"{named('class_weights', kind)}: no training image of class {samples.classes[c]!r} "
                            f"can be read ({int((labels == c).sum())} of them, e.g. '{path}': {reason}): fix or "
                            f"remove them, or use {named('class_weights', 'none')}")
    return labels[keep]


def make_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW over named parameter groups (see :func:`finetune.param_groups`).

    >>> import torch
    >>> from finetune import TrainConfig, param_groups
    >>> from finetune.train import make_optimizer
    >>> net = torch.nn.Linear(2, 2)
    >>> opt = make_optimizer(param_groups(net, 0.1), TrainConfig(optimizer="sgd", lr=0.1))
    >>> type(opt).__name__, opt.param_groups[0]["nesterov"], opt.param_groups[0]["base_lr"]
    ('SGD', True, 0.1)
    >>> type(make_optimizer(param_groups(net, 1e-3), TrainConfig(lr=1e-3))).__name__
    'AdamW'
    """
    for g in groups:
        g["base_lr"] = g["lr"]
    if cfg.optimizer == "sgd":
        make = functools.partial(torch.optim.SGD, groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    else:
        make = functools.partial(torch.optim.AdamW, groups, lr=cfg.lr)
    try:  # one fused kernel: 5x faster AdamW steps on CPU (benchmarks/bench_optimizer.py)
        return make(fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch or an unsupported device/dtype
        return make()


def check_some_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Refuse a set of ``--lr-mult`` that leaves every trainable parameter at learning rate 0 (``--lr 0``
    is refused already), unless ``--unfreeze`` adds parameters later.

    >>> import torch
    >>> from finetune import TrainConfig
    >>> check_some_lr(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0), TrainConfig())
    Traceback (most recent call last):
    ...
    finetune.errors.ConfigError: lr_mult (--lr-mult) sets the learning rate of every trainable parameter to 0: ...
    """
    later = [pattern for pattern, _ in parse_unfreeze(cfg.unfreeze, cfg.epochs)]
    if not later and all(g["lr"] == 0 for g in optimizer.param_groups if g["params"]):
        raise ConfigError(f"{named('lr_mult')} sets the learning rate of every trainable parameter to 0: nothing "
                          f"would train (freeze with {named('freeze')} instead, or give some of them a multiplier "
                          "above 0)")


def apply_freezing(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """--linear-probe / --train-only / --freeze, and the frozen parts of --unfreeze, then the BN policy;
    auxiliary heads (which the loss does not use) are frozen unless --train-only names them.
    Returns the names of the parameters that --unfreeze makes trainable later.

    >>> import torch
    >>> from finetune import TrainConfig
    >>> from finetune.train import apply_freezing
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 3))
    >>> apply_freezing(net, TrainConfig(linear_probe=True))
    []
    >>> [n for n, p in net.named_parameters() if p.requires_grad]
    ['2.weight', '2.bias']
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 3))
    >>> apply_freezing(net, TrainConfig(freeze=["0"], unfreeze=["1@3"]))
    ['1.weight', '1.bias']
    >>> [n for n, p in net.named_parameters() if p.requires_grad]
    ['2.weight', '2.bias']
    """
    from finetune.freeze import freeze, freeze_all_but, set_bn_policy

    if aux_head_names(model):  # GoogLeNet / Inception v3: the loss takes the main logits only (logits_of), so their
        freeze(model, *aux_head_names(model))  # aux heads would sit in the optimizer, never trained (--train-only may
        # still name them: the audit then says they get no gradient)
    if cfg.linear_probe:  # every head the output comes from (timm's distilled DeiT has two)
        freeze_all_but(model, *head_names(model))
    if cfg.train_only:
        freeze_all_but(model, *cfg.train_only)
    if cfg.freeze:
        freeze(model, *cfg.freeze)
    later = [name for pattern, _ in parse_unfreeze(cfg.unfreeze, cfg.epochs) for name in freeze(model, pattern)]
    set_bn_policy(model, cfg.bn)
    return later


def unfreeze_at(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> list[str]:
    """Make the ``--unfreeze PATTERN@E`` parameters with E == epoch + 1 trainable, as new optimizer groups.

    >>> import torch
    >>> from finetune import TrainConfig, param_groups
    >>> from finetune.train import apply_freezing, make_optimizer, unfreeze_at
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 3))
    >>> cfg = TrainConfig(epochs=3, lr=0.1, weight_decay=0.0, unfreeze=["0@2"])
    >>> _ = apply_freezing(net, cfg)
    >>> opt = make_optimizer(param_groups(net, cfg.lr), cfg)
    >>> unfreeze_at(net, opt, cfg, epoch=0), unfreeze_at(net, opt, cfg, epoch=1)
    ([], ['0.weight', '0.bias'])
    >>> len(opt.param_groups), net[0].weight.requires_grad
    (2, True)
    """
    from finetune.freeze import add_param_group_for, unfreeze

    names: list[str] = []
    for pattern, at in parse_unfreeze(cfg.unfreeze, cfg.epochs):
        if at != epoch + 1:
            continue
        new = unfreeze(model, pattern)
        groups = add_param_group_for(optimizer, model, new, cfg.lr, lr_mult=cfg.lr_mult or None,
                                     layer_decay=cfg.layer_decay, weight_decay=cfg.weight_decay,
                                     tag=f"unfreeze@{at}")
        for g in groups:
            g["base_lr"] = g["lr"]
        names += new
    return names


class FeatureBatches:
    """Batches of cached backbone features, in the same seeded order and with the same
    position bookkeeping as the image loader (for --linear-probe --cache-features).

    >>> import torch
    >>> from finetune.train import FeatureBatches
    >>> batches = FeatureBatches(torch.randn(10, 3), torch.arange(10), batch_size=4, seed=0)
    >>> batches.set_epoch(1)
    >>> len(batches), [y.tolist() for _, y in batches]     # full batches only, seeded order
    (2, [[6, 0, 8, 9], [5, 7, 2, 1]])
    >>> batches.set_epoch(1); it = iter(batches); _ = next(it); state = batches.state_dict()
    >>> state
    {'epoch': 1, 'position': 1, 'seed': 0}
    >>> resumed = FeatureBatches(batches.features, batches.labels, batch_size=4, seed=0)
    >>> resumed.load_state_dict(state)
    >>> torch.equal(next(iter(resumed))[1], next(it)[1])        # the batch an uninterrupted run gets
    True
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                 shard: tuple[int, int] = (0, 1)):
        self.features, self.labels = features, labels
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world = shard  # several processes: each takes its part of every epoch's order
        self.epoch = self.position = 0

    def __len__(self) -> int:
        if 0 < len(self.labels) < self.batch_size:  # as the image loader: fewer images than a batch are one batch
            return 1
        return -(-len(self.labels) // self.world) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:  # as the Loader refuses it: another order, another split
            raise DataError(f"loader seed {self.seed} differs from the checkpoint's {state['seed']}: "
                            f"resume with --seed {state['seed']}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self):  # type: ignore[no-untyped-def]
        from finetune.data.loader import epoch_order, shard_order

        order = torch.from_numpy(shard_order(epoch_order(len(self.labels), self.seed, self.epoch, True),
                                             self.rank, self.world, pad=True))
        while self.position < len(self):
            idx = order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
            self.position += 1
            yield self.features[idx], self.labels[idx]


# --------------------------------------------------------------------------- evaluation
def class_probabilities(model: nn.Module, images: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
    """Softmax probabilities (float32) of ``model`` on a batch; with ``tta`` (test-time
    augmentation), the mean of each image's and its mirror image's (the horizontal flip that
    training augments with), as fastai's ``tta`` averages predictions.

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[1].weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 4.0]]))
    >>> x = torch.tensor([[[[1.0, 0.0]]]])          # one 1x2 image; its mirror is [0, 1]
    >>> class_probabilities(net, x).argmax().item(), class_probabilities(net, x, tta=True).tolist()
    (0, [[0.5, 0.5]])
    """
    probs = logits_of(model(images)).float().softmax(dim=1)
    if tta:
        probs = (probs + logits_of(model(images.flip(-1))).float().softmax(dim=1)) / 2
    return probs


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, *, amp: torch.dtype | None = None, quiet: bool = True,
             ddp: Distributed | None = None, confusion: bool = False, tta: bool = False) -> dict[str, Any]:
    """Loss, top-1, top-k (k = min(5, classes)) and per-class accuracy over ``loader``.

    Accuracies are fractions in [0, 1] (``per_class``: None for a class without images; its
    image counts in ``per_class_images``). With ``confusion``, also ``confusion`` (rows: true
    class, columns: predicted, in class order; image counts) and ``most_confused`` (the
    off-diagonal pairs, most images first, as fastai's ``most_confused``). With ``ddp`` (several
    processes, each with its shard of the data) the counts are summed over the processes
    first: every process returns the whole split's numbers. With ``tta`` the predictions are the
    mean probabilities of each image and its mirror image (:func:`class_probabilities`), the loss
    their negative log-likelihood. The model is run in eval mode and every submodule is left in
    the mode it was in (a model in ``train()`` stays so: a training loop goes on training).

    >>> import tempfile, torch
    >>> from finetune import build_loader, evaluate, make_shapes
    >>> from finetune.data.samples import find_splits
    >>> _, val = find_splits(make_shapes(tempfile.mkdtemp(), per_class=1, val_per_class=1, size=32))
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 8))
    >>> with build_loader(val, train=False, img_size=32, batch_size=4, workers="0") as loader:
    ...     m = evaluate(model, loader)
    >>> m["images"], m["topk"], len(m["per_class"]), 0 <= m["top1"] <= m["top5"] <= 1
    (8, 5, 8, True)
    >>> with build_loader(val, train=False, img_size=32, batch_size=4, workers="0") as loader:
    ...     m = evaluate(model, loader, confusion=True)
    >>> sum(map(sum, m["confusion"])), sum(row[i] for i, row in enumerate(m["confusion"])) == round(8 * m["top1"])
    (8, True)
    >>> _ = model.train()
    >>> with build_loader(val, train=False, img_size=32, batch_size=4, workers="0") as loader:
    ...     _ = evaluate(model, loader)
    >>> model.training   # run in eval mode; each module is left in the mode it was in
    True
    """
    with modes_kept(model):
        model.eval()
        return _evaluate(model, loader, amp=amp, quiet=quiet, ddp=ddp, confusion=confusion, tta=tta)


def _evaluate(model: nn.Module, loader: Loader, *, amp: torch.dtype | None, quiet: bool, ddp: Distributed | None,
              confusion: bool, tta: bool) -> dict[str, Any]:
    """:func:`evaluate` of a model already in eval mode."""
    classes = loader.classes
    k = min(5, len(classes))
    loss_sum, n = 0.0, 0
    correct1 = correctk = 0
    per_class_correct = torch.zeros(len(classes), dtype=torch.int64)
    per_class_total = torch.zeros(len(classes), dtype=torch.int64)
    pairs: list[torch.Tensor] = []  # true * C + predicted, per image (a C x C count per batch: 800 MB at 10k classes)
    device = loader.device
    for images, labels in progress(loader, total=len(loader), desc="eval", quiet=quiet):
        if len(labels) == 0:  # (a shard's batch of unreadable files only: nothing to score)
            continue
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            if tta:
                logits = class_probabilities(model, images, tta=True)  # (probabilities: ranked the same way)
            else:
                logits = logits_of(model(images))
        logits = logits.float()
        if tta:
            loss_sum += F.nll_loss(logits.clamp_min(1e-30).log(), labels, reduction="sum").item()
        else:
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        topk = logits.topk(k, dim=1).indices
        hit1 = topk[:, 0] == labels
        correct1 += int(hit1.sum())
        correctk += int((topk == labels[:, None]).any(dim=1).sum())
        per_class_total += torch.bincount(labels.cpu(), minlength=len(classes))
        per_class_correct += torch.bincount(labels[hit1].cpu(), minlength=len(classes))
        if confusion:
            pairs.append((labels * len(classes) + topk[:, 0]).cpu())
        n += len(labels)
    if ddp is not None and ddp.enabled:
        sums = ddp.sum([loss_sum, n, correct1, correctk, *per_class_correct.tolist(), *per_class_total.tolist()])
        loss_sum, n, correct1, correctk = sums[0], round(sums[1]), round(sums[2]), round(sums[3])
        c = len(classes)
        per_class_correct = torch.tensor([round(v) for v in sums[4:4 + c]], dtype=torch.int64)
        per_class_total = torch.tensor([round(v) for v in sums[4 + c:4 + 2 * c]], dtype=torch.int64)
    per_class = {c: (int(per_class_correct[i]) / int(per_class_total[i]) if per_class_total[i] else None)
                 for i, c in enumerate(classes)}
    result = {"loss": loss_sum / max(n, 1), "top1": correct1 / max(n, 1), "top5": correctk / max(n, 1),
              "topk": k, "per_class": per_class, "images": n,
              "per_class_images": {c: int(per_class_total[i]) for i, c in enumerate(classes)}}
    if confusion:
        matrix = torch.bincount(torch.cat(pairs) if pairs else torch.zeros(0, dtype=torch.int64),
                                minlength=len(classes) ** 2)
        if ddp is not None and ddp.enabled:
            matrix = torch.tensor(ddp.sum(matrix.tolist()), dtype=torch.float64).round().to(torch.int64)
        result["confusion"] = matrix.view(len(classes), len(classes)).tolist()
        codes = matrix.nonzero().flatten()  # (the pairs that occur: not a Python loop over C x C cells)
        off = [(count, *divmod(code, len(classes))) for code, count in zip(codes.tolist(), matrix[codes].tolist(), strict=True)]
        result["most_confused"] = [{"true": classes[t], "predicted": classes[p], "images": count}
                                   for count, t, p in sorted(off, key=lambda x: (-x[0], x[1], x[2])) if t != p]
    return result


# --------------------------------------------------------------------------- the loop
def check_not_importing_main() -> None:
    """Raise :class:`ConfigError` in a worker process that is importing the user's script (a
    spawned process, as a torchrun process's data workers are, or a fork server's): a script
    that trains at import time would train again there, and under torchrun wait forever.

    >>> check_not_importing_main()   # (this process is not importing a parent's script)
    """
    import multiprocessing

    # (multiprocessing's own flag for "bootstrapping a child"; its spawn check reads the same one)
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise ConfigError("train() was called while a worker process imported the script that calls it (data "
                          "workers of a torchrun process are spawned, and a spawned process imports the main "
                          "script first): put the script's code under `if __name__ == \"__main__\":`")


def train(cfg: TrainConfig, *, quiet: bool = False) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.data``; write everything into the run directory.

    >>> import tempfile
    >>> from finetune import TrainConfig, make_shapes
    >>> from finetune.train import train     # (``finetune.train`` is also the name of this module)
    >>> data = make_shapes(tempfile.mkdtemp(), per_class=1, val_per_class=1, size=32)
    >>> cfg = TrainConfig(data=str(data), model="squeezenet1_1", img_size=32, epochs=2, batch_size=8,
    ...                   workers="0", device="cpu", out=tempfile.mkdtemp(), max_steps=1)
    >>> result = train(cfg, quiet=True)           # one step (= one epoch here), then it stops
    >>> result.stopped_early, len(result.history), sorted(p.name for p in result.run_dir.iterdir())
    (True, 1, ['best.safetensors', 'checkpoints', 'classes.json', 'config.yaml', 'metrics.jsonl', 'trainable.json'])
    >>> cfg.max_steps, cfg.resume = None, "auto"
    >>> result = train(cfg, quiet=True)           # resumes where it stopped
    >>> result.stopped_early, [r["epoch"] for r in result.history]
    (False, [0, 1])
    """
    check_not_importing_main()
    # SIGTERM/SIGINT from here on (a preemption during data or model setup included) finish the current
    # step, save and return; outside train() the CLI turns them into "interrupted" (exit 2)
    with GracefulExit() as stop, contextlib.ExitStack() as hold:
        try:
            return _train(cfg, quiet=quiet, stop=stop, hold=hold)
        except ValueError as e:
            if "Expected more than 1 value per channel when training" in str(e) and cfg.batch_size > 1:
                # (a batch of one image with a larger --batch-size: unreadable files skipped from it, or a
                # training split of one image)
                raise DataError(f"a training batch had one image (--batch-size {cfg.batch_size}: the others were "
                                f"unreadable files, or the split has one image), and {cfg.model}'s BatchNorm cannot "
                                f"train on one image ({str(e).splitlines()[0]}): remove or fix the unreadable "
                                "images (--strict-data lists them all), or add images") from None
            if "Expected more than 1 value per channel when training" in str(e):  # bad input, not a bug
                raise ConfigError(f"{named('batch_size', cfg.batch_size)} is too small for {cfg.model}'s BatchNorm "
                                  f"in training ({str(e).splitlines()[0]}): use a larger {named('batch_size')}, per "
                                  f"process under torchrun, or {named('img_size')}") from None
            raise
        except (RuntimeError, OSError) as e:  # under torchrun: a process died (torchrun then stops the others)
            from finetune.distributed import PeerLost, lost_peer

            ddp = Distributed.from_env()
            if ddp.enabled and lost_peer(e):
                raise PeerLost.of(e, ddp.world) from e
            raise


def _train(cfg: TrainConfig, *, quiet: bool, stop: GracefulExit, hold: contextlib.ExitStack) -> TrainResult:
    cfg.validate()
    if cfg.cache_features and cfg.augment:  # the features are computed once, with the eval transform: said so in
        cfg = dataclasses.replace(cfg, augment=False)  # config.yaml, not a silent augment: true
    if cfg.tensorboard:  # (before anything is written)
        summary_writer_class()
    ddp = Distributed.from_env()  # several processes under torchrun (one process otherwise)
    if cfg.out:  # ('~/runs/x' from Python or a YAML file: the shell expands it only on a command line)
        cfg = dataclasses.replace(cfg, out=os.path.expanduser(cfg.out))
    check_run_dir(cfg)  # (library callers too: a run with checkpoints is continued, never overwritten)
    cfg = cfg.resolved()
    device = ddp.device(cfg.device)
    ddp.start(device)
    quiet = quiet or not ddp.main  # process 0 speaks for all
    amp = resolve_amp(cfg.amp, device)
    if device.type == "cuda":  # fixed batch shapes: let cuDNN pick its fastest kernels once
        torch.backends.cudnn.benchmark = True
    run_dir = Path(ddp.gather(str(cfg.out) if cfg.out else str(default_run_dir(cfg)))[0])
    refused = ""  # one run at a time in a run directory; checked again now that no other process can write it
    if ddp.main:
        try:
            if cfg.out:
                hold.enter_context(hold_run_dir(run_dir))
            else:  # the default name, stamped to the second: another run may have just taken it
                run_dir = claim_default_run_dir(hold, run_dir)
            check_run_dir(dataclasses.replace(cfg, out=str(run_dir)))
        except ConfigError as e:
            refused = str(e)
    refused = ddp.gather(refused)[0]  # (every process stops with process 0's reason, not "another process stopped")
    run_dir = Path(ddp.gather(str(run_dir))[0])  # (process 0's, if it had to take another default name)
    if refused:
        raise ConfigError(refused)
    ckpt = Checkpointer(run_dir, keep_last=cfg.keep_last, best_metric="val_top1", mode="max",
                        async_save=cfg.async_save if cfg.async_save is not None else device.type == "cuda")

    # ---- what to resume from (decided before anything is written)
    resume_state: dict[str, Any] | None = None
    if cfg.resume:
        if cfg.resume == "auto":
            import warnings

            from finetune.checkpoint import CheckpointWarning

            with warnings.catch_warnings():  # reported below as one finetune warning line each
                warnings.simplefilter("ignore", CheckpointWarning)
                resume_path = ckpt.latest()
            for skipped, reason in ckpt.skipped if ddp.main else ():
                warn(f"skipping checkpoint '{skipped}': {reason}")
        else:
            resume_path = Path(cfg.resume)
        if resume_path is None and (run_dir / "config.yaml").is_file():  # ("start without --resume" alone would train the defaults)
            raise CheckpointError(f"{named('resume', 'auto')}: nothing to resume in '{run_dir / 'checkpoints'}' (the run "
                                  "stopped before its first checkpoint): start it again with its settings: finetune "
                                  f"train --config {shlex.quote(str(run_dir / 'config.yaml'))} --out "
                                  f"{shlex.quote(str(run_dir))}")
        if resume_path is None:
            raise CheckpointError(f"{named('resume', 'auto')}: nothing to resume in '{run_dir / 'checkpoints'}': "
                                  f"start without {named('resume')}, or give {named('resume', flag='--resume PATH')}")
        resume_state = ckpt.load(resume_path)
        ddp.barrier()  # every process has read it before process 0 moves or writes anything
        if "crop_pct" not in resume_state.get("config", {"crop_pct": None}):
            # a run from before --crop-pct/--interpolation: it goes on with the eval transform it had
            cfg = dataclasses.replace(cfg, crop_pct=EVAL_CROP_PCT, interpolation="bilinear", crop_mode="center")
        if "global_pool" not in resume_state.get("config", {"global_pool": None}) and cfg.global_pool is not None:
            # a run from before --global-pool: its model was built with the architecture's own pooling
            cfg = dataclasses.replace(cfg, global_pool=None)

    # ---- data
    torch.manual_seed(cfg.seed)
    first_alone = ddp.enabled and cfg.data == "shapes"  # the built-in set is generated on first use: by process 0
    if first_alone and not ddp.main:  # alone, or the others would read images it is still writing (and write them too)
        ddp.barrier()
    train_samples, val_samples = resolve_data(cfg.data, cfg.val_split, cfg.seed)
    warn_unused_val_split(cfg.data, cfg.val_split)
    if first_alone and ddp.main:
        ddp.barrier()
    if ddp.enabled:  # processes that see other data would take other numbers of steps and wait for each other forever
        seen = ddp.gather((len(train_samples), len(val_samples), list(train_samples.classes)))
        if any(s != seen[0] for s in seen):
            raise DataError("the processes see different data (train/val images and classes per process: "
                            + "; ".join(f"{r}: {t}/{v}, {len(c)} classes" for r, (t, v, c) in enumerate(seen))
                            + f"): '{cfg.data}' must be the same for all of them (was it changing?)")
    classes = list(train_samples.classes)
    if resume_state is not None and list(resume_state.get("classes", classes)) != classes:
        raise CheckpointError(f"'{resume_path}' was trained on other classes than the data '{cfg.data}' has "
                              f"({class_change(resume_state['classes'], classes)}): a run keeps its classes; resume "
                              "with the data it had, or start a new run from its weights with "
                              f"--pretrained {resume_path} --out NEW_DIR")
    if resume_state is not None:
        check_resume_fits(resume_state, cfg, len(train_samples), str(resume_path))
    # the pretrained weights' input normalisation (timm's own; else ImageNet's); a resumed run keeps its own
    mean, std = ((tuple(resume_state["mean"]), tuple(resume_state["std"])) if resume_state is not None and "mean" in resume_state
                 else normalization(cfg.model, cfg.pretrained))
    if cfg.strict_data:  # one list of every unreadable file, of both splits (each loader would list only its own)
        from finetune.data.loader import raise_for_bad_files

        raise_for_bad_files(train_samples, val_samples, workers=os.cpu_count() or 1)
    loader_kw = dict(img_size=cfg.img_size, batch_size=cfg.batch_size, device=device, seed=cfg.seed, mean=mean, std=std,
                     channels_last=cfg.channels_last, decode=cfg.decode, prefetch=cfg.prefetch,
                     cache=None if cfg.cache == "none" else cfg.cache, log=None if quiet else print,
                     shard=(ddp.rank, ddp.world), crop_pct=cfg.crop_pct, interpolation=cfg.interpolation,
                     crop_mode=cfg.crop_mode)
    train_loader = build_train_loader(train_samples, cfg, **loader_kw)
    val_loader = build_loader(val_samples, train=False, workers=train_loader.workers, **loader_kw)
    if len(train_loader) == 0:
        if ddp.enabled:  # each process takes its share of the epoch: a batch is per process
            share = -(-len(train_samples) // ddp.world)
            raise DataError(f"the training split has {len(train_samples)} images, {share} per process with "
                            f"{ddp.world} processes: fewer than one batch of {cfg.batch_size} each (--batch-size is "
                            "per process): lower --batch-size or start fewer processes")
        raise DataError(f"the training split has {len(train_samples)} images, fewer than one batch of {cfg.batch_size}")

    # ---- model and what trains (a resumed run's weights come from its checkpoint, below)
    model = build_model(cfg, len(classes), device, pretrained=resume_state is None, quiet=quiet, classes=classes)
    check_input_size(model, cfg.img_size)  # (on the device: one forward of two images, before any step)
    if cfg.sync_bn and ddp.enabled:  # in place: freezing marks, parameters and state-dict keys stay as they are
        from finetune.sync_bn import convert_sync_batchnorm

        synced = convert_sync_batchnorm(model)
        if not quiet:
            print(f"--sync-bn: {len(synced)} BatchNorm layers take their statistics over the {ddp.world} processes' "
                  "batches" if synced else "--sync-bn: the model has no BatchNorm layer (nothing to synchronise)")
    elif cfg.sync_bn and not quiet:
        print("--sync-bn: one process, its BatchNorm statistics already cover the whole batch")
    ema = make_ema(model, cfg.ema) if cfg.ema else None
    from finetune.freeze import (
        bn_train_mode,
        extract_features,
        format_findings,
        frozen_only_patterns,
        param_groups,
        split_head,
        trainable_table,
    )

    optimizer = make_optimizer(param_groups(model, cfg.lr, lr_mult=cfg.lr_mult or None, layer_decay=cfg.layer_decay,
                                            weight_decay=cfg.weight_decay), cfg)
    check_some_lr(optimizer, cfg)
    # (a warning, so after the errors of the model, its weights and the patterns: bad input stays one line)
    if len(train_samples) < cfg.batch_size * ddp.world and resume_state is None:
        warn(f"the training split has {len(train_samples)} images, fewer than --batch-size {cfg.batch_size}"
             f"{' x ' + str(ddp.world) + ' processes' if ddp.enabled else ''}: every epoch is one small batch "
             "(one optimizer step); a lower --batch-size gives more steps per epoch")
    later = [pattern for pattern, _ in parse_unfreeze(cfg.unfreeze, cfg.epochs)]
    for pattern in frozen_only_patterns(model, cfg.lr_mult, unfrozen_later=later):
        warn(f"--lr-mult {pattern}={cfg.lr_mult[pattern]:g} changes nothing: every parameter it names is frozen "
             f"(unfreeze them, e.g. --unfreeze {pattern}@EPOCH, or drop it)")
    for note in unused_freeze_flags(model, cfg, unfrozen_later=bool(later)):
        warn(note)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    loss_weight = class_weights(readable_labels(train_samples, cfg.class_weights) if cfg.class_weights != "none"
                                else train_samples.labels, classes, cfg.class_weights)
    if loss_weight is not None:
        if not quiet:
            print(f"--class-weights {cfg.class_weights}: the training loss weighs "
                  + ", ".join(f"{c} {w:.3g}" for c, w in list(zip(classes, loss_weight.tolist(), strict=True))[:8])
                  + (f", … ({len(classes)} classes, {loss_weight.min():.3g} to {loss_weight.max():.3g})"
                     if len(classes) > 8 else ""))
        loss_weight = loss_weight.to(device)
    batches: Loader | FeatureBatches = train_loader
    if cfg.cache_features:  # the backbone runs once; epochs train the head on its features
        if not quiet:
            print(f"--cache-features: the backbone runs once over the {len(train_samples)} training images with the "
                  "eval transform (no train-time augmentation); the head trains on those features")
        if resume_state is not None:  # the backbone of the checkpoint, not the fresh model's random one
            load_model_state(model, resume_state["model"])
        backbone, head = split_head(model)
        feature_loader = build_loader(train_samples, train=False, **{**loader_kw, "shard": None})
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            features, labels_ = extract_features(backbone, feature_loader)
        batches = FeatureBatches(features.float(), labels_, cfg.batch_size, cfg.seed, shard=(ddp.rank, ddp.world))
    batches_per_epoch = len(batches)
    steps_per_epoch = -(-batches_per_epoch // cfg.grad_accum)  # optimizer steps (--grad-accum batches each)
    if cfg.grad_accum > batches_per_epoch and resume_state is None:
        warn(f"--grad-accum {cfg.grad_accum} is more than the {batches_per_epoch} batches of an epoch: every epoch is "
             f"one optimizer step of {batches_per_epoch} batches")
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)

    # ---- state that a checkpoint carries
    epoch, step = 0, 0
    schedule_offset = 0  # step - the schedule's step: batches per epoch changed at a resume (batch size, data, processes)
    best_top1, best_top5, best_epoch = -1.0, 0.0, -1
    unseen_told = False  # (classes without one readable training image: said once, after a whole epoch)
    history: list[dict[str, Any]] = []
    epoch_loss_sum, epoch_seen = 0.0, 0
    if resume_state is not None:
        epoch = int(resume_state["epoch"])
        position = int(resume_state["loader"]["position"])
        saved_world = int(resume_state.get("world_size", 1))
        if position > 0 and saved_world != ddp.world:
            how = (f"{saved_world} processes (torchrun --nproc_per_node {saved_world})" if saved_world > 1
                   else "one process (finetune train, without torchrun)")
            raise CheckpointError(f"'{resume_path}' was saved in the middle of an epoch by {how.split(' (')[0]}, "
                                  f"this run has {ddp.world}: resume it with {how}, or from a checkpoint saved at "
                                  "the end of an epoch")
        for e in range(epoch + (1 if position > 0 else 0)):  # replay the unfreezing done before the checkpoint
            unfreeze_at(model, optimizer, cfg, e)
        load_model_state(model, resume_state["model"])
        # the groups' settings come from this invocation's flags (--lr, --weight-decay, --momentum,
        # --lr-mult, --layer-decay), not the checkpoint's: "flags given with --resume change the run"
        # (unchanged flags give the saved values, so a plain resume stays exact)
        fresh = [{k: g[k] for k in ("base_lr", "lr_mult", "weight_decay", "momentum", "nesterov") if k in g}
                 for g in optimizer.param_groups]
        opt_report = load_optimizer_state_by_name(optimizer, model, resume_state["optimizer"])
        for group, settings in zip(optimizer.param_groups, fresh, strict=True):
            group.update(settings)
        if not getattr(opt_report, "exact", True):
            warn(f"optimizer state restored by name with differences: {opt_report}")
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        step = int(resume_state["step"])
        # (the epoch's steps done, counted from its end: its remaining batches make the steps left, so the
        # schedule reaches the epoch's end with it, also when --grad-accum changed in the middle of it)
        steps_done = steps_per_epoch - -(-(batches_per_epoch - min(position, batches_per_epoch)) // cfg.grad_accum)
        schedule_offset = resumed_schedule_offset(resume_state, step, epoch, steps_done, steps_per_epoch)
        best_top1, best_top5 = float(resume_state["best_top1"]), float(resume_state["best_top5"])
        best_epoch = int(resume_state["best_epoch"])
        history = list(resume_state.get("history", []))
        mine = resume_state["ranks"][ddp.rank] if saved_world == ddp.world > 1 else resume_state
        epoch_loss_sum = float(mine.get("epoch_loss_sum", 0.0))
        epoch_seen = int(mine.get("epoch_seen", 0))
        batches.load_state_dict(resume_state["loader"])
        restore_rng_state(mine["rng"])
        if ema is not None:
            if "model_ema" not in resume_state:
                raise CheckpointError(f"'{resume_path}' has no EMA weights (saved without --ema): resume without --ema")
            load_model_state(ema.module, resume_state["model_ema"])
            ema.n_averaged.fill_(int(resume_state["ema_updates"]))
        elif resume_state.get("model_ema") is not None:
            warn(f"'{resume_path}' holds EMA weights (trained with --ema): without --ema they are dropped and "
                 "val_* and best.pt measure the raw weights from here on")
        saved_cache = (resume_state.get("config") or {}).get("cache")
        if saved_cache not in (None, cfg.cache) and not cfg.cache_features and ddp.main:
            warn(f"'{resume_path}' was trained with --cache {saved_cache}: with --cache {cfg.cache} training images are "
                 "decoded at another size before cropping, so the run goes on close to, not bitwise as, it would have")
        # only now that the checkpoint was found to fit (classes, processes, --ema): an earlier checkpoint
        # starts a new line, the newer ones must not mix in
        if cfg.resume != "auto" and ddp.main:
            aside = ckpt.set_aside_after(int(resume_state["step"]))
            if aside is not None:
                warn(f"resuming at step {resume_state['step']}: the checkpoints saved after it were moved to "
                     f"'{aside}' (nothing deleted)")

    def wrapped() -> nn.Module:  # what the steps call: DDP over the model (its trainable part), compiled
        net = ddp.wrap(head if cfg.cache_features else model, device)
        return torch.compile(net) if cfg.compile else net

    if cfg.compile and device.type == "cpu":  # (inductor on CPU logs that it found no CUDA runtime: not an error)
        import importlib
        import io
        import logging

        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        with contextlib.redirect_stderr(io.StringIO()):  # (torch < 2.5 prints it when the module is first imported)
            importlib.import_module("torch.utils.cpp_extension")

    forward_model = wrapped()

    # ---- the run directory (written by process 0 alone)
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_state is not None:
            keep_earlier_config(run_dir / "config.yaml", cfg, int(resume_state["step"]))
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "classes.json").write_text(json.dumps(classes, indent=1))
    # (TensorBoard's step of an epoch is epoch + 1: what an earlier invocation logged from this epoch on is replaced)
    log = RunLog(run_dir, tensorboard=cfg.tensorboard, quiet=quiet, epochs=cfg.epochs, write=ddp.main,
                 purge_step=epoch + 1, new_graph=resume_state is None)
    log.rewrite(history)
    total, trainable = count_parameters(model)
    log.info(f"{cfg.model}: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable), {len(classes)} classes, "
             f"{len(train_samples)} train / {len(val_samples)} val images, {device}"
             + (f" x {ddp.world} processes (batch {cfg.batch_size} each)" if ddp.enabled else "")
             + (f", {cfg.grad_accum} batches per optimizer step (effective batch "
                f"{cfg.grad_accum * cfg.batch_size * ddp.world})" if cfg.grad_accum > 1 else "")
             + (f", {amp}".replace("torch.", "autocast ") if amp else "")
             + ("" if (tuple(mean), tuple(std)) == (IMAGENET_MEAN, IMAGENET_STD)
                else f", inputs normalised with the weights' mean {tuple(mean)} / std {tuple(std)}")
             + ("" if (cfg.crop_pct, cfg.interpolation, cfg.crop_mode) == (EVAL_CROP_PCT, "bilinear", "center")
                else f", eval resize to {eval_resize_side(cfg.img_size, cfg.crop_pct)} ({cfg.interpolation}"
                     + (", both sides" if cfg.crop_mode == "squash" else "") + f") and centre crop {cfg.img_size}"))
    cam_batch = (cam_inputs(val_samples, cfg.img_size, mean, std, device, crop_pct=cfg.crop_pct,
                            interpolation=cfg.interpolation, crop_mode=cfg.crop_mode) if log.tensorboard else None)
    show_maps = True  # TensorBoard feature maps (off after a model they fail on)
    if cam_batch is not None and resume_state is None:  # the graph once per run, traced on a val image
        why = log.graph(model, cam_batch[1])
        if why is not None:
            warn(f"no model graph in TensorBoard (the model cannot be traced): {why}")
    table = trainable_table(model)
    if ddp.main:
        (run_dir / "trainable.json").write_text(json.dumps(table.to_dict(), indent=1))
    log.info(str(table))
    if resume_state is not None and epoch == cfg.epochs and batches.position == 0:
        log.info(f"the run had finished its {epoch} epoch{'s' if epoch != 1 else ''} (step {step}): nothing left to "
                 "train (a higher --epochs goes on)")
    elif resume_state is not None:
        changed = changed_settings(resume_state.get("config") or {}, cfg.to_dict())
        log.info(f"resumed at epoch {epoch + 1}, step {step} (batch {batches.position} of {batches_per_epoch})"
                 + (f"; settings changed from the run's: {changed}" if changed else ""))

    # losses stay on the device until the next step is queued: reading a loss right after its step
    # would make the host wait for the GPU every step (settled in order, so the sums are unchanged)
    pending: list[tuple[torch.Tensor, int, int]] = []

    def settle(keep: int = 0) -> None:
        nonlocal epoch_loss_sum, epoch_seen
        while len(pending) > keep:
            loss_t, n, at = pending.pop(0)
            value = loss_t.item()
            if not math.isfinite(value):
                raise ConfigError(f"the loss became {value} at step {at}: lower --lr or use --amp off")
            epoch_loss_sum += value * n
            epoch_seen += n

    def make_state() -> dict[str, Any]:
        settle()
        rng = capture_rng_state()
        # every process's random state and partial epoch loss (a collective: all processes call it)
        ranks = ddp.gather({"rng": rng, "epoch_loss_sum": epoch_loss_sum, "epoch_seen": epoch_seen}) if ddp.enabled else None
        return {
            "model": model, "optimizer": optimizer_state_by_name(optimizer, model),
            **({"model_ema": ema.module, "ema_updates": int(ema.n_averaged)} if ema is not None else {}),
            "scheduler": {"kind": "warmup_cosine", "step": step, "total_steps": total_steps,
                          "warmup_steps": warmup_steps, "steps_per_epoch": steps_per_epoch,
                          "offset": schedule_offset}, "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "epoch": epoch, "step": step, "global_step": step, "seed": cfg.seed, "batches_in_epoch": batches.position,
            "loader": batches.state_dict(), "rng": rng, "world_size": ddp.world, **({"ranks": ranks} if ranks else {}),
            "epoch_loss_sum": epoch_loss_sum, "epoch_seen": epoch_seen,
            "best_top1": best_top1, "best_top5": best_top5, "best_epoch": best_epoch,
            "history": history, "config": cfg.to_dict(), "arch": cfg.model, "classes": classes,
            "train_images": len(train_samples), "val_images": len(val_samples),
            "img_size": cfg.img_size, "mean": list(mean), "std": list(std),
            "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation, "crop_mode": cfg.crop_mode,
        }

    def optimizer_step() -> None:
        """Clip, audit (once), step the optimizer on the accumulated gradients, update the EMA."""
        nonlocal step, audited
        if cfg.clip_grad:  # on the true gradients: fp16's scale comes off first
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.clip_grad)
        if not audited:  # the classic silent bugs, checked once on real gradients
            findings = audit_step(model, optimizer, scaler, unscaled=bool(cfg.clip_grad))
            audited = findings is not None
            for line in format_findings(findings or []).splitlines():  # one "finetune: warning:" line each
                warn(line.removeprefix("warning: "))
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update_parameters(model)
        step += 1

    def out_of_steps() -> bool:
        return cfg.max_steps is not None and step >= cfg.max_steps

    def save(metrics: dict[str, float] | None = None) -> None:
        state = make_state()
        if ddp.main:
            ckpt.save(state, metrics=metrics)

    stopped, audited = epoch < cfg.epochs and out_of_steps(), False  # --max-steps reached already: nothing to do
    if resume_state is not None and (epoch > cfg.epochs or (epoch == cfg.epochs and batches.position > 0)):
        done = f"{epoch} epochs" + (f" and {batches.position} batches" if batches.position else "")
        warn(f"'{resume_path}' was saved after {done} (step {step}), beyond --epochs {cfg.epochs}: nothing left to "
             "train (a higher --epochs goes on)")
    last_save_time = time.monotonic()
    def no_progress() -> bool:  # --early-stop: val top-1 has not improved for that many epochs
        return bool(cfg.early_stop) and best_epoch >= 0 and epoch - 1 - best_epoch >= cfg.early_stop

    def after_step(pending_batch: bool = False) -> bool:
        """After an optimizer step: True to stop (a signal, --max-steps); else a checkpoint if one is due.
        ``pending_batch``: the loader has handed over a batch that the step did not train."""
        nonlocal last_save_time
        due = bool(cfg.save_every_minutes) and time.monotonic() - last_save_time >= 60 * cfg.save_every_minutes
        if ddp.enabled:  # the processes stop and save at the same step (signals and clocks differ)
            stop_flag, due_flag = ddp.sum([float(stop.stop_requested), float(due)])
            stop_now, due = stop_flag > 0, due_flag > 0
        else:
            stop_now = stop.stop_requested
        if stop_now or out_of_steps():
            return True
        if (cfg.save_every_steps and step % cfg.save_every_steps == 0) or due:
            batches.position -= pending_batch
            try:
                save()
            finally:
                batches.position += pending_batch
            last_save_time = time.monotonic()
        return False

    early = False
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    with ckpt:
        while epoch < cfg.epochs and not stopped:
            if batches.position == 0 and no_progress():
                early = True
                break
            if batches.position == 0:
                batches.set_epoch(epoch)
                unfrozen = unfreeze_at(model, optimizer, cfg, epoch)
                if unfrozen:
                    forward_model = wrapped()  # DDP watches the parameters that train: wrap again
                    log.info(f"epoch {epoch + 1}: unfroze {len(unfrozen)} parameter tensors\n{trainable_table(model)}")
            model.train()
            bn_train_mode(model)
            t0, images_done = time.perf_counter(), 0
            # resumed from a step checkpoint taken after the epoch's last batch: only its evaluation is left
            # (iterating a finished Loader would start the epoch over)
            todo = batches if batches.position < batches_per_epoch else ()
            whole_epoch = batches.position == 0  # (a resumed epoch's remainder says nothing about the others)
            bar = progress(todo, total=batches_per_epoch - batches.position, desc=f"epoch {epoch + 1}", quiet=quiet)
            # an optimizer step takes the batches at positions [group_start, group_end) of the epoch
            # (--grad-accum of them; fewer at the epoch's end); None: no step under way
            group_start, group_end = 0, None
            for images, labels in bar:
                if ddp.enabled and ddp.any(len(labels) == 0):  # a process's batch was all unreadable files:
                    continue  # every process skips it (one backward less in one of them would desync DDP)
                if group_end is not None and batches.position - 1 >= group_end:  # its last batch was all bad files
                    optimizer_step()
                    group_end = None
                    # (the batch in hand opens the next step and is not trained yet: a checkpoint taken
                    # here records the position before it, so that a resume trains it)
                    if after_step(pending_batch=True):
                        batches.position -= 1
                        break
                if group_end is None:
                    group_start = batches.position - 1
                    group_end = min(group_start + cfg.grad_accum, batches_per_epoch)
                    set_lr(optimizer, lr_factor(step - schedule_offset, total_steps, warmup_steps))
                    optimizer.zero_grad(set_to_none=True)
                group = group_end - group_start
                last = batches.position >= group_end
                targets, smoothing = labels, cfg.label_smoothing
                if cfg.mixup or cfg.cutmix:  # soft targets (smoothed already), drawn from (seed, batch, rank)
                    images, targets, _ = mix_batch(images, labels, len(classes), mixup=cfg.mixup, cutmix=cfg.cutmix,
                                                   seed=cfg.seed, step=step * cfg.grad_accum + batches.position - 1
                                                   - group_start, rank=ddp.rank, label_smoothing=cfg.label_smoothing)
                    images, smoothing = images.contiguous(memory_format=memory_format), 0.0
                # (under torchrun DDP averages each batch's gradients, also between a step's batches: its
                # no_sync would save those all-reduces, but a static graph cannot take it in the first
                # step after wrapping, and a resumed run would then add up in another order than the
                # uninterrupted one: no longer bitwise the same run)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits = logits_of(forward_model(images))
                    # (weighted: the mean over the batch's images, not over its weights, as PyTorch's
                    # "mean" does for class indices: a step of --grad-accum batches, or of several
                    # processes, then trains what one batch of all their images trains)
                    loss = F.cross_entropy(logits.float(), targets, weight=loss_weight,
                                           label_smoothing=smoothing,
                                           reduction="mean" if loss_weight is None else "none").mean()
                scaler.scale(loss / group if group > 1 else loss).backward()
                pending.append((loss.detach(), len(labels), step + 1))
                settle(keep=1)
                images_done += len(labels)
                if not last:
                    continue
                group_end = None
                optimizer_step()
                if after_step():
                    break
            if group_end is not None:  # the epoch's last batches were all bad files
                optimizer_step()
            if batches.position < batches_per_epoch:  # interrupted in the middle of the epoch
                save()
                stopped = True
                break
            settle()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            ddp.sync_buffers(model)  # every process evaluates the model that process 0 saves
            if ema is not None:
                ddp.sync_buffers(ema.module)
            raw = evaluate(model, val_loader, amp=amp, quiet=quiet, ddp=ddp)
            # with --ema the EMA weights are the run's result (as in timm): val_* and the best checkpoint
            metrics = evaluate(ema.module, val_loader, amp=amp, quiet=quiet, ddp=ddp) if ema is not None else raw
            loss_sum_all, seen_all, images_done = ddp.sum([epoch_loss_sum, epoch_seen, images_done])
            if whole_epoch and images_done == 0 and not cfg.cache_features:  # every training image unreadable
                bad = train_loader.bad_file_list()
                raise DataError(f"none of the {len(train_samples)} training images can be read"
                                + (f" (e.g. '{bad[0].path}': {bad[0].reason})" if bad else "")
                                + ": nothing was trained (use --strict-data to list them all)")
            if raw["images"] == 0 and len(val_samples):  # a top-1 of 0% over no images would choose best.pt
                bad = val_loader.bad_file_list()
                raise DataError(f"none of the {len(val_samples)} validation images can be read"
                                + (f" (e.g. '{bad[0].path}': {bad[0].reason})" if bad else "")
                                + ": nothing to score the run on (use --strict-data to list them all)")
            record = {"epoch": epoch, "step": step, "train_loss": loss_sum_all / max(seen_all, 1),
                      "val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_top5": metrics["top5"],
                      "topk": metrics["topk"],
                      # the schedule's --lr at the epoch's last step, not the first group's (under --layer-decay
                      # the stem's, with --lr-mult a multiple of it)
                      "lr": cfg.lr * lr_factor(max(step - 1 - schedule_offset, 0), total_steps, warmup_steps),
                      "images_per_s": images_done / max(seconds, 1e-9)}
            if ema is not None:
                record.update(raw_val_loss=raw["loss"], raw_val_top1=raw["top1"], raw_val_top5=raw["top5"])
            if metrics["top1"] > best_top1:
                best_top1, best_top5, best_epoch = metrics["top1"], metrics["top5"], epoch
            history.append(record)
            log.epoch(record)
            if cam_batch is not None and ddp.main:
                shown = ema.module if ema is not None else model  # what val_*, best.pt and `finetune cam` use
                if show_maps:
                    try:
                        log_feature_maps(log, shown, cam_batch[1], epoch + 1)
                    except Exception as e:  # noqa: BLE001 - pictures only: the epoch is still to be saved
                        warn(f"no feature maps in TensorBoard: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                        show_maps = False
                try:
                    log.images("cam/val", cam_overlays(shown, cam_batch), epoch + 1)
                except FinetuneError as e:  # a model CAM cannot explain: the run goes on without the images
                    warn(f"no Grad-CAM images in TensorBoard: {e}")
                    cam_batch = None
                except Exception as e:  # noqa: BLE001 - pictures only: the epoch is still to be saved
                    warn(f"no Grad-CAM images in TensorBoard: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}")
                    cam_batch = None
            if ddp.enabled:  # every process's unreadable files, listed by process 0
                for loader in (train_loader, val_loader):
                    for theirs in ddp.gather(dict(loader.bad_files)):
                        loader.bad_files.update(theirs)
            if ddp.main:
                report_bad_files(run_dir, train_loader, val_loader)
                if whole_epoch and not unseen_told and train_loader.samples is not None:
                    for message in unseen_classes(train_loader.samples, train_loader.bad_file_list()):
                        warn(message)
                    unseen_told = True
            epoch += 1
            epoch_loss_sum, epoch_seen = 0.0, 0
            batches.set_epoch(epoch)
            save(metrics={"val_top1": metrics["top1"]})
            last_save_time = time.monotonic()
            stopped = epoch < cfg.epochs and (ddp.any(stop.stop_requested) or out_of_steps())
    if early:
        log.info(f"early stop after epoch {epoch}: val top-1 has not improved for {epoch - 1 - best_epoch} epochs "
                 f"(best {best_top1:.2%} at epoch {best_epoch + 1}; --early-stop {cfg.early_stop})")
    if stopped:
        from finetune.checkpoint import stop_message

        message = stop_message(run_dir, epoch + 1, step)
        if ddp.enabled:  # the same number of processes continues it exactly
            message = message.replace("finetune train", f"torchrun --nproc_per_node {ddp.world} -m finetune train")
        # SIGTERM/SIGINT, to this process or another (stopped before the run's end, not by --max-steps): say how
        # to go on, even with -q
        if ddp.main and (stop.stop_requested or not out_of_steps()):
            print(f"finetune: {message}", file=sys.stderr, flush=True)
        else:
            log.info(message)
    train_loader.close()
    val_loader.close()
    best_path = ckpt.best() if ddp.main else None
    if best_path is not None:
        write_deployment_files(ckpt.load(best_path), run_dir)
    log.close()
    ddp.stop()
    return TrainResult(run_dir, best_top1, best_top5, best_epoch, history, stopped_early=stopped,
                       early_stopped=early, rank=ddp.rank)


def resumed_schedule_offset(state: dict[str, Any], step: int, epoch: int, position: int, steps_per_epoch: int) -> int:
    """How many steps a resumed run's learning-rate schedule lags its step count: the checkpoint's own
    offset, or, when an epoch has another number of batches now (another ``--batch-size``, data or
    number of processes, at an epoch's end), the one that puts the schedule at the same epoch.

    >>> sched = {"total_steps": 8, "steps_per_epoch": 4}
    >>> resumed_schedule_offset({"scheduler": sched}, step=4, epoch=1, position=0, steps_per_epoch=4)
    0
    >>> resumed_schedule_offset({"scheduler": sched}, step=4, epoch=1, position=0, steps_per_epoch=2)  # batch 4 -> 8
    2
    """
    sched = state.get("scheduler") or {}
    saved = sched.get("steps_per_epoch")
    if saved is None:  # (checkpoints from before it was saved: total over the epochs the run had)
        epochs = int((state.get("config") or {}).get("epochs") or 0)
        saved = int(sched.get("total_steps", 0)) // epochs if epochs else steps_per_epoch
    if int(saved) == steps_per_epoch:
        return int(sched.get("offset", 0))
    return step - (epoch * steps_per_epoch + position)


#: settings that say how a run is executed, not what it trains (a resume may change them freely)
EXECUTION_SETTINGS = frozenset({"workers", "decode", "cache", "prefetch", "device", "out", "resume", "max_steps",
                                "keep_last", "save_every_steps", "save_every_minutes", "async_save", "tensorboard",
                                "compile", "strict_data", "trust"})


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """The training settings of ``now`` that differ from the checkpoint's ``saved`` ones, as
    ``name old -> new`` ("" if none): a resume with flags that change the run says so.

    >>> changed_settings({"lr": 0.001, "workers": 2, "epochs": 5}, {"lr": 0.5, "workers": 0, "epochs": 8})
    'lr 0.001 -> 0.5, epochs 5 -> 8'
    """
    return ", ".join(f"{k} {saved[k]} -> {v}" for k, v in now.items()
                     if k in saved and k not in EXECUTION_SETTINGS and saved[k] != v)


def keep_earlier_config(path: Path, cfg: TrainConfig, step: int) -> Path | None:
    """Before a resume writes ``config.yaml`` with changed training settings: the run's earlier one is kept
    as ``config.N.yaml`` (N = 1, 2, … in order), headed by the step the resume started from and what changed,
    so that the settings that trained the first epochs stay on record. Returns its path (None: nothing changed).

    >>> import pathlib, tempfile
    >>> from finetune.config import TrainConfig, save_config
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "config.yaml"; save_config(TrainConfig(lr=0.01, workers=2), path)
    >>> keep_earlier_config(path, TrainConfig(lr=0.01, workers=0), step=4) is None   # how it runs: not kept
    True
    >>> kept = keep_earlier_config(path, TrainConfig(lr=0.05, workers=2), step=4)
    >>> kept.name, kept.read_text().splitlines()[0]
    ('config.1.yaml', '# the settings of this run until the resume at step 4 changed lr 0.01 -> 0.05')
    """
    from finetune.config import load_config

    if not path.is_file():
        return None
    text = path.read_text()
    try:
        changed = changed_settings(load_config(path).to_dict(), cfg.to_dict())
    except FinetuneError:  # (edited into something that does not load: kept as it is)
        changed = "settings that do not load"
    if not changed:
        return None
    n = 1 + max((int(m.group(1)) for p in path.parent.glob("config.*.yaml")
                 if (m := re.fullmatch(r"config\.(\d+)\.yaml", p.name))), default=0)
    kept = path.with_name(f"config.{n}.yaml")
    tmp = kept.with_name(f".{kept.name}.tmp")
    tmp.write_text(f"# the settings of this run until the resume at step {step} changed {changed}\n{text}")
    os.replace(tmp, kept)
    return kept


def class_change(saved: Sequence[str], now: Sequence[str]) -> str:
    """How the data's classes differ from a checkpoint's, by name (a class added at the end of a
    sorted list, or renamed, must not read as the same list).

    >>> class_change(["cat", "dog"], ["cat", "dog", "fox"])
    "1 class new in the data: 'fox'"
    >>> class_change(["cat", "dog", "fox"], ["cat", "dogs", "fox"])
    "1 class new in the data: 'dogs'; 1 class of the checkpoint missing: 'dog'"
    >>> class_change(["cat", "dog"], ["dog", "cat"])
    'the same 2 classes in another order'
    """
    def names(items: list[str]) -> str:
        return ", ".join(repr(c) for c in items[:5]) + (f", … ({len(items)} in all)" if len(items) > 5 else "")

    saved_set, now_set = set(saved), set(now)
    added = [c for c in now if c not in saved_set]
    missing = [c for c in saved if c not in now_set]
    parts = [f"{len(found)} class{'es' if len(found) != 1 else ''} {what}: {names(found)}"
             for found, what in ((added, "new in the data"), (missing, "of the checkpoint missing")) if found]
    return "; ".join(parts) or f"the same {len(now)} classes in another order"


def check_resume_fits(state: dict[str, Any], cfg: TrainConfig, train_images: int, path: str) -> None:
    """Refuse a resume that cannot continue the checkpoint's run: another architecture, or, in the
    middle of an epoch, batches cut differently (the position is counted in batches: another
    ``--batch-size``, training set or ``--cache-features`` would skip or repeat images silently).

    >>> from finetune.config import TrainConfig
    >>> saved = {"arch": "resnet18", "loader": {"position": 2}, "train_images": 16,
    ...          "config": {"batch_size": 4, "cache_features": False}}
    >>> check_resume_fits(saved, TrainConfig(model="resnet18", batch_size=4), 16, "last.pt")
    >>> check_resume_fits(saved, TrainConfig(model="resnet18", batch_size=8), 16, "last.pt")
    Traceback (most recent call last):
    finetune.errors.CheckpointError: 'last.pt' was saved in the middle of an epoch with --batch-size 4: resume with --batch-size 4, or from a checkpoint saved at the end of an epoch
    >>> check_resume_fits({**saved, "loader": {"position": 0}}, TrainConfig(model="resnet18", batch_size=8), 20, "x")
    """
    arch = state.get("arch")
    if arch is not None and str(arch) != cfg.model:
        raise CheckpointError(f"'{path}' is a checkpoint of a {arch}, not a {cfg.model}: resume with --model {arch} "
                              "(or start a new run from its weights with --pretrained FILE --out NEW_DIR)")
    saved_config = state.get("config") or {}
    if "global_pool" in saved_config:  # (a run from before --global-pool: the model's own, checked in _train)
        if (pool := saved_config["global_pool"]) != cfg.global_pool:
            said = f"--global-pool {pool}" if pool is not None else "the model's own pooling (no --global-pool)"
            raise CheckpointError(f"'{path}' is a checkpoint of a {arch} built with {said}: resume with it (or start a "
                                  "new run from its weights with --pretrained FILE --out NEW_DIR)")
    if not int(state.get("loader", {}).get("position", 0)):
        return  # the end of an epoch: the next one starts from its first batch, cut as this run cuts them
    saved = state.get("config") or {}
    how = "or from a checkpoint saved at the end of an epoch"
    if saved.get("batch_size") not in (None, cfg.batch_size):
        raise CheckpointError(f"'{path}' was saved in the middle of an epoch with --batch-size {saved['batch_size']}: "
                              f"resume with --batch-size {saved['batch_size']}, {how}")
    if bool(saved.get("cache_features", cfg.cache_features)) != bool(cfg.cache_features):
        flag = "--cache-features" if saved.get("cache_features") else "no --cache-features"
        raise CheckpointError(f"'{path}' was saved in the middle of an epoch with {flag}: resume with {flag}, {how}")
    if state.get("train_images") not in (None, train_images):
        raise CheckpointError(f"'{path}' was saved in the middle of an epoch of {state['train_images']} training "
                              f"images, the data has {train_images} now (the data or --val-split changed): "
                              f"resume with the data it had, {how}")


def build_train_loader(samples: Samples, cfg: TrainConfig, **loader_kw: Any) -> Loader:
    """The training loader of a run: the seeded per-epoch order in full batches, with the
    training transform (RandomResizedCrop ``cfg.crop_scale`` + flip, ``cfg.auto_augment``), or
    the eval transform with ``--no-augment``. ``loader_kw``: the rest of :func:`build_loader`'s settings.

    >>> import tempfile
    >>> from finetune import make_shapes
    >>> from finetune.data.samples import find_splits
    >>> train_samples, _ = find_splits(make_shapes(tempfile.mkdtemp(), per_class=2, val_per_class=1, size=32))
    >>> loader = build_train_loader(train_samples, TrainConfig(augment=False).resolved(), img_size=32, batch_size=4,
    ...                             workers="0")
    >>> len(loader), loader.train, loader.shuffle
    (4, False, True)
    """
    loader_kw.setdefault("crop_pct", cfg.crop_pct or EVAL_CROP_PCT)  # (--no-augment trains on the eval transform)
    loader_kw.setdefault("interpolation", cfg.interpolation or "bilinear")
    loader_kw.setdefault("crop_mode", cfg.crop_mode or "center")
    common = dict(workers=str(loader_kw.pop("workers", cfg.workers)), shuffle=True, drop_last=True, **loader_kw)
    if cfg.augment:
        return build_loader(samples, train=True, crop_scale=tuple(cfg.crop_scale),
                            augment=None if cfg.auto_augment == "none" else cfg.auto_augment, **common)
    return build_loader(samples, train=False, **common)  # --no-augment: the eval transform


def build_model(cfg: TrainConfig, num_classes: int, device: torch.device, *, pretrained: bool = True,
                quiet: bool = False, classes: Sequence[str] | None = None) -> nn.Module:
    """The run's model on ``device``: ``cfg.model`` with a ``num_classes`` head, its ``--pretrained``
    weights (when ``pretrained``; the load report printed unless ``quiet``; another architecture's
    file refused), frozen as ``cfg`` says, channels_last if asked.

    >>> m = build_model(TrainConfig(model="resnet18", linear_probe=True).resolved(), 3, torch.device("cpu"))
    >>> m.fc.out_features, m.fc.weight.requires_grad, m.conv1.weight.requires_grad
    (3, True, False)
    """
    model = create_model(cfg.model, num_classes=num_classes, img_size=cfg.img_size, drop_rate=cfg.dropout,
                         drop_path=cfg.drop_path, global_pool=cfg.global_pool)
    loaded: list[str] = []
    if cfg.pretrained and pretrained:
        from finetune.errors import NothingMatchedError
        from finetune.weights import load_weights

        try:
            report = load_weights(model, cfg.pretrained, exclude=tuple(cfg.exclude),
                                  shape_mismatch=cfg.shape_mismatch, trust=cfg.trust)
        except NothingMatchedError as e:  # (another architecture's file: say which, as check_pretrained_fit does)
            if not (named := _named_architecture(cfg)):
                raise
            raise NothingMatchedError(f"{e}{named}") from None
        if cfg.global_pool == "avg" and "fc_norm.weight" in report.loaded:
            report.notes.append(f"{cfg.model} built with global_pool='avg' (the patch tokens' mean, then fc_norm; no final "
                                "norm), as the file pools: MAE's fine-tuned ViTs do (--global-pool token for the class token)")
        if classes is not None and (note := match_head_classes(model, cfg.pretrained, list(classes), report.loaded)):
            report.notes.append(note)
        if not quiet:
            print(report)
        check_pretrained_fit(model, report, cfg, quiet=quiet)
        loaded = report.loaded
    later = apply_freezing(model, cfg)
    if pretrained:  # (a resumed run's head comes from its checkpoint)
        warn_frozen_new_head(model, loaded)
        warn_frozen_random(model, [*loaded, *later])  # (--unfreeze's train later)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def pretrained_classes(pretrained: str | None) -> list[str] | None:
    """The class names, in label order, of a finetune run's weights given as ``--pretrained`` (a
    checkpoint, a ``best.safetensors``, a run directory); None for anything else."""
    from finetune.checkpoint import deployment_metadata
    from finetune.weights.formats import peek_torch_zip, sniff

    if not pretrained:
        return None
    path = Path(pretrained)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        return None
    try:
        if path.suffix == ".safetensors":
            meta = deployment_metadata(path)
        else:
            meta = peek_torch_zip(path) if sniff(path) == "torch zip" else None
            meta = meta if isinstance(meta, dict) and meta.get("format") == "finetune-checkpoint" else None
    except Exception:  # noqa: BLE001 - not readable here: loading the weights says why
        return None
    classes = meta.get("classes") if meta is not None else None
    return [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None


def match_head_classes(model: nn.Module, pretrained: str | None, classes: list[str], loaded: Sequence[str]) -> str | None:
    """Put a loaded head of a finetune run's weights in this run's class order: the same class names in
    another order (a CSV's numeric order, folders' sorted one) have their head rows moved to their names'
    places, so each output keeps the class it was trained for; the note for the load report (also when
    the head, loaded because the counts agree, was trained on other classes), else None."""
    trained = pretrained_classes(pretrained)
    if trained is None or len(trained) != len(classes) or trained == classes:
        return None
    heads = [h for h in (*head_names(model), *aux_head_names(model)) if any(n.startswith(h + ".") for n in loaded)]
    if not heads:
        return None
    if sorted(trained) != sorted(classes):
        return (f"head loaded from weights trained on other classes ({class_change(trained, classes)}): its outputs "
                "keep the file's order (--exclude the head to start it afresh)")
    from finetune.weights.load import class_rows_modules

    order = torch.tensor([trained.index(c) for c in classes])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with torch.no_grad():
        for prefix in class_rows_modules(shapes, heads):  # (as class_map: each head's rows of classes)
            module = model.get_submodule(prefix)
            for t in (getattr(module, "weight", None), getattr(module, "bias", None)):
                if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == len(classes):
                    t.copy_(t[order])
    return (f"head rows reordered to the data's classes by name (the file has the same {len(classes)} classes in "
            f"another order: {', '.join(map(repr, trained[:5]))}{', …' if len(trained) > 5 else ''})")


def check_pretrained_fit(model: nn.Module, report: Any, cfg: TrainConfig, *, quiet: bool = True) -> None:
    """Refuse pretrained weights that leave most of the backbone's values (counted in numbers,
    not tensors) untouched: another architecture's file that shares names and some shapes
    (resnet50's BatchNorms fit resnet18). Warn when some tensors are missing.

    The head does not count: a new head for your classes is expected to keep its own values;
    nor do auxiliary heads (GoogLeNet's ``aux1``/``aux2``, Inception v3's ``AuxLogits``), whose
    last layer is also sized for your classes. ``quiet``: the load report was not printed (the warning
    says how to see it).

    >>> from finetune.weights import LoadReport
    >>> m = create_model("resnet18", num_classes=2)
    >>> names = [n for n, _ in m.state_dict().items() if not n.startswith("fc.")]
    >>> check_pretrained_fit(m, LoadReport(source="w.pt", loaded=names[:3], missing=names[3:]), TrainConfig(model="resnet18"))
    Traceback (most recent call last):
    finetune.errors.WeightsError: only 0% of the weights of resnet18 outside its head came from 'w.pt' (117 tensors missing, 0 of another shape): it looks like weights of another architecture; `finetune inspect w.pt --model resnet18` shows what matches
    """
    from finetune.errors import WeightsError

    heads = tuple(h + "." for h in head_names(model) + aux_head_names(model))
    sizes = {n: t.numel() for n, t in model.state_dict().items() if not n.startswith(heads)}
    got = {*report.loaded, *(n for n, _ in report.adapted)}
    missing = [n for n in report.missing if not n.startswith(heads)]
    mismatched = [n for n, _, _ in report.mismatched if not n.startswith(heads)]
    wanted = sum(v for n, v in sizes.items() if n not in report.excluded)
    loaded = sum(v for n, v in sizes.items() if n in got)
    # another architecture of the same family (resnet50's file into resnet18): names and some shapes
    # coincide, so half the values may "load", but the file's own layers are mostly left over and the
    # backbone has tensors of another shape
    foreign = bool(mismatched) and len(report.unexpected) > len(got)
    if report.unexpected and not foreign and _named_own_weights(cfg.model, cfg.pretrained):
        # torchvision's / timm's file of this very architecture has exactly its tensors: extra ones mean the cache
        # holds something else under that name (resnet34's file fits resnet18's names and shapes)
        message = (f"'{report.source}' holds {len(report.unexpected)} tensors that {cfg.model} does not have (e.g. "
                   f"{report.unexpected[0]}): it is not --pretrained {cfg.pretrained}'s file but another "
                   "architecture's under its name; delete it and put the right file there")
        if cfg.pretrained.startswith("timm:"):  # (timm may filter a file's keys as it loads: say it, do not refuse)
            warn(message)
        else:
            raise WeightsError(message)
    if wanted and (loaded < 0.5 * wanted or foreign):
        raise WeightsError(f"only {loaded / wanted:.0%} of the weights of {cfg.model} outside its head came from "
                           f"'{report.source}' ({len(missing)} tensors missing, {len(mismatched)} of another shape"
                           + (f", {len(report.unexpected)} of the file's tensors unused" if foreign else "") + "): "
                           f"it looks like weights of another architecture{_named_architecture(cfg)}; "
                           f"`finetune inspect {report.source} --model {cfg.model}` shows what matches")
    if missing or mismatched:
        made_for = pretrained_input_size(cfg.model, cfg.pretrained) if mismatched else None
        size_hint = (f"; the weights were made for {made_for}x{made_for} images and these do not resample to "
                     f"{cfg.img_size}: --img-size {made_for} keeps them"
                     if made_for is not None and cfg.img_size is not None and made_for != cfg.img_size else "")
        warn(f"{len(missing) + len(mismatched)} tensors outside the head keep their random values "
             f"({len(missing)} missing from '{report.source}', {len(mismatched)} of another shape, e.g. "
             f"{(missing + mismatched)[0]}){size_hint}" + ("; run without -q to see the load report" if quiet else ""))


def _named_architecture(cfg: TrainConfig) -> str:
    """What the weights' ``config.json`` says they are, and the ``--model`` for them where that is plain
    (:func:`finetune.models.weights_architecture`), as the refusal of another architecture's file says it;
    "" when it says nothing."""
    converted = converted_architecture(cfg.pretrained)  # (a file `finetune convert` wrote from such a folder)
    known = converted or weights_architecture(cfg.pretrained)
    if known is None:
        return ""
    said, model = known
    where = "its metadata (from the config.json it was converted from) says" if converted else "its config.json says"
    return f"; {where} {said}" + (f": --model {model} builds that" if model and model != cfg.model else "")


def _named_own_weights(model: str, pretrained: str | None) -> bool:
    """True when ``pretrained`` names torchvision's or timm's weights of ``model``'s own architecture
    (``torchvision``, ``torchvision:IMAGENET1K_V1`` for a torchvision model; ``timm:resnet18.a1_in1k`` for
    ``timm:resnet18``), whose files hold exactly the model's tensors.

    >>> _named_own_weights("resnet18", "torchvision"), _named_own_weights("resnet18", "torchvision:resnet34")
    (True, False)
    >>> _named_own_weights("timm:resnet18", "timm:resnet18.a1_in1k"), _named_own_weights("resnet18", "timm:resnet18")
    (True, False)
    """
    if not pretrained:
        return False
    if pretrained.startswith("timm:"):
        return model.startswith("timm:") and pretrained[5:].split(".")[0] == model[5:].split(".")[0]
    if (pretrained != "torchvision" and not pretrained.startswith("torchvision:")) or model.startswith("timm:"):
        return False
    from finetune.weights.sources import _weights_enum, torchvision_weights

    try:
        return type(torchvision_weights(pretrained, model)) is _weights_enum(model)
    except FinetuneError:
        return False


def eval_crop(path: str | Path, size: int, crop_pct: float = EVAL_CROP_PCT, interpolation: str = "bilinear",
              crop_mode: str = "center") -> torch.Tensor:
    """The eval loader's view of one image file (full-size decode, Resize(size / crop_pct,
    interpolation) + CenterCrop(size), both sides resized with ``crop_mode="squash"``; uint8 HWC),
    or a one-line :class:`DataError` naming the file.

    >>> import tempfile
    >>> from PIL import Image
    >>> path = tempfile.mkdtemp() + "/a.png"; Image.new("RGB", (40, 30)).save(path)
    >>> tuple(eval_crop(path, 16).shape)
    (16, 16, 3)
    """
    try:
        return decode_eval(str(path), size, crop_pct, dct=False, interpolation=interpolation, crop_mode=crop_mode)
    except DECODE_ERRORS as e:
        raise DataError(f"cannot read image '{path}': {bad_reason(e)}") from None


def spread_indices(n: int, count: int) -> list[int]:
    """Up to ``count`` indices spread evenly over ``range(n)`` (first and last included).

    >>> spread_indices(10, 4), spread_indices(2, 8)
    ([0, 3, 6, 9], [0, 1])
    """
    import numpy as np

    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int)).tolist() if n else []


def cam_inputs(samples: Samples, img_size: int, mean: Any, std: Any, device: torch.device,
               count: int = 8, *, crop_pct: float = EVAL_CROP_PCT,
               interpolation: str = "bilinear", crop_mode: str = "center") -> tuple[torch.Tensor, torch.Tensor] | None:
    """Up to ``count`` validation images spread over the split, as eval crops (uint8 HWC) and the
    normalised batch the model sees: what TensorBoard shows Grad-CAM overlays of after every
    epoch. Unreadable images are left out; None if none can be read.

    >>> import tempfile
    >>> from finetune import make_shapes
    >>> from finetune.data.samples import scan_folder
    >>> val = scan_folder(make_shapes(tempfile.mkdtemp(), per_class=1, val_per_class=1, size=32) / "val")
    >>> crops, batch = cam_inputs(val, 32, IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"), count=3)
    >>> tuple(crops.shape), tuple(batch.shape)
    ((3, 32, 32, 3), (3, 3, 32, 32))
    """
    crops = []
    for i in spread_indices(len(samples), count):
        with contextlib.suppress(DataError):  # an unreadable image is just not shown
            crops.append(eval_crop(samples.paths[i], img_size, crop_pct, interpolation, crop_mode))
    if not crops:
        return None
    stacked = torch.stack(crops)
    normalizer = Normalizer(tuple(mean), tuple(std), device, channels_last=False)
    return stacked, normalizer(stacked.to(device))


def cam_overlays(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor] | None) -> Any:
    """Grad-CAM overlays (uint8 ``N x H x W x 3``) of the model's predictions for :func:`cam_inputs`;
    an empty batch when there are none. The model's mode, buffers and RNG are left as they were.

    >>> import tempfile
    >>> from finetune import make_shapes
    >>> from finetune.data.samples import scan_folder
    >>> val = scan_folder(make_shapes(tempfile.mkdtemp(), per_class=1, val_per_class=1, size=32) / "val")
    >>> cam_overlays(create_model("resnet18", num_classes=8), cam_inputs(val, 64, IMAGENET_MEAN, IMAGENET_STD,
    ...                                                               torch.device("cpu"), count=2)).shape
    (2, 64, 64, 3)
    """
    import numpy as np

    from finetune.cam import class_activation_maps, overlay

    if inputs is None:
        return np.zeros((0, 1, 1, 3), np.uint8)
    crops, batch = inputs
    maps = class_activation_maps(model, batch).maps.cpu()
    return np.stack([overlay(c, m) for c, m in zip(crops, maps, strict=True)])


def make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s parameters and buffers (BatchNorm
    statistics), updated after every optimizer step: ``ema = decay * ema + (1 - decay) * w``,
    starting from the weights at the first update (torchvision's references; timm's ModelEmaV3
    starts from the weights at its creation). Integer buffers (BatchNorm's ``num_batches_tracked``)
    are copied, as timm does: an average of counts truncated to an integer would stay where it began.

    >>> net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1)); _ = net[0].weight.data.fill_(1.0)
    >>> ema = make_ema(net, decay=0.5)
    >>> for value in (1.0, 3.0):
    ...     _ = net[0].weight.data.fill_(value); net[1].num_batches_tracked += 5; ema.update_parameters(net)
    >>> ema.module[0].weight.item(), int(ema.n_averaged), int(ema.module[1].num_batches_tracked)
    (2.0, 2, 10)
    """
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], _n: torch.Tensor) -> None:
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):  # (lists come one dtype each)
            torch._foreach_lerp_(averaged, current, 1 - decay)
        else:
            torch._foreach_copy_(averaged, current)

    ema = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
    ema.module.requires_grad_(False)
    return ema.eval()


def log_feature_maps(log: RunLog, model: nn.Module, batch: torch.Tensor, step: int) -> None:
    """TensorBoard images ``features/<module>``: the most varied channels of the first
    validation image's feature maps at the end of each stage (see :mod:`finetune.features`).

    >>> import pathlib, tempfile
    >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> log = RunLog(run, tensorboard=True, quiet=True)
    >>> log_feature_maps(log, create_model("resnet18", num_classes=2), torch.zeros(1, 3, 64, 64), step=1); log.close()
    >>> events = EventAccumulator(str(run / "tb")); _ = events.Reload()
    >>> events.Tags()["images"]
    ['features/relu', 'features/layer1', 'features/layer2', 'features/layer3', 'features/layer4']
    """
    from finetune.features import feature_grid, stage_feature_maps

    for name, fmap in stage_feature_maps(model, batch).items():
        log.images(f"features/{name}", feature_grid(fmap)[None], step)


def unused_freeze_flags(model: nn.Module, cfg: TrainConfig, *, unfrozen_later: bool) -> list[str]:
    """What ``--freeze``, ``--layer-decay``, ``--bn``, ``--dropout`` and ``--drop-path`` would silently not do: a
    ``--freeze`` pattern with ``--linear-probe`` / ``--train-only`` that names nothing they train, the decay when
    every trained parameter gets the same learning rate from it (only the head trains, ``--linear-probe``), a
    BatchNorm policy other than the default when nothing is frozen (it applies to frozen parts only), dropout /
    drop-path with ``--linear-probe`` (off in the frozen backbone and before its head). Only the first when
    ``--unfreeze`` trains more later.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    >>> cfg = TrainConfig(bn="train")
    >>> unused_freeze_flags(net, cfg, unfrozen_later=False)[0][:47]
    '--bn train changes nothing: no parameter is fro'
    """
    from finetune.freeze import _bn_layers, _in_frozen_part, _select, param_groups, unwrap

    notes = []
    if cfg.freeze and (cfg.linear_probe or cfg.train_only):  # (what else they freeze: freeze_all_but's rest)
        kept = head_names(model) if cfg.linear_probe else cfg.train_only
        kept_params = set(_select(unwrap(model), kept).params)
        by = "--linear-probe" if cfg.linear_probe else f"--train-only {' '.join(cfg.train_only)}"
        notes += [f"--freeze {pattern} changes nothing: {by} freezes it already (everything but "
                  f"{', '.join(kept)}); drop it" for pattern in cfg.freeze
                  if not set(_select(unwrap(model), [pattern]).params) & kept_params]
    if unfrozen_later:
        return notes
    # (the decay's own multipliers: an --lr-mult that evens out what it gives two depths does not undo it)
    if cfg.layer_decay is not None and cfg.layer_decay < 1 and len(
            {g["lr_mult"] for g in param_groups(model, 1.0, layer_decay=cfg.layer_decay)}) == 1:
        notes.append(f"--layer-decay {cfg.layer_decay:g} changes nothing: every parameter that trains gets the same "
                     "learning rate from it (only the top layers train); drop it, or train more layers")
    if cfg.linear_probe:  # (the head's input is the frozen backbone's, as --cache-features computes it)
        notes += [f"--{flag.replace('_', '-')} {value:g} changes nothing with --linear-probe: dropout and drop-path "
                  "are off in a frozen backbone and before its head, so that the probe sees the features "
                  "--cache-features would; drop it, or unfreeze layers" for flag in ("dropout", "drop_path")
                  if (value := getattr(cfg, flag)) is not None and value > 0]
    # (a frozen part may have no frozen parameter left: --freeze '*.bn*' --bn eval trains their affine parameters)
    if cfg.bn != TrainConfig.bn and all(p.requires_grad for p in model.parameters()) \
            and not any(_in_frozen_part(bn) for _, bn in _bn_layers(unwrap(model))):
        notes.append(f"--bn {cfg.bn} changes nothing: no parameter is frozen, and the policy applies to frozen "
                     "parts (BatchNorm layers that train are in training mode); drop it, or freeze something")
    return notes


def warn_frozen_new_head(model: nn.Module, loaded: list[str]) -> None:
    """Warn when freezing left a head that was not loaded from pretrained weights frozen: it
    keeps its random initial values, and the run cannot learn your classes.

    >>> import contextlib, io
    >>> m = create_model("resnet18", num_classes=2); _ = m.fc.requires_grad_(False)
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     warn_frozen_new_head(m, loaded=[])
    >>> err.getvalue().strip()
    "finetune: warning: the head 'fc' is frozen but was not loaded from pretrained weights: it keeps its random values; train it (--train-only ... fc) or do not freeze it"
    """
    if not any(p.requires_grad for p in model.parameters()):
        return  # nothing trains at all: that is the error param_groups gives, alone
    for head in head_names(model):
        params = [(f"{head}.{n}", p) for n, p in model.get_submodule(head).named_parameters()]
        if params and not any(p.requires_grad for _, p in params) and not all(n in loaded for n, _ in params):
            warn(f"the head '{head}' is frozen but was not loaded from pretrained weights: it keeps its random values; "
                 f"train it (--train-only ... {head}) or do not freeze it")


def warn_frozen_random(model: nn.Module, loaded: list[str]) -> None:
    """Warn when frozen parameters of the backbone were not loaded from pretrained weights
    (``--linear-probe`` or ``--freeze`` without ``--pretrained``, or a frozen layer whose weights
    were excluded or skipped): they keep their random initial values for the whole run.
    Heads are :func:`warn_frozen_new_head`'s; auxiliary heads, unused by the loss, do not count.

    >>> import contextlib, io
    >>> m = create_model("resnet18", num_classes=2); _ = m.conv1.requires_grad_(False)
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     warn_frozen_random(m, loaded=[])
    >>> err.getvalue().strip()
    "finetune: warning: 1 frozen tensor (9,408 values, e.g. 'conv1.weight') was not loaded from pretrained weights: it keeps its random initial values for the whole run; give --pretrained, or do not freeze it"
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     warn_frozen_random(m, loaded=["conv1.weight"])
    >>> err.getvalue()
    ''
    """
    if not any(p.requires_grad for p in model.parameters()):
        return  # nothing trains at all: that is the error param_groups gives, alone
    skip, done = tuple(f"{h}." for h in (*head_names(model), *aux_head_names(model))), set(loaded)
    random = [(n, p) for n, p in model.named_parameters() if not p.requires_grad and n not in done
              and not n.startswith(skip)]
    if random:
        one = len(random) == 1
        values = sum(p.numel() for _, p in random)
        warn(f"{len(random)} frozen tensor{'' if one else 's'} ({values:,} values, e.g. '{random[0][0]}') "
             f"{'was' if one else 'were'} not loaded from pretrained weights: {'it keeps its' if one else 'they keep their'} "
             f"random initial values for the whole run; give --pretrained, or do not freeze {'it' if one else 'them'}")


def report_bad_files(run_dir: Path, *loaders: Loader) -> None:
    """Unreadable images were skipped: list them in ``bad_files.txt`` and say so once per new file.

    >>> import contextlib, io, pathlib, tempfile, types
    >>> from finetune.data.decode import BadFile
    >>> from finetune.train import report_bad_files
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> loader = types.SimpleNamespace(bad_file_list=lambda: [BadFile(3, "img/x.jpg", "not an image")])
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     report_bad_files(run, loader); report_bad_files(run, loader)
    >>> (run / "bad_files.txt").read_text(), err.getvalue().count("skipped 1 unreadable image")
    ('img/x.jpg\\tnot an image\\n', 1)
    """
    lines = [f"{b.path}\t{b.reason}" for ld in loaders for b in ld.bad_file_list()]
    if not lines:
        return
    path = run_dir / "bad_files.txt"
    known = set(path.read_text(errors="surrogateescape").splitlines()) if path.exists() else set()
    new = [line for line in lines if line not in known]
    if new:
        with path.open("a", errors="surrogateescape") as f:
            f.writelines(line + "\n" for line in new)
        warn(f"skipped {len(new)} unreadable image(s), listed in {path} (use --strict-data to stop instead)")


def unseen_classes(samples: Samples, bad: Sequence[BadFile]) -> list[str]:
    """A warning for each class none of whose training images could be read (``bad``, a whole epoch's):
    the model has an output for it but never sees one (a class folder without images is refused
    up front; one whose every file is damaged is only found by reading them).

    >>> from finetune.data.decode import BadFile
    >>> s = Samples.from_lists(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], [0, 1, 1, 0], ("cat", "dog"))
    >>> unseen_classes(s, [BadFile(1, "b.jpg", "not an image"), BadFile(2, "c.jpg", "truncated")])
    ["class 'dog': none of its 2 training images can be read (e.g. 'b.jpg': not an image): the model never sees it; fix or remove them, or remove the class"]
    >>> unseen_classes(s, [BadFile(1, "b.jpg", "not an image")])
    []
    """
    import numpy as np

    if not bad:
        return []
    labels = np.asarray(samples.labels)
    count = np.bincount(labels, minlength=len(samples.classes))
    bad_count = np.bincount(labels[[b.index for b in bad]], minlength=len(samples.classes))
    first = {int(labels[b.index]): b for b in reversed(bad)}
    return [f"class {samples.classes[c]!r}: none of its {int(count[c])} training images can be read (e.g. "
            f"'{first[c].path}': {first[c].reason}): the model never sees it; fix or remove them, or remove the class"
            for c in range(len(samples.classes)) if count[c] and bad_count[c] == count[c]]


#: the settings that say which images were the validation split (in the metadata's ``config``)
DATA_KEYS = ("data", "val_split", "seed")


def write_deployment_files(state: dict[str, Any], run_dir: Path) -> None:
    """``best.safetensors``: the best weights alone, with the architecture, class names, image
    size, input normalisation and eval transform in its metadata (what ``predict`` needs).

    >>> import pathlib, tempfile, torch
    >>> from safetensors import safe_open
    >>> from finetune.train import write_deployment_files
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> state = {"arch": "resnet18", "classes": ["cat", "dog"], "img_size": 32, "model": {"fc.bias": torch.zeros(2)}}
    >>> write_deployment_files(state, run)
    >>> with safe_open(str(run / "best.safetensors"), "pt") as f:
    ...     list(f.keys()), f.metadata()["classes"], f.metadata()["arch"]
    (['fc.bias'], '["cat", "dog"]', 'resnet18')
    """
    from finetune.checkpoint import write_safetensors
    from finetune.errors import describe_os_error

    meta = {"arch": str(state["arch"]), "classes": json.dumps(list(state["classes"])), "format": DEPLOYMENT_FORMAT,
            **settings_metadata(state.get("img_size"), state)}
    # the data it was trained on and how it was split: `eval --data` on that data scores its validation split
    # (as with best.pt), not the training images with it
    # and its --amp: `eval` of this file runs in the precision the run validated in, as of best.pt
    cfg = state.get("config") if isinstance(state.get("config"), dict) else {}
    if "data" in cfg:
        meta["config"] = json.dumps({k: cfg[k] for k in (*DATA_KEYS, "amp") if k in cfg})
    meta.update({k: str(int(state[k])) for k in ("train_images", "val_images") if state.get(k) is not None})
    if cfg.get("global_pool") is not None:  # (how the model is built: a timm ViT's pooling; config holds DATA_KEYS, amp)
        meta["global_pool"] = str(cfg["global_pool"])
    weights = state["model_ema"] if state.get("model_ema") else state["model"]  # --ema: the EMA weights are the result
    final = run_dir / "best.safetensors"
    try:  # durable before it replaces the previous file, as the checkpoints are
        write_safetensors({k: v.contiguous() for k, v in weights.items()}, final, meta)
    except OSError as e:
        raise CheckpointError(f"cannot write '{final}': {describe_os_error(OSError(e.errno, e.strerror))}; the run's "
                              "checkpoints are intact: fix the cause, then write it with "
                              f"finetune train --out {shlex.quote(str(run_dir))} --resume auto") from e


# --------------------------------------------------------------------------- eval / predict from a checkpoint
def read_deployment_file(path: Path) -> dict[str, Any] | None:
    """A run's ``best.safetensors`` as a checkpoint state (weights, arch, classes, img_size and the
    eval settings of its metadata), or None for any other file.

    >>> import pathlib, tempfile, torch
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> write_deployment_files({"arch": "resnet18", "classes": ["cat", "dog"], "img_size": 32, "crop_pct": 0.9,
    ...                         "model": {"fc.bias": torch.zeros(2)}}, run)
    >>> state = read_deployment_file(run / "best.safetensors")
    >>> state["arch"], state["classes"], state["img_size"], state["crop_pct"], list(state["model"])
    ('resnet18', ['cat', 'dog'], 32, 0.9, ['fc.bias'])
    """
    state = deployment_metadata(path)
    if state is None:
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state["model"] = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"'{path}': cannot read it as a finetune best.safetensors ({e}): "
                              "`finetune inspect` shows what it holds") from None
    return state


def run_checkpoint(path: str | Path) -> Path:
    """The checkpoint a path names: a file as it is; a run directory's ``checkpoints/best.pt``
    (else its ``last.pt``, for a run stopped before its first validation).

    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp()); (run / "checkpoints").mkdir()
    >>> _ = (run / "checkpoints" / "last.pt").write_bytes(b"")
    >>> run_checkpoint(run).name, run_checkpoint(run / "checkpoints" / "last.pt").name
    ('last.pt', 'last.pt')
    >>> run_checkpoint(run / "checkpoints").name  # its checkpoints/ folder too, before a first validation
    'last.pt'
    """
    path = Path(path)
    if path.suffix == ".json" and path.with_suffix(".pt").is_file():  # a checkpoint's manifest, beside it
        raise CheckpointError(f"'{path}' is the manifest of the checkpoint '{path.with_suffix('.pt')}' (its size "
                              "and checksum), not a checkpoint: give the .pt file")
    if not path.is_dir():
        return path
    for candidate in (path / "checkpoints" / "best.pt", path / "checkpoints" / "last.pt", path / "best.pt",
                      path / "last.pt"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"'{path}' is a folder without checkpoints/best.pt or last.pt: "
                          "give a run directory or a checkpoint file")


def load_checkpoint_model(path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a finetune checkpoint (or a run directory's best one: :func:`run_checkpoint`)
    describes and load its weights (the EMA weights of a run trained with ``--ema``, which its
    metrics and best checkpoint are about).

    >>> import tempfile, torch
    >>> from finetune import Checkpointer, create_model
    >>> from finetune.train import load_checkpoint_model
    >>> path = Checkpointer(tempfile.mkdtemp()).save({"model": create_model("squeezenet1_1", num_classes=2),
    ...     "arch": "squeezenet1_1", "classes": ["cat", "dog"], "img_size": 32, "epoch": 0, "step": 0})
    >>> model, state = load_checkpoint_model(path, torch.device("cpu"))
    >>> model.finetune_arch, state["classes"], model.training
    ('squeezenet1_1', ['cat', 'dog'], False)
    """
    path = run_checkpoint(path)
    state = read_deployment_file(path) or Checkpointer.read(path)
    if "arch" not in state or "classes" not in state or "model" not in state:
        raise CheckpointError(f"'{path}' is not a finetune training checkpoint (no arch/classes/model): "
                              "use `finetune inspect` to see what it holds")
    img_size = state.get("img_size")
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    global_pool = state.get("global_pool", config.get("global_pool"))  # (best.safetensors' metadata; a .pt's config)
    model = create_model(str(state["arch"]), num_classes=len(state["classes"]),
                         img_size=int(img_size) if img_size is not None else None,
                         global_pool=str(global_pool) if global_pool is not None else None)
    weights = state["model_ema"] if state.get("model_ema") else state["model"]  # --ema runs: the EMA weights
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        result = model.load_state_dict(weights, strict=False) if "size mismatch" not in str(e) else None
        detail = (f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:1]}), "
                  f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:1]})" if result is not None
                  else next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), "shapes differ"))
        raise CheckpointError(f"'{path}': its weights do not fit the {state['arch']} with {len(state['classes'])} "
                              f"classes it names ({detail}); the checkpoint was edited or written by other code: "
                              "`finetune inspect` shows what it holds") from None
    return model.to(device).eval(), state


@contextlib.contextmanager
def forward_failures_named(model: nn.Module, state: dict[str, Any], path: str | Path) -> Iterator[None]:
    """Run the forwards of a checkpoint's model: one that fails because the model cannot take the image size
    the checkpoint names (written by other code or edited; ``train`` refuses such sizes) becomes a
    :class:`CheckpointError` naming the layer (:func:`finetune.models.layer_summary`), not a bare RuntimeError.

    >>> import tempfile
    >>> from finetune import Checkpointer, create_model
    >>> path = Checkpointer(tempfile.mkdtemp()).save({"model": create_model("squeezenet1_1", num_classes=2),
    ...     "arch": "squeezenet1_1", "classes": ["cat", "dog"], "img_size": 8, "epoch": 0, "step": 0})
    >>> model, state = load_checkpoint_model(path, torch.device("cpu"))
    >>> with forward_failures_named(model, state, path):  # doctest: +ELLIPSIS
    ...     model(torch.zeros(1, 3, 8, 8))
    Traceback (most recent call last):
    finetune.errors.CheckpointError: '...': its squeezenet1_1 cannot take the 8x8 images it names (img_size 8): it fails in layer 'features.5': ...
    """
    from finetune.models import layer_summary

    try:
        yield
    except (RuntimeError, AssertionError, ValueError, IndexError) as e:
        if "out of memory" in str(e) or "can't allocate memory" in str(e):
            raise
        try:
            size = eval_transform_of_checkpoint(state)[0]
            summary = layer_summary(model, size, depth=1)
        except Exception:  # noqa: BLE001 - the look for the layer failed too: the failure as it was
            summary = None
        if summary is None or summary.ok:  # not the input size: another failure, as it was
            raise
        where = ("in its own forward (outside its layers)" if summary.failed_at == "(forward)"
                 else f"in layer '{summary.failed_at}'")
        arch = state.get("arch", type(model).__name__)
        raise CheckpointError(f"'{path}': its {arch} cannot take the {size}x{size} images it names (img_size {size}): "
                              f"it fails {where}: {summary.error}; the checkpoint was edited or written by other code "
                              f"(`finetune summary {arch} --img-size N` shows which sizes work)") from e


def evaluate_checkpoint(path: str | Path, *, data: str | None = None, batch_size: int = 64, workers: str = "0",
                        device: str = "auto", quiet: bool = True, tta: bool = False) -> dict[str, Any]:
    """Evaluate a checkpoint on its dataset's val split, or on ``data`` (see :func:`evaluate`).

    >>> import tempfile
    >>> from finetune import Checkpointer, create_model, make_shapes
    >>> from finetune.data.shapes import CLASSES
    >>> from finetune.train import evaluate_checkpoint
    >>> data = make_shapes(tempfile.mkdtemp(), per_class=1, val_per_class=1, size=32)
    >>> path = Checkpointer(tempfile.mkdtemp()).save({"model": create_model("squeezenet1_1", num_classes=8),
    ...     "arch": "squeezenet1_1", "classes": list(CLASSES), "img_size": 32, "epoch": 0, "step": 0})
    >>> m = evaluate_checkpoint(path, data=str(data), device="cpu")   # data's val/ folder
    >>> m["images"], sorted(m["per_class"]) == sorted(CLASSES), 0 <= m["top1"] <= 1
    (8, True, True)
    """
    dev = resolve_device(device)
    model, state = load_checkpoint_model(path, dev)
    moved = False
    cfg = state.get("config", {})
    classes = list(state["classes"])
    trained_on = str(cfg.get("data", "shapes"))
    split = dict(val_split=float(cfg.get("val_split", 0.1)), seed=int(cfg.get("seed", 0)))
    if data is None and "data" not in cfg:  # saved by other code (a loop of one's own): not the built-in shapes
        raise DataError(f"'{path}' does not say which data it was trained on (no config with a 'data' in it): "
                        "give data=PATH (--data), a folder or CSV to evaluate")
    if data is None:
        if trained_on != "shapes" and not Path(trained_on).exists():
            raise DataError(f"the data this checkpoint was trained on, '{trained_on}', is not found from here "
                            f"({Path.cwd()}): give data=PATH (--data), a folder or CSV to evaluate")
        data = trained_on
    elif moved := moved_training_data(data, state, trained_on, **split):
        where = "of which it is a copy" if Path(trained_on).exists() else "not found from here"
        warn(f"'{data}' holds the {state['train_images']} + {state['val_images']} images of the data this checkpoint "
             f"was trained on ('{trained_on}', {where}): scoring its validation split, as training held "
             "it out (not its training images)")
        trained_on = data
    # labelled by class name with the checkpoint's classes: a dataset that changed since training (a class
    # added, removed or renamed) is refused or scored by name, never with shifted indices
    samples = eval_samples(data, classes, trained_on=trained_on, **split)
    if not moved and (changed := changed_training_data(data, state, trained_on, **split)) is not None:
        warn(changed)  # (after eval_samples' errors; a moved copy was just found to split as training did)
    elif not moved and (trained := training_images_scored(samples, data, trained_on, **split)):
        warn(f"{trained} of the {len(samples)} images of '{data}' are training images of this checkpoint (of "
             f"'{trained_on}'): the score is not a held-out one; give its validation folder or a separate test folder")
    size, crop_pct, interpolation, crop_mode = eval_transform_of_checkpoint(state)
    loader = build_loader(samples, train=False, img_size=size, crop_pct=crop_pct, interpolation=interpolation,
                          crop_mode=crop_mode,
                          batch_size=batch_size, workers=workers, device=dev,
                          mean=tuple(state.get("mean", IMAGENET_MEAN)), std=tuple(state.get("std", IMAGENET_STD)))
    # the precision the run validated in (its --amp on this device: bf16 on CUDA by default), so that the
    # numbers are metrics.jsonl's val_* for the same data and checkpoint
    amp_name = str(cfg.get("amp") or "auto")
    amp = None if amp_name == "fp16" and dev.type != "cuda" else resolve_amp(amp_name, dev)
    with forward_failures_named(model, state, path):
        result = evaluate(model, loader, amp=amp, quiet=quiet, confusion=True, tta=tta)
    if tta:
        result["tta"] = "hflip"
    bad = loader.bad_file_list()
    if result["images"] == 0:  # a top-1 of 0% over no images is no score (predict refuses the same input)
        raise DataError(f"none of the {len(samples)} images of '{data}' can be read"
                        + (f" (e.g. '{bad[0].path}': {bad[0].reason})" if bad else "") + ": nothing to score")
    if bad:  # not scored: say so, a score over fewer images than the data has is not the data's score
        warn(f"skipped {len(bad)} unreadable image(s) of {len(samples)}, not scored (e.g. '{bad[0].path}': "
             f"{bad[0].reason})")
        result["skipped"] = [b.path for b in bad]
    return result


def moved_training_data(data: str, state: dict[str, Any], trained_on: str, *, val_split: float, seed: int) -> bool:
    """Whether ``data`` is the checkpoint's training data moved, renamed or copied: not ``trained_on`` itself
    (gone, or another path) and ``data`` splits, as training split it, into as many training and validation
    images of the same classes. Its validation split is then what ``eval`` scores: a flat folder (or a CSV without
    ``val`` rows) is otherwise scored whole, its training images with it.

    >>> import pathlib, tempfile
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for c in ("cat", "dog"):
    ...     (root / c).mkdir()
    ...     for i in range(10):
    ...         Image.new("RGB", (8, 8)).save(root / c / f"{i}.jpg")
    >>> state = {"classes": ["cat", "dog"], "train_images": 16, "val_images": 4}
    >>> moved_training_data(str(root), state, "/gone/photos", val_split=0.2, seed=0)
    True
    >>> moved_training_data(str(root), {**state, "train_images": 18}, "/gone/photos", val_split=0.2, seed=0)
    False
    """
    if (trained_on == "shapes" or "train_images" not in state or "val_images" not in state
            or (Path(trained_on).exists() and os.path.realpath(data) == os.path.realpath(trained_on))):
        return False
    now = _split_counts(data, val_split, seed)
    if now is None or now != (int(state["train_images"]), int(state["val_images"]), list(state["classes"])):
        return False
    # the training data still here: a copy has its files' names too (another folder of as many images, e.g. the
    # next fold of a cross-validation or a test set, is not one: it is scored whole)
    return not Path(trained_on).exists() or _file_names(data, val_split, seed) == _file_names(trained_on, val_split, seed)


def _file_names(data: str, val_split: float, seed: int) -> list[tuple[str, str]] | None:
    """(class, file name) of each image of ``data``, sorted; None when it does not read as training data."""
    try:
        with split_drawn_again():
            train_samples, val_samples = resolve_data(data, val_split, seed)
    except DataError:
        return None
    return sorted((s.classes[int(label)], os.path.basename(p)) for s in (train_samples, val_samples)
                  for p, label in zip(s.paths, s.labels, strict=True))


def training_images_scored(samples: Samples, data: str, trained_on: str, *, val_split: float, seed: int) -> int:
    """How many of ``samples`` (what ``eval`` scores of ``data``) are images the checkpoint was trained on: ``data``
    given as its training data's ``train/`` folder, or a CSV listing its training images. 0 when ``data`` is
    ``trained_on`` itself (its validation split is scored) or the training data is not found here.

    >>> import pathlib, tempfile
    >>> from PIL import Image
    >>> from finetune.data.samples import eval_samples
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for split, c in [(s, c) for s in ("train", "val") for c in ("cat", "dog")]:
    ...     (root / split / c).mkdir(parents=True)
    ...     Image.new("RGB", (8, 8)).save(root / split / c / "0.jpg")
    >>> [training_images_scored(eval_samples(root / s, ["cat", "dog"]), str(root / s), str(root), val_split=0.1,
    ...                         seed=0) for s in ("train", "val")]
    [2, 0]
    """
    import warnings

    if trained_on == "shapes" or not Path(trained_on).exists() or os.path.realpath(data) == os.path.realpath(trained_on):
        return 0
    real = functools.lru_cache(maxsize=None)(os.path.realpath)  # (per folder: a linked folder is the same images)
    if Path(trained_on).is_dir():
        # a folder's training images lie under it (under its train/ when it has one): when none of these do (a
        # test/ beside train/), none was trained on, and the training data need not be scanned
        inside = os.path.join(real(str(split_dir(trained_on, TRAIN_SPLIT_NAMES) or trained_on)), "")
        if not any(os.path.join(real(d), "").startswith(inside) for d in {os.path.dirname(p) for p in samples.paths}):
            return 0
    try:
        with warnings.catch_warnings():  # (the training data's own warnings were given when it trained)
            warnings.simplefilter("ignore")
            train_samples = resolve_data(trained_on, val_split, seed)[0]
    except DataError:
        return 0
    trained = {os.path.join(real(os.path.dirname(p)), os.path.basename(p)) for p in train_samples.paths.tolist()}
    return sum(os.path.join(real(os.path.dirname(p)), os.path.basename(p)) in trained for p in samples.paths.tolist())


def _split_counts(data: str, val_split: float, seed: int) -> tuple[int, int, list[str]] | None:
    """(training images, validation images, classes) of ``data`` split as training splits it; None when it
    does not read as training data (eval_samples then says what is wrong with it)."""
    try:
        with split_drawn_again():  # (eval's data, perhaps not split at all: no warning about the split's size)
            train_samples, val_samples = resolve_data(data, val_split, seed)
    except DataError:
        return None
    return len(train_samples), len(val_samples), list(train_samples.classes)


def changed_training_data(data: str, state: dict[str, Any], trained_on: str, *, val_split: float,
                          seed: int) -> str | None:
    """A warning when ``data`` is the checkpoint's own training data (the same path) but no longer splits
    into the training and validation images the checkpoint was trained with (images were added, removed
    or renamed since): the validation split drawn now is not the one training held out, and a flat folder's
    (or a CSV's without val rows) may hold images the model was trained on. None when nothing changed.

    >>> import pathlib, tempfile
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for c in ("cat", "dog"):
    ...     (root / c).mkdir()
    ...     for i in range(10):
    ...         Image.new("RGB", (8, 8)).save(root / c / f"{i}.jpg")
    >>> state = {"classes": ["cat", "dog"], "train_images": 16, "val_images": 4}
    >>> changed_training_data(str(root), state, str(root), val_split=0.2, seed=0) is None
    True
    >>> Image.new("RGB", (8, 8)).save(root / "cat" / "new.jpg")
    >>> changed_training_data(str(root), state, str(root), val_split=0.2, seed=0)[:40]
    'the data this checkpoint was trained on,'
    """
    if (trained_on == "shapes" or "train_images" not in state or "val_images" not in state
            or not Path(data).exists() or not Path(trained_on).exists()
            or os.path.realpath(data) != os.path.realpath(trained_on)):
        return None
    try:
        if not split_is_drawn(data):  # train/ + val/ folders, val rows: the validation images are given
            return None
    except DataError:
        return None
    now, then = _split_counts(data, val_split, seed), (int(state["train_images"]), int(state["val_images"]))
    if now is None or now[:2] == then:
        return None
    return (f"the data this checkpoint was trained on, '{data}', has changed since: it splits into "
            f"{now[0]} + {now[1]} training + validation images, training had {then[0]} + "
            f"{then[1]}; the validation split scored now is not the one training held out (it may hold images the "
            "model was trained on): evaluate on a separate test folder for a clean score")


def eval_transform_of_checkpoint(state: dict[str, Any]) -> tuple[int, float, str, str]:
    """``(img_size, crop_pct, interpolation, crop_mode)`` of the eval transform a checkpoint's run
    used: what ``eval``, ``predict`` and ``cam`` give its model. Checkpoints written before these
    were saved (and other code's): torchvision's classic 0.875, bilinear, centre.

    >>> eval_transform_of_checkpoint({"img_size": 384, "crop_pct": 1.0, "interpolation": "bicubic"})
    (384, 1.0, 'bicubic', 'center')
    >>> eval_transform_of_checkpoint({"img_size": 32})
    (32, 0.875, 'bilinear', 'center')
    """
    cfg = state.get("config") if isinstance(state.get("config"), dict) else {}
    size = state.get("img_size", cfg.get("img_size")) or 224
    crop_pct = state.get("crop_pct") or cfg.get("crop_pct") or EVAL_CROP_PCT
    interpolation = state.get("interpolation") or cfg.get("interpolation") or "bilinear"
    crop_mode = state.get("crop_mode") or cfg.get("crop_mode") or "center"
    try:
        size, crop_pct = int(size), float(crop_pct)
    except (TypeError, ValueError):
        raise CheckpointError(f"the checkpoint's eval transform is unreadable (img_size {size!r}, crop_pct "
                              f"{crop_pct!r}): it was edited or written by other code") from None
    if size < 1 or not 0 < crop_pct <= 1 or interpolation not in ("bilinear", "bicubic") or crop_mode not in (
            "center", "squash"):
        raise CheckpointError(f"the checkpoint's eval transform is not usable (img_size {size}, crop_pct {crop_pct}, "
                              f"interpolation {interpolation!r}, crop_mode {crop_mode!r}): it was edited or written "
                              "by other code")
    return size, crop_pct, interpolation, crop_mode


def _expand_inputs(inputs: list[str]) -> list[Path]:
    """The image files of ``inputs``: files as named, folders searched recursively."""
    return [f for f, _ in _found_inputs(inputs)]


def _found_inputs(inputs: list[str]) -> list[tuple[Path, bool]]:
    """Each image file of ``inputs`` with whether it was found in a folder (True) or named (False).
    Folders are searched as the dataset's are (:func:`finetune.data.samples.image_files`: hidden
    folders such as ``.ipynb_checkpoints`` and OS droppings are not images)."""
    import warnings
    from collections import Counter

    from finetune.data.samples import describe_unread, image_files

    files: list[tuple[Path, bool]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            counted: Counter[str] = Counter()
            top = os.path.abspath(p)  # (paths as the user spelled the folder)
            found = [p / os.path.relpath(f, top) for f in image_files(p, counted)]
            unread = describe_unread(counted)
            if not found:
                raise DataError(f"no images found in '{p}'" + (f"; it holds {unread}" if unread else ""))
            if unread:
                warnings.warn(DataWarning(f"'{p}': skipped {unread}"), stacklevel=2)
            files += [(f, True) for f in found]
        elif p.is_file():
            files.append((p, False))
        else:
            raise DataError(f"'{p}' does not exist")
    return files


@torch.no_grad()
def predict_files(checkpoint: str | Path, inputs: list[str], *, topk: int = 5, batch_size: int = 64,
                  device: str = "auto", tta: bool = False, unreadable_records: bool = False,
                  quiet: bool = False) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file (directories are searched recursively);
    with ``tta``, the mean of the image's and its mirror image's (:func:`class_probabilities`).
    A progress bar on a terminal unless ``quiet``.
    An unreadable file found in a folder is skipped with a warning; files named in ``inputs`` that
    cannot be read raise :class:`~finetune.errors.UnreadableImagesError` (a ``DataError``) once the
    others are predicted, its ``predictions`` what would have been returned. With ``unreadable_records``,
    each image that cannot be read (named or found in a folder) is a record too, in its place: ``{"path",
    "error"}`` (no ``"top"``), so the output names every image file found.

    >>> import os, tempfile
    >>> from PIL import Image
    >>> from finetune import Checkpointer, create_model
    >>> from finetune.train import predict_files
    >>> path = Checkpointer(tempfile.mkdtemp()).save({"model": create_model("squeezenet1_1", num_classes=2),
    ...     "arch": "squeezenet1_1", "classes": ["cat", "dog"], "img_size": 32, "epoch": 0, "step": 0})
    >>> images = tempfile.mkdtemp(); os.mkdir(f"{images}/sub")
    >>> Image.new("RGB", (40, 30), "red").save(f"{images}/red.jpg")
    >>> Image.new("RGB", (30, 40), "blue").save(f"{images}/sub/blue.jpg")
    >>> out = predict_files(path, [images], topk=5, device="cpu")
    >>> [os.path.basename(o["path"]) for o in out], [len(o["top"]) for o in out]   # k <= number of classes
    (['red.jpg', 'blue.jpg'], [2, 2])
    >>> round(sum(t["prob"] for t in out[0]["top"]), 4), sorted(t["class"] for t in out[0]["top"])
    (1.0, ['cat', 'dog'])
    >>> _ = open(f"{images}/notes.jpg", "w").write("not an image")
    >>> try:
    ...     predict_files(path, [f"{images}/red.jpg", f"{images}/notes.jpg"], device="cpu")
    ... except DataError as e:
    ...     print(e.unreadable, [os.path.basename(o["path"]) for o in e.predictions])  # doctest: +ELLIPSIS
    ["cannot read image '.../notes.jpg': not an image ..."] ['red.jpg']
    """
    dev = resolve_device(device)
    model, state = load_checkpoint_model(checkpoint, dev)
    classes = list(state["classes"])
    size, crop_pct, interpolation, crop_mode = eval_transform_of_checkpoint(state)
    # the loader's eval path exactly: full-size decode, Resize + CenterCrop, the same normaliser
    normalizer = Normalizer(tuple(state.get("mean", IMAGENET_MEAN)), tuple(state.get("std", IMAGENET_STD)), dev,
                            channels_last=False)
    k = max(1, min(topk, len(classes)))
    out: list[dict[str, Any]] = []
    found = _found_inputs(inputs)
    unreadable: list[str] = []  # the files named that cannot be read: an error once the others are predicted
    nonfinite_warned = False
    for start in progress(range(0, len(found), batch_size), total=math.ceil(len(found) / batch_size),
                          desc="predict", quiet=quiet):
        chunk, crops = [], []
        slots: list[dict[str, str] | None] = []  # in order: None for a file of chunk, the record of one not read
        for f, in_folder in found[start:start + batch_size]:
            try:
                crops.append(eval_crop(f, size, crop_pct, interpolation, crop_mode))
            except DataError as e:
                if not in_folder:  # a file named on the command line: an error, after the others
                    unreadable.append(str(e))
                else:
                    warn(f"{e} (skipped)")  # an unreadable file found in a folder does not stop the others
                if unreadable_records:
                    slots.append({"path": str(f), "error": str(e)})
                continue
            chunk.append(f)
            slots.append(None)
        if not chunk:
            out.extend(slots)
            continue
        batch = normalizer(torch.stack(crops).to(dev))
        with forward_failures_named(model, state, checkpoint):
            probs = class_probabilities(model, batch, tta=tta)
        if not bool(torch.isfinite(probs).all()) and not nonfinite_warned:
            nonfinite_warned = True
            warn(f"the model's outputs are not finite (NaN/inf) for '{chunk[0]}' and maybe others: the checkpoint's "
                 "weights hold NaN or inf values (check it with `finetune inspect`); its ranking means nothing")
        top = probs.topk(k, dim=1)
        predicted = iter({"path": str(f), "top": [{"class": classes[i], "index": i, "prob": v}
                                                  for v, i in zip(values, indices, strict=True)]}
                         for f, values, indices in zip(chunk, top.values.tolist(), top.indices.tolist(), strict=True))
        out.extend(next(predicted) if slot is None else slot for slot in slots)
    if unreadable:
        raise UnreadableImagesError(unreadable, out, named=sum(not in_folder for _, in_folder in found))
    if not any("top" in o for o in out):
        raise DataError(f"none of the {len(found)} images found can be read")
    return out


def predict(checkpoint: str | Path, inputs: list[str], **kwargs: Any) -> list[dict[str, Any]]:
    """Alias of :func:`predict_files` for the public API.

    >>> import tempfile
    >>> from PIL import Image
    >>> from finetune import Checkpointer, create_model, predict
    >>> path = Checkpointer(tempfile.mkdtemp()).save({"model": create_model("squeezenet1_1", num_classes=2),
    ...     "arch": "squeezenet1_1", "classes": ["cat", "dog"], "img_size": 32, "epoch": 0, "step": 0})
    >>> image = tempfile.mkdtemp() + "/red.jpg"; Image.new("RGB", (40, 30), "red").save(image)
    >>> [result] = predict(path, [image], topk=1, device="cpu")
    >>> result["path"] == image, result["top"][0]["class"] in ("cat", "dog"), 0.5 <= result["top"][0]["prob"] <= 1
    (True, True, True)
    """
    return predict_files(checkpoint, inputs, **kwargs)

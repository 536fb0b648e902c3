"""One dataclass for a training run, read from YAML and flags, saved in the run directory.

YAML keys are the long flag names (``batch-size`` or ``batch_size``); flags
given on the command line override the file.

>>> cfg = TrainConfig(epochs=2)
>>> TrainConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import math
import os
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError, named


@dataclass
class TrainConfig:
    """Every knob of ``finetune train``.

    ``None`` means "the default for this data": :meth:`resolved` fills it in
    (and the run's ``config.yaml`` holds the resolved values). The defaults
    train the built-in ``shapes`` to >90% val top-1 in under 3 minutes on 2 CPU
    cores; on your own images they are torchvision's recipe (224 px,
    RandomResizedCrop scale 0.08-1) with a fine-tuning learning rate.

    >>> from finetune import TrainConfig
    >>> cfg = TrainConfig(epochs=2, freeze=["layer1"], crop_scale=(0.5, 1.0))
    >>> cfg.model, cfg.epochs, cfg.lr, cfg.resolved().lr
    ('resnet18', 2, None, 0.003)
    >>> cfg.to_dict()["crop_scale"], cfg.to_dict()["freeze"]
    ([0.5, 1.0], ['layer1'])
    >>> import pathlib; TrainConfig(data=pathlib.Path("photos"), out=pathlib.Path("runs/a")).out  # paths: their text
    'runs/a'
    """

    # data
    data: str = "shapes"
    val_split: float = 0.1
    img_size: int | None = None  # shapes: 32, otherwise 224
    crop_scale: tuple[float, float] | None = None  # shapes: (0.7, 1), otherwise (0.08, 1)
    # eval transform: shorter side to img_size / crop_pct, then the centre img_size square; None: the
    # pretrained weights' own (timm's pretrained_cfg, torchvision's weights), else 0.875 and bilinear
    crop_pct: float | None = None
    interpolation: str | None = None  # bilinear | bicubic
    crop_mode: str | None = None  # center (shorter side to img_size / crop_pct) | squash (both sides, timm's)
    augment: bool = True  # False: training batches (seeded order) with the eval transform
    batch_size: int | None = None  # None: 32 for the built-in shapes data (twice the steps of 64 in its short demo), else 64
    workers: str = "auto"
    decode: str = "auto"  # cpu | gpu (nvjpeg) | auto
    cache: str | None = None  # none | ram | gpu: decoded images kept for later epochs (shapes: ram, else none)
    prefetch: str = "auto"  # auto | none | thread | cuda
    auto_augment: str = "none"  # none | trivialaugment | randaugment
    strict_data: bool = False  # unreadable images stop the run (default: skipped, listed in bad_files.txt)
    # model
    model: str = "resnet18"
    pretrained: str | None = None
    dropout: float | None = None  # dropout before the classifier (None: the architecture's default)
    drop_path: float | None = None  # stochastic depth rate (timm drop_path_rate / torchvision stochastic_depth_prob)
    # a timm ViT's pooling: token (class token, final norm) | avg (patch-token mean, then fc_norm); None: avg for a
    # --pretrained file that pools by average (fc_norm, no norm: MAE's fine-tuned ViTs), else the model's own
    global_pool: str | None = None
    exclude: list[str] = field(default_factory=list)
    shape_mismatch: str = "skip"
    trust: bool = False
    # what trains (see finetune.freeze)
    freeze: list[str] = field(default_factory=list)
    train_only: list[str] = field(default_factory=list)
    linear_probe: bool = False
    cache_features: bool = False
    bn: str = "frozen"
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over every process's batch (finetune.sync_bn)
    lr_mult: dict[str, float] = field(default_factory=dict)
    layer_decay: float | None = None
    unfreeze: list[str] = field(default_factory=list)  # PATTERN@EPOCH, epochs counted from 1
    # optimisation
    epochs: int = 14
    optimizer: str = "adamw"
    lr: float | None = None  # adamw: 3e-3 from scratch, 5e-4 from pretrained weights; sgd: 0.1 / 0.01
    momentum: float = 0.9
    weight_decay: float | None = None  # adamw: 0.05, sgd: 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    class_weights: str = "none"  # none | balanced: the training loss weighs class c by n / (classes x count_c)
    mixup: float = 0.0  # Beta(alpha, alpha) of Mixup (0: off)
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix (0: off); with both, one of them per batch
    ema: float | None = None  # keep an exponential moving average of the weights with this decay (0.999)
    clip_grad: float | None = None  # clip the gradients' total norm to this (after unscaling fp16)
    grad_accum: int = 1  # batches per optimizer step (gradient accumulation): effective batch grad_accum x batch_size
    early_stop: int | None = None  # stop when val top-1 has not improved for this many epochs
    max_steps: int | None = None
    # speed
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    # run directory and checkpoints
    seed: int = 0
    out: str | None = None
    resume: str | None = None
    keep_last: int = 3
    save_every_steps: int | None = None
    save_every_minutes: float | None = None
    async_save: bool | None = None
    tensorboard: bool = False

    def __post_init__(self) -> None:
        # a Python caller's pathlib.Path (or any os.PathLike) for a path setting: its text, as YAML and flags give it
        for name in ("data", "pretrained", "out", "resume"):
            if isinstance(value := getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(value))

    def to_dict(self) -> dict[str, Any]:
        """Every setting by its field name, as plain values (``crop_scale`` a list): a checkpoint's
        ``config`` (the run's ``config.yaml`` holds it with dashed keys); :meth:`from_dict` reads it back.

        >>> from finetune import TrainConfig
        >>> d = TrainConfig(epochs=2, crop_scale=(0.5, 1.0)).to_dict()
        >>> d["epochs"], d["crop_scale"], d["model"], d["lr"]
        (2, [0.5, 1.0], 'resnet18', None)
        >>> TrainConfig.from_dict(d) == TrainConfig(epochs=2, crop_scale=(0.5, 1.0))
        True
        """
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale) if self.crop_scale is not None else None
        return d

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` default filled in for this data and optimizer.

        >>> from finetune import TrainConfig
        >>> cfg = TrainConfig().resolved()
        >>> cfg.img_size, cfg.batch_size, cfg.crop_scale, cfg.lr, cfg.weight_decay, cfg.cache
        (32, 32, (0.7, 1.0), 0.003, 0.05, 'ram')
        >>> TrainConfig(data="photos/").resolved().batch_size
        64
        >>> TrainConfig(data="photos/", pretrained="torchvision").resolved().img_size
        224
        >>> TrainConfig(data="photos/", model="efficientnet_b3", pretrained="torchvision").resolved().img_size
        300
        >>> cfg = TrainConfig(model="timm:vit_tiny_patch16_224").resolved()
        >>> cfg.crop_pct, cfg.interpolation
        (0.9, 'bicubic')
        """
        shapes = self.data == "shapes"
        sgd = self.optimizer == "sgd"
        lr = (0.01 if sgd else 5e-4) if self.pretrained else (0.1 if sgd else 3e-3)
        weights_eval = self._eval_transform()  # (crop_pct, interpolation, crop_mode) of the pretrained weights
        return dataclasses.replace(
            self,
            # absolute: `finetune eval` reads the checkpoint's config from wherever it is run
            # (a YAML file's '~/photos' is not expanded by any shell)
            data=self.data if shapes or not os.path.exists(os.path.expanduser(self.data))
            else os.path.abspath(os.path.expanduser(self.data)),
            img_size=self.img_size if self.img_size is not None else (32 if shapes else self._pretrained_size() or 224),
            crop_scale=self.crop_scale if self.crop_scale is not None else ((0.7, 1.0) if shapes else (0.08, 1.0)),
            crop_pct=self.crop_pct if self.crop_pct is not None else weights_eval[0],
            interpolation=self.interpolation if self.interpolation is not None else weights_eval[1],
            crop_mode=self.crop_mode if self.crop_mode is not None else weights_eval[2],
            # the demo's 14 epochs of 4,000 images: batch 32 took seed 0 from 89.25% (batch 64) to 97.75%
            # val top-1 at about the same images/s (BENCHMARKS.md, demo)
            batch_size=self.batch_size if self.batch_size is not None else (32 if shapes else 64),
            lr=self.lr if self.lr is not None else lr,
            weight_decay=self.weight_decay if self.weight_decay is not None else (5e-4 if sgd else 0.05),
            # the built-in dataset fits in memory many times over: decode it once (the demo trained at
            # 418-491 img/s with it, 399-410 without: BENCHMARKS.md, demo run)
            cache=self.cache if self.cache is not None else ("ram" if shapes else "none"),
            global_pool=self.global_pool if self.global_pool is not None else self._weights_global_pool(),
        )

    def _pretrained_size(self) -> int | None:
        from finetune.models import pretrained_input_size

        return pretrained_input_size(self.model, self.pretrained)

    def _weights_global_pool(self) -> str | None:
        from finetune.models import weights_global_pool

        return weights_global_pool(self.model, self.pretrained)

    def _eval_transform(self) -> tuple[float, str, str]:
        from finetune.models import eval_transform_of

        return eval_transform_of(self.model, self.pretrained)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a dict whose keys may use dashes; unknown keys are an error naming close ones.

        >>> from finetune import TrainConfig
        >>> cfg = TrainConfig.from_dict({"batch-size": 16, "freeze": "layer1", "lr-mult": ["fc=10"]})
        >>> cfg.batch_size, cfg.freeze, cfg.lr_mult
        (16, ['layer1'], {'fc': 10.0})
        >>> TrainConfig.from_dict({"epoch": 3}, source="c.yaml")
        Traceback (most recent call last):
        finetune.errors.ConfigError: c.yaml: unknown setting 'epoch'; did you mean epochs?
        """
        cfg = cls(**settings(values, source))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work.

        >>> from finetune import TrainConfig
        >>> TrainConfig(epochs=3, unfreeze=["layer4@2"]).validate()
        >>> TrainConfig(optimizer="adam").validate()
        Traceback (most recent call last):
        finetune.errors.ConfigError: optimizer (--optimizer) must be sgd or adamw, got 'adam'
        >>> TrainConfig(epochs=3, unfreeze=["layer4@5"]).validate()
        Traceback (most recent call last):
        finetune.errors.ConfigError: unfreeze='layer4@5' (--unfreeze layer4@5): epoch 5 is outside 1..3
        """
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name))
        finite = [(name, getattr(self, name)) for name in _FLOAT_FIELDS]
        for name, value in finite:
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"{named(name)} must be a finite number, got {value}")
        checks = [
            (self.epochs >= 1, f"{named('epochs')} must be at least 1, got {self.epochs}"),
            (self.batch_size is None or self.batch_size >= 1, f"{named('batch_size')} must be at least 1, got {self.batch_size}"),
            (self.lr is None or self.lr > 0, f"{named('lr')} must be positive, got {self.lr}"),
            (self.img_size is None or self.img_size >= 16, f"{named('img_size')} must be at least 16, got {self.img_size}"),
            (self.weight_decay is None or self.weight_decay >= 0, f"{named('weight_decay')} must be >= 0, got {self.weight_decay}"),
            (self.optimizer in ("sgd", "adamw"), f"{named('optimizer')} must be sgd or adamw, got {self.optimizer!r}"),
            (self.global_pool in (None, "token", "avg"),
             f"{named('global_pool')} must be token or avg, got {self.global_pool!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"{named('device')} must be auto, cpu or cuda, got {self.device!r}"),
            (self.amp in ("auto", "off", "bf16", "fp16"), f"{named('amp')} must be auto, off, bf16 or fp16, got {self.amp!r}"),
            (self.shape_mismatch in ("skip", "error", "adapt"), f"{named('shape_mismatch')} must be skip, error or adapt, got {self.shape_mismatch!r}"),
            (0.0 <= self.label_smoothing < 1.0, f"{named('label_smoothing')} must be in [0, 1), got {self.label_smoothing}"),
            (self.class_weights in ("none", "balanced"),
             f"{named('class_weights')} must be none or balanced, got {self.class_weights!r}"),
            (self.keep_last >= 1, f"{named('keep_last')} must be at least 1, got {self.keep_last}"),
            (self.warmup_epochs >= 0, f"{named('warmup_epochs')} must be >= 0, got {self.warmup_epochs}"),
            (self.crop_scale is None or 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
             f"{named('crop_scale')} must be 0 < min <= max <= 1, got {self.crop_scale}"),
            (self.crop_pct is None or 0 < self.crop_pct <= 1,
             f"{named('crop_pct')} must be in (0, 1] (the centre crop's share of the resized image, e.g. 0.875), got {self.crop_pct}"),
            (self.interpolation in (None, "bilinear", "bicubic"),
             f"{named('interpolation')} must be bilinear or bicubic, got {self.interpolation!r}"),
            (self.crop_mode in (None, "center", "squash"), f"{named('crop_mode')} must be center or squash, got {self.crop_mode!r}"),
            (self.decode in ("auto", "cpu", "gpu"), f"{named('decode')} must be auto, cpu or gpu, got {self.decode!r}"),
            (self.cache in (None, "none", "ram", "gpu"), f"{named('cache')} must be none, ram or gpu, got {self.cache!r}"),
            (self.prefetch in ("auto", "none", "thread", "cuda"), f"{named('prefetch')} must be auto, none, thread or cuda, got {self.prefetch!r}"),
            (self.auto_augment in ("none", "trivialaugment", "randaugment"),
             f"{named('auto_augment')} must be none, trivialaugment or randaugment, got {self.auto_augment!r}"),
            (self.bn in ("frozen", "eval", "train"), f"{named('bn')} must be frozen, eval or train, got {self.bn!r}"),
            (not self.cache_features or self.linear_probe,
             f"{named('cache_features')} needs {named('linear_probe')} (only the head may train)"),
            (not (self.cache_features and self.bn != "frozen"),
             f"{named('cache_features')} computes the backbone features once, in eval mode, so "
             f"{named('bn', self.bn)} (BatchNorm layers of the backbone that train) could not change them: drop one "
             f"of them ({named('bn', 'frozen')} is the default)"),
            (self.layer_decay is None or 0 < self.layer_decay <= 1, f"{named('layer_decay')} must be in (0, 1], got {self.layer_decay}"),
            (0 < self.val_split < 1, f"{named('val_split')} must be between 0 and 1 (exclusive), got {self.val_split}"),
            (0 <= self.momentum < 1, f"{named('momentum')} must be in [0, 1), got {self.momentum}"),
            (0 <= self.seed <= MAX_SEED, f"{named('seed')} must be a whole number from 0 to {MAX_SEED}, got {self.seed}"),
            (self.max_steps is None or self.max_steps >= 1, f"{named('max_steps')} must be at least 1, got {self.max_steps}"),
            (self.dropout is None or 0 <= self.dropout < 1, f"{named('dropout')} must be in [0, 1), got {self.dropout}"),
            (self.drop_path is None or 0 <= self.drop_path < 1, f"{named('drop_path')} must be in [0, 1), got {self.drop_path}"),
            (self.mixup >= 0 and self.cutmix >= 0,
             f"{_MIXUP_CUTMIX} must be >= 0, got {self.mixup}/{self.cutmix}"),
            (not (self.cache_features and self.auto_augment != "none"),
             f"{named('cache_features')} computes the backbone features once, with the eval transform, so "
             f"{named('auto_augment', self.auto_augment)} could not change them: drop one of them"),
            (not (self.cache_features and (self.mixup or self.cutmix)),
             f"{named('cache_features')} trains the head on fixed features: {_MIXUP_CUTMIX} cannot mix them; "
             "drop one of them"),
            (self.ema is None or 0 < self.ema < 1, f"{named('ema')} must be a decay in (0, 1) such as 0.999, got {self.ema}"),
            (self.clip_grad is None or self.clip_grad > 0, f"{named('clip_grad')} must be positive, got {self.clip_grad}"),
            (self.grad_accum >= 1, f"{named('grad_accum')} must be at least 1 (batches per optimizer step), got {self.grad_accum}"),
            (self.early_stop is None or self.early_stop >= 1, f"{named('early_stop')} must be at least 1 epoch, got {self.early_stop}"),
            (self.save_every_steps is None or self.save_every_steps >= 1,
             f"{named('save_every_steps')} must be at least 1, got {self.save_every_steps}"),
            (self.save_every_minutes is None or self.save_every_minutes > 0,
             f"{named('save_every_minutes')} must be positive, got {self.save_every_minutes}"),
            (str(self.workers) == "auto" or (str(self.workers).isascii() and str(self.workers).isdigit()),
             f"{named('workers')} must be 'auto' or a number of processes (0 or more), got {self.workers!r}"),
            (self.data.strip() != "", f"{named('data')} must not be empty: give an image folder, a CSV file, or 'shapes'"),
            (self.model.strip() != "", f"{named('model')} must not be empty: give a torchvision model name or timm:NAME"),
            (self.out is None or self.out.strip() != "", f"{named('out')} must not be empty: give a run directory"),
            (self.pretrained is None or self.pretrained.strip() != "",
             f"{named('pretrained')} must not be empty: give a weights file, 'torchvision' or timm:NAME, or leave it out"),
            (self.resume is None or self.resume.strip() != "",
             f"{named('resume')} must not be empty: give 'auto' or a checkpoint file, or leave it out"),
            (all(p.strip() for p in self.exclude), f"{named('exclude')} patterns must not be empty, got {self.exclude}"),
            (not self.exclude or self.pretrained is not None,
             f"{named('exclude')} names weights not to load from {named('pretrained')}, and there is no "
             f"pretrained: give {named('pretrained', flag='--pretrained SOURCE')}, or drop exclude"),
            (not (str(self.workers).isascii() and str(self.workers).isdigit()) or int(self.workers) <= max_workers(),
             f"{named('workers', self.workers)} is more than {max_workers()} (8 per CPU core here): give fewer, "
             "or 'auto'"),
            (self.resume != "auto" or self.out is not None,
             f"{named('resume', 'auto')} needs {named('out', flag='--out RUN_DIR')}: the run directory to continue"),
            (not (self.linear_probe and self.train_only),
             f"{named('linear_probe')} trains the head only and {named('train_only')} names what trains: "
             "give one of them"),
            (not (self.cache_features and self.unfreeze),
             f"{named('cache_features')} computes the backbone features once, so {named('unfreeze')} could not "
             "change them: drop one of them"),
            (self.augment or self.auto_augment == "none",
             f"{named('augment', False, flag='--no-augment')} turns training augmentation off, so "
             f"{named('auto_augment', self.auto_augment)} would do nothing: drop one of them"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        parse_unfreeze(self.unfreeze, self.epochs)


def settings(values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """``values`` (keys may use dashes) as TrainConfig field names and types; unknown keys are an error naming
    close ones, each value's error names ``source``. Nothing is checked against the other settings.

    >>> settings({"batch-size": "16", "freeze": "layer1"})
    {'batch_size': 16, 'freeze': ['layer1']}
    """
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    clean: dict[str, Any] = {}
    keys: dict[str, Any] = {}  # the key each setting was given under
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{source}: unknown setting '{key}'{hint}")
        if name in keys:  # (batch-size and batch_size: one of them would be dropped without a word)
            raise ConfigError(f"{source}: gives '{keys[name]}' and '{key}', the same setting: keep one")
        keys[name] = key
        clean[name] = _coerce(name, value, source)
    return clean


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_MIXUP_CUTMIX = named("mixup/cutmix", flag="--mixup/--cutmix")


def _field_kind(name: str) -> tuple[Any, bool]:
    """(base type, may be None) of a TrainConfig field: ``int | None`` -> (int, True)."""
    hint = _HINTS[name]
    optional = False
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    return typing.get_origin(hint) or hint, optional


_HINTS: dict[str, Any] = typing.get_type_hints(TrainConfig)
_FLOAT_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if _field_kind(f.name)[0] is float)
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _coerce(name: str, value: Any, source: str = "config") -> Any:
    """A value read from YAML as the field's type, or a ConfigError that says which setting and what it takes.

    YAML writes some numbers as strings (``lr: 1e-3`` is the string '1e-3' in YAML 1.1): those are
    read as numbers; anything that is not what the setting takes is an error, never a silent default.

    >>> _coerce("lr", "1e-3"), _coerce("epochs", 3.0), _coerce("freeze", "layer1"), _coerce("workers", 2)
    (0.001, 3, ['layer1'], '2')
    >>> _coerce("amp", False)  # `amp: off` in YAML (read as false)
    'off'
    >>> _coerce("epochs", "abc", "c.yaml")
    Traceback (most recent call last):
    finetune.errors.ConfigError: c.yaml: epochs must be a whole number, got 'abc'
    """
    kind, optional = _field_kind(name)
    where = f"{source}: {name.replace('_', '-')}" if source != "command line" else _flag(name)

    def bad(takes: str) -> ConfigError:
        return ConfigError(f"{where} must be {takes}, got {value!r}")

    if value is None:
        if optional:
            return None
        default = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
        shown = default.default if default.default is not dataclasses.MISSING else default.default_factory()  # type: ignore[misc]
        raise ConfigError(f"{where} is empty (null): give a value, or leave the setting out for the default ({shown!r})")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str | int) and str(value).strip().lower() in _TRUE + _FALSE:
            return str(value).strip().lower() in _TRUE
        raise bad("true or false")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("a whole number")
    if kind is float:
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        if _is_number(value):
            return float(value)
        raise bad("a number")
    if kind is str:
        if isinstance(value, str):
            return value
        if _is_number(value):  # a folder or run named 2024, workers: 4
            return str(value)
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted off / no / on / yes as false / true
            if name == "amp" and value is False:  # `amp: off`, as --amp off is written
                return "off"
            raise ConfigError(f"{where} must be a single value (text), got {value!r}: YAML reads an unquoted "
                              f"yes / no / on / off as true / false; quote the word ({name.replace('_', '-')}: 'no')")
        raise bad("a single value (text)")
    if kind is list:
        if isinstance(value, str) or _is_number(value):
            return [str(value)]
        if isinstance(value, list | tuple) and all(isinstance(v, str) or _is_number(v) for v in value):
            return [str(v) for v in value]
        raise bad("a pattern or a list of patterns")
    if kind is dict:  # lr_mult: {pattern: multiplier} or ["pattern=x", ...]
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return parse_lr_mult(list(value))
        if isinstance(value, dict):
            out: dict[str, float] = {}
            for k, v in value.items():
                try:
                    out[str(k)] = float(v.strip() if isinstance(v, str) else v)
                except (TypeError, ValueError):
                    raise ConfigError(f"{where}: the multiplier of '{k}' must be a number, got {v!r}") from None
                if isinstance(v, bool):
                    raise ConfigError(f"{where}: the multiplier of '{k}' must be a number, got {v!r}")
            return out
        raise bad("a mapping of PATTERN: MULTIPLIER or a list of PATTERN=MULTIPLIER")
    if kind is tuple:  # crop_scale
        if isinstance(value, list | tuple) and len(value) == 2 and not any(isinstance(v, bool) for v in value):
            try:
                return tuple(float(v.strip() if isinstance(v, str) else v) for v in value)
            except (TypeError, ValueError):
                pass
        raise bad("two numbers [MIN, MAX]")
    return value


def _check_type(name: str, value: Any) -> None:
    """ConfigError unless ``value`` has the type of field ``name`` (for a TrainConfig built in code)."""
    kind, optional = _field_kind(name)
    if value is None:
        ok = optional
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = _is_number(value)
    elif kind is str:
        ok = isinstance(value, str) or (name == "workers" and isinstance(value, int) and not isinstance(value, bool))
    elif kind is list:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    elif kind is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) and _is_number(v) for k, v in value.items())
    elif kind is tuple:
        ok = isinstance(value, list | tuple) and len(value) == 2 and all(_is_number(v) for v in value)
    else:
        ok = True
    if not ok:
        takes = {bool: "true or false", int: "a whole number", float: "a number", str: "text",
                 list: "a list of patterns", dict: "a mapping of pattern to multiplier",
                 tuple: "two numbers (MIN, MAX)"}.get(kind, str(kind))
        raise ConfigError(f"{named(name)} must be {takes}, got {value!r}")


def parse_lr_mult(items: list[str]) -> dict[str, float]:
    """``["layer4=0.1", "fc=1"]`` -> ``{"layer4": 0.1, "fc": 1.0}``.

    >>> parse_lr_mult(["layer4=0.1"])
    {'layer4': 0.1}
    """
    out: dict[str, float] = {}
    for item in items:
        pattern, sep, value = str(item).rpartition("=")
        try:
            number = float(value)
        except ValueError:
            pattern = ""
        if not sep or not pattern:
            raise ConfigError(f"{named('lr_mult')} takes PATTERN=MULTIPLIER (e.g. layer4=0.1), got {item!r}")
        if pattern in out:
            raise ConfigError(f"{named('lr_mult')} gives '{pattern}' twice ({pattern}={out[pattern]:g} and {item}): "
                              "give it once")
        out[pattern] = number
    return out


def parse_unfreeze(items: list[str], epochs: int) -> list[tuple[str, int]]:
    """``["layer4@3"]`` -> ``[("layer4", 3)]``: the pattern trains from epoch 3 on (counted from 1).

    >>> parse_unfreeze(["layer4@3", "layer3.*@5"], epochs=8)
    [('layer4', 3), ('layer3.*', 5)]
    """
    out: list[tuple[str, int]] = []
    for item in items:
        pattern, sep, epoch = str(item).rpartition("@")
        if not sep or not pattern or not epoch.isdigit():
            raise ConfigError(f"{named('unfreeze')} takes PATTERN@EPOCH (e.g. layer4@3), got {item!r}")
        if not 1 <= int(epoch) <= epochs:
            raise ConfigError(f"{named('unfreeze', item)}: epoch {epoch} is outside 1..{epochs}")
        out.append((pattern, int(epoch)))
    return out


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML file of settings.

    >>> from finetune import load_config
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = p.write_text("epochs: 3\\nbatch-size: 16\\n")
    >>> load_config(p).batch_size
    16
    """
    return TrainConfig.from_dict(_read_yaml(path), source=str(path))


def _read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML settings file; every way the file can be unusable is a ConfigError.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = p.write_text("epochs: 3\\nepochs: 4\\n")
    >>> _read_yaml(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.ConfigError: config file '...c.yaml' gives 'epochs' twice (lines 1 and 2): keep one
    """
    import yaml

    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"config file '{path}' is a folder: give a YAML file of setting: value lines")
        if not path.exists():
            raise ConfigError(f"config file '{path}' does not exist")
        if not (path.is_file() or path.is_fifo()):  # (a pipe: --config <(...), or /dev/stdin)
            raise ConfigError(f"config file '{path}' is not a file: give a YAML file of setting: value lines")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not a UTF-8 text file: give a YAML file of setting: value lines") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror or e}") from None
    try:
        values = yaml.load(text, Loader=_unique_key_loader()) or {}
    except yaml.YAMLError as e:
        if isinstance(e, _DuplicateKey):
            raise ConfigError(f"config file '{path}' {e}: keep one") from None
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"config file '{path}' is not valid YAML ({at}{problem}): "
                          "write one 'setting: value' per line") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of setting: value, "
                          f"not a {type(values).__name__}")
    return values


class _DuplicateKey(Exception):
    pass


@functools.cache
def _unique_key_loader() -> type:
    """yaml.SafeLoader that refuses a key given twice (plain PyYAML keeps the last one silently)."""
    import yaml

    class _DuplicateKeyError(yaml.YAMLError, _DuplicateKey):
        pass

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: SafeLoader merges it (a key after it wins)
                    continue
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKeyError(f"gives {str(key)!r} twice (lines {seen[key]} and {line})")
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeLoader says so itself
                    break
            return super().construct_mapping(node, deep=deep)

        def construct_document(self, node):  # type: ignore[no-untyped-def]
            # a text setting written unquoted keeps its text: YAML 1.1 reads `out: 2024-01-15` as a date,
            # `010` as 8, `12:30` as 750 and `1.50` as 1.5 (str() of those is another folder, model or pattern)
            # ... and a number setting is read as decimal: `seed: 010` is 10 (not octal 8), while `1:30` (90 in
            # base 60) and `0x10` are refused as no number, not taken as one the user did not write
            # (a merge key's settings too, and lr-mult's: its patterns are text, its multipliers numbers)
            for key_node, value_node in _yaml_pairs(node):
                name = str(key_node.value).replace("-", "_") if isinstance(key_node, yaml.ScalarNode) else ""
                if name not in _HINTS:
                    continue
                kind = _field_kind(name)[0]
                if kind is dict:
                    for pattern, multiplier in _yaml_pairs(value_node):
                        _keep_as_written(pattern, str)
                        _keep_as_written(multiplier, float)
                    continue
                for item in value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]:
                    _keep_as_written(item, kind)
            return super().construct_document(node)

    return Loader


def _yaml_pairs(node: Any) -> Iterator[tuple[Any, Any]]:
    """The (key, value) nodes of a YAML mapping node, those of its merge keys' mappings (``<<: *anchor``) included."""
    import yaml

    for key_node, value_node in node.value if isinstance(node, yaml.MappingNode) else []:
        if key_node.tag == "tag:yaml.org,2002:merge":
            for merged in value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]:
                yield from _yaml_pairs(merged)
        else:
            yield key_node, value_node


def _keep_as_written(node: Any, kind: Any) -> None:
    """Tag a plain YAML scalar as text where YAML 1.1 would read it otherwise than a setting of ``kind`` (the
    field's base type, ``list`` for a list of patterns) takes it: a text always, a number unless decimal."""
    import yaml

    if (isinstance(node, yaml.ScalarNode) and node.style is None and node.tag in _TEXT_TAGS
            and (kind in (str, list) or (kind in (int, float) and _not_decimal(node.value)))):
        node.tag = "tag:yaml.org,2002:str"


def _not_decimal(text: str) -> bool:
    """Whether YAML 1.1 reads a plain number otherwise than decimal: base 60 (``1:30``), 16, 8 or 2.

    >>> [_not_decimal(t) for t in ("1:30", "0x10", "010", "0b1", "10", "0.5", "1e-3", "-0")]
    [True, True, True, True, False, False, False, False]
    """
    digits = text.strip().lstrip("+-").replace("_", "")
    return ":" in digits or digits[:2].lower() in ("0x", "0o", "0b") or (
        len(digits) > 1 and digits[0] == "0" and digits.isdigit())


# the implicit types of plain YAML 1.1 scalars that a text setting takes as written
_TEXT_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (keys with dashes, as on the command line), all or nothing: a full disk leaves
    the earlier file (a resumed run's settings) as it was, and no empty or cut-off one.

    >>> import pathlib, tempfile
    >>> from finetune.config import TrainConfig, load_config, save_config
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "config.yaml"
    >>> save_config(TrainConfig(epochs=5, crop_scale=(0.5, 1.0)), path)
    >>> "epochs: 5" in path.read_text(), load_config(path) == TrainConfig(epochs=5, crop_scale=(0.5, 1.0))
    (True, True)
    """
    import yaml

    values = {k.replace("_", "-"): v for k, v in cfg.to_dict().items()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(yaml.safe_dump(values, sort_keys=False))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults, ``--config FILE`` and the flags given (flags win).

    With ``--resume`` and an ``--out`` that holds a run's ``config.yaml``, the run's settings take the
    defaults' place: a ``--config FILE`` given with it changes the settings it names, as the same flags would.

    >>> import argparse, pathlib, tempfile
    >>> from finetune.config import config_from_args
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = path.write_text("epochs: 5\\nbatch-size: 16\\n")
    >>> cfg = config_from_args(argparse.Namespace(config=str(path), epochs=3, lr=None))
    >>> cfg.epochs, cfg.batch_size, cfg.lr          # the flag wins; None means "not given"
    (3, 16, None)
    """
    config = getattr(args, "config", None)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    given = settings(_read_yaml(config), str(config)) if config is not None else {}  # the --config file's
    if isinstance(given.get("out"), str):  # (a YAML file's '~/runs/x' is not expanded by any shell, as data's)
        given["out"] = os.path.expanduser(given["out"])
    ignored = given.pop("resume", None)
    if given.pop("trust", False) and not flags.get("trust"):  # (a file from elsewhere must not let a checkpoint
        # run code: only the user's flag, with which there is nothing to warn about: another run's config.yaml says trust)
        warnings.warn(f"{config}: trust: true is not taken from a config file (it would let a checkpoint run code "
                      "when loaded): give --trust on the command line if you trust the files", stacklevel=2)
    if flags.get("resume") not in (None, "auto") and Path(flags["resume"]).is_dir():
        # a run directory (or its checkpoints/), as eval/predict/cam take one: its newest complete checkpoint,
        # continued in that directory unless --out says otherwise
        run_dir, newest = resume_dir_checkpoint(Path(flags["resume"]))
        flags["resume"] = str(newest)
        if "out" not in flags and "out" not in given:
            flags["out"] = str(run_dir)
    resume, out = flags.get("resume"), flags.get("out", given.get("out"))
    if ignored is not None and resume is None:  # (a run's config.yaml records how it was last started: not a wish)
        warnings.warn(f"{config}: resume: {ignored} is not taken from a config file (a run's config.yaml records "
                      f"how it was last started): this starts a new run; to continue one give resume "
                      f"(--resume {ignored})", stacklevel=2)
    base = Path(out) / "config.yaml" if resume and out is not None else None
    run: dict[str, Any] = {}
    if base is not None and base.is_file():
        # resuming a run: its own settings, unless the flags or --config FILE say otherwise; its --max-steps
        # was where that invocation stopped, not part of the run
        run = settings(_read_yaml(base), str(base))
        run.pop("resume", None)
        run.pop("max_steps", None)
    elif resume not in (None, "auto"):
        # another run's checkpoint continued in a new run directory: the settings it was trained with, not the
        # defaults (those would go on with another --lr, --epochs, data, ...)
        run = checkpoint_settings(resume)
        base = Path(resume) if run else None
    elif config is None and resume == "auto" and out is not None and any((Path(out) / "checkpoints").glob("*.pt")):
        # the defaults are not the run's settings (they would go on with the built-in dataset, say)
        raise ConfigError(f"--resume auto: '{Path(out) / 'config.yaml'}' is missing, so the run's settings are "
                          "unknown: restore it, or give them with --config FILE")
    run.pop("trust", None)  # (a run's own record of how it was started: --trust is given each time)
    check_config_paths({k: v for k, v in given.items() if k not in flags}, str(config))
    cfg = TrainConfig.from_dict({**run, **given, **flags},
                                source=str(config) if config is not None else str(base) if run else "command line")
    # a saved config.yaml holds the default momentum whatever the optimizer; a flag given is meant (and so is a
    # --config FILE's that changes a resumed run's)
    if getattr(args, "momentum", None) is not None and cfg.optimizer != "sgd":
        raise ConfigError(f"--momentum applies to --optimizer sgd only; {cfg.optimizer}'s moments are its betas "
                          "(0.9, 0.999): leave --momentum out, or add --optimizer sgd")
    if run and given.get("momentum", run.get("momentum")) != run.get("momentum") and cfg.optimizer != "sgd":
        raise ConfigError(f"{config}: momentum applies to optimizer sgd only; {cfg.optimizer}'s moments are its "
                          "betas (0.9, 0.999): leave momentum out, or add optimizer: sgd")
    # a new run's --config FILE: a momentum other than the default (which a run's config.yaml holds whatever the
    # optimizer) is not used by adam/adamw; say so (the file may be another run's, reused with --optimizer adamw)
    momentum = given.get("momentum")
    if not run and momentum is not None and momentum != TrainConfig.momentum and cfg.optimizer != "sgd":
        warnings.warn(f"{config}: momentum {momentum} applies to optimizer sgd only and is not used: "
                      f"{cfg.optimizer}'s moments are its betas (0.9, 0.999)", stacklevel=2)
    if (run.get("cache_features") and run.get("augment") is False and not cfg.cache_features
            and "augment" not in flags and "augment" not in given):
        # train() turned augmentation off for the cached features (config.yaml says augment: false): images again
        # are augmented as any run's, unless told otherwise
        cfg = dataclasses.replace(cfg, augment=TrainConfig.augment)
        warnings.warn(f"{base}: augment: false came with cache_features, which this resume turns off: the "
                      "training images are augmented again (--no-augment keeps them as they were)", stacklevel=2)
    if cfg.cache_features and flags.get("augment") is True:  # (without the flag it is off, see train())
        raise ConfigError("--cache-features computes the backbone features once, with the eval transform, so "
                          "--augment could not change them: drop one of them (--linear-probe alone augments)")
    # --crop-scale is the training crop's (RandomResizedCrop) area range: without training augmentation it does
    # nothing (a config.yaml records the resolved default whatever augment is, so only the flag given is meant)
    if flags.get("crop_scale") is not None and cfg.cache_features:
        raise ConfigError("--cache-features computes the backbone features once, with the eval transform, so "
                          "--crop-scale (the training crop's area range) could not change them: drop one of them")
    if flags.get("crop_scale") is not None and not cfg.augment:
        raise ConfigError("--no-augment trains on the eval transform, so --crop-scale (the training crop's area "
                          "range) would do nothing: drop one of them")
    if config is not None and cfg.resume is None and cfg.out is not None:
        check_config_outside_run(Path(config), Path(cfg.out))
    check_run_dir(cfg)
    return cfg


def resume_dir_checkpoint(directory: Path) -> tuple[Path, Path]:
    """``--resume DIR``: the run directory DIR (or DIR/.. for a ``checkpoints`` folder) and its newest
    complete checkpoint, as ``--resume auto`` would pick it; a directory without one is a ConfigError.

    >>> import tempfile
    >>> from pathlib import Path
    >>> resume_dir_checkpoint(Path(tempfile.mkdtemp()))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.ConfigError: --resume '...': no complete checkpoint in '...checkpoints': give a checkpoint file, or the run directory with --out RUN_DIR --resume auto
    """
    from finetune.checkpoint import CHECKPOINT_DIR, Checkpointer

    run_dir = directory
    if directory.absolute().name == CHECKPOINT_DIR and not (directory / CHECKPOINT_DIR).is_dir():  # ('.' in it too)
        run_dir = directory.parent if directory.name == CHECKPOINT_DIR else directory.absolute().parent
    newest = Checkpointer(run_dir).latest()  # (a damaged newer file is skipped and named, as --resume auto does)
    if newest is None:
        raise ConfigError(f"--resume '{directory}': no complete checkpoint in '{run_dir / CHECKPOINT_DIR}': give a "
                          "checkpoint file, or the run directory with --out RUN_DIR --resume auto")
    return run_dir, newest


def checkpoint_settings(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings a ``finetune train`` checkpoint was trained with, as TrainConfig field names, less where
    that run wrote (``out``), how it was started (``resume``) and where that invocation stopped
    (``max_steps``); ``{}`` for a file that holds none (the resume itself then says what the file is).

    >>> import tempfile, torch
    >>> from finetune.config import checkpoint_settings
    >>> path = tempfile.mkdtemp() + "/ckpt.pt"
    >>> torch.save({"model": {}, "config": {"lr": 0.05, "epochs": 3, "out": "runs/a", "max_steps": 2}}, path)
    >>> checkpoint_settings(path)
    {'lr': 0.05, 'epochs': 3}
    """
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # (torch's warning about a TorchScript archive: the resume says what it is)
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # (not a zip-format torch file, unreadable, ...: reported when it is loaded to resume)
        return {}
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        return {}
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"out", "resume", "max_steps"}
    return settings({k: v for k, v in saved.items() if k in known}, str(path))


def check_config_paths(values: dict[str, Any], source: str) -> None:
    """Refuse a relative ``data`` or ``pretrained`` path read from the config file ``source`` that does not
    exist: it is taken relative to the current directory (as on the command line), not to the file's folder,
    and the error from where it is read later would not say so.

    >>> import os
    >>> check_config_paths({"data": "shapes", "pretrained": "timm:resnet18", "out": "runs/a"}, "c.yaml")
    >>> check_config_paths({"data": "../no-such-folder"}, "exp/c.yaml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.ConfigError: exp/c.yaml: data '../no-such-folder' does not exist: a relative path in a config file is taken relative to the current directory (...), not to the file's folder; ...
    """
    from finetune.weights.sources import is_named

    for name in ("data", "pretrained"):
        value = values.get(name)
        if not isinstance(value, str) or value == "shapes" or is_named(value):
            continue
        path = Path(value).expanduser()
        if path.is_absolute() or path.exists():
            continue
        beside = Path(source).parent / path
        hint = (f"from the file's folder it is '{beside.resolve()}': write that" if beside.exists() else
                "give it relative to the current directory, or as an absolute path")
        raise ConfigError(f"{source}: {name} '{value}' does not exist: a relative path in a config file is taken "
                          f"relative to the current directory ({os.getcwd()}), not to the file's folder; {hint}")


def check_config_outside_run(config: Path, out: Path) -> None:
    """Refuse a ``--config`` that is the ``--out`` run directory's own ``config.yaml`` when the run would lose
    some of it: a run replaces that file with its resolved settings, and a settings file written by hand
    (comments, some settings only, relative paths) would be gone without a word. A run's own config.yaml
    (a run stopped before its first save, started again) is exactly what the run writes: it may be reused.

    >>> import pathlib, tempfile
    >>> run = pathlib.Path(tempfile.mkdtemp()); _ = (run / "config.yaml").write_text("# mine\\nepochs: 3\\n")
    >>> check_config_outside_run(run / "config.yaml", run)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.ConfigError: --config '...config.yaml' is the config.yaml of --out '...', which the run replaces ...
    >>> save_config(TrainConfig(epochs=3), run / "config.yaml"); check_config_outside_run(run / "config.yaml", run)
    """
    import yaml

    target = out / "config.yaml"
    if not (config.is_file() and target.is_file() and config.samefile(target)):
        return
    text = config.read_text(encoding="utf-8")
    values = {k.replace("_", "-"): v for k, v in load_config(config).to_dict().items()}
    if text == yaml.safe_dump(values, sort_keys=False):
        return  # (what save_config wrote: nothing in it is lost)
    raise ConfigError(f"--config '{config}' is the config.yaml of --out '{out}', which the run replaces with its "
                      "resolved settings (the file's comments and layout would be lost): keep your settings file "
                      f"outside the run directory (e.g. {out.name}.yaml beside it), or give another --out")


def check_run_dir(cfg: TrainConfig) -> None:
    """Refuse an ``--out`` that cannot be a run directory, or that holds a run and would be overwritten.

    A run directory with checkpoints is continued with ``--resume``; without it, a new run would
    replace its checkpoints, metrics and config. One without checkpoints (stopped before its first
    save) can be started again.

    >>> import pathlib, tempfile
    >>> from finetune.config import TrainConfig, check_run_dir
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> check_run_dir(TrainConfig(out=str(run)))            # empty: fine
    >>> (run / "checkpoints").mkdir(); _ = (run / "checkpoints" / "last.pt").write_bytes(b"")
    >>> check_run_dir(TrainConfig(out=str(run)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.ConfigError: out (--out) '...' already holds a run (checkpoints/last.pt): continue it with resume='auto' (--resume auto), or give another out (--out)
    >>> check_run_dir(TrainConfig(out=str(run), resume="auto"))
    """
    if cfg.out is None:
        return
    path = Path(cfg.out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{named('out')} '{path}' is a file, not a folder: give a run directory")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{named('out')} '{path}': '{parent}' is a file, not a folder: give a run directory")
    data = Path(cfg.data)
    if cfg.data != "shapes" and data.is_dir() and (path.resolve() == data.resolve() or data.resolve() in path.resolve().parents):
        raise ConfigError(f"{named('out')} '{path}' is inside the dataset '{data}': its checkpoints would be read as a class "
                          "folder; give a run directory outside it")
    if cfg.resume is not None or not path.is_dir():
        return
    ckpts = path / "checkpoints"
    # a numbered checkpoint without its manifest never counted (a kill before the first save finished):
    # `--resume auto` skips it, so it must not block a new start either
    held = sorted(p for p in ckpts.glob("*.pt") if not p.name.startswith("ckpt-") or p.with_suffix(".json").exists()) \
        if ckpts.is_dir() else []
    held += [p for p in (path / "best.safetensors",) if p.exists()]
    if held:
        raise ConfigError(f"{named('out')} '{path}' already holds a run ({held[0].relative_to(path)}): continue it "
                          f"with {named('resume', 'auto')}, or give another {named('out')}")


# ----- argparse types for the flags of commands without a config (eval, predict, make-shapes, bench-data)
def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type=``: a whole number >= ``minimum``.

    >>> int_at_least(1)("3")
    3
    >>> int_at_least(1)("0")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a whole number of at least 1, got '0'
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {minimum}, got {text!r}")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type=``: a finite number > 0.

    >>> positive_float("0.5")
    0.5
    >>> positive_float("nan")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a number above 0, got 'nan'
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """An argparse ``type=``: a number from 0 to 1.

    >>> fraction("0.5")
    0.5
    >>> fraction("2")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a number from 0 to 1, got '2'
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # (nan too)
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


MAX_SEED = 2**32 - 1  # numpy's and most libraries' seed range; torch overflows on larger ones


def max_workers() -> int:
    """The most decoding worker processes a run may ask for: 8 per CPU core (at least 16).

    Each worker is a process with its own copy of the pipeline: a mistyped ``--workers 99999999``
    would fork until the machine runs out of memory.

    >>> max_workers() >= 16
    True
    """
    return max(16, 8 * (os.cpu_count() or 1))


def workers_value(text: str) -> str:
    """An argparse ``type=`` for ``--workers``: 'auto' or a number of processes (0 up to :func:`max_workers`).

    >>> workers_value("2"), workers_value("auto")
    ('2', 'auto')
    >>> workers_value("99999999")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    argparse.ArgumentTypeError: 99999999 is more than ... (8 per CPU core here): give fewer, or 'auto'
    """
    if text != "auto" and not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number of processes (0 or more), got {text!r}")
    if text != "auto" and int(text) > max_workers():
        raise argparse.ArgumentTypeError(f"{text} is more than {max_workers()} (8 per CPU core here): give fewer, or 'auto'")
    return text


def worker_count(text: str) -> int:
    """An argparse ``type=``: a number of worker processes, 0 up to :func:`max_workers`.

    >>> worker_count("4")
    4
    """
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be a number of processes (0 or more), got {text!r}")
    return int(workers_value(text))


def non_empty(text: str) -> str:
    """An argparse ``type=`` for paths, names and patterns: any text but an empty (or blank) one,
    which would otherwise mean the current folder, or nothing at all, without a word.

    >>> non_empty("runs/a")
    'runs/a'
    >>> non_empty(" ")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must not be empty: give a value, or leave the option out
    """
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty: give a value, or leave the option out")
    return text

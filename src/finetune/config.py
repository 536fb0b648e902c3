"""One dataclass for a training run, read from YAML and flags, saved in the run directory.

YAML keys are the long flag names (``batch-size`` or ``batch_size``); flags
given on the command line override the file.

>>> cfg = TrainConfig(epochs=2)
>>> TrainConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError


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
    """

    # data
    data: str = "shapes"
    val_split: float = 0.1
    img_size: int | None = None  # shapes: 32, otherwise 224
    crop_scale: tuple[float, float] | None = None  # shapes: (0.7, 1), otherwise (0.08, 1)
    augment: bool = True  # False: training batches (seeded order) with the eval transform
    batch_size: int = 64
    workers: str = "auto"
    decode: str = "auto"  # cpu | gpu (nvjpeg) | auto
    cache: str | None = None  # none | ram | gpu: decoded images kept for later epochs (shapes: ram, else none)
    prefetch: str = "auto"  # auto | none | thread | cuda
    auto_augment: str = "none"  # none | trivialaugment | randaugment
    strict_data: bool = False  # unreadable images stop the run (default: skipped, listed in bad_files.txt)
    # model
    model: str = "resnet18"
    pretrained: str | None = None
    exclude: list[str] = field(default_factory=list)
    shape_mismatch: str = "skip"
    trust: bool = False
    # what trains (see finetune.freeze)
    freeze: list[str] = field(default_factory=list)
    train_only: list[str] = field(default_factory=list)
    linear_probe: bool = False
    cache_features: bool = False
    bn: str = "frozen"
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

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale) if self.crop_scale is not None else None
        return d

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` default filled in for this data and optimizer.

        >>> cfg = TrainConfig().resolved()
        >>> cfg.img_size, cfg.crop_scale, cfg.lr, cfg.weight_decay, cfg.cache
        (32, (0.7, 1.0), 0.003, 0.05, 'ram')
        >>> TrainConfig(data="photos/", pretrained="torchvision").resolved().img_size
        224
        """
        shapes = self.data == "shapes"
        sgd = self.optimizer == "sgd"
        lr = (0.01 if sgd else 5e-4) if self.pretrained else (0.1 if sgd else 3e-3)
        return dataclasses.replace(
            self,
            img_size=self.img_size if self.img_size is not None else (32 if shapes else 224),
            crop_scale=self.crop_scale if self.crop_scale is not None else ((0.7, 1.0) if shapes else (0.08, 1.0)),
            lr=self.lr if self.lr is not None else lr,
            weight_decay=self.weight_decay if self.weight_decay is not None else (5e-4 if sgd else 0.05),
            # the built-in dataset fits in memory many times over: decode it once (the demo trained at
            # 418-491 img/s with it, 399-410 without: BENCHMARKS.md, demo run)
            cache=self.cache if self.cache is not None else ("ram" if shapes else "none"),
        )

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
        known = {f.name: f for f in dataclasses.fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"{source}: unknown setting '{key}'{hint}")
            clean[name] = value
        if "crop_scale" in clean and clean["crop_scale"] is not None:
            clean["crop_scale"] = tuple(float(v) for v in clean["crop_scale"])
        for name in ("exclude", "freeze", "train_only", "unfreeze"):
            if isinstance(clean.get(name), str):
                clean[name] = [clean[name]]
        if isinstance(clean.get("lr_mult"), list):  # PATTERN=X strings from the command line
            clean["lr_mult"] = parse_lr_mult(clean["lr_mult"])
        cfg = cls(**clean)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work.

        >>> from finetune import TrainConfig
        >>> TrainConfig(epochs=3, unfreeze=["layer4@2"]).validate()
        >>> TrainConfig(optimizer="adam").validate()
        Traceback (most recent call last):
        finetune.errors.ConfigError: --optimizer must be sgd or adamw, got 'adam'
        >>> TrainConfig(epochs=3, unfreeze=["layer4@5"]).validate()
        Traceback (most recent call last):
        finetune.errors.ConfigError: --unfreeze layer4@5: epoch 5 is outside 1..3
        """
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr is None or self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.img_size is None or self.img_size >= 16, f"--img-size must be at least 16, got {self.img_size}"),
            (self.weight_decay is None or self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.optimizer in ("sgd", "adamw"), f"--optimizer must be sgd or adamw, got {self.optimizer!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda, got {self.device!r}"),
            (self.amp in ("auto", "off", "bf16", "fp16"), f"--amp must be auto, off, bf16 or fp16, got {self.amp!r}"),
            (self.shape_mismatch in ("skip", "error", "adapt"), f"--shape-mismatch must be skip, error or adapt, got {self.shape_mismatch!r}"),
            (0.0 <= self.label_smoothing < 1.0, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.keep_last >= 1, f"--keep-last must be at least 1, got {self.keep_last}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (self.crop_scale is None or 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
             f"crop-scale must be 0 < min <= max <= 1, got {self.crop_scale}"),
            (self.decode in ("auto", "cpu", "gpu"), f"--decode must be auto, cpu or gpu, got {self.decode!r}"),
            (self.cache in (None, "none", "ram", "gpu"), f"--cache must be none, ram or gpu, got {self.cache!r}"),
            (self.prefetch in ("auto", "none", "thread", "cuda"), f"--prefetch must be auto, none, thread or cuda, got {self.prefetch!r}"),
            (self.auto_augment in ("none", "trivialaugment", "randaugment"),
             f"--auto-augment must be none, trivialaugment or randaugment, got {self.auto_augment!r}"),
            (self.bn in ("frozen", "eval", "train"), f"--bn must be frozen, eval or train, got {self.bn!r}"),
            (not self.cache_features or self.linear_probe, "--cache-features needs --linear-probe (only the head may train)"),
            (self.layer_decay is None or 0 < self.layer_decay <= 1, f"--layer-decay must be in (0, 1], got {self.layer_decay}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        parse_unfreeze(self.unfreeze, self.epochs)


def parse_lr_mult(items: list[str]) -> dict[str, float]:
    """``["layer4=0.1", "fc=1"]`` -> ``{"layer4": 0.1, "fc": 1.0}``.

    >>> parse_lr_mult(["layer4=0.1"])
    {'layer4': 0.1}
    """
    out: dict[str, float] = {}
    for item in items:
        pattern, sep, value = str(item).rpartition("=")
        try:
            out[pattern] = float(value)
        except ValueError:
            pattern = ""
        if not sep or not pattern:
            raise ConfigError(f"--lr-mult takes PATTERN=MULTIPLIER (e.g. layer4=0.1), got {item!r}")
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
            raise ConfigError(f"--unfreeze takes PATTERN@EPOCH (e.g. layer4@3), got {item!r}")
        if not 1 <= int(epoch) <= epochs:
            raise ConfigError(f"--unfreeze {item}: epoch {epoch} is outside 1..{epochs}")
        out.append((pattern, int(epoch)))
    return out


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML file of settings.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = p.write_text("epochs: 3\\nbatch-size: 16\\n")
    >>> load_config(p).batch_size
    16
    """
    return TrainConfig.from_dict(_read_yaml(path), source=str(path))


def _read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of setting: value")
    return values


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (keys with dashes, as on the command line).

    >>> import pathlib, tempfile
    >>> from finetune.config import TrainConfig, load_config, save_config
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "config.yaml"
    >>> save_config(TrainConfig(epochs=5, crop_scale=(0.5, 1.0)), path)
    >>> "batch-size: 64" in path.read_text(), load_config(path) == TrainConfig(epochs=5, crop_scale=(0.5, 1.0))
    (True, True)
    """
    import yaml

    values = {k.replace("_", "-"): v for k, v in cfg.to_dict().items()}
    Path(path).write_text(yaml.safe_dump(values, sort_keys=False))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults, ``--config FILE`` and the flags given (flags win).

    >>> import argparse, pathlib, tempfile
    >>> from finetune.config import config_from_args
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = path.write_text("epochs: 5\\nbatch-size: 16\\n")
    >>> cfg = config_from_args(argparse.Namespace(config=str(path), epochs=3, lr=None))
    >>> cfg.epochs, cfg.batch_size, cfg.lr          # the flag wins; None means "not given"
    (3, 16, None)
    """
    base = getattr(args, "config", None)
    resume, out = getattr(args, "resume", None), getattr(args, "out", None)
    if base is None and resume and out and (Path(out) / "config.yaml").is_file():
        base = Path(out) / "config.yaml"  # resuming a run: its own settings, unless flags say otherwise
    values: dict[str, Any] = _read_yaml(base) if base else {}
    values.pop("resume", None)
    if base is not None and getattr(args, "config", None) is None:
        # the run's own config.yaml: --max-steps was where that invocation stopped, not part of the run
        values.pop("max-steps", None)
        values.pop("max_steps", None)
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in names:
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    return TrainConfig.from_dict(values, source=str(base) if base else "command line")

"""The learning-rate range test (fastai's ``lr_find``, Smith 2015): train a fresh copy of the
run's model for a few steps while the learning rate grows exponentially, and read a good
learning rate off the loss curve.

The run is set up exactly as ``finetune train`` would set it up (data, augmentation, model,
pretrained weights, freezing, per-group learning-rate multipliers, optimizer, gradient clipping,
``--grad-accum`` batches per step, ``--class-weights``); nothing is written. The loss is smoothed (exponential moving average, debiased) and the test stops when
it exceeds four times its minimum. Two readings, as fastai gives them: ``lr_min`` (a tenth of
the learning rate at the lowest loss) and ``lr_steep`` (where the loss falls fastest); the
suggestion is ``lr_min``, the more robust of the two.

>>> import tempfile
>>> from finetune import TrainConfig, make_shapes
>>> data = make_shapes(tempfile.mkdtemp(), per_class=4, val_per_class=1, size=32)
>>> cfg = TrainConfig(data=str(data), img_size=32, batch_size=8, workers="0", device="cpu")
>>> result = lr_find(cfg, num_steps=12, quiet=True)
>>> len(result.lrs) == len(result.losses) <= 12, 0 < result.suggested <= 10
(True, True)
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from finetune.config import TrainConfig
from finetune.errors import ConfigError, DataError, ModelError, named


@dataclass
class LRFindResult:
    """Learning rates tried, their smoothed losses, and the readings of the curve."""

    lrs: list[float]
    losses: list[float]
    lr_min: float
    lr_steep: float
    stopped: str = ""  # why the test ended before num_steps ("loss diverged", …), or ""
    raw_losses: list[float] = field(default_factory=list)

    @property
    def suggested(self) -> float:
        return self.lr_min

    def to_dict(self) -> dict[str, Any]:
        return {"lrs": self.lrs, "losses": self.losses, "raw_losses": self.raw_losses, "lr_min": self.lr_min,
                "lr_steep": self.lr_steep, "suggested": self.suggested, "stopped": self.stopped}

    def table(self, rows: int = 12) -> str:
        """A short table of the curve (``rows`` learning rates spread over the range) and the readings.

        >>> r = LRFindResult([1e-3, 1e-2, 1e-1], [2.0, 1.5, 3.0], lr_min=1e-3, lr_steep=1e-2)
        >>> print(r.table(rows=3))
        lr          loss
        1.00e-03  2.0000
        1.00e-02  1.5000
        1.00e-01  3.0000
        suggested lr 1.00e-03 (lowest loss / 10); steepest descent at 1.00e-02
        >>> print(r.table(rows=12).splitlines()[-2])    # fewer points than rows: every one, the last too
        1.00e-01  3.0000
        >>> print(LRFindResult([1e-3, 1e-2], [1.0, 2.0], lr_min=1e-4, lr_steep=1e-3).table().splitlines()[-1])
        the loss was lowest at the start of the range (no descent found): the suggestion lies below the range tested; try a lower --start-lr or more --num-steps
        """
        n = len(self.lrs)
        m = min(rows, n)  # (spread over the points there are: a short curve is shown whole, its last point too)
        picks = sorted({round(i * (n - 1) / max(m - 1, 1)) for i in range(m)}) if n else []
        lines = ["lr          loss"] + [f"{self.lrs[i]:.2e}  {self.losses[i]:.4f}" for i in picks]
        lines.append(f"suggested lr {self.lr_min:.2e} (lowest loss / 10); steepest descent at {self.lr_steep:.2e}"
                     + (f"; stopped early: {self.stopped}" if self.stopped else ""))
        if self.lrs and self.lr_min < self.lrs[0]:
            lines.append("the loss was lowest at the start of the range (no descent found): the suggestion lies below "
                         "the range tested; try a lower --start-lr or more --num-steps")
        return "\n".join(lines)


def readings(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """``(lr_min, lr_steep)`` of a smoothed loss curve: a tenth of the learning rate at the
    lowest loss, and the learning rate where the loss falls fastest per decade (the first
    tenth of the curve, where the moving average settles, is not read).

    >>> lrs = [10 ** (e / 4) for e in range(-20, 1)]                 # 1e-5 … 1
    >>> losses = [2 - 1.5 / (1 + math.exp(-3 * (math.log10(lr) + 2.5))) for lr in lrs]   # falls around 3e-3
    >>> lr_min, lr_steep = readings(lrs, losses)
    >>> f"{lr_steep:.1e}"
    '3.2e-03'
    """
    if not lrs:
        raise ConfigError("the learning-rate range test took no step")
    best = min(range(len(losses)), key=losses.__getitem__)
    lr_min = lrs[best] / 10
    if len(lrs) < 3:
        return lr_min, lrs[best]
    logs = [math.log10(lr) for lr in lrs]
    # the first tenth of the curve is the moving average settling, not the model: not read
    first = max(1, len(lrs) // 10)
    slopes = {i: (losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(first, len(lrs) - 1)}
    steepest = min(slopes, key=slopes.__getitem__) if slopes else best
    return lr_min, lrs[steepest]


def lr_find(cfg: TrainConfig, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
            beta: float = 0.98, quiet: bool = False) -> LRFindResult:
    """Run the range test for ``cfg`` (see the module's description); nothing is written.

    >>> import tempfile
    >>> from finetune import TrainConfig, lr_find, make_shapes
    >>> data = make_shapes(tempfile.mkdtemp() + "/shapes", per_class=2, size=32)
    >>> cfg = TrainConfig(data=str(data), model="resnet18", img_size=32, batch_size=4, workers="0", device="cpu")
    >>> result = lr_find(cfg, num_steps=3, quiet=True)
    >>> len(result.lrs), result.lrs[0] == 1e-7, result.lr_min > 0
    (3, True, True)
    """
    if not (0 < start_lr < end_lr) or not all(math.isfinite(v) for v in (start_lr, end_lr)):
        raise ConfigError(f"start_lr/end_lr (--start-lr/--end-lr) must be positive with start < end, "
                          f"got {start_lr} / {end_lr}")
    if num_steps < 2:
        raise ConfigError(f"num_steps (--num-steps) must be at least 2, got {num_steps}")
    world = os.environ.get("WORLD_SIZE", "1")
    if world not in ("", "1"):  # every process would run the whole test and print it
        raise ConfigError(f"lr-find runs in one process, not under torchrun ({world} processes): run finetune lr-find; "
                          "for the batch of N processes of --batch-size B, give --batch-size N*B")
    if cfg.cache_features:
        raise ConfigError("lr-find trains on images: drop cache_features (--cache-features); the head trains the same "
                          "way without it")
    from finetune.freeze import bn_train_mode, param_groups
    from finetune.logging import progress
    from finetune.mixing import mix_batch
    from finetune.models import check_input_size, logits_of, normalization
    from finetune.train import (
        build_model,
        build_train_loader,
        check_some_lr,
        class_weights,
        make_optimizer,
        readable_labels,
        resolve_amp,
        resolve_data,
        resolve_device,
        set_lr,
        unfreeze_at,
    )

    cfg.validate()
    cfg = cfg.resolved()
    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    torch.manual_seed(cfg.seed)
    train_samples, _ = resolve_data(cfg.data, cfg.val_split, cfg.seed)
    classes = list(train_samples.classes)
    mean, std = normalization(cfg.model, cfg.pretrained)
    # train's loader and model exactly (augmentation, decoding, pretrained weights, freezing)
    loader = build_train_loader(train_samples, cfg, img_size=cfg.img_size, batch_size=cfg.batch_size, device=device,
                                seed=cfg.seed, mean=mean, std=std, channels_last=cfg.channels_last, decode=cfg.decode,
                                prefetch=cfg.prefetch, strict=cfg.strict_data,
                                cache=None if cfg.cache == "none" else cfg.cache, log=None if quiet else print)
    if len(loader) == 0:
        raise ConfigError(f"the training split has {len(train_samples)} images, fewer than one batch of {cfg.batch_size}")
    model = build_model(cfg, len(classes), device, quiet=True, classes=classes)
    check_input_size(model, cfg.img_size)  # (as train: a model that cannot take the size is a ModelError, not a bug)
    # base lr 1: each group's lr is its multiplier (--lr-mult, --layer-decay), scaled by the sweep
    optimizer = make_optimizer(param_groups(model, 1.0, lr_mult=cfg.lr_mult or None, layer_decay=cfg.layer_decay,
                                            weight_decay=cfg.weight_decay), cfg)
    check_some_lr(optimizer, cfg)  # (as train: every trainable parameter at lr 0 would sweep nothing)
    # --unfreeze PATTERN@1 trains PATTERN from the run's first step: here too (later epochs are not reached)
    unfreeze_at(model, optimizer, dataclasses.replace(cfg, lr=1.0), epoch=0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    loss_weight = class_weights(readable_labels(train_samples, cfg.class_weights) if cfg.class_weights != "none"
                                else train_samples.labels, classes, cfg.class_weights)
    loss_weight = loss_weight.to(device) if loss_weight is not None else None
    ratio = end_lr / start_lr
    lrs: list[float] = []
    smoothed: list[float] = []
    raw: list[float] = []
    avg, best, stopped = 0.0, math.inf, ""
    model.train()
    bn_train_mode(model)
    bar = progress(range(num_steps), total=num_steps, desc="lr-find", quiet=quiet)
    batches = iter(())
    epoch = 0
    try:
        for step in bar:
            lr = start_lr * ratio ** (step / (num_steps - 1))
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            value = 0.0  # the step's loss: the mean over its --grad-accum batches
            for micro in range(cfg.grad_accum):
                batch = next(batches, None)
                if batch is None:
                    loader.set_epoch(epoch)
                    epoch += 1
                    batches = iter(loader)
                    batch = next(batches, None)
                    if batch is None:  # every batch of the epoch was unreadable files (skipped by the loader)
                        bad = loader.bad_file_list()
                        raise DataError(f"none of the {len(train_samples)} training images can be read"
                                        + (f" (e.g. '{bad[0].path}': {bad[0].reason})" if bad else "")
                                        + ": nothing to train on")
                images, labels = batch
                targets, smoothing = labels, cfg.label_smoothing
                if cfg.mixup or cfg.cutmix:  # the loss train sees: mixed batches, soft targets
                    images, targets, _ = mix_batch(images, labels, len(classes), mixup=cfg.mixup, cutmix=cfg.cutmix,
                                                   seed=cfg.seed, step=step * cfg.grad_accum + micro,
                                                   label_smoothing=cfg.label_smoothing)
                    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
                    images, smoothing = images.contiguous(memory_format=memory_format), 0.0
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = F.cross_entropy(logits_of(model(images)).float(), targets, weight=loss_weight,
                                           label_smoothing=smoothing,  # (weighted: the mean over images, as train)
                                           reduction="mean" if loss_weight is None else "none").mean()
                scaler.scale(loss / cfg.grad_accum if cfg.grad_accum > 1 else loss).backward()
                value += loss.item() / cfg.grad_accum
            if cfg.clip_grad:  # as train clips: on the true gradients
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            if not math.isfinite(value):
                stopped = f"the loss became {value} at lr {lr:.2e}"
                break
            avg = beta * avg + (1 - beta) * value
            debiased = avg / (1 - beta ** (step + 1))
            lrs.append(lr)
            smoothed.append(debiased)
            raw.append(value)
            best = min(best, debiased)
            if 0 < step < num_steps - 1 and debiased > 4 * best:  # (at the last step the test ends anyway)
                stopped = f"the loss exceeded 4x its minimum at lr {lr:.2e}"
                break
    except ValueError as e:
        if "Expected more than 1 value per channel when training" in str(e):  # bad input, not a bug
            raise ConfigError(f"{named('batch_size', cfg.batch_size)} is too small for {cfg.model}'s BatchNorm in "
                              f"training ({str(e).splitlines()[0]}): use a larger {named('batch_size')} or "
                              f"{named('img_size')}") from None
        raise
    finally:
        loader.close()
    if not lrs:  # the very first loss, before any update, was not finite: no learning rate is to blame
        raise ModelError(f"the loss was {value} at the first step, before any update: "
                         f"{cfg.model}'s output is not finite with its initial weights (check the --pretrained "
                         "weights with `finetune inspect FILE`, or try --amp off)")
    lr_min, lr_steep = readings(lrs, smoothed)
    return LRFindResult(lrs, smoothed, lr_min, lr_steep, stopped, raw)

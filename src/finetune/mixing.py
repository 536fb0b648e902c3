"""Mixup and CutMix on a training batch, on the device (timm's ``Mixup`` semantics): each image
is mixed with the batch's mirror image (``images.flip(0)``), the targets become the matching
blend of one-hot labels (smoothed like the plain loss).

The random draws come from the run's seed, the optimizer step and the process rank only, so a
resumed run mixes exactly as the uninterrupted one did, whatever the global RNG holds.

>>> import torch
>>> images, labels = torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
>>> mixed, targets, lam = mix_batch(images, labels, 3, mixup=0.2, cutmix=0.0, seed=0, step=5)
>>> targets.shape, bool(torch.allclose(targets.sum(1), torch.ones(4)))
(torch.Size([4, 3]), True)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def mix_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, mixup: float, cutmix: float,
              seed: int, step: int, rank: int = 0, label_smoothing: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(mixed images, soft targets, lambda)`` for one batch.

    ``mixup`` / ``cutmix`` are the Beta(alpha, alpha) parameters (0: off); with both on, each
    batch uses one of them with probability 1/2. CutMix pastes a box of the mirror image whose
    area is ``1 - lambda`` of the image (clipped at the borders; lambda is then the area kept).

    >>> import torch
    >>> x = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 4, 4).contiguous()
    >>> y = torch.tensor([0, 1])
    >>> mixed, t, lam = mix_batch(x, y, 2, mixup=0.0, cutmix=1.0, seed=0, step=1)
    >>> kept = float((mixed[0] == 0).float().mean())       # share of image 0 left in place
    >>> abs(kept - lam) < 1e-6, torch.allclose(t[0], torch.tensor([lam, 1 - lam]))
    (True, True)
    """
    rng = np.random.default_rng([seed, step, rank, 0x313C])
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    mirror = images.flip(0)
    if use_cutmix:
        h, w = images.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        mixed = images.clone()
        mixed[..., y0:y1, x0:x1] = mirror[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        mixed = images * lam + mirror * (1.0 - lam)
    off = label_smoothing / num_classes
    one_hot = F.one_hot(labels, num_classes).to(images.dtype if images.is_floating_point() else torch.float32)
    one_hot = one_hot * (1.0 - label_smoothing) + off
    targets = one_hot * lam + one_hot.flip(0) * (1.0 - lam)
    return mixed, targets, lam

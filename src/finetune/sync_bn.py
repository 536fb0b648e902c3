"""BatchNorm statistics over the whole batch of every process (``finetune train --sync-bn``).

Under ``torchrun`` each process normalises with the mean and variance of its own batch, as in
plain DDP: with small per-process batches (detection-size images, big models) those statistics
are noisy. :func:`convert_sync_batchnorm` makes every BatchNorm layer compute them over all the
processes' batches together, so N processes with batch B normalise, train and update their running
statistics as one process with batch N*B does.

It converts *in place*: each layer keeps its identity, parameters, buffers, hooks and attributes
(the freezing marks of :mod:`finetune.freeze`, timm's fused activation), and the state dict keeps
its keys, so checkpoints load into the plain model. A model on CUDA gets torch's
``nn.SyncBatchNorm`` (timm's ``SyncBatchNormAct``); elsewhere, where torch's raises "SyncBatchNorm
expected input tensor to be on GPU" and DDP refuses it, the layers become :class:`SyncBatchNorm`:
statistics summed in float64 over the processes (two passes: mean, then squared deviations), the
input gradient reduced the same way in backward. Layers in eval mode (validation, frozen parts
under ``--bn frozen|eval``) use their running statistics and talk to no one.

>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
>>> bn = net[1]
>>> convert_sync_batchnorm(net)
['1']
>>> net[1] is bn, type(bn).__name__, list(net.state_dict())[2:4]
(True, 'SyncBatchNorm', ['1.weight', '1.bias'])
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from finetune.errors import ConfigError

__all__ = ["SyncBatchNorm", "SyncBatchNormAct", "convert_sync_batchnorm"]


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover every process's batch under ``torch.distributed``
    (any backend: gloo on CPU, where torch's ``nn.SyncBatchNorm`` refuses to run, NCCL on CUDA).

    Without an initialised process group, or in eval mode, it is plain BatchNorm. It is not an
    ``nn.SyncBatchNorm``, which DDP refuses on CPU; :func:`convert_sync_batchnorm` gives CUDA
    models torch's own layer.

    >>> bn = SyncBatchNorm(3)
    >>> x = torch.randn(4, 3, 2, 2)
    >>> torch.equal(bn(x), torch.nn.BatchNorm2d(3)(x))  # one process: plain BatchNorm
    True
    """

    process_group: Any = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        self._check_input_dim(input)
        if input.shape[1] == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        running = self.track_running_stats
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, self.running_mean if running else None,
                                            self.running_var if running else None, self.eps, momentum,
                                            self.process_group or dist.group.WORLD)


class SyncBatchNormAct(SyncBatchNorm):
    """timm's ``BatchNormAct2d`` (BatchNorm, then its dropout and activation) with synchronised statistics."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = super().forward(input)
        if hasattr(self, "drop"):
            x = self.drop(x)
        if hasattr(self, "act"):
            x = self.act(x)
        return x


def _channel_dims(x: torch.Tensor) -> tuple[list[int], list[int]]:
    """The dimensions summed over (all but the channels, dim 1) and the shape of a per-channel view."""
    return [d for d in range(x.dim()) if d != 1], [1, x.shape[1]] + [1] * (x.dim() - 2)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch normalisation with the statistics of every process's batch (all_reduce, float64 sums)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None, eps: float, momentum: float,
                group: Any) -> torch.Tensor:
        import torch.distributed as dist

        dims, shape = _channel_dims(x)
        channels = x.shape[1]
        xf = x.float()
        sums = torch.cat([xf.sum(dims, dtype=torch.float64),
                          torch.tensor([x.numel() // max(channels, 1)], dtype=torch.float64)])
        dist.all_reduce(sums, group=group)
        count = float(sums[-1])
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training over all processes, "
                             f"got input size {list(x.shape)} here and {count:.0f} values in all")
        mean = sums[:channels] / count
        centred = xf - mean.float().view(shape)
        squares = centred.square().sum(dims, dtype=torch.float64)
        dist.all_reduce(squares, group=group)
        var = squares / count
        invstd = (var + eps).rsqrt()
        x_hat = centred.mul_(invstd.float().view(shape))
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_((var * count / (count - 1)).to(running_var.dtype),
                                                    alpha=momentum)
        y = x_hat if weight is None else x_hat * weight.float().view(shape)
        if bias is not None:
            y = y + bias.float().view(shape)
        ctx.save_for_backward(x_hat, weight, invstd)
        ctx.group, ctx.count = group, count
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        import torch.distributed as dist

        x_hat, weight, invstd = ctx.saved_tensors
        dims, shape = _channel_dims(x_hat)
        channels = x_hat.shape[1]
        dy = grad_y.float()
        sum_dy = dy.sum(dims, dtype=torch.float64)
        sum_dy_xhat = (dy * x_hat).sum(dims, dtype=torch.float64)
        grad_x = grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = sum_dy_xhat.to(weight.dtype)  # this process's share: DDP averages parameter gradients
        if ctx.needs_input_grad[2]:
            grad_bias = sum_dy.to(weight.dtype if weight is not None else grad_y.dtype)
        if ctx.needs_input_grad[0]:
            both = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(both, group=ctx.group)  # every process takes this branch: same graph, same freezing
            mean_dy = (both[:channels] / ctx.count).float().view(shape)
            mean_dy_xhat = (both[channels:] / ctx.count).float().view(shape)
            scale = invstd if weight is None else invstd * weight.double()
            grad_x = ((dy - mean_dy - x_hat * mean_dy_xhat) * scale.float().view(shape)).to(grad_y.dtype)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


class _CANNOT:  # (marker: a layer that computes its own BatchNorm forward cannot be converted)
    pass


def _sync_class(layer: _BatchNorm, cuda: bool) -> type | None:
    """The class ``layer`` becomes (None: it already synchronises; ``_CANNOT``: it cannot)."""
    if isinstance(layer, (SyncBatchNorm, nn.SyncBatchNorm)):
        return None
    norm_act = sys.modules.get("timm.layers.norm_act")
    if norm_act is not None and isinstance(layer, norm_act.BatchNormAct2d):
        return norm_act.SyncBatchNormAct if cuda else SyncBatchNormAct
    if type(layer).forward is _BatchNorm.forward:  # BatchNorm1d/2d/3d and subclasses that keep their forward
        return nn.SyncBatchNorm if cuda else SyncBatchNorm
    return _CANNOT


def convert_sync_batchnorm(model: nn.Module, process_group: Any = None) -> list[str]:
    """Make every BatchNorm layer of ``model`` synchronise its batch statistics over the processes
    of ``process_group`` (default: all), in place; return the names of its BatchNorm layers.

    Torch's ``BatchNorm1d/2d/3d`` (and subclasses that keep their forward) and timm's
    ``BatchNormAct2d`` (its dropout and activation kept) are converted: to torch's
    ``nn.SyncBatchNorm`` / timm's ``SyncBatchNormAct`` when the model is on CUDA, else to
    :class:`SyncBatchNorm` / :class:`SyncBatchNormAct`. Another layer that computes its own
    BatchNorm forward is an error naming it, rather than a layer that silently stays per process.

    >>> import torch
    >>> from finetune import convert_sync_batchnorm
    >>> import torchvision
    >>> net = torchvision.models.resnet18(num_classes=2)
    >>> len(convert_sync_batchnorm(net)), type(net.bn1).__name__
    (20, 'SyncBatchNorm')
    >>> class MyNorm(torch.nn.BatchNorm2d):
    ...     def forward(self, x):
    ...         return super().forward(x) * 2
    >>> convert_sync_batchnorm(torch.nn.Sequential(MyNorm(3)))
    Traceback (most recent call last):
    finetune.errors.ConfigError: cannot synchronise '0' (MyNorm computes its own BatchNorm forward): make it a torch.nn.BatchNorm2d, or train without sync_bn (--sync-bn)
    """
    cuda = any(t.is_cuda for t in model.parameters()) or any(t.is_cuda for t in model.buffers())
    layers = [(name, layer, _sync_class(layer, cuda)) for name, layer in model.named_modules()
              if isinstance(layer, _BatchNorm)]
    for name, layer, target in layers:  # (all checked before any is changed)
        if target is _CANNOT:
            raise ConfigError(f"cannot synchronise '{name}' ({type(layer).__name__} computes its own BatchNorm "
                              "forward): make it a torch.nn.BatchNorm2d, or train without sync_bn (--sync-bn)")
    for _, layer, target in layers:
        if target is not None:
            layer.__class__ = target
        layer.process_group = process_group
    return [name for name, _, _ in layers]

"""Several processes training one model (``torchrun``): which process this is, and the few
collective operations the training loop needs.

``torchrun --nproc_per_node N -m finetune train ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set. Each process takes every N-th sample of an epoch
(:func:`finetune.data.loader.shard_order`), the model is wrapped in
``DistributedDataParallel`` (gradients averaged: N processes with batch B train like one
process with batch N*B), the processes agree on when to stop and save, validation counts are
summed over them, and only process 0 writes the run directory. On CUDA each process uses
the GPU ``LOCAL_RANK`` with NCCL; on CPU they use gloo.

>>> env = Distributed.from_env({})          # not started by torchrun: one process
>>> env.world, env.rank, env.main, env.enabled
(1, 0, True, False)
>>> env.sum([2.0, 3.0]), env.any(False), env.gather("x")   # the collectives are identities then
([2.0, 3.0], False, ['x'])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from finetune.errors import ConfigError, FinetuneError


class PeerLost(FinetuneError):
    """Another process of a torchrun run died or lost its connection: this one cannot go on.

    >>> str(PeerLost.of(RuntimeError("[gloo/pair.cc:545] Read error: Connection reset by peer. This is typically"
    ...                              " caused by a remote worker hanging"), 2))  # doctest: +ELLIPSIS
    'another of the 2 processes of this torchrun run stopped or lost its connection (Read error: Connection reset by peer): ...'
    """

    @classmethod
    def of(cls, error: BaseException, world: int) -> PeerLost:
        first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
        if first.startswith("[") and "] " in first:  # gloo's source position
            first = first.split("] ", 1)[1]
        first = first.split(". This is typically")[0]  # (gloo's advice, about the other process's logs)
        return cls(f"another of the {world} processes of this torchrun run stopped or lost its connection ({first}): "
                   "this one stops too, without saving; the checkpoints saved so far are kept: continue with "
                   f"torchrun --nproc_per_node {world} -m finetune train ... --resume auto")


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another process is gone (gloo's
    "Connection reset by peer", NCCL's errors, torch's ``DistError``), not a bug.

    >>> lost_peer(RuntimeError("[../gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer")), lost_peer(RuntimeError("size mismatch"))
    (True, False)
    """
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        w in text for w in ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe", "Socket Timeout"))


@dataclass
class Distributed:
    """This process's place among ``world`` processes; the collectives the loop uses."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    _group: Any = field(default=None, repr=False)  # a gloo group for host-side values (NCCL wants GPU tensors)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Distributed:
        """Read torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (one process when unset).

        >>> Distributed.from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
        Distributed(rank=1, world=2, local_rank=1)
        """
        env = os.environ if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (set by torchrun)") from None
        if world < 1 or not 0 <= rank < world or local_rank < 0:
            raise ConfigError(f"RANK {rank} / WORLD_SIZE {world} / LOCAL_RANK {local_rank} do not fit together "
                              "(start several processes with torchrun --nproc_per_node N)")
        return cls(rank, world, local_rank)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Process 0: the one that prints and writes the run directory."""
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """The device of this process for ``--device``: its own GPU (``LOCAL_RANK``) on CUDA."""
        from finetune.train import resolve_device

        device = resolve_device(name)
        if device.type == "cuda" and self.enabled:
            if self.local_rank >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK {self.local_rank} but only {torch.cuda.device_count()} GPUs: start at "
                                  "most one process per GPU (torchrun --nproc_per_node)")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def start(self, device: torch.device) -> None:
        """Join the process group (NCCL on CUDA, else gloo); nothing with one process."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
            dist.init_process_group(backend, timeout=timedelta(minutes=30), **kwargs)
        self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD

    def stop(self) -> None:
        """Leave the process group (after a barrier, so nobody leaves while others still talk)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier(group=self._group)
            dist.destroy_process_group()

    def sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the processes (float64, on the host)."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self._group)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on at least one."""
        return bool(self.sum([float(flag)])[0] > 0) if self.enabled else bool(flag)

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self._group)
        return out

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Process 0's buffers (BatchNorm statistics) on every process. DDP sends them only at the
        start of a forward, and each process then updates them with its own batch: without this,
        every process would evaluate its own slightly different model, not the one process 0 saves
        (and an EMA of them, restored from process 0's copy on resume, would differ after it)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for buf in module.buffers():
            dist.broadcast(buf.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier(group=self._group)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in ``DistributedDataParallel`` (its trainable parameters as they are now:
        wrap again after unfreezing); the model itself with one process. ``static_graph``
        lets a trainable parameter that the forward does not use (an auxiliary head) pass."""
        if not self.enabled or not any(p.requires_grad for p in model.parameters()):
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       static_graph=True)

"""Load any checkpoint into any model, safely, and say exactly what was loaded.

* :func:`read_state_dict` — a flat CPU state dict from any checkpoint file, folder or dict
  (torch zip / legacy, safetensors, sharded folders, TorchScript, DCP, timm, Lightning,
  torchvision references, pytorch/examples, fastai, accelerate, mmengine, DeepSpeed ZeRO 0-3, finetune's own);
* :func:`load_weights` — align names, apply include/exclude/rename and shape rules,
  load, and return a :class:`LoadReport`;
* :func:`inspect_checkpoint` and :func:`convert` — what the CLI's ``inspect`` and
  ``convert`` print and write.

Unpickling starts with ``weights_only=True`` and an explicit allowlist, with inert
stand-ins for the third-party types real checkpoints carry beside their weights (OmegaConf,
fastcore, mmengine, yacs, ``functools.partial``); anything else needs ``trust=True``.

>>> import torch
>>> from finetune.weights import load_weights
>>> net = torch.nn.Linear(2, 2)
>>> print(load_weights(net, {"module._orig_mod.weight": torch.eye(2), "module._orig_mod.bias": torch.zeros(2)}).ok)
True
"""

from __future__ import annotations

from finetune.weights.formats import Checkpoint, read_checkpoint
from finetune.weights.load import LoadReport, adapt_input_channels, load_weights
from finetune.weights.tools import convert, format_inspect, inspect_checkpoint, read_state_dict

__all__ = [
    "Checkpoint",
    "LoadReport",
    "adapt_input_channels",
    "convert",
    "format_inspect",
    "inspect_checkpoint",
    "load_weights",
    "read_checkpoint",
    "read_state_dict",
]

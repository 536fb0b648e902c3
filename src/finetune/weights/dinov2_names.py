"""DINOv2's own files (facebookresearch/dinov2: the released ``dinov2_vits14_pretrain.pth`` ...,
``*_reg4_pretrain.pth`` and a training run's ``teacher_checkpoint.pth``) under timm's ``vit_*_dinov2`` names, as timm's
own conversion of them does: ``mask_token`` left out, ``register_tokens`` as ``reg_token`` with [CLS]'s position added
to ``cls_token`` (timm's ``*_reg*_dinov2`` give neither token a position), the SwiGLU MLP's ``w12`` / ``w3`` as
``fc1`` / ``fc2`` (ViT-g), and the ``blocks.C.N`` of a run with ``block_chunks`` as ``blocks.N``.

>>> import torch
>>> sd = {"cls_token": torch.zeros(1, 1, 2), "pos_embed": torch.ones(1, 5, 2), "register_tokens": torch.zeros(1, 4, 2),
...       "mask_token": torch.zeros(1, 2), "blocks.1.3.ls1.gamma": torch.ones(2)}
>>> out, note = from_dinov2(sd, {"cls_token": (1, 1, 2), "reg_token": (1, 4, 2), "pos_embed": (1, 4, 2),
...                              "blocks.3.ls1.gamma": (2,)})
>>> sorted(out), out["cls_token"].tolist(), tuple(out["pos_embed"].shape)
(['blocks.3.ls1.gamma', 'cls_token', 'pos_embed', 'reg_token'], [[[1.0, 1.0]]], (1, 4, 2))
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from torch import Tensor

StateDict = dict[str, Tensor]
_CHUNKED = re.compile(r"(^|\.)blocks\.\d+\.(\d+)\.")


def _square(tokens: int) -> bool:
    return tokens > 0 and math.isqrt(tokens) ** 2 == tokens


def from_dinov2(sd: Mapping[str, Tensor], model_shapes: Mapping[str, tuple[int, ...]]) -> tuple[StateDict, str | None]:
    """``sd`` under timm's names when it is a DINOv2 ``DinoVisionTransformer`` state dict (its ``mask_token`` or
    ``register_tokens`` beside ``cls_token`` and ``pos_embed``, under any prefix) and the model has timm's
    ``vit_*_dinov2`` names (``blocks.N.ls1.gamma``, no ``mask_token``), and a note saying so; else ``(sd, None)``."""
    given = dict(sd)
    # (every copy: a training run's checkpoint holds the student's and the teacher's)
    prefixes = sorted({k[: -len(leaf)] for k in sd for leaf in ("mask_token", "register_tokens")
                       if k.endswith(leaf) and k[: -len(leaf)] + "cls_token" in sd and k[: -len(leaf)] + "pos_embed" in sd
                       and (leaf == "register_tokens" or sd[k].dim() == 2)})  # (MAE's / BEiT's mask_token is 1x1xD)
    if not prefixes or not any(n.endswith(".ls1.gamma") for n in model_shapes):
        return given, None
    if any(n.endswith(("mask_token", "register_tokens")) for n in model_shapes):
        return given, None  # (DINOv2's own model: its names as they are)
    chunked = not any(_CHUNKED.search(n) for n in model_shapes)
    model_pos = next((s for n, s in model_shapes.items() if n == "pos_embed" or n.endswith(".pos_embed")), None)
    out: StateDict = {}
    done: dict[str, None] = {}
    dropped = 0
    for k, v in sd.items():
        at = next((p for p in reversed(prefixes) if k.startswith(p)), None)
        if at is None:
            out[k] = v
            continue
        name = k[len(at):]
        if name == "mask_token":
            done["mask_token left out"] = None
            dropped += 1
            continue
        if name == "register_tokens":
            name = "reg_token"
        if chunked and _CHUNKED.match(name):
            name = _CHUNKED.sub(r"\1blocks.\2.", name, count=1)
            done["blocks.C.N (block_chunks) -> blocks.N"] = None
        if re.search(r"\.mlp\.w(12|3)\.", name):
            name = re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", name))
            done["mlp.w12/w3 -> mlp.fc1/fc2"] = None
        out[at + name] = v
    if len(out) != len(sd) - dropped:
        return given, None  # two keys onto one name: not the layout this is for
    for at in prefixes:
        pos = out.get(at + "pos_embed")
        if at + "reg_token" not in out:
            continue
        if (model_pos is not None and len(model_pos) == 3 and pos is not None and pos.dim() == 3
                and _square(model_pos[1]) and _square(pos.shape[1] - 1)):
            # DINOv2 gives [CLS] a position and the registers none; timm's *_reg*_dinov2 give neither one (no_embed_class)
            out[at + "cls_token"] = out[at + "cls_token"] + pos[:, :1]
            out[at + "pos_embed"] = pos[:, 1:]
            done["register_tokens -> reg_token with [CLS]'s position added to cls_token"] = None
        else:
            done["register_tokens -> reg_token"] = None
    return out, f"DINOv2 (facebookresearch) names converted to timm's ({', '.join(done)})"

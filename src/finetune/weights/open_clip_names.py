"""CLIP image towers (OpenAI's ``ViT-B-32.pt`` / ``RN50.pt``, open_clip's ``open_clip_pytorch_model.bin`` /
``.safetensors``) under timm's names.

A CLIP ViT's image tower (``visual.``) is the network of timm's ``vit_*_clip_*`` models (timm converts these files
itself when it loads them: ``timm.models.vision_transformer._convert_openai_clip``) under other names:
``visual.class_embedding`` (D) for ``cls_token`` (1 x 1 x D), ``visual.positional_embedding`` (N x D) for ``pos_embed``
(1 x N x D), ``visual.ln_pre`` for ``norm_pre``, ``visual.transformer.resblocks.N`` for ``blocks.N`` (``attn.in_proj_*``
for ``attn.qkv.*``, ``mlp.c_fc`` / ``mlp.c_proj`` for ``mlp.fc1`` / ``mlp.fc2``), ``visual.ln_post`` for ``norm`` and
the projection into the text tower's space, ``visual.proj`` (D x E), for ``head.weight`` (E x D; timm's ``.openai`` /
``.laion2b`` CLIP models have that E-wide head, with a zero bias): a classifier for your classes, of another width,
keeps its own. :func:`from_open_clip` renames them; the text tower's tensors (``transformer.*``, ``token_embedding``,
``ln_final``, ``text_projection``, ``logit_scale``, …) are left out, and the note says how many.

A CLIP ResNet's image tower (``ModifiedResNet``: RN50, RN101, RN50x4, …) is the network of timm's ``resnet*_clip``
models (timm's ``byobnet._convert_openai_clip``): the 3-conv stem ``visual.conv1..3`` / ``bn1..3`` for
``stem.convN.conv`` / ``.bn``, ``visual.layerS.B.conv1..3`` / ``bn1..3`` for ``stages.S-1.B.conv1_1x1`` /
``conv2_kxk`` / ``conv3_1x1`` (``.conv`` / ``.bn``), ``downsample.0`` / ``.1`` (after its average pool, ``-1``, which
has no tensors) for ``shortcut.conv.conv`` / ``.bn``, and the attention pool ``visual.attnpool`` for ``head``
(``positional_embedding`` for ``pos_embed``, ``q_proj`` / ``k_proj`` / ``v_proj`` / ``c_proj`` for ``q`` / ``k`` /
``v`` / ``proj``; ``c_proj`` projects into the joint space, as the ViT's ``proj``: a head for your classes keeps its
own). A ``resnet*_clip_gap`` model pools by average: the attention pool is left out, as timm does.

>>> import torch
>>> sd, note = from_open_clip({"visual.class_embedding": torch.zeros(8), "visual.positional_embedding": torch.zeros(5, 8),
...                            "visual.conv1.weight": torch.zeros(8, 3, 2, 2), "visual.proj": torch.zeros(8, 4),
...                            "visual.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(24, 8),
...                            "token_embedding.weight": torch.zeros(10, 4), "logit_scale": torch.zeros(())})
>>> {k: tuple(v.shape) for k, v in sd.items()}
{'cls_token': (1, 1, 8), 'pos_embed': (1, 5, 8), 'patch_embed.proj.weight': (8, 3, 2, 2), 'head.weight': (4, 8), 'head.bias': (4,), 'blocks.0.attn.qkv.weight': (24, 8)}
>>> print(note)
CLIP image tower names converted to timm's (visual.transformer.resblocks.N -> blocks.N, in_proj -> attn.qkv, c_fc/c_proj -> mlp.fc1/fc2, ln_pre/ln_post -> norm_pre/norm, class_embedding -> cls_token, proj -> head (CLIP's 4-wide projection, not a classifier), ...); 2 tensors outside the image tower (the text tower's) left out
>>> from_open_clip({"fc.weight": torch.zeros(1)})[1] is None
True
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import Tensor

from finetune.weights.transformers_names import _has, _rename

StateDict = dict[str, Tensor]

#: (regex, replacement) on the names under the image tower's prefix ('visual.'), as re.sub takes them
_RULES = [
    (r"^class_embedding$", "cls_token"),
    (r"^positional_embedding$", "pos_embed"),
    (r"^conv1\.", "patch_embed.proj."),
    (r"^ln_pre\.", "norm_pre."),
    (r"^ln_post\.", "norm."),
    (r"^transformer\.resblocks\.(\d+)\.ln_([12])\.", r"blocks.\1.norm\2."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"blocks.\1.mlp.fc1."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"blocks.\1.mlp.fc2."),
]
#: the same for a CLIP ResNet's tower (ModifiedResNet), as timm's resnet*_clip (ByobNet) names it
_RN_CONVS = {"1": "conv1_1x1", "2": "conv2_kxk", "3": "conv3_1x1"}
_RN_RULES = [
    (r"^conv([123])\.", r"stem.conv\1.conv."),
    (r"^bn([123])\.", r"stem.conv\1.bn."),
    (r"^layer(\d+)\.(\d+)\.conv([123])\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.{_RN_CONVS[m[3]]}.conv."),
    (r"^layer(\d+)\.(\d+)\.bn([123])\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.{_RN_CONVS[m[3]]}.bn."),
    (r"^layer(\d+)\.(\d+)\.downsample\.([01])\.",
     lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut.conv.{'conv' if m[3] == '0' else 'bn'}."),
    (r"^attnpool\.positional_embedding$", "head.pos_embed"),
    (r"^attnpool\.([qkv])_proj\.", r"head.\1."),
    (r"^attnpool\.c_proj\.", "head.proj."),
]
#: the image tower's markers: a key ending with this (after its prefix, 'visual.' or 'module.visual.')
_MARKER = "class_embedding"
_RN_MARKER = "attnpool.positional_embedding"
#: OpenAI's TorchScript archives (ViT-B-32.pt) keep these beside the weights; the model was trained with QuickGELU
_OPENAI = ("input_resolution", "context_length", "vocab_size")


def from_open_clip(sd: StateDict, model_names: Iterable[str] = (), *,
                   quick_gelu: bool = False) -> tuple[StateDict, str | None]:
    """``sd`` under timm's ``vit_*_clip_*`` names when it is a CLIP ViT's state dict (OpenAI's or open_clip's: its
    image tower under ``visual.``, or the tower alone), and a note saying so (under timm's ``resnet*_clip`` names
    when it is a CLIP ResNet's: :func:`_from_clip_resnet`); else ``(sd, None)``. The text tower's
    tensors are left out. A model that has CLIP's names itself (``model_names``: open_clip's ``VisionTransformer``,
    or a CLIP model) takes the file as it is. OpenAI's own files (its TorchScript archives) get a note that the
    weights were trained with QuickGELU unless the model computes it (``quick_gelu``).

    >>> sd = {"visual.class_embedding": torch.zeros(8), "visual.conv1.weight": torch.zeros(8, 3, 2, 2)}
    >>> list(from_open_clip(sd)[0]), list(from_open_clip(sd, ["visual.class_embedding", "visual.conv1.weight"])[0])
    (['cls_token', 'patch_embed.proj.weight'], ['visual.class_embedding', 'visual.conv1.weight'])
    """
    at = next((k[:-len(_MARKER)] for k in sd if k == _MARKER or k.endswith("." + _MARKER)), None)
    if at is None or f"{at}conv1.weight" not in sd or getattr(sd[f"{at}conv1.weight"], "ndim", 0) != 4:
        return _from_clip_resnet(sd, model_names)  # (a CLIP ResNet's tower has no class_embedding)
    names = list(model_names)
    if any(n == _MARKER or n.endswith("." + _MARKER) for n in names):
        return sd, None  # the model's own names
    compiled = [(re.compile(rx), replacement) for rx, replacement in _RULES]
    out: StateDict = {}
    for k, v in sd.items():
        if not k.startswith(at):
            continue
        k = k[len(at):]
        if k == "proj":  # (D x E, applied as x @ proj: timm's head.weight is its transpose)
            out["head.weight"] = v.t().contiguous()
            out["head.bias"] = torch.zeros(v.shape[1], dtype=v.dtype)
            continue
        name = _rename(k, compiled)
        out[name] = v.reshape(1, 1, -1) if name == "cls_token" else v.unsqueeze(0) if name == "pos_embed" else v
    width = f"{out['head.weight'].shape[0]}-wide " if "head.weight" in out else ""
    note = ("CLIP image tower names converted to timm's (visual.transformer.resblocks.N -> blocks.N, in_proj -> "
            "attn.qkv, c_fc/c_proj -> mlp.fc1/fc2, ln_pre/ln_post -> norm_pre/norm, class_embedding -> cls_token, "
            f"proj -> head (CLIP's {width}projection, not a classifier), ...)")
    return out, _noted(note, sd, at, gelu=not quick_gelu)


def _from_clip_resnet(sd: StateDict, model_names: Iterable[str] = ()) -> tuple[StateDict, str | None]:
    """``sd`` under timm's ``resnet*_clip`` names when it is a CLIP ResNet's state dict (its image tower, a
    ``ModifiedResNet``, under ``visual.`` or alone), and a note saying so; else ``(sd, None)``. The attention pool is
    left out for a model without one (``model_names`` with timm's CLIP ResNet stem but no ``head.pos_embed``: timm's
    ``resnet*_clip_gap``), as timm does.

    >>> sd = {"visual.attnpool.positional_embedding": torch.zeros(5, 8), "visual.conv3.weight": torch.zeros(8, 4, 3, 3),
    ...       "visual.layer2.0.downsample.1.bias": torch.zeros(8), "visual.layer4.1.bn2.weight": torch.zeros(8)}
    >>> list(_from_clip_resnet(sd)[0])
    ['head.pos_embed', 'stem.conv3.conv.weight', 'stages.1.0.shortcut.conv.bn.bias', 'stages.3.1.conv2_kxk.bn.weight']
    >>> list(_from_clip_resnet(sd, ["stem.conv3.conv.weight", "head.fc.weight"])[0])  # (resnet50_clip_gap)
    ['stem.conv3.conv.weight', 'stages.1.0.shortcut.conv.bn.bias', 'stages.3.1.conv2_kxk.bn.weight']
    """
    at = next((k[:-len(_RN_MARKER)] for k in sd if k == _RN_MARKER or k.endswith("." + _RN_MARKER)), None)
    if at is None or getattr(sd.get(f"{at}conv3.weight"), "ndim", 0) != 4:
        return sd, None  # (not a CLIP ResNet: its stem's third conv and its attention pool)
    names = list(model_names)
    if any(n == _RN_MARKER or n.endswith("." + _RN_MARKER) for n in names):
        return sd, None  # the model's own names (open_clip's ModifiedResNet)
    pooled = not _has(names, "stem.conv3.conv.weight") or _has(names, "head.pos_embed")
    compiled = [(re.compile(rx), replacement) for rx, replacement in _RN_RULES]
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith(at) and (pooled or not k[len(at):].startswith("attnpool.")):
            out[_rename(k[len(at):], compiled)] = v
    width = f"{out['head.proj.weight'].shape[0]}-wide " if "head.proj.weight" in out else ""
    note = ("CLIP ResNet image tower names converted to timm's (visual.conv1..3 -> stem.conv1..3, visual.layerS.B -> "
            "stages.S-1.B, conv1..3 -> conv1_1x1/conv2_kxk/conv3_1x1, downsample -> shortcut.conv, attnpool -> head, "
            f"c_proj -> head.proj (CLIP's {width}projection, not a classifier), ...)" if pooled else
            "CLIP ResNet image tower names converted to timm's (visual.conv1..3 -> stem.conv1..3, visual.layerS.B -> "
            "stages.S-1.B, conv1..3 -> conv1_1x1/conv2_kxk/conv3_1x1, downsample -> shortcut.conv, ...); its "
            "attention pool (attnpool) left out: the model pools by average")
    return out, _noted(note, sd, at, gelu=False)  # (ReLU: no QuickGELU in a CLIP ResNet's tower)


def _noted(note: str, sd: StateDict, at: str, *, gelu: bool) -> str:
    """``note`` with how many tensors outside the image tower (under ``at``) were left out and, for OpenAI's own
    files where ``gelu`` (a ViT's, into a model computing GELU), that they were trained with QuickGELU."""
    left = len([k for k in sd if not k.startswith(at)])
    if left:
        note += f"; {left} tensor{'s' if left != 1 else ''} outside the image tower (the text tower's) left out"
    if any(k in sd for k in _OPENAI) and gelu:
        note += ("; OpenAI's CLIP was trained with QuickGELU: timm's *_clip_quickgelu_* models compute as it did "
                 "(the *_clip_* ones with GELU)")
    return note

"""Load whatever fits into a model and say exactly what happened: :func:`load_weights`.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 2))
>>> report = load_weights(model, {"module.0.weight": torch.ones(2, 3), "module.0.bias": torch.zeros(2)})
>>> report.ok, report.loaded
(True, ['0.weight', '0.bias'])
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from finetune.errors import NothingMatchedError, WeightsError
from finetune.weights import sources
from finetune.weights.dinov2_names import from_dinov2
from finetune.weights.formats import Checkpoint, read_checkpoint
from finetune.weights.keys import (
    MAX_WRAPPER_DEPTH,
    apply_renames,
    matches,
    unwrap_as_in_file,
    unwrap_names,
)
from finetune.weights.open_clip_names import from_open_clip
from finetune.weights.transformers_names import from_transformers

Shape = tuple[int, ...]
ShapeMismatch = Literal["skip", "error", "adapt"]


@dataclass
class LoadReport:
    """What :func:`load_weights` did, tensor by tensor.

    ``mismatched`` holds ``(name, file shape, model shape)``; ``adapted`` holds
    ``(name, how)``. ``ok`` is True when every model tensor came from the file except the
    excluded ones and the classifier head, when the file's is of another shape (for other
    classes) or absent (a backbone saved without its head).

    >>> import torch
    >>> from finetune import load_weights
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))
    >>> report = load_weights(model, {"0.weight": torch.ones(4, 3), "1.weight": torch.ones(10, 4),
    ...                               "1.bias": torch.zeros(10), "extra": torch.zeros(1)})
    >>> report.ok, report.loaded, report.missing, report.unexpected
    (False, ['0.weight'], ['0.bias'], ['extra'])
    >>> report.to_dict()["mismatched"]
    [{'name': '1.weight', 'file_shape': [10, 4], 'model_shape': [5, 4]}, {'name': '1.bias', 'file_shape': [10], 'model_shape': [5]}]
    >>> print(report)
    weights: <state dict>
      format   state_dict (in memory)
      mapping  prefix: identity
      loaded         1
      mismatched     2  1.weight (file 10x4, model 5x4), 1.bias (file 10, model 5)
      missing        1  0.bias
      unexpected     1  extra
      1/4 model tensors from the file: INCOMPLETE: the model keeps its own values for the missing tensors
    """

    source: str = ""
    format: str = ""
    mapping: str = "identity"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    adapted: list[tuple[str, str]] = field(default_factory=list)
    ema_available: bool = False
    ema_used: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model tensor was loaded, adapted or excluded, or is in the model's
        classifier head and kept: the file's head is for other classes (another shape) or the file
        has none (a self-supervised or ``num_classes=0`` backbone). The head is new either way.

        >>> from finetune import LoadReport
        >>> LoadReport(mismatched=[("fc.weight", (1000, 8), (3, 8))], _heads=("fc",)).ok
        True
        >>> LoadReport(missing=["fc.weight", "fc.bias"], _heads=("fc",)).ok
        True
        >>> LoadReport(mismatched=[("conv1.weight", (8, 3, 7, 7), (8, 1, 7, 7))], _heads=("fc",)).ok
        False
        >>> LoadReport(missing=["layer4.0.conv1.weight", "fc.bias"], _heads=("fc",)).ok
        False
        """
        return not self.missing_outside_head and not self.mismatched_outside_head

    def _outside_head(self, names: list[str]) -> list[str]:
        return [n for n in names if not any(n == h or n.startswith(h + ".") for h in self._heads)]

    @property
    def mismatched_outside_head(self) -> list[str]:
        """The names in ``mismatched`` outside the model's classifier head: tensors that keep the
        model's own (random) values although the file has them.

        >>> import torch
        >>> from finetune import load_weights
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))    # head: the last Linear
        >>> report = load_weights(model, {"0.weight": torch.ones(4, 2), "0.bias": torch.zeros(4),
        ...                               "1.weight": torch.ones(10, 4), "1.bias": torch.zeros(10)})
        >>> [name for name, _, _ in report.mismatched], report.mismatched_outside_head, report.ok
        (['0.weight', '1.weight', '1.bias'], ['0.weight'], False)
        """
        return self._outside_head([n for n, _, _ in self.mismatched])

    @property
    def missing_outside_head(self) -> list[str]:
        """The names in ``missing`` outside the model's classifier head: tensors the file lacks
        that keep the model's own (random) values.

        >>> import torch
        >>> from finetune import load_weights
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))    # head: the last Linear
        >>> report = load_weights(model, {"0.weight": torch.ones(4, 3)})
        >>> report.missing, report.missing_outside_head, report.ok
        (['0.bias', '1.weight', '1.bias'], ['0.bias'], False)
        """
        return self._outside_head(self.missing)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (shapes as lists), with ``ok``: the ``load_report`` of ``finetune inspect FILE --model
        ARCH --json``.

        >>> import json, torch
        >>> from finetune import load_weights
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))
        >>> report = load_weights(model, {"0.weight": torch.ones(4, 3), "0.bias": torch.zeros(4),
        ...                               "1.weight": torch.ones(10, 4), "1.bias": torch.zeros(10)})
        >>> d = report.to_dict()
        >>> d["ok"], d["loaded"], d["mismatched"][0]
        (True, ['0.weight', '0.bias'], {'name': '1.weight', 'file_shape': [10, 4], 'model_shape': [5, 4]})
        >>> json.loads(json.dumps(d)) == d
        True
        """
        return {
            "source": self.source, "format": self.format, "mapping": self.mapping, "ok": self.ok,
            "loaded": self.loaded, "missing": self.missing, "unexpected": self.unexpected,
            "mismatched": [{"name": n, "file_shape": list(a), "model_shape": list(b)} for n, a, b in self.mismatched],
            "excluded": self.excluded, "adapted": [{"name": n, "how": h} for n, h in self.adapted],
            "ema_available": self.ema_available, "ema_used": self.ema_used, "notes": self.notes,
        }

    def __str__(self) -> str:
        total = len(self.loaded) + len(self.adapted) + len(self.missing) + len(self.mismatched) + self._excluded_in_model
        head = [f"weights: {self.source}", f"  format   {self.format}", f"  mapping  {self.mapping}"]
        if self.ema_available:
            head.append("  ema      " + ("EMA weights loaded" if self.ema_used
                                         else "the file also has EMA weights, not used: load_weights(ema=True) "
                                              "loads them; `finetune convert FILE OUT.safetensors --ema` writes "
                                              "them for --pretrained OUT.safetensors"))
        rows = [
            ("loaded", len(self.loaded), ""),
            ("adapted", len(self.adapted), ", ".join(f"{n} ({h})" for n, h in self.adapted)),
            ("mismatched", len(self.mismatched),
             ", ".join(f"{n} (file {_fmt(a)}, model {_fmt(b)})" for n, a, b in self.mismatched)),
            ("missing", len(self.missing), ", ".join(self.missing)),
            ("unexpected", len(self.unexpected), _grouped(self.unexpected)),
            ("excluded", len(self.excluded), ", ".join(self.excluded)),
        ]
        lines = [f"  {name:<10} {n:>5}  {_clip(detail)}".rstrip() for name, n, detail in rows if n or name == "loaded"]
        kept = " and ".join(w for w, n in (("the missing tensors", self.missing_outside_head),
                                           ("those of another shape outside its head", self.mismatched_outside_head)) if n)
        verdict = "ok" if self.ok else f"INCOMPLETE: the model keeps its own values for {kept}"
        if self.ok and self.missing:
            verdict += " (the file has no classifier head: the model's own, new head is kept)"
        lines.append(f"  {len(self.loaded) + len(self.adapted)}/{total} model tensors from the file: {verdict}")
        return "\n".join(head + lines + [f"  note     {n}" for n in self.notes])

    _excluded_in_model: int = field(default=0, repr=False)
    _heads: tuple[str, ...] = field(default=(), repr=False)  # the model's classifier heads (clean names)


def _fmt(shape: Shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _grouped(names: list[str], limit: int = 6) -> str:
    """``names``, or for more than ``limit``, how many there are under each name one level below the prefix
    they all share (a self-supervised file's second copy, its projection head, a queue: what was left out).

    >>> _grouped(["queue", "fc.bias"])
    'queue, fc.bias'
    >>> _grouped([f"module.encoder_k.layer{i}.weight" for i in range(8)] + ["module.encoder_q.fc.0.weight", "module.queue"])
    'module.encoder_k.* (8), module.encoder_q.*, module.queue'
    """
    if len(names) <= limit:
        return ", ".join(names)
    split = [n.split(".") for n in names]
    depth = 0
    while all(len(p) > depth + 1 and p[depth] == split[0][depth] for p in split):
        depth += 1
    groups: dict[str, int] = {}
    for parts in split:
        key = ".".join(parts[:depth + 1]) + (".*" if len(parts) > depth + 1 else "")
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{k} ({n})" if n > 1 else k for k, n in groups.items())


def _clip(text: str, width: int = 110) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- alignment
@dataclass(frozen=True)
class PrefixMap:
    """Replace ``strip`` at the start of a key by ``add`` (keys without ``strip`` keep their name).

    >>> from finetune.weights.load import PrefixMap
    >>> m = PrefixMap(strip="model.", add="backbone.")
    >>> m("model.fc.weight"), m("head.bias"), str(m)
    ('backbone.fc.weight', 'head.bias', "'model.' -> 'backbone.'")
    """

    strip: str = ""
    add: str = ""

    def __call__(self, name: str) -> str:
        if self.strip:
            return self.add + name[len(self.strip):] if name.startswith(self.strip) else name
        return self.add + name

    def __str__(self) -> str:
        if not self.strip and not self.add:
            return "identity"
        if not self.add:
            return f"strip '{self.strip}'"
        if not self.strip:
            return f"add '{self.add}'"
        return f"'{self.strip}' -> '{self.add}'"


@dataclass(frozen=True)
class ChildIndexMap:
    """Keys of the model's children in an ``nn.Sequential`` (``Sequential(*model.children())``:
    fastai's ``vision_learner`` body, lightly's ``backbone``): ``strip``, then a child's index,
    becomes the name of the model's child of that index (children without weights count too).

    >>> from finetune.weights.load import ChildIndexMap
    >>> m = ChildIndexMap(strip="0.", children=("conv1", "bn1", "relu", "maxpool", "layer1"))
    >>> m("0.4.0.conv1.weight"), m("0.1.bias"), m("1.8.weight"), str(m)
    ('layer1.0.conv1.weight', 'bn1.bias', '1.8.weight', "'0.N.' -> the model's N-th child (conv1, bn1, …)")
    """

    strip: str = ""
    children: tuple[str, ...] = ()
    add: str = ""

    def __call__(self, name: str) -> str:
        if not name.startswith(self.strip):
            return name
        index, dot, rest = name[len(self.strip):].partition(".")
        if not dot or not index.isdigit() or int(index) >= len(self.children):
            return name
        return f"{self.children[int(index)]}.{rest}"

    def __str__(self) -> str:
        return f"'{self.strip}N.' -> the model's N-th child ({', '.join(self.children[:2])}, …)"


def child_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The names of ``model``'s children in order, inside DDP/DataParallel/compile wrappers.

    >>> child_names(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
    ('0', '1')
    """
    while True:
        kids = list(model.named_children())
        if len(kids) == 1 and kids[0][0] in ("module", "_orig_mod"):
            model = kids[0][1]
            continue
        return tuple(n for n, _ in kids)


def head_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """The names of ``model``'s classifier heads (:func:`finetune.models.head_names`, auxiliary heads
    too), inside DDP/DataParallel/compile wrappers; () when it has none.

    >>> head_prefixes(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2)))
    ('2',)
    """
    from finetune.errors import ModelError
    from finetune.models import aux_head_names, head_names

    while True:
        kids = list(model.named_children())
        if len(kids) == 1 and kids[0][0] in ("module", "_orig_mod"):
            model = kids[0][1]
            continue
        break
    try:
        return tuple(head_names(model) + aux_head_names(model))
    except ModelError:
        return ()


def _index_prefixes(source: Mapping[str, Shape], depth: int) -> list[str]:
    """Prefixes of the file's keys that are followed by at least two distinct child indices."""
    indices: dict[str, set[str]] = {}
    for s in source:
        for q in _prefixes(s, depth):
            head = s[len(q):].partition(".")[0]
            if head.isdigit():
                indices.setdefault(q, set()).add(head)
    return sorted((q for q, i in indices.items() if len(i) >= 2), key=lambda q: -len(indices[q]))[:4]


def align(source: Mapping[str, Shape], target: Mapping[str, Shape], depth: int = 3) -> PrefixMap:
    """The prefix mapping under which the most source keys find a target key of the same shape.

    >>> align({"model.fc.weight": (2, 3)}, {"fc.weight": (2, 3)})
    PrefixMap(strip='model.', add='')
    >>> align({"fc.weight": (2, 3)}, {"backbone.fc.weight": (2, 3), "head.w": (1,)})
    PrefixMap(strip='', add='backbone.')
    """
    return aligned(source, target, depth)[0]


def aligned(source: Mapping[str, Shape], target: Mapping[str, Shape], depth: int = 3,
            children: Sequence[str] = ()) -> list[PrefixMap | ChildIndexMap]:
    """:func:`align`'s mapping first, then any other that fits exactly as many tensors from other
    keys of the file (a distillation checkpoint's ``student.`` and ``teacher.``: the teacher is
    preferred, as DINO-style self-distillation evaluates and releases it, and so are MoCo's ``encoder_q.`` /
    ``base_encoder.`` and BYOL's ``online_encoder.`` (:func:`copy_preference`); otherwise the choice is a guess).

    >>> shapes = {"student.fc.weight": (2, 3), "teacher.fc.weight": (2, 3)}
    >>> [str(m) for m in aligned(shapes, {"fc.weight": (2, 3)})]
    ["strip 'teacher.'", "strip 'student.'"]

    With the model's ``children`` (:func:`child_names`), the keys of a ``Sequential`` of them
    (``0.4.0.conv1.weight`` for ``layer1.0.conv1.weight``) are matched by index too.
    """
    by_suffix: dict[str, set[str]] = {}
    for t in target:
        for p in _prefixes(t, depth):
            by_suffix.setdefault(t[len(p):], set()).add(p)
    support: Counter[tuple[str, str]] = Counter()
    for s in source:
        for q in _prefixes(s, depth):
            for p in by_suffix.get(s[len(q):], ()):
                support[(q, p)] += 1
    candidates: list[PrefixMap | ChildIndexMap] = [PrefixMap()] + [PrefixMap(q, p) for (q, p), _ in
                                                                   support.most_common(12)]
    if len(children) >= 2:
        candidates += [ChildIndexMap(q, tuple(children)) for q in _index_prefixes(source, depth)]

    def score(m: PrefixMap | ChildIndexMap) -> tuple[int, int, int, int, int]:
        names = {m(s): shape for s, shape in source.items()}
        hit = [n for n in names if n in target]
        same = [n for n in hit if tuple(target[n]) == tuple(names[n])]
        # 0-d tensors (BatchNorm's num_batches_tracked) fit any BatchNorm: no evidence for a mapping
        shaped = sum(1 for n in same if len(names[n]) > 0)
        if isinstance(m, PrefixMap) and m.strip and m.add and not _renames_a_module(m, source, target):
            shaped = 0  # one module's name for another's, matched by 'weight' / 'bias' alone: a coincidence
        # of equally fitting copies, the network the method evaluates and releases (not the file's key order)
        preferred = copy_preference(m.strip)
        # a renaming that matches names but no shape is a coincidence (e.g. 'fc.' -> 'stem.')
        return (shaped, len(hit) if shaped or m == PrefixMap() else -1, len(same), preferred,
                -len(m.strip) - len(m.add))

    scores = {m: score(m) for m in candidates}
    best = max(candidates, key=lambda m: scores[m])

    def used(m: PrefixMap | ChildIndexMap) -> set[str]:  # the file's keys a mapping loads
        return {s for s in source if m(s) in target}

    ties: dict[frozenset[str], PrefixMap | ChildIndexMap] = {}
    best_used = used(best)
    for m in sorted(candidates, key=lambda m: scores[m], reverse=True):  # (the simplest of equivalent maps first)
        if m == best or scores[best][0] == 0 or scores[m][:3] != scores[best][:3]:
            continue
        m_used = used(m)  # as many tensors, mostly from other keys (not the same keys with a few swapped)
        if len(m_used & best_used) < len(best_used) / 2:
            ties.setdefault(frozenset(m_used), m)
    return [best, *ties.values()]


def _renames_a_module(m: PrefixMap, source: Mapping[str, Shape], target: Mapping[str, Shape]) -> bool:
    """Whether a renaming (``strip`` and ``add``) matches a shaped tensor below a module name of its own
    (``layer1.0.conv1.weight`` under ``encoder.`` -> ``backbone.``), not only a leaf name ('weight').

    >>> _renames_a_module(PrefixMap("patch_embed.proj.", "features.3.expand3x3."),
    ...                   {"patch_embed.proj.bias": (64,)}, {"features.3.expand3x3.bias": (64,)})
    False
    >>> _renames_a_module(PrefixMap("encoder.", "backbone."), {"encoder.fc.bias": (2,)}, {"backbone.fc.bias": (2,)})
    True
    """
    return any("." in s[len(m.strip):] and len(shape) > 0 and tuple(target.get(m(s), ())) == tuple(shape)
               for s, shape in source.items() if s.startswith(m.strip))


def leftover_map(source: Mapping[str, Shape], target: Mapping[str, Shape], classifier: str | None,
                 depth: int = 3) -> PrefixMap | None:
    """A second prefix mapping, from the file's keys that the first mapping gave no model tensor
    (``source``, as it named them) to the model tensors it gave none (``target``): an OpenMMLab
    (MMPretrain) classifier's ``head.fc.`` beside its ``backbone.``. It keeps a module's name
    (``head.fc.weight`` -> ``fc.weight``, not ``head.weight`` -> ``fc.weight``), and every tensor
    it maps must have the model's shape, except the ``classifier``'s, which may be sized for
    other classes (then only its first dimension differs); None when no renaming fits.

    >>> leftover_map({"head.fc.weight": (1000, 8), "head.fc.bias": (1000,)}, {"fc.weight": (10, 8), "fc.bias": (10,)}, "fc")
    PrefixMap(strip='head.', add='')
    >>> print(leftover_map({"head.fc.weight": (1000, 8)}, {"fc.weight": (1000, 4)}, "fc"))
    None
    """
    if not source or not target:
        return None
    by_suffix: dict[str, set[str]] = {}
    for t in target:
        for p in _prefixes(t, depth):
            if "." in t[len(p):]:  # (a module's name and more: 'weight' alone is no evidence)
                by_suffix.setdefault(t[len(p):], set()).add(p)
    candidates = {PrefixMap(q, p) for s in source for q in _prefixes(s, depth)
                  for p in by_suffix.get(s[len(q):], ()) if q or p}

    def fits(s: str, n: str) -> bool:
        a, b = source[s], target[n]
        return a == b or (n.rpartition(".")[0] == classifier and len(a) == len(b) > 0 and a[1:] == b[1:])

    def score(m: PrefixMap) -> tuple[int, int, int] | None:
        pairs = [(s, m(s)) for s in source if m(s) in target]
        if not pairs or not all(fits(s, n) for s, n in pairs) or len({n for _, n in pairs}) != len(pairs):
            return None
        return sum(1 for s, n in pairs if source[s] == target[n] and source[s]), len(pairs), -len(m.strip) - len(m.add)

    scored = [(sc, m) for m in candidates if (sc := score(m)) is not None]
    return max(scored, key=lambda x: (x[0], str(x[1])))[1] if scored else None


#: of two copies of a network in one file, the one self-supervised methods evaluate and release (+1) and its
#: momentum / key / student counterpart (-1): DINO / iBOT's teacher, MoCo v1/v2's encoder_q, MoCo v3's
#: base_encoder, BYOL's online network
_PREFERRED_COPIES = {"teacher": 1, "encoder_q": 1, "base_encoder": 1, "online_encoder": 1, "online_network": 1,
                     "student": -1, "encoder_k": -1, "momentum_encoder": -1, "target_encoder": -1, "target_network": -1}


def copy_preference(prefix: str) -> int:
    """+1 for a prefix naming the copy of a network that its method evaluates (a self-distillation
    teacher, MoCo's query / base encoder, BYOL's online network), -1 for its momentum / key / student
    copy, 0 otherwise.

    >>> copy_preference("encoder_q."), copy_preference("encoder_k."), copy_preference("backbone.")
    (1, -1, 0)
    """
    return sum(_PREFERRED_COPIES.get(part, 0) for part in prefix.split("."))


def _prefixes(name: str, depth: int) -> list[str]:
    parts = name.split(".")
    return [""] + [".".join(parts[:i]) + "." for i in range(1, min(depth, len(parts) - 1) + 1)]


# --------------------------------------------------------------------------- adaptation
def adapt_input_channels(weight: Tensor, channels: int) -> Tensor:
    """A first-conv weight for another number of input channels.

    One channel: the sum over the file's channels. More: the file's channels repeated
    and scaled by ``old/new`` so that the activations keep their size.

    >>> w = torch.ones(4, 3, 1, 1)
    >>> adapt_input_channels(w, 1)[0, 0, 0, 0].item(), adapt_input_channels(w, 6)[0, :, 0, 0].tolist()
    (3.0, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    """
    old = weight.shape[1]
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(channels / old)
    return weight.repeat(1, reps, *([1] * (weight.dim() - 2)))[:, :channels] * (old / channels)


def _grid_split(tokens_a: int, tokens_b: int, grid: tuple[int, int] | None = None
                ) -> tuple[int, int, int, tuple[int, int]] | None:
    """``(prefix tokens of a, of b, grid side a, grid (h, w) of b)`` for two token counts that are square
    grids after the same number of class/distillation/register tokens (0-8), or else after more
    of them in ``a`` (a distilled DeiT's class + distillation tokens into a ViT with a class token
    only: ``a``'s first ones are kept); None otherwise. With the model's ``grid`` (a ViT built for a
    non-square image), ``b`` is that grid after its prefix tokens, where its token count allows.

    >>> _grid_split(1 + 14 * 14, 1 + 4 * 6, (4, 6))
    (1, 1, 14, (4, 6))
    """
    def side(tokens: int, prefix: int) -> int:
        g = math.isqrt(max(tokens - prefix, 0))
        return g if g > 0 and g * g == tokens - prefix else 0

    keep = tokens_b - grid[0] * grid[1] if grid is not None else -1
    prefix_a = next((p for p in range(keep, 9) if side(tokens_a, p)), None) if 0 <= keep <= 8 else None
    if grid is not None and prefix_a is not None:
        return prefix_a, keep, side(tokens_a, prefix_a), grid
    for prefix in range(0, 9):
        if side(tokens_a, prefix) and side(tokens_b, prefix):
            return prefix, prefix, side(tokens_a, prefix), (side(tokens_b, prefix),) * 2
    for drop in range(1, 9):
        for prefix_b in range(0, 9 - drop):
            if side(tokens_a, prefix_b + drop) and side(tokens_b, prefix_b):
                return prefix_b + drop, prefix_b, side(tokens_a, prefix_b + drop), (side(tokens_b, prefix_b),) * 2
    return None


def is_pos_embed(name: str) -> bool:
    """Whether ``name`` is a ViT absolute position embedding (torchvision ``encoder.pos_embedding``,
    timm ``pos_embed``, Hugging Face ``position_embeddings``).

    >>> is_pos_embed("encoder.pos_embedding"), is_pos_embed("pos_embed"), is_pos_embed("fc.weight")
    (True, True, False)
    """
    leaf = name.rpartition(".")[2].rstrip("0123456789")  # Visformer: pos_embed1, pos_embed2, …
    return leaf in ("pos_embed", "pos_embedding", "position_embeddings", "patch_pos") or leaf.endswith("pos_embed")


def resample_pos_embed_map(tensor: Tensor, shape: Shape) -> tuple[Tensor, str]:
    """A position embedding stored as a map, ``[1, D, h, w]`` (timm's PiT) or ``[1, h, w, D]``
    (VOLO), resized bicubically (antialiased) to the model's ``shape``.

    >>> out, how = resample_pos_embed_map(torch.randn(1, 8, 14, 14), (1, 8, 4, 4))
    >>> tuple(out.shape), how
    ((1, 8, 4, 4), 'position map 14x14 -> 4x4 (bicubic)')
    >>> resample_pos_embed_map(torch.randn(1, 14, 14, 8), (1, 4, 4, 8))[0].shape
    torch.Size([1, 4, 4, 8])
    """
    fs = tuple(tensor.shape)
    channels_last = _map_layout(fs, shape) == "nhwc"
    if _map_layout(fs, shape) is None:
        raise WeightsError(f"cannot resample a position map of shape {_fmt(fs)} to {_fmt(shape)}")
    grid = tensor.permute(0, 3, 1, 2) if channels_last else tensor
    size = (shape[1], shape[2]) if channels_last else (shape[2], shape[3])
    old = tuple(grid.shape[2:])
    out = torch.nn.functional.interpolate(grid.float(), size=size, mode="bicubic", align_corners=False,
                                          antialias=True).to(tensor.dtype)
    out = out.permute(0, 2, 3, 1) if channels_last else out
    return out.contiguous(), f"position map {old[0]}x{old[1]} -> {size[0]}x{size[1]} (bicubic)"


def _map_layout(fs: Shape, ms: Shape) -> str | None:
    if len(fs) != 4 or len(ms) != 4 or fs[0] != 1 or ms[0] != 1:
        return None
    if fs[1] == ms[1] and fs[2:] != ms[2:]:
        return "nchw"
    if fs[3] == ms[3] and fs[1:3] != ms[1:3]:
        return "nhwc"
    return None


def resample_pos_embed(tensor: Tensor, tokens: int, grid: tuple[int, int] | None = None) -> tuple[Tensor, str]:
    """A ``[1, prefix + g*g, D]`` position embedding resampled to ``tokens`` positions, for a
    ViT built at another image size: the class/distillation tokens are kept, the g x g grid
    is resized bicubically with antialiasing, as timm's ``resample_abs_pos_embed`` does when
    it loads pretrained weights at another ``img_size`` (same values).

    >>> t = torch.randn(1, 1 + 14 * 14, 8)
    >>> out, how = resample_pos_embed(t, 1 + 24 * 24)
    >>> tuple(out.shape), how, torch.equal(out[:, 0], t[:, 0])
    ((1, 577, 8), 'position grid 14x14 -> 24x24 (bicubic), 1 prefix token kept', True)
    >>> distilled = torch.randn(1, 2 + 14 * 14, 8)  # DeiT's class and distillation tokens
    >>> out, how = resample_pos_embed(distilled, 1 + 14 * 14)
    >>> how, torch.equal(out, torch.cat([distilled[:, :1], distilled[:, 2:]], 1))
    ("1 prefix token kept, 1 dropped (a distillation token's)", True)

    ``grid``: the model's patch grid ``(h, w)``, for a ViT built for a non-square image.

    >>> resample_pos_embed(t, 1 + 4 * 6, (4, 6))[1]
    'position grid 14x14 -> 4x6 (bicubic), 1 prefix token kept'
    """
    split = _grid_split(tensor.shape[1], tokens, grid)
    if tensor.dim() != 3 or tensor.shape[0] != 1 or split is None:
        raise WeightsError(f"cannot resample a position embedding of shape {_fmt(tuple(tensor.shape))} "
                           f"to {tokens} tokens: not [1, prefix + grid*grid, dim]")
    prefix, keep, old, (new_h, new_w) = split
    dim = tensor.shape[2]
    grid = tensor[:, prefix:]
    how = []
    if (new_h, new_w) != (old, old):
        grid = grid.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
        grid = torch.nn.functional.interpolate(grid, size=(new_h, new_w), mode="bicubic", align_corners=False,
                                               antialias=True)
        grid = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(tensor.dtype)
        how.append(f"position grid {old}x{old} -> {new_h}x{new_w} (bicubic)")
    if keep:
        how.append(f"{keep} prefix token{'s' if keep != 1 else ''} kept")
    if keep != prefix:
        how.append(f"{prefix - keep} dropped (a distillation token's)")
    return torch.cat([tensor[:, :keep], grid], dim=1), ", ".join(how)


def is_rel_pos_table(name: str) -> bool:
    """Whether ``name`` is a window attention's relative position bias table (Swin, BEiT).

    >>> is_rel_pos_table("layers.0.blocks.1.attn.relative_position_bias_table")
    True
    """
    return name.rpartition(".")[2] == "relative_position_bias_table"


def _table_split(rows_a: int, rows_b: int) -> tuple[int, int, int] | None:
    """``(extra rows, side a, side b)``: both tables are an odd-sided square ((2W-1)^2 relative
    offsets) after the same 0-3 extra rows (BEiT's class-token entries), or None."""
    for extra in range(0, 4):
        a, b = math.isqrt(max(rows_a - extra, 0)), math.isqrt(max(rows_b - extra, 0))
        if a % 2 and b % 2 and a * a == rows_a - extra and b * b == rows_b - extra:
            return extra, a, b
    return None


def resample_rel_pos_table(tensor: Tensor, rows: int | Shape) -> tuple[Tensor, str]:
    """A relative position bias table for another window size: ``[(2W-1)^2 (+ extra), heads]``
    (Swin, BEiT: ``rows`` is the new row count) or ``[heads, 2H-1, 2W-1]`` (timm's MaxViT /
    CoAtNet: ``rows`` is the model's shape), for a model built for a smaller or larger image
    (its windows follow the feature map).

    A smaller window's offsets are a subset of the larger one's, so its table is the
    central crop: the same biases for the same pixel offsets. A larger window gets the
    table resized bicubically (as Swin's authors fine-tune at 384 px). Extra rows are kept.

    >>> t = torch.arange(13 * 13 * 2, dtype=torch.float32).reshape(169, 2)
    >>> out, how = resample_rel_pos_table(t, 7 * 7)
    >>> tuple(out.shape), how, out[24].tolist() == t[84].tolist()   # offset (0, 0) stays itself
    ((49, 2), 'relative offsets 13x13 -> 7x7 (central crop)', True)
    >>> t = torch.randn(2, 13, 13)
    >>> out, how = resample_rel_pos_table(t, (2, 3, 3))
    >>> tuple(out.shape), how, torch.equal(out[:, 1, 1], t[:, 6, 6])
    ((2, 3, 3), 'relative offsets 13x13 -> 3x3 (central crop)', True)
    """
    if isinstance(rows, tuple):
        shape = rows
        if not (tensor.dim() == len(shape) == 3 and tensor.shape[0] == shape[0]
                and all(n % 2 for n in (*tensor.shape[1:], *shape[1:]))):
            raise WeightsError(f"cannot resample a relative position table of shape {_fmt(tuple(tensor.shape))} "
                               f"to {_fmt(shape)}: not [heads, 2H-1, 2W-1]")
        return _crop_or_resize(tensor, shape[1:], centred=True)
    split = _table_split(tensor.shape[0], rows) if tensor.dim() == 2 else None
    if split is None:
        raise WeightsError(f"cannot resample a relative position table of shape {_fmt(tuple(tensor.shape))} "
                           f"to {rows} rows: not [(2W-1)^2 + extra, heads]")
    extra, old, new = split
    heads = tensor.shape[1]
    body, tail = tensor[:tensor.shape[0] - extra], tensor[tensor.shape[0] - extra:]
    grid, how = _crop_or_resize(body.reshape(old, old, heads).permute(2, 0, 1), (new, new), centred=True)
    kept = f", {extra} extra rows kept" if extra else ""
    return torch.cat([grid.permute(1, 2, 0).reshape(new * new, heads), tail]), f"{how}{kept}"


def _crop_or_resize(grid: Tensor, size: Sequence[int], *, centred: bool) -> tuple[Tensor, str]:
    """A ``[C, h, w]`` offset table cropped (centred, or from the top left for absolute
    offsets) where it shrinks, else resized bicubically, to ``size``; and how."""
    (h, w), (nh, nw) = grid.shape[1:], tuple(size)
    if nh <= h and nw <= w:
        top, left = ((h - nh) // 2, (w - nw) // 2) if centred else (0, 0)
        out, how = grid[:, top:top + nh, left:left + nw], "central crop" if centred else "crop"
    else:
        out = torch.nn.functional.interpolate(grid.float()[None], size=(nh, nw), mode="bicubic",
                                              align_corners=False)[0].to(grid.dtype)
        how = "bicubic"
    return out.contiguous(), f"relative offsets {h}x{w} -> {nh}x{nw} ({how})"


def is_axis_rel_table(name: str) -> bool:
    """Whether ``name`` is a per-axis relative position table ``[2L-1, dim]`` (BoTNet / HaloNet's
    ``height_rel`` / ``width_rel``, MViTv2's ``rel_pos_h`` / ``rel_pos_w``).

    >>> is_axis_rel_table("stages.3.0.self_attn.pos_embed.height_rel"), is_axis_rel_table("attn.rel_pos_w")
    (True, True)
    """
    return name.rpartition(".")[2] in ("height_rel", "width_rel", "rel_pos_h", "rel_pos_w")


def resample_axis_rel_table(tensor: Tensor, rows: int) -> tuple[Tensor, str]:
    """A ``[2L-1, dim]`` relative position table for another length: the central rows where
    it shrinks (the same offsets), else resized linearly (as SAM's and MViTv2's ``get_rel_pos``).

    >>> t = torch.arange(7.0)[:, None]
    >>> out, how = resample_axis_rel_table(t, 3)
    >>> out[:, 0].tolist(), how
    ([2.0, 3.0, 4.0], 'relative offsets 7 -> 3 (central crop)')
    """
    old = tensor.shape[0]
    if tensor.dim() != 2 or not old % 2 or not rows % 2:
        raise WeightsError(f"cannot resample a relative position table of shape {_fmt(tuple(tensor.shape))} "
                           f"to {rows} rows: not [2L-1, dim]")
    if rows <= old:
        start = (old - rows) // 2
        return tensor[start:start + rows].contiguous(), f"relative offsets {old} -> {rows} (central crop)"
    out = torch.nn.functional.interpolate(tensor.float().t()[None], size=rows, mode="linear", align_corners=False)
    return out[0].t().to(tensor.dtype).contiguous(), f"relative offsets {old} -> {rows} (linear)"


def is_attention_biases(name: str) -> bool:
    """Whether ``name`` is a LeViT-style attention bias table ``[heads, r*r]`` indexed by the
    absolute offsets ``(|dy|, |dx|)`` of an r x r attention grid (timm's LeViT,
    EfficientFormerV2, TinyViT, EfficientViT-M).

    >>> is_attention_biases("stages.0.blocks.0.attn.attention_biases")
    True
    """
    return name.rpartition(".")[2] == "attention_biases"


def resample_attention_biases(tensor: Tensor, columns: int) -> tuple[Tensor, str]:
    """A ``[heads, r*r]`` LeViT-style attention bias table for an ``r' x r'`` grid (a model
    built for another image size): a smaller grid's offsets ``0..r'-1`` are the first ones
    of the larger grid, so its table is the top-left crop (the same biases); a larger grid's
    is resized bicubically (timm's ``resize_rel_pos_bias_table_levit``).

    >>> t = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 16)   # 4x4 offsets
    >>> out, how = resample_attention_biases(t, 4)
    >>> out.tolist(), how
    ([[0.0, 1.0, 4.0, 5.0], [16.0, 17.0, 20.0, 21.0]], 'relative offsets 4x4 -> 2x2 (crop)')
    """
    old, new = math.isqrt(tensor.shape[-1]), math.isqrt(columns)
    if tensor.dim() != 2 or old * old != tensor.shape[1] or new * new != columns:
        raise WeightsError(f"cannot resample attention biases of shape {_fmt(tuple(tensor.shape))} "
                           f"to {columns} offsets: not [heads, r*r]")
    grid, how = _crop_or_resize(tensor.reshape(-1, old, old), (new, new), centred=False)
    return grid.reshape(tensor.shape[0], columns), how


def select_rows(tensor: Tensor, model_tensor: Tensor, class_map: Mapping[int, int], name: str) -> Tensor:
    """The model's classifier tensor with rows ``new <- old`` copied from the file.

    >>> select_rows(torch.arange(3.0), torch.zeros(2), {0: 2, 1: 0}, "fc.bias").tolist()
    [2.0, 0.0]
    """
    out = model_tensor.detach().clone().to(tensor.dtype)
    for new, old in class_map.items():
        if not (0 <= new < out.shape[0] and 0 <= old < tensor.shape[0]):
            raise WeightsError(f"class_map {new}: {old} is out of range for {name} "
                               f"(model has {out.shape[0]} rows, file has {tensor.shape[0]})")
        out[new] = tensor[old]
    return out


def _first_conv(model_shapes: Mapping[str, Shape]) -> str | None:
    return next((k for k, s in model_shapes.items() if k.endswith("weight") and len(s) >= 3), None)


def _classifier_prefix(model_shapes: Mapping[str, Shape]) -> str | None:
    last = [k for k, s in model_shapes.items() if k.endswith("weight") and len(s) >= 2]
    return last[-1].rpartition(".")[0] if last else None


def class_rows_modules(model_shapes: Mapping[str, Shape], heads: Sequence[str]) -> tuple[str, ...]:
    """The modules whose rows are the classes, which ``class_map`` reorders: in each of the model's
    classifier ``heads`` (a distilled model's ``head`` and ``head_dist``, GoogLeNet's auxiliary heads),
    its last module with a weight of 2+ dims (the ``linear`` of LeViT's NormLinear head); the model's
    last such module when no head is known.

    >>> class_rows_modules({"head.weight": (3, 8), "head_dist.weight": (3, 8)}, ("head", "head_dist"))
    ('head', 'head_dist')
    >>> class_rows_modules({"head.bn.weight": (8,), "head.linear.weight": (3, 8)}, ("head",))
    ('head.linear',)
    """
    out = [last[-1].rpartition(".")[0] for h in heads
           if (last := [k for k, s in model_shapes.items()
                        if k.startswith(h + "." if h else "") and k.endswith("weight") and len(s) >= 2])]
    fallback = _classifier_prefix(model_shapes)
    return tuple(dict.fromkeys(out)) if out else ((fallback,) if fallback else ())


# --------------------------------------------------------------------------- load
def _shapes_by_name(state: Mapping[str, Tensor], names: Mapping[str, str]) -> dict[str, Shape]:
    """Each tensor's shape under its name in ``names`` (state dict key -> name)."""
    return {name: tuple(state[key].shape) for key, name in names.items()}


def load_weights(
    model: torch.nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    exclude: Sequence[str] | None = (),
    include: Sequence[str] | None = None,
    rename: Mapping[str, str] | None = None,
    strict: bool = False,
    shape_mismatch: ShapeMismatch | None = "skip",
    ema: bool = False,
    trust: bool | None = False,
    class_map: Mapping[int, int] | None = None,
    arch: str | None = None,
) -> LoadReport:
    """Load the tensors of ``source`` that fit ``model``; return a :class:`LoadReport`.

    ``source`` is a path (any format :func:`read_state_dict` reads), a state dict or a
    checkpoint dict, ``"torchvision"`` (needs ``arch`` or ``model.finetune_arch``) or
    ``"timm:NAME"``. Prefixes (``module.``, ``_orig_mod.``, ``model.``, ``backbone.``, …)
    are aligned automatically. ``exclude``/``include`` are glob patterns on key names,
    ``rename`` is ``{regex: replacement}``. ``shape_mismatch``: ``"skip"`` keeps the
    model's tensor, ``"error"`` raises, ``"adapt"`` adapts the first conv's input
    channels and copies classifier rows by ``class_map={new_index: old_index}``. A ViT
    position embedding for another image size is resampled (:func:`resample_pos_embed`), and
    so is a Swin / MaxViT relative position table for another window size
    (:func:`resample_rel_pos_table`) and a LeViT attention bias table for another grid
    (:func:`resample_attention_biases`), unless ``shape_mismatch="error"``; the report lists them under ``adapted``.

    >>> from finetune import load_weights
    >>> import torch
    >>> src = torch.nn.Linear(4, 10); dst = torch.nn.Linear(4, 3)
    >>> r = load_weights(dst, src.state_dict(), shape_mismatch="adapt", class_map={0: 7, 1: 1, 2: 4})
    >>> [n for n, _ in r.adapted], torch.equal(dst.weight[0], src.weight[7])
    (['weight', 'bias'], True)
    """
    shape_mismatch = shape_mismatch or "skip"  # None from an unset config value
    trust = bool(trust)
    if shape_mismatch not in ("skip", "error", "adapt"):
        raise WeightsError(f"shape_mismatch must be 'skip', 'error' or 'adapt', not {shape_mismatch!r}")
    exclude = list(exclude or ())
    if class_map and shape_mismatch != "adapt":
        raise WeightsError(f"class_map copies classifier rows under shape_mismatch='adapt' only, not "
                           f"{shape_mismatch!r}: pass shape_mismatch='adapt'")
    ck = _read_source(model, source, trust=trust, arch=arch)
    use_ema = bool(ema and ck.ema is not None)
    file_sd = ck.ema if use_ema and ck.ema is not None else ck.weights
    report = LoadReport(source=ck.source, format=ck.description, ema_available=ck.ema is not None,
                        ema_used=use_ema, notes=list(ck.notes), _heads=head_prefixes(model))
    if ema and ck.ema is None:
        report.notes.append("ema=True but the file has no EMA weights: loaded the raw weights")

    # (a module's get_extra_state() entry, '..._extra_state', is no tensor: load_state_dict leaves it alone)
    model_sd = {k: v for k, v in model.state_dict().items() if isinstance(v, Tensor)}
    # the names the report gives: the model's, less wrappers near the top (iFormer's deep `module`s are no wrappers),
    # as callers compare them with model.state_dict(), whichever unwrapping matched the file below
    report_names, model_wrappers = unwrap_names(model_sd)
    # (the conversions below see the model's names unwrapped at any depth; the depth that matches is chosen after)
    model_shapes = _shapes_by_name(model_sd, unwrap_names(model_sd, max_depth=None)[0])

    file_sd, transformers_note = from_transformers(file_sd, model_shapes)
    if transformers_note:
        report.notes.append(transformers_note)
    file_sd, clip_note = from_open_clip(file_sd, model_shapes,
                                        quick_gelu=any(type(m).__name__ == "QuickGELU" for m in model.modules()))
    if clip_note:
        report.notes.append(clip_note)
    file_sd, dinov2_note = from_dinov2(file_sd, model_shapes)
    if dinov2_note:
        report.notes.append(dinov2_note)
    renamed = apply_renames(file_sd, rename)
    renamed, legacy = legacy_densenet_names(renamed, model_shapes)
    if legacy:
        report.notes.append(f"{legacy} tensor names of torchvision's old DenseNet layout ('norm.1' for 'norm1', "
                            "as torchvision renames them)")
    renamed, scales = layer_scale_names(renamed, model_shapes)
    if scales:
        report.notes.append(f"{scales} layer scales under DeiT III's names ('gamma_1' / 'gamma_2' for timm's "
                            "'ls1.gamma' / 'ls2.gamma', as timm renames them)")
    # a `module` that is its parent's only child is unwrapped at any depth on both sides (a file's prefix, such as
    # Lightning's 'model.net.', puts a layer's own `module` deeper there than in the model), or, when that fits
    # fewer tensors (a `module` beside a parameter the file lacks), only near the top, as read_checkpoint does,
    # or also where read_checkpoint took a layer's own `module` near the top for a wrapper (the parameter beside
    # it missing from the file, it was its parent's only child there)
    def unwrapped_to(depth: int | None, as_in_file: bool = False
                     ) -> tuple[int, dict[str, str], dict[str, str], list[PrefixMap | ChildIndexMap]]:
        """(tensors that fit, model names, file names, alignments) with `module`s unwrapped to ``depth``."""
        model_names = unwrap_names(model_sd, max_depth=depth)[0]
        if as_in_file:
            model_names = unwrap_as_in_file(model_names, ck.unwrapped)
            if len(set(model_names.values())) != len(model_names):
                return -1, model_names, {}, []
        shapes = _shapes_by_name(model_sd, model_names)
        file_names = unwrap_names(renamed.values(), max_depth=depth)[0]
        names_now = {k: file_names[n] for k, n in renamed.items()}
        maps = aligned({names_now[k]: tuple(v.shape) for k, v in file_sd.items()}, shapes, children=child_names(model))
        fits = sum(shapes.get(maps[0](names_now[k])) == tuple(v.shape) for k, v in file_sd.items())
        return fits, model_names, names_now, maps

    # (max keeps the first of equals: any depth)
    candidates = [unwrapped_to(None), unwrapped_to(MAX_WRAPPER_DEPTH)]
    if ck.unwrapped:
        candidates.append(unwrapped_to(MAX_WRAPPER_DEPTH, as_in_file=True))
    _, model_clean, renamed, (prefix_map, *equally_good) = max(candidates, key=lambda candidate: candidate[0])
    clean_to_key = {c: k for k, c in model_clean.items()}
    model_shapes = _shapes_by_name(model_sd, model_clean)
    if equally_good and not rename:
        report.notes.append(f"other keys of the file fit as well: {', '.join(str(m) for m in equally_good[:3])} "
                            f"(loaded: {prefix_map}; rename={{regex: replacement}} chooses another)")
    first_conv, classifier = _first_conv(model_shapes), _classifier_prefix(model_shapes)
    class_rows = class_rows_modules(model_shapes, report._heads)
    names = {key: prefix_map(renamed[key]) for key in file_sd}
    hit = set(names.values())
    then = leftover_map({n: tuple(file_sd[k].shape) for k, n in names.items() if n not in model_shapes},
                        {c: s for c, s in model_shapes.items() if c not in hit}, classifier)
    if then is not None:  # (an OpenMMLab classifier's 'head.fc.' after its 'backbone.')
        names = {k: then(n) if n not in model_shapes else n for k, n in names.items()}
    report.mapping = _describe_mapping(ck.unwrapped, model_wrappers, prefix_map, rename, then)

    to_load: dict[str, Tensor] = {}
    done: set[str] = set()

    def excluded(*names: str) -> bool:
        if any(matches(n, exclude) for n in names):
            return True
        return include is not None and not any(matches(n, include) for n in names)

    for key, tensor in file_sd.items():
        name = names[key]
        if excluded(key, renamed[key], name):
            report.excluded.append(name if name in model_shapes else key)
            done.add(name)
            continue
        if name not in model_shapes or name in done:
            report.unexpected.append(key)
            continue
        done.add(name)
        model_shape, file_shape = model_shapes[name], tuple(tensor.shape)
        remap = bool(class_map) and name.rpartition(".")[0] in class_rows
        if file_shape == model_shape and not (remap and file_shape):  # class_map reorders a same-size head too
            to_load[clean_to_key[name]] = tensor
            report.loaded.append(name)
            continue
        fitted = None
        grid = _model_grid(model, clean_to_key[name]) if is_pos_embed(name) else None
        if shape_mismatch != "error" and _resamplable(name, file_shape, model_shape, grid):
            fitted = resample_pos_embed(tensor, model_shape[1], grid)
        elif shape_mismatch != "error" and len(file_shape) == 2 and _resamplable(name, (1, *file_shape), (1, *model_shape)):
            out, how = resample_pos_embed(tensor[None], model_shape[0])  # (an attention pool's: timm's resnet*_clip)
            fitted = out[0], how
        elif shape_mismatch != "error" and is_pos_embed(name) and _map_layout(file_shape, model_shape) is not None:
            fitted = resample_pos_embed_map(tensor, model_shape)
        elif (shape_mismatch != "error" and is_rel_pos_table(name) and len(file_shape) == len(model_shape) == 2
              and file_shape[1] == model_shape[1] and _table_split(file_shape[0], model_shape[0]) is not None):
            fitted = resample_rel_pos_table(tensor, model_shape[0])
        elif (shape_mismatch != "error" and is_rel_pos_table(name) and len(file_shape) == len(model_shape) == 3
              and file_shape[0] == model_shape[0] and all(n % 2 for n in (*file_shape[1:], *model_shape[1:]))):
            fitted = resample_rel_pos_table(tensor, model_shape)
        elif (shape_mismatch != "error" and is_axis_rel_table(name) and len(file_shape) == len(model_shape) == 2
              and file_shape[1] == model_shape[1] and file_shape[0] % 2 and model_shape[0] % 2):
            fitted = resample_axis_rel_table(tensor, model_shape[0])
        elif (shape_mismatch != "error" and is_attention_biases(name) and len(file_shape) == len(model_shape) == 2
              and file_shape[0] == model_shape[0] and math.isqrt(file_shape[1]) ** 2 == file_shape[1]
              and math.isqrt(model_shape[1]) ** 2 == model_shape[1]):
            fitted = resample_attention_biases(tensor, model_shape[1])
        elif shape_mismatch == "adapt":
            fitted = _adapt(name, tensor, model_sd[clean_to_key[name]], first_conv, class_rows, class_map)
        if fitted is not None:
            to_load[clean_to_key[name]] = fitted[0]
            report.adapted.append((name, fitted[1]))
        else:
            report.mismatched.append((name, file_shape, model_shape))

    model_excluded = [c for c in model_shapes if c not in done and excluded(c)]
    report.excluded += model_excluded
    report._excluded_in_model = sum(1 for n in report.excluded if n in model_shapes)
    report.missing = [c for c in model_shapes if c not in done and c not in model_excluded]
    _old_bn_counters(report)
    _count_tied(report, _tied_names(model_sd, model_clean))
    _pooling_note(report)

    shaped = any(model_shapes.values())  # a model of 0-d tensors only (a temperature) has no other evidence
    if not report.adapted and not any(model_shapes[n] for n in report.loaded) and (shaped or not report.loaded):
        # at most num_batches_tracked
        raise NothingMatchedError(_nothing_matched(ck, file_sd, model_shapes, report))
    if model_clean != report_names:
        _rename_model_names(report, {c: report_names[k] for k, c in model_clean.items()})
    seen_names = {*file_sd, *renamed.values(), *(prefix_map(v) for v in renamed.values()), *names.values(), *model_shapes}
    idle = [p for p in (*exclude, *(include or ())) if not any(matches(n, [p]) for n in seen_names)]
    if idle:  # a typo (or a wrapper's 'module.') would otherwise load what was meant to be left out
        report.notes.append(_clip(f"pattern{'s' if len(idle) != 1 else ''} {', '.join(map(repr, idle))} matched no "
                                  f"tensor name (model names look like {next(iter(model_shapes), '')!r})"))
    if shape_mismatch == "error" and report.mismatched:
        n, a, b = report.mismatched[0]
        raise WeightsError(f"{ck.source}: {len(report.mismatched)} tensors have another shape than the model's, "
                           f"e.g. {n}: file {_fmt(a)}, model {_fmt(b)}; exclude them (exclude=[...]; --exclude) or use "
                           f"shape_mismatch='skip'/'adapt' (--shape-mismatch skip/adapt)\n{report}")
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise WeightsError(f"{ck.source}: strict loading failed: {len(report.missing)} missing, "
                           f"{len(report.unexpected)} unexpected, {len(report.mismatched)} mismatched\n{report}")
    to_load = match_dtypes(to_load, model_sd, report, ck.source)
    with torch.no_grad():
        result = model.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:  # pragma: no cover - the mapping only produces model keys
        raise WeightsError(f"internal error: unexpected keys {result.unexpected_keys[:3]}")
    return report


def _rename_model_names(report: LoadReport, to: Mapping[str, str]) -> None:
    """The report's model tensor names (loaded, missing, mismatched, adapted, excluded) renamed by ``to``."""
    report.loaded = [to.get(n, n) for n in report.loaded]
    report.missing = [to.get(n, n) for n in report.missing]
    report.excluded = [to.get(n, n) for n in report.excluded]
    report.mismatched = [(to.get(n, n), a, b) for n, a, b in report.mismatched]
    report.adapted = [(to.get(n, n), how) for n, how in report.adapted]


def _tied_names(model_sd: Mapping[str, Tensor], model_clean: Mapping[str, str]) -> dict[str, list[str]]:
    """For each model tensor that is also registered under other names (tied weights: one
    parameter, several keys in ``state_dict()``), those other clean names."""
    by_memory: dict[tuple[Any, ...], list[str]] = {}
    for key, t in model_sd.items():
        if t.numel() == 0 or t.layout != torch.strided or t.is_quantized or t.device.type == "meta":
            continue
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        by_memory.setdefault(ident, []).append(model_clean[key])
    return {n: [a for a in names if a != n] for names in by_memory.values() if len(names) > 1 for n in names}


def _old_bn_counters(report: LoadReport) -> None:
    """BatchNorm's ``num_batches_tracked`` missing from a file saved before torch 0.4.1 had it (torchvision's
    DenseNet, VGG-BN, Inception files, ...) is not missing weights: the layer keeps its own counter, as torch's
    ``load_state_dict`` does (it is only read with ``momentum=None``)."""
    got = {*report.loaded, *(n for n, _ in report.adapted)}
    old = [c for c in report.missing if c.endswith("num_batches_tracked") and c.rpartition(".")[0] + ".running_mean" in got]
    if old:
        report.missing = [c for c in report.missing if c not in set(old)]
        report.notes.append(f"{len(old)} BatchNorm num_batches_tracked counter{'s' if len(old) != 1 else ''} not in the "
                            "file (saved before torch had them): the model keeps its own, as torch's load_state_dict does")


def _pooling_note(report: LoadReport) -> None:
    """A ViT's final LayerNorm missing because the file pools the other way: ``fc_norm`` after the patch tokens'
    mean (MAE's fine-tuned ViTs, BEiT's) for a model that pools by its class token after ``norm``, or the reverse.

    >>> r = LoadReport(missing=["norm.weight", "norm.bias"], unexpected=["fc_norm.weight", "fc_norm.bias"])
    >>> _pooling_note(r); print(r.notes[0])  # doctest: +ELLIPSIS
    the file pools by average (fc_norm: ... as MAE's fine-tuned ViTs): ...global_pool='avg', fc_norm=True...
    """
    unexpected = {".".join(n.split(".")[-2:]) for n in report.unexpected  # (outside blocks: 'blocks.3.norm' is not it)
                  if not any(part.isdigit() for part in n.split(".")[:-2])}
    if "norm.weight" in report.missing and "fc_norm.weight" in unexpected:
        report.notes.append("the file pools by average (fc_norm: a LayerNorm after the mean of the patch tokens, no "
                            "final norm, as MAE's fine-tuned ViTs): this model pools by its class token after norm, "
                            "which keeps its own values; build it with timm.create_model(..., global_pool='avg', "
                            "fc_norm=True) (finetune train --global-pool avg)")
    elif "fc_norm.weight" in report.missing and "norm.weight" in unexpected:
        report.notes.append("the file pools by the class token (a final norm, no fc_norm): this model pools by "
                            "average with fc_norm, which keeps its own values; build it with global_pool='token' "
                            "(finetune train --global-pool token)")


def _count_tied(report: LoadReport, tied: Mapping[str, list[str]]) -> None:
    """A missing name whose tensor is tied to a loaded one was loaded through it (files written by
    ``safetensors.torch.save_model`` or ``save_pretrained`` keep one name of a tied weight)."""
    got = set(report.loaded) | {n for n, _ in report.adapted}
    via = {c: next(a for a in tied[c] if a in got) for c in report.missing if any(a in got for a in tied.get(c, ()))}
    if via:
        report.missing = [c for c in report.missing if c not in via]
        report.loaded += list(via)
        report.notes.append(_clip(f"{len(via)} tied tensor{'s' if len(via) != 1 else ''} loaded through the "
                                  "tensor shared with: " + ", ".join(f"{c} = {a}" for c, a in via.items())))


def match_dtypes(to_load: Mapping[str, Tensor], model_sd: Mapping[str, Tensor], report: LoadReport,
                 source: str) -> dict[str, Tensor]:
    """The file's tensors made fit for the model's own: values are cast to the model's dtype
    (by ``load_state_dict``'s copy) and each cast is listed in ``report.notes`` (a float16 file
    in a float32 model, a float32 file in a bfloat16 one); quantized tensors (a quantized
    model's file) are dequantized and sparse ones made dense, noted too. A complex tensor for a
    real one is an error: the cast would drop the imaginary part.

    >>> report = LoadReport()
    >>> out = match_dtypes({"w": torch.ones(2, dtype=torch.float16)}, {"w": torch.zeros(2)}, report, "f.pt")
    >>> print(report.notes[0])
    1 tensor cast from float16 to the model's float32: w
    """
    out: dict[str, Tensor] = {}
    changes: dict[str, list[str]] = {}
    for key, tensor in to_load.items():
        target = model_sd[key]
        if tensor.is_quantized and not target.is_quantized:
            changes.setdefault(f"dequantized from {_dtype(tensor)}", []).append(key)
            tensor = tensor.dequantize()
        if tensor.layout != torch.strided and target.layout == torch.strided:
            changes.setdefault(f"made dense from {str(tensor.layout).removeprefix('torch.')}", []).append(key)
            tensor = tensor.to_dense()
        if tensor.is_complex() and not target.is_complex():
            raise WeightsError(f"{source}: '{key}' is {_dtype(tensor)} in the file but {_dtype(target)} in the "
                               "model: loading it would drop the imaginary part; exclude it (exclude=[...]; --exclude) "
                               "or load it into a complex model")
        if tensor.dtype != target.dtype and not target.is_quantized:
            changes.setdefault(f"cast from {_dtype(tensor)} to the model's {_dtype(target)}", []).append(key)
        out[key] = tensor
    for how, keys in changes.items():
        report.notes.append(_clip(f"{len(keys)} tensor{'s' if len(keys) != 1 else ''} {how}: {', '.join(keys)}"))
    return out


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _read_source(model: torch.nn.Module, source: Any, *, trust: bool, arch: str | None) -> Checkpoint:
    if sources.is_named(source):
        arch = arch or getattr(model, "finetune_arch", None) or getattr(model, "model_name", None)
        if isinstance(arch, str) and arch.startswith("timm:") and source == "torchvision":
            raise WeightsError(f"'torchvision' weights do not exist for timm model {arch}: "
                               f"use source={arch!r} (--pretrained {arch})")
        path = sources.resolve(source, arch)
        ck = read_checkpoint(path, trust=trust)
        note = sources.snapshot_note(path)
        ck.notes += [note] if note else []
        return ck
    return read_checkpoint(source, trust=trust)


# torchvision's DenseNet files (densenet121-a639ec97.pth, ...) predate module names without dots: their
# 'denselayer1.norm.1.weight' is today's 'denselayer1.norm1.weight' (torchvision's densenet._load_state_dict)
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")


def legacy_densenet_names(renamed: Mapping[str, str], model_shapes: Mapping[str, Shape]) -> tuple[dict[str, str], int]:
    """``renamed`` with torchvision's old DenseNet names (``denselayer1.norm.1.weight``) written as
    today's (``denselayer1.norm1.weight``), and how many were, when the model has no old-style names.

    >>> legacy_densenet_names({"k": "features.denseblock1.denselayer1.conv.2.weight"}, {"x": (1,)})
    ({'k': 'features.denseblock1.denselayer1.conv2.weight'}, 1)
    """
    if any(_DENSENET_LEGACY.match(n) for n in model_shapes):
        return dict(renamed), 0
    out = {k: _DENSENET_LEGACY.sub(r"\1\2", v) for k, v in renamed.items()}
    return out, sum(1 for k in out if out[k] != renamed[k])


# DeiT III's files (facebookresearch/deit models_v2.py) keep a block's layer scale as 'blocks.N.gamma_1';
# timm's ViTs call it 'blocks.N.ls1.gamma' (timm's checkpoint_filter_fn renames it)
_LAYER_SCALE = re.compile(r"^(.*\.)gamma_([12])$")


def layer_scale_names(renamed: Mapping[str, str], model_shapes: Mapping[str, Shape]) -> tuple[dict[str, str], int]:
    """``renamed`` with a block's layer scale ``gamma_1`` / ``gamma_2`` written as timm's ViT names it,
    ``ls1.gamma`` / ``ls2.gamma``, when the model has those names and no ``gamma_1`` of its own (timm's BEiT
    and CaiT keep ``gamma_1``), and how many were renamed.

    >>> layer_scale_names({"k": "blocks.0.gamma_2"}, {"blocks.0.ls1.gamma": (4,), "blocks.0.ls2.gamma": (4,)})
    ({'k': 'blocks.0.ls2.gamma'}, 1)
    >>> layer_scale_names({"k": "blocks.0.gamma_2"}, {"blocks.0.gamma_2": (4,)})
    ({'k': 'blocks.0.gamma_2'}, 0)
    """
    if not any(n.endswith(".ls1.gamma") for n in model_shapes) or any(_LAYER_SCALE.match(n) for n in model_shapes):
        return dict(renamed), 0
    out = {k: _LAYER_SCALE.sub(r"\1ls\2.gamma", v) for k, v in renamed.items()}
    return out, sum(1 for k in out if out[k] != renamed[k])


def _resamplable(name: str, file_shape: Shape, model_shape: Shape, grid: tuple[int, int] | None = None) -> bool:
    return (is_pos_embed(name) and len(file_shape) == len(model_shape) == 3 and file_shape[0] == model_shape[0] == 1
            and file_shape[2] == model_shape[2] and _grid_split(file_shape[1], model_shape[1], grid) is not None)


def _model_grid(model: torch.nn.Module, key: str) -> tuple[int, int] | None:
    """The patch grid ``(h, w)`` of the ViT that holds the position embedding ``key`` (a key of
    ``model.state_dict()``): timm's ``patch_embed.grid_size`` beside it; None when there is none."""
    try:
        owner = model.get_submodule(key.rpartition(".")[0])
    except AttributeError:
        return None
    grid = getattr(getattr(owner, "patch_embed", None), "grid_size", None)
    if isinstance(grid, (tuple, list)) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid):
        return int(grid[0]), int(grid[1])
    return None


def _adapt(name: str, tensor: Tensor, model_tensor: Tensor, first_conv: str | None, classifiers: Sequence[str],
           class_map: Mapping[int, int] | None) -> tuple[Tensor, str] | None:
    fs, ms = tuple(tensor.shape), tuple(model_tensor.shape)
    if len(fs) != len(ms):
        return None
    differ = [i for i in range(len(fs)) if fs[i] != ms[i]]
    if name == first_conv and differ == [1]:
        how = "summed" if ms[1] == 1 else "repeated and rescaled"
        return adapt_input_channels(tensor, ms[1]), f"input channels {fs[1]} -> {ms[1]}, {how}"
    if class_map and name.rpartition(".")[0] in classifiers and differ in ([0], []):
        return select_rows(tensor, model_tensor, class_map, name), f"{len(class_map)} of {fs[0]} rows by class_map"
    return None


def _describe_mapping(file_wrappers: list[str], model_wrappers: list[str], prefix_map: PrefixMap | ChildIndexMap,
                      rename: Mapping[str, str] | None, then: PrefixMap | None = None) -> str:
    def listed(wrappers: list[str], limit: int = 3) -> str:  # (timm's iFormer: a `module` in every block)
        shown = ", ".join(f"'{w}'" for w in wrappers[:limit])
        return shown if len(wrappers) <= limit else f"{shown}, … ({len(wrappers)} in all)"

    parts = []
    if file_wrappers:
        parts.append("file wrappers removed: " + listed(file_wrappers))
    if model_wrappers:
        parts.append("model wrappers: " + listed(model_wrappers))
    if rename:
        parts.append("renamed: " + ", ".join(f"{k!r} -> {v!r}" for k, v in rename.items()))
    parts.append(f"prefix: {prefix_map}" + (f", then {then} for the keys it leaves out" if then is not None else ""))
    return "; ".join(parts)


def _nothing_matched(ck: Checkpoint, file_sd: Mapping[str, Tensor], model_shapes: Mapping[str, Shape],
                     report: LoadReport) -> str:
    if not file_sd:
        return f"{ck.source}: the file holds no tensors"
    if report.mismatched:
        n, a, b = report.mismatched[0]
        return (f"{ck.source}: 0 tensors loaded: all {len(report.mismatched)} matching names have other shapes "
                f"(e.g. {n}: file {_fmt(a)}, model {_fmt(b)}): is it the same architecture?")
    if report.excluded and not report.unexpected:
        return f"{ck.source}: 0 tensors loaded: the patterns excluded all {len(report.excluded)} of them"
    model_keys = list(model_shapes)
    pairs = []
    for k in list(file_sd)[:200]:
        close = difflib.get_close_matches(k, model_keys, n=1, cutoff=0.4)
        if close:
            pairs.append((difflib.SequenceMatcher(None, k, close[0]).ratio(), k, close[0]))
    shown = "; ".join(f"'{a}' ~ '{b}'" for _, a, b in sorted(pairs, reverse=True)[:5]) or "none similar"
    return (f"{ck.source}: 0 of {len(file_sd)} tensors match the model's {len(model_keys)} "
            f"(wrong architecture?); closest file ~ model keys: {shown}; "
            "if only the names differ: `finetune convert SRC DST --strip-prefix PREFIX` takes an outer prefix off, "
            "load_weights(model, SRC, rename={regex: replacement}) renames them in Python")

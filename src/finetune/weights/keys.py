"""Key names: wrapper prefixes (DDP, DataParallel, torch.compile), glob patterns, renames.

Pure functions on strings; no torch needed.

>>> unwrap_names(["module._orig_mod.fc.weight", "module._orig_mod.fc.bias"])[0]
{'module._orig_mod.fc.weight': 'fc.weight', 'module._orig_mod.fc.bias': 'fc.bias'}
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence

COMPILE = "_orig_mod"  # torch.compile's OptimizedModule attribute
PARALLEL = "module"  # DataParallel / DistributedDataParallel / AveragedModel attribute
# where a `module` component can be a wrapper's: at the top (DDP) or in a top-level child wrapped by DataParallel
# (pytorch/examples' `model.features = DataParallel(model.features)`), under a Lightning / EMA attribute; deeper down
# it is a layer's own name (timm's iFormer: `stages.0.blocks.0.mixer.module.0.c.weight`), kept as it is
MAX_WRAPPER_DEPTH = 2


def unwrap_names(names: Iterable[str], max_depth: int | None = MAX_WRAPPER_DEPTH) -> tuple[dict[str, str], list[str]]:
    """Map each key to its name without wrapper components; also say which were removed.

    ``_orig_mod`` components are always removed. A ``module`` component is removed
    where it is the only child of its parent (that is what DataParallel/DDP produce,
    at the top like ``module.fc.weight`` or mid-key like ``features.module.0.weight``),
    no deeper than ``max_depth`` components from the top (None: at any depth, as matching
    a file to a model needs: a prefix such as Lightning's ``model.net.`` shifts the depth in the file only).

    >>> unwrap_names(["features.module.0.weight", "classifier.1.weight"])
    ({'features.module.0.weight': 'features.0.weight', 'classifier.1.weight': 'classifier.1.weight'}, ['features.module.'])
    >>> unwrap_names(["module.weight", "bias"])[0]["module.weight"]
    'module.weight'
    """
    names = list(names)
    parts = {n: n.split(".") for n in names}
    removed: list[str] = []
    if any(COMPILE in p[:-1] for p in parts.values()):
        parts = {n: [c for i, c in enumerate(p) if c != COMPILE or i == len(p) - 1] for n, p in parts.items()}
        removed.append(f"{COMPILE}.")
    for _ in range(8):  # nested wrappers: strip one layer per pass (every parent with such a child at once, so
        prefixes = _only_child_parallel(list(parts.values()), max_depth)  # the result does not depend on the keys' order)
        if not prefixes:
            break
        new = {n: _strip_parallel(p, prefixes) for n, p in parts.items()}
        if len({".".join(p) for p in new.values()}) != len(new):
            break
        parts = new
        removed += [".".join([*prefix, PARALLEL]) + "." for prefix in prefixes]
    return {n: ".".join(p) for n, p in parts.items()}, removed


def unwrap_as_in_file(names: Mapping[str, str], removed: Sequence[str]) -> dict[str, str]:
    """``names`` (key -> name) without the ``module`` components a file's reader removed (``removed``,
    as :func:`unwrap_names` says them), also where the model's ``module`` has siblings: a layer's own
    ``module`` beside a parameter the file lacks was its parent's only child in the file. A removed
    prefix under a file's own prefix (``model.block.module.``) matches the model's ``block.module``;
    the top-level ``module.`` (DDP) removes nothing here.

    >>> unwrap_as_in_file({"block.module.weight": "block.module.weight", "block.gamma": "block.gamma"},
    ...                   ["model.block.module."])
    {'block.module.weight': 'block.weight', 'block.gamma': 'block.gamma'}
    """
    parents = [tuple(r.split(".")[:-2]) for r in removed if r.endswith(f".{PARALLEL}.")]
    out = {}
    for key, name in names.items():
        p = name.split(".")
        out[key] = ".".join(c for i, c in enumerate(p) if not (
            c == PARALLEL and 0 < i < len(p) - 1 and any(q[len(q) - i:] == tuple(p[:i]) for q in parents if len(q) >= i)))
    return out


def _only_child_parallel(parts: Sequence[list[str]], max_depth: int | None = MAX_WRAPPER_DEPTH) -> list[list[str]]:
    """The parent paths whose only child is ``module``, outermost first, leaving out those inside
    another's ``module`` (the next pass finds them); sorted, so that the same keys in any order
    give the same paths (timm's iFormer has a ``Residual.module`` in every block: more than one).

    >>> _only_child_parallel([["a", "module", "b", "module", "w"], ["c", "module", "w"], ["d", "w"]])
    [['a'], ['c']]
    >>> _only_child_parallel([["stages", "0", "blocks", "0", "mixer", "module", "w"], ["head", "w"]])
    []
    """
    children: dict[tuple[str, ...], set[tuple[str, bool]]] = {}
    for p in parts:
        for i in range(len(p)):
            children.setdefault(tuple(p[:i]), set()).add((p[i], i == len(p) - 1))
    candidates = sorted(k for k, v in children.items() if v == {(PARALLEL, False)}
                        and (max_depth is None or len(k) <= max_depth))
    return [list(k) for k in candidates
            if not any(k[:len(o) + 1] == (*o, PARALLEL) for o in candidates if len(o) < len(k))]


def _strip_parallel(p: list[str], prefixes: Sequence[list[str]]) -> list[str]:
    """``p`` without the ``module`` component after the first of ``prefixes`` it lies under."""
    for prefix in prefixes:
        depth = len(prefix)
        if p[:depth] == prefix and len(p) > depth + 1 and p[depth] == PARALLEL:
            return p[:depth] + p[depth + 1:]
    return p


def matches(name: str, patterns: Sequence[str]) -> bool:
    """True when a glob pattern matches the key, or names a module the key lies in.

    >>> matches("fc.weight", ["fc.*"]), matches("fc.bias", ["fc"]), matches("layer1.fc2.w", ["fc"])
    (True, True, False)
    >>> matches("head.fc.weight", ["*fc*"])
    True
    """
    for pat in patterns:
        if fnmatch.fnmatchcase(name, pat) or name.startswith(pat.rstrip(".") + "."):
            return True
    return False


def apply_renames(names: Iterable[str], rename: Mapping[str, str] | None) -> dict[str, str]:
    """``{regex: replacement}`` applied in order to every key (``re.sub``).

    >>> apply_renames(["head.weight"], {r"^head\\.": "fc."})
    {'head.weight': 'fc.weight'}
    """
    out = {}
    compiled = [(re.compile(k), v) for k, v in (rename or {}).items()]
    for n in names:
        new = n
        for rx, repl in compiled:
            new = rx.sub(repl, new)
        out[n] = new
    return out


def prefixes(names: Iterable[str], depth: int = 2) -> set[str]:
    """Module prefixes (``'a.'``, ``'a.b.'``) of the keys, up to ``depth`` components.

    >>> sorted(prefixes(["a.b.c", "a.d"]))
    ['a.', 'a.b.']
    """
    out = set()
    for n in names:
        p = n.split(".")
        for i in range(1, min(depth, len(p) - 1) + 1):
            out.add(".".join(p[:i]) + ".")
    return out

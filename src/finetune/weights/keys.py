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


def unwrap_names(names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Map each key to its name without wrapper components; also say which were removed.

    ``_orig_mod`` components are always removed. A ``module`` component is removed
    where it is the only child of its parent (that is what DataParallel/DDP produce,
    at the top like ``module.fc.weight`` or mid-key like ``features.module.0.weight``).

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
    for _ in range(8):  # nested wrappers: strip one layer per pass
        prefix = _only_child_parallel(list(parts.values()))
        if prefix is None:
            break
        depth = len(prefix)
        new = {n: (p[:depth] + p[depth + 1:] if p[:depth] == prefix and len(p) > depth + 1 else p)
               for n, p in parts.items()}
        if len({".".join(p) for p in new.values()}) != len(new):
            break
        parts = new
        removed.append(".".join([*prefix, PARALLEL]) + ".")
    return {n: ".".join(p) for n, p in parts.items()}, removed


def _only_child_parallel(parts: Sequence[list[str]]) -> list[str] | None:
    """The shortest parent path whose only child is ``module`` (None when there is none)."""
    children: dict[tuple[str, ...], set[tuple[str, bool]]] = {}
    for p in parts:
        for i in range(len(p)):
            children.setdefault(tuple(p[:i]), set()).add((p[i], i == len(p) - 1))
    candidates = [k for k, v in children.items() if v == {(PARALLEL, False)}]
    if not candidates:
        return None
    return list(min(candidates, key=len))


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

"""Say what trains, and check it: freeze by pattern, BatchNorm policy, parameter groups, audit.

The usual silent bugs of fine-tuning are a trainable parameter left out of the
optimizer, frozen parameters still decayed by AdamW, BatchNorm statistics
drifting in a "frozen" backbone, and an optimizer that no longer matches after
unfreezing. This module makes the trainable set explicit and checked.

Patterns are :mod:`fnmatch` globs matched against parameter names *and* module
names (``layer4``, ``layer4.*``, ``*.bn*``, ``fc``); a module match covers all
its parameters. Wrapped models (DDP, DataParallel, ``torch.compile``) are
unwrapped first, so names never carry ``module.`` or ``_orig_mod.``, and those
prefixes are stripped from patterns too. A module of your own that holds the network
(a LightningModule's ``self.model``, ``nn.Sequential(Normalize(), net)``) keeps its
names (``model.layer4.0.conv1.weight``), and a pattern that matches nothing as
written is tried under the network it holds (``layer4`` -> ``model.layer4``); a
module holding two networks (``backbone`` and ``head``, a model and its EMA copy)
needs the full names. Freezing and unfreezing through a
``DistributedDataParallel`` wrapper are refused (DDP fixes what it averages when it
is built): change the model inside, then wrap it again.

BatchNorm policy (:func:`set_bn_policy`) applies to BatchNorm layers in *frozen
parts* — layers that a freeze call covered, or whose parameters are all frozen:

- ``frozen`` (default): running statistics and affine parameters stay fixed,
  even while ``model.train()`` is active;
- ``eval``: running statistics stay fixed, affine parameters train;
- ``train``: BatchNorm is left alone (statistics update in ``train()`` mode).

In frozen parts under ``frozen`` and ``eval``, dropout and drop-path layers
(``nn.Dropout*``, torchvision's ``StochasticDepth``, timm's ``DropPath`` /
``DropBlock2d``) are off as well: a frozen backbone computes the same features in
``train()`` as in ``eval()``, so a live linear probe sees what a cached one does.
A dropout layer is in a frozen part when every parameter registered before it
is frozen (its input comes from frozen layers only; one registered before any
parameter, such as an input dropout, goes with the layer after it): with a linear probe that is
every dropout, including one right before the head, so training the head on
cached features is the same computation.

Layer types are never swapped, so the parameter set, the optimizer and
checkpoints keep lining up. Fixed statistics are enforced by a forward pre-hook
on each affected BatchNorm layer that puts it in eval mode before its forward
whenever the model is in train mode (automatic), and by :func:`bn_train_mode`,
which a trainer calls right after ``model.train()`` so that ``bn.training``
reads right even before the first forward (and a compiled graph sees a steady
value).

Frozen parts cost no backward when they are a prefix of the forward path: with
no parameter and no input requiring grad, autograd records no graph for them.
A frozen block in the middle of the network still passes gradients through to
the trainable blocks before it; only its weight gradients are skipped.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
>>> _ = net(torch.zeros(1, 3, 5, 5))
>>> freeze(net, "0", "1")
['0.weight', '0.bias', '1.weight', '1.bias']
>>> [g["name"] for g in param_groups(net, lr=0.1, weight_decay=1e-4)]
['default', 'default/no_decay']
>>> _ = net.train(); _ = net(torch.zeros(1, 3, 5, 5))
>>> net[1].training  # BatchNorm of the frozen part stays in eval mode
False
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from finetune.errors import ConfigError
from finetune.models import check_model

BN_POLICIES = ("frozen", "eval", "train")
_WRAPPER_NAMES = ("module", "_orig_mod")
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    _BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
# attributes this module keeps on the unwrapped root and on BatchNorm layers
_POLICY_ATTR = "_finetune_bn_policy"  # root: "frozen" | "eval" | "train"
_FROZEN_PART_ATTR = "_finetune_bn_frozen_part"  # BN: bool, set by freeze calls
_MODE_ATTR = "_finetune_bn_mode"  # BN: effective mode, "frozen" | "eval" | "train"
_HOOK_ATTR = "_finetune_bn_hook"  # BN: handle of the forward pre-hook


# --------------------------------------------------------------------------- names and patterns
def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / ``torch.compile`` wrappers (the model itself if none).

    A wrapper is a module with no parameters of its own and a single child
    named ``module`` or ``_orig_mod``.

    >>> inner = torch.nn.Linear(2, 2)
    >>> unwrap(torch.nn.DataParallel(inner)) is inner
    True
    >>> unwrap("resnet18")
    Traceback (most recent call last):
    finetune.errors.ConfigError: expected a model (a torch.nn.Module), got str 'resnet18': build it first, e.g. finetune.create_model('resnet18', num_classes=10)
    """
    check_model(model)  # (every function of a model here starts with this: a name or a path is no model)
    while True:
        children = list(model.named_children())
        own = next(model.parameters(recurse=False), None)
        if len(children) == 1 and children[0][0] in _WRAPPER_NAMES and own is None:
            model = children[0][1]
        else:
            return model


def _as_given_or_stripped(pattern: str, matches: Callable[[str], bool]) -> str:
    """``pattern`` itself when it matches, else with one wrapper prefix taken off after another
    (``module.layer4`` -> ``layer4``) until it does: a model's own child may be called ``module``.
    The fully stripped pattern when nothing matches."""
    while not matches(pattern):
        for prefix in _WRAPPER_NAMES:
            if pattern.startswith(prefix + "."):
                pattern = pattern[len(prefix) + 1 :]
                break
        else:
            return pattern
    return pattern


def _network_chain(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """``root`` and, below it, the network that a user's holder module wraps: while a module has no
    parameter of its own and exactly one child holds parameters (a LightningModule's ``self.model``,
    ``nn.Sequential(Normalize(), net)``'s ``1``, a compiled net's ``_orig_mod``), that child; as
    ``(name, module)`` pairs, outermost first (``("", root)``, ``("model", net)``, ...).

    >>> [n for n, _ in _network_chain(torch.nn.Sequential(torch.nn.Identity(), torch.nn.Sequential(torch.nn.Linear(1, 1))))]
    ['', '1', '1.0']
    """
    chain = [("", root)]
    while next(chain[-1][1].parameters(recurse=False), None) is None:
        name, module = chain[-1]
        holding = [(n, c) for n, c in module.named_children() if next(c.parameters(), None) is not None]
        if len(holding) != 1:
            break
        chain.append((f"{name}.{holding[0][0]}" if name else holding[0][0], holding[0][1]))
    return chain


def _in_network(pattern: str, root: nn.Module, matches: Callable[[str], bool]) -> str:
    """``pattern`` as written when it matches (or when nothing else does), else the pattern under the
    outermost module of the network ``root`` holds (``layer4`` -> ``model.layer4`` for a module
    whose ``self.model`` is the ResNet) where that matches. Only through a single network: a holder
    of two (``backbone`` and ``head``, a model and its EMA copy) leaves the choice to the user."""
    if matches(pattern):
        return pattern
    for name, _ in _network_chain(root)[1:]:
        if matches(f"{name}.{pattern}"):
            return f"{name}.{pattern}"
    return pattern


def _timm_part(root: nn.Module, method: str) -> tuple[str, nn.Module]:
    """The innermost module of :func:`_network_chain` that has timm's ``method`` (``group_matcher``,
    ``no_weight_decay``, ``get_classifier``) with its name: a timm model held in a module of the
    user's keeps its layer ids, its no-weight-decay names and its head dropout; ``("", root)`` if none."""
    return next(((n, m) for n, m in reversed(_network_chain(root)) if callable(getattr(m, method, None))), ("", root))


def _named_params(root: nn.Module) -> dict[str, nn.Parameter]:
    return dict(root.named_parameters())


def _owner(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def _under(name: str, modules: set[str]) -> bool:
    """Whether module ``name`` is one of ``modules`` or inside one of them."""
    parts = name.split(".") if name else []
    return any(".".join(parts[:i]) in modules for i in range(1, len(parts) + 1))


@dataclass(frozen=True)
class _Selection:
    params: tuple[str, ...]  # parameter names, registration order
    modules: frozenset[str]  # module names matched by a pattern (their children are covered too)

    def covers_module(self, name: str) -> bool:
        return _under(name, set(self.modules))


def _unmatched(pattern: str, root: nn.Module, what: str = "parameter or module") -> ConfigError:
    modules = [n for n, _ in root.named_modules() if n]
    candidates = modules + list(_named_params(root))
    plain = pattern.replace("*", "").replace("?", "").strip(".")
    key = plain or pattern
    scored = sorted(
        (-difflib.SequenceMatcher(None, key, c).ratio(), i, c) for i, c in enumerate(candidates)
    )  # best first; ties in registration order
    tail = [c for c in candidates if plain and c.endswith("." + plain)]  # 'fc' -> 'head.fc' (timm's heads)
    close = list(dict.fromkeys(tail + [c for score, _, c in scored if -score >= 0.5]))[:5]
    blocks = [n for n, _ in root.named_children()]
    hint = f"did you mean: {', '.join(close)}? " if close else ""
    return ConfigError(
        f"pattern {pattern!r} matches no {what} name of {type(root).__name__}; {hint}"
        f"top-level blocks: {', '.join(blocks) or '(none)'} "
        "(patterns are globs over names like 'layer4', 'layer4.*', '*.bn*', 'fc')"
    )


def _unparametrized(name: str) -> str:
    """``name`` as the user writes it for a parametrized tensor (``weight_norm``, ``spectral_norm``,
    ``register_parametrization``): ``conv.parametrizations.weight.original0`` -> ``conv.weight.original0``,
    ``conv.parametrizations.weight`` -> ``conv.weight`` (what ``model.conv.weight`` computes).

    >>> _unparametrized("conv.parametrizations.weight.original0"), _unparametrized("conv.parametrizations")
    ('conv.weight.original0', 'conv.parametrizations')
    """
    return re.sub(r"(^|\.)parametrizations\.(?=[^.])", r"\1", name)


def _select(root: nn.Module, patterns: Sequence[str]) -> _Selection:
    """Parameters and modules that ``patterns`` name; raise ConfigError for a pattern that matches nothing.

    A tied parameter or a module registered under two names answers to each of its names;
    the selection holds its first name (the one ``named_parameters()`` gives). A parametrized
    tensor also answers to its name without ``parametrizations.`` (``conv.weight`` for
    ``conv.parametrizations.weight.original0`` and ``original1``).
    """
    params = _named_params(root)
    every_param = list(root.named_parameters(remove_duplicate=False))
    every_module = [(n, m) for n, m in root.named_modules(remove_duplicate=False) if n]
    every_param += [(a, p) for n, p in every_param if (a := _unparametrized(n)) != n]
    every_module += [(a, m) for n, m in every_module if (a := _unparametrized(n)) != n]
    first_name = {id(m): n for n, m in root.named_modules()}
    matched_modules: set[str] = set()
    matched_ids: set[int] = set()
    for raw in patterns:
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"a freeze pattern must be a non-empty string, got {raw!r}")
        def hits(pattern: str) -> bool:
            return any(fnmatch.fnmatchcase(n, pattern) for n in [*(n for n, _ in every_module), *(n for n, _ in every_param)])

        pattern = _in_network(_as_given_or_stripped(raw, hits), root, hits)
        mods = {n for n, _ in every_module if fnmatch.fnmatchcase(n, pattern)}
        pars = {id(p) for n, p in every_param if fnmatch.fnmatchcase(n, pattern)}
        if not mods and not pars:
            raise _unmatched(pattern, root)
        matched_modules |= mods
        matched_ids |= pars
    matched_ids |= {id(p) for n, p in every_param if _under(_owner(n), matched_modules)}
    matched_modules |= {first_name[id(m)] for n, m in every_module if n in matched_modules}
    selected = tuple(n for n, p in params.items() if id(p) in matched_ids)
    return _Selection(selected, frozenset(matched_modules))


def _select_all(root: nn.Module) -> _Selection:
    return _Selection(tuple(_named_params(root)), frozenset(n for n, _ in root.named_children()))


# --------------------------------------------------------------------------- freezing
def _is_bn(module: nn.Module) -> bool:
    """BatchNorm, or an InstanceNorm with running statistics (which it updates in train mode and uses in eval mode)."""
    return isinstance(module, _BatchNorm) or (
        isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats
    )


def _bn_layers(root: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in root.named_modules() if _is_bn(m)]


_STOCHASTIC_NAMES = frozenset({"DropPath", "StochasticDepth", "DropBlock2d"})  # timm, torchvision


def _stochastic_layers(root: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """Dropout-like layers, each with whether it sits in a frozen part: no trainable
    parameter is registered before it (registration order stands for the forward order,
    as in :func:`freeze_until`), so its input comes from frozen layers only. BatchNorm
    affine parameters that train under the ``eval`` policy do not count."""
    out: list[tuple[str, nn.Module, bool]] = []
    pending: list[tuple[str, nn.Module]] = []  # before any parameter (input dropout): as the layer it feeds
    trainable_before, seen = False, False
    for name, module in root.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) or type(module).__name__ in _STOCHASTIC_NAMES:
            if seen:
                out.append((name, module, not trainable_before))
            else:
                pending.append((name, module))
        own = list(module.parameters(recurse=False))
        if own:
            trains = not getattr(module, _FROZEN_PART_ATTR, False) and any(p.requires_grad for p in own)
            if not seen:
                out.extend((n, m, not trains) for n, m in pending)
                pending, seen = [], True
            trainable_before = trainable_before or trains
    return out + [(n, m, False) for n, m in pending]


def _after_frozen_layers(root: nn.Module) -> set[int]:
    """``id()`` of the modules without parameters of their own registered after some parameters, all
    of them frozen (registration order stands for the forward order, as in :func:`freeze_until`):
    a BatchNorm without affine parameters in a backbone frozen by hand. A module's own parameters beside
    children that hold some (a CLIP's ``logit_scale``, a constant on the model itself) do not count: where
    they sit among those children is not known (``modules()`` gives them before all of them)."""
    out: set[int] = set()
    seen = trainable_before = False
    for module in root.modules():
        own = list(module.parameters(recurse=False))
        if own and any(True for child in module.children() for _ in child.parameters()):
            own = []
        if own:
            seen = True
            trainable_before = trainable_before or any(p.requires_grad for p in own)
        elif seen and not trainable_before:
            out.add(id(module))
    return out


def _power_iterations(root: nn.Module) -> list[tuple[nn.Module, bool]]:
    """``spectral_norm`` parametrizations (their power iteration updates the ``_u`` / ``_v`` buffers in
    every train-mode forward, which changes the normalised weight), each with whether the weight it
    normalises is frozen: then, as a frozen part's BatchNorm statistics, the buffers must not move."""
    from torch.nn.utils.parametrize import ParametrizationList

    out: list[tuple[nn.Module, bool]] = []
    for module in root.modules():
        if isinstance(module, ParametrizationList):
            original = list(module.parameters(recurse=False))
            frozen = bool(original) and not any(p.requires_grad for p in original)
            out += [(m, frozen) for m in module if type(m).__name__ == "_SpectralNorm"]
    return out


_DROP_RATE_ATTR = "_finetune_drop_rate"  # a timm model's own drop_rate, while its head's input is frozen


def _set_head_dropout(root: nn.Module, policy: str) -> None:
    """timm models that drop out before the classifier with ``F.dropout(x, self.drop_rate)`` (ResNet,
    EfficientNet, MobileNetV3 ...) have no dropout layer to switch off: while every parameter
    registered before the classifier is frozen (a linear probe), their ``drop_rate`` is 0, as a
    dropout layer there would be off; it comes back when a part before the head is unfrozen."""
    root = _timm_part(root, "get_classifier")[1]
    get_classifier = getattr(root, "get_classifier", None)
    rate = getattr(root, "drop_rate", None)
    if not callable(get_classifier) or isinstance(rate, bool) or not isinstance(rate, (int, float)):
        return
    try:
        head = get_classifier()
    except Exception:  # noqa: BLE001 - not timm's API after all
        return
    if not isinstance(head, nn.Module):
        return
    head_params = {id(p) for p in head.parameters()}
    frozen_input = True
    for module in root.modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in head_params]
        if own and not getattr(module, _FROZEN_PART_ATTR, False) and any(p.requires_grad for p in own):
            frozen_input = False
            break
    stashed = getattr(root, _DROP_RATE_ATTR, None)
    if frozen_input and policy != "train" and rate:
        if stashed is None:
            setattr(root, _DROP_RATE_ATTR, rate)
        root.drop_rate = 0.0
    elif not (frozen_input and policy != "train") and stashed is not None:
        root.drop_rate = stashed
        delattr(root, _DROP_RATE_ATTR)


def _bn_covered(name: str, bn: nn.Module, params: set[str], modules: Callable[[str], bool]) -> bool:
    """A BN layer is covered by a selection when all its parameters are selected (or, with none, its module)."""
    own = [f"{name}.{p}" if name else p for p, _ in bn.named_parameters(recurse=False)]
    return all(p in params for p in own) if own else modules(name)


def _set_requires_grad(params: Mapping[str, nn.Parameter], names: Iterable[str], flag: bool) -> None:
    for n in names:
        p = params[n]
        p.requires_grad_(flag)
        if not flag:
            p.grad = None  # a stale grad would let momentum / weight decay keep moving it


def _mark_bn(root: nn.Module, covered: Callable[[str, nn.Module], bool], frozen_part: bool) -> None:
    for name, bn in _bn_layers(root):
        if covered(name, bn):
            setattr(bn, _FROZEN_PART_ATTR, frozen_part)


def freeze(model: nn.Module, *patterns: str) -> list[str]:
    """Freeze the parameters that ``patterns`` name (all parameters if none); return their names.

    Frozen parameters get ``requires_grad=False`` and their ``.grad`` is dropped.
    BatchNorm layers that the patterns cover follow the model's BatchNorm
    policy (default ``frozen``: statistics and affine parameters fixed even in
    ``train()`` mode). Under the ``eval`` policy their affine parameters stay
    trainable and are not in the returned list. A pattern that matches no
    parameter or module name raises :class:`~finetune.errors.ConfigError`
    listing close names.

    >>> from finetune import freeze
    >>> import torchvision
    >>> m = torchvision.models.resnet18(num_classes=3)
    >>> names = freeze(m, "conv1", "bn1", "layer1", "layer2.*")
    >>> names[0], len(names), m.fc.weight.requires_grad
    ('conv1.weight', 30, True)
    >>> freeze(m, "layer9")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    finetune.errors.ConfigError: pattern 'layer9' matches no parameter or module name of ResNet; did you mean: layer1, layer2, layer3, layer4, layer1.0? top-level blocks: ...
    """
    return _set_trainable(model, patterns, trainable=False)


def unfreeze(model: nn.Module, *patterns: str) -> list[str]:
    """Make the parameters that ``patterns`` name trainable (all if none); return their names.

    BatchNorm layers the patterns cover leave the frozen part: they follow
    ``model.train()`` / ``model.eval()`` again. Add the returned names to the
    optimizer with :func:`add_param_group_for`.

    >>> import torch
    >>> from finetune import freeze, unfreeze
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 1))
    >>> _ = freeze(m)
    >>> unfreeze(m, "1", "2")
    ['1.weight', '1.bias', '2.weight', '2.bias']
    >>> _ = m.train(); m[1].training
    True
    """
    return _set_trainable(model, patterns, trainable=True)


def _refuse_ddp(model: nn.Module, call: str) -> None:
    """Refuse to change what trains through a ``DistributedDataParallel`` wrapper.

    DDP decides when it is built which parameters it averages: a parameter frozen
    afterwards makes the next step fail (torch's "Expected to have finished reduction
    in the prior iteration"), and one unfrozen afterwards trains on its own process's
    gradient only (with ``find_unused_parameters=True``, silently).
    """
    from torch.nn.parallel import DistributedDataParallel

    inner, layer = unwrap(model), model
    while layer is not inner:
        if isinstance(layer, DistributedDataParallel):
            raise ConfigError(
                f"{call} on a model wrapped in DistributedDataParallel: DDP fixes the parameters it averages "
                "when it is built, so freezing afterwards fails at the next step and unfreezing leaves the new "
                "parameters' gradients unaveraged: call it on the model inside (ddp.module) and wrap it again "
                "(DistributedDataParallel(ddp.module, ...))"
            )
        layer = next(layer.children())


def _set_trainable(model: nn.Module, patterns: tuple[str, ...], *, trainable: bool) -> list[str]:
    """(Un)freeze what ``patterns`` name (everything if none) and the BatchNorm layers they cover."""
    _refuse_ddp(model, "unfreeze" if trainable else "freeze")
    root = unwrap(model)
    sel = _select(root, patterns) if patterns else _select_all(root)
    params = _named_params(root)
    _set_requires_grad(params, sel.params, trainable)
    chosen = set(sel.params)
    _mark_bn(root, lambda n, bn: _bn_covered(n, bn, chosen, sel.covers_module), not trainable)
    apply_bn_policy(root)
    return [n for n in sel.params if params[n].requires_grad == trainable]  # (eval policy: BN affine stays trainable)


def freeze_all_but(model: nn.Module, *patterns: str) -> list[str]:
    """Make exactly the parameters that ``patterns`` name trainable, freeze the rest; return the frozen names.

    ``freeze_all_but(model, "fc")`` is a linear probe of a ResNet.

    >>> import torch
    >>> from finetune import freeze_all_but
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    >>> freeze_all_but(m, "2")
    ['0.weight', '0.bias']
    """
    if not patterns:
        raise ConfigError("freeze_all_but needs at least one pattern of what stays trainable (e.g. 'fc')")
    _refuse_ddp(model, "freeze_all_but")
    root = unwrap(model)
    sel = _select(root, patterns)
    if not sel.params:
        raise ConfigError(
            f"freeze_all_but({', '.join(map(repr, patterns))}) names no parameter, only modules without any "
            f"({', '.join(sorted(sel.modules)[:5])}): it would freeze everything; name what should train "
            "(the head that replaced an nn.Identity, e.g. 'head' or 'fc')"
        )
    params = _named_params(root)
    keep = set(sel.params)
    frozen = [n for n in params if n not in keep]
    _set_requires_grad(params, sel.params, True)
    _set_requires_grad(params, frozen, False)
    frozen_set = set(frozen)
    _mark_bn(root, lambda n, bn: _bn_covered(n, bn, keep, sel.covers_module), False)
    _mark_bn(root, lambda n, bn: _bn_covered(n, bn, frozen_set, lambda m: not sel.covers_module(m)), True)
    apply_bn_policy(root)
    return [n for n in frozen if not params[n].requires_grad]


def freeze_until(model: nn.Module, module_name: str) -> list[str]:
    """Freeze every parameter registered before module ``module_name``; return their names.

    "Before" is registration order (``model.named_modules()``), which is the
    forward order for the usual backbones: ``freeze_until(resnet, "layer4")``
    freezes ``conv1``, ``bn1`` and ``layer1``–``layer3``. The named module and
    everything after it are left as they are (not unfrozen).

    >>> import torch
    >>> from finetune import freeze_until
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> freeze_until(m, "2")
    ['0.weight', '0.bias', '1.weight', '1.bias']
    """
    if not isinstance(module_name, str) or not module_name:
        raise ConfigError(f"freeze_until takes a module name (a non-empty string, e.g. 'layer4'), got {module_name!r}")
    _refuse_ddp(model, "freeze_until")
    root = unwrap(model)
    order = [n for n, _ in root.named_modules()]
    first_name = {id(m): n for n, m in root.named_modules()}
    alias = {n: first_name[id(m)] for n, m in root.named_modules(remove_duplicate=False)}  # a module under two names
    is_module = alias.__contains__
    target = _in_network(_as_given_or_stripped(module_name, is_module), root, is_module)
    if not target or target not in alias:
        raise _unmatched(target, root, what="module")
    target = alias[target]
    before = set(order[: order.index(target)])
    params = _named_params(root)
    names = [n for n in params if _owner(n) in before]
    _set_requires_grad(params, names, False)
    chosen = set(names)
    _mark_bn(root, lambda n, bn: n in before and _bn_covered(n, bn, chosen, lambda m: True), True)
    apply_bn_policy(root)
    return [n for n in names if not params[n].requires_grad]


# --------------------------------------------------------------------------- BatchNorm policy
def _bn_pre_hook(module: nn.Module, args: Any) -> None:
    if module.training and getattr(module, _MODE_ATTR, "train") != "train":
        module.training = False


def _in_frozen_part(bn: nn.Module) -> bool:
    marked = getattr(bn, _FROZEN_PART_ATTR, None)
    if marked is not None:
        return bool(marked)
    own = list(bn.parameters(recurse=False))
    return bool(own) and not any(p.requires_grad for p in own)


def set_bn_policy(model: nn.Module, bn: str = "frozen") -> dict[str, str]:
    """Set the BatchNorm policy for the frozen parts of ``model``; return ``{bn layer: mode}``.

    ``bn`` is ``"frozen"``, ``"eval"`` or ``"train"`` (see the module docstring).
    The policy is remembered on the model, and later freeze / unfreeze calls
    follow it. Call it after freezing: under ``eval`` it makes the affine
    parameters of frozen-part BatchNorm layers trainable again.

    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> _ = freeze(m)
    >>> set_bn_policy(m, "eval"), m[1].weight.requires_grad
    ({'1': 'eval'}, True)
    """
    if bn not in BN_POLICIES:
        raise ConfigError(f"BatchNorm policy must be one of {', '.join(BN_POLICIES)}, got {bn!r}")
    root = unwrap(model)
    previous = bn_policy(root)
    trains = {n: p.requires_grad for n, p in root.named_parameters()}
    setattr(root, _POLICY_ATTR, bn)
    modes = apply_bn_policy(root)
    if any(p.requires_grad != trains[n] for n, p in root.named_parameters()):
        try:  # (it changed what trains: not through DDP, which fixed what it averages when it was built)
            _refuse_ddp(model, f"set_bn_policy(model, {bn!r})")
        except ConfigError:
            setattr(root, _POLICY_ATTR, previous)
            apply_bn_policy(root)
            for n, p in root.named_parameters():
                p.requires_grad_(trains[n])
            raise
    return modes


def bn_policy(model: nn.Module) -> str:
    """The BatchNorm policy of ``model`` (``"frozen"`` unless :func:`set_bn_policy` said otherwise).

    >>> bn_policy(torch.nn.Linear(1, 1))
    'frozen'
    """
    return getattr(unwrap(model), _POLICY_ATTR, "frozen")


def apply_bn_policy(model: nn.Module) -> dict[str, str]:
    """Re-apply the model's BatchNorm policy to every BatchNorm layer; return ``{bn layer: mode}``.

    Freeze calls run this themselves; call it after changing ``requires_grad``
    by hand. A layer is in a frozen part when a freeze call covered it or all
    its parameters are frozen. Its mode is then the policy; elsewhere ``train``
    (it follows ``model.train()`` / ``model.eval()``).

    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> _ = m[1].requires_grad_(False)
    >>> apply_bn_policy(m)
    {'1': 'frozen'}
    """
    root = unwrap(model)
    policy = bn_policy(root)
    modes: dict[str, str] = {}
    after_frozen = _after_frozen_layers(root)
    for name, bn in _bn_layers(root):
        if getattr(bn, _MODE_ATTR, "train") == "frozen" and any(p.requires_grad for p in bn.parameters(recurse=False)):
            setattr(bn, _FROZEN_PART_ATTR, False)  # made trainable since the policy froze it (by hand, or unfreeze(..., "bn.weight"))
        frozen_part = _in_frozen_part(bn)
        if getattr(bn, _FROZEN_PART_ATTR, None) is None and not list(bn.parameters(recurse=False)):
            # affine=False, frozen by hand: where it sits tells (not marked: unfreezing by hand undoes it)
            mode = policy if id(bn) in after_frozen else "train"
            _set_layer_mode(bn, mode, root.training)
            modes[name] = mode
            continue
        mode = policy if frozen_part else "train"
        if frozen_part:
            setattr(bn, _FROZEN_PART_ATTR, True)
            if policy in ("frozen", "eval"):
                for p in bn.parameters(recurse=False):
                    p.requires_grad_(policy == "eval")
                    if policy == "frozen":
                        p.grad = None
        _set_layer_mode(bn, mode, root.training)
        modes[name] = mode
    for _name, layer, frozen_part in _stochastic_layers(root):  # dropout & co. (not in the returned modes)
        _set_layer_mode(layer, "frozen" if frozen_part and policy != "train" else "train", root.training)
    for layer, frozen in _power_iterations(root):  # spectral_norm of a frozen weight: its _u / _v stay (not listed)
        _set_layer_mode(layer, "frozen" if frozen and policy != "train" else "train", root.training)
    _set_head_dropout(root, policy)
    return modes


def _set_layer_mode(layer: nn.Module, mode: str, root_training: bool) -> None:
    """Record ``mode``; anything but ``train`` keeps the layer in eval mode (now, and by a
    forward pre-hook whenever the model is put back in train mode)."""
    previous = getattr(layer, _MODE_ATTR, "train")
    setattr(layer, _MODE_ATTR, mode)
    if not hasattr(layer, _HOOK_ATTR):
        setattr(layer, _HOOK_ATTR, layer.register_forward_pre_hook(_bn_pre_hook))
    if mode != "train":
        layer.training = False
    elif previous != "train":
        layer.training = root_training


def bn_train_mode(model: nn.Module) -> list[str]:
    """Put frozen-part BatchNorm layers back in eval mode; call right after ``model.train()``. Return their names.

    The forward pre-hook does the same lazily; calling this makes
    ``bn.training`` correct at once and keeps a compiled graph from seeing the
    flag flip during the first forward.

    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> _ = freeze(m, "1"); _ = m.train()
    >>> bn_train_mode(m), m[1].training
    (['1'], False)
    """
    root = unwrap(model)
    fixed = []
    for name, bn in _bn_layers(root):
        if getattr(bn, _MODE_ATTR, "train") != "train":
            bn.training = False
            fixed.append(name)
    for _name, layer, _ in _stochastic_layers(root):  # frozen parts' dropout: off (not listed)
        if getattr(layer, _MODE_ATTR, "train") != "train":
            layer.training = False
    for layer, _ in _power_iterations(root):  # frozen weights' spectral_norm: no power iteration (not listed)
        if getattr(layer, _MODE_ATTR, "train") != "train":
            layer.training = False
    return fixed


# --------------------------------------------------------------------------- trainable table
@dataclass(frozen=True)
class TableRow:
    """One top-level block: parameter counts (elements) and the mode of its BatchNorm layers.

    >>> import torch
    >>> from finetune.freeze import freeze, trainable_table
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 1))
    >>> _ = freeze(net, "0", "1")
    >>> [(r.block, r.kind, r.total, r.trainable, r.frozen, r.bn) for r in trainable_table(net).rows]
    [('0', 'Linear', 6, 0, 6, '-'), ('1', 'BatchNorm1d', 4, 0, 4, 'frozen'), ('2', 'Linear', 3, 3, 0, '-')]
    """

    block: str
    kind: str
    total: int
    trainable: int
    bn: str  # "-" (no BatchNorm), "frozen", "eval", "train", or "mixed (frozen 3, train 2)"

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


@dataclass(frozen=True)
class TrainableTable:
    """Per top-level block: parameters total / trainable / frozen and BatchNorm mode.

    >>> t = trainable_table(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)))
    >>> t.total, t.trainable, t.to_dict()["rows"][1]["block"]
    (9, 9, '1')
    """

    model: str
    rows: tuple[TableRow, ...]

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "total": self.total,
            "trainable": self.trainable,
            "frozen": self.frozen,
            "rows": [asdict(r) | {"frozen": r.frozen} for r in self.rows],
        }

    def __str__(self) -> str:
        head = ("block", "type", "params", "trainable", "frozen", "bn")
        body = [(r.block, r.kind, f"{r.total:,}", f"{r.trainable:,}", f"{r.frozen:,}", r.bn) for r in self.rows]
        total = ("total", "", f"{self.total:,}", f"{self.trainable:,}", f"{self.frozen:,}", "")
        lines = [head, *body, total]
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        right = {2, 3, 4}

        def fmt(line: tuple[str, ...]) -> str:
            cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
            return "  ".join(cells).rstrip()

        share = 100.0 * self.trainable / self.total if self.total else 0.0
        title = f"{self.model}: {self.trainable:,} of {self.total:,} parameters trainable ({share:.1f}%)"
        return "\n".join([title, fmt(head), *map(fmt, body), fmt(total)])


def _bn_summary(bns: list[nn.Module]) -> str:
    if not bns:
        return "-"
    counts: dict[str, int] = {}
    for bn in bns:
        mode = getattr(bn, _MODE_ATTR, "train")
        counts[mode] = counts.get(mode, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return "mixed (" + ", ".join(f"{m} {c}" for m, c in counts.items()) + ")"


def trainable_table(model: nn.Module) -> TrainableTable:
    """Count parameters (elements) per top-level block: total, trainable, frozen, and BatchNorm mode.

    Parameters registered on the model itself (a ViT's ``class_token``) get a
    row each. A module that holds the network as its one block with parameters
    (a LightningModule's ``self.model``, ``nn.Sequential(Normalize(), net)``)
    is looked through: the rows are the network's blocks (``model.layer4``). ``print(table)`` gives a compact aligned printout;
    ``table.to_dict()`` is JSON-ready.

    >>> from finetune import freeze_all_but, trainable_table
    >>> import torchvision
    >>> m = torchvision.models.resnet18(num_classes=2)
    >>> _ = freeze_all_but(m, "fc")
    >>> print(trainable_table(m))  # doctest: +NORMALIZE_WHITESPACE
    ResNet: 1,026 of 11,177,538 parameters trainable (0.0%)
    block   type         params      trainable  frozen     bn
    conv1   Conv2d       9,408       0          9,408      -
    bn1     BatchNorm2d  128         0          128        frozen
    layer1  Sequential   147,968     0          147,968    frozen
    layer2  Sequential   525,568     0          525,568    frozen
    layer3  Sequential   2,099,712   0          2,099,712  frozen
    layer4  Sequential   8,393,728   0          8,393,728  frozen
    fc      Linear       1,026       1,026      0          -
    total                11,177,538  1,026      11,176,512
    """
    root = unwrap(model)
    rows = _table_rows(root)
    while len(rows) == 1 and rows[0].kind != "Parameter":  # a module of the user's that holds the network
        inner = _table_rows(root.get_submodule(rows[0].block), rows[0].block + ".")
        if all(r.kind == "Parameter" for r in inner):  # a single layer (nn.Sequential(nn.Linear(...))): its row
            break
        rows = inner
    return TrainableTable(type(root).__name__, tuple(rows))


def _table_rows(module: nn.Module, prefix: str = "") -> list[TableRow]:
    rows: list[TableRow] = []
    for name, p in module.named_parameters(recurse=False):
        rows.append(TableRow(prefix + name, "Parameter", p.numel(), p.numel() if p.requires_grad else 0, "-"))
    seen: set[int] = {id(p) for p in module.parameters(recurse=False)}
    for name, child in module.named_children():
        params = [p for p in child.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        bns = [m for m in child.modules() if _is_bn(m)]
        if not params and not bns:
            continue
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        rows.append(TableRow(prefix + name, type(child).__name__, total, trainable, _bn_summary(bns)))
    return rows


# --------------------------------------------------------------------------- parameter groups
# tokens, embeddings and per-channel scales registered as bare parameters (torchvision and timm
# names; torchvision's reference recipe and timm's no_weight_decay() keep them out of weight decay)
_NO_DECAY_PARAMS = frozenset({
    "class_token", "cls_token", "dist_token", "reg_token", "mask_token",
    "pos_embed", "pos_embedding", "absolute_pos_embed", "relative_position_bias_table", "layer_scale",
})


def _is_no_decay(name: str, param: nn.Parameter, owner: nn.Module, no_decay: Sequence[str], skip: set[str]) -> bool:
    return (
        param.ndim <= 1
        or isinstance(owner, _NORM_TYPES)
        or name.rpartition(".")[2] in _NO_DECAY_PARAMS
        or any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)
        or any(word in name for word in no_decay)
    )


def _model_no_weight_decay(root: nn.Module) -> set[str]:
    """Names (or globs, as timm matches them) that a timm model's ``no_weight_decay()`` lists."""
    prefix, net = _timm_part(root, "no_weight_decay")
    fn = getattr(net, "no_weight_decay", None)  # timm models name their tokens / position embeddings
    if not callable(fn):
        return set()
    try:
        return {f"{prefix}.{n}" if prefix else str(n) for n in fn()}
    except Exception:  # a model's own helper that fails is not our error to raise
        return set()


def _check_group_args(lr: float, lr_mult: Mapping[str, float] | None, layer_decay: float | None, weight_decay: float,
                      no_decay: Sequence[str] = ()) -> None:
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
    if layer_decay is not None and not (isinstance(layer_decay, int | float) and 0 < layer_decay <= 1):
        raise ConfigError(f"layer decay must be in (0, 1], got {layer_decay!r} (e.g. 0.7)")
    if not (isinstance(weight_decay, int | float) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"weight decay must be >= 0, got {weight_decay!r}")
    if not isinstance(no_decay, list | tuple | set | frozenset) or not all(isinstance(w, str) and w for w in no_decay):
        # (a bare string would be read letter by letter: every name with a 'b', 'i', 'a' or 's' undecayed)
        raise ConfigError(f"no_decay must be a list of name parts (e.g. ('bias', 'norm')), got {no_decay!r}")
    if lr_mult is not None and not isinstance(lr_mult, Mapping):
        raise ConfigError(f"lr_mult must map patterns to multipliers (e.g. {{'layer4': 0.1}}), got {lr_mult!r}")
    for pattern, mult in (lr_mult or {}).items():
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"an lr_mult pattern must be a non-empty string, got {pattern!r}")
        if not (isinstance(mult, int | float) and math.isfinite(mult) and mult >= 0):
            raise ConfigError(f"learning-rate multiplier for {pattern!r} must be a number >= 0, got {mult!r}")


def _timm_layer_ids(root: nn.Module) -> dict[str, int] | None:
    """timm's layer ids (``param_groups_layer_decay``: ``group_matcher(coarse=False)``), or None without one."""
    prefix, net = _timm_part(root, "group_matcher")
    matcher = getattr(net, "group_matcher", None)
    if not callable(matcher):
        return None
    try:
        from timm.models import group_parameters  # a model with a group_matcher comes with timm

        ids = group_parameters(net, matcher(coarse=False), reverse=True)
    except Exception:  # not timm's kind of matcher: use the generic blocks
        return None
    ids = {f"{prefix}.{n}" if prefix else n: i for n, i in ids.items()}
    names = list(_named_params(root))
    top = max((ids[n] for n in names if n in ids), default=0)
    return {n: ids.get(n, top) for n in names}  # unmatched (the head) last, as timm does


def _count_under(names: Sequence[str], module: str) -> int:
    return sum(1 for n in names if n.startswith(module + ".")) if module else len(names)


def _units(root: nn.Module) -> list[str]:
    """The blocks that layer decay steps over, in registration order (module names).

    The top-level blocks with parameters, except that a *trunk* is opened into
    its children, again and again: a block that holds more than half of the
    model's parameter tensors, has at least two children with parameters, and
    sits beside at most two other blocks (a stem and a head). So torchvision's
    ``features`` (MobileNet, EfficientNet, ConvNeXt, Swin, DenseNet,
    SqueezeNet, VGG), ``trunk_output`` (RegNet), ``blocks`` (MaxViT) and ViT's
    ``encoder`` / ``encoder.layers`` become their stages or blocks, while
    ResNet keeps ``conv1``, ``bn1``, ``layer1`` … ``fc`` (a stage among four
    is not opened, however deep).

    >>> _units(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))))
    ['0', '1.0', '1.1']
    """
    names = list(_named_params(root))

    def parts(module: str) -> list[str]:
        children = (f"{module}.{c}" if module else c for c, _ in root.get_submodule(module).named_children())
        return [c for c in children if _count_under(names, c)]

    def is_trunk(unit: str, children: list[str]) -> bool:
        beside = len(parts(unit.rpartition(".")[0]))
        return 2 * _count_under(names, unit) > len(names) and len(children) >= 2 and beside <= 3

    units = parts("")
    i = 0
    while i < len(units):
        children = parts(units[i])
        if is_trunk(units[i], children):
            units[i : i + 1] = children
        else:
            i += 1
    return units


def _depths(root: nn.Module) -> tuple[dict[str, int], dict[int, str]]:
    """Depth of every parameter, 0 at the stem up to the largest at the head, and a name per depth.

    timm models: timm's own layer ids (``layer_0`` … ``layer_N``; a ViT's
    patch embedding, class token and position embedding at 0, block ``i`` at
    ``i + 1``, the head last). Other models: the index of the :func:`_units`
    block a parameter is in, named after it. A parameter registered on a block
    that was split (a ViT's class token or position embedding) goes with the
    block before it (the first block when there is none). Every head the output
    comes from is at the top (timm's distilled PiT: ``head`` and ``head_dist``
    alike); auxiliary heads (GoogLeNet's ``aux1`` / ``aux2``, Inception v3's
    ``AuxLogits``) take no depth of their own, but that of the block before them.

    >>> import torchvision
    >>> vit = torchvision.models.VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    >>> depth, names = _depths(vit)
    >>> [depth[n] for n in ("class_token", "conv_proj.weight", "encoder.pos_embedding",
    ...  "encoder.layers.encoder_layer_0.ln_1.weight", "encoder.layers.encoder_layer_1.mlp.0.weight",
    ...  "encoder.ln.weight", "heads.head.weight")]
    [0, 0, 0, 1, 2, 3, 4]
    >>> names[4]
    'heads'
    """
    timm_ids = _timm_layer_ids(root)
    if timm_ids is not None:
        return timm_ids, {d: f"layer_{d}" for d in sorted(set(timm_ids.values()))}
    from finetune.errors import ModelError
    from finetune.models import aux_head_names, head_names

    try:
        heads = head_names(root)
    except ModelError:
        heads = []
    aux = aux_head_names(root)

    def within(unit: str, names: Sequence[str]) -> bool:
        return any(unit == n or unit.startswith(n + ".") for n in names)

    units = [u for u in _units(root) if not within(u, aux)]
    head_units = [u for u in units if within(u, heads)]
    units = [u for u in units if u not in head_units] + head_units[:1]
    index = {u: i for i, u in enumerate(units)}
    index.update({u: len(units) - 1 for u in head_units})
    depth: dict[str, int] = {}
    current = 0
    for n in _named_params(root):
        parts = _owner(n).split(".")
        found = [index[".".join(parts[:k])] for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in index]
        current = found[0] if found else current  # own parameter of a split block: with the block before it
        depth[n] = current
    return depth, {i: u for i, u in enumerate(units)} or {0: "default"}


def _group_keys(
    root: nn.Module, names: Sequence[str], lr_mult: Mapping[str, float] | None, layer_decay: float | None
) -> dict[str, tuple[str, float]]:
    """Map each parameter name to (group key, learning-rate multiplier)."""
    by_pattern: list[tuple[str, float, set[str]]] = []
    for pattern, mult in (lr_mult or {}).items():
        by_pattern.append((_as_given_or_stripped(pattern, lambda _: False), float(mult), set(_select(root, [pattern]).params)))
    depth: dict[str, int] = {}
    labels: dict[int, str] = {}
    top = 0
    if layer_decay is not None:
        depth, labels = _depths(root)
        top = max(depth.values(), default=0)
    out: dict[str, tuple[str, float]] = {}
    for n in names:
        key, base = "default", 1.0
        if layer_decay is not None:
            key, base = labels[depth[n]], layer_decay ** (top - depth[n])
        mult = base
        for pattern, m, members in by_pattern:  # the last pattern that matches wins
            if n in members:
                key = f"{labels[depth[n]]}:{pattern}" if layer_decay is not None else pattern
                mult = base * m
        out[n] = (key, mult)
    return out


def _build_groups(
    root: nn.Module,
    names: Sequence[str],
    lr: float,
    lr_mult: Mapping[str, float] | None,
    layer_decay: float | None,
    weight_decay: float,
    no_decay: Sequence[str],
    prefix: str = "",
) -> list[dict[str, Any]]:
    _check_group_args(lr, lr_mult, layer_decay, weight_decay, no_decay)
    params = _named_params(root)
    modules = dict(root.named_modules())
    skip = _model_no_weight_decay(root)
    keys = _group_keys(root, names, lr_mult, layer_decay)
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for n in names:
        key, mult = keys[n]
        p = params[n]
        decay = weight_decay > 0 and not _is_no_decay(n, p, modules[_owner(n)], no_decay, skip)
        split = weight_decay > 0 and not decay
        g = groups.setdefault(
            (key, decay),
            {
                "name": prefix + key + ("/no_decay" if split else ""),
                "params": [],
                "param_names": [],
                "lr": lr * mult,
                "lr_mult": mult,
                "weight_decay": weight_decay if decay else 0.0,
            },
        )
        g["params"].append(p)
        g["param_names"].append(n)
    return list(groups.values())


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    lr_mult: Mapping[str, float] | None = None,
    layer_decay: float | None = None,
    weight_decay: float = 0.0,
    no_decay: Sequence[str] = ("bias", "norm"),
) -> list[dict[str, Any]]:
    """Named optimizer parameter groups over the trainable parameters of ``model``, each parameter once.

    - ``lr_mult`` maps patterns (globs over parameter / module names) to
      learning-rate multipliers; the last matching pattern wins; each matched
      pattern is a group named after it, the rest is ``"default"``.
    - ``layer_decay`` (like timm's layer decay / fastai's ``slice``): one group
      per depth from the stem (0) to the head (the deepest): the head gets
      multiplier 1, the depth before it ``layer_decay``, then
      ``layer_decay**2``, …; it multiplies with ``lr_mult``. timm models use
      timm's own layer ids (groups ``layer_0`` … ``layer_N``, as
      ``timm.optim.param_groups_layer_decay``); other models step over
      top-level blocks in registration order, with a trunk that holds most of
      the network opened into its stages or blocks (torchvision's
      ``features``, ``trunk_output``, ViT's ``encoder.layers``), and groups are
      named after the block. A ViT's patch embedding, class token and position
      embedding share depth 0, block ``i`` is at ``i + 1``, the head is last.
    - With ``weight_decay > 0``, biases, 1-D parameters, norm-layer weights
      (BatchNorm / LayerNorm / GroupNorm / InstanceNorm / RMSNorm), names
      containing a ``no_decay`` word, a model's ``no_weight_decay()`` names
      (timm: ``pos_embed``, ``cls_token``, …) and the bare token / embedding
      parameters of torchvision models (``class_token``, ``pos_embedding``,
      ``layer_scale``) go to ``"<group>/no_decay"`` groups with ``weight_decay=0``.

    Each group dict has ``name``, ``params``, ``param_names``, ``lr``,
    ``lr_mult`` and ``weight_decay``; pass the list to any torch optimizer.
    A learning-rate schedule should set ``g["lr"] = base_lr(t) * g["lr_mult"]``.

    >>> import torch
    >>> from finetune import freeze_until, param_groups
    >>> import torchvision
    >>> m = torchvision.models.resnet18(num_classes=2)
    >>> _ = freeze_until(m, "layer4")
    >>> groups = param_groups(m, 0.1, lr_mult={"layer4": 0.1}, weight_decay=1e-4)
    >>> [(g["name"], round(g["lr"], 4), g["weight_decay"]) for g in groups]
    [('layer4', 0.01, 0.0001), ('layer4/no_decay', 0.01, 0.0), ('default', 0.1, 0.0001), ('default/no_decay', 0.1, 0.0)]
    >>> opt = torch.optim.AdamW(groups)
    """
    root = unwrap(model)
    names = [n for n, p in _named_params(root).items() if p.requires_grad]
    if not names:
        raise ConfigError(f"nothing to train: every parameter of {type(root).__name__} is frozen (unfreeze something first)")
    return _build_groups(root, names, lr, lr_mult, layer_decay, weight_decay, no_decay)


def frozen_only_patterns(model: nn.Module, patterns: Iterable[str], unfrozen_later: Sequence[str] = ()) -> list[str]:
    """The patterns (of ``lr_mult``) that name only frozen parameters, none of which the
    ``unfrozen_later`` patterns (``--unfreeze``) will make trainable: their multiplier changes
    nothing (``--lr-mult layer1=2`` with ``--linear-probe``).

    >>> import torchvision
    >>> m = torchvision.models.resnet18(num_classes=2)
    >>> _ = freeze_all_but(m, "fc")
    >>> frozen_only_patterns(m, ["layer1", "fc", "layer4.1.*", "layer3.*"], unfrozen_later=["layer3"])
    ['layer1', 'layer4.1.*']
    """
    root = unwrap(model)
    params = _named_params(root)
    later = set(_select(root, list(unfrozen_later)).params) if unfrozen_later else set()
    out = []
    for pattern in patterns:
        named = _select(root, [pattern]).params
        if not any(params[n].requires_grad or n in later for n in named):
            out.append(pattern)
    return out


def add_param_group_for(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    names: Iterable[str],
    lr: float,
    *,
    lr_mult: Mapping[str, float] | None = None,
    layer_decay: float | None = None,
    weight_decay: float = 0.0,
    no_decay: Sequence[str] = ("bias", "norm"),
    tag: str = "unfrozen",
) -> list[dict[str, Any]]:
    """Add newly trainable parameters ``names`` to ``optimizer`` as new named groups; return the groups added.

    The groups follow the same rules as :func:`param_groups` (pass the same
    ``lr`` / ``lr_mult`` / ``layer_decay`` / ``weight_decay``) and are named
    ``"<tag>:<group>"``. Parameters already in the optimizer are skipped; a
    frozen one is an error (unfreeze it first).

    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> _ = freeze(m, "0")
    >>> opt = torch.optim.SGD(param_groups(m, 0.1), momentum=0.9)
    >>> added = add_param_group_for(opt, m, unfreeze(m, "0"), 0.1, tag="unfreeze@3")
    >>> [g["name"] for g in opt.param_groups]
    ['default', 'unfreeze@3:default']
    """
    root = unwrap(model)
    params = _named_params(root)
    present = {id(p) for g in optimizer.param_groups for p in g["params"]}
    todo: list[str] = []
    for n in dict.fromkeys(_as_given_or_stripped(n, params.__contains__) for n in names):
        if n not in params:
            raise _unmatched(n, root, what="parameter")
        if not params[n].requires_grad:
            raise ConfigError(f"parameter {n!r} is frozen: unfreeze it before adding it to the optimizer")
        if id(params[n]) not in present:
            todo.append(n)
    groups = _build_groups(root, todo, lr, lr_mult, layer_decay, weight_decay, no_decay, prefix=f"{tag}:")
    named = all("param_names" in g for g in optimizer.param_groups)
    for g in groups:
        if not named:
            del g["param_names"]
        optimizer.add_param_group(g)
    return optimizer.param_groups[len(optimizer.param_groups) - len(groups) :]


# --------------------------------------------------------------------------- audit
@dataclass(frozen=True)
class Finding:
    """One problem :func:`audit` found: its kind, the parameters concerned, and what to do.

    >>> import torch
    >>> from finetune.freeze import audit, freeze
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> _ = freeze(net, "0")
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)     # frozen weights included
    >>> [finding] = audit(net, opt, after_backward=False)
    >>> finding.kind, finding.names, finding.message.split(":")[0]
    ('frozen_in_optimizer', ['0.weight', '0.bias'], '2 frozen parameter(s) are in the optimizer with momentum=0.9')
    """

    kind: str  # trainable_not_in_optimizer | frozen_in_optimizer | no_grad_after_backward | nonfinite_grad
    names: list[str]
    message: str


AUDIT_KINDS = ("trainable_not_in_optimizer", "frozen_in_optimizer", "no_grad_after_backward", "nonfinite_grad")


def _changers(group: Mapping[str, Any]) -> list[str]:
    out = []
    if group.get("weight_decay", 0) > 0:
        out.append(f"weight_decay={group['weight_decay']}")
    if group.get("momentum", 0) > 0:
        out.append(f"momentum={group['momentum']}")
    if "betas" in group:
        out.append("Adam moments")
    return out


def _aux_head_params(root: nn.Module) -> set[str]:
    """Parameters of auxiliary heads (Inception's ``InceptionAux``), which run in train mode only."""
    from finetune.models import aux_head_names

    aux = set(aux_head_names(root))
    return {n for n in _named_params(root) if _under(_owner(n), aux)} if aux else set()


def audit(model: nn.Module, optimizer: torch.optim.Optimizer, *, after_backward: bool = True) -> list[Finding]:
    """Check that the optimizer holds exactly the trainable parameters and that gradients look sane.

    Findings (``kind``): ``trainable_not_in_optimizer`` (will never change),
    ``frozen_in_optimizer`` (weight decay / momentum can still change them),
    and — with ``after_backward`` (call it after the first ``backward()``,
    before ``zero_grad``) — ``no_grad_after_backward`` (trainable but unused in
    the forward) and ``nonfinite_grad``. An empty list means all clear.

    Auxiliary heads (GoogLeNet's ``aux1`` / ``aux2``, Inception v3's
    ``AuxLogits``) do not run in eval mode: with the model in eval mode, their
    missing gradients are not reported. In train mode they run, and a loss on
    the main logits only (:func:`finetune.models.logits_of`) leaves them
    without a gradient: that is reported, since they then sit in the optimizer
    and never train — freeze them (``freeze(model, *finetune.models.aux_head_names(model))``)
    or add their loss. The same goes for a timm distilled model in
    ``distilled_training`` mode whose ``head_dist`` output the loss ignores.

    >>> import torch
    >>> from finetune import audit
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> opt = torch.optim.SGD(m[1].parameters(), lr=0.1)
    >>> m(torch.ones(1, 2)).sum().backward()
    >>> [(f.kind, f.names) for f in audit(m, opt)]
    [('trainable_not_in_optimizer', ['0.weight', '0.bias'])]
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"audit needs the optimizer that trains the model (a torch.optim.Optimizer), got "
                          f"{type(optimizer).__name__}")
    root = unwrap(model)
    params = _named_params(root)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    findings: list[Finding] = []

    missing = [n for n, p in params.items() if p.requires_grad and id(p) not in group_of]
    if missing:
        findings.append(Finding(
            "trainable_not_in_optimizer", missing,
            f"{len(missing)} trainable parameter(s) are not in the optimizer and will never change; "
            "build the optimizer from finetune.param_groups(model), or add them with add_param_group_for()",
        ))

    frozen_in = [n for n, p in params.items() if not p.requires_grad and id(p) in group_of]
    if frozen_in:
        how = sorted({c for n in frozen_in for c in _changers(group_of[id(params[n])])})
        stale = [n for n in frozen_in if params[n].grad is not None]
        findings.append(Finding(
            "frozen_in_optimizer", frozen_in,
            f"{len(frozen_in)} frozen parameter(s) are in the optimizer"
            + (f" with {', '.join(how)}" if how else "")
            + ": whenever their .grad is a tensor (zero_grad(set_to_none=False), or a grad left from before "
            "freezing) weight decay (AdamW, or SGD weight_decay>0) and momentum keep changing the 'frozen' weights"
            + (f" — {len(stale)} of them have a .grad now" if stale else "")
            + "; build the optimizer from finetune.param_groups(model)",
        ))

    if after_backward:
        trainable = {n: p for n, p in params.items() if p.requires_grad}
        aux = set() if root.training else _aux_head_params(root)  # in eval mode they do not run
        no_grad = [n for n, p in trainable.items() if p.grad is None and n not in aux]
        if no_grad:
            findings.append(Finding(
                "no_grad_after_backward", no_grad,
                f"{len(no_grad)} trainable parameter(s) got no gradient in backward: they are unused in the "
                "forward (or backward has not run yet); freeze them or fix the forward",
            ))
        with_grad = [(n, p.grad) for n, p in trainable.items() if p.grad is not None]
        if with_grad:
            dense = [g.coalesce().values() if g.is_sparse else g for _, g in with_grad]  # nn.Embedding(sparse=True)
            finite = torch.stack([torch.isfinite(g).all() for g in dense]).tolist()  # one sync
            bad = [n for (n, _), ok in zip(with_grad, finite, strict=True) if not ok]
            if bad:
                findings.append(Finding(
                    "nonfinite_grad", bad,
                    f"{len(bad)} parameter(s) have inf/NaN gradients: lower the learning rate, check the "
                    "inputs and loss, or use gradient scaling with fp16",
                ))
    return findings


def format_findings(findings: Sequence[Finding], *, max_names: int = 8) -> str:
    """Findings as warning lines (empty string when there are none).

    >>> print(format_findings([Finding("nonfinite_grad", ["fc.weight"], "1 parameter(s) have inf/NaN gradients")]))
    warning: nonfinite_grad: 1 parameter(s) have inf/NaN gradients [fc.weight]
    """
    lines = []
    for f in findings:
        shown = ", ".join(f.names[:max_names])
        more = f", … {len(f.names) - max_names} more" if len(f.names) > max_names else ""
        lines.append(f"warning: {f.kind}: {f.message} [{shown}{more}]")
    return "\n".join(lines)


# --------------------------------------------------------------------------- linear probe
def _head_name(root: nn.Module) -> str:
    """The (main) classifier head: ``fc``, ``classifier.1``, ``heads.head``, timm's ``get_classifier()``.

    >>> import torchvision
    >>> _head_name(torchvision.models.swin_t(num_classes=2))
    'head'
    """
    from finetune.models import head_name  # imported here: keeps `import finetune.freeze` light

    return head_name(root)


def _head_names(root: nn.Module) -> list[str]:
    """Every head whose output the model returns (two for timm's distilled DeiT, else one)."""
    from finetune.models import head_names

    return head_names(root)


def _replace(module: nn.Module, dotted: str, replacement: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` with submodule ``dotted`` replaced; everything else is shared."""
    first, _, rest = dotted.partition(".")
    new = copy.copy(module)
    new._modules = type(module._modules)(module._modules)
    new._parameters = type(module._parameters)(module._parameters)
    new._buffers = type(module._buffers)(module._buffers)
    child = module._modules[first]
    new._modules[first] = _replace(child, rest, replacement) if rest else replacement
    return new


class _Recorder(nn.Module):
    """Stands in for a head in a backbone: keeps its input for :class:`_HeadInputs` and passes it
    on, or (``stub``: one of several heads, whose outputs the model combines) returns one zero
    per sample, so that heads of different widths (CrossViT) still combine."""

    def __init__(self, stub: bool = False) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None
        self.stub = stub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.value = x
        return x.new_zeros(x.shape[0], 1) if self.stub else x


class _HeadInputs(nn.Module):
    """A backbone that runs the model with recorders in place of its heads and returns the heads' inputs.

    One head: its input; several: their inputs stacked on dim 1 (``(N, heads, ...)``).
    Whatever the model computes after the heads is discarded.
    """

    def __init__(self, body: nn.Module, recorders: Sequence[_Recorder]) -> None:
        super().__init__()
        self.body = body
        self._recorders = tuple(recorders)  # a tuple: not registered twice (they are inside body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.body(x)
        values = [r.value for r in self._recorders]
        for r in self._recorders:
            r.value = None
        if any(v is None for v in values):
            raise ConfigError("the model's forward did not call its classifier head; cannot split it")
        if len(values) == 1:
            return values[0]  # type: ignore[return-value]
        if len({tuple(v.shape) for v in values}) == 1:  # type: ignore[union-attr]
            return torch.stack(values, 1)  # type: ignore[arg-type]
        if all(v.dim() == 2 for v in values):  # type: ignore[union-attr]  # CrossViT: one width per branch
            return torch.cat(values, 1)  # type: ignore[arg-type]
        raise ConfigError(f"the heads of {type(unwrap(self.body)).__name__} take inputs of different shapes "
                          f"({', '.join('x'.join(map(str, v.shape)) for v in values)}): it cannot be split "  # type: ignore[union-attr]
                          "into backbone features and a head; train without cache_features (--cache-features)")


class _MeanOfHeads(nn.Module):
    """Heads applied to their own slice of stacked features (dim 1), outputs averaged (timm's distilled models)."""

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        widths = [_in_features(h) for h in self.heads]
        if features.dim() == 2 and None not in widths and sum(widths) == features.shape[1] != widths[0]:  # type: ignore[arg-type]
            parts = list(features.split(widths, dim=1))  # type: ignore[arg-type]  # concatenated (CrossViT)
        else:
            parts = [features[:, i] for i in range(len(self.heads))]
        out = self.heads[0](parts[0])
        for head, part in zip(self.heads[1:], parts[1:], strict=True):
            out = out + head(part)
        return out / len(self.heads)


def _in_features(head: nn.Module) -> int | None:
    first = next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
    return first.in_features if first is not None else None


def _conv_head(root: nn.Module, name: str) -> nn.Module:
    """A 1x1-conv head with what follows it: the parameter-free rest of its Sequential (SqueezeNet: ReLU, pooling) and a flatten."""
    conv = root.get_submodule(name)
    parent_name, _, own = name.rpartition(".")
    parent = root.get_submodule(parent_name)
    tail: list[nn.Module] = []
    if isinstance(parent, nn.Sequential):
        keys = list(parent._modules)
        tail = [m for m in (parent._modules[k] for k in keys[keys.index(own) + 1 :]) if m is not None]
    if any(p is not None for m in tail for p in m.parameters()):
        raise ConfigError(f"cannot split the head of {type(root).__name__}: layers with parameters follow {name!r}")
    return nn.Sequential(conv, *tail, nn.Flatten(1))


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Split a classifier into ``(backbone, head)`` that share the model's parameters.

    ``head(backbone(x))`` equals ``model(x)`` in eval mode; the original model
    is not modified. The usual case is a Linear head that is the last
    operation of the forward (``finetune.models.head_name``: ``fc``,
    ``classifier.1``, ``heads.head``, timm's ``get_classifier()``, …): the
    backbone is a shallow copy of the model with the head replaced by
    ``nn.Identity`` (it returns the head's input, including whatever comes
    before the head in the forward: pooling, flatten, a norm, and a dropout of
    a ``classifier`` Sequential — a no-op in eval mode, which feature caching
    uses), and ``head`` is the model's head module itself. Two other shapes:

    - several heads (timm's distilled DeiT: ``head`` on the class token,
      ``head_dist`` on the distillation token; the model returns their mean):
      the backbone returns the heads' inputs stacked on dim 1, and ``head``
      applies each head to its slice and averages;
    - a 1x1-conv head followed by ReLU and pooling (SqueezeNet): the backbone
      returns the conv's input maps, and ``head`` is the conv, the rest of its
      Sequential and a flatten.

    Auxiliary heads (Inception) are left in the backbone: they do not run in eval mode.

    >>> import torchvision
    >>> m = torchvision.models.resnet18(num_classes=2).eval()
    >>> backbone, head = split_head(m)
    >>> x = torch.randn(1, 3, 32, 32)
    >>> backbone(x).shape, torch.equal(head(backbone(x)), m(x)), head is m.fc
    (torch.Size([1, 512]), True, True)
    >>> sq = torchvision.models.squeezenet1_1(num_classes=2).eval()
    >>> backbone, head = split_head(sq)
    >>> backbone(x).shape, torch.equal(head(backbone(x)), sq(x))
    (torch.Size([1, 512, 1, 1]), True)
    """
    root = unwrap(model)
    names = _head_names(root)
    heads = [root.get_submodule(n) for n in names]
    if len(names) == 1 and not isinstance(heads[0], nn.Conv2d):
        return _replace(root, names[0], nn.Identity()), heads[0]
    body, recorders = root, []
    for name in names:
        recorders.append(_Recorder(stub=len(names) > 1))
        body = _replace(body, name, recorders[-1])
    if len(names) == 1:
        return _HeadInputs(body, recorders), _conv_head(root, names[0])
    return _HeadInputs(body, recorders), _MeanOfHeads(heads)


def _batch_xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch["image"], batch["label"]
    return batch[0], batch[1]


def extract_features(
    backbone: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    store: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``backbone`` once over ``loader`` in eval mode without grad; return ``(features, labels)``.

    Batches are ``(images, labels, ...)`` or ``{"image": ..., "label": ...}``.
    Images go to ``device`` (default: where they are); features and labels are
    kept on ``store`` (default: where the backbone put them). Wrap the call in
    ``torch.autocast`` for mixed precision. The loader must not augment, or the
    cache differs from what the live model sees. The backbone's train/eval mode
    is restored afterwards.

    >>> backbone, head = split_head(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))
    >>> feats, labels = extract_features(backbone, [(torch.ones(3, 4), torch.tensor([0, 1, 0]))])
    >>> feats.shape, labels.tolist()
    (torch.Size([3, 4]), [0, 1, 0])
    """
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        with torch.no_grad():
            for batch in loader:
                x, y = _batch_xy(batch)
                if device is not None:
                    x = x.to(device, non_blocking=True)
                f = backbone(x)
                feats.append(f if store is None else f.to(store))
                labels.append(y if store is None else y.to(store))
    finally:
        backbone.train(was_training)
    if not feats:
        raise ConfigError("cannot cache features: the loader yielded no batches")
    return torch.cat(feats), torch.cat(labels)


def train_head_on_features(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    order: Sequence[int] | torch.Tensor | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    drop_last: bool = False,
) -> float:
    """One epoch of head training on cached features; return the mean loss over batches.

    ``order`` is the sample order of the epoch (a permutation, e.g. the
    indices a sampler yields; default: in order); batches are consecutive
    slices of it of ``batch_size``. With the same order and batch size this is
    the same computation as training the head behind a frozen backbone in eval
    mode on un-augmented images.

    >>> head = torch.nn.Linear(4, 2)
    >>> opt = torch.optim.SGD(head.parameters(), lr=0.1)
    >>> loss = train_head_on_features(head, torch.randn(8, 4), torch.randint(0, 2, (8,)), opt, batch_size=4)
    >>> loss > 0
    True
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    n = len(features)
    idx_all = torch.arange(n) if order is None else torch.as_tensor(order, dtype=torch.long)
    idx_all = idx_all.to(features.device)
    head.train()
    total, count = None, 0
    for start in range(0, n, batch_size):
        idx = idx_all[start : start + batch_size]
        if drop_last and len(idx) < batch_size:
            break
        loss = loss_fn(head(features[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total = loss.detach() if total is None else total + loss.detach()
        count += 1
    return float(total / count) if total is not None else float("nan")

"""Safe unpickling: ``weights_only=True`` plus an explicit allowlist of benign types.

Nothing in a file runs unless the caller passes ``trust=True``. Files that need
a type outside the allowlist are refused with an error that names the type.

>>> import io, torch
>>> buf = io.BytesIO(); torch.save({"w": torch.ones(2)}, buf); _ = buf.seek(0)
>>> torch_load(buf, name="mem")["w"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import contextlib
import datetime
import functools
import os
import pathlib
import pickle
import re
import typing
import warnings
import zipfile
from collections.abc import Callable
from typing import IO, Any

import torch

from finetune.errors import CheckpointError, UnsafeCheckpointError

SafeGlobal = Any  # a callable, or (callable, "module.qualname") as torch accepts

_CVE_WARNED = False


def torch_is_safe(version: str | None = None) -> bool:
    """True when ``weights_only=True`` is trustworthy (torch >= 2.6, CVE-2025-32434).

    >>> torch_is_safe("2.5.1"), torch_is_safe("2.6.0+cu124"), torch_is_safe("2.14.1")
    (False, True, True)
    """
    nums = re.findall(r"\d+", (version or torch.__version__).split("+")[0])[:2]
    major, minor = (int(n) for n in (nums + ["0", "0"])[:2])
    return (major, minor) >= (2, 6)


def warn_if_unsafe_torch() -> None:
    """Warn once when the installed torch predates the weights_only fix.

    >>> import warnings
    >>> from unittest import mock
    >>> from finetune.weights import unpickle
    >>> with (mock.patch.object(unpickle, "torch_is_safe", return_value=False),   # as with torch 2.5
    ...       mock.patch.object(unpickle, "_CVE_WARNED", False),
    ...       warnings.catch_warnings(record=True) as caught):
    ...     warnings.simplefilter("always")
    ...     unpickle.warn_if_unsafe_torch(); unpickle.warn_if_unsafe_torch()
    >>> len(caught), "CVE-2025-32434" in str(caught[0].message)
    (1, True)
    """
    global _CVE_WARNED
    if not _CVE_WARNED and not torch_is_safe():
        _CVE_WARNED = True
        warnings.warn(
            f"torch {torch.__version__} is older than 2.6: torch.load(weights_only=True) can run code "
            "from a crafted file there (CVE-2025-32434); upgrade torch or only load files you trust",
            stacklevel=3,
        )


@functools.cache
def allowlist() -> tuple[SafeGlobal, ...]:
    """Benign types that real checkpoints carry, allowed on top of torch's own list.

    >>> any(getattr(g, "__name__", "") == "Namespace" for g in allowlist())
    True
    """
    items: list[SafeGlobal] = [argparse.Namespace, torch.torch_version.TorchVersion]
    items += [datetime.datetime, datetime.date, datetime.time, datetime.timedelta, datetime.timezone]
    for mod in ("pathlib", "pathlib._local"):
        items += [
            (pathlib.PurePosixPath, f"{mod}.PurePosixPath"),
            (pathlib.PosixPath, f"{mod}.PosixPath"),
            (pathlib.PureWindowsPath, f"{mod}.PureWindowsPath"),
            (pathlib.PureWindowsPath, f"{mod}.WindowsPath"),  # cannot exist off Windows: keep the text
            (pathlib.PurePosixPath, f"{mod}.Path"),
        ]
    items += _numpy_allowlist()
    items += stand_ins()
    return tuple(items)


# --------------------------------------------------------------------------- stand-ins
class FastcoreL(list):  # type: ignore[type-arg]
    """Stand-in for fastcore's ``L`` (fastai keeps its optimizer ``hypers`` in one): a plain list.

    >>> lst = FastcoreL.__new__(FastcoreL); lst.__setstate__({"items": [{"lr": 0.1}]}); lst
    [{'lr': 0.1}]
    """

    def __setstate__(self, state: Any) -> None:
        """Take the items fastcore pickles as ``{'items': [...]}``."""
        items = state.get("items") if isinstance(state, dict) else state
        self.extend(items if isinstance(items, list) else [])


class OmegaConfNode:
    """Stand-in for an OmegaConf value node (``AnyNode``, ``StringNode``, …): keeps ``_val``."""

    value: Any = None

    def __setstate__(self, state: Any) -> None:
        """Keep the node's value, drop its metadata and parent."""
        self.value = state.get("_val") if isinstance(state, dict) else None


class OmegaConfDict(dict):  # type: ignore[type-arg]
    """Stand-in for OmegaConf's ``DictConfig`` (Hydra configs in Lightning hyperparameters): a plain dict.

    >>> node = OmegaConfNode(); node.__setstate__({"_val": 0.1})
    >>> cfg = OmegaConfDict(); cfg.__setstate__({"_metadata": object(), "_content": {"lr": node}}); cfg
    {'lr': 0.1}
    """

    def __setstate__(self, state: Any) -> None:
        """Take the values of ``_content`` (``None`` or ``'???'`` content leaves the dict empty)."""
        content = state.get("_content") if isinstance(state, dict) else None
        if isinstance(content, dict):
            self.update({str(k): _node_value(v) for k, v in content.items()})


class OmegaConfList(list):  # type: ignore[type-arg]
    """Stand-in for OmegaConf's ``ListConfig``: a plain list."""

    def __setstate__(self, state: Any) -> None:
        """Take the values of ``_content``."""
        content = state.get("_content") if isinstance(state, dict) else None
        if isinstance(content, list):
            self.extend(_node_value(v) for v in content)


class YacsCfgNode(dict):  # type: ignore[type-arg]
    """Stand-in for yacs' ``CfgNode`` (Swin, maskrcnn-benchmark and other configs saved in checkpoints): a dict.

    It is filled item by item (SETITEMS), which torch's weights_only unpickler allows on plain
    dicts only: files with one are read by the restricted unpickler (:data:`RESTRICTED_ONLY`).
    """

    def __setstate__(self, state: Any) -> None:
        """Drop yacs' flags (``__immutable__``, ``__deprecated_keys__``, …)."""


class Inert:
    """Stand-in for a metadata-only class (OmegaConf's ``Metadata``): keeps its state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        """Keep the state as it was pickled."""
        self.__dict__["state"] = state


class PartialStandIn:
    """Stand-in for ``functools.partial`` (lightning-hydra-template keeps ``optimizer`` and ``scheduler``
    partials among its hyperparameters): records what it wraps, can never be called.

    >>> p = PartialStandIn(class_stand_in("torch.optim.adam.Adam")); p.__setstate__((p.func, (), {"lr": 0.1}, None))
    >>> p.describe()
    'partial(torch.optim.adam.Adam, lr=0.1)'
    """

    def __init__(self, *args: Any) -> None:
        self.func = args[0] if args else None
        self.args: tuple[Any, ...] = tuple(args[1:])
        self.keywords: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        """``(func, args, keywords, namespace)``, as ``functools.partial.__reduce__`` gives it."""
        if isinstance(state, tuple) and len(state) == 4:
            self.func, args, keywords, _ = state
            self.args, self.keywords = tuple(args or ()), dict(keywords or {})

    def describe(self) -> str:
        """``partial(module.Name, arg, key=value)``: what the file holds, as text."""
        func = self.func
        name = f"{func.__module__}.{func.__qualname__}" if isinstance(func, type) else repr(func)
        parts = [name, *map(repr, self.args), *(f"{k}={v!r}" for k, v in self.keywords.items())]
        return f"partial({', '.join(parts)})"


class RecordedObject:
    """Stand-in for a class of a training library that a file makes with arguments (a DeepSpeed enum,
    dataclass or loss scaler we have no explicit stand-in for): keeps the arguments and the state,
    runs nothing.

    >>> obj = RecordedObject.__new__(RecordedObject, 2); obj.__setstate__({"cur_scale": 1.0}); obj.args, obj.state
    ((2,), {'cur_scale': 1.0})
    """

    args: tuple[Any, ...] = ()
    state: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> RecordedObject:
        obj = super().__new__(cls)
        obj.__dict__.update(args=args, state=None)
        return obj

    def __setstate__(self, state: Any) -> None:
        """Keep the state as it was pickled."""
        self.__dict__["state"] = state


def enum_value(value: Any, *_args: Any) -> Any:
    """Stand-in for an ``Enum`` class that a pickle calls with a member's value (DeepSpeed's
    ``ZeroStageEnum(2)``): the plain value, so metadata shows ``2``.

    >>> enum_value(3)
    3
    """
    return value


def attribute_placeholder(obj: Any, name: str) -> str:
    """Stand-in for ``getattr`` in a pickle (mmengine's HistoryBuffer keeps ``getattr(HistoryBuffer, 'min')``):
    the text ``'HistoryBuffer.min'``, never the attribute itself, so nothing is looked up or run.

    >>> attribute_placeholder(Inert, "min")
    'Inert.min'
    """
    owner = obj.__name__ if isinstance(obj, type) else type(obj).__name__
    return f"{owner}.{name}"


def _node_value(v: Any) -> Any:
    return v.value if isinstance(v, OmegaConfNode) else v


_OMEGACONF_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode",
                    "InterpolationResultNode")


#: stand-ins that only the restricted unpickler can fill (dict subclasses filled item by item)
RESTRICTED_ONLY: dict[str, Any] = {"yacs.config.CfgNode": YacsCfgNode}


def stand_ins() -> list[SafeGlobal]:
    """Inert stand-ins for third-party types that real checkpoints carry next to their weights.

    fastai's ``Learner.save`` keeps optimizer hypers in a fastcore ``L``; Lightning keeps
    Hydra/OmegaConf configs among its hyperparameters; mmengine's Runner keeps logged
    scalars in HistoryBuffers (``message_hub``); DeepSpeed's optimizer files keep a
    ``ZeroStageEnum`` (its value), loss scalers and ``fragment_address`` records (inert). The stand-ins rebuild them as plain
    lists, dicts and inert objects without importing or running those libraries; the
    builtins that OmegaConf pickles by name (``dict``, ``int``, ``typing.Any``,
    ``defaultdict``) are allowed as the plain types they are, and ``getattr`` only
    names the attribute (:func:`attribute_placeholder`).

    >>> sorted(name for _, name in stand_ins() if name.startswith("omegaconf."))[:2]
    ['omegaconf.base.ContainerMetadata', 'omegaconf.base.Metadata']
    """
    items: list[SafeGlobal] = [(FastcoreL, "fastcore.foundation.L")]
    items += [(Inert, "mmengine.logging.history_buffer.HistoryBuffer"), (attribute_placeholder, "builtins.getattr")]
    items += [(PartialStandIn, "functools.partial")]
    items += [(OmegaConfDict, "omegaconf.dictconfig.DictConfig"), (OmegaConfList, "omegaconf.listconfig.ListConfig"),
              (Inert, "omegaconf.base.Metadata"), (Inert, "omegaconf.base.ContainerMetadata")]
    items += [(OmegaConfNode, f"omegaconf.nodes.{n}") for n in _OMEGACONF_NODES]
    items += [(t, f"builtins.{t.__name__}") for t in (dict, list, int, float, str, bool, set, frozenset)]
    items += [(typing.Any, "typing.Any"), (collections.defaultdict, "collections.defaultdict")]
    items += [(enum_value, "deepspeed.runtime.zero.config.ZeroStageEnum"),
              (Inert, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
              (Inert, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
              (Inert, "deepspeed.utils.tensor_fragment.fragment_address")]
    return items


def _numpy_allowlist() -> list[SafeGlobal]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    multiarray = core.multiarray
    items: list[SafeGlobal] = [np.dtype, np.ndarray]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):  # files from numpy 1 and 2
        items += [(multiarray.scalar, f"{mod}.scalar"), (multiarray._reconstruct, f"{mod}._reconstruct")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes by class
    if dtypes is not None:
        items += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    for name in ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "complex64", "complex128"):
        items.append(getattr(np, name))
    return items


def _allowlist_names() -> set[str]:
    names = set()
    for g in allowlist():
        names.add(g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}")
    return names


def unsafe_error(name: str, globals_: list[str]) -> UnsafeCheckpointError:
    """The refusal message: which types, and how to load anyway.

    >>> from finetune.weights.unpickle import unsafe_error
    >>> print(unsafe_error("old.pt", ["a.A", "b.B", "c.C", "d.D", "e.E", "f.F", "g.G"]))
    old.pt: refusing to unpickle a.A, b.B, c.C, d.D, e.E and 2 more: loading it could run code stored in the file; if you trust where the file comes from, pass --trust (trust=True)
    """
    shown = ", ".join(globals_[:5]) + (f" and {len(globals_) - 5} more" if len(globals_) > 5 else "")
    error = UnsafeCheckpointError(
        f"{name}: refusing to unpickle {shown}: loading it could run code stored in the file; "
        "if you trust where the file comes from, pass --trust (trust=True)"
    )
    error.unsafe_globals = list(globals_)  # type: ignore[attr-defined]  # read by formats' fallback
    return error


#: modules whose classes checkpoints name without making one: PyTorch Lightning < 1.5 keyed
#: ``checkpoint['callbacks']`` by the callback's class; lightning-hydra-template's hyperparameters
#: hold ``functools.partial(torch.optim.Adam, lr=...)``
CLASS_KEY_MODULES = ("pytorch_lightning.callbacks.", "lightning.pytorch.callbacks.", "torch.optim.")
#: modules whose other classes (those without an explicit stand-in in :func:`stand_ins`) become
#: :class:`RecordedObject` stand-ins: DeepSpeed's optimizer files pickle its enums, dataclasses and
#: loss scalers, whose names change between versions
RECORDED_MODULES = ("deepspeed.",)


def class_stand_in(fullname: str) -> type:
    """An inert class named like ``fullname``, for a class that a file only names (a dict key, a partial's
    function); calling it fails, so nothing is made. A class of :data:`RECORDED_MODULES` (DeepSpeed)
    is a :class:`RecordedObject`: making one only records the arguments.

    >>> cls = class_stand_in("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")
    >>> cls.__qualname__, issubclass(cls, Inert)
    ('ModelCheckpoint', True)
    >>> class_stand_in("deepspeed.runtime.zero.config.OffloadDeviceEnum")("cpu").args
    ('cpu',)
    """
    module, _, qualname = fullname.rpartition(".")
    base = RecordedObject if fullname.startswith(RECORDED_MODULES) else Inert
    return type(qualname, (base,), {"__module__": module, "__qualname__": qualname})


def torch_load(f: str | pathlib.Path | IO[bytes], *, name: str, trust: bool = False,
               class_keys: tuple[str, ...] = ()) -> Any:
    """``torch.load`` to CPU: weights_only with the allowlist, or full pickle when ``trust``.

    Errors become :class:`CheckpointError` (corrupt) or :class:`UnsafeCheckpointError`.
    A file refused only for classes of :data:`CLASS_KEY_MODULES` (Lightning callbacks,
    torch optimizers and schedulers), which files name but do not make, is read again with
    inert stand-ins for them (``class_keys``); so is one refused only for DeepSpeed classes
    (:data:`RECORDED_MODULES`), whose stand-ins record their arguments and state.

    >>> import io, torch
    >>> buf = io.BytesIO(); torch.save([torch.zeros(1)], buf); _ = buf.seek(0)
    >>> torch_load(buf, name="x")[0].shape
    torch.Size([1])
    """
    if isinstance(f, str | os.PathLike):  # a file object: torch.load picks readers by suffix otherwise
        with open(f, "rb") as handle:
            return torch_load(handle, name=name, trust=trust)
    if trust:
        try:
            with _quiet_logger("torch.distributed.device_mesh"):  # DTensors: "unpickling before the PGs"
                return torch.load(f, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - anything wrong in a trusted file is still a bad file
            raise CheckpointError(f"{name}: cannot read ({_short(e)})") from e
    warn_if_unsafe_torch()
    if getattr(torch.serialization, "safe_globals", None) is None:
        return _restricted_torch_load(f, name=name)
    try:
        with _safe_globals_context(class_keys), warnings.catch_warnings(), \
                _quiet_logger("torch.distributed.device_mesh"):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(f, str(e))
        if unsafe and all(g.startswith("torch.distributed.") for g in unsafe) and _register_dtensor():
            if hasattr(f, "seek"):
                f.seek(0)
            return torch_load(f, name=name, trust=False)  # torch's own allowlist has DTensors now
        if unsafe and not class_keys and all(g.startswith(CLASS_KEY_MODULES + RECORDED_MODULES) for g in unsafe):
            if hasattr(f, "seek"):
                f.seek(0)
            return torch_load(f, name=name, class_keys=tuple(unsafe))
        if unsafe:
            raise unsafe_error(name, unsafe) from None
        if "Weights only load failed" in str(e):
            detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise UnsafeCheckpointError(
                f"{name}: refused by the safe loader ({detail}); if you trust where the file comes "
                "from, pass --trust (trust=True)"
            ) from None
        raise CheckpointError(f"{name}: not a readable checkpoint, corrupt or truncated ({_short(e)})") from None
    except (EOFError, RuntimeError, ValueError, OSError, KeyError, AttributeError, TypeError,
            IndexError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CheckpointError(f"{name}: not a readable checkpoint, corrupt or truncated ({_short(e)})") from None


def _restricted_torch_load(f: IO[bytes], *, name: str) -> Any:
    """torch < 2.5 (no ``safe_globals``: the allowlist's aliased names and stand-ins cannot be
    given to its weights_only unpickler, which CVE-2025-32434 makes unsafe anyway): ``torch.load``
    through :class:`RestrictedUnpickler`, which resolves torch's own allowlist, ours and the
    stand-ins of :data:`CLASS_KEY_MODULES` and :data:`RECORDED_MODULES`, and nothing else."""
    import codecs
    import types

    from torch import _weights_only_unpickler as wou

    allowed = {**wou._get_allowed_globals(), **wou._get_user_allowed_globals()}
    # what torch >= 2.6 allows besides (protocol-2 bytes, sets, complex numbers)
    allowed |= {"_codecs.encode": codecs.encode, "builtins.set": set, "builtins.bytearray": bytearray,
                "builtins.complex": complex}
    for g in allowlist():
        obj, key = g if isinstance(g, tuple) else (g, f"{g.__module__}.{g.__qualname__}")
        allowed[key] = obj

    def stand_in(module: str, qualname: str) -> Any:
        full = f"{module}.{qualname}"
        return class_stand_in(full) if full.startswith(CLASS_KEY_MODULES + RECORDED_MODULES) else None

    class Unpickler(RestrictedUnpickler):
        def __init__(self, file: IO[bytes], *, encoding: str = "ASCII", **_: Any) -> None:
            super().__init__(file, allowed, fallback=stand_in, name=name, encoding=encoding)

    restricted = types.ModuleType("finetune_restricted_pickle")
    restricted.Unpickler = Unpickler  # type: ignore[attr-defined]
    restricted.load = lambda file, **kw: Unpickler(file, **kw).load()  # type: ignore[attr-defined]
    restricted.__dict__.update({k: getattr(pickle, k) for k in ("UnpicklingError", "HIGHEST_PROTOCOL")})
    try:
        with _quiet_logger("torch.distributed.device_mesh"):
            return torch.load(f, map_location="cpu", weights_only=False, pickle_module=restricted)
    except UnsafeCheckpointError as e:
        if "torch.distributed.tensor." in str(e):  # a public module since torch 2.5
            raise CheckpointError(f"{name}: holds FSDP2 DTensors (torch.distributed.tensor), which torch "
                                  f"{torch.__version__} cannot read: needs torch >= 2.5") from None
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError, KeyError, AttributeError,
            TypeError, IndexError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CheckpointError(f"{name}: not a readable checkpoint, corrupt or truncated ({_short(e)})") from None


@contextlib.contextmanager
def _quiet_logger(name: str) -> Any:
    """Silence a library logger's warnings for the duration."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _register_dtensor() -> bool:
    """Import ``torch.distributed.tensor``, which adds DTensor and its specs to torch's safe globals
    (``torch.save`` of an FSDP2 model's state dict holds DTensors). False when that is done already
    or not possible, so that a second refusal is final."""
    import importlib
    import sys

    if "torch.distributed.tensor" in sys.modules or not torch.distributed.is_available():
        return False
    try:
        importlib.import_module("torch.distributed.tensor")
    except ImportError:  # pragma: no cover - a torch built without distributed
        return False
    return True


def _safe_globals_context(class_keys: tuple[str, ...] = ()) -> contextlib.AbstractContextManager[Any]:
    ctx = getattr(torch.serialization, "safe_globals", None)
    if ctx is not None:
        return ctx([*allowlist(), *((class_stand_in(n), n) for n in class_keys)])
    # torch < 2.5: no context manager and no (obj, name) pairs; register the plain types
    torch.serialization.add_safe_globals([g for g in allowlist() if not isinstance(g, tuple)])
    return contextlib.nullcontext()


def _unsafe_globals(f: Any, message: str) -> list[str]:
    found: list[str] = []
    try:
        if hasattr(f, "seek"):
            f.seek(0)
        found = torch.serialization.get_unsafe_globals_in_checkpoint(f)
    except Exception:  # noqa: BLE001 - legacy files: fall back to the message
        found = []
    found += re.findall(r"GLOBAL ([\w.]+) was not an allowed global", message)
    allowed = _allowlist_names()
    return list(dict.fromkeys(g for g in found if g not in allowed))


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


class RestrictedUnpickler(pickle.Unpickler):
    """A plain unpickler that resolves only the globals in ``allowed`` (name -> object).

    ``fallback(module, name)`` may return a stand-in object for other names, or None
    to refuse. ``encoding`` decodes Python 2 strings (``"latin1"`` for numpy arrays). Refused names are reported with :func:`unsafe_error`.

    >>> import io, pickle
    >>> RestrictedUnpickler(io.BytesIO(pickle.dumps({"a": 1})), {}).load()
    {'a': 1}
    """

    def __init__(self, file: IO[bytes], allowed: dict[str, Any],
                 fallback: Callable[[str, str], Any] | None = None, name: str = "file",
                 encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self.allowed = allowed
        self.fallback = fallback
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``, else ``fallback``'s stand-in, else refuse.

        >>> import fractions, io, pickle
        >>> from finetune.weights.unpickle import RestrictedUnpickler
        >>> data = pickle.dumps(fractions.Fraction(1, 3))
        >>> RestrictedUnpickler(io.BytesIO(data), {"fractions.Fraction": fractions.Fraction}).load()
        Fraction(1, 3)
        >>> stand_in = lambda module, name: lambda *args: (f"{module}.{name}", args)
        >>> RestrictedUnpickler(io.BytesIO(data), {}, fallback=stand_in).load()
        ('fractions.Fraction', (1, 3))
        >>> RestrictedUnpickler(io.BytesIO(data), {}, name="f.pkl").load()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        finetune.errors.UnsafeCheckpointError: f.pkl: refusing to unpickle fractions.Fraction: loading it could run code ...
        """
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names protocol-2 pickles use
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = f"{module}.{name}"
        if key in self.allowed:
            return self.allowed[key]
        if self.fallback is not None:
            obj = self.fallback(module, name)
            if obj is not None:
                return obj
        raise unsafe_error(self.name, [key])

"""finetune: adapt a pretrained image classifier to your images.

Importing ``finetune`` is cheap: torch and everything heavy are imported only
when a name that needs them is first used.

>>> import finetune
>>> finetune.FinetuneError.__name__
'FinetuneError'
>>> import finetune.freeze  # the module of the same name does not hide the function
>>> from finetune import freeze, train
>>> callable(freeze), train.__name__, finetune.freeze is freeze
(True, 'train', True)
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from finetune.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DataWarning,
    FinetuneError,
    ModelError,
    UnsafeCheckpointError,
    WeightsError,
)

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_LAZY: dict[str, str] = {
    "TrainConfig": "finetune.config",
    "load_config": "finetune.config",
    "create_model": "finetune.models",
    "list_models": "finetune.models",
    "model_table": "finetune.models",
    "layer_summary": "finetune.models",
    "class_activation_maps": "finetune.cam",
    "find_cam_layer": "finetune.cam",
    "overlay": "finetune.cam",
    "localisation": "finetune.cam",
    "explain": "finetune.cam",
    "train": "finetune.train",
    "evaluate": "finetune.train",
    "predict": "finetune.train",
    "lr_find": "finetune.lr_find",
    "Checkpointer": "finetune.checkpoint",
    "read_state_dict": "finetune.weights",
    "load_weights": "finetune.weights",
    "LoadReport": "finetune.weights",
    "freeze": "finetune.freeze",
    "unfreeze": "finetune.freeze",
    "freeze_all_but": "finetune.freeze",
    "freeze_until": "finetune.freeze",
    "trainable_table": "finetune.freeze",
    "param_groups": "finetune.freeze",
    "audit": "finetune.freeze",
    "convert_sync_batchnorm": "finetune.sync_bn",
    "build_loader": "finetune.data",
    "make_shapes": "finetune.data",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataWarning",
    "FinetuneError",
    "ModelError",
    "UnsafeCheckpointError",
    "WeightsError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'finetune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """``finetune.train`` and ``finetune.freeze`` are functions that live in modules of the
    same name. Importing such a module (``from finetune.train import evaluate``, or any
    module that does) makes Python bind the package attribute to the module, which would
    hide the function: that binding is dropped here, so ``finetune.freeze(...)`` and
    ``from finetune import train`` always give the functions. (The modules stay importable
    by their dotted names: ``from finetune.freeze import trainable_table``.)
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # pragma: no cover
    from finetune.cam import class_activation_maps, explain, find_cam_layer, localisation, overlay  # noqa: F401
    from finetune.checkpoint import Checkpointer  # noqa: F401
    from finetune.config import TrainConfig, load_config  # noqa: F401
    from finetune.data import build_loader, make_shapes  # noqa: F401
    from finetune.freeze import (  # noqa: F401
        audit,
        freeze,
        freeze_all_but,
        freeze_until,
        param_groups,
        trainable_table,
        unfreeze,
    )
    from finetune.models import create_model, layer_summary, list_models, model_table  # noqa: F401
    from finetune.train import evaluate, predict, train  # noqa: F401
    from finetune.weights import LoadReport, load_weights, read_state_dict  # noqa: F401

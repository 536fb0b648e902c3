"""finetune: adapt a pretrained image classifier to your images.

Importing ``finetune`` is cheap: torch and everything heavy are imported only
when a name that needs them is first used.

>>> import finetune
>>> finetune.FinetuneError.__name__
'FinetuneError'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from finetune.errors import (
    CheckpointError,
    ConfigError,
    DataError,
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
    "train": "finetune.train",
    "evaluate": "finetune.train",
    "predict": "finetune.train",
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
    "build_loader": "finetune.data",
    "make_shapes": "finetune.data",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
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


if TYPE_CHECKING:  # pragma: no cover
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
    from finetune.models import create_model, list_models  # noqa: F401
    from finetune.train import evaluate, predict, train  # noqa: F401
    from finetune.weights import LoadReport, load_weights, read_state_dict  # noqa: F401

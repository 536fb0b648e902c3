"""Errors that finetune raises on bad input.

Every error a user can cause is a :class:`FinetuneError`; the CLI prints it as
``finetune: error: <message>`` and exits with status 2. Messages say what went
wrong and what to do about it.

>>> from finetune.errors import DataError
>>> try:
...     raise DataError("no images in 'x/': put class folders with .jpg files there")
... except FinetuneError as e:
...     print(e)
no images in 'x/': put class folders with .jpg files there
"""

from __future__ import annotations


class FinetuneError(Exception):
    """Base class of every error caused by bad input or a bad environment."""


class ConfigError(FinetuneError):
    """A configuration value or command-line flag is invalid."""


class DataError(FinetuneError):
    """A dataset folder, CSV or image cannot be used."""


class ModelError(FinetuneError):
    """An architecture name is unknown or a model cannot be built."""


class CheckpointError(FinetuneError):
    """A checkpoint file is missing, unreadable, truncated or incomplete."""


class WeightsError(FinetuneError):
    """Weights cannot be read or do not fit the model."""


class UnsafeCheckpointError(WeightsError):
    """A file needs code execution to load and the user did not pass ``--trust``."""

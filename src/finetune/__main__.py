"""``python -m finetune``: the same as the ``finetune`` command."""

from finetune.cli import entry

entry()

"""Whether a process lives: for cleaning up temporary files whose writer died (a killed run's checkpoint
temp files, a killed ``make-shapes`` folder). No torch import: the shapes cache uses it before torch loads."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this host (one we may not signal counts as running).

    >>> import os
    >>> from finetune.processes import pid_alive
    >>> pid_alive(os.getpid())
    True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True

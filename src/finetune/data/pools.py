"""Process pools that end with their ``with`` block, also when they were forked inside ``train()``.

``Pool.terminate`` (the end of a ``with Pool(...)`` block) stops its workers with SIGTERM.
A worker forked after ``train()`` installed its graceful-stop handler inherits that handler,
outlives the signal, and the pool's join waits forever: a run that hangs after its data was
generated or checked. Workers made here take SIGTERM's default action (and leave Ctrl-C to the
main process).

>>> with process_pool(2) as pool:
...     pool.map(abs, [-1, -2, 3])
[1, 2, 3]
"""

from __future__ import annotations

import multiprocessing
import signal
from multiprocessing.pool import Pool


def _worker_signals() -> None:
    """In a pool worker: SIGTERM ends it (its default), Ctrl-C is the main process's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def process_pool(workers: int) -> Pool:
    """A ``multiprocessing`` pool of ``workers`` forked processes (the platform's default start
    method where there is no fork) whose workers die of the SIGTERM that ends the pool.

    >>> with process_pool(1) as pool:
    ...     pool.apply(pow, (2, 3))
    8
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return context.Pool(workers, initializer=_worker_signals)

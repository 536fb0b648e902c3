"""Worker processes: how they start (never a fork of a torchrun process), and process pools
that end with their ``with`` block, also when they were forked inside ``train()``.

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
import sys
from multiprocessing.pool import Pool
from typing import Any


def worker_start_method(world: int | None = None) -> str | None:
    """How worker processes start: "forkserver" in one of ``world`` > 1 processes that train
    together (default: the torch.distributed group's size, 1 without one), else None (the
    platform's default: "fork" on Linux before Python 3.14, "forkserver" from 3.14).

    A torchrun process runs its collective backend's threads, and those call into Python: a
    fork taken while one of them holds the interpreter's thread-list lock leaves the child
    hung before it runs a line (CPython gh-112275, Python 3.8 to 3.11; seen here as a two-process
    test whose validation worker never started, one run in four). A fork server is a process
    of one thread: the workers it forks start cleanly, with the data modules already imported.

    >>> worker_start_method(1) is None, worker_start_method(2)
    (True, 'forkserver')
    """
    if world is None:
        dist = sys.modules.get("torch.distributed")  # (not imported: no group)
        world = dist.get_world_size() if dist is not None and dist.is_available() and dist.is_initialized() else 1
    return "forkserver" if world > 1 else None


def worker_context(method: str | None) -> Any:
    """The multiprocessing context for ``method`` (None: the default one); a fork server imports
    torch and the data loader once, not each worker it forks.

    >>> worker_context("spawn").get_start_method()
    'spawn'
    """
    if method is None:
        return None
    if method == "forkserver":
        from multiprocessing import forkserver

        preload = list(getattr(forkserver._forkserver, "_preload_modules", ["__main__"]))
        if "finetune.data.loader" not in preload:  # (adds to what others asked for; no effect once it runs)
            forkserver.set_forkserver_preload([*preload, "finetune.data.loader"])
    return multiprocessing.get_context(method)


def _worker_signals() -> None:
    """In a pool worker: SIGTERM ends it (its default), Ctrl-C is the main process's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # (blocked from the fork until here)


def process_pool(workers: int) -> Pool:
    """A ``multiprocessing`` pool of ``workers`` forked processes (the platform's default start
    method where there is no fork; from a fork server in a torchrun process: see
    :func:`worker_start_method`) whose workers die of the SIGTERM that ends the pool.

    >>> with process_pool(1) as pool:
    ...     pool.apply(pow, (2, 3))
    8
    """
    method = worker_start_method() or ("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    context = worker_context(method) or multiprocessing.get_context()
    if context.get_start_method() != "fork":
        return context.Pool(workers, initializer=_worker_signals)
    # a fork starts with this process's SIGTERM handler: a pool ended at once (an error in its
    # block) would signal workers that have not run _worker_signals yet, and they would outlive it.
    # Forked with SIGTERM blocked, they take such a signal when _worker_signals unblocks it.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return context.Pool(workers, initializer=_worker_signals)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

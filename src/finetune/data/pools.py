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

import contextlib
import multiprocessing
import signal
import sys
from collections.abc import Iterator
from multiprocessing.pool import Pool
from typing import Any


def worker_start_method(world: int | None = None) -> str | None:
    """How worker processes start: "spawn" in one of ``world`` > 1 processes that train together
    (default: the torch.distributed group's size, 1 without one), else "fork" on Linux (also
    from Python 3.14, whose default is a fork server) and the platform's default elsewhere.

    A torchrun process runs its collective backend's threads, and those call into Python: a
    fork taken while one of them holds the interpreter's thread-list lock leaves the child
    hung before it runs a line (CPython gh-112275, Python 3.8 to 3.11; seen here as a two-process
    test whose validation worker never started, one run in four). A spawned worker is a new
    interpreter. (Not a fork server: the SIGTERM of a preemption, sent to the process group,
    ends the server, and its workers, which watch their parent, stop under the step that is
    being finished.)

    >>> worker_start_method(1), worker_start_method(2)
    ('fork', 'spawn')
    """
    if world is None:
        dist = sys.modules.get("torch.distributed")  # (not imported: no group)
        world = dist.get_world_size() if dist is not None and dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        return "spawn"
    return "fork" if sys.platform.startswith("linux") else None


def worker_context(method: str | None) -> Any:
    """The multiprocessing context for ``method`` (None: the default one).

    >>> worker_context("spawn").get_start_method()
    'spawn'
    """
    return multiprocessing.get_context(method) if method is not None else None


@contextlib.contextmanager
def sigterm_blocked(method: str | None) -> Iterator[None]:
    """Start worker processes of ``method`` (None: the default) in this block: they start with
    SIGTERM blocked (forked or spawned, a process keeps the mask) until their setup has
    installed what it does with one (:func:`_worker_signals`, the data loader's
    ``_outlive_one_signal``) and unblocks it; a SIGTERM sent meanwhile waits for that instead
    of killing the worker (a spawned one takes seconds to import torch) or reaching a handler
    it only inherited. This thread gets a SIGTERM of the block at its end.

    >>> with sigterm_blocked("fork"):
    ...     signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    True
    >>> signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    False
    """
    if not hasattr(signal, "pthread_sigmask"):  # (Windows: no signal masks, no SIGTERM from outside)
        yield
        return
    if (method or multiprocessing.get_all_start_methods()[0]) != "fork":
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()  # (spawned workers need it; starting it unblocks SIGTERM here)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _worker_signals() -> None:
    """In a pool worker: SIGTERM ends it (its default), Ctrl-C is the main process's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    unblock_sigterm()


def unblock_sigterm() -> None:
    """In a worker started in :func:`sigterm_blocked`, once its own SIGTERM handling is in place.

    >>> with sigterm_blocked("fork"):
    ...     unblock_sigterm(); signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    False
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def process_pool(workers: int) -> Pool:
    """A ``multiprocessing`` pool of ``workers`` forked processes (the platform's default start
    method where there is no fork; spawned in a torchrun process: see :func:`worker_start_method`)
    whose workers die of the SIGTERM that ends the pool.

    >>> with process_pool(1) as pool:
    ...     pool.apply(pow, (2, 3))
    8
    """
    method = worker_start_method() or ("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    context = worker_context(method) or multiprocessing.get_context()
    # a fork starts with this process's SIGTERM handler: a pool ended at once (an error in its
    # block) would signal workers that have not run _worker_signals yet, and they would outlive it
    with sigterm_blocked(context.get_start_method()):
        return context.Pool(workers, initializer=_worker_signals)

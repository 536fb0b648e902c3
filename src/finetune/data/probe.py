"""``workers="auto"``: measure a few worker counts (and decode modes) and keep the fastest.

The probe runs the real loader for about ``seconds`` per candidate, after one
warm-up batch (worker start-up is not counted), and re-measures the first
candidate at the end so that a cold page cache does not count against it.
Ties (within 5 %) go to fewer workers: less memory, same speed.

>>> candidate_workers(2)
[0, 1, 2]
>>> candidate_workers(16)
[0, 2, 4, 8, 12, 16]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

TIE = 0.05


@dataclass(frozen=True)
class Trial:
    """One measured configuration.

    >>> from finetune.data.probe import ProbeResult, Trial
    >>> trials = (Trial(0, "cpu", 400.0), Trial(0, "gpu", 0.0, error="RuntimeError: no CUDA"))
    >>> ProbeResult(0, "cpu", trials).describe()
    'workers=auto: picked 0 workers, decode=cpu (400 img/s; measured: 0w/cpu 400, 0w/gpu failed)'
    """

    workers: int
    decode: str
    images_per_s: float
    error: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    """What the probe picked, and every measurement behind the choice.

    >>> from finetune.data.probe import ProbeResult
    >>> result = ProbeResult(0, "cpu", (), note="12 images: too few to measure, no workers")
    >>> result.workers, result.describe()
    (0, 'workers=auto: picked 0 workers, decode=cpu (12 images: too few to measure, no workers)')
    """

    workers: int
    decode: str
    trials: tuple[Trial, ...]
    note: str = ""

    def describe(self) -> str:
        """One line for the log.

        >>> ProbeResult(2, "cpu", (Trial(0, "cpu", 500.0), Trial(2, "cpu", 1500.0))).describe()
        'workers=auto: picked 2 workers, decode=cpu (1500 img/s; measured: 0w/cpu 500, 2w/cpu 1500)'
        """
        if not self.trials:
            return f"workers=auto: picked {self.workers} workers, decode={self.decode} ({self.note})"
        best = max((t.images_per_s for t in self.trials if t.workers == self.workers and t.decode == self.decode), default=0.0)
        parts = ", ".join(f"{t.workers}w/{t.decode} " + (f"{t.images_per_s:.0f}" if t.error is None else "failed")
                          for t in self.trials)
        return f"workers=auto: picked {self.workers} workers, decode={self.decode} ({best:.0f} img/s; measured: {parts})"


def candidate_workers(cpus: int) -> list[int]:
    """Worker counts worth trying on a machine with ``cpus`` cores.

    >>> from finetune.data.probe import candidate_workers
    >>> candidate_workers(4), candidate_workers(12)
    ([0, 1, 2, 3, 4], [0, 2, 4, 8, 12])
    """
    if cpus <= 4:  # more workers than cores only steal time from the training step
        return list(range(0, cpus + 1))
    steps = [0, 2, 4] + list(range(8, cpus + 1, 4))
    return sorted({c for c in steps if c <= cpus} | {cpus})


def measure(loader: Any, seconds: float, *, warmup_batches: int = 1, epoch: int = 0) -> float:
    """Images per second that ``loader`` delivers, after ``warmup_batches``, for about ``seconds``.

    Crosses epoch boundaries if an epoch is shorter than the measurement.

    >>> import torch
    >>> from finetune.data.probe import measure
    >>> class Batches:                    # what it needs: set_epoch() and (images, labels) batches
    ...     def set_epoch(self, epoch): self.epoch = epoch
    ...     def __iter__(self): return iter([(torch.zeros(4, 3, 8, 8), torch.zeros(4))] * 3)
    >>> loader = Batches()
    >>> measure(loader, seconds=0.01) > 0, loader.epoch > 0      # three batches are not enough: next epochs
    (True, True)
    """
    loader.set_epoch(epoch)
    images = 0
    start = None
    seen = 0
    deadline = None
    while True:
        for batch, _labels in loader:
            seen += 1
            if seen == warmup_batches:
                start = time.perf_counter()
                deadline = start + seconds
                continue
            if start is None:
                continue
            images += int(batch.shape[0])
            if time.perf_counter() >= deadline:  # type: ignore[operator]
                return images / (time.perf_counter() - start)
        epoch += 1
        loader.set_epoch(epoch)
        if start is None and seen == 0:
            return 0.0


def probe(make: Callable[[int, str], Any], candidates: Iterable[tuple[int, str]], seconds: float = 1.0) -> ProbeResult:
    """Measure ``make(workers, decode)`` for each candidate; return the fastest (ties: fewer workers).

    >>> import time, torch
    >>> from finetune.data.probe import probe
    >>> class Batches:
    ...     def __init__(self, delay): self.delay = delay
    ...     def set_epoch(self, epoch): pass
    ...     def close(self): pass
    ...     def __iter__(self):
    ...         for _ in range(4):
    ...             time.sleep(self.delay); yield torch.zeros(8, 3, 4, 4), torch.zeros(8)
    >>> def make(workers, decode):
    ...     if decode == "gpu":
    ...         raise RuntimeError("no CUDA")
    ...     return Batches(0.002 if workers == 0 else 0.0)
    >>> result = probe(make, [(0, "cpu"), (1, "cpu"), (1, "gpu")], seconds=0.02)
    >>> result.workers, result.decode, [t.error for t in result.trials]
    (1, 'cpu', [None, None, 'RuntimeError: no CUDA'])
    """
    trials: list[Trial] = []
    cands = list(candidates)
    for workers, decode in cands + cands[:1]:
        loader = None
        try:
            loader = make(workers, decode)
            rate = measure(loader, seconds)
            trials.append(Trial(workers, decode, rate))
        except Exception as e:  # a mode that does not work here is not picked
            trials.append(Trial(workers, decode, 0.0, f"{type(e).__name__}: {e}"))
        finally:
            if loader is not None:
                loader.close()
    if len(trials) > len(cands):  # keep the better of the first candidate's two runs
        again = trials.pop()
        if again.images_per_s > trials[0].images_per_s:
            trials[0] = again
    ok = [t for t in trials if t.error is None and t.images_per_s > 0]
    if not ok:
        raise RuntimeError("no loader configuration worked: " + "; ".join(f"{t.workers}w/{t.decode}: {t.error}" for t in trials))
    top = max(t.images_per_s for t in ok)
    best = min((t for t in ok if t.images_per_s >= top * (1 - TIE)), key=lambda t: (t.workers, t.decode != "cpu"))
    return ProbeResult(best.workers, best.decode, tuple(trials))

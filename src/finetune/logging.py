"""What a run reports: one line per epoch, ``metrics.jsonl``, TensorBoard (scalars, the model
graph, Grad-CAM overlays, feature maps), progress bars.

>>> import tempfile, json, pathlib
>>> run = pathlib.Path(tempfile.mkdtemp())
>>> log = RunLog(run, tensorboard=False, quiet=True)
>>> log.epoch({"epoch": 0, "train_loss": 1.0, "val_loss": 0.9, "val_top1": 0.5, "val_top5": 1.0, "lr": 0.1, "images_per_s": 10.0})
>>> json.loads((run / "metrics.jsonl").read_text())["val_top1"]
0.5
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError, named


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Atomically replace ``path`` with one JSON object per line.

    >>> import pathlib, tempfile
    >>> from finetune.logging import write_jsonl
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> write_jsonl(path, [{"epoch": 0}, {"epoch": 1}])
    >>> path.read_text()
    '{"epoch": 0}\\n{"epoch": 1}\\n'
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w") as f:
            for r in records:
                f.write(json_line(r))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # (a full disk: the earlier file stays, no temporary one beside it)
        tmp.unlink(missing_ok=True)
        raise


def json_line(record: dict[str, Any]) -> str:
    """One record as a line of standard JSON: a non-finite number (a diverged run's loss) is ``null``,
    not Python's ``NaN`` / ``Infinity``, which JSON does not have (``JSON.parse``, strict parsers reject it).

    >>> json_line({"epoch": 0, "val_loss": float("nan"), "train_loss": float("inf"), "lr": 0.1})
    '{"epoch": 0, "val_loss": null, "train_loss": null, "lr": 0.1}\\n'
    """
    return json.dumps(json_safe(record), allow_nan=False) + "\n"


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (at any depth of dicts, lists, tuples) as None, for standard JSON.

    >>> json_safe({"loss": float("nan"), "top": [{"prob": float("inf")}, {"prob": 0.5}]})
    {'loss': None, 'top': [{'prob': None}, {'prob': 0.5}]}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def format_epoch(m: dict[str, Any], epochs: int) -> str:
    """One line per epoch.

    >>> format_epoch({"epoch": 0, "train_loss": 1.0, "val_loss": 0.5, "val_top1": 0.9, "val_top5": 1.0, "lr": 0.1, "images_per_s": 99.0, "topk": 5}, 3)
    'epoch 1/3  train loss 1.0000  val loss 0.5000  top-1 90.00%  top-5 100.00%  lr 0.1  99 img/s'
    """
    k = m.get("topk", 5)
    ema = f" (EMA; raw weights {m['raw_val_top1']:.2%})" if "raw_val_top1" in m else ""  # --ema
    return (f"epoch {m['epoch'] + 1}/{epochs}  train loss {m['train_loss']:.4f}  val loss {m['val_loss']:.4f}  "
            f"top-1 {m['val_top1']:.2%}{ema}  top-{k} {m['val_top5']:.2%}  lr {m['lr']:.3g}  {m['images_per_s']:.0f} img/s")


def summary_writer_class() -> type:
    """torch's TensorBoard ``SummaryWriter``, or a ConfigError that says to install tensorboard (an optional
    dependency: ``pip install tensorboard``) when it cannot be imported.

    >>> summary_writer_class().__name__
    'SummaryWriter'
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # not installed, or older than torch needs
        raise ConfigError(f"{named('tensorboard', True, flag='--tensorboard')} needs the tensorboard package, which cannot be imported "
                          f"({e}): install it (pip install tensorboard), or train "
                          "without --tensorboard") from None
    return SummaryWriter


def progress(iterable: Iterable, *, total: int, desc: str, quiet: bool):  # type: ignore[no-untyped-def]
    """A tqdm bar on a terminal; the plain iterable when quiet, not a TTY or closed.

    >>> from finetune.logging import progress
    >>> batches = [1, 2, 3]
    >>> progress(batches, total=3, desc="epoch 1", quiet=True) is batches
    True
    """
    if quiet or sys.stderr is None or not sys.stderr.isatty():  # (None: stderr closed, `2>&-`)
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, *, desc: str, quiet: bool):  # type: ignore[no-untyped-def]
    """A tqdm bar to ``update(n)`` by hand on a terminal (a loop that is no plain iteration); one that
    does nothing when quiet, not a TTY or closed. ``close()`` it at the end.

    >>> from finetune.logging import progress_bar
    >>> bar = progress_bar(10, desc="cam", quiet=True); bar.update(4); bar.close()
    """
    if quiet or sys.stderr is None or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def drop_events_from(tb_dir: Path, step: int, *, graphs: bool = False) -> int:
    """Rewrite the TensorBoard event files in ``tb_dir`` without their summaries (scalars, images) at steps
    ``>= step``: what an earlier invocation logged after the checkpoint a run resumes from. (``purge_step``
    alone hides them only from TensorBoard's Python loader; its default data server, ``--load_fast``, shows
    them until each tag is logged again at an earlier step.) ``graphs``: their model graphs too (a run
    started again from scratch traces its own). Returns how many events were dropped.

    >>> import pathlib, tempfile
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    >>> tb = pathlib.Path(tempfile.mkdtemp())
    >>> with SummaryWriter(str(tb)) as w:
    ...     for s in (1, 2, 3): w.add_scalar("loss", 1.0 / s, s)
    >>> drop_events_from(tb, 2)
    2
    >>> events = EventAccumulator(str(tb)); _ = events.Reload()
    >>> [e.step for e in events.Scalars("loss")]
    [1]
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    def dropped_event(record: bytes) -> bool:
        event = Event.FromString(record)
        return ((event.HasField("summary") and event.step >= step)
                or (graphs and any(event.HasField(f) for f in ("graph_def", "meta_graph_def", "tagged_run_metadata"))))

    dropped = 0
    for path in sorted(Path(tb_dir).glob("events.out.tfevents.*")) if Path(tb_dir).is_dir() else []:
        records = list(RawEventFileLoader(str(path)).Load())
        kept = [r for r in records if not dropped_event(r)]
        if len(kept) == len(records):
            continue
        dropped += len(records) - len(kept)
        tmp = path.with_name(f".{path.name.replace('tfevents', 'rewrite')}.tmp")  # (TensorBoard reads any *tfevents*)
        with tmp.open("wb") as f:
            writer = RecordWriter(f)
            for r in kept:
                writer.write(r)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


class RunLog:
    """Appends epoch records to ``metrics.jsonl``; mirrors scalars to TensorBoard under ``tb/``.

    >>> import json, pathlib, tempfile
    >>> from finetune.logging import RunLog
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> log = RunLog(run, tensorboard=False, quiet=False, epochs=2)
    >>> log.info("resnet18: 11.18M parameters")
    resnet18: 11.18M parameters
    >>> for e in (0, 1):
    ...     log.epoch({"epoch": e, "train_loss": 1.0 - e / 2, "val_loss": 0.9, "val_top1": 0.5, "val_top5": 1.0,
    ...                "lr": 0.1, "images_per_s": 10.0})
    epoch 1/2  train loss 1.0000  val loss 0.9000  top-1 50.00%  top-5 100.00%  lr 0.1  10 img/s
    epoch 2/2  train loss 0.5000  val loss 0.9000  top-1 50.00%  top-5 100.00%  lr 0.1  10 img/s
    >>> log.rewrite([{"epoch": 0}])                    # on resume: exactly the checkpoint's history
    >>> log.close(); (run / "metrics.jsonl").read_text()
    '{"epoch": 0}\\n'
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool, quiet: bool, epochs: int = 0, write: bool = True,
                 purge_step: int | None = None, new_graph: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.quiet = quiet
        self.epochs = epochs
        self.write = write  # False: a process other than torchrun's rank 0, which writes nothing
        self._tb = None
        if tensorboard and write:
            writer_class = summary_writer_class()
            if purge_step is not None:  # (new_graph: a run started again from scratch, which traces its own)
                try:
                    drop_events_from(Path(run_dir) / "tb", purge_step, graphs=new_graph)
                except Exception as e:  # (a damaged event file: the run goes on, TensorBoard may show both lines)
                    warnings.warn(f"could not remove the TensorBoard events at epochs >= {purge_step} that an earlier "
                                  f"invocation logged in {Path(run_dir) / 'tb'} ({type(e).__name__}: {e}): TensorBoard "
                                  "may show them beside this run's", stacklevel=2)
            # purge_step: TensorBoard hides the events of earlier invocations at steps >= it (a resume from an
            # earlier checkpoint, or a kill between an epoch's events and its checkpoint, logs those steps again)
            self._tb = writer_class(log_dir=str(Path(run_dir) / "tb"), purge_step=purge_step)

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        """Make metrics.jsonl hold exactly ``history`` (used on resume)."""
        if self.write:
            write_jsonl(self.path, history)

    def epoch(self, record: dict[str, Any]) -> None:
        if self.write:
            with self.path.open("a") as f:
                f.write(json_line(record))
        if not self.quiet:
            print(format_epoch(record, self.epochs), flush=True)
        if self._tb is not None:
            step = record["epoch"] + 1
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key, value, step)
            self._tb.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One TensorBoard scalar (nothing without ``tensorboard=True``).

        >>> import pathlib, tempfile
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> from finetune.logging import RunLog
        >>> run = pathlib.Path(tempfile.mkdtemp())
        >>> log = RunLog(run, tensorboard=True, quiet=True)
        >>> log.scalar("data/images_per_s", 250.0, step=1); log.close()
        >>> events = EventAccumulator(str(run / "tb")); _ = events.Reload()
        >>> [(e.step, e.value) for e in events.Scalars("data/images_per_s")]
        [(1, 250.0)]
        """
        if self._tb is not None:
            self._tb.add_scalar(tag, value, step)

    def images(self, tag: str, images: Any, step: int) -> None:
        """A batch of uint8 ``N x H x W x 3`` images as one TensorBoard image grid (nothing
        without ``tensorboard=True``).

        >>> import pathlib, tempfile, numpy as np
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> from finetune.logging import RunLog
        >>> run = pathlib.Path(tempfile.mkdtemp())
        >>> log = RunLog(run, tensorboard=True, quiet=True)
        >>> log.images("cam/val", np.zeros((2, 8, 8, 3), np.uint8), step=1); log.close()
        >>> events = EventAccumulator(str(run / "tb")); _ = events.Reload()
        >>> [e.step for e in events.Images("cam/val")]
        [1]
        """
        if self._tb is not None:
            self._tb.add_images(tag, images, step, dataformats="NHWC")
            self._tb.flush()

    def graph(self, model: Any, image: Any) -> str | None:
        """The model's graph, traced on one image (see :func:`finetune.features.add_model_graph`);
        returns why there is none, or None (also without ``tensorboard=True``)."""
        if self._tb is None:
            return None
        from finetune.features import add_model_graph

        return add_model_graph(self._tb, model, image)

    @property
    def tensorboard(self) -> bool:
        return self._tb is not None

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

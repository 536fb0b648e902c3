"""``finetune bench-data``: the input pipeline against plain DataLoader and DataLoaderX, in one run.

Every row is measured in this process on this machine, after a warm-up batch
(worker start-up is not counted), for about ``seconds``:

* the plain torchvision pipeline (ImageFolder, RandomResizedCrop + flip,
  ToTensor, Normalize, DataLoader) for several ``num_workers``; it gets one
  long epoch (a RandomSampler over many samples) and persistent workers, so
  epoch boundaries never cost it anything;
* the same wrapped in ``DataLoaderX`` (prefetch_generator's BackgroundGenerator;
  an equivalent thread with a queue of 1 when that package is missing);
* finetune's loader in each decode / cache / prefetch mode (natural epochs);
* the decode-only ceiling: one core decoding whole files, times the cores.

>>> rows = [Row("a", "x", 100.0), Row("b", "y", 300.0)]
>>> format_table(BenchReport("d", 224, 64, 2, 200.0, rows, "y")).splitlines()[2].split()
['a', 'x', '100', '0.50x', '50%']
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

WARMUP_BATCHES = 1


@dataclass(frozen=True)
class Row:
    """One measured pipeline: what it is, its settings, images per second.

    >>> from dataclasses import asdict
    >>> from finetune.data.bench import Row
    >>> asdict(Row("DataLoaderX", "num_workers=2", 812.5, note="prefetch_generator"))
    {'pipeline': 'DataLoaderX', 'settings': 'num_workers=2', 'images_per_s': 812.5, 'note': 'prefetch_generator'}
    """

    pipeline: str
    settings: str
    images_per_s: float
    note: str = ""


@dataclass
class BenchReport:
    """Every row of one ``bench-data`` run, the decode-only ceiling and the recommended flags.

    >>> import json
    >>> from finetune.data.bench import BenchReport, Row
    >>> rows = [Row("torchvision DataLoader", "num_workers=2", 300.0), Row("finetune decode=cpu", "workers=1", 500.0),
    ...         Row("finetune decode=cpu", "workers=2", 800.0)]
    >>> report = BenchReport("photos", 224, 64, 2, 1000.0, rows, "--workers 2 --decode cpu")
    >>> report.best("finetune").settings, report.best("torchvision").images_per_s
    ('workers=2', 300.0)
    >>> json.loads(report.to_json())["rows"][2]
    {'pipeline': 'finetune decode=cpu', 'settings': 'workers=2', 'images_per_s': 800.0, 'note': ''}
    """

    data: str
    img_size: int
    batch_size: int
    cores: int
    ceiling: float  # decode-only images/s on all cores
    rows: list[Row]
    recommended: str
    machine: dict[str, str] = field(default_factory=dict)

    def best(self, prefix: str) -> Row:
        """The fastest row whose pipeline name starts with ``prefix``."""
        return max((r for r in self.rows if r.pipeline.startswith(prefix)), key=lambda r: r.images_per_s)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def format_table(report: BenchReport) -> str:
    """The report as a text table: img/s, ratio to the best plain DataLoader, share of the ceiling.

    >>> from finetune.data.bench import BenchReport, Row, format_table
    >>> rows = [Row("torchvision DataLoader", "num_workers=2", 400.0), Row("finetune decode=cpu", "workers=2", 800.0)]
    >>> print(format_table(BenchReport("photos", 224, 64, 2, 1000.0, rows, "--workers 2")))
    pipeline                             settings            img/s  vs best ceiling
    -------------------------------------------------------------------------------
    torchvision DataLoader               num_workers=2         400    1.00x    40%
    finetune decode=cpu                  workers=2             800    2.00x    80%
    """
    plain = [r.images_per_s for r in report.rows if r.pipeline.startswith("torchvision")]
    ref = max(plain) if plain else report.ceiling
    lines = [f"{'pipeline':<36} {'settings':<16} {'img/s':>8} {'vs best':>8} {'ceiling':>7}",
             "-" * 79]
    for r in report.rows:
        share = r.images_per_s / report.ceiling if report.ceiling else 0.0
        lines.append(f"{r.pipeline:<36} {r.settings:<16} {r.images_per_s:>8.0f} {r.images_per_s / ref:>7.2f}x {share:>6.0%}"
                     + (f"  {r.note}" if r.note else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------- synthetic photo folders
def _photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like image: smooth colour fields at three scales plus sensor-like noise."""
    from PIL import Image

    img = np.full((height, width, 3), 128.0, np.float32)
    for cells, amp in ((4, 60.0), (16, 30.0), (64, 15.0)):
        small = rng.normal(0, amp, (cells, max(2, cells * width // height), 3)).astype(np.float32)
        img += np.stack([np.asarray(Image.fromarray(small[..., c]).resize((width, height), Image.BICUBIC))
                         for c in range(3)], -1)
    img += rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_photo(args: tuple[Path, int, int, int, int, int]) -> None:
    from PIL import Image

    path, width, height, seed, i, quality = args
    Image.fromarray(_photo(np.random.default_rng([seed, i]), width, height)).save(path, quality=quality)


def make_photo_folder(root: str | Path, *, count: int, width: int, height: int, classes: int = 4,
                      seed: int = 0, quality: int = 90, processes: int = 1) -> Path:
    """Write ``count`` photo-like JPEGs into ``root/class_k/`` (ImageFolder layout); reuse if complete.

    >>> import tempfile
    >>> root = make_photo_folder(tempfile.mkdtemp() + "/p", count=4, width=40, height=30, classes=2)
    >>> sorted(p.name for p in root.glob("class_*"))
    ['class_0', 'class_1']
    """
    root = Path(root)
    if (root / ".complete").exists():
        return root
    jobs = []
    for i in range(count):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"img_{i:05d}.jpg", width, height, seed, i, quality))
    if processes > 1:
        from finetune.data.pools import process_pool

        with process_pool(processes) as pool:
            pool.map(_write_photo, jobs, chunksize=4)
    else:
        for job in jobs:
            _write_photo(job)
    (root / ".complete").touch()
    return root


# --------------------------------------------------------------------------- baselines
def plain_dataset(root: str | Path, img_size: int) -> Any:
    """The standard torchvision training pipeline over an ImageFolder, of the image files finetune's
    loader reads (:func:`finetune.data.samples.scan_folder`): hidden files (``._x.jpg``), hidden folders
    and ``__MACOSX`` are not samples of either pipeline, so both decode the same images.

    >>> import tempfile
    >>> from finetune.data.bench import make_photo_folder, plain_dataset
    >>> root = make_photo_folder(tempfile.mkdtemp() + "/p", count=8, width=40, height=30, classes=2)
    >>> dataset = plain_dataset(root, 16)
    >>> image, label = dataset[0]
    >>> len(dataset), dataset.classes, image.shape, image.dtype, label
    (8, ['class_0', 'class_1'], torch.Size([3, 16, 16]), torch.float32, 0)
    """
    import warnings

    from torchvision import datasets, transforms

    from finetune.data.samples import scan_folder
    from finetune.errors import DataWarning

    tf = transforms.Compose([
        transforms.RandomResizedCrop(img_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    with warnings.catch_warnings():  # (run_bench's own scan_folder warned about them already)
        warnings.simplefilter("ignore", DataWarning)
        files = set(scan_folder(root).paths.tolist())
    return datasets.ImageFolder(str(root), transform=tf, allow_empty=True,
                                is_valid_file=lambda path: os.path.abspath(path) in files)


def background_generator_class() -> tuple[type, str]:
    """prefetch_generator's BackgroundGenerator, or a faithful stand-in (thread + Queue(1)).

    >>> from finetune.data.bench import background_generator_class
    >>> BackgroundGenerator, name = background_generator_class()
    >>> list(BackgroundGenerator(iter([1, 2, 3]))), name in ("prefetch_generator", "thread+Queue(1) stand-in")
    ([1, 2, 3], True)
    """
    try:
        from prefetch_generator import BackgroundGenerator

        return BackgroundGenerator, "prefetch_generator"
    except ImportError:
        import queue
        import threading

        class BackgroundGenerator(threading.Thread):  # same logic as prefetch_generator 1.0.3
            def __init__(self, generator: Iterator[Any], max_prefetch: int = 1):
                super().__init__(daemon=True)
                self.queue: queue.Queue[Any] = queue.Queue(max_prefetch)
                self.generator = generator
                self.start()

            def run(self) -> None:
                for item in self.generator:
                    self.queue.put(item)
                self.queue.put(None)

            def __next__(self) -> Any:
                item = self.queue.get()
                if item is None:
                    raise StopIteration
                return item

            def __iter__(self) -> Iterator[Any]:
                return self

        return BackgroundGenerator, "thread+Queue(1) stand-in"


def plain_loader(dataset: Any, batch_size: int, workers: int, *, background: bool = False,
                 num_samples: int = 10**7) -> Any:
    """DataLoader (or the notes' DataLoaderX) over ``dataset`` with one long shuffled epoch.

    >>> import tempfile
    >>> from finetune.data.bench import make_photo_folder, plain_dataset, plain_loader
    >>> root = make_photo_folder(tempfile.mkdtemp() + "/p", count=8, width=40, height=30, classes=2)
    >>> loader = plain_loader(plain_dataset(root, 16), batch_size=4, workers=0, background=True, num_samples=12)
    >>> type(loader).__name__, [images.shape[0] for images, _ in loader]        # 12 samples drawn from 8
    ('DataLoaderX', [4, 4, 4])
    """
    from torch.utils.data import DataLoader, RandomSampler

    cls: type = DataLoader
    if background:
        bg, _ = background_generator_class()

        class DataLoaderX(DataLoader):
            def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
                return bg(super().__iter__())

        cls = DataLoaderX
    return cls(dataset, batch_size=batch_size, sampler=RandomSampler(dataset, num_samples=num_samples),
               num_workers=workers, persistent_workers=workers > 0, drop_last=True,
               prefetch_factor=2 if workers else None)


def in_flight(workers: int, prefetch_factor: int) -> int:
    """Batches a DataLoader prepares before the first one is consumed: skipped as warm-up,
    or their burst would be counted as throughput.

    >>> in_flight(0, 2), in_flight(4, 2)
    (1, 9)
    """
    return workers * prefetch_factor + 1 if workers else 1


def rate_of(batches: Iterator[Any], seconds: float, warmup: int = 1, min_batches: int = 6) -> float:
    """Images per second from an iterator of (images, labels): after ``warmup`` batches,
    for at least ``seconds`` and ``min_batches`` batches.

    >>> import itertools, torch
    >>> from finetune.data.bench import rate_of
    >>> batches = itertools.repeat((torch.zeros(8, 3, 4, 4), torch.zeros(8)))
    >>> rate_of(batches, seconds=0.01) > 0, rate_of(iter([]), seconds=0.01)
    (True, 0.0)
    """
    n = k = 0
    start = None
    for i, (images, _labels) in enumerate(batches):
        if i + 1 == warmup:
            start = time.perf_counter()
            continue
        if start is None:
            continue
        n += int(images.shape[0])
        k += 1
        if k >= min_batches and time.perf_counter() - start >= seconds:
            break
    return n / (time.perf_counter() - start) if start else 0.0


def measure_plain(root: str | Path, img_size: int, batch_size: int, workers: int, seconds: float,
                  background: bool = False) -> float:
    """Images per second of the plain torchvision pipeline (:func:`plain_loader`) on ``root``.

    >>> import tempfile
    >>> from finetune.data.bench import make_photo_folder, measure_plain
    >>> root = make_photo_folder(tempfile.mkdtemp() + "/p", count=8, width=40, height=30, classes=2)
    >>> measure_plain(root, img_size=16, batch_size=2, workers=0, seconds=0.0) > 0
    True
    """
    loader = plain_loader(plain_dataset(root, img_size), batch_size, workers, background=background)
    it = iter(loader)
    try:
        return rate_of(it, seconds, warmup=in_flight(workers, 2))
    finally:
        # DataLoaderX's thread stays blocked on its full queue, holding the DataLoader iterator:
        # stop that iterator's workers here, or they would live on beside the next measurements
        inner = getattr(it, "generator", it)
        shutdown = getattr(inner, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del it, loader, inner


def decode_rate_one_core(paths: list[str], seconds: float) -> float:
    """Whole-file decodes per second on one core (torchvision.io for JPEG, else PIL; by content, as the
    loader decides: a PNG named ``.jpg`` is decoded by PIL).

    >>> import tempfile
    >>> from finetune.data.bench import decode_rate_one_core, make_photo_folder
    >>> root = make_photo_folder(tempfile.mkdtemp() + "/p", count=8, width=40, height=30, classes=2)
    >>> decode_rate_one_core([str(p) for p in root.rglob("*.jpg")], seconds=0.01) > 0
    True
    """
    from finetune.data.decode import DECODE_ERRORS, bad_reason, check_file, read_file

    def decode(p: str) -> None:
        try:
            data = read_file(p)
            if bytes(data[:3].tolist()) == b"\xff\xd8\xff":  # a JPEG, whatever its name says
                import torchvision.io

                torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)
                return
            reason = check_file(p)
        except DECODE_ERRORS as e:
            reason = bad_reason(e)
        if reason is not None:
            raise unreadable(p, reason)

    with _threads(1):
        for p in paths[:3]:
            decode(p)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            decode(paths[n % len(paths)])
            n += 1
    return n / (time.perf_counter() - start)


def unreadable(path: str, reason: str) -> Exception:
    """The error for a file bench-data cannot decode: the torchvision baseline stops on it too."""
    from finetune.errors import DataError

    return DataError(f"'{path}': {reason}: bench-data needs a folder whose images all decode (torchvision's "
                     "ImageFolder baseline cannot skip a bad file): remove it, or benchmark a copy without it")


class _threads:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


# --------------------------------------------------------------------------- ours
def measure_ours(root: str | Path, img_size: int, batch_size: int, workers: int, seconds: float, *,
                 decode: str = "cpu", cache: str | None = None, prefetch: str = "none",
                 device: str = "cpu") -> float:
    """finetune's loader on ``root``. Without a cache the file list is repeated so that one
    epoch is long (like the plain pipeline's); with one, natural epochs from the second on.

    >>> import tempfile
    >>> from finetune.data.bench import make_photo_folder, measure_ours
    >>> root = make_photo_folder(tempfile.mkdtemp() + "/p", count=8, width=40, height=30, classes=2)
    >>> measure_ours(root, 16, 2, workers=0, seconds=0.0) > 0, measure_ours(root, 16, 2, 0, 0.0, cache="ram") > 0
    (True, True)
    """
    from finetune.data.loader import build_loader
    from finetune.data.samples import scan_folder

    samples = scan_folder(root)
    if cache is None:
        repeat = max(1, -(-batch_size * 200 // len(samples)))
        samples = samples.subset(np.tile(np.arange(len(samples)), repeat))
    loader = build_loader(samples, train=True, img_size=img_size, batch_size=batch_size, workers=workers,
                          device=device, decode=decode, cache=cache, prefetch=prefetch, log=lambda m: None)
    try:
        epoch = 0
        if cache is not None:  # the first epoch fills the cache; measure from the second on
            for _ in loader:
                pass
            epoch = 1

        def endless() -> Iterator[Any]:
            e = epoch
            while True:
                loader.set_epoch(e)
                yield from loader
                e += 1

        rate = rate_of(endless(), seconds, warmup=in_flight(workers, 4))
        if device == "cuda":
            torch.cuda.synchronize()
        return rate
    finally:
        loader.close()


def default_workers(cores: int) -> list[int]:
    """num_workers to try for every pipeline: 0 .. max(4, cores) (capped at 16).

    >>> default_workers(2)
    [0, 1, 2, 3, 4]
    """
    top = min(16, max(4, cores))
    return list(range(top + 1)) if top <= 4 else [0, 1, 2, 4, 8, 12, 16][: 3 + top // 4]


def run_bench(data: str | Path, *, img_size: int = 224, batch_size: int = 64, seconds: float = 3.0,
              workers: list[int] | None = None, full: bool = True, cache: bool = True, repeats: int = 2,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every pipeline on the ImageFolder at ``data``; see the module docstring.

    Each configuration is measured ``repeats`` times, round-robin over all of
    them, and keeps its best run: on a shared machine, load from other
    processes then hits every pipeline alike instead of whichever ran at the time.
    ``full=False`` measures DataLoaderX only at num_workers 1 .. cores.

    >>> import tempfile
    >>> from finetune.data.bench import make_photo_folder, run_bench
    >>> root = make_photo_folder(tempfile.mkdtemp() + "/p", count=8, width=40, height=30, classes=2)
    >>> report = run_bench(root, img_size=16, batch_size=2, seconds=0.01, workers=[0], full=False, cache=False,
    ...                    repeats=1)
    >>> [r.pipeline for r in report.rows][:4]
    ['torchvision DataLoader', 'DataLoaderX', 'finetune decode=cpu', 'finetune decode=cpu prefetch=thread']
    >>> report.recommended.startswith("--workers 0"), all(r.images_per_s > 0 for r in report.rows)
    (True, True)
    """
    import math

    from finetune.data.decode import DECODE_ERRORS
    from finetune.data.samples import scan_folder
    from finetune.errors import ConfigError

    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"seconds must be a number above 0 (seconds per measurement), got {seconds!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be a whole number of at least 1, got {repeats!r}")
    if workers is not None and any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in workers):
        raise ConfigError(f"workers must be whole numbers of at least 0, got {list(workers)}")
    say = progress or (lambda msg: None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = workers if workers is not None else default_workers(cores)
    samples = scan_folder(data)
    paths = [samples.path(i) for i in range(min(len(samples), 200))]
    _, bg_name = background_generator_class()
    cuda = torch.cuda.is_available()
    ours_workers = [w for w in workers if w <= cores + 1]
    bg_workers = workers if full else ([w for w in workers if 1 <= w <= cores] or workers)
    configs: list[tuple[str, str, str, Callable[[], float]]] = []

    def cfg(pipeline: str, settings: str, fn: Callable[[], float], note: str = "") -> None:
        configs.append((pipeline, settings, note, fn))

    for w in workers:
        cfg("torchvision DataLoader", f"num_workers={w}", lambda w=w: measure_plain(data, img_size, batch_size, w, seconds))
        if w in bg_workers:
            cfg("DataLoaderX", f"num_workers={w}",
                lambda w=w: measure_plain(data, img_size, batch_size, w, seconds, background=True), bg_name)
        if w in ours_workers:
            cfg("finetune decode=cpu", f"workers={w}", lambda w=w: measure_ours(data, img_size, batch_size, w, seconds))
            cfg("finetune decode=cpu prefetch=thread", f"workers={w}",
                lambda w=w: measure_ours(data, img_size, batch_size, w, seconds, prefetch="thread"))
            if cache:
                cfg("finetune cache=ram (epoch 2+)", f"workers={w}",
                    lambda w=w: measure_ours(data, img_size, batch_size, w, seconds, cache="ram"))
            if cuda:
                cfg("finetune decode=gpu (cuda)", f"workers={w}",
                    lambda w=w: measure_ours(data, img_size, batch_size, w, seconds, decode="gpu", device="cuda"))
                cfg("finetune decode=cpu (cuda)", f"workers={w}",
                    lambda w=w: measure_ours(data, img_size, batch_size, w, seconds, device="cuda"))
    if cuda and cache:
        cfg("finetune cache=gpu (epoch 2+)", "workers=0",
            lambda: measure_ours(data, img_size, batch_size, 0, seconds, cache="gpu", device="cuda"))
    best: dict[int, float] = {}
    per_core = 0.0
    for r in range(repeats):
        per_core = max(per_core, decode_rate_one_core(paths, min(seconds, 2.0)))
        say(f"round {r + 1}/{repeats}: decode-only {per_core:.0f} img/s on one core")
        for i, (pipeline, settings, _note, fn) in enumerate(configs):
            try:
                rate = fn()
            except DECODE_ERRORS as e:  # a bad file beyond the ones decode_rate_one_core read
                raise unreadable(str(data), " ".join(str(e).split())[-300:]) from e
            best[i] = max(best.get(i, 0.0), rate)
            say(f"  {pipeline:<36} {settings:<16} {rate:8.0f} img/s")
    rows = [Row(p, s, best[i], n) for i, (p, s, n, _fn) in enumerate(configs)]
    ceiling = per_core * cores
    uncached = [r for r in rows if r.pipeline.startswith("finetune") and "cache" not in r.pipeline]
    top = max(uncached, key=lambda r: r.images_per_s)
    decode_mode = "gpu" if "decode=gpu" in top.pipeline else "cpu"
    recommended = f"--workers {top.settings.split('=')[1]} --decode {decode_mode}"
    if "prefetch=thread" in top.pipeline:
        recommended += " --prefetch thread"
    cached = [r for r in rows if "cache=" in r.pipeline]
    if cached:
        c = max(cached, key=lambda r: r.images_per_s)
        recommended += f"; when the data fits in memory: --cache {'gpu' if 'cache=gpu' in c.pipeline else 'ram'} --{c.settings.replace('=', ' ')}"
    machine = {"cpu": _cpu_name(), "cores": str(cores), "torch": torch.__version__,
               "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    if cuda:
        machine["gpu"] = torch.cuda.get_device_name()
    return BenchReport(str(data), img_size, batch_size, cores, ceiling, rows, recommended, machine)


def bench_root(data: str | Path) -> Path:
    """The ImageFolder root to benchmark: ``data``, its ``train/`` if it has one; 'shapes' works too.

    >>> import pathlib, tempfile
    >>> from finetune.data.bench import bench_root
    >>> data = pathlib.Path(tempfile.mkdtemp()); (data / "train" / "cat").mkdir(parents=True)
    >>> bench_root(data) == data / "train", bench_root(data / "train") == data / "train"
    (True, True)
    >>> bench_root(data / "nothing")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.DataError: bench-data needs an image folder (class sub-folders), got '.../nothing'
    """
    from finetune.errors import DataError

    if str(data) == "shapes":
        from finetune.data.shapes import shapes_root

        data = shapes_root()
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"bench-data needs an image folder (class sub-folders), got '{data}'")
    return root / "train" if (root / "train").is_dir() else root


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

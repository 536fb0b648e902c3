"""The input pipeline (finetune.data.loader and friends): semantics, determinism, resume,
bad files, caches, the probe, and the GPU paths' logic (run on CPU here; on CUDA in the GPU check)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.data.bench import _photo, format_table, make_photo_folder
from finetune.data.decode import decode_crop, decode_eval
from finetune.data.loader import Loader, background, build_loader, scan_bad_files
from finetune.data.normalize import Normalizer
from finetune.data.samples import Samples, scan_folder
from finetune.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropBox,
    crop_resize_flip_float,
    resize_hwc,
)
from finetune.errors import ConfigError, DataError

SIZE = 32
SIZES = [(96, 72), (64, 80), (120, 90), (200, 150)]
quiet = {"log": lambda msg: None}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 8 photo-like images of mixed sizes: JPEG (one grayscale) and one PNG."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir()
        for i in range(8):
            w, h = SIZES[(c + i) % len(SIZES)]
            img = Image.fromarray(_photo(rng, w, h))
            if c == 0 and i == 0:
                img.convert("L").save(root / f"class{c}" / f"{i}.jpg", quality=90)
            elif c == 1 and i == 0:
                img.save(root / f"class{c}" / f"{i}.png")
            else:
                img.save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def samples(folder: Path) -> Samples:
    return scan_folder(folder)


def batches(loader: Loader, n: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for images, labels in loader:
        out.append((images.clone(), labels.clone()))
        if n is not None and len(out) == n:
            break
    return out


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b, strict=True))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- output semantics
def test_batches_have_shape_dtype_and_labels(samples: Samples) -> None:
    loader = build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, **quiet)
    assert len(loader) == 3 and loader.classes == ("class0", "class1", "class2")
    got = batches(loader)
    assert len(got) == 3
    for images, labels in got:
        assert images.shape == (8, 3, SIZE, SIZE) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
    # every sample once per epoch, with its folder's label
    all_labels = torch.cat([lab for _, lab in got])
    assert sorted(all_labels.tolist()) == sorted(samples.labels.tolist())


def test_normalisation_uses_mean_and_std(tmp_path: Path) -> None:
    colour = (200, 100, 50)
    (tmp_path / "a").mkdir()
    Image.new("RGB", (40, 40), colour).save(tmp_path / "a" / "x.png")
    loader = build_loader(scan_folder(tmp_path), train=False, img_size=16, batch_size=1, workers=0, **quiet)
    images, labels = next(iter(loader))
    expected = [(c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(images[0].mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    assert labels.tolist() == [0]


def test_channels_last_has_same_values(samples: Samples) -> None:
    a = build_loader(samples, train=False, img_size=SIZE, batch_size=8, workers=0, **quiet)
    b = build_loader(samples, train=False, img_size=SIZE, batch_size=8, workers=0, channels_last=True, **quiet)
    (xa, _), (xb, _) = next(iter(a)), next(iter(b))
    assert xb.is_contiguous(memory_format=torch.channels_last) and not xa.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(xa, xb)


@pytest.mark.parametrize("dct", [None, False, True])
def test_eval_matches_torchvision_resize_center_crop(samples: Samples, dct: bool | None) -> None:
    """By default (None) eval decodes at full size: torchvision's result within rounding."""
    from torchvision import transforms

    tv = transforms.Compose([transforms.Resize(int(SIZE / 0.875)), transforms.CenterCrop(SIZE)])
    loader = build_loader(samples, train=False, img_size=SIZE, batch_size=len(samples), workers=0,
                          dct_scaling=dct, **quiet)
    images, _ = next(iter(loader))
    ours = to_uint8(images).permute(0, 2, 3, 1).numpy().astype(int)
    for i in range(len(samples)):
        ref = np.asarray(tv(Image.open(samples.path(i)).convert("RGB"))).astype(int)
        diff = np.abs(ours[i] - ref)
        if dct:  # libjpeg's 1/2-scale decode stands in for part of the resize: close, not exact
            assert diff.mean() < 8, (samples.path(i), diff.mean())
        else:  # within rounding (normalise -> un-normalise adds its own)
            assert diff.max() <= 2 and diff.mean() < 0.5, (samples.path(i), diff.max(), diff.mean())


def test_train_crop_matches_torchvision_crop_then_resize(samples: Samples) -> None:
    path = samples.path(3)
    box = CropBox(5, 7, 40, 50)
    ours = resize_hwc(decode_crop(path, lambda w, h: box, SIZE), (SIZE, SIZE)).numpy().astype(int)
    img = Image.open(path).convert("RGB").crop((7, 5, 57, 45)).resize((SIZE, SIZE), Image.BILINEAR)
    assert np.abs(ours - np.asarray(img).astype(int)).max() <= 1


def test_dct_reduction_decodes_big_crops_smaller(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.fromarray(_photo(np.random.default_rng(1), 800, 600)).save(path, quality=90)
    whole = decode_crop(str(path), lambda w, h: CropBox(0, 0, h, w), 100)  # 600 / 4 >= 100 -> 1/4 scale
    assert tuple(whole.shape) == (150, 200, 3)
    exact = decode_crop(str(path), lambda w, h: CropBox(0, 0, h, w), 400)  # no reduction
    assert tuple(exact.shape) == (600, 800, 3)
    small = resize_hwc(whole, (50, 50)).float()
    ref = resize_hwc(exact, (50, 50)).float()
    assert (small - ref).abs().mean() < 3


@pytest.mark.parametrize("size", [(1001, 751), (801, 599)])
def test_dct_reduction_scales_as_planned_when_sides_are_not_multiples(tmp_path: Path, size: tuple[int, int]) -> None:
    """PIL picks the scale from rounded-down ratios: odd sides still decode at the planned 1/4."""
    path = tmp_path / "odd.jpg"
    Image.fromarray(_photo(np.random.default_rng(1), *size)).save(path, quality=90)
    whole = decode_crop(str(path), lambda w, h: CropBox(0, 0, h, w), 100)  # 599..751 / 4 >= 100 -> 1/4 scale
    assert tuple(whole.shape) == (-(-size[1] // 4), -(-size[0] // 4), 3)
    centre = decode_eval(str(path), 64)  # the centre region (>= 4 x 64 px) decodes at 1/4 too: close, not exact
    assert tuple(centre.shape) == (64, 64, 3)
    assert (centre.float() - decode_eval(str(path), 64, dct=False).float()).abs().mean() < 8


# --------------------------------------------------------------------------- determinism, order, resume
@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches_whatever_the_workers(samples: Samples, workers: int) -> None:
    ref = batches(build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, seed=3, **quiet))
    loader = build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=workers, seed=3, **quiet)
    assert same(batches(loader), ref)
    other = batches(build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, seed=4, **quiet))
    assert not same(other, ref)


def test_set_epoch_changes_order_and_repeats_it(samples: Samples) -> None:
    loader = build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, **quiet)
    e0 = batches(loader)
    assert same(batches(loader), e0)  # iterating a finished epoch again replays it
    loader.set_epoch(1)
    e1 = batches(loader)
    loader.set_epoch(0)
    assert same(batches(loader), e0)
    assert torch.cat([lab for _, lab in e0]).tolist() != torch.cat([lab for _, lab in e1]).tolist()


def test_eval_order_is_file_order(samples: Samples) -> None:
    loader = build_loader(samples, train=False, img_size=SIZE, batch_size=5, workers=0, **quiet)
    assert len(loader) == 5  # 24 images: no drop_last in eval
    labels = torch.cat([lab for _, lab in loader])
    assert labels.tolist() == samples.labels.tolist()


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_mid_epoch_gives_the_uninterrupted_batches(samples: Samples, workers: int) -> None:
    ref = build_loader(samples, train=True, img_size=SIZE, batch_size=4, workers=0, seed=1, **quiet)
    ref.set_epoch(2)
    full = batches(ref)
    first = build_loader(samples, train=True, img_size=SIZE, batch_size=4, workers=workers, seed=1, **quiet)
    first.set_epoch(2)
    head = batches(first, 2)
    state = first.state_dict()
    assert state == {"epoch": 2, "position": 2, "seed": 1}
    again = build_loader(samples, train=True, img_size=SIZE, batch_size=4, workers=workers, seed=1, **quiet)
    again.load_state_dict(state)
    tail = batches(again)
    assert same(head + tail, full)
    wrong = build_loader(samples, train=True, img_size=SIZE, batch_size=4, workers=0, seed=9, **quiet)
    with pytest.raises(DataError, match="seed"):
        wrong.load_state_dict(state)


# --------------------------------------------------------------------------- bad files
def copy_of(folder: Path, root: Path) -> Path:
    for src in sorted(folder.rglob("*.*")):
        dst = root / src.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    return root


@pytest.fixture()
def with_bad_files(folder: Path, tmp_path: Path) -> Path:
    root = copy_of(folder, tmp_path / "data")
    good = (root / "class2" / "1.jpg").read_bytes()
    (root / "class2" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "class1" / "notes.jpg").write_text("not an image")
    (root / "class0" / "empty.jpg").write_bytes(b"")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_are_skipped_counted_and_listed(with_bad_files: Path, tmp_path: Path, workers: int) -> None:
    s = scan_folder(with_bad_files)
    loader = build_loader(s, train=False, img_size=SIZE, batch_size=9, workers=workers, **quiet)
    n = sum(len(lab) for _, lab in loader)
    assert n == len(s) - 3 and loader.bad_count == 3
    written = loader.write_bad_files(tmp_path / "run")
    assert written is not None and written.name == "bad_files.txt"
    listed = written.read_text()
    for name in ("truncated.jpg", "notes.jpg", "empty.jpg"):
        assert name in listed
    # training skips them too, and a good batch stays deterministic
    a = build_loader(s, train=True, img_size=SIZE, batch_size=9, workers=workers, **quiet)
    b = build_loader(s, train=True, img_size=SIZE, batch_size=9, workers=0, **quiet)
    assert same(batches(a), batches(b)) and a.bad_count == 3


def test_bad_file_list_keeps_names_that_are_not_utf8(folder: Path, tmp_path: Path) -> None:
    root = copy_of(folder, tmp_path / "data")
    raw_name = os.path.join(os.fsencode(root / "class1"), b"caf\xe9.jpg")  # Latin-1 bytes, as old archives have
    with open(raw_name, "wb") as f:
        f.write(b"not an image")
    loader = build_loader(scan_folder(root), train=False, img_size=SIZE, batch_size=9, workers=0, **quiet)
    sum(len(lab) for _, lab in loader)
    [bad] = loader.bad_file_list()
    assert bad.reason == "not an image (cannot identify image file)"
    written = loader.write_bad_files(tmp_path / "run")
    assert written is not None and written.read_bytes().startswith(raw_name + b"\t")


def test_strict_data_fails_before_training_with_the_full_list(with_bad_files: Path) -> None:
    s = scan_folder(with_bad_files)
    assert {Path(b.path).name for b in scan_bad_files(s)} == {"truncated.jpg", "notes.jpg", "empty.jpg"}
    with pytest.raises(DataError) as e:
        build_loader(s, train=True, img_size=SIZE, batch_size=8, workers=0, strict=True, **quiet)
    for name in ("truncated.jpg", "notes.jpg", "empty.jpg"):
        assert name in str(e.value)
    assert "3 of" in str(e.value)


class _CrashingDataset:
    """A dataset object whose item 5 kills the worker process (like a decoder segfault)."""

    classes = ("a",)

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        if i == 5:
            os._exit(3)
        return Image.new("RGB", (20, 20), (i * 10, 0, 0)), 0


@pytest.mark.parametrize("start_method", [None, "spawn"])
def test_worker_crash_is_an_error_naming_the_item(start_method: str | None) -> None:
    loader = build_loader(_CrashingDataset(), train=False, img_size=8, batch_size=4, workers=1,
                          start_method=start_method, **quiet)
    with pytest.raises(DataError, match="dataset item 5"):
        for _ in loader:
            pass
    loader.close()


class _KilledDataset(_CrashingDataset):
    """Item 5 gets SIGKILL, as from the out-of-memory killer."""

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        if i == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(i)


def test_a_worker_killed_by_sigkill_is_not_blamed_on_the_file() -> None:
    loader = build_loader(_KilledDataset(), train=False, img_size=8, batch_size=4, workers=1, **quiet)
    with pytest.raises(DataError, match=r"was killed \(SIGKILL, what the out-of-memory killer sends\) while "
                                        r"decoding 'dataset item 5' .*: if memory is short, use fewer workers \(--workers\)"):
        for _ in loader:
            pass
    loader.close()


def test_samples_are_numpy_arrays_not_python_lists(samples: Samples) -> None:
    loader = build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, **quiet)
    paths = loader.dataset.samples.paths  # (two numpy arrays: the paths' bytes and where each ends)
    assert isinstance(paths.data, np.ndarray) and isinstance(paths.ends, np.ndarray) and paths.data.dtype == np.uint8
    assert paths.tolist() == [samples.path(i) for i in range(len(samples))]


# --------------------------------------------------------------------------- caches
def test_ram_cache_eval_equals_uncached(samples: Samples) -> None:
    plain = batches(build_loader(samples, train=False, img_size=SIZE, batch_size=8, workers=0, **quiet))
    loader = build_loader(samples, train=False, img_size=SIZE, batch_size=8, workers=2, cache="ram", **quiet)
    assert loader.cache == "ram"
    assert same(batches(loader), plain)  # first epoch: filled by the workers
    assert all(loader.store.filled(i) for i in range(len(samples)))
    loader.set_epoch(1)
    assert same(batches(loader), plain)  # later epochs: from the store


def test_ram_cache_train_is_deterministic_and_fill_independent(samples: Samples) -> None:
    a = build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=2, cache="ram", **quiet)
    batches(a)  # epoch 0 fills the store
    a.set_epoch(1)
    warm = batches(a)
    b = build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, cache="ram", **quiet)
    b.set_epoch(1)
    assert same(batches(b), warm)  # epoch 1 on a cold store, other worker count: same batches
    # stored images have their shorter side capped at cache_side (default img_size / 0.875)
    assert max(min(int(h), int(w)) for h, w in zip(a.store.heights, a.store.widths, strict=True)) <= int(SIZE / 0.875)


def test_cache_that_does_not_fit_falls_back(samples: Samples) -> None:
    said: list[str] = []
    loader = build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, cache="ram",
                          cache_max_bytes=100, log=said.append)
    assert loader.cache is None and "not caching" in said[0]
    assert len(batches(loader)) == 3


def test_gpu_cache_and_gpu_decode_need_cuda(samples: Samples) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(DataError, match="cuda"):
        build_loader(samples, train=True, img_size=SIZE, workers=0, decode="gpu", **quiet)
    with pytest.raises(DataError, match="cuda"):
        build_loader(samples, train=True, img_size=SIZE, workers=0, cache="gpu", **quiet)


def test_cuda_prefetch_on_a_cpu_device_is_refused_not_ignored(samples: Samples) -> None:
    with pytest.raises(DataError, match="prefetch='cuda' needs device='cuda': use prefetch='thread' or 'none'"):
        build_loader(samples, train=True, img_size=SIZE, workers=0, device="cpu", prefetch="cuda", **quiet)


# --------------------------------------------------------------------------- GPU code paths, run on CPU
def _loader(samples: Samples, **kw) -> Loader:
    args = dict(train=True, img_size=SIZE, batch_size=8, workers=0, device="cpu", seed=0, drop_last=True,
                channels_last=False, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_scale=(0.08, 1.0), log=lambda m: None)
    return Loader(samples, **{**args, **kw})


@pytest.mark.parametrize("train", [True, False])
def test_device_decode_path_matches_cpu_decode(samples: Samples, train: bool) -> None:
    cpu = batches(_loader(samples, train=train, dct_scaling=False))
    dev = batches(_loader(samples, train=train, decode="gpu", workers=1))
    assert len(cpu) == len(dev)
    for (xa, la), (xb, lb) in zip(cpu, dev, strict=True):
        assert torch.equal(la, lb)
        diff = (to_uint8(xa).int() - to_uint8(xb).int()).abs().float()
        assert diff.mean() < 3, diff.mean()  # same crops and flips; float vs uint8 resize rounding


def test_device_store_path_matches_ram_cache(samples: Samples) -> None:
    ram = _loader(samples, cache="ram")
    batches(ram)
    ram.set_epoch(1)
    ref = batches(ram)
    dev = _loader(samples, cache="gpu", cache_max_bytes=10**9)
    assert dev.cache == "gpu"
    dev.set_epoch(1)
    got = batches(dev)
    for (xa, la), (xb, lb) in zip(ref, got, strict=True):
        assert torch.equal(la, lb)
        assert (to_uint8(xa).int() - to_uint8(xb).int()).abs().float().mean() < 2


def test_crop_resize_flip_float_matches_uint8_path() -> None:
    x = torch.randint(0, 256, (60, 80, 3), dtype=torch.uint8)
    box = CropBox(3, 5, 50, 40)
    ref = resize_hwc(x[3:53, 5:45], (20, 20)).flip(1).permute(2, 0, 1).float()
    got = crop_resize_flip_float(x.permute(2, 0, 1), box, 20, True)
    assert (ref - got).abs().max() <= 1.0


# --------------------------------------------------------------------------- feeding: normaliser, prefetch, probe
def test_normalizer_recycles_only_released_buffers() -> None:
    norm = Normalizer(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"), channels_last=False)
    x = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    a = norm(x)
    b = norm(x)
    assert a.data_ptr() != b.data_ptr()  # a is still held: not reused
    ptr = a.data_ptr()
    del a
    assert norm(x).data_ptr() == ptr  # released: reused
    ref = (x.permute(0, 3, 1, 2).float() - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255) / (
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)
    assert torch.allclose(b, ref, atol=1e-5)
    cl = Normalizer(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"), channels_last=True)(x)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.allclose(cl, ref, atol=1e-5)


def test_dropped_loader_is_freed_without_the_garbage_collector(samples: Samples) -> None:
    """No reference cycle inside the loader: dropped, it goes at once, and with it its workers
    (a cycle would leave it to the collector, which closes the workers' queues before the
    DataLoader sends them the stop signal: a 5 s join timeout per worker)."""
    import gc
    import weakref

    loader = build_loader(samples, train=True, img_size=SIZE, batch_size=4, workers=2, **quiet)
    it = iter(loader)
    next(it)
    workers = list(loader._dataloader._iterator._workers)
    ref = weakref.ref(loader)
    gc.disable()
    try:
        del it, loader
        assert ref() is None
    finally:
        gc.enable()
    assert [w.exitcode for w in workers] == [0, 0]


def test_loader_in_a_garbage_cycle_stops_its_workers_without_the_join_timeout(samples: Samples) -> None:
    """Inside a cycle of the caller's objects, collected by gc: the workers still get the stop
    signal, so the collection does not wait out the DataLoader's join timeout per worker."""
    import gc
    import time

    from torch.utils.data._utils import MP_STATUS_CHECK_INTERVAL

    loader = build_loader(samples, train=True, img_size=SIZE, batch_size=4, workers=2, **quiet)
    it = iter(loader)
    next(it)
    workers = list(loader._dataloader._iterator._workers)
    owner = {"loader": loader}
    loader.owner = owner
    del it, loader, owner
    start = time.monotonic()
    gc.collect()
    assert time.monotonic() - start < MP_STATUS_CHECK_INTERVAL  # a hang check, not a speed claim
    assert [w.exitcode for w in workers] == [0, 0]


def test_thread_prefetch_gives_the_same_batches(samples: Samples) -> None:
    ref = batches(build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, **quiet))
    got = batches(build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, prefetch="thread", **quiet))
    assert same(got, ref)


def test_background_passes_errors_and_stops_early() -> None:
    def items():
        yield 1
        raise ValueError("boom")

    it = background(items())
    assert next(it) == 1
    with pytest.raises(ValueError, match="boom"):
        next(it)
    endless = background(iter(range(10**9)))
    assert next(endless) == 0
    endless.close()  # the thread stops instead of running on


def test_workers_auto_probes_and_says_what_it_picked(tmp_path: Path) -> None:
    root = make_photo_folder(tmp_path / "p", count=48, width=64, height=48, classes=2)
    said: list[str] = []
    loader = build_loader(scan_folder(root), train=True, img_size=SIZE, batch_size=8, workers="auto",
                          probe_seconds=0.2, log=said.append)
    assert loader.probe is not None and len(loader.probe.trials) >= 3
    assert loader.workers == loader.probe.workers and f"picked {loader.workers} workers" in said[0]
    tiny = build_loader(scan_folder(root), train=True, img_size=SIZE, batch_size=32, workers="auto", **quiet)
    assert tiny.workers == 0 and tiny.probe.trials == ()


def test_augment_is_seeded_per_sample(samples: Samples) -> None:
    a = batches(build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, augment="trivialaugment", **quiet))
    b = batches(build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=1, augment="trivialaugment", **quiet))
    plain = batches(build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, **quiet))
    assert same(a, b) and not same(a, plain)


def test_dataset_object_source() -> None:
    class Tiny:
        classes = ("x", "y")

        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int):
            return Image.new("RGB", (30, 20), (i * 40, 0, 0)), i % 2

    loader = build_loader(Tiny(), train=False, img_size=8, batch_size=3, workers=0, **quiet)
    got = batches(loader)
    assert loader.classes == ("x", "y") and torch.cat([lab for _, lab in got]).tolist() == [0, 1, 0, 1, 0, 1]


def test_decode_eval_is_exact_without_reduction(samples: Samples) -> None:
    from torchvision import transforms

    path = samples.path(5)
    ref = np.asarray(transforms.Compose([transforms.Resize(36), transforms.CenterCrop(SIZE)])(Image.open(path).convert("RGB")))
    assert np.abs(decode_eval(path, SIZE).numpy().astype(int) - ref.astype(int)).max() <= 1


# --------------------------------------------------------------------------- bench-data
def test_bench_dataloaderx_measurement_leaves_no_workers_behind(tmp_path: Path) -> None:
    """DataLoaderX's thread stays blocked on its queue after a measurement; its DataLoader's
    workers must not live on beside the next measurements."""
    import multiprocessing as mp

    from finetune.data.bench import measure_plain

    root = make_photo_folder(tmp_path / "p", count=16, width=40, height=30, classes=2)
    assert measure_plain(root, img_size=16, batch_size=2, workers=2, seconds=0.1, background=True) > 0
    for child in mp.active_children():
        child.join(timeout=5)
    assert mp.active_children() == []


def test_bench_table_and_cli_help_does_not_import_torch() -> None:
    from finetune.data.bench import BenchReport, Row

    report = BenchReport("d", 224, 64, 2, 1000.0, [Row("torchvision DataLoader", "num_workers=2", 400.0),
                                                   Row("finetune decode=cpu", "workers=2", 1000.0)], "--workers 2")
    table = format_table(report)
    assert "2.50x" in table and "100%" in table
    code = "import sys; from finetune.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_bench_data_cli_runs(tmp_path: Path) -> None:
    from finetune.cli import main

    root = make_photo_folder(tmp_path / "p", count=40, width=64, height=48, classes=2)
    assert main(["bench-data", "--data", str(root), "--img-size", "32", "--batch-size", "8",
                 "--seconds", "0.2", "--workers", "0", "1", "--json"]) == 0


# --------------------------------------------------------------------------- CUDA (benchmarks/gpu_check.sh)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
def test_cuda_decode_gpu_close_to_cpu_and_on_device(samples: Samples) -> None:
    # the same device code path with libjpeg on CPU: only nvjpeg's IDCT/upsampling differs
    # (every loader is closed here: workers forked after CUDA started must not outlive the test)
    with _loader(samples, decode="gpu", workers=1) as ld:
        same_path = batches(ld)
    with _loader(samples, dct_scaling=False) as ld:
        cpu = batches(ld)
    with _loader(samples, decode="gpu", workers=1, device="cuda", channels_last=True) as ld:
        got = batches(ld)
    assert got[0][0].device.type == "cuda" and got[0][0].is_contiguous(memory_format=torch.channels_last)
    assert len(got) == len(cpu) == len(same_path)
    for (xa, la), (xs, _), (xb, lb) in zip(cpu, same_path, got, strict=True):
        assert torch.equal(la, lb.cpu())
        gpu_u8 = to_uint8(xb.cpu()).int()
        assert (to_uint8(xs).int() - gpu_u8).abs().float().mean() < 2.5
        assert (to_uint8(xa).int() - gpu_u8).abs().float().mean() < 5


@pytest.mark.cuda
@cuda
def test_cuda_prefetch_and_gpu_cache_match_cpu(samples: Samples) -> None:
    common = dict(train=True, img_size=SIZE, batch_size=8, **quiet)
    with build_loader(samples, workers=0, **common) as ld:
        ref = batches(ld)
    with build_loader(samples, workers=2, device="cuda", prefetch="none", **common) as ld:
        plain = batches(ld)
    with build_loader(samples, workers=2, device="cuda", prefetch="cuda", **common) as ld:
        pre = batches(ld)
    assert same([(x.cpu(), y.cpu()) for x, y in pre], [(x.cpu(), y.cpu()) for x, y in plain])
    assert same([(x.cpu(), y.cpu()) for x, y in plain], ref) or all(
        torch.allclose(x.cpu(), y, atol=1e-5) for (x, _), (y, _) in zip(plain, ref, strict=True))
    with build_loader(samples, workers=0, cache="ram", **common) as ram, \
            build_loader(samples, workers=1, device="cuda", cache="gpu", **common) as gpu:
        assert gpu.cache == "gpu" and gpu.store.data.device.type == "cuda"
        for ld in (ram, gpu):
            batches(ld)
            ld.set_epoch(1)
        for (xa, la), (xb, lb) in zip(batches(ram), batches(gpu), strict=True):
            assert torch.equal(la, lb.cpu())
            assert (to_uint8(xa).int() - to_uint8(xb.cpu()).int()).abs().float().mean() < 2


def test_buffer_pool_reuses_only_buffers_given_back() -> None:
    from finetune.data.loader import POOL_SLOTS, BufferPool

    pool = BufferPool(workers=0)
    a, slot_a = pool.take((2, 3))
    b, slot_b = pool.take((2, 3))
    assert slot_a != slot_b and a.data_ptr() != b.data_ptr()
    pool.give_back(slot_a)
    c, slot_c = pool.take((1, 3))  # a smaller batch (the last of an epoch) fits in a free buffer
    assert slot_c == slot_a and c.data_ptr() == a.data_ptr()
    held = [pool.take((2, 3)) for _ in range(POOL_SLOTS)]
    assert held[-1][1] == (-1, -1)  # every slot in use: a fresh buffer, never one still being read
    assert len({t.data_ptr() for t, _ in held} | {b.data_ptr(), c.data_ptr()}) == len(held) + 2  # none twice


# --------------------------------------------------------------------------- how workers start
def test_spawned_workers_give_the_same_batches(samples: Samples) -> None:
    """Spawned workers (not a copy of this process, as under torchrun) see its shared memory:
    the batch buffers it gives back, the RAM cache they fill, the slots that name a crash."""
    ref = build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=0, cache="ram", **quiet)
    loader = build_loader(samples, train=True, img_size=SIZE, batch_size=8, workers=2, cache="ram",
                          start_method="spawn", **quiet)
    assert loader._dataloader.multiprocessing_context.get_start_method() == "spawn"
    for epoch in (0, 1):
        ref.set_epoch(epoch)
        loader.set_epoch(epoch)
        assert same(batches(loader), batches(ref))
        assert int(loader._pool.flags.sum()) == 0  # every buffer given back, seen by the workers
    assert all(loader.store.filled(i) for i in range(len(samples)))  # filled by the workers in epoch 0
    assert sorted(loader._slots[:, 0].tolist()) == sorted(w.pid for w in loader._dataloader._iterator._workers)
    loader.close()


def test_a_shard_of_several_processes_spawns_its_workers(samples: Samples) -> None:
    """A torchrun process must not fork itself (its collective threads can hang the child: CPython
    gh-112275), so a sharded loader's workers are spawned; one process keeps the default."""
    alone = build_loader(samples, train=False, img_size=SIZE, batch_size=4, workers=1, **quiet)
    assert alone._dataloader.multiprocessing_context.get_start_method() == "fork"
    shard = build_loader(samples, train=False, img_size=SIZE, batch_size=4, workers=1, shard=(1, 2), **quiet)
    assert shard._dataloader.multiprocessing_context.get_start_method() == "spawn"
    in_process = build_loader(samples, train=False, img_size=SIZE, batch_size=4, workers=0, shard=(1, 2), **quiet)
    assert same(batches(shard), batches(in_process))
    shard.close()
    with pytest.raises(ConfigError, match="start_method must be one of"):
        build_loader(samples, train=False, workers=1, start_method="thread", **quiet)


def test_a_sigterm_while_spawned_workers_start_is_outlived(samples: Samples) -> None:
    """A preemption's SIGTERM reaches the workers too, and the step they serve must finish: a
    spawned worker spends its first second importing torch, where the signal killed it."""
    loader = build_loader(samples, train=False, img_size=SIZE, batch_size=4, workers=2, start_method="spawn", **quiet)
    signalled: list[int] = []

    def signal_them_as_they_start() -> None:
        deadline = time.monotonic() + 60
        while loader._dataloader._iterator is None and time.monotonic() < deadline:
            time.sleep(0.001)
        for w in loader._dataloader._iterator._workers:
            os.kill(w.pid, signal.SIGTERM)
            signalled.append(w.pid)

    thread = threading.Thread(target=signal_them_as_they_start)
    thread.start()
    got = batches(loader)
    thread.join()
    assert len(signalled) == 2 and sum(len(labels) for _, labels in got) == len(samples)
    loader.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_gives_every_batch_buffer_back(samples: Samples, workers: int) -> None:
    with _loader(samples, workers=workers) as ld:
        first = batches(ld)
        assert int(ld._pool.flags.sum()) == 0  # all read: all free for the workers again
        ld.set_epoch(0)
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(first, batches(ld), strict=True))  # reuse is safe

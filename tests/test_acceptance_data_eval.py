"""Black-box acceptance tests of the input pipeline (issue #6) and of `train --data` / `eval` / `predict`.

Written from the specifications, not from the implementation: every reference is computed with
torchvision (ImageFolder, Resize + CenterCrop + Normalize, FakeData) or by hand, on files written
here the way other tools write them (many formats and modes, odd sizes, names with spaces and
non-ASCII characters, CSVs in several dialects, broken files).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from finetune.data import build_loader, find_splits, read_csv, scan_folder
from finetune.errors import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
S = 32  # output side of most tests: eval resizes to int(32 / 0.875) = 36, then crops 32


def _noise(w: int, h: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, channels) if channels > 1 else (h, w), dtype=np.uint8)


def torchvision_eval(img: Image.Image, size: int = S, mean=MEAN, std=STD) -> torch.Tensor:
    import torchvision.transforms as T

    t = T.Compose([T.Resize(int(size / 0.875)), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
    return t(img.convert("RGB"))


def pixel_diff(ours: torch.Tensor, ref: torch.Tensor, std=STD) -> float:
    """Largest difference in 0..255 units between two normalised CHW images."""
    return float(((ours - ref).abs() * torch.tensor(std).view(3, 1, 1) * 255).max())


# --------------------------------------------------------------------------- a zoo of files
def _write_zoo(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def add(name: str, img: Image.Image, **kw) -> None:
        files[name] = root / name
        img.save(root / name, **kw)

    rgb = lambda w, h, seed: Image.fromarray(_noise(w, h, seed))  # noqa: E731
    add("odd size 555x333 é.png", rgb(555, 333, 1))
    add("portrait.jpg", rgb(301, 517, 2), quality=95)
    add("tiny 9x13.png", rgb(9, 13, 3))  # smaller than the crop: upscaled
    add("exact36.png", rgb(36, 36, 4))
    add("grey.png", rgb(60, 50, 5).convert("L"))
    add("grey.jpg", rgb(61, 50, 6).convert("L"), quality=95)
    add("cmyk.jpg", rgb(80, 70, 7).convert("CMYK"), quality=95)
    pal = rgb(70, 60, 8).convert("P")
    pal.info["transparency"] = 3
    add("palette transparent.png", pal)
    add("rgba.png", Image.fromarray(_noise(64, 50, 9, channels=4)))
    add("la.png", rgb(60, 50, 10).convert("LA"))
    add("lossless.webp", rgb(90, 70, 11), lossless=True)
    add("a.bmp", rgb(90, 71, 12))
    add("a.tiff", rgb(91, 71, 13))
    add("first frame.gif", rgb(50, 40, 14).convert("P"))
    add("big.jpg", rgb(1200, 900, 15), quality=90)  # eval must stay torchvision's even when big
    im = rgb(80, 60, 16)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW" in EXIF; torchvision's ImageFolder ignores it, so must we
    add("exif rotated.jpg", im, exif=exif, quality=95)
    add("日本語 name.jpg", rgb(48, 40, 17), quality=95)
    return files


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _write_zoo(tmp_path_factory.mktemp("zoo"))


def _samples(paths: list[Path], labels: list[int] | None = None, classes=None):
    from finetune.data import Samples

    labels = labels if labels is not None else list(range(len(paths)))
    classes = classes or [f"c{i}" for i in range(max(labels) + 1)]
    return Samples.from_lists([str(p) for p in paths], labels, classes)


def test_eval_transform_equals_torchvision_on_many_formats(zoo: dict[str, Path]) -> None:
    names = sorted(zoo)
    loader = build_loader(_samples([zoo[n] for n in names]), train=False, img_size=S, batch_size=64, workers=0)
    images, labels = next(iter(loader))
    assert loader.bad_count == 0, loader.bad_file_list()
    assert images.shape == (len(names), 3, S, S) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == list(range(len(names)))  # eval keeps file order
    for k, name in enumerate(names):
        ref = torchvision_eval(Image.open(zoo[name]))
        assert pixel_diff(images[k], ref) <= 2.0, name


def test_eval_transform_equals_torchvision_with_workers_and_channels_last(zoo: dict[str, Path]) -> None:
    names = sorted(zoo)[:6]
    loader = build_loader(_samples([zoo[n] for n in names]), train=False, img_size=S, batch_size=4, workers=2,
                          channels_last=True)
    out = list(loader)
    loader.close()
    assert [len(y) for _, y in out] == [4, 2]
    images = torch.cat([x for x, _ in out])
    assert out[0][0].is_contiguous(memory_format=torch.channels_last)
    for k, name in enumerate(names):
        assert pixel_diff(images[k], torchvision_eval(Image.open(zoo[name]))) <= 2.0, name


def test_sixteen_bit_grey_png_keeps_its_high_byte(tmp_path: Path) -> None:
    """Documented exception to PIL's convert("RGB") (which clips 16-bit values above 255 to white)."""
    values = _noise(40, 44, 0).astype(np.uint16)[..., 0] * 257  # v * 257 >> 8 == v
    Image.fromarray(values).save(tmp_path / "g16.png")
    loader = build_loader(_samples([tmp_path / "g16.png"]), train=False, img_size=S, batch_size=1, workers=0)
    images, _ = next(iter(loader))
    ref = torchvision_eval(Image.fromarray((values >> 8).astype(np.uint8)))
    assert pixel_diff(images[0], ref) <= 2.0


def test_normalisation_constant_colour_and_custom_mean_std(tmp_path: Path) -> None:
    colour = (200, 100, 50)
    Image.new("RGB", (50, 40), colour).save(tmp_path / "c.png")
    for mean, std in ((MEAN, STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))):
        for train in (False, True):
            loader = build_loader(_samples([tmp_path / "c.png"] * 2), train=train, img_size=24, batch_size=2,
                                  workers=0, mean=mean, std=std)
            images, _ = next(iter(loader))
            expected = (torch.tensor(colour) / 255 - torch.tensor(mean)) / torch.tensor(std)
            assert images.shape == (2, 3, 24, 24)
            assert torch.allclose(images, expected.view(1, 3, 1, 1).expand_as(images), atol=1e-5)


# --------------------------------------------------------------------------- labels and folders
def _tree(root: Path, layout: dict[str, int], size=(20, 16)) -> Path:
    k = 0
    for rel, n in layout.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            k += 1
            Image.fromarray(_noise(*size, k)).save(root / rel / f"img {i}.jpg", quality=90)
    return root


def test_class_indices_match_torchvision_imagefolder(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    root = _tree(tmp_path / "data", {"zebra": 2, "Apple": 2, "10": 1, "2": 1, "b/nested": 2, "b": 1, "ä-umlaut": 1})
    (root / "zebra" / "notes.txt").write_text("not an image")
    theirs = ImageFolder(str(root))
    ours = scan_folder(root)
    assert list(ours.classes) == theirs.classes
    assert sorted(zip(ours.paths.tolist(), ours.labels.tolist(), strict=True)) == sorted(theirs.samples)


def test_train_val_folders_and_flat_split(tmp_path: Path) -> None:
    tv = _tree(tmp_path / "tv", {"train/dog": 3, "train/cat": 3, "val/dog": 2, "val/cat": 1})
    train, val = find_splits(tv)
    assert train.classes == val.classes == ("cat", "dog")
    assert len(train) == 6 and len(val) == 3 and val.class_counts() == {"cat": 1, "dog": 2}

    flat = _tree(tmp_path / "flat", {"b": 20, "a": 10, "c": 30})
    tr1, va1 = find_splits(flat, val_split=0.1, seed=0)
    tr2, va2 = find_splits(flat, val_split=0.1, seed=0)
    tr3, va3 = find_splits(flat, val_split=0.1, seed=1)
    assert va1.paths.tolist() == va2.paths.tolist() and va1.paths.tolist() != va3.paths.tolist()
    assert va1.class_counts() == {"a": 1, "b": 2, "c": 3}  # stratified: 10 % of each class
    assert not set(tr1.paths.tolist()) & set(va1.paths.tolist())
    assert len(tr1) + len(va1) == 60 and tr1.classes == ("a", "b", "c")


def test_build_loader_from_folder_path_and_shapes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"train/x": 4, "train/y": 4, "val/x": 2, "val/y": 3})
    ev = build_loader(str(root), train=False, img_size=S, batch_size=2, workers=0)
    assert len(ev) == 3 and ev.classes == ("x", "y")
    assert torch.cat([y for _, y in ev]).tolist() == [0, 0, 1, 1, 1]
    tr = build_loader(root, train=True, img_size=S, batch_size=3, workers=0)
    assert len(tr) == 2 and sorted(torch.cat([y for _, y in tr]).tolist()) in ([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1],
                                                                              [0, 0, 0, 0, 1, 1])


def test_a_flat_folder_root_loads_like_torchvision_imagefolder(tmp_path: Path) -> None:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    root = _tree(tmp_path / "flat", {"b": 3, "a": 4, "c/deeper": 2}, size=(41, 29))
    tv = ImageFolder(str(root), transform=T.Compose([T.Resize(36), T.CenterCrop(S), T.ToTensor(), T.Normalize(MEAN, STD)]))
    loader = build_loader(str(root), train=False, img_size=S, batch_size=4, workers=0)
    assert loader.classes == tuple(tv.classes) and len(loader) == 3  # all 9 images, not a held-out part
    images = torch.cat([x for x, _ in loader])
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == [y for _, y in tv.samples]
    for k in range(len(tv)):
        assert pixel_diff(images[k], tv[k][0]) <= 2.0
    train = build_loader(root, train=True, img_size=S, batch_size=3, workers=0)
    assert len(train) == 3 and sorted(torch.cat([y for _, y in train]).tolist()) == sorted(labels.tolist())


def test_len_and_drop_last(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"x": 5, "y": 5})
    s = scan_folder(root)
    cases = {(False, None): 4, (False, True): 3, (True, None): 3, (True, False): 4}
    for (train, drop), n in cases.items():
        loader = build_loader(s, train=train, img_size=16, batch_size=3, workers=0, drop_last=drop)
        batches = [len(y) for _, y in loader]
        assert len(loader) == n == len(batches), (train, drop)
        assert sum(batches) == (9 if n == 3 else 10)


# --------------------------------------------------------------------------- CSV files
def test_csv_variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path / "my images", {"set": 6})
    files = sorted((tmp_path / "my images" / "set").iterdir())
    rel = [f"my images/set/{f.name}" for f in files]
    names = ["cat", "dog", "cat", "dog", "cat", "dog"]
    variants = {
        "noheader.csv": "\n".join(f"{p},{n}" for p, n in zip(rel, names, strict=True)) + "\n",
        "header.csv": "path,label\n" + "\n".join(f"{p},{n}" for p, n in zip(rel, names, strict=True)),
        "swapped.csv": "label,filename\n" + "\n".join(f"{n},{p}" for p, n in zip(rel, names, strict=True)),
        "absolute.csv": "image,class\n" + "\n".join(f"{f},{n}" for f, n in zip(files, names, strict=True)),
        "quoted_crlf.csv": '"path","label"\r\n' + "\r\n".join(f'"{p}","{n}"' for p, n in zip(rel, names, strict=True)),
        "semicolon.csv": "path;label\n" + "\n".join(f"{p};{n}" for p, n in zip(rel, names, strict=True)),
    }
    monkeypatch.chdir(tmp_path / "my images")  # relative paths are relative to the CSV, not the cwd
    for name, text in variants.items():
        (tmp_path / name).write_text(text, encoding="utf-8-sig" if name == "header.csv" else "utf-8")
        samples, split = read_csv(tmp_path / name)
        assert samples.classes == ("cat", "dog"), name
        assert samples.labels.tolist() == [0, 1, 0, 1, 0, 1], name
        assert [Path(p) for p in samples.paths.tolist()] == files, name
        assert split is None
    (tmp_path / "ints.csv").write_text("path,label\n" + "\n".join(f"{p},{i % 3}" for i, p in enumerate(rel)))
    samples, _ = read_csv(tmp_path / "ints.csv")
    assert samples.labels.tolist() == [0, 1, 2, 0, 1, 2]  # integer labels 0..K-1 are the class indices
    for train in (False, True):  # a CSV without a split column: all its rows, to evaluate or to train
        loader = build_loader(str(tmp_path / "header.csv"), train=train, img_size=16, batch_size=4, workers=0,
                              drop_last=False)
        assert loader.classes == ("cat", "dog") and sum(len(y) for _, y in loader) == 6


def test_csv_with_split_column_and_missing_file(tmp_path: Path) -> None:
    _tree(tmp_path, {"i": 6})
    rows = [f"i/img {k}.jpg,{'ab'[k % 2]},{'train' if k < 4 else 'val'}" for k in range(6)]
    (tmp_path / "s.csv").write_text("path,label,split\n" + "\n".join(rows))
    train, val = find_splits(tmp_path / "s.csv")
    assert len(train) == 4 and len(val) == 2 and train.classes == ("a", "b")
    (tmp_path / "m.csv").write_text("path,label\ni/img 0.jpg,a\ni/nothere.jpg,b\n")
    with pytest.raises(DataError, match="nothere"):
        read_csv(tmp_path / "m.csv")


# --------------------------------------------------------------------------- training transform, order, resume
@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mixed")
    k = 0
    for c, n in (("a", 9), ("b", 8), ("c", 7)):
        (root / c).mkdir()
        for i in range(n):
            k += 1
            w, h = 30 + 7 * (k % 5), 60 - 5 * (k % 4)
            ext = (".jpg", ".png", ".webp")[k % 3]
            Image.fromarray(_noise(w, h, k)).save(root / c / f"{i}{ext}")
    return scan_folder(root)


def _all(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


def test_training_batches_reproducible_for_a_seed_across_worker_counts(mixed) -> None:
    runs = {}
    for workers in (0, 2):
        loader = build_loader(mixed, train=True, img_size=S, batch_size=5, workers=workers, seed=7)
        loader.set_epoch(1)
        runs[workers] = _all(loader)
        loader.close()
    assert len(runs[0]) == len(mixed) // 5
    assert _same(runs[0], runs[2])
    other = build_loader(mixed, train=True, img_size=S, batch_size=5, workers=0, seed=8)
    other.set_epoch(1)
    assert not _same(runs[0], _all(other))
    x, y = runs[0][0]
    assert x.shape == (5, 3, S, S) and x.dtype == torch.float32 and y.dtype == torch.int64
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert (x >= lo.view(1, 3, 1, 1) - 1e-5).all() and (x <= hi.view(1, 3, 1, 1) + 1e-5).all()


def test_set_epoch_changes_the_order_and_augmentation(mixed) -> None:
    loader = build_loader(mixed, train=True, img_size=S, batch_size=4, workers=0, seed=0)
    orders = []
    for epoch in (0, 1, 0):
        loader.set_epoch(epoch)
        orders.append(torch.cat([y for _, y in loader]).tolist())
    assert orders[0] == orders[2] != orders[1]
    eval_loader = build_loader(mixed, train=False, img_size=S, batch_size=4, workers=0)
    eval_loader.set_epoch(3)
    assert torch.cat([y for _, y in eval_loader]).tolist() == sorted(mixed.labels.tolist())  # eval: file order


def test_augmentation_options_run_and_are_seeded(mixed) -> None:
    for augment in ("trivialaugment", "randaugment"):
        a = _all(build_loader(mixed, train=True, img_size=S, batch_size=6, workers=0, seed=1, augment=augment))
        b = _all(build_loader(mixed, train=True, img_size=S, batch_size=6, workers=0, seed=1, augment=augment))
        assert _same(a, b) and a[0][0].shape == (6, 3, S, S)


def test_exact_resume_mid_epoch(mixed) -> None:
    loader = build_loader(mixed, train=True, img_size=S, batch_size=3, workers=0, seed=5)
    loader.set_epoch(2)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    rest = [(x.clone(), y.clone()) for x, y in it]
    assert len(rest) == len(loader) - 3
    state = json.loads(json.dumps(state))  # what a checkpoint stores survives a round trip
    for workers in (0, 2):
        resumed = build_loader(mixed, train=True, img_size=S, batch_size=3, workers=workers, seed=5)
        resumed.load_state_dict(state)
        assert _same(_all(resumed), rest), workers
        resumed.close()
        # after the resumed epoch the next epoch starts from its first batch
        resumed.set_epoch(3)
        assert len(_all(resumed)) == len(loader)


def test_ram_cache_equals_uncached_eval_and_is_stable(mixed) -> None:
    plain = _all(build_loader(mixed, train=False, img_size=S, batch_size=5, workers=0))
    cached = build_loader(mixed, train=False, img_size=S, batch_size=5, workers=0, cache="ram")
    assert _same(_all(cached), plain)
    assert _same(_all(cached), plain)  # the second pass reads the store
    tr = build_loader(mixed, train=True, img_size=S, batch_size=5, workers=0, cache="ram", seed=2)
    first = _all(tr)
    tr.set_epoch(0)
    assert _same(_all(tr), first) and first[0][0].shape == (5, 3, S, S)


def test_workers_auto_says_what_it_picked(mixed) -> None:
    said: list[str] = []
    loader = build_loader(mixed, train=False, img_size=16, batch_size=4, workers="auto", log=said.append,
                          probe_seconds=0.2)
    assert said and isinstance(loader.workers, int) and loader.workers >= 0
    assert str(loader.workers) in " ".join(said) or "no workers" in " ".join(said)
    assert len(_all(loader)) == len(loader)
    loader.close()


# --------------------------------------------------------------------------- bad files
def _bad_crc_png(path: Path) -> None:
    Image.fromarray(_noise(20, 20, 99)).save(path)
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # corrupt pixel data, CRC now wrong
    path.write_bytes(bytes(data))


@pytest.fixture
def with_bad(tmp_path: Path) -> Path:
    root = _tree(tmp_path / "data", {"a": 4, "b": 4})
    good = (root / "a" / "img 0.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "b" / "text as image.jpg").write_text("hello, not an image")
    (root / "b" / "empty.png").write_bytes(b"")
    _bad_crc_png(root / "b" / "bad crc.png")
    return root


BAD = {"truncated.jpg", "text as image.jpg", "empty.png", "bad crc.png"}


def test_bad_files_are_skipped_counted_and_listed(with_bad: Path, tmp_path: Path) -> None:
    s = scan_folder(with_bad)
    for train, workers in ((False, 0), (True, 2)):
        loader = build_loader(s, train=train, img_size=16, batch_size=4, workers=workers, drop_last=False)
        labels = torch.cat([y for _, y in loader])
        loader.close()
        assert len(labels) == len(s) - len(BAD) == 8
        assert loader.bad_count == len(BAD)
        assert {Path(b.path).name for b in loader.bad_file_list()} == BAD
        assert all(b.reason for b in loader.bad_file_list())
        listed = loader.write_bad_files(tmp_path / f"run{train}")
        text = listed.read_text()
        assert all(name in text for name in BAD) and len(text.splitlines()) == len(BAD)


def test_strict_fails_before_loading_with_the_full_list(with_bad: Path) -> None:
    with pytest.raises(DataError) as e:
        build_loader(scan_folder(with_bad), train=True, img_size=16, batch_size=4, workers=0, strict=True)
    assert all(name in str(e.value) for name in BAD)
    assert "img 1.jpg" not in str(e.value)


def test_a_worker_crash_names_the_item_instead_of_hanging() -> None:
    class Crashing(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int):
            if i == 5 and torch.utils.data.get_worker_info() is not None:
                os._exit(3)  # a decoder segfault, as far as the main process can tell
            return Image.new("RGB", (20, 20)), 0

    loader = build_loader(Crashing(), train=False, img_size=16, batch_size=2, workers=1)
    with pytest.raises(DataError, match="item 5"):
        list(loader)


# --------------------------------------------------------------------------- dataset objects
def test_fakedata_and_user_datasets_as_source() -> None:
    import torchvision
    import torchvision.transforms as T

    fake = torchvision.datasets.FakeData(size=7, image_size=(3, 45, 29), num_classes=3)
    loader = build_loader(fake, train=False, img_size=S, batch_size=4, workers=0)
    got = _all(loader)
    assert len(loader) == 2 and [len(y) for _, y in got] == [4, 3]
    images = torch.cat([x for x, _ in got])
    labels = torch.cat([y for _, y in got])
    for i in range(7):
        img, label = fake[i]
        assert int(labels[i]) == int(label)
        assert pixel_diff(images[i], torchvision_eval(img)) <= 2.0, i
    train = _all(build_loader(fake, train=True, img_size=S, batch_size=3, workers=0))
    assert len(train) == 2 and train[0][0].shape == (3, 3, S, S)

    tensors = torchvision.datasets.FakeData(size=4, image_size=(3, 40, 50), num_classes=2, transform=T.ToTensor())
    x, y = next(iter(build_loader(tensors, train=False, img_size=S, batch_size=4, workers=0)))
    for i in range(4):
        pil = T.ToPILImage()(tensors[i][0])
        assert pixel_diff(x[i], torchvision_eval(pil)) <= 2.0

    class Uint8(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.x = [torch.from_numpy(_noise(23, 41, i)).permute(2, 0, 1).contiguous() for i in range(3)]

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):
            return self.x[i], torch.tensor(i)

    ds = Uint8()
    x, y = next(iter(build_loader(ds, train=False, img_size=S, batch_size=3, workers=0)))
    assert y.tolist() == [0, 1, 2] and y.dtype == torch.int64
    import torchvision.transforms.v2 as v2

    ref_t = v2.Compose([v2.Resize(int(S / 0.875), antialias=True), v2.CenterCrop(S), v2.ToDtype(torch.float32, scale=True),
                        v2.Normalize(MEAN, STD)])
    for i in range(3):
        assert pixel_diff(x[i], ref_t(ds.x[i])) <= 2.0


def test_dataset_with_unusable_items_is_a_clear_error() -> None:
    class Strings(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return "not an image", 0

    with pytest.raises(DataError, match="str"):
        list(build_loader(Strings(), train=False, img_size=16, batch_size=2, workers=0))


# --------------------------------------------------------------------------- the command line
def cli(*args: str) -> subprocess.CompletedProcess:
    """``finetune ARGS`` in this process (a fresh interpreter per call costs seconds here); the
    contract of the real command (exit status 2, one line) is checked with :func:`run_cli` once."""
    from finetune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--seed", "0",
        "--optimizer", "adamw", "--lr", "0.002", "--warmup-epochs", "0", "-q", "--device", "cpu"]
COLOURS = {"zebra": (200, 30, 30), "Apple": (30, 30, 200), "mango": (30, 200, 30)}


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A flat folder of class sub-folders (names with spaces, mixed case, one broken file) and a tiny run on it."""
    root = tmp_path_factory.mktemp("flat") / "my data"
    rng = np.random.default_rng(0)
    for c, col in COLOURS.items():
        (root / c).mkdir(parents=True)
        for i in range(10):
            img = np.clip(np.array(col) + rng.normal(0, 25, (36, 44, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c / f"{c} {i}.jpg", quality=90)
    (root / "mango" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = root.parent / "run"
    res = run_cli("train", "--data", str(root), "--val-split", "0.2", "--epochs", "2", "--out", str(out), *TINY)
    assert res.returncode == 0, res.stderr
    return root, out


def _ck(run: Path) -> str:
    return str(run / "checkpoints" / "best.pt")


def test_train_on_flat_folder_split_and_bad_file_list(flat_run) -> None:
    root, run = flat_run
    assert json.loads((run / "classes.json").read_text()) == ["Apple", "mango", "zebra"]
    listed = (run / "bad_files.txt").read_text()
    assert "broken.jpg" in listed and len(listed.splitlines()) == 1


def test_strict_data_fails_before_training(flat_run, tmp_path: Path) -> None:
    root, _ = flat_run
    res = cli("train", "--data", str(root), "--strict-data", "--epochs", "1", "--out", str(tmp_path / "r"), *TINY)
    assert res.returncode == 2
    assert res.stderr.startswith("finetune: error: ") and "broken.jpg" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_eval_json_matches_predict(flat_run, tmp_path: Path) -> None:
    root, run = flat_run
    res = cli("eval", "--checkpoint", _ck(run), "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    default = json.loads(res.stdout)
    assert {"top1", "top5", "loss", "per_class"} <= set(default)
    assert set(default["per_class"]) == set(COLOURS)
    assert all(0.0 <= v <= 1.0 for v in default["per_class"].values())
    assert default["top5"] == 1.0  # k = min(5, 3 classes)

    # a test folder (other than the training data: all its images), scored by eval and by hand from predict
    test = tmp_path / "test set"
    for c in COLOURS:
        (test / c).mkdir(parents=True)
        for f in (root / c).glob(f"{c} *.jpg"):
            (test / c / f.name).write_bytes(f.read_bytes())
    ev = cli("eval", "--checkpoint", _ck(run), "--data", str(test), "--json", "--device", "cpu")
    pr = cli("predict", "--checkpoint", _ck(run), str(test), "--topk", "10", "--json", "--device", "cpu")
    assert ev.returncode == 0 and pr.returncode == 0, ev.stderr + pr.stderr
    ev, pr = json.loads(ev.stdout), json.loads(pr.stdout)
    assert len(pr) == 30
    hits, losses, per = 0, 0.0, {c: [] for c in COLOURS}
    for item in pr:
        true = Path(item["path"]).parent.name
        assert len(item["top"]) == 3 and math.isclose(sum(t["prob"] for t in item["top"]), 1.0, abs_tol=1e-4)
        probs = {t["class"]: t["prob"] for t in item["top"]}
        hit = item["top"][0]["class"] == true
        hits += hit
        per[true].append(hit)
        losses -= math.log(probs[true])
    assert ev["top1"] == pytest.approx(hits / 30, abs=1e-6)
    assert ev["loss"] == pytest.approx(losses / 30, rel=1e-3)
    assert ev["per_class"] == pytest.approx({c: sum(v) / len(v) for c, v in per.items()}, abs=1e-6)


def test_eval_on_folders_with_other_classes(flat_run, tmp_path: Path) -> None:
    root, run = flat_run
    sub = tmp_path / "subset"
    for c in ("zebra", "Apple"):  # a subset, in the opposite order of the checkpoint's: scored by name
        (sub / c).mkdir(parents=True)
        for f in sorted((root / c).glob("*.jpg"))[:3]:
            (sub / c / f.name).write_bytes(f.read_bytes())
    ev = cli("eval", "--checkpoint", _ck(run), "--data", str(sub), "--json", "--device", "cpu")
    pr = cli("predict", "--checkpoint", _ck(run), str(sub), "--topk", "1", "--json", "--device", "cpu")
    assert ev.returncode == 0 and pr.returncode == 0, ev.stderr + pr.stderr
    hits = sum(Path(o["path"]).parent.name == o["top"][0]["class"] for o in json.loads(pr.stdout))
    assert json.loads(ev.stdout)["top1"] == pytest.approx(hits / 6)

    other = tmp_path / "other"
    (other / "kiwi").mkdir(parents=True)
    (other / "zebra").mkdir(parents=True)
    for d in ("kiwi", "zebra"):
        Image.new("RGB", (40, 40)).save(other / d / "x.jpg")
    res = cli("eval", "--checkpoint", _ck(run), "--data", str(other), "--json", "--device", "cpu")
    assert res.returncode == 2 and "kiwi" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.startswith("finetune: error: ") and len(res.stderr.strip().splitlines()) == 1


def test_predict_inputs(flat_run, tmp_path: Path) -> None:
    root, run = flat_run
    d = tmp_path / "in"
    d.mkdir()
    (d / "zebra one.jpg").write_bytes((root / "zebra" / "zebra 0.jpg").read_bytes())
    (d / "README.txt").write_text("not an image")
    (d / ".DS_Store").write_bytes(b"\0\0")
    res = cli("predict", "--checkpoint", _ck(run), str(d), str(root / "Apple" / "Apple 1.jpg"), "--topk", "2",
                  "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [Path(o["path"]).name for o in out] == ["zebra one.jpg", "Apple 1.jpg"]
    for o in out:
        assert len(o["top"]) == 2 and o["top"][0]["prob"] >= o["top"][1]["prob"]
        assert all(t["class"] in COLOURS and 0.0 <= t["prob"] <= 1.0 for t in o["top"])
    for args in (["/no/such/image.jpg"], [str(d / "README.txt")]):
        res = (run_cli if args[0].startswith("/no/") else cli)("predict", "--checkpoint", _ck(run), *args, "--device", "cpu")
        assert res.returncode == 2 and res.stderr.startswith("finetune: error: ") and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- eval against a changed or other dataset
# These need the train.py/config.py side of /tmp/helperB.patch (evaluate_checkpoint labels by class name
# through finetune.data.samples.eval_samples, predict skips unreadable files found in folders, the
# config keeps --data absolute); until it is applied they fail, hence the (non-strict) xfail.


def _manual_top1(run: Path, files: list[str], classes_of: list[str]) -> float:
    pr = cli("predict", "--checkpoint", _ck(run), *files, "--topk", "1", "--json", "--device", "cpu")
    assert pr.returncode == 0, pr.stderr
    out = json.loads(pr.stdout)
    return sum(o["top"][0]["class"] == c for o, c in zip(out, classes_of, strict=True)) / len(files)


def test_eval_scores_by_class_name_after_a_class_folder_is_removed(flat_run) -> None:
    root, run = flat_run
    aside = root.parent / "Apple-aside"
    (root / "Apple").rename(aside)
    try:
        res = cli("eval", "--checkpoint", _ck(run), "--json", "--device", "cpu")
        assert res.returncode == 0, res.stderr
        _, val = find_splits(root, val_split=0.2, seed=0)  # what the changed folder's val split now holds
        files = [p for p in val.paths.tolist() if Path(p).name != "broken.jpg"]
        expected = _manual_top1(run, files, [Path(p).parent.name for p in files])
    finally:
        aside.rename(root / "Apple")
    assert json.loads(res.stdout)["top1"] == pytest.approx(expected)


def test_eval_refuses_a_class_the_checkpoint_does_not_know(flat_run) -> None:
    root, run = flat_run
    (root / "banana").mkdir()
    try:
        for i in range(4):
            (root / "banana" / f"b{i}.jpg").write_bytes((root / "zebra" / f"zebra {i}.jpg").read_bytes())
        res = cli("eval", "--checkpoint", _ck(run), "--json", "--device", "cpu")
    finally:
        for f in (root / "banana").iterdir():
            f.unlink()
        (root / "banana").rmdir()
    assert res.returncode == 2 and "banana" in res.stderr and "bug in finetune" not in res.stderr
    assert res.stderr.startswith("finetune: error: ") and len(res.stderr.strip().splitlines()) == 1


def test_eval_data_that_the_checkpoint_trained_on_uses_its_val_split(flat_run) -> None:
    root, run = flat_run
    default = cli("eval", "--checkpoint", _ck(run), "--json", "--device", "cpu")
    same = cli("eval", "--checkpoint", _ck(run), "--data", str(root), "--json", "--device", "cpu")
    assert default.returncode == same.returncode == 0, default.stderr + same.stderr
    assert json.loads(same.stdout) == json.loads(default.stdout)


def test_eval_csv_with_split_column_scores_its_val_rows(flat_run, tmp_path: Path) -> None:
    root, run = flat_run
    rows = [f"{f},{c},{'val' if i < 2 else 'train'}" for c in COLOURS
            for i, f in enumerate(sorted((root / c).glob(f"{c} *.jpg")))]
    (tmp_path / "list.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    res = cli("eval", "--checkpoint", _ck(run), "--data", str(tmp_path / "list.csv"), "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["images"] == 6


def test_predict_skips_an_unreadable_file_found_in_a_folder(flat_run, tmp_path: Path) -> None:
    root, run = flat_run
    (tmp_path / "a.jpg").write_bytes((root / "zebra" / "zebra 0.jpg").read_bytes())
    (tmp_path / "b broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    res = cli("predict", "--checkpoint", _ck(run), str(tmp_path), "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert [Path(o["path"]).name for o in json.loads(res.stdout)] == ["a.jpg"]
    assert "b broken.jpg" in res.stderr


def test_eval_from_another_directory_after_training_on_a_relative_path(flat_run, tmp_path: Path) -> None:
    root, _ = flat_run
    work = tmp_path / "work"
    (work / "pics").mkdir(parents=True)
    for c in ("zebra", "mango"):
        (work / "pics" / c).mkdir()
        for f in sorted((root / c).glob("*.jpg"))[:4]:
            (work / "pics" / c / f.name).write_bytes(f.read_bytes())
    res = run_cli("train", "--data", "pics", "--val-split", "0.25", "--epochs", "1", "--max-steps", "1", "--out", "run",
                  *TINY, env={"CWD": str(work)})
    assert res.returncode == 0, res.stderr
    ev = cli("eval", "--checkpoint", str(work / "run" / "checkpoints" / "last.pt"), "--json", "--device", "cpu")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["images"] == 2


def test_eval_samples_labels_by_the_checkpoints_class_names(tmp_path: Path) -> None:
    from finetune.data.samples import eval_samples

    root = _tree(tmp_path / "d", {"b": 3, "a": 2, "empty": 0})
    s = eval_samples(root, ["c", "b", "a", "empty"])  # another order, a class absent, an empty folder
    assert s.classes == ("c", "b", "a", "empty")
    assert {(Path(p).parent.name, int(y)) for p, y in zip(s.paths.tolist(), s.labels.tolist(), strict=True)} == {
        ("b", 1), ("a", 2)}
    with pytest.raises(DataError, match="'b'"):
        eval_samples(root, ["a", "B"])  # names match exactly: 'b' is not 'B'
    flat = _tree(tmp_path / "flat", {"x": 10, "y": 10})
    assert len(eval_samples(flat, ["y", "x"])) == 20  # a test folder: every image
    same = eval_samples(flat, ["y", "x"], trained_on=str(flat), val_split=0.2, seed=3)  # the run's own data
    _, val = find_splits(flat, val_split=0.2, seed=3)
    assert sorted(same.paths.tolist()) == sorted(val.paths.tolist()) and len(same) == 4
    (tmp_path / "s.csv").write_text("path,label,split\n" + "\n".join(
        f"flat/{c}/img {i}.jpg,{c},{'val' if i < 3 else 'train'}" for c in "xy" for i in range(10)))
    s = eval_samples(tmp_path / "s.csv", ["y", "x"])
    assert len(s) == 6 and s.class_counts() == {"y": 3, "x": 3}


def test_csv_split_column_values_any_case_and_test_rows_stay_out(tmp_path: Path) -> None:
    _tree(tmp_path, {"i": 12})

    def csv(name: str, split_of) -> Path:
        rows = [f"i/img {k}.jpg,{'ab'[k % 2]},{split_of(k)}" for k in range(12)]
        (tmp_path / name).write_text("path,label,split\n" + "\n".join(rows) + "\n")
        return tmp_path / name

    train, val = find_splits(csv("upper.csv", lambda k: "Train" if k < 8 else "VAL"))
    assert len(train) == 8 and len(val) == 4  # the file's own split, not a random one
    train, val = find_splits(csv("test.csv", lambda k: "train" if k < 8 else "test"), val_split=0.25)
    names = {Path(p).name for p in [*train.paths.tolist(), *val.paths.tolist()]}
    assert names == {f"img {k}.jpg" for k in range(8)} and len(val) == 2  # test rows are never trained on
    with pytest.raises(DataError, match="train"):
        find_splits(csv("nothing.csv", lambda k: "fold1"))


def test_csv_row_without_a_label_is_refused(tmp_path: Path) -> None:
    _tree(tmp_path, {"i": 3})
    (tmp_path / "l.csv").write_text("path,label\ni/img 0.jpg,a\ni/img 1.jpg,\ni/img 2.jpg,b\n")
    with pytest.raises(DataError, match="without a label"):
        read_csv(tmp_path / "l.csv")


def test_dict_items_and_tensor_training_crops() -> None:
    class Names:
        names = ["cat", "dog"]

    class HuggingFaceLike:  # items as dicts, class names in features["label"].names
        features = {"label": Names()}

        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int):
            return {"image": Image.fromarray(_noise(30, 20, i)), "label": i % 2}

    loader = build_loader(HuggingFaceLike(), train=False, img_size=S, batch_size=4, workers=0)
    x, y = next(iter(loader))
    assert loader.classes == ("cat", "dog") and y.tolist() == [0, 1, 0, 1]
    assert pixel_diff(x[2], torchvision_eval(HuggingFaceLike()[2]["image"])) <= 2.0

    # training on uint8 tensors: with crop_scale (1, 1) a square image is resized whole, maybe flipped
    square = torch.from_numpy(_noise(64, 64, 5)).permute(2, 0, 1).contiguous()
    loader = build_loader([(square, 0)] * 8, train=True, img_size=S, batch_size=8, workers=0, crop_scale=(1.0, 1.0))
    x, _ = next(iter(loader))
    import torchvision.transforms.v2.functional as F

    whole = F.normalize(F.to_dtype(F.resize(square, [S, S], antialias=True), torch.float32, scale=True), MEAN, STD)
    # one level, plus the normalisation's float rounding: torchvision 0.19's uint8 resize is one level
    # off its float resize in places (0.29's is not; ours matches the float one on both)
    level = 1.0 + 1e-3
    flips = [pixel_diff(x[k], whole.flip(-1)) <= level for k in range(8)]
    assert all(pixel_diff(x[k], whole) <= level or flips[k] for k in range(8)) and 0 < sum(flips) < 8


def _crash_on(path: str, *args, **kwargs):
    from finetune.data.decode import decode_eval

    if path.endswith("crash me.jpg") and torch.utils.data.get_worker_info() is not None:
        os._exit(11)  # what a segfaulting decoder looks like from the main process
    return decode_eval(path, *args, **kwargs)


def test_a_worker_crash_on_a_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "d", {"a": 3, "b": 3})
    (root / "b" / "crash me.jpg").write_bytes((root / "b" / "img 0.jpg").read_bytes())
    monkeypatch.setattr("finetune.data.loader.decode_eval", _crash_on)  # (workers are forked: they see it)
    loader = build_loader(scan_folder(root), train=False, img_size=16, batch_size=2, workers=2)
    with pytest.raises(DataError, match="crash me.jpg"):
        list(loader)


def test_thread_prefetch_gives_the_same_batches(mixed) -> None:
    plain = _all(build_loader(mixed, train=True, img_size=S, batch_size=5, workers=0, seed=4))
    threaded = _all(build_loader(mixed, train=True, img_size=S, batch_size=5, workers=0, seed=4, prefetch="thread"))
    assert _same(plain, threaded)


def test_csv_without_header_third_column_is_a_split_only_if_it_holds_split_names(tmp_path: Path) -> None:
    _tree(tmp_path, {"i": 8})
    (tmp_path / "score.csv").write_text("".join(f"i/img {k}.jpg,{'ab'[k % 2]},0.{k}\n" for k in range(8)))
    samples, split = read_csv(tmp_path / "score.csv")
    assert split is None and len(samples) == 8
    train, val = find_splits(tmp_path / "score.csv", val_split=0.25)
    assert len(train) == 6 and len(val) == 2
    (tmp_path / "split.csv").write_text("".join(f"i/img {k}.jpg,{'ab'[k % 2]},{'train' if k < 6 else 'val'}\n"
                                                for k in range(8)))
    assert read_csv(tmp_path / "split.csv")[1].tolist() == ["train"] * 6 + ["val"] * 2


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    from finetune.errors import FinetuneError

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    s = _samples([tmp_path / "a.png"])
    bad = [dict(batch_size=0), dict(img_size=0), dict(workers=-1), dict(workers="many"), dict(decode="fast"),
           dict(cache="disk"), dict(device="bogus")]
    if not torch.cuda.is_available():
        bad += [dict(device="cuda"), dict(cache="gpu")]
    for kw in bad:
        with pytest.raises(FinetuneError):
            build_loader(s, train=False, **{"workers": 0, **kw})
    with pytest.raises(DataError, match="does not exist"):
        build_loader(str(tmp_path / "nothing here"), train=False, workers=0)


def test_every_pass_is_a_whole_epoch_unless_resumed(mixed) -> None:
    loader = build_loader(mixed, train=True, img_size=16, batch_size=4, workers=0, seed=9)
    first, _ = next(iter(loader))  # a peek (as a DataLoader allows) ...
    whole = _all(loader)  # ... does not eat the epoch's first batch
    assert len(whole) == len(loader) and torch.equal(whole[0][0], first)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    resumed = build_loader(mixed, train=True, img_size=16, batch_size=4, workers=0, seed=9)
    resumed.load_state_dict(state)
    assert _same(_all(resumed), whole[1:])  # the pass after load_state_dict continues...
    assert _same(_all(resumed), whole)  # ... and the next one is the whole epoch again

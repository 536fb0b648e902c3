"""The data package keeps the contract: bad input is a DataError/ConfigError with one line
saying what is wrong and what to do; nothing is silently lost, skipped or printed.

* ``make_shapes`` never deletes a folder that is not an earlier attempt of its own, refuses a
  complete dataset of another spec instead of passing it off as the one asked for, gives the
  new folder a normal mode (not mkdtemp's 0700) and leaves no temporary folder behind;
* a training set of one class is refused (a one-class classifier "trains" with loss 0), while
  evaluating a checkpoint on a folder holding one of its classes still works;
* a folder of the dataset that cannot be read is an error naming it, not a class that vanishes;
* the loader prints nothing unless it is given a ``log`` callable (``-q``, ``eval``);
* the library checks the numbers the CLI checks (workers, seconds, repeats, per_class, size, seed).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from finetune.data.bench import make_photo_folder, run_bench
from finetune.data.loader import build_loader
from finetune.data.samples import Samples, find_splits, read_csv, scan_folder
from finetune.data.shapes import ShapesSpec, make_shapes, shapes_root
from finetune.errors import ConfigError, DataError

TINY = dict(per_class=1, val_per_class=1, size=16)


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text.strip() == text and text
    return text


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# --------------------------------------------------------------------------- make_shapes
def test_make_shapes_keeps_a_foreign_folder(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "n.txt").write_text("x")
    with pytest.raises(DataError) as e:
        make_shapes(photos, **TINY)
    assert "photos" in one_line(e) and "not a shapes dataset" in str(e.value)
    assert (photos / "n.txt").read_text() == "x" and [p.name for p in photos.iterdir()] == ["n.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no temporary folder left


@pytest.mark.parametrize("foreign", ["train/circle/mine.png", "train/cats/circle_00000.jpg", "notes/a.txt",
                                     "val/circle/circle_00000.jpg.bak", "other.csv"])
def test_make_shapes_keeps_a_folder_that_only_looks_like_ours(tmp_path: Path, foreign: str) -> None:
    root = tmp_path / "d"
    (root / "train" / "circle").mkdir(parents=True)
    (root / "train" / "circle" / "circle_00000.jpg").write_bytes(b"old")
    (root / "spec.json").write_text("{}")
    (root / foreign).parent.mkdir(parents=True, exist_ok=True)
    (root / foreign).write_bytes(b"keep")
    before = tree(root)
    with pytest.raises(DataError, match="not a shapes dataset"):
        make_shapes(root, **TINY)
    assert tree(root) == before


def test_make_shapes_cli_does_not_delete_a_folder(tmp_path: Path) -> None:
    photos = tmp_path / "d" / "photos"
    photos.mkdir(parents=True)
    (photos / "n.txt").write_text("x\n")
    r = run_cli("make-shapes", str(tmp_path / "d"), "--per-class", "1", "--size", "16")
    assert r.returncode == 2 and r.stderr.startswith("finetune: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "wrote" not in r.stdout and (photos / "n.txt").read_text() == "x\n"


def test_make_shapes_replaces_an_empty_folder_and_its_own_leftover(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (make_shapes(empty, **TINY) / ".complete").exists()
    leftover = tmp_path / "leftover"  # an interrupted attempt of an older version: no .complete
    (leftover / "train" / "star").mkdir(parents=True)
    (leftover / "train" / "star" / "star_00007.jpg").write_bytes(b"half")
    (leftover / "spec.json").write_text("{}")
    (leftover / "boxes.csv").write_text("")
    root = make_shapes(leftover, **TINY)
    assert (root / ".complete").exists() and not (root / "train" / "star" / "star_00007.jpg").exists()
    assert len(list(root.glob("train/*/*.jpg"))) == 8 and tree(root) == tree(empty)


def test_make_shapes_refuses_a_dataset_of_another_spec(tmp_path: Path) -> None:
    root = make_shapes(tmp_path / "s", **TINY)
    before = tree(root)
    assert make_shapes(root, **TINY) == root and tree(root) == before  # the same spec: returned as it is
    for other in (dict(TINY, per_class=2), dict(TINY, size=32), dict(TINY, seed=1), dict(TINY, val_per_class=2)):
        with pytest.raises(DataError) as e:
            make_shapes(root, **other)
        assert "another folder" in one_line(e) and str(root) in str(e.value)
        assert tree(root) == before
    assert json.loads((root / "spec.json").read_text())["per_class"] == 1
    r = run_cli("make-shapes", str(root), "--per-class", "2", "--size", "16")
    assert r.returncode == 2 and "wrote" not in r.stdout and "per_class=1" in r.stderr


def test_make_shapes_folder_mode_is_normal(tmp_path: Path) -> None:
    root = make_shapes(tmp_path / "s", **TINY)
    assert stat.S_IMODE(root.stat().st_mode) == 0o777 & ~umask() == stat.S_IMODE((root / "train").stat().st_mode)


def test_make_shapes_on_a_file_leaves_nothing_behind(tmp_path: Path) -> None:
    afile = tmp_path / "data"
    afile.write_text("keep me")
    with pytest.raises(DataError) as e:
        make_shapes(afile, **TINY)
    assert "is a file" in one_line(e) and "data" in str(e.value)
    assert afile.read_text() == "keep me" and [p.name for p in tmp_path.iterdir()] == ["data"]


def test_make_shapes_under_a_file_is_a_data_error(tmp_path: Path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    with pytest.raises(DataError) as e:
        make_shapes(afile / "shapes", **TINY)
    assert "notes.txt" in one_line(e) and afile.read_text() == "keep me"


@pytest.mark.parametrize("bad", [dict(per_class=0), dict(per_class=-3), dict(size=15), dict(size=0),
                                 dict(seed=-1), dict(val_per_class=0), dict(per_class=1.5), dict(per_class=True),
                                 dict(quality=0), dict(quality=101)])
def test_make_shapes_checks_its_numbers(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ConfigError) as e:
        make_shapes(tmp_path / "s", **{**TINY, **bad})
    assert next(iter(bad)) in one_line(e)
    assert list(tmp_path.iterdir()) == []


def test_shapes_root_cache_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))
    spec = ShapesSpec(per_class=2, val_per_class=1, size=16)
    root = shapes_root(spec)
    assert root == tmp_path / "cache" / spec.key() and (root / ".complete").exists()
    stamp = (root / "boxes.csv").stat().st_mtime_ns
    assert shapes_root(spec) == root and (root / "boxes.csv").stat().st_mtime_ns == stamp
    (root / ".complete").unlink()  # an incomplete cache entry (its files are all ours): drawn again
    assert shapes_root(spec) == root and (root / ".complete").exists()
    assert sorted(p.name for p in root.parent.iterdir()) == [spec.key()]
    train, val = find_splits(root)
    assert len(train.classes) == 8 and len(train) == 16 and len(val) == 8


# --------------------------------------------------------------------------- one class
def images(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / name)
    return root


def test_one_class_folder_is_refused(tmp_path: Path) -> None:
    flat = images(tmp_path / "flat", [f"cat/{i}.jpg" for i in range(5)])
    with pytest.raises(DataError) as e:
        find_splits(flat)
    assert "only one class ('cat')" in one_line(e) and "at least two" in str(e.value)
    split = images(tmp_path / "split", ["train/cat/0.jpg", "train/cat/1.jpg", "val/cat/0.jpg"])
    with pytest.raises(DataError, match=r"only one class \('cat'\)"):
        find_splits(split)
    train_only = images(tmp_path / "train_only", [f"train/dog/{i}.jpg" for i in range(4)])
    with pytest.raises(DataError, match=r"only one class \('dog'\)"):
        find_splits(train_only)


def test_one_class_csv_is_refused(tmp_path: Path) -> None:
    images(tmp_path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    (tmp_path / "one.csv").write_text("path,label\na.jpg,x\nb.jpg,x\nc.jpg,x\n")
    with pytest.raises(DataError) as e:
        find_splits(tmp_path / "one.csv")
    assert "only one class ('x')" in one_line(e)
    # two classes in the file, but the training rows hold one of them only
    (tmp_path / "split.csv").write_text("path,label,split\na.jpg,x,train\nb.jpg,x,train\nc.jpg,y,val\nd.jpg,x,val\n")
    with pytest.raises(DataError, match=r"only one class \('x'\)"):
        find_splits(tmp_path / "split.csv")
    assert read_csv(tmp_path / "one.csv", classes=["x", "y"])[0].classes == ("x", "y")  # eval of a checkpoint's classes


def test_two_classes_and_one_class_evaluation_still_work(tmp_path: Path) -> None:
    root = images(tmp_path / "d", ["train/a/0.jpg", "train/b/0.jpg", "val/a/0.jpg"])
    train, val = find_splits(root)
    assert train.classes == ("a", "b") and val.class_counts() == {"a": 1, "b": 0}
    # evaluate_checkpoint / predict scan a folder with the checkpoint's classes: one of them is enough
    only_b = images(tmp_path / "e", ["b/0.jpg", "b/1.jpg"])
    s = scan_folder(only_b, classes=["a", "b", "c"])
    assert s.class_counts() == {"a": 0, "b": 2, "c": 0}
    assert scan_folder(only_b).classes == ("b",)  # scanning alone does not judge


# --------------------------------------------------------------------------- unreadable folders
def make_unreadable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 where that stops us (not root); as root, os.scandir/Path.iterdir of it fail as they would."""
    if os.geteuid() != 0:
        folder.chmod(0)  # (restored by the restore_modes fixture)
        return
    target = os.path.abspath(folder)
    real_scandir, real_iterdir = os.scandir, Path.iterdir

    def scandir(path=".", *a):
        if os.path.abspath(os.fspath(path)) == target:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path, *a)

    def iterdir(self):
        if os.path.abspath(self) == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(Path, "iterdir", iterdir)


@pytest.fixture
def restore_modes(tmp_path: Path):
    yield
    for p in [tmp_path, *tmp_path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)


@pytest.mark.parametrize("where", ["val/b", "train/b", "train/b/sub", "val"])
def test_unreadable_folder_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_modes, where: str) -> None:
    root = images(tmp_path / "d", ["train/a/0.jpg", "train/a/1.jpg", "train/b/0.jpg", "train/b/sub/1.jpg",
                                   "val/a/0.jpg", "val/b/0.jpg"])
    make_unreadable(root / where, monkeypatch)
    with pytest.raises(DataError) as e:
        find_splits(root)
    text = one_line(e)
    assert f"'{root / where}'" in text and "cannot read" in text and "permission denied" in text
    assert "holds no images" not in text


def test_unreadable_class_folder_under_a_flat_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_modes) -> None:
    root = images(tmp_path / "d", ["a/0.jpg", "a/1.jpg", "b/0.jpg", "b/1.jpg"])
    make_unreadable(root / "a", monkeypatch)
    with pytest.raises(DataError, match="cannot read the folder .*permission denied"):
        scan_folder(root, classes=["a", "b"])  # also with a given class list (eval / predict)


# --------------------------------------------------------------------------- quiet loader
def test_loader_prints_nothing_without_log(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    root = make_photo_folder(tmp_path / "p", count=8, width=24, height=24, classes=2)
    loader = build_loader(scan_folder(root), train=False, img_size=8, batch_size=4, workers="auto")
    assert loader.probe is not None
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    said: list[str] = []
    build_loader(scan_folder(root), train=False, img_size=8, batch_size=4, workers="auto", log=said.append)
    assert said and said[0].startswith("workers=auto: picked")


def test_train_says_what_auto_workers_picked_unless_quiet(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from finetune import TrainConfig
    from finetune.train import train

    data = make_shapes(tmp_path / "shapes", per_class=1, val_per_class=1, size=32)
    for quiet in (True, False):
        cfg = TrainConfig(data=str(data), model="squeezenet1_1", img_size=32, epochs=1, batch_size=8,
                          workers="auto", device="cpu", out=str(tmp_path / f"run{quiet}"), max_steps=1)
        capfd.readouterr()
        train(cfg, quiet=quiet)
        out, err = capfd.readouterr()
        assert ("workers=auto: picked" in out + err) is not quiet, (quiet, out, err)


# --------------------------------------------------------------------------- library numbers
@pytest.mark.parametrize("workers", [-1, "-2", "many", 1.5, True])
def test_build_loader_checks_workers(workers) -> None:
    s = Samples.from_lists(["x.jpg", "y.jpg"], [0, 1], ["a", "b"])
    with pytest.raises(ConfigError) as e:
        build_loader(s, train=False, workers=workers)
    assert "workers" in one_line(e)


@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(img_size=0), dict(batch_size=-4)])
def test_build_loader_checks_sizes(bad: dict) -> None:
    s = Samples.from_lists(["x.jpg", "y.jpg"], [0, 1], ["a", "b"])
    with pytest.raises(ConfigError, match=next(iter(bad))):
        build_loader(s, train=False, workers=0, **bad)
    assert build_loader(s, train=False, workers="0", batch_size=np.int64(2)).workers == 0


@pytest.mark.parametrize("bad", [dict(seconds=0), dict(seconds=-1.0), dict(seconds=float("nan")), dict(repeats=0),
                                 dict(repeats=-1), dict(workers=[0, -1])])
def test_run_bench_checks_its_numbers(tmp_path: Path, bad: dict) -> None:
    root = make_photo_folder(tmp_path / "p", count=8, width=24, height=24, classes=2)
    with pytest.raises(ConfigError) as e:
        run_bench(root, img_size=8, batch_size=2, full=False, cache=False, **{"workers": [0], "repeats": 1, **bad})
    assert next(iter(bad)) in one_line(e)

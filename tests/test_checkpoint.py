"""finetune.checkpoint: atomic, durable, pruned checkpoints; restore by name; exact resume after kill -9."""

from __future__ import annotations

import contextlib
import doctest
import errno
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import finetune.checkpoint as ck
from finetune.checkpoint import (
    Checkpointer,
    CheckpointWarning,
    GracefulExit,
    capture_rng_state,
    clean_state_dict,
    load_model_state,
    load_optimizer_state_by_name,
    optimizer_state_by_name,
    restore,
    restore_rng_state,
    stop_message,
    unwrap_model,
)
from finetune.errors import CheckpointError, ConfigError

SRC = Path(ck.__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers
def tiny_model(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, classes))


def trained(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 1, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 6, 6, generator=g)
        y = torch.randint(0, 3, (4,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def make_state(step: int, *, epoch: int = 0, fill: float | None = None) -> dict:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trained(model, opt)
    if fill is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(fill)
    return {"model": model, "optimizer": opt, "epoch": epoch, "step": step, "batches_in_epoch": step % 5,
            "loader": {"seed": 7, "epoch": epoch}, "rng": capture_rng_state(), "config": {"lr": 0.1, "out": Path("r")},
            "arch": "tiny", "classes": ["a", "b", "c"], "best_top1": 0.5}


def files(run: Path) -> list[str]:
    return sorted(os.listdir(run / "checkpoints"))


def temp_files(run: Path) -> list[str]:
    return [n for n in files(run) if ".tmp." in n]


def assert_all_loadable(run: Path) -> None:
    """Every .pt under the run directory loads with weights_only=True and is a finetune checkpoint."""
    pts = sorted((run / "checkpoints").glob("*.pt"))
    assert pts
    for p in pts:
        obj = torch.load(p, weights_only=True)
        assert obj["format"] == "finetune-checkpoint" and obj["format_version"] == 1, p


def tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# --------------------------------------------------------------------------- basic save / load
def test_save_writes_complete_weights_only_files(tmp_path):
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(make_state(10, epoch=1), metrics={"val_top1": 0.5})
    assert path.name == "ckpt-e0001-s00000010.pt"
    assert files(tmp_path) == ["best.pt", "ckpt-e0001-s00000010.json", "ckpt-e0001-s00000010.pt", "last.pt"]
    assert_all_loadable(tmp_path)
    state = ckpt.load()
    assert state["versions"]["torch"] == torch.__version__ and state["versions"]["finetune"]
    assert state["step"] == 10 and state["epoch"] == 1 and state["loader"] == {"seed": 7, "epoch": 1}
    assert state["config"]["out"] == "r"  # a Path is stored as str
    assert set(state["model"]) == set(tiny_model().state_dict())
    assert all(t.device.type == "cpu" for t in state["model"].values())
    assert state["optimizer"]["format"] == "finetune-optimizer-by-name"
    manifest = json.loads((tmp_path / "checkpoints" / "ckpt-e0001-s00000010.json").read_text())
    assert manifest["bytes"] == path.stat().st_size and manifest["is_best"] and manifest["best_value"] == 0.5
    assert ckpt.latest() == path and ckpt.best() == tmp_path / "checkpoints" / "best.pt"


def test_saved_model_weights_are_the_models(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trained(model, opt, steps=2)
    Checkpointer(tmp_path).save({"model": model, "optimizer": opt, "epoch": 0, "step": 2})
    fresh = tiny_model()
    fresh[0].weight.data.zero_()
    restore(Checkpointer(tmp_path).load(), model=fresh)
    assert tensors_equal(fresh.state_dict(), model.state_dict())


@pytest.mark.parametrize("bad", [{"epoch": 0}, {"epoch": 0, "step": -1}, {"epoch": "1", "step": 1}])
def test_save_needs_int_epoch_and_step(tmp_path, bad):
    with pytest.raises(CheckpointError, match="needs state"):
        Checkpointer(tmp_path).save(bad)


def test_state_that_does_not_load_weights_only_is_refused_with_its_key(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\['config'\]\['fn'\]: a function"):
        Checkpointer(tmp_path).save({"epoch": 0, "step": 0, "config": {"fn": lambda: 0}})
    assert not (tmp_path / "checkpoints").exists() or not files(tmp_path)
    Checkpointer(tmp_path).save({"epoch": 0, "step": 1, "m": {"x": np.float64(0.25), "n": np.int64(3)}})
    assert Checkpointer(tmp_path).load()["m"] == {"x": 0.25, "n": 3}


@pytest.mark.parametrize("kwargs", [{"keep_last": 0}, {"mode": "best"}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        Checkpointer(tmp_path, **kwargs)


def test_a_checkpoint_file_is_no_run_directory(tmp_path):
    first = Checkpointer(tmp_path).save({"epoch": 0, "step": 1})
    with pytest.raises(ConfigError, match="takes a run directory, and '.*' is a file"):
        Checkpointer(first)


# --------------------------------------------------------------------------- keep-k / best / links
@pytest.mark.parametrize(("mode", "values", "best_step"), [
    ("max", [0.5, 0.9, 0.3, 0.4, 0.2], 2),
    ("min", [0.5, 0.1, 0.3, 0.4, 0.2], 2),
    ("max", [0.1, 0.2, 0.3, 0.4, 0.9], 5),
])
def test_keep_last_prunes_but_never_the_best(tmp_path, mode, values, best_step):
    ckpt = Checkpointer(tmp_path, keep_last=2, best_metric="val_top1", mode=mode)
    for step, v in enumerate(values, start=1):
        ckpt.save(make_state(step, fill=float(step)), metrics={"val_top1": v})
    kept = sorted({int(m.group(1)) for n in files(tmp_path) if (m := re.search(r"-s(\d+)\.pt$", n))})
    assert kept == sorted({4, 5, best_step})
    assert {n for n in files(tmp_path) if n.endswith(".json")} == {n.replace(".pt", ".json") for n in files(tmp_path)
                                                                   if n.startswith("ckpt-")}
    assert ckpt.load(ckpt.best())["step"] == best_step
    assert ckpt.load(tmp_path / "checkpoints" / "best.pt")["step"] == best_step
    assert ckpt.load(tmp_path / "checkpoints" / "last.pt")["step"] == 5
    assert ckpt.best_value == values[best_step - 1]
    assert_all_loadable(tmp_path)


def test_best_is_remembered_across_restarts(tmp_path):
    Checkpointer(tmp_path).save(make_state(1), metrics={"val_top1": 0.8})
    again = Checkpointer(tmp_path, keep_last=1)
    assert again.best_value == 0.8
    again.save(make_state(2), metrics={"val_top1": 0.7})
    again.save(make_state(3), metrics={"val_top1": 0.6})
    assert again.load(again.best())["step"] == 1
    assert sorted(n for n in files(tmp_path) if n.endswith(".pt") and n.startswith("ckpt")) == [
        "ckpt-e0000-s00000001.pt", "ckpt-e0000-s00000003.pt"]
    again.save(make_state(4), metrics={"val_top1": 0.95})
    assert again.load(again.best())["step"] == 4 and again.best_value == 0.95


def test_last_and_best_are_hard_links_when_possible(tmp_path):
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(make_state(1), metrics={"val_top1": 1.0})
    d = tmp_path / "checkpoints"
    assert os.path.samefile(d / "last.pt", path) and os.path.samefile(d / "best.pt", path)


def test_hard_link_failure_falls_back_to_atomic_copy(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    ckpt = Checkpointer(tmp_path, keep_last=1)
    ckpt.save(make_state(1, fill=1.0), metrics={"val_top1": 0.9})
    ckpt.save(make_state(2, fill=2.0), metrics={"val_top1": 0.1})
    d = tmp_path / "checkpoints"
    assert os.stat(d / "best.pt").st_nlink == 1 and os.stat(d / "last.pt").st_nlink == 1
    assert not os.path.samefile(d / "best.pt", d / "ckpt-e0000-s00000001.pt")
    assert ckpt.verify(d / "best.pt") is None and ckpt.verify(d / "last.pt") is None
    assert ckpt.best() == d / "best.pt"
    assert ckpt.load(d / "best.pt")["step"] == 1 and ckpt.load(d / "last.pt")["step"] == 2
    assert not temp_files(tmp_path)
    assert_all_loadable(tmp_path)


# --------------------------------------------------------------------------- crashes, corruption, write failures
def test_crash_in_the_middle_of_a_write_leaves_everything_before_intact(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(make_state(1, fill=1.0))
    ckpt.save(make_state(2, fill=2.0))
    before = {n: (tmp_path / "checkpoints" / n).read_bytes() for n in files(tmp_path)}
    real = ck._serialize

    def half_then_crash(payload, writer):
        import io
        buf = io.BytesIO()
        real(payload, buf)
        writer.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(ck, "_serialize", half_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ckpt.save(make_state(3, fill=3.0))
    assert not temp_files(tmp_path)
    assert {n: (tmp_path / "checkpoints" / n).read_bytes() for n in files(tmp_path)} == before
    assert ckpt.latest().name == "ckpt-e0000-s00000002.pt" and not ckpt.skipped
    assert ckpt.load(tmp_path / "checkpoints" / "last.pt")["step"] == 2


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def _flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 4] ^= 0xFF  # with a 4 MB tensor inside: in its data, before the last MiB
    p.write_bytes(bytes(b))


@pytest.mark.parametrize(("damage", "reason"), [
    (_truncate, "truncated"),
    (_flip, "checksum mismatch"),
    (lambda p: p.with_suffix(".json").unlink(), "incomplete: no manifest"),
    (lambda p: p.with_suffix(".json").write_text("{"), "manifest .* unreadable"),
])
def test_latest_skips_a_damaged_newest_checkpoint(tmp_path, damage, reason):
    ckpt = Checkpointer(tmp_path, keep_last=5)
    for step in (1, 2, 3):
        ckpt.save({**make_state(step, fill=float(step)), "big": torch.ones(2**20)})
    newest = tmp_path / "checkpoints" / "ckpt-e0000-s00000003.pt"
    damage(newest)
    fresh = Checkpointer(tmp_path, keep_last=5)
    with pytest.warns(CheckpointWarning, match=reason):
        path = fresh.latest()
    assert path.name == "ckpt-e0000-s00000002.pt"
    assert [(p, bool(re.search(reason, r))) for p, r in fresh.skipped] == [(newest, True)]
    assert float(fresh.load(path)["model"]["4.weight"][0, 0]) == 2.0
    with pytest.raises(CheckpointError, match=reason) as info:
        fresh.load(newest)
    assert str(newest) in str(info.value) and "\n" not in str(info.value)
    # a new save at the same step replaces the damaged file and is the newest again
    fresh.save(make_state(3, fill=3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fresh.latest() == newest
    assert fresh.load()["step"] == 3


def test_without_torch_crc32_the_whole_file_is_hashed(tmp_path, monkeypatch):
    set_crc32 = getattr(torch.serialization, "set_crc32_options", None)
    if set_crc32 is None:  # torch 2.4 always writes CRC32s: only the manifest's side can be checked
        monkeypatch.setattr("finetune.checkpoint._torch_writes_crc32", lambda: False)
        set_crc32 = lambda on: None  # noqa: E731
    set_crc32(False)
    try:
        ckpt = Checkpointer(tmp_path, keep_last=5)
        ckpt.save(make_state(1))
        path = ckpt.save({**make_state(2), "big": torch.ones(2**20)})
    finally:
        set_crc32(True)
    assert "sha256" in json.loads(path.with_suffix(".json").read_text())
    _flip(path)
    assert ckpt.verify(path).startswith("checksum mismatch")
    with pytest.warns(CheckpointWarning):
        assert Checkpointer(tmp_path).latest().name == "ckpt-e0000-s00000001.pt"


def test_damaged_last_pt_is_detected(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(make_state(1))
    last = tmp_path / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.unlink()
    last.write_bytes(data[:-100])  # a separate, damaged copy
    with pytest.raises(CheckpointError, match="truncated"):
        Checkpointer.read(last)


@pytest.mark.parametrize(("content", "message"), [
    (lambda p: torch.save({"weights": torch.zeros(2)}, p), "not a finetune checkpoint"),
    (lambda p: torch.save(ConfigError("x"), p), "would run code"),
    (lambda p: p.write_bytes(b"garbage" * 100), "truncated or not a checkpoint"),
    (lambda p: __import__("safetensors.torch").torch.save_file({"w": torch.zeros(2)}, str(p)), "a safetensors file"),
])
def test_read_reports_what_is_wrong_in_one_line(tmp_path, content, message):
    path = tmp_path / "model.pt"
    content(path)
    with pytest.raises(CheckpointError, match=message) as info:
        Checkpointer.read(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_nothing_to_load(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        Checkpointer(tmp_path).load()
    with pytest.raises(CheckpointError, match="no such file"):
        Checkpointer(tmp_path).load(tmp_path / "nope.pt")
    assert Checkpointer(tmp_path).latest() is None and Checkpointer(tmp_path).best() is None


def _fail_writes_after(limit: int, err: int):
    real = ck._Writer.write

    def write(self, data):
        if self.size + memoryview(data).nbytes > limit:
            e = OSError(err, os.strerror(err))
            self.error = self.error or e
            raise e
        return real(self, data)
    return write


def test_failed_first_save_does_not_promise_a_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(ck._Writer, "write", _fail_writes_after(1000, errno.ENOSPC))
    with pytest.raises(CheckpointError, match="disk is full") as info:
        Checkpointer(tmp_path).save(make_state(1, fill=1.0))
    assert "no checkpoint of this run was written yet" in str(info.value) and "--resume" not in str(info.value)


def test_failed_save_at_an_existing_step_keeps_the_earlier_file(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(make_state(1, fill=1.0))
    before = path.read_bytes()
    monkeypatch.setattr(ck._Writer, "write", _fail_writes_after(1000, errno.ENOSPC))
    with pytest.raises(CheckpointError, match="intact.*disk is full.*--resume auto"):
        ckpt.save(make_state(1, fill=2.0))
    monkeypatch.undo()
    assert path.read_bytes() == before and ckpt.verify(path) is None


@pytest.mark.parametrize(("where", "err", "message"), [
    ("data", errno.ENOSPC, "disk is full"),
    ("manifest", errno.ENOSPC, "disk is full"),
    ("replace", errno.EACCES, "permission denied"),
    ("link", errno.EROFS, "read-only"),
])
def test_write_failure_is_clear_and_keeps_earlier_checkpoints(tmp_path, monkeypatch, where, err, message):
    ckpt = Checkpointer(tmp_path, keep_last=2)
    ckpt.save(make_state(1, fill=1.0), metrics={"val_top1": 0.9})
    ckpt.save(make_state(2, fill=2.0), metrics={"val_top1": 0.5})
    before = {n: (tmp_path / "checkpoints" / n).read_bytes() for n in files(tmp_path)}
    real_write_atomic = ck._write_atomic

    def fail(*args):
        raise OSError(err, os.strerror(err))

    def fail_for(name_matches):
        return lambda final, produce: fail() if name_matches(final) else real_write_atomic(final, produce)

    if where == "data":
        monkeypatch.setattr(ck._Writer, "write", _fail_writes_after(1000, err))
    elif where == "manifest":
        monkeypatch.setattr(ck, "_write_atomic", fail_for(lambda f: f.suffix == ".json"))
    elif where == "replace":
        monkeypatch.setattr(os, "replace", fail)
    else:  # no hard links, and the copy that replaces them fails
        monkeypatch.setattr(os, "link", fail)
        monkeypatch.setattr(ck, "_write_atomic", fail_for(lambda f: f.name == "last.pt"))
    with pytest.raises(CheckpointError, match=message) as info:
        ckpt.save(make_state(3, fill=3.0), metrics={"val_top1": 0.95})
    assert "intact" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.undo()
    assert not temp_files(tmp_path)
    after = {n: (tmp_path / "checkpoints" / n).read_bytes() for n in files(tmp_path) if n in before}
    assert after == before  # earlier checkpoints, last.pt and best.pt untouched
    assert Checkpointer(tmp_path).load(tmp_path / "checkpoints" / "best.pt")["step"] == 1
    latest = Checkpointer(tmp_path).latest().name
    assert latest == ("ckpt-e0000-s00000003.pt" if where == "link" else "ckpt-e0000-s00000002.pt")


def test_temp_files_of_dead_writers_are_removed(tmp_path):
    Checkpointer(tmp_path).save(make_state(1))
    d = tmp_path / "checkpoints"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = d / f".ckpt-e0000-s00000002.pt.tmp.{int(dead.stdout)}.0123abcd"
    mine = d / f".ckpt-e0000-s00000003.pt.tmp.{os.getpid()}.0123abcd"
    stale.write_bytes(b"x"), mine.write_bytes(b"x")
    Checkpointer(tmp_path)
    assert not stale.exists() and mine.exists()


# --------------------------------------------------------------------------- async
def test_async_save_equals_sync_save_bitwise(tmp_path):
    state = make_state(4, epoch=1)
    sync = Checkpointer(tmp_path / "sync").load(Checkpointer(tmp_path / "sync").save(state))
    with Checkpointer(tmp_path / "async", async_save=True) as a:
        a.save(state)
        a.save({**state, "step": 5})  # reuses the host buffers of the first save
    for step in (4, 5):
        loaded = Checkpointer(tmp_path / "async").load(
            tmp_path / "async" / "checkpoints" / f"ckpt-e0001-s{step:08d}.pt")
        assert tensors_equal({k: v for k, v in loaded.items() if k not in ("saved_at", "step")},
                             {k: v for k, v in sync.items() if k not in ("saved_at", "step")})
    assert_all_loadable(tmp_path / "async")


def test_async_save_snapshots_before_training_goes_on(tmp_path, monkeypatch):
    go = threading.Event()
    real = ck._serialize
    monkeypatch.setattr(ck, "_serialize", lambda payload, writer: (go.wait(10), real(payload, writer)))
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trained(model, opt)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save({"model": model, "optimizer": opt, "epoch": 0, "step": 1})
    trained(model, opt, steps=2)  # training goes on while the write waits
    go.set()
    ckpt.wait()
    assert tensors_equal(ckpt.load()["model"], expected)
    assert not tensors_equal(model.state_dict(), expected)


def test_async_write_error_is_raised_at_the_next_save(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save(make_state(1))
    ckpt.wait()
    monkeypatch.setattr(ck._Writer, "write", _fail_writes_after(100, errno.ENOSPC))
    ckpt.save(make_state(2))  # returns: the write fails in the background
    with pytest.raises(CheckpointError, match="background save .*s00000002.pt.* failed: .*disk is full") as info:
        ckpt.save(make_state(3))
    assert isinstance(info.value.__cause__, CheckpointError)
    monkeypatch.undo()
    ckpt.save(make_state(3))  # the error was reported once; saving works again
    ckpt.close()
    assert [p.name for p in ckpt.checkpoints()] == ["ckpt-e0000-s00000001.pt", "ckpt-e0000-s00000003.pt"]
    assert not temp_files(tmp_path)


@pytest.mark.parametrize("finish", ["wait", "close"])
def test_async_write_error_is_raised_by_wait_and_close(tmp_path, monkeypatch, finish):
    ckpt = Checkpointer(tmp_path, async_save=True)
    monkeypatch.setattr(ck, "_serialize", lambda payload, writer: (_ for _ in ()).throw(ValueError("boom")))
    ckpt.save(make_state(1))
    with pytest.raises(CheckpointError, match="ValueError: boom"):
        getattr(ckpt, finish)()


def test_async_error_nobody_waited_for_is_printed_at_exit(tmp_path):
    script = textwrap.dedent(f"""
        import errno, os, sys
        sys.path.insert(0, {str(SRC)!r})
        import finetune.checkpoint as ck
        def full(payload, writer):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        ck._serialize = full
        c = ck.Checkpointer({str(tmp_path)!r}, async_save=True)
        c.save({{"epoch": 0, "step": 1}})
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "finetune: error: background save" in res.stderr and "disk is full" in res.stderr, res.stderr


def test_at_most_one_async_save_in_flight(tmp_path, monkeypatch):
    real = ck._serialize
    lock, active, most = threading.Lock(), [0], [0]

    def slow(payload, writer):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        real(payload, writer)
        with lock:
            active[0] -= 1

    monkeypatch.setattr(ck, "_serialize", slow)
    with Checkpointer(tmp_path, keep_last=5, async_save=True) as ckpt:
        for step in range(1, 4):
            ckpt.save(make_state(step))
    assert most[0] == 1
    assert [p.name for p in Checkpointer(tmp_path).checkpoints()] == [f"ckpt-e0000-s0000000{s}.pt" for s in (1, 2, 3)]


# --------------------------------------------------------------------------- wrappers
class FakeWrapper(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class WithInnerWrapper(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = nn.DataParallel(body, device_ids=[])
        self.head = nn.Linear(3, 2)


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path_factory.mktemp('pg')}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


WRAPS = {
    "bare": lambda m: m,
    "dataparallel": lambda m: nn.DataParallel(m, device_ids=[]),
    "fake": FakeWrapper,
    "compiled": torch.compile,
    "compiled-dataparallel": lambda m: torch.compile(nn.DataParallel(m, device_ids=[])),
    "ddp": lambda m: nn.parallel.DistributedDataParallel(m),
}


@pytest.mark.parametrize("wrap", WRAPS)
def test_save_from_any_wrapper_load_into_bare_and_back(tmp_path, wrap, request):
    if wrap == "ddp":
        request.getfixturevalue("process_group")
    source = tiny_model()
    with torch.no_grad():
        for i, p in enumerate(source.parameters()):
            p.add_(i)
    wrapped = WRAPS[wrap](source)
    assert unwrap_model(wrapped) is source
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9)
    trained(wrapped, opt)
    Checkpointer(tmp_path).save({"model": wrapped, "optimizer": opt, "epoch": 0, "step": 1})
    state = Checkpointer(tmp_path).load()
    assert list(state["model"]) == list(source.state_dict())
    bare = tiny_model()
    bare_opt = torch.optim.SGD(bare.parameters(), lr=0.1, momentum=0.9)
    report = restore(state, model=bare, optimizer=bare_opt)
    assert report.optimizer.exact and tensors_equal(bare.state_dict(), source.state_dict())
    assert tensors_equal(bare_opt.state_dict(), opt.state_dict())
    # and back: a bare model's checkpoint into the wrapper
    other = WRAPS[wrap](tiny_model())
    load_model_state(other, clean_state_dict(bare))
    assert tensors_equal(unwrap_model(other).state_dict(), source.state_dict())


def test_nested_wrapper_inside_the_model(tmp_path):
    model = WithInnerWrapper(nn.Linear(4, 3))
    sd = clean_state_dict(model)
    assert sorted(sd) == ["body.bias", "body.weight", "head.bias", "head.weight"]
    plain = nn.Module()
    plain.body, plain.head = nn.Linear(4, 3), nn.Linear(3, 2)
    load_model_state(plain, sd)
    assert torch.equal(plain.body.weight, model.body.module.weight)
    load_model_state(WithInnerWrapper(nn.Linear(4, 3)), clean_state_dict(plain))
    assert sorted(clean_state_dict({"module.body.module.weight": torch.zeros(1), "_orig_mod.x": torch.ones(1)})) == [
        "body.weight", "x"]


def test_clean_state_dict_owns_its_storage(tmp_path):
    base = torch.arange(1000.0)
    tied = torch.ones(3)
    sd = clean_state_dict({"module.a": base[10:12], "module.b": base[::100], "t1": tied, "t2": tied})
    assert [t.untyped_storage().nbytes() for t in sd.values()] == [8, 40, 12, 12]
    assert sd["t1"].untyped_storage().data_ptr() != sd["t2"].untyped_storage().data_ptr()
    assert all(t.is_contiguous() for t in sd.values()) and torch.equal(sd["b"], base[::100])
    Checkpointer(tmp_path).save({"model": sd, "epoch": 0, "step": 0})
    assert (tmp_path / "checkpoints" / "ckpt-e0000-s00000000.pt").stat().st_size < 3000  # not the 4 kB base


def test_load_model_state_mismatch_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model_state(tiny_model(5), clean_state_dict(tiny_model(3)))
    with pytest.raises(CheckpointError, match="missing"):
        load_model_state(tiny_model(), {"0.weight": tiny_model()[0].weight})
    missing, unexpected = load_model_state(tiny_model(), {"0.weight": torch.zeros(4, 3, 3, 3), "x": torch.ones(1)},
                                           strict=False)
    assert "0.bias" in missing and unexpected == ["x"]


# --------------------------------------------------------------------------- optimizer by name
class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.backbone(x).relu())


BATCHES = [(torch.randn(5, 6, generator=torch.Generator().manual_seed(i)), torch.tensor([0, 1, 2, 0, 1]))
           for i in range(6)]


def run_steps(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def roundtrip(obj, tmp_path):
    torch.save(obj, tmp_path / "o.pt")
    return torch.load(tmp_path / "o.pt", weights_only=True)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: torch.optim.AdamW(p, lr=0.01),
])
def test_optimizer_round_trip_continues_exactly(tmp_path, make_opt):
    ref = Net()
    ref_opt = make_opt(ref.parameters())
    run_steps(ref, ref_opt, BATCHES[:3])
    saved = roundtrip({"model": clean_state_dict(ref), "opt": optimizer_state_by_name(ref_opt, ref)}, tmp_path)
    run_steps(ref, ref_opt, BATCHES[3:])
    new = Net()
    new.head.weight.data.zero_()
    new_opt = make_opt(new.parameters())
    load_model_state(new, saved["model"])
    assert load_optimizer_state_by_name(new_opt, new, saved["opt"]).exact
    run_steps(new, new_opt, BATCHES[3:])
    assert tensors_equal(new.state_dict(), ref.state_dict())


def test_unfreeze_with_reordered_groups_matches_the_uninterrupted_run(tmp_path):
    # uninterrupted: head only for 3 steps, then the backbone joins as a second group
    ref = Net()
    ref.backbone.requires_grad_(False)
    ref_opt = torch.optim.SGD(ref.head.parameters(), lr=0.1, momentum=0.9)
    run_steps(ref, ref_opt, BATCHES[:3])
    saved = roundtrip({"model": clean_state_dict(ref), "opt": optimizer_state_by_name(ref_opt, ref)}, tmp_path)
    ref.backbone.requires_grad_(True)
    ref_opt.add_param_group({"params": list(ref.backbone.parameters()), "lr": 0.01})
    run_steps(ref, ref_opt, BATCHES[3:])
    # resumed: the new layout lists the backbone group first
    new = Net()
    load_model_state(new, saved["model"])
    new_opt = torch.optim.SGD([{"params": new.backbone.parameters(), "lr": 0.01},
                               {"params": new.head.parameters()}], lr=0.1, momentum=0.9)
    report = load_optimizer_state_by_name(new_opt, new, saved["opt"])
    assert report.restored == ["head.weight", "head.bias"]
    assert report.missing == ["backbone.0.weight", "backbone.0.bias", "backbone.2.weight", "backbone.2.bias"]
    assert report.groups_restored == ["#1"] and report.groups_fresh == ["#0"] and not report.exact
    assert "4 new" in str(report)
    run_steps(new, new_opt, BATCHES[3:])
    assert tensors_equal(new.state_dict(), ref.state_dict())


def test_named_groups_get_their_hyperparameters_back_in_any_order():
    model = Net()
    opt = torch.optim.SGD([{"params": model.backbone.parameters(), "lr": 0.01, "name": "backbone"},
                           {"params": model.head.parameters(), "lr": 0.1, "name": "head"}], lr=0.5, momentum=0.9)
    run_steps(model, opt, BATCHES[:2])
    opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = 0.003, 0.03  # what a scheduler did
    saved = optimizer_state_by_name(opt, model)
    new_opt = torch.optim.SGD([{"params": model.head.parameters(), "lr": 1.0, "name": "head"},
                               {"params": model.backbone.parameters(), "lr": 1.0, "name": "backbone"}],
                              lr=0.5, momentum=0.9)
    report = load_optimizer_state_by_name(new_opt, model, saved)
    assert report.exact and report.groups_restored == ["head", "backbone"]
    assert [g["lr"] for g in new_opt.param_groups] == [0.03, 0.003]
    for group in new_opt.param_groups:
        for p in group["params"]:
            assert torch.equal(new_opt.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


def test_new_head_and_dropped_parameters_are_reported(tmp_path):
    model = Net(classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run_steps(model, opt, BATCHES[:1])
    saved = optimizer_state_by_name(opt, model)
    new = Net(classes=5)
    new.backbone[0].requires_grad_(False)
    new_opt = torch.optim.SGD([p for p in new.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    report = load_optimizer_state_by_name(new_opt, new, saved)
    assert report.shape_mismatch == ["head.weight", "head.bias"]
    assert report.unexpected == ["backbone.0.weight", "backbone.0.bias"]
    assert report.restored == ["backbone.2.weight", "backbone.2.bias"] and report.groups_fresh == ["#0"]
    assert torch.equal(new_opt.state[new.backbone[2].weight]["momentum_buffer"],
                       opt.state[model.backbone[2].weight]["momentum_buffer"])
    assert new.head.weight not in new_opt.state
    run_steps(new, new_opt, BATCHES[1:2])  # and training goes on


def test_changed_optimizer_class_restores_nothing():
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run_steps(model, opt, BATCHES[:1])
    adam = torch.optim.Adam(model.parameters())
    report = load_optimizer_state_by_name(adam, model, optimizer_state_by_name(opt, model))
    assert report.optimizer_changed == "SGD -> Adam" and not adam.state
    with pytest.raises(CheckpointError, match="not stored by parameter name"):
        load_optimizer_state_by_name(adam, model, opt.state_dict())


# --------------------------------------------------------------------------- RNG
def draws():
    return (random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.standard_normal()),
            torch.rand(3).tolist(), torch.randn(1).item())


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.gauss(0, 1), np.random.standard_normal()  # leave cached gaussians in both generators
    state = roundtrip(capture_rng_state(), tmp_path)
    first = draws()
    assert first != draws()
    restore_rng_state(state)
    assert draws() == first


# --------------------------------------------------------------------------- signals
def test_graceful_exit_sets_a_flag_then_a_second_signal_acts_as_usual():
    # CI may start us as a background job, where SIGINT starts out ignored: make "as usual" Ctrl-C's default
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        with GracefulExit(announce=False) as stop:
            assert stop.installed and not stop.stop_requested
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                if stop.stop_requested:
                    break
                time.sleep(0.001)
            assert stop.stop_requested and stop.signal_name == "SIGINT"
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    finally:
        signal.signal(signal.SIGINT, saved)


def test_graceful_exit_outside_the_main_thread_installs_nothing():
    seen = []
    t = threading.Thread(target=lambda: seen.append(GracefulExit().__enter__().installed))
    t.start(), t.join()
    assert seen == [False]


def test_stop_message_says_how_to_resume():
    assert stop_message(Path("runs/x"), 2, 40) == "stopped at epoch 2 step 40; resume with: finetune train --out runs/x --resume auto"


TRAINER = textwrap.dedent("""
    import signal, sys
    sys.path.insert(0, {src!r})
    import torch
    from finetune.checkpoint import Checkpointer, GracefulExit, stop_message
    with GracefulExit() as stop, Checkpointer(sys.argv[1]) as ckpt:
        print("ready", flush=True)
        step = 0
        while not stop.stop_requested:
            step += 1
            torch.randn(1000).sum()
        ckpt.save({{"epoch": 0, "step": step}})
        print(stop_message(sys.argv[1], 0, step))
""")


def test_sigterm_finishes_the_step_saves_and_exits_0(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", TRAINER.format(src=str(SRC)), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    step = int(re.search(r"step (\d+);", out).group(1))
    assert "resume with: finetune train --out" in out and "SIGTERM" in err
    assert Checkpointer(tmp_path).load()["step"] == step


# --------------------------------------------------------------------------- docs
def test_docstring_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(ck, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 8
    example = textwrap.dedent(ck.__doc__.split("resumes)::\n")[1].split("\nOnly one process")[0])
    exec(compile(example, "example", "exec"), {})
    first = Checkpointer("runs/example").load()
    exec(compile(example, "example", "exec"), {})  # resumes: nothing left to do
    assert tensors_equal(Checkpointer("runs/example").load()["model"], first["model"])
    assert first["epoch"] == 2 and len(Checkpointer("runs/example").checkpoints()) <= 3


# --------------------------------------------------------------------------- kill -9 at random moments
# Trainers run as forked children of a fork server that has imported torch once: each
# start takes milliseconds instead of seconds, and SIGKILL is as real as for any process.
FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload(["torch", "torch._dynamo", "numpy", "finetune.checkpoint"])


def _trainer(run: str, epochs: int, conn) -> None:
    """A deterministic training loop (dropout, shuffling, python/numpy noise) that saves after every step."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))  # resumed at an epoch's end
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    model = nn.Sequential(nn.Linear(32, 512), nn.ReLU(), nn.Dropout(0.3), nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    ckpt = Checkpointer(run, keep_last=2)
    epoch = batch = step = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        path = ckpt.latest()
    if path is not None:
        state = ckpt.load(path)
        restore(state, model=model, optimizer=opt, scheduler=sched)
        epoch, batch, step = state["epoch"], state["batches_in_epoch"], state["step"]
        restore_rng_state(state["rng"])
    conn.send(step)
    began = time.monotonic()
    while epoch < epochs:
        order = np.random.RandomState(100 + epoch).permutation(64)  # the sampler's seed for this epoch
        while batch < 8:
            idx = torch.from_numpy(order[batch * 8:(batch + 1) * 8])
            x = X[idx] + 0.01 * random.random() + 0.01 * float(np.random.rand())
            loss = nn.functional.cross_entropy(model(x), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            batch, step = batch + 1, step + 1
            metrics = None
            if batch == 8:
                model.eval()
                with torch.no_grad():
                    metrics = {"val_top1": (model(X).argmax(1) == Y).float().mean().item()}
                model.train()
            ckpt.save({"model": model, "optimizer": opt, "scheduler": sched, "epoch": epoch, "step": step,
                       "batches_in_epoch": batch, "rng": capture_rng_state()}, metrics=metrics)
        sched.step()
        epoch, batch = epoch + 1, 0
    final = {"model": clean_state_dict(model), "momentum": [opt.state[p]["momentum_buffer"] for p in model.parameters()]}
    torch.save(final, run + "/final.tmp")
    os.replace(run + "/final.tmp", run + "/final.pt")
    Path(run, "seconds.txt").write_text(f"{time.monotonic() - began}")  # this (last) part's training time


def run_trainer(run: Path, epochs: int, kill_after: float | None = None) -> tuple[bool, int]:
    """Run the trainer; with kill_after, SIGKILL it that long after it resumed. Returns (finished, start step)."""
    receive, send = FORKS.Pipe(duplex=False)
    proc = FORKS.Process(target=_trainer, args=(str(run), epochs, send), daemon=True)
    proc.start()
    send.close()
    try:
        assert receive.poll(120), "the trainer did not start"
        start = receive.recv()
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):  # it may have finished (and been reaped) already
                os.kill(proc.pid, signal.SIGKILL)
        proc.join(120)
    finally:
        if proc.is_alive():
            proc.kill()
    assert kill_after is not None or proc.exitcode == 0, f"the trainer failed (exit {proc.exitcode})"
    return (run / "final.pt").exists(), start


def check_after_kill(run: Path, previous_step: int) -> int:
    """After a kill: the newest complete checkpoint loads and is not older than the previous one."""
    ckpt = Checkpointer(run, keep_last=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        path = ckpt.latest()
    if path is None:  # killed before its first save completed
        assert previous_step == 0
        return 0
    state = ckpt.load(path)
    assert state["step"] >= previous_step
    for name in ("last.pt", "best.pt"):
        if (run / "checkpoints" / name).exists():  # may lag behind latest(), never damaged
            assert torch.load(run / "checkpoints" / name, weights_only=True)["format"] == "finetune-checkpoint"
    assert not temp_files(run)  # the litter of the killed writer is gone
    return state["step"]


def kill_and_resume(tmp_path: Path, kills: int, epochs: int, seed: int) -> None:
    """Kill the trainer ``kills`` times at random moments, each within ``1 / (2 * kills)`` of the time
    a whole run takes here (measured), so that the kills fall all over the run however fast or
    slow this machine is (a fixed 0-0.1 s let a fast machine finish after 2 kills)."""
    rng = random.Random(seed)
    assert run_trainer(tmp_path / "reference", epochs)[0]
    window = float((tmp_path / "reference" / "seconds.txt").read_text()) / (2 * kills)
    reference = torch.load(tmp_path / "reference" / "final.pt", weights_only=True)
    run, step, killed = tmp_path / "killed", 0, 0
    while killed < kills:
        finished, start = run_trainer(run, epochs, kill_after=rng.uniform(0.0, window))
        assert start >= step
        if finished:
            break
        killed += 1
        step = check_after_kill(run, step)
    if not (run / "final.pt").exists():
        assert run_trainer(run, epochs)[0]
    assert killed >= 3, f"the run finished after {killed} kills (seed {seed}): make it longer"
    final = torch.load(run / "final.pt", weights_only=True)
    assert tensors_equal(final, reference), f"resumed weights differ from the uninterrupted run (seed {seed})"
    # what killed writers left over is pruned by the next complete save: keep_last + the best
    ckpt = Checkpointer(run, keep_last=2)
    kept = [p.name for p in ckpt.checkpoints()]
    assert len(kept) <= 3 and ckpt.best().name == "best.pt", kept
    assert any(os.path.samefile(ckpt.best(), run / "checkpoints" / name) for name in kept)  # best is never pruned


def test_kill_9_at_random_moments_then_resume_is_bitwise_exact(tmp_path):
    kill_and_resume(tmp_path, kills=6, epochs=6, seed=random.randrange(10**6))


@pytest.mark.slow
def test_kill_9_many_times(tmp_path):
    kill_and_resume(tmp_path, kills=60, epochs=40, seed=random.randrange(10**6))

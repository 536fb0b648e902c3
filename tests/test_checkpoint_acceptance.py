"""Issue #4 from the outside: `finetune.Checkpointer` and `finetune train` checked as a user would.

Black-box acceptance tests written from the specification: real files, real processes,
failures simulated only where the operating system cannot be asked for them (a full disk,
permission denied while running as root). The CLI tests that take more than a few seconds
are marked ``slow`` (run them with ``-m slow``), among them a SIGTERM during set-up and a kill
before the first manifest (which once left a run that could be neither resumed nor restarted).
"""

from __future__ import annotations

import errno
import json
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
from typing import Any

import pytest
import torch
from torch import nn

import finetune
import finetune.checkpoint as checkpoint_module
from finetune import Checkpointer
from finetune.checkpoint import (
    CheckpointWarning,
    capture_rng_state,
    restore,
    restore_rng_state,
    unwrap_model,
)
from finetune.errors import CheckpointError, FinetuneError


# --------------------------------------------------------------------------- helpers
def net(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, classes))


def step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int = 1, classes: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, classes, (4,), generator=g)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def ckpt_dir(run: Path) -> Path:
    return run / "checkpoints"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def quiet_latest(ckpt: Checkpointer) -> Path | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        return ckpt.latest()


# --------------------------------------------------------------------------- the documented example
def documented_example() -> str:
    """The user-loop example of the docs (module docstring of finetune.checkpoint), dedented."""
    doc = checkpoint_module.__doc__ or ""
    m = re.search(r"own PyTorch loop.*?::\n\n(.*?)(?:\n\n\S|\Z)", doc, re.S)
    assert m, "no user-loop example in finetune.checkpoint's documentation"
    return textwrap.dedent(m.group(1))


def run_example(code: str, cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    """Run the example as a script in ``cwd`` (in this process: an import of torch per run is slow); its stdout."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    exec(compile(code, str(cwd / "example.py"), "exec"), {"__name__": "__main__"})
    return capsys.readouterr().out


def test_documented_user_loop_example_runs_as_written_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    code = documented_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 30  # "a 20-line example"
    m = re.search(r"range\(start, (\d+)\)", code)
    assert m, "the example's epoch loop changed: update this test"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        (tmp_path / "whole").mkdir()
        first = run_example(code, tmp_path / "whole", monkeypatch, capsys)
        run_dir = next(p.parent for p in (tmp_path / "whole").rglob("checkpoints"))
        ckpt = Checkpointer(run_dir)
        assert ckpt.latest() is not None and ckpt.best() is not None
        restore(torch.load(ckpt.latest(), weights_only=True), model=nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)))
        # run again: it resumes (nothing left to do) and leaves the files as they were
        before = snapshot(ckpt_dir(run_dir))
        assert run_example(code, tmp_path / "whole", monkeypatch, capsys) == first
        assert snapshot(ckpt_dir(run_dir)) == before
        # interrupted after one epoch fewer, then run as written: ends where the uninterrupted run did
        (tmp_path / "parts").mkdir()
        run_example(code.replace(m.group(0), f"range(start, {int(m.group(1)) - 1})"), tmp_path / "parts", monkeypatch,
                    capsys)
        run_example(code, tmp_path / "parts", monkeypatch, capsys)
    finally:
        torch.set_num_threads(threads)
    whole, parts = (torch.load(next((tmp_path / f).rglob("last.pt")), weights_only=True) for f in ("whole", "parts"))
    assert (whole["epoch"], whole["step"]) == (parts["epoch"], parts["step"])
    assert same_tensors(whole["model"], parts["model"])


def test_checkpointer_is_exported_with_the_documented_signature(tmp_path: Path) -> None:
    ckpt = finetune.Checkpointer(tmp_path)
    assert (ckpt.keep_last, ckpt.best_metric, ckpt.mode) == (3, "val_top1", "max")
    for name in ("save", "latest", "best", "load"):
        assert callable(getattr(ckpt, name))


def test_save_takes_the_state_as_a_dict_or_as_keywords(tmp_path: Path) -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, opt)
    ckpt = Checkpointer(tmp_path)
    a = ckpt.save({"model": model, "optimizer": opt, "epoch": 0, "step": 1}, metrics={"val_top1": 0.5})
    b = ckpt.save(model=model, optimizer=opt, epoch=1, step=2, metrics={"val_top1": 0.7})
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert same_tensors(sa["model"], sb["model"]) and sa["optimizer"].keys() == sb["optimizer"].keys()
    assert ckpt.load(ckpt.best())["step"] == 2


# --------------------------------------------------------------------------- empty, keep-k, best
def test_empty_run_dir_has_no_latest_or_best_and_load_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "never-written")
    assert ckpt.latest() is None and ckpt.best() is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ckpt.load()
    assert not (tmp_path / "never-written").exists()  # reading creates nothing


def test_keep_last_one_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    model = net()
    ckpt = Checkpointer(tmp_path, keep_last=1)
    for epoch, top1 in enumerate([0.2, 0.8, 0.5, 0.6]):
        ckpt.save({"model": model, "epoch": epoch, "step": 10 * (epoch + 1)}, metrics={"val_top1": top1})
    numbered = sorted(p.name for p in ckpt_dir(tmp_path).glob("ckpt-*.pt"))
    assert numbered == ["ckpt-e0001-s00000020.pt", "ckpt-e0003-s00000040.pt"]
    assert ckpt.latest().name == "ckpt-e0003-s00000040.pt"
    assert ckpt.load(ckpt.best())["epoch"] == 1
    assert torch.load(ckpt_dir(tmp_path) / "best.pt", weights_only=True)["step"] == 20
    assert torch.load(ckpt_dir(tmp_path) / "last.pt", weights_only=True)["step"] == 40


def test_keep_last_none_keeps_every_checkpoint(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, keep_last=None)
    for s in range(1, 6):
        ckpt.save({"w": torch.full((2,), float(s)), "epoch": 0, "step": s}, metrics={"val_top1": 0.1})
    assert len(list(ckpt_dir(tmp_path).glob("ckpt-*.pt"))) == 5


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3"])
def test_invalid_keep_last_is_refused(tmp_path: Path, bad: Any) -> None:
    with pytest.raises((FinetuneError, ValueError, TypeError)):
        Checkpointer(tmp_path, keep_last=bad)


def test_invalid_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises((FinetuneError, ValueError)):
        Checkpointer(tmp_path, mode="maximum")


def test_mode_min_on_val_loss(tmp_path: Path) -> None:
    model = net()
    ckpt = Checkpointer(tmp_path, keep_last=1, best_metric="val_loss", mode="min")
    for epoch, loss in enumerate([1.0, 0.3, 0.7, 0.5]):
        ckpt.save({"model": model, "epoch": epoch, "step": epoch + 1},
                  metrics={"val_loss": loss, "val_top1": 1.0 - 0.1 * epoch})  # top-1 must not matter
    assert ckpt.load(ckpt.best())["epoch"] == 1
    assert ckpt.best_value == pytest.approx(0.3)
    # a new Checkpointer on the same directory (a resumed process) knows the best so far
    again = Checkpointer(tmp_path, keep_last=1, best_metric="val_loss", mode="min")
    assert again.best_value == pytest.approx(0.3)
    again.save({"model": model, "epoch": 4, "step": 5}, metrics={"val_loss": 0.4})
    assert again.load(again.best())["epoch"] == 1
    again.save({"model": model, "epoch": 5, "step": 6}, metrics={"val_loss": 0.1})
    assert again.load(again.best())["epoch"] == 5


def test_a_missing_or_non_finite_metric_never_becomes_the_best(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path)
    ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": 1}, metrics={"val_top1": 0.4})
    ckpt.save({"w": torch.zeros(1), "epoch": 1, "step": 2}, metrics={"val_top1": float("nan")})
    ckpt.save({"w": torch.zeros(1), "epoch": 2, "step": 3})
    ckpt.save({"w": torch.zeros(1), "epoch": 3, "step": 4}, metrics={"val_top1": torch.tensor(0.3)})
    assert ckpt.load(ckpt.best())["step"] == 1


def test_two_checkpointers_on_one_directory_agree_on_the_best(tmp_path: Path) -> None:
    a, b = Checkpointer(tmp_path, keep_last=10), Checkpointer(tmp_path, keep_last=10)
    a.save({"w": torch.zeros(1), "epoch": 0, "step": 1}, metrics={"val_top1": 0.5})
    assert b.best_value == 0.5 and b.latest().name == "ckpt-e0000-s00000001.pt"
    a.save({"w": torch.zeros(1), "epoch": 1, "step": 2}, metrics={"val_top1": 0.9})
    assert b.latest().name == "ckpt-e0001-s00000002.pt"
    b.save({"w": torch.zeros(1), "epoch": 2, "step": 3}, metrics={"val_top1": 0.7})  # worse than a's 0.9
    for ckpt in (a, b, Checkpointer(tmp_path)):
        assert ckpt.load(ckpt.best())["step"] == 2
    assert torch.load(ckpt_dir(tmp_path) / "best.pt", weights_only=True)["step"] == 2


def test_saving_the_best_epoch_and_step_again_keeps_the_best(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path)
    ckpt.save({"w": torch.ones(1), "epoch": 0, "step": 5}, metrics={"val_top1": 0.9})
    ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": 5}, metrics={"val_top1": 0.1})  # same name, worse
    for reader in (ckpt, Checkpointer(tmp_path)):
        assert reader.load()["w"].item() == 0.0
        assert reader.best_value == 0.9 and reader.load(reader.best())["w"].item() == 1.0


def test_a_fresh_start_in_a_used_directory_is_what_latest_returns(tmp_path: Path) -> None:
    """A loop that starts over (no resume) in a directory of an older, longer run: its own newest
    save, not the older run's later step, is what a resume continues from, and nothing is deleted."""
    old = Checkpointer(tmp_path)
    for s in (10, 20, 30):
        old.save({"w": torch.full((1,), float(s)), "epoch": 0, "step": s}, metrics={"val_top1": 0.9})
    new = Checkpointer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        new.save({"w": torch.full((1,), 1.0), "epoch": 0, "step": 1}, metrics={"val_top1": 0.1})
    for reader in (new, Checkpointer(tmp_path)):
        assert reader.latest().name == "ckpt-e0000-s00000001.pt"
        assert reader.load()["w"].item() == 1.0
    assert torch.load(ckpt_dir(tmp_path) / "last.pt", weights_only=True)["step"] == 1
    kept = sorted(p.name for p in ckpt_dir(tmp_path).rglob("ckpt-*.pt"))
    assert {"ckpt-e0000-s00000010.pt", "ckpt-e0000-s00000020.pt", "ckpt-e0000-s00000030.pt"} <= set(kept)


def test_a_wrapped_models_state_dict_is_saved_with_clean_keys(tmp_path: Path) -> None:
    model = net()
    for i, sd in enumerate((nn.DataParallel(model, device_ids=[]).state_dict(),
                            {"_orig_mod." + k: v for k, v in model.state_dict().items()})):
        path = Checkpointer(tmp_path / str(i)).save({"model": sd, "epoch": 0, "step": 1})
        saved = torch.load(path, weights_only=True)["model"]
        assert same_tensors(saved, model.state_dict())


def test_epoch_and_step_counters_from_numpy_or_tensors_are_saved_as_ints(tmp_path: Path) -> None:
    import numpy as np

    path = Checkpointer(tmp_path).save({"w": torch.ones(1), "epoch": np.int64(2), "step": torch.tensor(7)})
    state = torch.load(path, weights_only=True)
    assert path.name == "ckpt-e0002-s00000007.pt" and (type(state["epoch"]), type(state["step"])) == (int, int)
    for bad in (-1, 1.5, "3", None, True):
        with pytest.raises((FinetuneError, ValueError, TypeError)):
            Checkpointer(tmp_path).save({"w": torch.ones(1), "epoch": 0, "step": bad})


# --------------------------------------------------------------------------- contents and formats
def test_every_written_file_loads_with_weights_only_and_holds_clean_cpu_tensors(tmp_path: Path) -> None:
    model = nn.DataParallel(net(), device_ids=[])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step(model, opt)
    sched.step()
    ckpt = Checkpointer(tmp_path, keep_last=2)
    for s in range(1, 4):
        ckpt.save({"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler, "epoch": s, "step": s,
                   "rng": capture_rng_state(), "classes": ["a", "b", "c"], "arch": "tiny"},
                  metrics={"val_top1": s / 10})
    files = list(ckpt_dir(tmp_path).glob("*.pt"))
    assert {"last.pt", "best.pt"} <= {p.name for p in files}
    for path in files:
        state = torch.load(path, weights_only=True)
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
        assert all(v.device.type == "cpu" for v in state["model"].values())
        assert state["classes"] == ["a", "b", "c"] and "format_version" in state
        assert "torch" in json.dumps(state.get("versions", {}), default=str)
    loaded = ckpt.load()
    assert same_tensors(loaded["model"], unwrap_model(model).state_dict())


def test_bf16_and_fp16_weights_round_trip_bitwise(tmp_path: Path) -> None:
    for i, dtype in enumerate((torch.bfloat16, torch.float16)):
        model = net().to(dtype)
        ckpt = Checkpointer(tmp_path / str(i))
        ckpt.save({"model": model, "epoch": 0, "step": 1})
        fresh = net(seed=5).to(dtype)
        restore(ckpt.load(), model=fresh)
        assert all(v.dtype == dtype for v in torch.load(ckpt.latest(), weights_only=True)["model"].values()
                   if v.is_floating_point())
        assert same_tensors(fresh.state_dict(), model.state_dict())


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x))


def test_tied_weights_save_and_restore_with_momentum(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    Checkpointer(tmp_path).save({"model": model, "optimizer": opt, "epoch": 0, "step": 1})
    torch.manual_seed(1)
    fresh = Tied()
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    report = restore(Checkpointer(tmp_path).load(), model=fresh, optimizer=fresh_opt)
    assert fresh.head.weight is fresh.emb.weight and torch.equal(fresh.emb.weight, model.emb.weight)
    assert report.optimizer.exact
    assert torch.equal(fresh_opt.state[fresh.emb.weight]["momentum_buffer"],
                       opt.state[model.emb.weight]["momentum_buffer"])


def test_plain_state_dict_file_truncated_file_and_newer_format_are_clear_errors(tmp_path: Path) -> None:
    model = net()
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a finetune checkpoint"):
        Checkpointer(tmp_path).load(plain)
    good = Checkpointer(tmp_path / "run").save({"model": model, "epoch": 0, "step": 1})
    data = good.read_bytes()
    for n, cut in enumerate((len(data) // 2, len(data) - 7, 30)):
        bad = tmp_path / f"cut{n}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=re.escape(str(bad))):
            Checkpointer(tmp_path).load(bad)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError):
        Checkpointer.read(tmp_path / "empty.pt")
    newer = torch.load(good, weights_only=True)
    newer["format_version"] = 999
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer"):
        Checkpointer.read(tmp_path / "newer.pt")


def test_an_older_format_version_still_loads(tmp_path: Path) -> None:
    good = Checkpointer(tmp_path / "run").save({"model": net(), "epoch": 0, "step": 1})
    state = torch.load(good, weights_only=True)
    state["format_version"] = 0
    torch.save(state, tmp_path / "old.pt")
    fresh = net(seed=3)
    restore(Checkpointer.read(tmp_path / "old.pt"), model=fresh)
    assert same_tensors(fresh.state_dict(), net().state_dict())


def test_load_with_map_location(tmp_path: Path) -> None:
    path = Checkpointer(tmp_path).save({"model": net(), "epoch": 0, "step": 1})
    for where in ("cpu", torch.device("cpu"), {"cuda:0": "cpu"}):
        state = Checkpointer(tmp_path).load(path, map_location=where)
        assert state["model"]["0.weight"].device.type == "cpu"


def test_rng_states_of_cuda_devices_absent_here_do_not_stop_a_restore() -> None:
    """A checkpoint written on a CUDA machine holds CUDA RNG states; on a CPU machine they are
    reported, the rest is restored."""
    state = capture_rng_state()
    foreign = dict(state, cuda=[torch.zeros(816, dtype=torch.uint8)] * (torch.cuda.device_count() + 2))
    first = torch.rand(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restore_rng_state(foreign)
    assert torch.equal(torch.rand(3), first)


# --------------------------------------------------------------------------- wrappers
def wrapped(kind: str, model: nn.Module) -> nn.Module:
    if kind == "bare":
        return model
    if kind == "dp":
        return nn.DataParallel(model, device_ids=[])
    if kind == "compiled":
        return torch.compile(model)  # not run: its state_dict keys carry _orig_mod.
    if kind == "dp-compiled":
        return torch.compile(nn.DataParallel(model, device_ids=[]))
    raise AssertionError(kind)


@pytest.mark.parametrize("src_kind", ["bare", "dp", "compiled", "dp-compiled"])
def test_save_from_any_wrapper_load_into_any_wrapper(tmp_path: Path, src_kind: str) -> None:
    src = wrapped(src_kind, net())
    opt = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    step(unwrap_model(src), opt)
    Checkpointer(tmp_path).save({"model": src, "optimizer": opt, "epoch": 0, "step": 1})
    saved = torch.load(ckpt_dir(tmp_path) / "last.pt", weights_only=True)
    assert set(saved["model"]) == set(net().state_dict())
    for dst_kind in ("bare", "dp", "compiled"):
        dst = wrapped(dst_kind, net(seed=9))
        dst_opt = torch.optim.SGD(dst.parameters(), lr=0.1, momentum=0.9)
        report = restore(Checkpointer(tmp_path).load(), model=dst, optimizer=dst_opt)
        assert same_tensors(unwrap_model(dst).state_dict(), unwrap_model(src).state_dict()), dst_kind
        assert report.optimizer.exact, dst_kind
    # a plain torch.load + load_state_dict into the bare model works too (clean keys)
    bare = net(seed=4)
    bare.load_state_dict(saved["model"])


def test_save_from_distributed_data_parallel_and_load_back_into_it(tmp_path: Path) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not built in")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(net())
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        step(ddp, opt)
        Checkpointer(tmp_path / "a").save({"model": ddp, "optimizer": opt, "epoch": 0, "step": 1})
        saved = torch.load(ckpt_dir(tmp_path / "a") / "last.pt", weights_only=True)
        assert set(saved["model"]) == set(net().state_dict())
        bare = net(seed=8)
        bare_opt = torch.optim.SGD(bare.parameters(), lr=0.1, momentum=0.9)
        assert restore(saved, model=bare, optimizer=bare_opt).optimizer.exact
        assert same_tensors(bare.state_dict(), ddp.module.state_dict())
        # and from the bare model into DDP
        Checkpointer(tmp_path / "b").save({"model": bare, "optimizer": bare_opt, "epoch": 0, "step": 1})
        again = nn.parallel.DistributedDataParallel(net(seed=9))
        again_opt = torch.optim.SGD(again.parameters(), lr=0.1, momentum=0.9)
        assert restore(Checkpointer(tmp_path / "b").load(), model=again, optimizer=again_opt).optimizer.exact
        assert same_tensors(again.module.state_dict(), bare.state_dict())
        step(again, again_opt)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- optimizer by name
def test_optimizer_restores_by_name_after_unfreezing_and_regrouping(tmp_path: Path) -> None:
    model = net()
    for p in model[0].parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    step(model, opt)
    Checkpointer(tmp_path).save({"model": model, "optimizer": opt, "epoch": 0, "step": 1})

    fresh = net(seed=2)  # everything trainable now, the backbone in its own group first
    opt2 = torch.optim.SGD([{"params": fresh[0].parameters(), "lr": 0.01},
                            {"params": [*fresh[1].parameters(), *fresh[4].parameters()]}], lr=0.1, momentum=0.9)
    report = restore(Checkpointer(tmp_path).load(), model=fresh, optimizer=opt2)
    opt_report = report.optimizer
    assert not opt_report.exact
    assert sorted(opt_report.missing) == ["0.bias", "0.weight"]
    assert "4.weight" in opt_report.restored
    assert torch.equal(opt2.state[fresh[4].weight]["momentum_buffer"], opt.state[model[4].weight]["momentum_buffer"])
    assert fresh[0].weight not in opt2.state
    assert opt2.param_groups[0]["lr"] == 0.01
    assert "0.weight" in str(opt_report)  # reported
    step(fresh, opt2)  # and it trains on


def test_optimizer_and_weights_restore_what_fits_after_a_new_head(tmp_path: Path) -> None:
    model = net(classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, opt)
    Checkpointer(tmp_path).save({"model": model, "optimizer": opt, "epoch": 0, "step": 1})
    fresh = net(classes=5, seed=7)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    report = restore(Checkpointer(tmp_path).load(), model=fresh, optimizer=opt2, strict=False)
    assert torch.equal(fresh[0].weight, model[0].weight)
    assert fresh[4].weight.shape == (5, 64)
    assert "4.weight" in report.missing or "4.weight" in getattr(report, "shape_mismatch", [])
    assert "4.weight" in report.optimizer.shape_mismatch and "0.weight" in report.optimizer.restored
    step(fresh, opt2, classes=5)
    # strict (the default) refuses with one line naming the tensor
    with pytest.raises(CheckpointError, match=r"4\.weight"):
        restore(Checkpointer(tmp_path).load(), model=net(classes=5))


def test_optimizer_of_another_class_is_reported_not_an_error(tmp_path: Path) -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, opt)
    Checkpointer(tmp_path).save({"model": model, "optimizer": opt, "epoch": 0, "step": 1})
    adam = torch.optim.AdamW(model.parameters())
    report = restore(Checkpointer(tmp_path).load(), model=model, optimizer=adam)
    assert not report.optimizer.exact and "SGD" in str(report.optimizer)


# --------------------------------------------------------------------------- damaged files, failed writes
def three_checkpoints(run: Path) -> Checkpointer:
    ckpt = Checkpointer(run, keep_last=5)
    for s in (1, 2, 3):
        ckpt.save({"w": torch.full((1000,), float(s)), "epoch": 0, "step": s}, metrics={"val_top1": s / 10})
    return ckpt


@pytest.mark.filterwarnings("ignore::finetune.checkpoint.CheckpointWarning")
@pytest.mark.parametrize("damage", ["truncate", "flip-middle", "flip-end", "empty", "delete-manifest", "garbage"])
def test_latest_skips_a_damaged_newest_checkpoint(tmp_path: Path, damage: str) -> None:
    three_checkpoints(tmp_path)
    newest = ckpt_dir(tmp_path) / "ckpt-e0000-s00000003.pt"
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage in ("flip-middle", "flip-end"):
        i = len(data) // 2 if damage == "flip-middle" else len(data) - 40
        data[i] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif damage == "empty":
        newest.write_bytes(b"")
    elif damage == "delete-manifest":
        newest.with_suffix(".json").unlink()
    else:
        newest.write_bytes(os.urandom(len(data)))
    ckpt = Checkpointer(tmp_path)
    with pytest.warns(CheckpointWarning, match="ckpt-e0000-s00000003"):
        latest = ckpt.latest()
    assert latest.name == "ckpt-e0000-s00000002.pt"
    assert ckpt.load()["w"][0].item() == 2.0
    with pytest.raises(CheckpointError):
        ckpt.load(newest)


@pytest.mark.filterwarnings("ignore::finetune.checkpoint.CheckpointWarning")
def test_after_resuming_past_a_damaged_best_every_file_loads_again(tmp_path: Path) -> None:
    """The newest checkpoint was also the best: damaging it damages last.pt and best.pt (hard links).
    The run resumes from the one before; its next save leaves no file that does not load."""
    ckpt = Checkpointer(tmp_path)
    ckpt.save({"w": torch.full((100,), 1.0), "epoch": 0, "step": 1}, metrics={"val_top1": 0.5})
    ckpt.save({"w": torch.full((100,), 2.0), "epoch": 0, "step": 2}, metrics={"val_top1": 0.9})
    damaged = ckpt_dir(tmp_path) / "ckpt-e0000-s00000002.pt"
    damaged.write_bytes(damaged.read_bytes()[:300])
    resumed = Checkpointer(tmp_path)
    assert resumed.load()["step"] == 1
    resumed.save({"w": torch.full((100,), 3.0), "epoch": 0, "step": 3}, metrics={"val_top1": 0.2})
    for path in ckpt_dir(tmp_path).glob("*.pt"):
        if path != damaged:
            torch.load(path, weights_only=True)
    assert torch.load(ckpt_dir(tmp_path) / "best.pt", weights_only=True)["step"] == 1
    assert Checkpointer(tmp_path).load(Checkpointer(tmp_path).best())["step"] == 1
    # a deleted best.pt comes back with the next save too
    (ckpt_dir(tmp_path) / "best.pt").unlink()
    resumed.save({"w": torch.full((100,), 4.0), "epoch": 0, "step": 4}, metrics={"val_top1": 0.1})
    assert torch.load(ckpt_dir(tmp_path) / "best.pt", weights_only=True)["step"] == 1


def disk_full(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def half_then_disk_full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    f.write(b"PK\x03\x04" + b"\0" * 5000)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def torch_write_failed(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    f.write(b"PK\x03\x04")
    raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                       "data/0: file write failed")  # what torch.save raises on a full disk


@pytest.mark.parametrize("where", ["torch.save", "partial write", "fsync", "replace", "torch's RuntimeError"])
def test_disk_full_leaves_every_earlier_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          where: str) -> None:
    ckpt = three_checkpoints(tmp_path)
    before = snapshot(ckpt_dir(tmp_path))
    with monkeypatch.context() as m:
        if where == "torch.save":
            m.setattr(torch, "save", disk_full)
        elif where == "partial write":
            m.setattr(torch, "save", half_then_disk_full)
        elif where == "fsync":
            m.setattr(os, "fsync", disk_full)
        elif where == "replace":
            m.setattr(os, "replace", disk_full)
        else:
            m.setattr(torch, "save", torch_write_failed)
        with pytest.raises(CheckpointError) as info:
            ckpt.save({"w": torch.full((1000,), 4.0), "epoch": 0, "step": 4}, metrics={"val_top1": 0.9})
    message = str(info.value)
    assert "\n" not in message and "ckpt-e0000-s00000004.pt" in message and "intact" in message
    assert where == "torch's RuntimeError" or "disk is full" in message or "No space" in message
    assert snapshot(ckpt_dir(tmp_path)) == before  # nothing changed, no temp file left behind
    again = Checkpointer(tmp_path)
    assert again.latest().name == "ckpt-e0000-s00000003.pt" and again.load(again.best())["step"] == 3
    for path in ckpt_dir(tmp_path).glob("*.pt"):
        torch.load(path, weights_only=True)
    # the space is back: saving goes on
    ckpt.save({"w": torch.full((1000,), 4.0), "epoch": 0, "step": 4}, metrics={"val_top1": 0.9})
    assert Checkpointer(tmp_path).load(Checkpointer(tmp_path).best())["step"] == 4


@pytest.mark.filterwarnings("ignore::finetune.checkpoint.CheckpointWarning")
@pytest.mark.parametrize("call", ["fsync", "replace", "link", "remove", "open"])
def test_a_failure_at_any_file_operation_of_a_save_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                call: str) -> None:
    """The n-th call of one file operation fails (disk full), for every n a save makes: the save either
    succeeds or raises a CheckpointError, and the directory always holds a loadable latest and best,
    no temporary file, and takes the next save."""
    for n in range(1, 20):
        run = tmp_path / str(n)
        ckpt = Checkpointer(run, keep_last=2)
        for s in (1, 2, 3):
            ckpt.save({"w": torch.full((100,), float(s)), "epoch": 0, "step": s}, metrics={"val_top1": s / 10})
        owner = __import__("builtins") if call == "open" else os
        real = getattr(owner, call)
        calls = [0]

        def failing(*args: Any, real: Any = real, n: int = n, calls: list[int] = calls, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, call, failing)
        try:
            ckpt.save({"w": torch.full((100,), 4.0), "epoch": 0, "step": 4}, metrics={"val_top1": 0.9})
            saved = True
        except CheckpointError:
            saved = False
        finally:
            monkeypatch.undo()
        if calls[0] < n:  # the save makes fewer calls: every one of them was tried
            assert n > 1
            break
        again = Checkpointer(run)
        assert again.load()["step"] in ((4,) if saved else (3, 4)), (call, n)
        assert again.load(again.best())["step"] in (3, 4), (call, n)
        for name in ("last.pt", "best.pt"):
            torch.load(ckpt_dir(run) / name, weights_only=True)
        assert not [p.name for p in ckpt_dir(run).iterdir() if ".tmp." in p.name], (call, n)
        ckpt.save({"w": torch.full((100,), 5.0), "epoch": 0, "step": 5}, metrics={"val_top1": 0.95})
        assert Checkpointer(run).load()["step"] == 5 and Checkpointer(run).load(Checkpointer(run).best())["step"] == 5


def test_permission_denied_is_clear_and_leaves_earlier_checkpoints(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = three_checkpoints(tmp_path)
    before = snapshot(ckpt_dir(tmp_path))
    if os.geteuid() != 0:
        ckpt_dir(tmp_path).chmod(0o500)
    else:  # root writes anywhere: make opening a new file fail as it would
        real_open = open

        def no_write(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if any(c in mode for c in "wxa+"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr("builtins.open", no_write)
    try:
        with pytest.raises(CheckpointError, match="(?i)permission"):
            ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": 4}, metrics={"val_top1": 0.9})
    finally:
        ckpt_dir(tmp_path).chmod(0o755)
        monkeypatch.undo()
    assert snapshot(ckpt_dir(tmp_path)) == before
    assert Checkpointer(tmp_path).load()["step"] == 3


def test_old_checkpoints_are_deleted_only_after_the_new_one_is_complete(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = Checkpointer(tmp_path, keep_last=1)
    ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": 1}, metrics={"val_top1": 0.9})
    ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": 2}, metrics={"val_top1": 0.1})
    deleted: list[tuple[str, bool]] = []
    new = ckpt_dir(tmp_path) / "ckpt-e0000-s00000003.pt"
    real_remove, real_unlink = os.remove, os.unlink

    def watch(remove: Any) -> Any:
        def inner(path: Any, *args: Any, **kwargs: Any) -> None:
            name = Path(path).name
            if name.startswith("ckpt-"):
                deleted.append((name, new.exists() and new.with_suffix(".json").exists()
                                and Checkpointer(tmp_path).verify(new) is None))
            remove(path, *args, **kwargs)
        return inner

    monkeypatch.setattr(os, "remove", watch(real_remove))
    monkeypatch.setattr(os, "unlink", watch(real_unlink))
    ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": 3}, metrics={"val_top1": 0.2})
    monkeypatch.undo()
    assert {name for name, _ in deleted} >= {"ckpt-e0000-s00000002.pt"}
    assert all(complete for _, complete in deleted), deleted
    assert sorted(p.name for p in ckpt_dir(tmp_path).glob("ckpt-*.pt")) == [
        "ckpt-e0000-s00000001.pt", "ckpt-e0000-s00000003.pt"]  # the best one survives


def test_a_save_crashing_midway_leaves_no_partial_file_under_a_final_name(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = three_checkpoints(tmp_path)

    def crash(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": 4})
    monkeypatch.undo()
    assert not (ckpt_dir(tmp_path) / "ckpt-e0000-s00000004.pt").exists()
    assert Checkpointer(tmp_path).load()["step"] == 3


def test_litter_of_a_killed_writer_that_had_this_pid_is_removed(tmp_path: Path) -> None:
    """After a kill in a container the restarted trainer often has the same pid as the dead one:
    its temp files (older than this process) are litter all the same."""
    Checkpointer(tmp_path).save({"w": torch.ones(1), "epoch": 0, "step": 1})
    stale = ckpt_dir(tmp_path) / f".ckpt-e0000-s00000002.pt.tmp.{os.getpid()}.0123abcd"
    stale.write_bytes(b"PK" + b"\0" * 1000)
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    Checkpointer(tmp_path)
    assert not stale.exists()
    assert Checkpointer(tmp_path).load()["step"] == 1


def test_a_new_checkpointer_never_removes_a_file_being_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second Checkpointer on the directory, created while the first one's background write is on."""
    real_save = torch.save
    started, release = threading.Event(), threading.Event()

    def slow_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, f, *args, **kwargs)
        started.set()
        release.wait(30)

    monkeypatch.setattr(torch, "save", slow_save)
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save({"w": torch.ones(1), "epoch": 0, "step": 1})
    assert started.wait(30)
    temps = [p for p in ckpt_dir(tmp_path).iterdir() if ".tmp." in p.name]
    assert temps
    old = time.time() - 3600
    for p in temps:  # even if it looked old
        os.utime(p, (old, old))
    Checkpointer(tmp_path)
    assert all(p.exists() for p in temps)
    release.set()
    ckpt.close()
    assert Checkpointer(tmp_path).load()["step"] == 1


# --------------------------------------------------------------------------- async save
def test_async_save_writes_the_state_as_it_was_at_save_time(tmp_path: Path) -> None:
    model = net()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        path = ckpt.save({"model": model, "epoch": 0, "step": 1})
        with torch.no_grad():  # training goes on while the file is written
            for p in model.parameters():
                p.add_(1.0)
    assert same_tensors(Checkpointer(tmp_path).load(path)["model"], expected)


def test_async_save_error_is_raised_at_the_next_save_and_earlier_files_stay(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save({"w": torch.ones(3), "epoch": 0, "step": 1})
    ckpt.wait()
    monkeypatch.setattr(torch, "save", disk_full)
    ckpt.save({"w": torch.ones(3), "epoch": 0, "step": 2})  # returns: the write is in the background
    with pytest.raises(CheckpointError, match="step|s00000002|No space|disk"):
        ckpt.save({"w": torch.ones(3), "epoch": 0, "step": 3})
    monkeypatch.undo()
    assert Checkpointer(tmp_path).load()["step"] == 1
    ckpt.save({"w": torch.ones(3), "epoch": 0, "step": 3})
    ckpt.close()
    assert Checkpointer(tmp_path).load()["step"] == 3


def test_async_save_error_is_raised_by_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = Checkpointer(tmp_path, async_save=True)
    monkeypatch.setattr(torch, "save", disk_full)
    ckpt.save({"w": torch.ones(3), "epoch": 0, "step": 1})
    with pytest.raises(CheckpointError):
        ckpt.close()


def test_async_save_error_at_exit_is_reported_not_lost(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import errno, os, torch
        from finetune import Checkpointer
        def full(*a, **k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        ckpt = Checkpointer({str(tmp_path)!r}, async_save=True)
        torch.save = full
        ckpt.save({{"w": torch.ones(3), "epoch": 0, "step": 1}})
        print("saved")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "saved" in result.stdout
    assert "ckpt-e0000-s00000001" in result.stderr and ("No space" in result.stderr or "disk" in result.stderr)


def test_async_save_has_at_most_one_write_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save
    active, most = [0], [0]
    lock = threading.Lock()

    def slow_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        real_save(obj, f, *args, **kwargs)
        with lock:
            active[0] -= 1

    monkeypatch.setattr(torch, "save", slow_save)
    with Checkpointer(tmp_path, keep_last=10, async_save=True) as ckpt:
        for s in range(1, 6):
            ckpt.save({"w": torch.full((10,), float(s)), "epoch": 0, "step": s})
    assert most[0] == 1
    assert [Checkpointer(tmp_path).load(p)["w"][0].item() for p in Checkpointer(tmp_path).checkpoints()] == [
        1.0, 2.0, 3.0, 4.0, 5.0]


# --------------------------------------------------------------------------- the CLI
TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--seed", "3",
        "--optimizer", "sgd", "--lr", "0.01"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune.data.shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", per_class=4, size=32)  # 4 steps/epoch


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "finetune.cli", *args]


def env() -> dict[str, str]:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out.pop("FINETUNE_DEBUG", None)
    return out


def run_train(data: Path, out: Path, *extra: str, epochs: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli("train", "-q", "--data", str(data), *TINY, "--epochs", str(epochs), "--out", str(out),
                              *extra), capture_output=True, text=True, env=env(), timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines and lines[-1].startswith("finetune: error: "), result.stderr


def test_cli_resume_errors_are_one_line_and_exit_2(tmp_path: Path, tiny_data: Path) -> None:
    assert_one_line_error(run_train(tiny_data, tmp_path / "missing", "--resume", str(tmp_path / "no-such.pt")))
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert_one_line_error(run_train(tiny_data, tmp_path / "cut", "--resume", str(tmp_path / "cut.pt")))


@pytest.mark.slow
def test_cli_resume_auto_with_nothing_to_resume_is_an_error_or_a_new_run(tmp_path: Path, tiny_data: Path) -> None:
    """The specification leaves it open; either way it is not a traceback, and a zero exit made a run."""
    out = tmp_path / "nothing"
    result = run_train(tiny_data, out, "--resume", "auto", epochs=1)
    if result.returncode != 0:
        assert_one_line_error(result)
        assert "nothing to resume" in result.stderr
    else:
        assert "Traceback" not in result.stderr and Checkpointer(out).latest() is not None


@pytest.mark.parametrize("save_mode", ["--no-async-save", "--async-save"])
def test_cli_disk_full_during_training_is_one_line_and_the_earlier_checkpoint_resumes(
        tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        save_mode: str) -> None:
    from finetune.cli import main

    out = tmp_path / "run"
    real_save, calls = torch.save, [0]

    def full_after_two(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_two)
    code = main(["train", "-q", "--data", str(tiny_data), *TINY, "--epochs", "1", "--out", str(out),
                 "--save-every-steps", "1", save_mode])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("finetune: error: ") and "Traceback" not in err
    assert "ckpt-e0000-s00000003.pt" in lines[-1] and ("disk is full" in lines[-1] or "No space" in lines[-1])
    assert Checkpointer(out).load()["step"] == 2
    for path in ckpt_dir(out).glob("*.pt"):
        torch.load(path, weights_only=True)


def final(run: Path) -> dict[str, Any]:
    state = Checkpointer(run).load()
    metrics = [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"step": state["step"], "model": state["model"], "metrics": metrics}


def assert_same(run: Path, reference: dict[str, Any]) -> None:
    got = final(run)
    assert got["step"] == reference["step"]
    assert got["metrics"] == reference["metrics"]
    different = [k for k in reference["model"] if not torch.equal(reference["model"][k], got["model"][k])]
    assert not different and got["model"].keys() == reference["model"].keys(), different[:5]


@pytest.fixture(scope="module")
def reference_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_train(tiny_data, out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_cli_run_directory_layout_and_checkpoint_contents(reference_run: Path) -> None:
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "best.safetensors", "classes.json", "metrics.jsonl",
                 "config.yaml"):
        assert (reference_run / name).is_file(), name
    for path in (reference_run / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    state = torch.load(reference_run / "checkpoints" / "last.pt", weights_only=True)
    flat = json.dumps(sorted(state))
    for key in ("model", "optimizer", "epoch", "step", "rng", "classes", "format_version"):
        assert key in state, (key, flat)
    assert state["classes"] == json.loads((reference_run / "classes.json").read_text())
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    best = torch.load(reference_run / "checkpoints" / "best.pt", weights_only=True)
    top1 = [json.loads(line)["val_top1"] for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert max(top1) == pytest.approx(max(v for k, v in best.items() if "top1" in k and isinstance(v, float)))


@pytest.mark.slow
def test_cli_sigterm_saves_exits_0_says_how_to_resume_and_resume_is_bitwise_identical(
        tmp_path: Path, tiny_data: Path, reference_run: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(cli("train", "-q", "--data", str(tiny_data), *TINY, "--epochs", "2", "--out", str(out)),
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "trainable.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "--resume auto" in stdout + stderr
    result = run_train(tiny_data, out, "--resume", "auto")
    assert result.returncode == 0, result.stderr
    assert_same(out, final(reference_run))


@pytest.mark.slow
def test_cli_sigterm_during_setup_still_saves_and_exits_0(tmp_path: Path, tiny_data: Path,
                                                          reference_run: Path) -> None:
    """A preemption can come at any time: here while the run is being set up (before the first step)."""
    out = tmp_path / "run"
    args = ["train", "-q", "--data", str(tiny_data), *TINY, "--epochs", "2", "--out", str(out)]
    code = textwrap.dedent(f"""
        import importlib, os, signal, sys
        t = importlib.import_module("finetune.train")  # the module (finetune.train is also a function)
        from finetune.cli import main
        real = t.check_run_dir
        def preempted(*a, **k):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*a, **k)
        t.check_run_dir = preempted
        sys.exit(main({args!r}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "--resume auto" in result.stderr + result.stdout
    again = run_train(tiny_data, out, "--resume", "auto")
    assert again.returncode == 0, again.stderr
    assert_same(out, final(reference_run))


@pytest.mark.slow
@pytest.mark.parametrize(("save_mode", "workers", "group"), [("--no-async-save", "0", True),
                                                             ("--async-save", "0", True),
                                                             ("--async-save", "2", False)])
def test_cli_sigkill_at_random_moments_then_resume_auto_is_bitwise_identical(
        tmp_path: Path, tiny_data: Path, reference_run: Path, save_mode: str, workers: str, group: bool) -> None:
    """``group``: the whole process group is killed; else the trainer alone (its data workers are orphaned)."""
    out = tmp_path / "run"
    rng = random.Random(os.getpid())
    base = ["train", "-q", "--data", str(tiny_data), *TINY, "--epochs", "2", "--out", str(out),
            "--save-every-steps", "1", save_mode, "--workers", workers]
    kills = 0
    for attempt in range(12):
        resume = ["--resume", "auto"] if any((out / "checkpoints").glob("ckpt-*.json")) else []
        started = time.time_ns()
        proc = subprocess.Popen(cli(*base, *resume), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        if attempt < 3:
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if (out / "trainable.json").stat().st_mtime_ns >= started:
                        break
                except FileNotFoundError:
                    pass
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is None:
                (os.killpg if group else os.kill)(proc.pid, signal.SIGKILL)
                kills += 1
        _, stderr = proc.communicate(timeout=300)
        if proc.returncode == -signal.SIGKILL:
            # what a kill leaves: every complete checkpoint loads, temp files are not taken for checkpoints
            ckpt = Checkpointer(out)
            latest = quiet_latest(ckpt)
            if latest is not None:
                torch.load(latest, weights_only=True)
            continue
        assert proc.returncode == 0, stderr
        break
    assert kills >= 1
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp." in p.name]
    assert_same(out, final(reference_run))


@pytest.mark.slow
def test_cli_resume_auto_falls_back_over_a_corrupt_newest_and_resume_path(
        tmp_path: Path, tiny_data: Path, reference_run: Path) -> None:
    out = tmp_path / "run"
    first = run_train(tiny_data, out, "--max-steps", "6", "--save-every-minutes", "0.00001", "--keep-last", "10")
    assert first.returncode == 0, first.stderr
    newest = ckpt_dir(out) / "ckpt-e0001-s00000006.pt"
    assert newest.exists()
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    result = run_train(tiny_data, out, "--resume", "auto")
    assert result.returncode == 0, result.stderr
    assert "ckpt-e0001-s00000006" in result.stderr  # the skipped file is reported
    assert_same(out, final(reference_run))
    for path in ckpt_dir(out).glob("*.pt"):
        if path != newest:
            torch.load(path, weights_only=True)

    # --resume PATH: from an earlier checkpoint of another copy of the run
    other = tmp_path / "other"
    assert run_train(tiny_data, other, "--max-steps", "3", "--save-every-steps", "1").returncode == 0
    result = run_train(tiny_data, other, "--resume", str(ckpt_dir(other) / "ckpt-e0000-s00000002.pt"))
    assert result.returncode == 0, result.stderr
    assert_same(other, final(reference_run))


@pytest.mark.slow
def test_cli_a_kill_before_the_first_manifest_does_not_leave_a_stuck_run(tmp_path: Path, tiny_data: Path) -> None:
    """SIGKILL after the first checkpoint's data is in place but before its manifest (and last.pt): the
    same command, with or without --resume auto, must be able to go on."""
    out = tmp_path / "run"
    assert run_train(tiny_data, out, "--max-steps", "1").returncode == 0
    for path in [*ckpt_dir(out).glob("*.json"), ckpt_dir(out) / "last.pt", ckpt_dir(out) / "best.pt",
                 out / "best.safetensors"]:
        path.unlink(missing_ok=True)
    assert [p.name for p in ckpt_dir(out).iterdir()] == ["ckpt-e0000-s00000001.pt"]
    fresh = run_train(tiny_data, out, epochs=1)
    resumed = run_train(tiny_data, out, "--resume", "auto", epochs=1) if fresh.returncode != 0 else fresh
    assert 0 in (fresh.returncode, resumed.returncode), fresh.stderr + resumed.stderr
    assert Checkpointer(out).latest() is not None

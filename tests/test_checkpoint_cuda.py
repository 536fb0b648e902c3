"""finetune.checkpoint on CUDA: saved on a GPU, loaded without one and the other way round; pinned async save.

Skipped without CUDA; run on a GPU machine with ``pytest -m cuda tests/test_checkpoint_cuda.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import finetune.checkpoint as ck
from finetune.checkpoint import (
    Checkpointer,
    capture_rng_state,
    restore,
    restore_rng_state,
    unwrap_model,
)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
SRC = Path(ck.__file__).resolve().parents[1]


def model_and_optimizer(device: str, *, wrap: bool = False) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    model = model.to(device).to(memory_format=torch.channels_last)
    if wrap:
        model = nn.DataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(4, 3, 8, 8, device=device)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3], device=device)).backward()
    opt.step()
    return model, opt


def all_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from all_tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from all_tensors(v)


@pytest.mark.parametrize("async_save", [False, True])
def test_saved_on_cuda_under_dataparallel_loads_without_cuda(tmp_path, async_save):
    model, opt = model_and_optimizer("cuda", wrap=True)
    with Checkpointer(tmp_path, async_save=async_save) as ckpt:
        path = ckpt.save({"model": model, "optimizer": opt, "epoch": 0, "step": 1, "rng": capture_rng_state()})
    raw = torch.load(path, weights_only=True)  # no map_location: every tensor in the file is a CPU tensor
    assert all(t.device.type == "cpu" for t in all_tensors(raw))
    assert all(t.is_contiguous() for t in all_tensors(raw["model"]))
    expected = {k: v.cpu() for k, v in unwrap_model(model).state_dict().items()}
    assert all(torch.equal(raw["model"][k], v) for k, v in expected.items())
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(SRC)!r})
        import torch
        from torch import nn
        from finetune.checkpoint import Checkpointer, restore
        assert not torch.cuda.is_available()
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        report = restore(Checkpointer.read({str(path)!r}), model=model, optimizer=opt)
        assert report.optimizer.exact, report.optimizer
        torch.save(model.state_dict(), {str(tmp_path / 'cpu.pt')!r})
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = torch.load(tmp_path / "cpu.pt", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_saved_on_cpu_resumes_on_cuda_and_trains(tmp_path):
    cpu_model, cpu_opt = model_and_optimizer("cpu")
    Checkpointer(tmp_path).save({"model": cpu_model, "optimizer": cpu_opt, "epoch": 0, "step": 1})
    model, opt = model_and_optimizer("cuda", wrap=True)
    report = restore(Checkpointer(tmp_path).load(), model=model, optimizer=opt)
    assert report.optimizer.exact
    for p in model.parameters():
        assert all(v.device.type == "cuda" for k, v in opt.state[p].items() if k != "step")
    x = torch.randn(4, 3, 8, 8, device="cuda")
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3], device="cuda")).backward()
    opt.step()


def test_async_save_uses_pinned_buffers_and_snapshots_before_training_goes_on(tmp_path, monkeypatch):
    go = threading.Event()
    real = ck._serialize
    monkeypatch.setattr(ck, "_serialize", lambda payload, writer: (go.wait(30), real(payload, writer)))
    model, opt = model_and_optimizer("cuda")
    expected = {k: v.cpu().clone() for k, v in model.state_dict().items()}
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save({"model": model, "optimizer": opt, "epoch": 0, "step": 1})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # queued right behind the copies on the same stream
    go.set()
    ckpt.close()
    saved = Checkpointer(tmp_path).load()["model"]
    assert all(torch.equal(saved[k], v) for k, v in expected.items())
    assert ckpt._buffers == {}  # close() frees the pinned buffers


def test_async_pinned_buffers_are_pinned(tmp_path):
    model, opt = model_and_optimizer("cuda")
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save({"model": model, "optimizer": opt, "epoch": 0, "step": 1})
    ckpt.wait()
    cuda_sourced = [b for key, b in ckpt._buffers.items() if key[-1] == "cuda"]
    assert cuda_sourced and all(b.is_pinned() for b in cuda_sourced)
    ckpt.close()


def test_cuda_rng_round_trip(tmp_path):
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    first = torch.rand(5, device="cuda").tolist(), torch.rand(2).tolist()
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (torch.rand(5, device="cuda").tolist(), torch.rand(2).tolist()) == first

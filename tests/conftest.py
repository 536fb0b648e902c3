"""Shared fixtures: tiny real JPEG datasets, written by the tests themselves."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two test processes (pytest-xdist -n 2) on
    os.environ["OMP_NUM_THREADS"] = "1"     # two cores: one torch thread each (and in their subprocesses)
    import torch as _torch

    _torch.set_num_threads(1)


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> None:
    """A passed test's ``tmp_path`` is removed at its teardown: the run directories the tests write
    (checkpoints of a few hundred MB each) would otherwise add up to ~14 GB over the suite; a
    failed test keeps its files to look at."""
    if call.when == "call":
        item.stash[_PASSED] = call.excinfo is None
    elif call.when == "teardown" and item.stash.get(_PASSED, False):
        path = (getattr(item, "funcargs", None) or {}).get("tmp_path")
        if isinstance(path, Path):
            shutil.rmtree(path, ignore_errors=True)


_PASSED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated datasets go to a per-session temporary cache, never to ~/.cache."""
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path_factory.getbasetemp() / "finetune-cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one intra-op thread for a test module (bitwise-reproducible CPU kernels), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_colour_folder(root: Path, *, per_class: int = 12, size: int = 40, seed: int = 0,
                        classes: tuple[str, ...] = ("blue", "red")) -> Path:
    """An easy ImageFolder (train/ and val/): noisy images whose colour is the class."""
    rng = np.random.default_rng(seed)
    colours = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30)}
    for split, n in (("train", per_class), ("val", max(2, per_class // 3))):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array(colours[name], np.float32)
                img = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{name}_{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("colours"), per_class=32)


@pytest.fixture(scope="session")
def colour_run(colour_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small trained run on ``colour_data`` (resnet18, 32 px, one epoch), for tests that only read a run."""
    out = tmp_path_factory.mktemp("colour_run") / "run"
    res = run_here("train", "--data", str(colour_data), "--out", str(out), "--model", "resnet18", "--img-size", "32",
                   "--batch-size", "8", "--workers", "0", "--epochs", "1", "--device", "cpu", "-q")
    assert res.returncode == 0, res.stderr
    return out



@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes beyond ``limit`` bytes fail with EFBIG (as ``ulimit -f``: a full disk's kind of failure), in this
    process only, for the block."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def run_here(*args: str) -> subprocess.CompletedProcess:
    """``finetune ARGS`` run in this process (:func:`finetune.cli.main`, output captured), as
    :func:`run_cli` returns it: the command's own code without a new interpreter's start-up
    (about 3 s with torch's import). For the later steps of a test whose first steps ran the
    real command; signals, environment and import-time behaviour need :func:`run_cli`."""
    import contextlib
    import io

    from finetune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 2
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def error_line(res: subprocess.CompletedProcess) -> str:
    """The one ``finetune: error:`` line of a failed command (exit status 2, no traceback)."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("finetune: error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``finetune`` command (same interpreter) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("FINETUNE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "finetune.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=env.get("CWD") if env else None)


def split_qkv(out: dict, name: str, qkv) -> None:
    """timm's joined qkv as transformers' query / key / value (``name`` with a '{}' for the part), into ``out``."""
    for part, tensor in zip(("query", "key", "value"), qkv.chunk(3), strict=True):
        out[name.format(part)] = tensor.clone()


def transformers_folder(path: Path, sd: dict, config: dict) -> Path:
    """A folder as transformers' save_pretrained writes it: model.safetensors (``sd``) and config.json."""
    import json

    from safetensors.torch import save_file

    path.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(config))
    return path


def assert_loads_exactly(source, target, folder: Path, kind: str, size: int = 32) -> None:
    """``folder`` (``source``'s tensors under transformers' names) loads into ``target`` strictly with the note of
    ``kind``: every tensor bitwise, the same logits (on ``size`` x ``size`` images)."""
    import torch

    import finetune

    report = finetune.load_weights(target, folder, strict=True)
    assert report.ok and not report.unexpected and len(report.loaded) == len(target.state_dict()), report
    assert any(f"Hugging Face transformers {kind}" in n for n in report.notes), report.notes
    for name, t in source.state_dict().items():
        assert torch.equal(t, target.state_dict()[name]), name
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def save_torchscript_tensors(sd: dict, path: Path) -> None:
    """``sd`` saved as a TorchScript archive of buffers under its names (as OpenAI's CLIP files hold theirs:
    ViT-B-32.pt, RN50.pt)."""
    import torch
    from torch import nn

    class Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for k, v in sd.items():
        *path_, leaf = k.split(".")
        module = root
        for p in path_:
            if not hasattr(module, p):
                module.add_module(p, Holder())
            module = getattr(module, p)
        module.register_buffer(leaf, v)
    torch.jit.save(torch.jit.script(root), str(path))

"""`finetune inspect` and `finetune convert`: output, JSON, exit status 2 on bad input, nothing executed."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from finetune.cli import main

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def squeezenet(seed: int, classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.squeezenet1_1(num_classes=classes).eval()


@pytest.fixture
def timm_like_ck(tmp_path) -> tuple[Path, torch.nn.Module]:
    """A timm CheckpointSaver-style file of a DataParallel-wrapped squeezenet with an optimizer."""
    import argparse

    model = squeezenet(1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    model(X).sum().backward()
    opt.step()
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "last.pth.tar"
    torch.save({"epoch": 7, "arch": "squeezenet1_1", "state_dict": sd, "optimizer": opt.state_dict(), "version": 2,
                "args": argparse.Namespace(model="squeezenet1_1", lr=3e-4), "metric": 81.25,
                "state_dict_ema": sd}, path)
    return path, model


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_inspect_text(timm_like_ck, capsys):
    path, model = timm_like_ck
    code, out, _ = run(["inspect", str(path), "--optimizer"], capsys)
    assert code == 0
    assert "timm CheckpointSaver (torch zip)" in out
    assert "epoch" in out and "81.25" in out and "args.model" in out
    assert "classifier.1.weight" in out and "(4, 512, 1, 1)" in out
    n = sum(v.numel() for v in model.state_dict().values())
    assert f"{n:,} values" in out
    assert "removed 'module.'" in out and "ema" in out
    assert "exp_avg" in out and "lr: 0.0003" in out


def test_inspect_json_with_model_report(timm_like_ck, capsys):
    path, model = timm_like_ck
    code, out, _ = run(["inspect", str(path), "--json", "--model", "squeezenet1_1", "--optimizer"], capsys)
    info = json.loads(out)
    assert code == 0 and info["format"] == "timm CheckpointSaver"
    assert info["metadata"]["epoch"] == 7 and info["metadata"]["args"]["lr"] == 3e-4
    assert len(info["tensors"]) == len(model.state_dict())
    assert {"name", "shape", "dtype", "numel"} <= set(info["tensors"][0])
    assert info["optimizer"]["state_keys"] == ["exp_avg", "exp_avg_sq", "step"]
    report = info["load_report"]
    assert report["ok"] and not report["missing"] and len(report["loaded"]) == len(model.state_dict())
    code, out, _ = run(["inspect", str(path), "--json", "--model", "resnet18"], capsys)
    assert json.loads(out)["load_report"]["ok"] is False


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_convert_round_trip(timm_like_ck, suffix, tmp_path, capsys):
    path, model = timm_like_ck
    dst = tmp_path / f"clean{suffix}"
    code, out, _ = run(["convert", str(path), str(dst)], capsys)
    assert code == 0 and "wrote" in out
    sd = load_file(str(dst)) if suffix == ".safetensors" else torch.load(dst, weights_only=True)
    fresh = squeezenet(99)
    fresh.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert torch.allclose(fresh(X), model(X), atol=1e-6)


def test_convert_half(timm_like_ck, tmp_path, capsys):
    path, _ = timm_like_ck
    code, _, _ = run(["convert", str(path), str(tmp_path / "h.safetensors"), "--half", "--ema", "-q"], capsys)
    assert code == 0
    assert {v.dtype for v in load_file(str(tmp_path / "h.safetensors")).values()} == {torch.float16}


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def bad_files(d: Path) -> list[Path]:
    good = d / "good.pt"
    torch.save({"w": torch.ones(1000)}, good)
    (d / "truncated.pt").write_bytes(good.read_bytes()[:1500])
    (d / "random.bin").write_bytes(bytes(range(256)) * 10)
    (d / "empty.safetensors").write_bytes(b"")
    (d / "config.yaml").write_text("lr: 0.1\n")
    (d / "folder").mkdir()
    torch.save({"model": _Evil(d / "PWNED")}, d / "evil.pt")
    torch.save({"model": _Evil(d / "PWNED")}, d / "evil_legacy.pt", _use_new_zipfile_serialization=False)
    return [d / n for n in ("truncated.pt", "random.bin", "empty.safetensors", "config.yaml", "folder",
                            "evil.pt", "evil_legacy.pt", "does_not_exist.pt")]


@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_bad_input_exits_2_with_one_line(command, tmp_path, capsys):
    for path in bad_files(tmp_path):
        argv = [command, str(path)] + ([str(tmp_path / "out.pt")] if command == "convert" else [])
        code, out, err = run(argv, capsys)
        assert code == 2, (path, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("finetune: error: "), (path, err)
        assert str(path) in lines[0] and "Traceback" not in err
        if "evil" in path.name:
            assert "--trust" in lines[0]
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "out.pt").exists()


def test_real_process_exit_status_and_lazy_imports(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"x": _Evil(tmp_path / "PWNED")}))
    proc = subprocess.run([sys.executable, "-m", "finetune.cli", "convert", str(evil), str(tmp_path / "o.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("finetune: error: ") and str(evil) in proc.stderr and "--trust" in proc.stderr
    assert not (tmp_path / "PWNED").exists()
    code = ("import sys; from finetune.cli import build_parser; build_parser().format_help(); "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr

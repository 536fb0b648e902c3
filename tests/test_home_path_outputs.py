"""'~' in an output path given without a shell (a config file's out, Python's convert / TrainConfig): the home
folder, as it already is for data and --pretrained, never a folder literally named '~' in the current directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_here

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu", "-q"]


def test_a_home_relative_out_in_a_config_file(colour_data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {colour_data}\nout: ~/runs/a\nepochs: 1\nmax-steps: 1\n")
    res = run_here("train", "--config", str(config), *TINY)
    assert res.returncode == 0, res.stderr
    assert (home / "runs" / "a" / "checkpoints" / "last.pt").is_file()
    assert list(here.iterdir()) == []


def test_convert_to_a_home_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.weights import convert

    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    torch.save(torch.nn.Linear(2, 3).state_dict(), home / "w.pt")
    assert convert("~/w.pt", "~/w.safetensors") == home / "w.safetensors"
    assert (home / "w.safetensors").is_file() and list(here.iterdir()) == []
    res = run_here("convert", "~/w.pt", "~/w2.pt")  # (a quoted '~' on a command line)
    assert res.returncode == 0, res.stderr
    assert (home / "w2.pt").is_file() and list(here.iterdir()) == []

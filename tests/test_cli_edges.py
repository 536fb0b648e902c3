"""CLI edges found by an adversarial pass: a bad file in bench-data, cam --limit with unreadable
files, inspect --optimizer on finetune's own checkpoints, learning rates of 0 everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import error_line, run_cli, run_here

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--epochs", "1",
        "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def run(colour_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edges") / "run"
    res = run_cli("train", "--data", str(colour_data), "--out", str(out), *TINY)
    assert res.returncode == 0, res.stderr
    return out


def test_bench_data_names_a_bad_file_instead_of_crashing(colour_data: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(colour_data, data)
    (data / "train" / "red" / "notes.jpg").write_text("not an image")
    res = run_here("bench-data", "--data", str(data), "--seconds", "0.2", "--workers", "0", "--img-size", "32",
                   "--batch-size", "8", "--no-cache", "-q")
    line = error_line(res)
    assert "bench-data needs a folder whose images all decode" in line


def test_cam_limit_counts_readable_images(run: Path, colour_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a_bad.jpg").write_text("not an image")
    for i, image in enumerate(sorted((colour_data / "val" / "red").glob("*.jpg"))[:3]):
        (folder / f"b{i}.jpg").write_bytes(image.read_bytes())
    for limit in (1, 2):
        out = tmp_path / f"cam{limit}"
        res = run_here("cam", str(run), str(folder), "--limit", str(limit), "--out", str(out), "--device", "cpu",
                       "--json")
        assert res.returncode == 0, res.stderr
        assert len([line for line in (out / "cam.jsonl").read_text().splitlines() if line]) == limit
        assert "skipping" in res.stderr  # the unreadable file is named, not counted


def test_inspect_optimizer_reads_finetunes_own_groups(run: Path) -> None:
    res = run_here("inspect", str(run / "checkpoints" / "last.pt"), "--optimizer", "--json")
    assert res.returncode == 0, res.stderr
    opt = json.loads(res.stdout)["optimizer"]
    assert opt["optimizer"] == "AdamW" and len(opt["param_groups"]) >= 2
    assert all(g["params"] > 0 and g["lr"] > 0 for g in opt["param_groups"])


def test_learning_rate_zero_for_every_trainable_parameter_is_refused(colour_data: Path, tmp_path: Path) -> None:
    res = run_here("train", "--data", str(colour_data), "--out", str(tmp_path / "x"), "--lr-mult", "*=0", *TINY)
    assert "sets the learning rate of every trainable parameter to 0" in error_line(res)


def test_models_cached_with_nothing_cached_is_an_empty_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))  # a hub cache with nothing in it
    res = run_here("models", "resnet1*", "--cached", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []
    text = run_here("models", "resnet1*", "--cached")
    assert text.returncode == 0 and "has cached weights" in text.stdout
    assert "no model matches 'resnetz'" in error_line(run_here("models", "resnetz", "--cached"))


def test_a_second_cam_run_into_the_same_folder_leaves_only_its_own_overlays(run: Path, colour_data: Path,
                                                                             tmp_path: Path) -> None:
    images = sorted((colour_data / "val" / "red").glob("*.jpg"))[:3]
    out = tmp_path / "cam"
    mine = out / "notes.png"
    out.mkdir()
    mine.write_bytes(b"the user's own file")
    assert run_here("cam", str(run), *map(str, images), "--out", str(out), "--device", "cpu").returncode == 0
    assert len(list(out.glob("0*.png"))) == 3
    assert run_here("cam", str(run), str(images[2]), "--out", str(out), "--device", "cpu").returncode == 0
    listed = [json.loads(line)["overlay"] for line in (out / "cam.jsonl").read_text().splitlines()]
    assert sorted(p.name for p in out.glob("0*.png")) == listed and len(listed) == 1
    assert mine.read_bytes() == b"the user's own file"

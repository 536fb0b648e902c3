"""`--resume RUN_DIR`: eval, predict and cam take a run directory for a checkpoint; `train --resume` said
"checkpoint 'RUN_DIR': unreadable: [Errno 21] Is a directory". It now continues that run from its newest
complete checkpoint (what `--out RUN_DIR --resume auto` picks), bitwise as the uninterrupted run."""

import json
from pathlib import Path

import pytest
import torch

from conftest import error_line, run_cli
from finetune.data.shapes import make_shapes

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), per_class=2, val_per_class=1, size=32)


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-q", "--data", str(data), "--model", "resnet18", "--img-size", "32", "--batch-size", "4",
            "--epochs", "1", "--workers", "0", "--device", "cpu", "--optimizer", "sgd", "--out", str(out), *extra]


def result(run: Path) -> tuple[dict, list]:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    metrics = [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    return state["model"], metrics


def test_resume_a_run_directory_continues_it_exactly(data: Path, tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_cli(*args(data, full), env=ENV).returncode == 0
    assert run_cli(*args(data, cut, "--max-steps", "2"), env=ENV).returncode == 0
    res = run_cli("train", "-q", "--resume", str(cut), env=ENV)  # no --out: the run's own directory
    assert res.returncode == 0, res.stderr
    (a, ma), (b, mb) = result(full), result(cut)
    assert ma == mb and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_a_directory_without_checkpoints_is_one_error_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("train", "--resume", str(empty), env=ENV)
    assert res.returncode == 2
    assert "no complete checkpoint in" in error_line(res) and "Is a directory" not in res.stderr


def test_resume_a_run_directory_names_the_damaged_checkpoints_it_skips(tmp_path: Path) -> None:
    # as --resume auto does: a newer checkpoint passed over in silence would read as a run that lost its last epochs
    import argparse

    from finetune.checkpoint import Checkpointer, CheckpointWarning
    from finetune.config import config_from_args

    ckpt = Checkpointer(tmp_path)
    good = ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": 1})
    bad = ckpt.save({"w": torch.zeros(1), "epoch": 0, "step": 2})
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.warns(CheckpointWarning, match=f"skipping checkpoint '{bad}': truncated"):
        cfg = config_from_args(argparse.Namespace(resume=str(tmp_path)))
    assert cfg.resume == str(good) and cfg.out == str(tmp_path)


def test_resume_the_checkpoints_folder_or_dot_inside_it_takes_its_run(tmp_path: Path, monkeypatch) -> None:
    from finetune.checkpoint import Checkpointer
    from finetune.config import resume_dir_checkpoint

    newest = Checkpointer(tmp_path / "run").save({"w": torch.zeros(1), "epoch": 0, "step": 1})
    assert resume_dir_checkpoint(tmp_path / "run" / "checkpoints") == (tmp_path / "run", newest)
    monkeypatch.chdir(tmp_path / "run" / "checkpoints")
    run_dir, found = resume_dir_checkpoint(Path("."))
    assert run_dir.resolve() == (tmp_path / "run").resolve() and found.resolve() == newest.resolve()

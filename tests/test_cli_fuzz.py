"""Bad input found by fuzzing the command line, flag by flag: each case was a crash, a silent
acceptance of nonsense, or a machine brought down, and is now the one ``finetune: error:`` line
(exit status 2) that says what to do. Most fail while the flags are read, before torch is needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import error_line, run_cli, run_here

# a training run that is as short as it can be, should a case get that far
TINY = ["--max-steps", "1", "--img-size", "16", "--epochs", "1", "--workers", "0", "--batch-size", "8", "-q"]


def test_seed_too_big_for_the_random_generators_is_refused(tmp_path: Path) -> None:
    """`--seed 99999999999999999999` was an 'unexpected ValueError: Overflow…' once the run had started."""
    line = error_line(run_here("train", "--out", str(tmp_path / "run"), *TINY, "--seed", "99999999999999999999"))
    assert "--seed" in line and str(2**32 - 1) in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [
    ("train", "--config", ""),              # was ignored: the defaults trained instead
    ("train", "--resume", ""),              # was ignored: a fresh run instead of the one to continue
    ("train", "--pretrained", " "),         # was ignored: random weights instead of pretrained ones
    ("train", "--data", ""),
    ("eval", "--checkpoint", "x.pt", "--data", ""),   # evaluated the current folder
    ("eval", "--checkpoint", ""),           # "checkpoint '.': unreadable: Is a directory"
    ("predict", "--checkpoint", "x.pt", ""),          # predicted every image of the current folder
    ("cam", "x.pt", "--out", ""),           # wrote its overlays into the current folder
    ("bench-data", "--data", ""),           # benchmarked the current folder
    ("inspect", ""),
    ("make-shapes", ""),                    # "'.' already exists"
    ("convert", "a.pt", "b.pt", "--strip-prefix", ""),
    ("summary", ""),
])
def test_an_empty_path_name_or_pattern_is_refused_not_read_as_the_current_folder(
        args: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = error_line(run_here(*args, *(TINY if args[0] == "train" else ())))
    assert "must not be empty" in line and f"{args[0]} --help" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ("eval", "--checkpoint", "x.pt", "--workers", "99999999"),
    ("bench-data", "--data", "nowhere", "--workers", "0", "99999999"),
    ("lr-find", "--data", "nowhere", "--workers", "99999999"),
])
def test_a_worker_count_that_would_fork_the_machine_out_of_memory_is_refused(args: tuple[str, ...]) -> None:
    """`--workers 99999999` started forking worker processes until the kernel's OOM killer ended it."""
    line = error_line(run_here(*args))
    assert "--workers" in line and "99999999 is more than" in line and "'auto'" in line


def test_a_worker_count_in_a_config_file_is_bounded_too(tmp_path: Path) -> None:
    from finetune.config import ConfigError, load_config, max_workers

    path = tmp_path / "c.yaml"
    path.write_text(f"workers: {max_workers()}\n")
    assert load_config(path).workers == str(max_workers())
    path.write_text(f"workers: {max_workers() + 1}\n")
    with pytest.raises(ConfigError, match="is more than"):
        load_config(path)
    path.write_text("workers: '\u00b2'\n")  # a superscript two: isdigit() but not a number int() reads
    with pytest.raises(ConfigError, match="must be 'auto' or a number"):
        load_config(path)


def test_exclude_without_pretrained_weights_is_refused(tmp_path: Path) -> None:
    """`--exclude fc` without --pretrained excluded nothing from nothing and trained on, silently."""
    from finetune.config import ConfigError, TrainConfig

    line = error_line(run_here("train", "--out", str(tmp_path / "run"), *TINY, "--exclude", "fc"))
    assert "--exclude" in line and "--pretrained" in line
    assert not (tmp_path / "run").exists()
    TrainConfig(pretrained="torchvision", exclude=["fc"]).validate()
    with pytest.raises(ConfigError, match="must not be empty"):
        TrainConfig(pretrained="torchvision", exclude=[" "]).validate()
    with pytest.raises(ConfigError, match=r"resume \(--resume\) must not be empty"):
        TrainConfig(resume="").validate()


def test_empty_values_in_the_real_command(tmp_path: Path) -> None:
    """The real process: one line, exit 2, nothing written where it was run."""
    res = run_cli("train", "--resume", "", "--out", str(tmp_path / "run"), *TINY, env={"CWD": str(tmp_path)})
    assert "--resume" in error_line(res)
    assert list(tmp_path.iterdir()) == []


def test_convert_does_not_write_over_an_existing_file_without_force(tmp_path: Path) -> None:
    """`finetune convert best.pt run/checkpoints/last.pt` replaced the checkpoint without a word."""
    import torch

    src, dst = tmp_path / "w.pt", tmp_path / "precious.pt"
    torch.save({"fc.weight": torch.ones(2, 2)}, src)
    dst.write_bytes(b"a checkpoint to keep")
    line = error_line(run_here("convert", str(src), str(dst)))
    assert "already exists" in line and "--force" in line
    assert dst.read_bytes() == b"a checkpoint to keep"
    assert run_here("convert", str(src), str(dst), "--force", "-q").returncode == 0
    assert set(torch.load(dst, weights_only=True)) == {"fc.weight"}


def test_freezing_everything_is_one_error_line_not_a_warning_too(tmp_path: Path) -> None:
    """`--freeze '*'` printed a warning about the frozen head before the 'nothing to train' error."""
    res = run_here("train", "--data", "shapes", "--out", str(tmp_path / "run"), *TINY, "--freeze", "*")
    assert res.returncode == 2
    assert [line for line in res.stderr.splitlines() if line.startswith("finetune:")] == [error_line(res)]
    assert "nothing to train" in error_line(res)


def test_lr_mult_of_frozen_parameters_only_is_a_warning(colour_data: Path, tmp_path: Path) -> None:
    """`--linear-probe --lr-mult layer1=2` ran without a word: the multiplier applied to nothing."""
    common = ["train", "--data", str(colour_data), *TINY, "--linear-probe", "--lr-mult", "layer1=2", "--epochs", "2"]
    res = run_here(*common, "--out", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    assert ("finetune: warning: --lr-mult layer1=2 changes nothing: every parameter it names is frozen "
            "(unfreeze them, e.g. --unfreeze layer1@EPOCH, or drop it)") in res.stderr.splitlines()
    res = run_here(*common, "--unfreeze", "layer1.*@2", "--out", str(tmp_path / "b"))  # it applies from epoch 2
    assert res.returncode == 0, res.stderr
    assert "--lr-mult" not in res.stderr

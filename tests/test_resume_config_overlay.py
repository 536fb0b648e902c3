"""`finetune train --out RUN --resume auto --config FILE`: the file used to replace the run's settings (every
setting it left out went back to its default: the built-in dataset, 14 epochs), while flags given with --resume
change the run's. A --config given with --resume changes the settings it names, as the same flags would."""

from pathlib import Path

import pytest

from finetune.cli import build_parser
from finetune.config import TrainConfig, config_from_args, save_config
from finetune.errors import ConfigError


def merged(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    save_config(TrainConfig(data=str(data), epochs=3, batch_size=8, lr=0.002, max_steps=2, out=str(run),
                            resume="auto"), run / "config.yaml")
    return run


def test_a_config_given_with_resume_changes_only_what_it_names(run: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial.yaml"
    partial.write_text("lr: 0.005\nepochs: 4\n")
    by_file = merged("--out", str(run), "--resume", "auto", "--config", str(partial))
    by_flags = merged("--out", str(run), "--resume", "auto", "--lr", "0.005", "--epochs", "4")
    assert by_file == by_flags
    assert (by_file.data, by_file.batch_size, by_file.lr, by_file.epochs) == (str(tmp_path / "data"), 8, 0.005, 4)
    assert by_file.max_steps is None  # (the run's --max-steps was where that invocation stopped)
    # flags still win over the file; the file's --max-steps counts, as the flag would
    partial.write_text("lr: 0.005\nmax-steps: 7\n")
    cfg = merged("--out", str(run), "--resume", "auto", "--config", str(partial), "--lr", "0.001")
    assert (cfg.lr, cfg.max_steps, cfg.epochs) == (0.001, 7, 3)


def test_a_config_naming_the_run_dir_resumes_it_with_its_settings(run: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial.yaml"
    partial.write_text(f"out: {run}\nepochs: 5\n")
    cfg = merged("--resume", "auto", "--config", str(partial))
    assert (cfg.data, cfg.batch_size, cfg.epochs) == (str(tmp_path / "data"), 8, 5)


def test_a_config_given_with_resume_is_checked_as_flags_are(run: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial.yaml"
    partial.write_text("epoch: 4\n")
    with pytest.raises(ConfigError, match=r"partial\.yaml: unknown setting 'epoch'; did you mean epochs"):
        merged("--out", str(run), "--resume", "auto", "--config", str(partial))
    partial.write_text("momentum: 0.5\n")  # (the run's adamw would ignore it, as it would --momentum 0.5)
    with pytest.raises(ConfigError, match=r"partial\.yaml: momentum applies to optimizer sgd only"):
        merged("--out", str(run), "--resume", "auto", "--config", str(partial))
    partial.write_text("momentum: 0.5\noptimizer: sgd\n")
    assert merged("--out", str(run), "--resume", "auto", "--config", str(partial)).momentum == 0.5


def test_resume_in_a_config_file_is_not_taken_and_says_so(tmp_path: Path) -> None:
    """A `resume:` in a --config file is dropped (a run's config.yaml holds `resume: auto` after a resume, and
    reusing it for a new run must not resume); it used to be dropped without a word."""
    c = tmp_path / "c.yaml"
    c.write_text(f"resume: auto\nout: {tmp_path / 'new'}\nepochs: 2\n")
    with pytest.warns(UserWarning, match=r"resume: auto is not taken from a config file.*--resume auto"):
        cfg = merged("--config", str(c))
    assert cfg.resume is None and cfg.epochs == 2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merged("--config", str(c), "--resume", "auto")  # (given as a flag: nothing to say)

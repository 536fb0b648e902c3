"""A closed stderr (`finetune predict ... 2>&-`) or stdout (`>&-`): Python makes that stream None. The warnings
and the error line went to stdout then (``print(file=None)`` writes there), into `--json`'s results, and eval
and train failed on the progress bar's ``sys.stderr.isatty()``; with stdout closed the results were dropped and
the command exited 0."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest


@pytest.fixture
def run(colour_run: Path) -> Path:
    return colour_run


def _main(*args: str) -> tuple[int, str]:
    """``finetune ARGS`` in this process with whichever of sys.stdout / sys.stderr the test set to None; returns
    the status and what went to stdout (when it is not closed)."""
    from finetune.cli import main

    out = io.StringIO()
    with contextlib.ExitStack() as stack:
        if sys.stdout is not None:
            stack.enter_context(contextlib.redirect_stdout(out))
        return main(list(args)), out.getvalue()


def test_closed_stderr_keeps_warnings_out_of_the_json_on_stdout(run: Path, colour_data: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(next((colour_data / "val" / "red").glob("*.jpg")), folder / "a.jpg")
    (folder / "b.jpg").write_text("not an image")  # in a folder: skipped with a warning on stderr
    monkeypatch.setattr(sys, "stderr", None)
    code, out = _main("predict", "--checkpoint", str(run), str(folder), "--json", "--device", "cpu")
    assert code == 0
    assert [r["path"] for r in json.loads(out)] == [str(folder / "a.jpg")]  # the warning is not in it


def test_closed_stderr_eval_runs(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", None)
    code, out = _main("eval", "--checkpoint", str(run), "--device", "cpu")  # (not --json: that shows no bar)
    assert code == 0 and out.startswith("top-1 "), out


def test_closed_stdout_is_an_error_for_a_command_that_prints_its_results(run: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", err)
    code, _ = _main("eval", "--checkpoint", str(run), "--device", "cpu")
    assert code == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("finetune: error: standard output is closed"), lines


def test_a_name_the_outputs_encoding_lacks_is_written_escaped(tmp_path: Path) -> None:
    import os
    import subprocess

    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    res = subprocess.run([sys.executable, "-m", "finetune", "make-shapes", str(tmp_path / "ünï"), "--per-class", "1",
                          "--size", "16"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "\\xfcn\\xef" in res.stdout

"""The command-line contract on bad and odd input, command by command.

Bad input is exactly one line on stderr, ``finetune: error: <message>``, exit status 2, no
traceback (``--debug`` shows one); nothing is written where it should not be and nothing is lost.
Every case runs the real ``finetune`` command; most fail before torch is imported (well under a second).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli


def without_old_torch_warning(stderr: str) -> str:
    """``stderr`` less the one warning a torch older than 2.6 adds to a command that unpickles a file
    (CVE-2025-32434, see :func:`finetune.weights.unpickle.warn_if_unsafe_torch`): asserted present there."""
    from finetune.weights.unpickle import torch_is_safe

    if torch_is_safe() or "CVE-2025-32434" not in stderr:
        return stderr
    lines = stderr.splitlines(keepends=True)
    at = next(i for i, ln in enumerate(lines) if "CVE-2025-32434" in ln)
    assert lines[at].startswith("finetune: warning: torch ") and stderr.count("CVE-2025-32434") == 1, stderr
    return "".join(lines[:at] + lines[at + 1:])


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """stderr is the one error line and nothing else; exit status 2; the line holds every needle."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = without_old_torch_warning(res.stderr).splitlines()
    assert len(lines) == 1 and lines[0].startswith("finetune: error: "), res.stderr
    assert "Traceback" not in res.stderr and "\x1b" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- argparse and the CLI itself
@pytest.mark.parametrize("args", [
    ("train", "--epochs", "x"),
    ("train", "--nosuch-flag"),
    ("nosuch-command",),
    ("eval",),                                    # --checkpoint is required
    ("train", "--crop-scale", "0.5"),             # takes two numbers
])
def test_usage_errors_are_one_line_pointing_at_help(args: tuple[str, ...]) -> None:
    line = one_line_error(run_cli(*args))
    assert "--help" in line


def test_debug_before_or_after_the_command_shows_the_traceback_and_keeps_exit_2(tmp_path: Path) -> None:
    for args in (("--debug", "train", "--data", str(tmp_path / "nope")), ("train", "--data", str(tmp_path / "nope"), "--debug")):
        res = run_cli(*args)
        assert res.returncode == 2, res.stderr
        assert "Traceback" in res.stderr and res.stderr.splitlines()[-1].startswith("finetune: error: ")


def test_help_is_fast_and_import_finetune_stays_light() -> None:
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "finetune.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "train" in res.stdout
    assert time.perf_counter() - start < 1.0
    code = ("import sys, finetune, finetune.cli, finetune.config\n"
            "print(sorted(m for m in ('torch', 'timm', 'tensorboard', 'matplotlib') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr


# --------------------------------------------------------------------------- train: flag values
@pytest.mark.parametrize(("flags", "needle"), [
    (["--seed", "-1"], "--seed"),
    (["--max-steps", "0"], "--max-steps"),
    (["--save-every-steps", "0"], "--save-every-steps"),
    (["--save-every-minutes", "-1"], "--save-every-minutes"),
    (["--val-split", "0"], "--val-split"),
    (["--momentum", "2"], "--momentum"),
    (["--lr", "inf"], "--lr"),
    (["--workers", "-1"], "--workers"),
    (["--lr-mult", "layer4=0.1", "layer4=0.2"], "twice"),
    (["--linear-probe", "--train-only", "layer4"], "--train-only"),
    (["--linear-probe", "--cache-features", "--unfreeze", "layer4@1"], "--unfreeze"),
    (["--no-augment", "--auto-augment", "randaugment"], "--auto-augment"),
    (["--resume", "auto"], "--out"),             # auto needs the run directory; it would name a fresh one
])
def test_bad_or_conflicting_train_flags(flags: list[str], needle: str, tmp_path: Path) -> None:
    out = [] if "--resume" in flags else ["--out", str(tmp_path / "run")]
    one_line_error(run_cli("train", *flags, *out), needle)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- train: --config files
@pytest.mark.parametrize(("text", "needles"), [
    (b"epochs: abc\n", ("epochs", "whole number", "'abc'")),
    (b"epochs: true\n", ("epochs", "whole number")),
    (b"batch-size: 8.5\n", ("batch-size", "8.5")),
    (b"epochs:\n", ("epochs", "null")),
    (b"model: [resnet18]\n", ("model",)),
    (b"crop-scale: 0.5\n", ("crop-scale", "two numbers")),
    (b"freeze: {layer1: 2}\n", ("freeze",)),
    (b"lr-mult: {layer4: fast}\n", ("layer4", "'fast'")),
    (b"epochs: 2\nepochs: 3\n", ("epochs", "twice", "lines 1 and 2")),
    (b"epochs: [1\n", ("not valid YAML", "line 2")),
    (b"- epochs\n- 3\n", ("mapping",)),
    (b"\xff\xfe\x00bin", ("UTF-8",)),
    (b"epoch: 3\n", ("unknown setting", "epochs")),
])
def test_bad_config_files(text: bytes, needles: tuple[str, ...], tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(text)
    one_line_error(run_cli("train", "--config", str(path), "--out", str(tmp_path / "run")), *needles)
    assert not (tmp_path / "run").exists()


def test_yaml_numbers_written_as_strings_are_read_as_numbers(tmp_path: Path) -> None:
    """PyYAML reads `lr: 1e-3` as the string '1e-3': it is a number all the same (not a crash)."""
    from finetune.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nbatch-size: '16'\nworkers: 2\naugment: 'no'\n")
    cfg = load_config(path)
    assert (cfg.lr, cfg.batch_size, cfg.workers, cfg.augment) == (0.001, 16, "2", False)


def test_config_that_is_a_folder(tmp_path: Path) -> None:
    one_line_error(run_cli("train", "--config", str(tmp_path), "--out", str(tmp_path / "run")), "is a folder")


# --------------------------------------------------------------------------- train: the run directory
def test_out_that_is_a_file_or_under_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    one_line_error(run_cli("train", "--out", str(afile)), "is a file")
    one_line_error(run_cli("train", "--out", str(afile / "run")), "is a file")
    one_line_error(run_cli("train", "--out", str(afile), "--resume", "auto"), "is a file")
    assert afile.read_text() == "keep me"


def test_out_inside_the_dataset(tmp_path: Path) -> None:
    (tmp_path / "data" / "cats").mkdir(parents=True)
    one_line_error(run_cli("train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "data" / "run")), "inside")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cats"]


def test_existing_run_is_not_overwritten_without_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"a finished run")
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    one_line_error(run_cli("train", "--out", str(run), "--epochs", "1"), "already holds a run", "--resume auto")
    assert (run / "checkpoints" / "last.pt").read_bytes() == b"a finished run"
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 0}\n'
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "metrics.jsonl"]


def test_resume_auto_without_the_runs_config_does_not_fall_back_to_the_defaults(tmp_path: Path) -> None:
    """Without config.yaml the defaults would resume on the built-in dataset: refused, the run left as it is."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    one_line_error(run_cli("train", "--out", str(run), "--resume", "auto"), "config.yaml", "missing")
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "last.pt"]


# --------------------------------------------------------------------------- eval / predict
@pytest.mark.parametrize("args", [
    ("predict", "--checkpoint", "x.pt", "img.jpg", "--topk", "0"),
    ("predict", "--checkpoint", "x.pt", "img.jpg", "--batch-size", "-1"),
    ("eval", "--checkpoint", "x.pt", "--batch-size", "0"),
    ("eval", "--checkpoint", "x.pt", "--workers", "-1"),
])
def test_eval_predict_numbers(args: tuple[str, ...]) -> None:
    one_line_error(run_cli(*args), args[-2])


def test_checkpoint_holding_pickled_code_is_one_clean_line(tmp_path: Path) -> None:
    """torch's own message (several lines, with terminal escapes) is folded into the one line."""
    import torch

    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    one_line_error(run_cli("eval", "--checkpoint", str(path), "--device", "cpu"), "whole_model.pt")


def test_checkpoint_whose_weights_do_not_fit_its_architecture(tmp_path: Path) -> None:
    """A finetune checkpoint that says resnet18 but holds squeezenet weights: one line, not a traceback."""
    from finetune import Checkpointer, create_model

    path = Checkpointer(tmp_path / "run").save({"model": create_model("squeezenet1_1", num_classes=2), "arch": "resnet18",
                                                "classes": ["a", "b"], "img_size": 32, "epoch": 0, "step": 0})
    image = tmp_path / "x.jpg"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    one_line_error(run_cli("predict", "--checkpoint", str(path), str(image), "--device", "cpu"), "do not fit",
                   "resnet18")
    one_line_error(run_cli("eval", "--checkpoint", str(path), "--data", str(tmp_path), "--device", "cpu"), "do not fit")


def test_pretrained_weights_of_another_architecture_are_refused(colour_data: Path, tmp_path: Path) -> None:
    """A file that fits resnet18's stem and first stage only (a few percent of its weights) is no start."""
    import torch

    from finetune import create_model

    path = tmp_path / "stem.pth"
    stem = {k: v for k, v in create_model("resnet18", num_classes=1000).state_dict().items()
            if k.startswith(("conv1.", "bn1.", "layer1."))}
    torch.save(stem, path)
    line = one_line_error(run_cli("train", "--data", str(colour_data), "--model", "resnet18", "--pretrained", str(path),
                                  "--out", str(tmp_path / "run"), "--epochs", "1", "--img-size", "32", "-q"),
                          "another architecture", "finetune inspect")
    assert "of the weights of resnet18 outside its head" in line


# --------------------------------------------------------------------------- make-shapes, bench-data
@pytest.mark.parametrize("flags", [["--per-class", "0"], ["--size", "0"], ["--size", "-5"], ["--seed", "-1"]])
def test_make_shapes_numbers(flags: list[str], tmp_path: Path) -> None:
    one_line_error(run_cli("make-shapes", str(tmp_path / "shapes"), *flags), flags[0])
    assert list(tmp_path.iterdir()) == []


def test_make_shapes_under_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    one_line_error(run_cli("make-shapes", str(afile / "shapes"), "--per-class", "1", "--size", "16"), "notes.txt")
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize("flags", [["--seconds", "0"], ["--repeats", "0"], ["--batch-size", "0"],
                                   ["--img-size", "0"], ["--workers", "-1"]])
def test_bench_data_numbers(flags: list[str]) -> None:
    one_line_error(run_cli("bench-data", "--data", "shapes", *flags), flags[0])


def test_convert_onto_its_own_source_is_refused(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.ones(2, 2), "extra": {"epoch": 3}}, path)
    before = path.read_bytes()
    one_line_error(run_cli("convert", str(path), str(path)), "the file being converted")
    assert path.read_bytes() == before


def test_fp16_on_cpu_is_refused(colour_data: Path, tmp_path: Path) -> None:
    one_line_error(run_cli("train", "--data", str(colour_data), "--device", "cpu", "--amp", "fp16",
                           "--out", str(tmp_path / "run"), "--epochs", "1"), "(--amp fp16) needs a CUDA device")


def test_output_piped_into_a_reader_that_stops_early_is_not_an_error(tmp_path: Path) -> None:
    """`finetune inspect big.pt | head`: no error line, no traceback, SIGPIPE's exit status."""
    import torch

    torch.save({f"block{i}.weight": torch.zeros(1) for i in range(4000)}, tmp_path / "many.pt")  # > a pipe's 64 KB
    proc = subprocess.Popen([sys.executable, "-m", "finetune.cli", "inspect", str(tmp_path / "many.pt")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(100)
    proc.stdout.close()  # the reader is gone
    err = without_old_torch_warning(proc.stderr.read().decode())
    assert proc.wait(timeout=60) == 141 and err == "", (proc.returncode, err)

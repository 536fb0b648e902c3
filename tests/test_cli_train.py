"""End to end: `finetune train`, `eval`, `predict` on real JPEG folders, and the bad-input contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import error_line, run_cli, run_here

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--seed", "0", "--optimizer", "adamw",
        "--lr", "0.002", "--warmup-epochs", "0", "-q"]


@pytest.fixture(scope="module")
def trained_run(colour_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    res = run_cli("train", "--data", str(colour_data), "--epochs", "3", "--out", str(out), *TINY)
    assert res.returncode == 0, res.stderr
    return out


def test_train_writes_the_run_directory(trained_run: Path) -> None:
    for name in ("config.yaml", "classes.json", "metrics.jsonl", "best.safetensors", "trainable.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (trained_run / name).is_file(), name
    assert json.loads((trained_run / "classes.json").read_text()) == ["blue", "red"]
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:
        assert {"epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_s"} <= set(r)
        assert 0.0 <= r["val_top1"] <= r["val_top5"] <= 1.0
    assert records[-1]["val_top1"] > 0.75  # two colour classes: far above chance (0.5)
    assert records[-1]["val_top5"] == 1.0  # k = min(5, 2 classes) = 2: every label is in the top 2


def test_checkpoint_is_plain_and_device_independent(trained_run: Path) -> None:
    state = torch.load(trained_run / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert state["epoch"] == 3 and state["arch"] == "resnet18" and list(state["classes"]) == ["blue", "red"]
    assert {"optimizer", "scheduler", "best_top1", "best_top5", "config"} <= set(state)
    assert all(t.device.type == "cpu" for t in state["model"].values())
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    from safetensors.torch import load_file

    weights = load_file(str(trained_run / "best.safetensors"))
    best = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)
    assert weights.keys() == best["model"].keys()
    assert all(torch.equal(weights[k], best["model"][k]) for k in weights)


def test_eval_json_matches_training_metrics(trained_run: Path) -> None:
    res = run_here("eval", "--checkpoint", str(trained_run / "checkpoints" / "best.pt"), "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {"top1", "top5", "loss", "per_class"} <= set(out)
    assert set(out["per_class"]) == {"blue", "red"}
    assert all(0.0 <= v <= 1.0 for v in out["per_class"].values())
    best = max(json.loads(line)["val_top1"] for line in (trained_run / "metrics.jsonl").read_text().splitlines())
    assert out["top1"] == pytest.approx(best)


def test_eval_and_predict_take_a_run_directory(trained_run: Path, colour_data: Path, tmp_path: Path) -> None:
    """A run directory means its best checkpoint, as `finetune cam RUN` takes it."""
    by_file = run_here("eval", "--checkpoint", str(trained_run / "checkpoints" / "best.pt"), "--json", "--device", "cpu")
    by_dir = run_here("eval", "--checkpoint", str(trained_run), "--json", "--device", "cpu")
    assert by_dir.returncode == 0, by_dir.stderr
    assert json.loads(by_dir.stdout) == json.loads(by_file.stdout)
    red = str(sorted((colour_data / "val" / "red").glob("*.jpg"))[0])
    res = run_here("predict", "--checkpoint", str(trained_run), red, "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["top"][0]["class"] == "red"
    (tmp_path / "empty").mkdir()
    res = run_here("eval", "--checkpoint", str(tmp_path / "empty"))
    assert res.returncode == 2
    assert "is a folder without checkpoints/best.pt or last.pt" in error_line(res)


def test_eval_confusion_matrix_and_a_folder_without_some_classes(trained_run: Path, colour_data: Path,
                                                                   tmp_path: Path) -> None:
    """--json adds the confusion matrix (rows: true class) and the most confused pairs; a folder with
    images of one class only scores that class and says the other has none (it used to crash)."""
    res = run_here("eval", "--checkpoint", str(trained_run), "--json", "--device", "cpu")
    out = json.loads(res.stdout)
    matrix = out["confusion"]
    assert [sum(row) for row in matrix] == [out["per_class_images"][c] for c in ("blue", "red")]
    assert [matrix[i][i] / sum(matrix[i]) for i in range(2)] == [out["per_class"][c] for c in ("blue", "red")]
    off = [{"true": t, "predicted": p, "images": matrix[i][j]} for i, t in enumerate(("blue", "red"))
           for j, p in enumerate(("blue", "red")) if i != j and matrix[i][j]]
    assert sorted(out["most_confused"], key=str) == sorted(off, key=str)
    only_red = tmp_path / "only-red" / "val" / "red"
    only_red.mkdir(parents=True)
    for image in sorted((colour_data / "val" / "red").glob("*.jpg"))[:3]:
        (only_red / image.name).write_bytes(image.read_bytes())
    res = run_here("eval", "--checkpoint", str(trained_run), "--data", str(tmp_path / "only-red"), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "(3 images)" in res.stdout and "(no images)" in res.stdout.splitlines()[1]  # blue
    js = json.loads(run_here("eval", "--checkpoint", str(trained_run), "--data", str(tmp_path / "only-red"),
                             "--device", "cpu", "--json").stdout)
    assert js["per_class"]["blue"] is None and js["per_class_images"] == {"blue": 0, "red": 3}


def test_tta_averages_each_image_with_its_mirror_image(trained_run: Path, colour_data: Path, tmp_path: Path) -> None:
    """predict --tta gives the mean of the image's and the mirrored file's probabilities; eval --tta
    says it was used and scores with those averages."""
    from PIL import Image

    source = Image.open(sorted((colour_data / "val" / "red").glob("*.jpg"))[0]).convert("RGB")
    source.save(tmp_path / "a.png")
    source.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "b.png")

    def probs(*args: str) -> dict[str, float]:
        res = run_here("predict", "--checkpoint", str(trained_run), *args, "--json", "--device", "cpu")
        assert res.returncode == 0, res.stderr
        return {t["class"]: t["prob"] for t in json.loads(res.stdout)[0]["top"]}

    a, b, tta = probs(str(tmp_path / "a.png")), probs(str(tmp_path / "b.png")), probs(str(tmp_path / "a.png"), "--tta")
    assert a != b  # (the mirror image is another input for the model)
    for c in a:
        assert tta[c] == pytest.approx((a[c] + b[c]) / 2, abs=1e-4)
    res = run_here("eval", "--checkpoint", str(trained_run), "--json", "--tta", "--device", "cpu")
    out, plain = json.loads(res.stdout), json.loads(run_here("eval", "--checkpoint", str(trained_run), "--json",
                                                             "--device", "cpu").stdout)
    assert out["tta"] == "hflip" and "tta" not in plain and out["images"] == plain["images"]
    assert out["loss"] != plain["loss"] and 0 <= out["top1"] <= 1
    text = run_here("eval", "--checkpoint", str(trained_run), "--tta", "--device", "cpu").stdout
    assert "each averaged with its mirror image)" in text.splitlines()[0]


def test_predict_names_the_classes(trained_run: Path, colour_data: Path) -> None:
    red = sorted((colour_data / "val" / "red").glob("*.jpg"))[0]
    res = run_here("predict", "--checkpoint", str(trained_run / "checkpoints" / "best.pt"), str(red),
                  str(colour_data / "val" / "blue"), "--json", "--topk", "5", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    preds = json.loads(res.stdout)
    assert len(preds) == 1 + len(list((colour_data / "val" / "blue").glob("*.jpg")))
    assert preds[0]["top"][0]["class"] == "red"
    assert len(preds[0]["top"]) == 2  # topk capped at the number of classes
    assert sum(p["prob"] for p in preds[0]["top"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_sees_what_eval_sees(trained_run: Path, tmp_path: Path) -> None:
    """predict decodes and normalises like the eval loader (full-size decode, the same normaliser):
    the same probabilities, also for a photo big enough that a reduced-size decode would differ."""
    import numpy as np
    from PIL import Image

    from finetune.data import build_loader
    from finetune.data.bench import _photo
    from finetune.data.samples import Samples
    from finetune.train import load_checkpoint_model, predict_files

    photo = tmp_path / "big.jpg"
    Image.fromarray(_photo(np.random.default_rng(0), 1001, 751)).save(photo, quality=90)
    ckpt = trained_run / "checkpoints" / "best.pt"
    [pred] = predict_files(ckpt, [str(photo)], topk=2, device="cpu")
    model, state = load_checkpoint_model(ckpt, torch.device("cpu"))
    samples = Samples.from_lists([str(photo)], [0], tuple(state["classes"]))
    with build_loader(samples, train=False, img_size=int(state["img_size"]), batch_size=1, workers=0,
                      mean=tuple(state["mean"]), std=tuple(state["std"]), log=lambda m: None) as loader:
        [(images, _)] = list(loader)
    with torch.no_grad():
        probs = model(images).softmax(1)[0]
    assert [t["prob"] for t in pred["top"]] == pytest.approx(sorted(probs.tolist(), reverse=True), abs=1e-6)


def test_resume_at_epoch_boundary_continues_at_the_right_epoch(colour_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_here("train", "--data", str(colour_data), "--epochs", "1", "--out", str(out), *TINY)
    assert first.returncode == 0, first.stderr
    second = run_here("train", "--out", str(out), "--resume", "auto", "--epochs", "2", "-q")
    assert second.returncode == 0, second.stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2


def test_flat_folder_is_split_stratified(tmp_path: Path) -> None:
    from conftest import write_colour_folder

    write_colour_folder(tmp_path / "src", per_class=10)
    flat = tmp_path / "src" / "train"  # class folders only, no val/
    from finetune.data.samples import find_splits

    train, val = find_splits(flat, val_split=0.2, seed=3)
    assert val.class_counts() == {"blue": 2, "red": 2}
    assert len(train) == 16
    again = find_splits(flat, val_split=0.2, seed=3)[1]
    assert list(again.paths) == list(val.paths)


# --------------------------------------------------------------------------- bad input: one line, exit 2
def _assert_one_line_error(res, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("finetune: error:")]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_data_folder(tmp_path: Path) -> None:
    res = run_here("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "-q")
    _assert_one_line_error(res, "does not exist")
    assert not (tmp_path / "r").exists()


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "data" / "cats").mkdir(parents=True)
    (tmp_path / "data" / "cats" / "notes.txt").write_text("not an image")
    res = run_here("train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"), "-q")
    _assert_one_line_error(res, "no images")


def test_unknown_model_suggests_close_names(colour_data: Path, tmp_path: Path) -> None:
    res = run_here("train", "--data", str(colour_data), "--model", "resnet51", "--out", str(tmp_path / "r"), "-q")
    _assert_one_line_error(res, "resnet51", "resnet50")


def test_unreadable_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    _assert_one_line_error(run_here("eval", "--checkpoint", str(bad)), "bad.pt")
    _assert_one_line_error(run_here("predict", "--checkpoint", str(bad), str(bad)), "bad.pt")


def test_resume_auto_with_nothing_to_resume(colour_data: Path, tmp_path: Path) -> None:
    res = run_here("train", "--data", str(colour_data), "--out", str(tmp_path / "empty"), "--resume", "auto", "-q")
    _assert_one_line_error(res, "nothing to resume")


def test_bad_flag_value_is_a_one_line_error(tmp_path: Path) -> None:
    _assert_one_line_error(run_here("train", "--epochs", "0", "--out", str(tmp_path / "r")), "--epochs")
    _assert_one_line_error(run_here("train", "--val-split", "1.5", "--data", str(tmp_path), "--out", str(tmp_path / "r")))


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    res = run_here("train", "--data", str(tmp_path / "nope"), "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, finetune.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip().splitlines()[-1] == "False"


def test_resume_without_max_steps_runs_to_the_end(colour_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_here("train", "--data", str(colour_data), "--epochs", "2", "--out", str(out), "--max-steps", "2", *TINY)
    assert first.returncode == 0, first.stderr
    assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip()
    again = run_here("train", "--resume", "auto", "--out", str(out), "-q")  # the run's config.yaml, not its stop
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]


def test_resume_from_an_earlier_checkpoint_sets_the_newer_ones_aside(colour_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_here("train", "--data", str(colour_data), "--epochs", "3", "--out", str(out), "--keep-last", "5", *TINY)
    assert first.returncode == 0, first.stderr
    numbered = sorted((out / "checkpoints").glob("ckpt-*.pt"))
    assert len(numbered) == 3
    earliest = numbered[0]
    at = torch.load(earliest, weights_only=True)["step"]
    # --max-steps already reached: nothing trains, and last.pt is the checkpoint resumed from
    again = run_here("train", "--resume", str(earliest), "--out", str(out), "--max-steps", str(at), "-q")
    assert again.returncode == 0, again.stderr
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == at
    assert "moved to" in again.stderr and "nothing deleted" in again.stderr
    aside = list((out / "checkpoints").glob("superseded-*"))
    assert len(aside) == 1
    assert sorted(p.name for p in aside[0].glob("ckpt-*.pt")) == [p.name for p in numbered[1:]]  # kept, not deleted
    # what --resume auto now sees is the new line only: the earliest checkpoint and what followed it
    assert run_here("train", "--resume", "auto", "--out", str(out), "--max-steps", str(at + 1), "-q").returncode == 0
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == at + 1
    assert len(list((out / "checkpoints").glob("superseded-*"))) == 1


def test_model_too_big_for_the_image_size_is_a_one_line_error(colour_data: Path, tmp_path: Path) -> None:
    res = run_here("train", "--data", str(colour_data), "--model", "alexnet", "--img-size", "32", "--workers", "0",
                  "--out", str(tmp_path / "run"), "-q")
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("finetune: error: alexnet cannot take 32x32 images") and last.endswith("use img_size=64 or more (--img-size)")
    assert "Traceback" not in res.stderr and not (tmp_path / "run" / "checkpoints").exists()


def test_vit_trains_at_another_image_size_and_eval_rebuilds_it(colour_data: Path, tmp_path: Path) -> None:
    """torchvision's ViT has a fixed input size: it is built for --img-size (its position embedding
    sized for that grid), and `eval` rebuilds it from the checkpoint at the same size."""
    out = tmp_path / "run"
    res = run_here("train", "--data", str(colour_data), "--model", "vit_b_16", "--img-size", "32", "--batch-size", "4",
                  "--workers", "0", "--epochs", "1", "--max-steps", "1", "--out", str(out), "-q")
    assert res.returncode == 0, res.stderr
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["model"]["encoder.pos_embedding"].shape == (1, 1 + 2 * 2, 768)
    res = run_here("eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr


def test_timm_weights_bring_their_own_input_normalisation(colour_data: Path, tmp_path: Path) -> None:
    """timm's ViTs were trained on inputs normalised with mean = std = 0.5, not ImageNet's:
    the loaders use the weights' values, the checkpoint carries them, and eval reuses them."""
    out = tmp_path / "run"
    res = run_here("train", "--data", str(colour_data), "--model", "timm:vit_tiny_patch16_224", "--img-size", "32",
                  "--batch-size", "4", "--workers", "0", "--epochs", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "mean (0.5, 0.5, 0.5) / std (0.5, 0.5, 0.5)" in res.stdout + res.stderr
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert list(state["mean"]) == [0.5, 0.5, 0.5] and list(state["std"]) == [0.5, 0.5, 0.5]
    res = run_here("eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    val_loss = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["val_loss"]
    assert json.loads(res.stdout)["loss"] == pytest.approx(val_loss, rel=1e-4)  # the same inputs as in training


def test_sigterm_outside_the_training_loop_is_a_one_line_error(tmp_path: Path) -> None:
    """In set-up or in another command there is nothing to save: SIGTERM ends like Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "shapes"
    proc = subprocess.Popen([sys.executable, "-m", "finetune.cli", "make-shapes", str(out), "--per-class", "5000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "FINETUNE_DEBUG"})
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob(".shapes.*/*/*/*.jpg")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # drawing has started (into a temporary sibling folder): the command's own code runs
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1] == "finetune: error: interrupted" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no half-written dataset, no temporary folder left


def test_resume_with_flags_that_change_the_run_says_what_changed(colour_data: Path, tmp_path: Path) -> None:
    """`--resume auto --lr 0.5` continued with the new value without a word; settings of how the run
    executes (workers, device, ...) are not changes of the run."""
    out = tmp_path / "run"
    args = ["--data", str(colour_data), "--epochs", "3", "--out", str(out), "--freeze", "layer1", "layer2", *TINY]
    assert run_here("train", *args, "--max-steps", "1").returncode == 0
    plain = run_here("train", "--out", str(out), "--resume", "auto", "--max-steps", "2", "--workers", "1")
    assert plain.returncode == 0, plain.stderr
    [line] = [line for line in plain.stdout.splitlines() if line.startswith("resumed at")]
    assert "changed" not in line  # the run's own settings, lists included, and another --workers
    assert not list(out.glob("config.*.yaml"))  # (nothing changed: no earlier config kept)
    first = (out / "config.yaml").read_text()
    changed = run_here("train", "--out", str(out), "--resume", "auto", "--lr", "0.5", "--epochs", "4",
                       "--max-steps", "3")
    assert changed.returncode == 0, changed.stderr
    [line] = [line for line in changed.stdout.splitlines() if line.startswith("resumed at")]
    assert line.endswith("; settings changed from the run's: epochs 3 -> 4, lr 0.002 -> 0.5"), line
    # the settings that trained the first steps stay on record, headed by where they stopped
    kept = (out / "config.1.yaml").read_text()
    assert kept == f"# the settings of this run until the resume at step 2 changed epochs 3 -> 4, lr 0.002 -> 0.5\n{first}"
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 0.5
    # and the run goes on with it (the optimizer's groups were restored with the checkpoint's settings)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert {g["hparams"]["base_lr"] for g in state["optimizer"]["groups"]} == {0.5}

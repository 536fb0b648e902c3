"""End-to-end user journeys that cross features: train, move, convert, reload by hand, resume with
other flags, predict on odd files, the library's parts in a hand-written loop.

Each journey is what a user coming from timm / Lightning / fastai does in one sitting, run with the
real ``finetune`` command (and the public library); tiny images and models keep each one short.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import error_line, run_cli, run_here, write_colour_folder

SQ = ["--model", "squeezenet1_1", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--seed", "0", "-q"]



def _ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, (res.stdout, res.stderr)
    return res


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _write_csv(root: Path, name: str = "labels.csv") -> Path:
    """``path,label,split`` rows with paths relative to the CSV's folder."""
    rows = ["path,label,split"]
    for split in ("train", "val"):
        rows += [f"{f.relative_to(root).as_posix()},{f.parent.name},{split}" for f in sorted((root / split).rglob("*.jpg"))]
    (root / name).write_text("\n".join(rows) + "\n")
    return root / name


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train / 4 val images per class, red and blue, 40 px."""
    return write_colour_folder(tmp_path_factory.mktemp("journey-data") / "colours", per_class=8, size=40)


@pytest.fixture(scope="module")
def sq_run(colours: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch squeezenet run on ``colours`` (read-only: copy it to change it)."""
    out = tmp_path_factory.mktemp("journey-run") / "run"
    _ok(run_cli("train", "--data", str(colours), "--epochs", "1", "--out", str(out), *SQ))
    return out


# --------------------------------------------------------------------------- move everything
@pytest.mark.slow
def test_csv_relative_paths_from_another_cwd_then_run_and_data_moved(tmp_path: Path) -> None:
    """Train on a CSV of relative paths from another working directory; move the run directory and
    the data; eval / predict / cam / resume from the new places: what the run cannot know any more
    is a one-line error naming the flag that tells it, everything else works."""
    data = write_colour_folder(tmp_path / "data", per_class=8, size=40)
    _write_csv(data)
    cwd = tmp_path / "work"
    cwd.mkdir()
    _ok(run_cli("train", "--data", "../data/labels.csv", "--epochs", "1", "--out", "run", *SQ, env={"CWD": str(cwd)}))
    assert (cwd / "run" / "checkpoints" / "best.pt").is_file()

    moved, data2 = tmp_path / "moved" / "run-renamed", tmp_path / "data-renamed"
    moved.parent.mkdir()
    shutil.move(cwd / "run", moved)
    shutil.move(data, data2)
    best = moved / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True, map_location="cpu")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])

    line = error_line(run_cli("eval", "--checkpoint", str(best)))  # its data is gone: say how to give it
    assert "--data" in line and "labels.csv" in line
    out = json.loads(_ok(run_cli("eval", "--checkpoint", str(best), "--data", str(data2 / "labels.csv"), "--json")).stdout)
    assert out["images"] == 4 and set(out["per_class"]) == {"blue", "red"}
    preds = json.loads(_ok(run_cli("predict", "--checkpoint", str(best), str(data2 / "val"), "--json")).stdout)
    assert len(preds) == 4 and all(p["top"][0]["class"] in ("blue", "red") for p in preds)

    line = error_line(run_cli("cam", str(moved)))  # no images given, and the run's data is gone
    assert "labels.csv" in line
    _ok(run_cli("cam", str(moved), str(data2 / "val" / "red"), "--limit", "2"))
    assert len(list((moved / "cam" / "gradcam").glob("*.png"))) == 2  # in the run directory where it is now

    error_line(run_cli("train", "--out", str(moved), "--resume", "auto", "--epochs", "2", "-q"))
    _ok(run_cli("train", "--out", str(moved), "--resume", "auto", "--epochs", "2", "--data", str(data2 / "labels.csv"), "-q"))
    assert [r["epoch"] for r in _metrics(moved)] == [0, 1]
    assert str(data2 / "labels.csv") in (moved / "config.yaml").read_text()  # the next resume needs no --data
    _ok(run_cli("eval", "--checkpoint", str(moved / "checkpoints" / "last.pt"), "--json"))  # saved with the new path


# --------------------------------------------------------------------------- convert, load by hand
def _eval_transform(state: dict):
    """The eval transform a checkpoint names, built by hand with torchvision's transforms."""
    from torchvision import transforms as T

    size, pct = int(state["img_size"]), float(state["crop_pct"])
    side = int(size / pct + 1e-6)
    interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[state["interpolation"]]
    resize = T.Resize((side, side) if state["crop_mode"] == "squash" else side, interpolation=interp, antialias=True)
    return T.Compose([resize, T.CenterCrop(size), T.ToTensor(), T.Normalize(state["mean"], state["std"])])


def _hand_probs(model: torch.nn.Module, state: dict, files: list[Path]) -> torch.Tensor:
    tf = _eval_transform(state)
    batch = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        return model.eval()(batch).softmax(1)


def test_convert_then_plain_torchvision_model_gives_predicts_probabilities(sq_run: Path, colours: Path,
                                                                         tmp_path: Path) -> None:
    """``convert best.pt x.safetensors``, load it into ``torchvision.models.squeezenet1_1(num_classes=2)``
    with ``strict=True``: on the same images, with the eval transform the checkpoint names, the
    probabilities are finetune predict's."""
    import torchvision
    from safetensors.torch import load_file

    out = tmp_path / "weights.safetensors"
    _ok(run_here("convert", str(sq_run / "checkpoints" / "best.pt"), str(out)))
    model = torchvision.models.squeezenet1_1(num_classes=2)
    model.load_state_dict(load_file(str(out)), strict=True)
    model.load_state_dict(load_file(str(sq_run / "best.safetensors")), strict=True)  # the run's own copy too
    files = sorted((colours / "val").rglob("*.jpg"))[:4]
    preds = json.loads(_ok(run_here("predict", "--checkpoint", str(sq_run / "checkpoints" / "best.pt"),
                                   *map(str, files), "--json")).stdout)
    state = torch.load(sq_run / "checkpoints" / "best.pt", weights_only=True)
    probs = _hand_probs(model, state, files)
    for p, row in zip(preds, probs, strict=True):
        for t in p["top"]:
            assert abs(t["prob"] - row[t["index"]].item()) < 2e-3, (p, row)


@pytest.mark.slow
def test_timm_model_with_bicubic_squash_eval_loads_into_timm_by_hand(colours: Path, tmp_path: Path) -> None:
    """A ``timm:`` model trained with a non-default eval transform (crop_pct 0.9, bicubic, squash):
    converted, loaded into ``timm.create_model(..., num_classes=2)`` strictly, the checkpoint's
    transform rebuilt by hand gives predict's probabilities."""
    import timm
    from safetensors.torch import load_file

    run = tmp_path / "run"
    _ok(run_cli("train", "--data", str(colours), "--model", "timm:test_resnet", "--img-size", "32", "--epochs", "1",
                "--batch-size", "4", "--workers", "0", "--crop-pct", "0.9", "--interpolation", "bicubic",
                "--crop-mode", "squash", "--max-steps", "2", "--out", str(run), "-q"))
    _ok(run_cli("convert", str(run / "checkpoints" / "last.pt"), str(tmp_path / "w.safetensors")))
    model = timm.create_model("test_resnet", num_classes=2)
    model.load_state_dict(load_file(str(tmp_path / "w.safetensors")), strict=True)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (state["crop_pct"], state["interpolation"], state["crop_mode"]) == (0.9, "bicubic", "squash")
    files = sorted((colours / "val").rglob("*.jpg"))[:4]
    preds = json.loads(_ok(run_cli("predict", "--checkpoint", str(run / "checkpoints" / "last.pt"),
                                   *map(str, files), "--json")).stdout)
    probs = _hand_probs(model, state, files)
    for p, row in zip(preds, probs, strict=True):
        for t in p["top"]:
            assert abs(t["prob"] - row[t["index"]].item()) < 2e-3, (p, row)


# --------------------------------------------------------------------------- resume with other flags
def _interrupted_run(colours: Path, run: Path, *extra: str) -> None:
    """A run of 2 epochs x 4 steps stopped after step 2, in the middle of its first epoch."""
    _ok(run_here("train", "--data", str(colours), "--epochs", "2", "--max-steps", "2", "--out", str(run), *SQ, *extra))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"], state["loader"]["position"]) == (0, 2, 2)


def test_mid_epoch_resume_with_another_batch_size_is_refused(colours: Path, tmp_path: Path) -> None:
    """Stopped in the middle of an epoch with batch 4, resumed with --batch-size 8: the position is
    counted in batches, so the rest of the epoch would be skipped (or repeated, with a smaller batch)
    without a word. Refused with the batch size to use; at the end of an epoch it is accepted."""
    run = tmp_path / "run"
    _interrupted_run(colours, run)
    for other in ("8", "2"):
        line = error_line(run_here("train", "--out", str(run), "--resume", "auto", "--batch-size", other, "-q"))
        assert "--batch-size 4" in line
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 2  # nothing written
    _ok(run_here("train", "--out", str(run), "--resume", "auto", "--max-steps", "4", "-q"))  # the epoch ends
    _ok(run_here("train", "--out", str(run), "--resume", "auto", "--batch-size", "8", "-q"))
    records = _metrics(run)
    assert [r["epoch"] for r in records] == [0, 1] and [r["step"] for r in records] == [4, 6]


@pytest.mark.slow
def test_sigint_then_resume_with_changed_flags(colours: Path, tmp_path: Path) -> None:
    """Ctrl-C in the middle of a run saves and exits 0; the resume refuses what cannot continue the
    run (another model, another seed, --ema added) with one line each, and accepts a new --lr and
    more epochs, which config.yaml then records."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "finetune.cli", "train", "--data", str(colours), "--epochs", "50",
                             "--out", str(run), *[a for a in SQ if a != "-q"], "--batch-size", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "trainable.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "--resume auto" in err and "Traceback" not in err
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    step = state["step"]
    assert step >= 1

    for flags, says in ((["--model", "resnet18"], "squeezenet1_1"), (["--seed", "3"], "--seed 0"),
                        (["--ema", "0.9"], "without --ema")):
        line = error_line(run_cli("train", "--out", str(run), "--resume", "auto", *flags, "-q"))
        assert says in line, line
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == step  # refused: nothing written
    _ok(run_cli("train", "--out", str(run), "--resume", "auto", "--lr", "0.01", "--epochs", "1", "-q"))
    cfg = (run / "config.yaml").read_text()
    assert "lr: 0.01" in cfg and "epochs: 1" in cfg
    assert [r["epoch"] for r in _metrics(run)] == [0]


# --------------------------------------------------------------------------- a flat folder moved
def test_flat_folder_moved_then_eval_scores_its_val_split_not_its_training_images(tmp_path: Path) -> None:
    """Flat class folders are split by --val-split at training; moved (renamed), `eval --data NEW`
    scored all of it, the training images too (an accuracy that looks better than it is). The moved
    training data is recognised (same classes, same split sizes) and its validation split scored."""
    flat = tmp_path / "photos"
    src = write_colour_folder(tmp_path / "src", per_class=8, size=40)
    for name in ("blue", "red"):
        (flat / name).mkdir(parents=True)
        for f in [*(src / "train" / name).glob("*.jpg"), *(src / "val" / name).glob("*.jpg")]:
            shutil.copy(f, flat / name / f"{f.parent.parent.name}-{f.name}")
    run = tmp_path / "run"
    _ok(run_here("train", "--data", str(flat), "--val-split", "0.25", "--epochs", "1", "--out", str(run), *SQ))
    before = json.loads(_ok(run_here("eval", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--json")).stdout)
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert before["images"] == state["val_images"] < 20 == state["val_images"] + state["train_images"]
    shutil.move(flat, tmp_path / "photos-moved")
    res = _ok(run_here("eval", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--data",
                      str(tmp_path / "photos-moved"), "--json"))
    assert json.loads(res.stdout) == before  # the same images, not all 20
    assert "validation split" in res.stderr
    other = write_colour_folder(tmp_path / "test-set", per_class=5, size=40)  # a real test set: scored whole
    assert json.loads(_ok(run_here("eval", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--data",
                                  str(other / "train"), "--json")).stdout)["images"] == 10


# --------------------------------------------------------------------------- odd files
def _odd_images(folder: Path) -> tuple[list[str], list[str]]:
    """Images of every kind the README names, and files that are not images; (readable, unreadable) names."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(rgb)
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "gray16.png")
    im.convert("RGBA").save(folder / "rgba.png")
    im.convert("P").save(folder / "palette.gif")
    im.convert("LA").save(folder / "la.png")
    im.convert("1").save(folder / "bw.bmp")
    im.convert("CMYK").save(folder / "cmyk.jpg")
    im.save(folder / "x.webp")
    im.save(folder / "x.tiff")
    im.save(folder / "UPPER.JPG")
    Image.fromarray(rgb[:1]).save(folder / "one-row.png")
    frames = [Image.fromarray(np.roll(rgb, i, 0)) for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    (folder / "sub").mkdir(exist_ok=True)
    im.save(folder / "sub" / "deep.jpg")
    (folder / "notes.txt").write_text("not an image, not a sample")
    (folder / ".hidden.jpg").write_bytes((folder / "UPPER.JPG").read_bytes())
    (folder / "fake.jpg").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.jpg").write_bytes((folder / "UPPER.JPG").read_bytes()[:300])
    readable = ["gray16.png", "rgba.png", "palette.gif", "la.png", "bw.bmp", "cmyk.jpg", "x.webp", "x.tiff",
                "UPPER.JPG", "one-row.png", "anim.gif", "deep.jpg"]
    return readable, ["fake.jpg", "empty.png", "cut.jpg"]


def test_predict_cam_eval_on_a_folder_of_odd_files(sq_run: Path, tmp_path: Path) -> None:
    """A folder of every image kind plus files that are not images: predict and cam skip the unreadable
    ones with a warning each and go on (cam stopped at the first one); a file named on the command line
    that cannot be read is an error; eval says how many it could not score (it said nothing)."""
    ckpt = str(sq_run / "checkpoints" / "best.pt")
    readable, bad = _odd_images(tmp_path / "odd")
    res = _ok(run_here("predict", "--checkpoint", ckpt, str(tmp_path / "odd"), "--json", "--topk", "1"))
    assert sorted(Path(p["path"]).name for p in json.loads(res.stdout)) == sorted(readable)
    assert all(name in res.stderr for name in bad)
    res = _ok(run_here("cam", ckpt, str(tmp_path / "odd"), "--limit", "40", "--out", str(tmp_path / "cam"), "--json"))
    records = json.loads(res.stdout)
    assert sorted(Path(r["file"]).name for r in records) == sorted(readable)
    assert all(name in res.stderr for name in bad)
    assert len(list((tmp_path / "cam").glob("*.png"))) == len(readable)
    assert "fake.jpg" in error_line(run_here("cam", ckpt, str(tmp_path / "odd" / "fake.jpg"), "--out", str(tmp_path / "c2")))
    assert "fake.jpg" in error_line(run_here("predict", "--checkpoint", ckpt, str(tmp_path / "odd" / "fake.jpg")))

    test_set = tmp_path / "test"
    shutil.copytree(tmp_path / "odd", test_set / "red")
    (test_set / "blue").mkdir()
    Image.new("RGB", (40, 40), (30, 30, 200)).save(test_set / "blue" / "b.png")
    res = _ok(run_here("eval", "--checkpoint", ckpt, "--data", str(test_set), "--json"))
    out = json.loads(res.stdout)
    assert out["images"] == len(readable) + 1
    assert sorted(Path(p).name for p in out["skipped"]) == sorted(bad)
    assert "skipped 3 unreadable" in res.stderr


# --------------------------------------------------------------------------- the library's parts
def test_library_parts_in_a_hand_written_loop_then_cli_eval(sq_run: Path, colours: Path, tmp_path: Path) -> None:
    """build_loader + create_model + load_weights (the run's best.safetensors) + Checkpointer in a loop
    of one's own; `finetune eval` / `predict` on what it saved. A checkpoint without a config does not
    say which data it was trained on: eval and cam ask for it (they evaluated the built-in shapes)."""
    import finetune
    from finetune.checkpoint import capture_rng_state

    model = finetune.create_model("squeezenet1_1", num_classes=2)
    report = finetune.load_weights(model, sq_run / "best.safetensors")
    assert "52/52" in str(report)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with finetune.build_loader(colours, train=True, img_size=32, batch_size=4, workers=0) as loader, \
            finetune.Checkpointer(tmp_path / "mine") as ckpt:
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        ckpt.save({"model": model, "optimizer": optimizer, "epoch": 0, "step": len(loader), "rng": capture_rng_state(),
                   "arch": "squeezenet1_1", "classes": list(loader.classes), "img_size": 32})
    path = tmp_path / "mine" / "checkpoints" / "last.pt"
    assert "--data" in error_line(run_here("eval", "--checkpoint", str(path)))
    assert "images to explain" in error_line(run_here("cam", str(tmp_path / "mine")))
    out = json.loads(_ok(run_here("eval", "--checkpoint", str(path), "--data", str(colours), "--json")).stdout)
    assert out["images"] == 4 and set(out["per_class"]) == {"blue", "red"}
    preds = json.loads(_ok(run_here("predict", "--checkpoint", str(path), str(colours / "val"), "--json")).stdout)
    model.eval()
    files = [Path(p["path"]) for p in preds]
    probs = _hand_probs(model, {"img_size": 32, "crop_pct": 0.875, "interpolation": "bilinear", "crop_mode": "center",
                                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, files)
    for p, row in zip(preds, probs, strict=True):
        assert abs(p["top"][0]["prob"] - row[p["top"][0]["index"]].item()) < 2e-3


# --------------------------------------------------------------------------- second fine-tune
@pytest.mark.slow
def test_second_finetune_from_a_finetune_checkpoint_probe_unfreeze_resumed_midway(sq_run: Path, tmp_path: Path) -> None:
    """--pretrained is the first run's best.pt (2 classes), the new data has 3: the head is new, the
    backbone is the first run's; --linear-probe for epoch 1, --unfreeze features.12@2; interrupted in
    epoch 2 and resumed, it ends with the weights of the uninterrupted run, and only the head and
    features.12 ever moved."""
    three = write_colour_folder(tmp_path / "three", per_class=4, size=40, classes=("red", "green", "blue"))
    common = ["--data", str(three), "--pretrained", str(sq_run / "checkpoints" / "best.pt"), "--linear-probe",
              "--unfreeze", "features.12@2", "--epochs", "2", *SQ]
    env = {"OMP_NUM_THREADS": "1"}
    _ok(run_cli("train", *common, "--out", str(tmp_path / "whole"), env=env))
    _ok(run_cli("train", *common, "--out", str(tmp_path / "cut"), "--max-steps", "4", env=env))
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["loader"]["position"] == 1
    _ok(run_cli("train", "--out", str(tmp_path / "cut"), "--resume", "auto", "-q", env=env))
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert whole["step"] == cut["step"] == 6
    for k, v in whole["model"].items():
        assert torch.allclose(v.float(), cut["model"][k].float(), atol=1e-6), k
    first = torch.load(sq_run / "checkpoints" / "best.pt", weights_only=True)["model"]
    moved = {k for k, v in whole["model"].items() if k in first and v.shape == first[k].shape and not torch.equal(v, first[k])}
    assert moved and all(k.startswith("features.12.") for k in moved), moved
    assert whole["model"]["classifier.1.weight"].shape[0] == 3
    for a, b in zip(_metrics(tmp_path / "whole"), _metrics(tmp_path / "cut"), strict=True):
        assert a["step"] == b["step"] and abs(a["val_loss"] - b["val_loss"]) < 1e-5


# --------------------------------------------------------------------------- recipes
@pytest.mark.slow
def test_lr_find_then_train_with_its_lr(colours: Path, tmp_path: Path) -> None:
    """`lr-find` prints the lr and the command to use it with; the run trains with exactly that lr."""
    res = _ok(run_cli("lr-find", "--data", str(colours), "--num-steps", "6", *SQ))
    hint = res.stdout.strip().splitlines()[-1]
    assert hint.startswith("use it with: finetune train ... --lr ")
    lr = hint.split("--lr ")[1]
    _ok(run_cli("train", "--data", str(colours), "--epochs", "1", "--lr", lr, "--warmup-epochs", "0",
                "--out", str(tmp_path / "run"), *SQ))
    assert f"lr: {float(lr)}" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.slow
def test_ema_mixup_early_stop_then_eval_convert_and_resume(colours: Path, tmp_path: Path) -> None:
    """--ema with --mixup/--cutmix and --early-stop: the run stops early; best.safetensors, eval and
    `convert --ema` are the EMA weights of the best epoch; a resume with more epochs stops again at once."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    _ok(run_cli("train", "--data", str(colours), "--ema", "0.5", "--mixup", "0.2", "--cutmix", "1.0",
                "--early-stop", "1", "--epochs", "5", "--lr", "1e-9", "--out", str(run), *SQ))
    records = _metrics(run)
    assert len(records) < 5 and all("raw_val_top1" in r for r in records)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    shipped = load_file(str(run / "best.safetensors"))
    assert all(torch.equal(shipped[k], best["model_ema"][k]) for k in shipped)
    _ok(run_cli("convert", str(run / "checkpoints" / "best.pt"), str(tmp_path / "ema.safetensors"), "--ema"))
    converted = load_file(str(tmp_path / "ema.safetensors"))
    assert converted.keys() == shipped.keys() and all(torch.equal(converted[k], shipped[k]) for k in shipped)
    out = json.loads(_ok(run_cli("eval", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--json")).stdout)
    assert abs(out["top1"] - records[best["best_epoch"]]["val_top1"]) < 1e-9
    res = _ok(run_cli("train", "--out", str(run), "--resume", "auto", "--epochs", "8"))
    assert "early stop" in res.stdout and len(_metrics(run)) == len(records)


def test_convert_half_then_pretrained_and_predict(sq_run: Path, colours: Path, tmp_path: Path) -> None:
    """`convert --half` writes weights alone: predict says so (one line); as --pretrained of a new run
    (fp16 into an fp32 model) they load whole and the run trains."""
    half = tmp_path / "half.pt"
    _ok(run_here("convert", "--half", str(sq_run / "checkpoints" / "best.pt"), str(half)))
    assert all(v.dtype == torch.float16 for v in torch.load(half, weights_only=True).values() if v.is_floating_point())
    assert "--pretrained" in error_line(run_here("predict", "--checkpoint", str(half), str(colours / "val")))
    run = tmp_path / "run"
    res = _ok(run_here("train", "--data", str(colours), "--pretrained", str(half), "--epochs", "1", "--max-steps", "1",
                      "--out", str(run), *SQ))
    assert "warning" not in res.stderr, res.stderr
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())

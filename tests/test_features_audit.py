"""Acceptance tests of the newer features in combination (torchrun + --ema + --mixup/--cutmix,
kills, lr-find's set-up, our own --ema checkpoints in the weights tools, TensorBoard). Each test
found a bug, except the kill -9 of every process (slow), which guards the exact resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from finetune import TrainConfig, make_shapes


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("audit-shapes"), per_class=6, val_per_class=2, size=32)


def env() -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    e.pop("FINETUNE_DEBUG", None)
    return e


def torchrun_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    """Two CPU processes, batch 8 each: 48 training images are 3 steps per epoch."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "finetune",
            "train", "--data", str(data), "--model", "resnet18", "--img-size", "32", "--workers", "0",
            "--device", "cpu", "--batch-size", "8", "--out", str(out), "-q", *extra]


def torchrun(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(torchrun_cmd(data, out, *extra), capture_output=True, text=True, env=env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: dict, b: dict) -> list[str]:
    """The keys whose tensors differ (bitwise)."""
    return [k for k in a if not torch.equal(a[k], b[k])]


# --------------------------------------------------------------------------- torchrun + BatchNorm
def test_torchrun_val_metrics_are_those_of_the_saved_model(data: Path, tmp_path: Path) -> None:
    """Under DDP each process updates its BatchNorm statistics with its own batch (DDP sends process 0's
    only at the start of a forward): process 1 validated its share with other statistics than the
    model process 0 saves. val_loss must be what evaluating the saved checkpoint gives."""
    from finetune.train import evaluate_checkpoint

    torchrun(data, tmp_path / "run", "--epochs", "1")
    recorded = metrics(tmp_path / "run")[-1]
    again = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", device="cpu", batch_size=8)
    assert again["images"] == 16
    assert again["loss"] == pytest.approx(recorded["val_loss"], rel=1e-5, abs=1e-6)
    assert again["top1"] == recorded["val_top1"] and again["top5"] == recorded["val_top5"]


@pytest.mark.slow  # (~25 s: torchrun resume exactness is in test_distributed, EMA/mixup resume in test_models_config)
def test_torchrun_ema_mixup_cutmix_resume_is_exact(data: Path, tmp_path: Path) -> None:
    """--ema with two processes: process 1's EMA of its own BatchNorm statistics was not in the checkpoint
    (process 0's is), so a run stopped in the middle of an epoch and resumed validated other EMA values."""
    args = ("--epochs", "2", "--ema", "0.9", "--mixup", "0.4", "--cutmix", "1.0")
    torchrun(data, tmp_path / "full", *args)
    torchrun(data, tmp_path / "cut", *args, "--max-steps", "4")  # the middle of epoch 2
    assert last(tmp_path / "cut")["batches_in_epoch"] == 1
    torchrun(data, tmp_path / "cut", *args, "--resume", "auto")
    a, b = last(tmp_path / "full"), last(tmp_path / "cut")
    assert same_weights(a["model"], b["model"]) == [] and same_weights(a["model_ema"], b["model_ema"]) == []
    assert metrics(tmp_path / "full") == metrics(tmp_path / "cut")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find torchrun's workers")
def test_torchrun_killed_with_sigkill_resumes_exactly(data: Path, tmp_path: Path) -> None:
    """kill -9 of torchrun, its workers and their data workers at once (a lost machine), with
    --save-every-steps 1 and --ema: --resume auto ends where the uninterrupted run ends."""
    args = ("--epochs", "2", "--workers", "1", "--save-every-steps", "1", "--ema", "0.9")
    torchrun(data, tmp_path / "full", *args)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(torchrun_cmd(data, cut, *args), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((cut / "checkpoints").glob("*s00000004.json")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        for pid in descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    torchrun(data, cut, *args, "--resume", "auto")
    a, b = last(tmp_path / "full"), last(cut)
    assert same_weights(a["model"], b["model"]) == [] and same_weights(a["model_ema"], b["model_ema"]) == []
    assert metrics(tmp_path / "full") == metrics(cut)


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker ``rank`` (a child of ``parent`` with RANK=rank in its environment)."""
    for pid in descendants(parent)[1:]:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"-m" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find torchrun's workers")
def test_torchrun_one_process_killed_is_one_error_line_and_resumes_exactly(data: Path, tmp_path: Path) -> None:
    """kill -9 of process 1 alone: process 0's next collective fails. It said 'unexpected RuntimeError:
    [gloo/...] Read error ... (this is a bug in finetune ...)'; it is a lost peer, and the checkpoints
    saved so far continue the run exactly."""
    args = ("--epochs", "2", "--save-every-steps", "1")
    torchrun(data, tmp_path / "full", *args)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(torchrun_cmd(data, cut, *args), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((cut / "checkpoints").glob("*s00000002.json")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        victim = rank_pid(proc.pid, 1)
        assert victim is not None and proc.poll() is None, "the run ended before it could be killed"
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=240)
    finally:
        for pid in descendants(proc.pid) if proc.poll() is None else ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    ours = [line for line in stderr.splitlines() if line.startswith("finetune:")]
    assert proc.returncode != 0
    assert any("another of the 2 processes" in line and "--resume auto" in line for line in ours), stderr[-3000:]
    assert not any("bug in finetune" in line for line in ours), ours
    torchrun(data, cut, *args, "--resume", "auto")
    assert same_weights(last(tmp_path / "full")["model"], last(cut)["model"]) == []
    assert metrics(tmp_path / "full") == metrics(cut)


@pytest.mark.slow  # (~16 s: a real torchrun for a message; the one-process message is in the default suite)
def test_torchrun_too_few_images_for_a_batch_per_process_says_so(tmp_path: Path) -> None:
    """16 images, 2 processes, --batch-size 10: the error said '16 images, fewer than one batch of 10'."""
    small = make_shapes(tmp_path / "small", per_class=2, val_per_class=1, size=32)
    done = subprocess.run(torchrun_cmd(small, tmp_path / "run", "--batch-size", "10", "--epochs", "1"),
                          capture_output=True, text=True, env=env(), timeout=300)
    assert done.returncode != 0
    ours = {line for line in done.stderr.splitlines() if line.startswith("finetune: error:")}
    assert len(ours) == 1, done.stderr[-3000:]
    assert "8 per process" in ours.pop()
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # (~34 s: two real torchruns for a message; process-count changes at epoch ends: test_distributed)
def test_torchrun_refusing_a_one_process_checkpoint_says_how_to_resume_it(data: Path, tmp_path: Path) -> None:
    """A checkpoint saved mid-epoch by one process, resumed under torchrun: the error said 'resume it with
    1 (torchrun --nproc_per_node 1)'."""
    from conftest import run_cli

    run = tmp_path / "run"
    first = run_cli("train", "--data", str(data), "--model", "resnet18", "--img-size", "32", "--epochs", "2",
                    "--batch-size", "8", "--workers", "0", "--device", "cpu", "--out", str(run), "--max-steps", "2",
                    "-q", env={"OMP_NUM_THREADS": "1"})
    assert first.returncode == 0, first.stderr
    done = subprocess.run(torchrun_cmd(data, run, "--epochs", "2", "--resume", "auto"), capture_output=True,
                          text=True, env=env(), timeout=300)
    ours = {line for line in done.stderr.splitlines() if line.startswith("finetune: error:")}
    assert done.returncode != 0 and len(ours) == 1, done.stderr[-3000:]
    line = ours.pop()
    assert "one process" in line and "without torchrun" in line and "nproc_per_node 1" not in line


# --------------------------------------------------------------------------- lr-find's set-up
def test_lr_find_sets_up_the_run_as_train_does(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lr-find claims the run's exact set-up: --auto-augment reached the loader of train only, and
    --mixup/--cutmix (which change the loss a lot) were not applied."""
    import importlib

    import finetune.mixing as mixing
    from finetune.lr_find import lr_find

    loader_mod = importlib.import_module("finetune.train")  # where the run's loader is built (build_train_loader)
    seen: dict = {}
    real_build, real_mix = loader_mod.build_loader, mixing.mix_batch

    def spy_build(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        return real_build(*args, **kwargs)

    mixed: list[int] = []

    def spy_mix(*args, **kwargs):  # type: ignore[no-untyped-def]
        mixed.append(kwargs["step"])
        return real_mix(*args, **kwargs)

    monkeypatch.setattr(loader_mod, "build_loader", spy_build)
    monkeypatch.setattr(mixing, "mix_batch", spy_mix)
    cfg = TrainConfig(data=str(data), model="resnet18", img_size=32, batch_size=16, workers="0", device="cpu",
                      auto_augment="trivialaugment", mixup=0.2, cutmix=1.0, linear_probe=True)
    result = lr_find(cfg, num_steps=4, quiet=True)
    assert seen["augment"] == "trivialaugment"
    assert mixed == list(range(len(result.lrs)))


# --------------------------------------------------------------------------- our --ema checkpoints in the weights tools
def test_convert_ema_and_inspect_read_our_own_ema_checkpoint(data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from finetune.train import train
    from finetune.weights.tools import convert, inspect_checkpoint

    run = train(TrainConfig(data=str(data), model="squeezenet1_1", img_size=32, epochs=1, batch_size=16,
                            workers="0", device="cpu", out=str(tmp_path / "run"), ema=0.5), quiet=True).run_dir
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert any(not torch.equal(state["model"][k], state["model_ema"][k]) for k in state["model"])
    assert inspect_checkpoint(str(run / "checkpoints" / "last.pt"))["ema"] is not None
    convert(str(run / "checkpoints" / "last.pt"), str(tmp_path / "ema.safetensors"), ema=True)
    written = load_file(str(tmp_path / "ema.safetensors"))
    assert all(torch.equal(written[k], state["model_ema"][k]) for k in written)


# --------------------------------------------------------------------------- --ema and TensorBoard
def test_tensorboard_cam_and_feature_maps_show_the_ema_weights(data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With --ema the EMA weights are the run's result (val_*, best.pt, `finetune cam`): the Grad-CAM
    overlays and feature maps in TensorBoard showed the raw weights instead."""
    import importlib

    train_mod = importlib.import_module("finetune.train")  # (the package's `train` is the function)
    shown: dict[str, dict] = {}
    real_cam, real_maps = train_mod.cam_overlays, train_mod.log_feature_maps

    def spy_cam(model, inputs):  # type: ignore[no-untyped-def]
        shown["cam"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real_cam(model, inputs)

    def spy_maps(log, model, batch, step):  # type: ignore[no-untyped-def]
        shown["maps"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real_maps(log, model, batch, step)

    monkeypatch.setattr(train_mod, "cam_overlays", spy_cam)
    monkeypatch.setattr(train_mod, "log_feature_maps", spy_maps)
    run = train_mod.train(TrainConfig(data=str(data), model="resnet18", img_size=32, epochs=1, batch_size=16,
                                      workers="0", device="cpu", out=str(tmp_path / "run"), ema=0.5,
                                      tensorboard=True), quiet=True).run_dir
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert same_weights(state["model"], state["model_ema"])  # the two differ here
    for what in ("cam", "maps"):
        assert same_weights(shown[what], state["model_ema"]) == [], what


def test_lr_find_checks_pretrained_weights_as_train_does(data: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A file that leaves two backbone tensors of a resnet18 random: train warns; lr-find said nothing and
    measured a partly random backbone. resnet50's file for a resnet18: train refuses it, lr-find too."""
    from finetune.errors import WeightsError
    from finetune.lr_find import lr_find
    from finetune.models import create_model

    weights = create_model("resnet18", num_classes=10).state_dict()
    del weights["layer4.1.conv2.weight"], weights["layer4.1.bn2.weight"]
    torch.save(weights, tmp_path / "r18.pt")
    cfg = TrainConfig(data=str(data), model="resnet18", img_size=32, batch_size=16, workers="0", device="cpu",
                      pretrained=str(tmp_path / "r18.pt"))
    lr_find(cfg, num_steps=2, quiet=True)
    assert "keep their random values" in capsys.readouterr().err
    torch.save(create_model("resnet50", num_classes=10).state_dict(), tmp_path / "r50.pt")
    with pytest.raises(WeightsError, match="it looks like weights of another architecture"):
        lr_find(dataclasses.replace(cfg, pretrained=str(tmp_path / "r50.pt")), num_steps=2, quiet=True)


# --------------------------------------------------------------------------- --resume PATH with a checkpoint that does not fit
def test_resume_path_refused_for_ema_moves_nothing_aside(data: Path, tmp_path: Path) -> None:
    """--resume PATH (an earlier checkpoint) --ema on a run trained without --ema: the error came after
    the newer checkpoints, last.pt included, had been moved to superseded-*/: a refused command changed
    the run directory."""
    from conftest import run_cli
    from finetune.train import train

    run = train(TrainConfig(data=str(data), model="squeezenet1_1", img_size=32, epochs=2, batch_size=16,
                            workers="0", device="cpu", out=str(tmp_path / "run")), quiet=True).run_dir
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    first = sorted((run / "checkpoints").glob("ckpt-e0001-*.pt"))[0]
    done = run_cli("train", "--data", str(data), "--model", "squeezenet1_1", "--img-size", "32", "--epochs", "2",
                   "--batch-size", "16", "--workers", "0", "--device", "cpu", "--out", str(run), "--ema", "0.9",
                   "--resume", str(first), "-q", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("finetune: error:"), done.stderr
    assert "EMA" in done.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_batch_of_one_too_small_for_batchnorm_is_a_one_line_error(data: Path, tmp_path: Path, command: str) -> None:
    """--batch-size 1 with resnet18 at 32 px (1x1 maps before the pooling): 'unexpected ValueError: Expected
    more than 1 value per channel ... (this is a bug in finetune ...)'."""
    from conftest import run_cli

    extra = ["--out", str(tmp_path / "run"), "--max-steps", "1"] if command == "train" else ["--num-steps", "2"]
    done = run_cli(command, "--data", str(data), "--model", "resnet18", "--img-size", "32", "--batch-size", "1",
                   "--workers", "0", "--device", "cpu", "-q", *extra, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("finetune: error:")]
    assert len(lines) == 1 and "--batch-size" in lines[0] and "bug in finetune" not in lines[0], done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- TensorBoard feature maps
def test_stage_feature_maps_name_the_stages_not_their_container() -> None:
    """timm's EfficientViT keeps its stages in one `stages` module: the last stage's map was named
    'stages' (the container's output) instead of its own name."""
    pytest.importorskip("timm")
    from finetune.features import stage_feature_maps
    from finetune.models import create_model

    maps = stage_feature_maps(create_model("timm:efficientvit_b0", num_classes=3), torch.zeros(1, 3, 64, 64))
    assert "stages" not in maps and {"stages.0", "stages.1", "stages.2"} <= set(maps), list(maps)


def test_lr_find_under_torchrun_is_refused(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lr-find under torchrun: every process ran the whole test on all the data and printed its table."""
    from finetune import ConfigError
    from finetune.lr_find import lr_find

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="one process"):
        lr_find(TrainConfig(data=str(data), img_size=32, batch_size=8, workers="0", device="cpu"), num_steps=2,
                quiet=True)


@pytest.mark.parametrize(("module", "function", "warning"), [
    ("finetune.features", "stage_feature_maps", "no feature maps in TensorBoard"),   # ran unguarded
    ("finetune.cam", "class_activation_maps", "no Grad-CAM images in TensorBoard"),  # only FinetuneError was caught
])
def test_tensorboard_images_that_fail_do_not_lose_the_epoch(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str], module: str,
                                                            function: str, warning: str) -> None:
    """The TensorBoard images are made between the epoch's validation and its checkpoint: a model they fail
    on crashed every epoch of a --tensorboard run before it was saved. Now: one warning, the run goes on."""
    import importlib

    from finetune.train import train

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a model the hooks do not understand")

    monkeypatch.setattr(importlib.import_module(module), function, broken)
    result = train(TrainConfig(data=str(data), model="squeezenet1_1", img_size=32, epochs=2, batch_size=16,
                               workers="0", device="cpu", out=str(tmp_path / "run"), tensorboard=True), quiet=True)
    assert len(result.history) == 2 and (result.run_dir / "checkpoints" / "last.pt").exists()
    assert capsys.readouterr().err.count(warning) == 1


@pytest.mark.slow
def test_torchrun_on_the_built_in_shapes_generated_on_first_use(tmp_path: Path) -> None:
    """--data shapes under torchrun with an empty cache: every process generated the set into the same folder
    at once, one read it while another was still writing, and the run hung (2 processes, 150 s+)."""
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "finetune",
         "train", "--data", "shapes", "--model", "resnet18", "--img-size", "32", "--epochs", "1", "--max-steps", "1",
         "--workers", "0", "--device", "cpu", "--batch-size", "8", "--out", str(tmp_path / "run"), "-q"],
        capture_output=True, text=True, env={**env(), "FINETUNE_CACHE": str(tmp_path / "cache")}, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == 1


def test_tensors_that_do_not_resample_to_another_image_size_name_the_size_that_keeps_them(
        capsys: pytest.CaptureFixture[str]) -> None:
    """MLP-Mixer's token-mixing layers are sized by the number of patches: at --img-size 112 the
    224 weights do not fit them. The warning said they keep random values, not what to do."""
    pytest.importorskip("timm")
    from finetune.models import create_model
    from finetune.train import check_pretrained_fit
    from finetune.weights import LoadReport

    model = create_model("timm:mixer_s16_224", 3, img_size=112)
    names = [n for n in model.state_dict() if not n.startswith("head.")]
    token_mixing = [n for n in names if ".mlp_tokens." in n]
    report = LoadReport(source="timm:mixer_s16_224", loaded=[n for n in names if n not in token_mixing],
                        mismatched=[(n, (1,), (2,)) for n in token_mixing])
    cfg = TrainConfig(model="timm:mixer_s16_224", pretrained="timm:mixer_s16_224", img_size=112)
    check_pretrained_fit(model, report, cfg)
    err = capsys.readouterr().err
    assert f"{len(token_mixing)} tensors outside the head keep their random values" in err
    assert "the weights were made for 224x224 images and these do not resample to 112: --img-size 224 keeps them" in err
    check_pretrained_fit(model, report, TrainConfig(model="timm:mixer_s16_224", pretrained="timm:mixer_s16_224",
                                                    img_size=224))
    assert "--img-size" not in capsys.readouterr().err

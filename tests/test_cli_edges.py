"""CLI edges found by an adversarial pass: a bad file in bench-data, cam --limit with unreadable
files, inspect --optimizer on finetune's own checkpoints, learning rates of 0 everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import error_line, run_here, write_colour_folder

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--epochs", "1",
        "--device", "cpu", "-q"]


@pytest.fixture
def run(colour_run: Path) -> Path:
    return colour_run


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
        assert "(skipped)" in res.stderr  # the unreadable file is named, not counted


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


def test_options_may_come_between_a_commands_positional_arguments(run: Path, colour_data: Path) -> None:
    red, blue = sorted((colour_data / "val" / "red").iterdir())[0], sorted((colour_data / "val" / "blue").iterdir())[0]
    res = run_here("predict", "--checkpoint", str(run), str(red), "--topk", "1", str(blue), "--json")
    assert res.returncode == 0, res.stderr
    records = json.loads(res.stdout)
    assert [Path(r["path"]).name for r in records] == [red.name, blue.name]
    assert all(len(r["top"]) == 1 for r in records)


def test_momentum_given_with_adamw_is_refused_not_ignored(colour_data: Path, tmp_path: Path) -> None:
    line = error_line(run_here("train", "--data", str(colour_data), "--out", str(tmp_path / "r"), "--momentum", "0.5",
                               *TINY))
    assert "--momentum applies to --optimizer sgd only" in line
    assert not (tmp_path / "r").exists()


def test_fewer_images_than_a_batch_say_so_and_cached_features_take_that_one_batch_too(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "few", per_class=3, size=32)  # 6 training images, batch 8
    runs = {}
    for name, extra in (("images", []), ("features", ["--cache-features"])):
        res = run_here("train", "--data", str(data), "--out", str(tmp_path / name), "--linear-probe", "--no-augment", *extra,
                       *TINY)
        assert res.returncode == 0, res.stderr
        assert "the training split has 6 images, fewer than --batch-size 8: every epoch is one small batch" in res.stderr
        # no --pretrained: the frozen backbone is random, which a linear probe rarely means
        assert "frozen tensors (11,176,512 values, e.g. 'conv1.weight') were not loaded" in res.stderr
        runs[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
    assert runs["features"]["step"] == runs["images"]["step"] == 1  # was 0 steps with cached features: nothing trained
    assert runs["features"]["train_loss"] == pytest.approx(runs["images"]["train_loss"], rel=1e-5)


def test_a_frozen_backbone_loaded_from_pretrained_weights_gives_no_random_warning(colour_data: Path,
                                                                                   tmp_path: Path) -> None:
    import torch
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    res = run_here("train", "--data", str(colour_data), "--out", str(tmp_path / "r"), "--pretrained", str(weights),
                   "--linear-probe", "--max-steps", "1", *TINY)
    assert res.returncode == 0, res.stderr
    assert "not loaded from pretrained weights" not in res.stderr
    res = run_here("train", "--data", str(colour_data), "--out", str(tmp_path / "r2"), "--pretrained", str(weights),
                   "--exclude", "layer1.0.conv1.*", "--freeze", "layer1", "--max-steps", "1", *TINY)
    assert res.returncode == 0, res.stderr
    assert "1 frozen tensor (36,864 values, e.g. 'layer1.0.conv1.weight') was not loaded" in res.stderr


def test_layers_that_unfreeze_later_are_not_warned_about(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from finetune import TrainConfig
    from finetune.train import build_model

    cfg = TrainConfig(model="resnet18", freeze=["layer1"], unfreeze=["layer1@2"], epochs=2).resolved()
    build_model(cfg, 2, torch.device("cpu"))
    assert "not loaded from pretrained weights" not in capsys.readouterr().err
    build_model(TrainConfig(model="resnet18", freeze=["layer1"], epochs=2).resolved(), 2, torch.device("cpu"))
    assert "12 frozen tensors" in capsys.readouterr().err


def test_cam_method_that_does_not_fit_says_what_to_do_and_leaves_no_empty_folder(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cams"
    line = error_line(run_here("cam", str(run), "--method", "cam", "--limit", "2", "--out", str(out)))
    assert "pass layer=NAME (--layer), larger images (--img-size), or use gradcam" in line  # resnet18's layer4 is 1x1 at 32 px
    assert not out.exists()


def test_json_output_is_standard_json_when_the_weights_give_nan(tmp_path):
    import json

    import torch
    from PIL import Image

    from finetune import Checkpointer, create_model

    model = create_model("squeezenet1_1", num_classes=2)
    with torch.no_grad():
        model.classifier[1].bias.fill_(float("nan"))  # an edited file: training itself stops on a NaN loss
    path = Checkpointer(tmp_path / "run").save({"model": model, "arch": "squeezenet1_1", "classes": ["a", "b"],
                                                "img_size": 32, "epoch": 0, "step": 0})
    Image.new("RGB", (40, 30), "red").save(tmp_path / "red.jpg")
    res = run_here("predict", "--checkpoint", str(path), str(tmp_path / "red.jpg"), "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert out[0]["top"][0]["prob"] is None
    assert "not finite" in res.stderr


def test_a_checkpoints_manifest_given_as_the_checkpoint_says_so(tmp_path):
    from finetune import Checkpointer, create_model

    path = Checkpointer(tmp_path / "run").save({"model": create_model("squeezenet1_1", num_classes=2),
                                                "arch": "squeezenet1_1", "classes": ["a", "b"], "img_size": 32,
                                                "epoch": 0, "step": 3})
    res = run_here("eval", "--checkpoint", str(path.with_suffix(".json")), "--device", "cpu")
    assert res.returncode == 2 and "is the manifest of the checkpoint" in error_line(res)

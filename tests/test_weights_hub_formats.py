"""Weights as the Hugging Face hub cache, accelerate, transformers and torch.export leave them
(found by an adversarial pass with the real libraries; the files here are written the way they
write them, by torch and safetensors alone)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from conftest import run_here
from finetune.weights import read_checkpoint


def resnet18_weights(classes: int = 7) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=classes).state_dict()


def test_inspect_model_sizes_the_head_from_the_files_head_not_its_last_tensor(tmp_path: Path) -> None:
    # safetensors keeps tensors sorted by name: the last 2-d weight is layer4's, not fc's
    save_file(resnet18_weights(), tmp_path / "r18.safetensors")
    res = run_here("inspect", str(tmp_path / "r18.safetensors"), "--model", "resnet18", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)["load_report"]
    assert report["mismatched"] == [] and len(report["loaded"]) == 122, report


def test_a_hub_cache_repository_folder_reads_the_snapshot_refs_main_names(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--org--net"
    for commit, classes in (("old1", 3), ("new2", 7)):
        (repo / "snapshots" / commit).mkdir(parents=True)
        save_file(resnet18_weights(classes), repo / "snapshots" / commit / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("new2")
    ck = read_checkpoint(repo)
    assert ck.weights["fc.weight"].shape[0] == 7
    (repo / "refs" / "main").unlink()
    with pytest.raises(Exception, match=r"refs/main names no snapshot; give one of its snapshots/ folders"):
        read_checkpoint(repo)


def test_transformers_id2label_is_one_list_in_class_order(tmp_path: Path) -> None:
    save_file(resnet18_weights(3), tmp_path / "model.safetensors")
    labels = {str(i): f"class {i}" for i in range(300)}
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["X"], "id2label": labels}))
    res = run_here("inspect", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    meta = json.loads(res.stdout)["metadata"]
    assert meta["config.id2label"] == [f"class {i}" for i in range(300)]
    assert not any(k.startswith("config.id2label.") for k in meta)


def test_convert_says_which_models_of_an_accelerate_folder_it_leaves_out(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    save_file(resnet18_weights(), folder / "model.safetensors")
    save_file({"w": torch.ones(2)}, folder / "model_1.safetensors")
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.bin")
    res = run_here("convert", str(folder), str(tmp_path / "out.safetensors"))
    assert res.returncode == 0, res.stderr
    assert "finetune: warning:" in res.stderr and "model_1.safetensors" in res.stderr


def test_torch_export_archive_weights_are_read_without_running_it(colour_data: Path, tmp_path: Path) -> None:
    model = torchvision.models.resnet18(num_classes=5).eval()
    path = tmp_path / "r18.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 32, 32),)), str(path))
    if not any(n.endswith("_weights_config.json") for n in zipfile.ZipFile(path).namelist()):
        pytest.skip("this torch writes the older .pt2 layout (a pickled state dict), which is not read")
    weights = read_checkpoint(path).weights
    expected = model.state_dict()
    assert sorted(weights) == sorted(expected)
    assert all(torch.equal(weights[k], v) for k, v in expected.items())
    res = run_here("train", "--data", str(colour_data), "--pretrained", str(path), "--exclude", "fc.*", "--max-steps", "1",
                   "--img-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--epochs", "1",
                   "--out", str(tmp_path / "run"), "-q")
    assert res.returncode == 0, res.stderr


def test_a_timm_hub_folders_pretrained_cfg_sets_the_runs_input(colour_data: Path, tmp_path: Path) -> None:
    import timm
    import yaml

    folder = tmp_path / "hub"
    folder.mkdir()
    save_file(timm.create_model("resnet18", num_classes=3).state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 3, "pretrained_cfg": {
        "input_size": [3, 48, 48], "crop_pct": 1.0, "interpolation": "bilinear", "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    out = tmp_path / "run"
    res = run_here("train", "--data", str(colour_data), "--model", "timm:resnet18", "--pretrained", str(folder),
                   "--max-steps", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--out", str(out), "-q")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["img-size"], cfg["crop-pct"], cfg["interpolation"]) == (48, 1.0, "bilinear")
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (tuple(state["mean"]), tuple(state["std"])) == ((0.5,) * 3, (0.25,) * 3)
    # a run from that run's checkpoint takes the input its weights were trained with, not timm's defaults
    from finetune import TrainConfig
    from finetune.models import normalization

    checkpoint = str(out / "checkpoints" / "last.pt")
    again = TrainConfig(data=str(colour_data), model="timm:resnet18", pretrained=checkpoint).resolved()
    assert (again.img_size, again.crop_pct, again.interpolation) == (48, 1.0, "bilinear")
    assert normalization("timm:resnet18", checkpoint) == ((0.5,) * 3, (0.25,) * 3)

"""Model registry (head replacement across families, timm, close-name errors) and config files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from finetune.config import TrainConfig, config_from_args, load_config, save_config
from finetune.errors import ConfigError, ModelError
from finetune.models import create_model, head_name, logits_of


@pytest.mark.parametrize(("arch", "head"), [
    ("resnet18", "fc"),
    ("mobilenet_v3_small", "classifier.3"),
    ("efficientnet_b0", "classifier.1"),
    ("convnext_tiny", "classifier.2"),
    ("vit_b_16", "heads.head"),
    ("squeezenet1_1", "classifier.1"),
    ("regnet_x_400mf", "fc"),
])
def test_head_is_found_and_sized_whatever_the_family_calls_it(arch: str, head: str) -> None:
    model = create_model(arch, num_classes=7)
    assert head_name(model) == head
    assert model.finetune_arch == arch
    module = model.get_submodule(head)
    assert getattr(module, "out_features", getattr(module, "out_channels", None)) == 7


def test_timm_models_by_prefix() -> None:
    model = create_model("timm:resnet18", num_classes=4)
    assert head_name(model) == "fc" and model.fc.out_features == 4
    with pytest.raises(ModelError, match="resnet18"):
        create_model("timm:resnet18x", num_classes=4)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ModelError, match="did you mean.*resnet50"):
        create_model("resnet5O", num_classes=2)


def test_inception_aux_outputs_give_the_main_logits() -> None:
    model = create_model("googlenet", num_classes=3).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert logits_of(out).shape == (2, 3)


def test_yaml_round_trip_and_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 3\nbatch-size: 16\nlr-mult: ['layer4=0.1']\nfreeze: layer1\n")
    cfg = load_config(path)
    assert (cfg.epochs, cfg.batch_size, cfg.lr_mult, cfg.freeze) == (3, 16, {"layer4": 0.1}, ["layer1"])
    args = argparse.Namespace(config=str(path), epochs=5, batch_size=None)
    merged = config_from_args(args)
    assert merged.epochs == 5 and merged.batch_size == 16
    save_config(merged.resolved(), tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == merged.resolved()


def test_unknown_yaml_key_names_close_ones(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="did you mean epochs"):
        load_config(path)


@pytest.mark.parametrize("values", [{"epochs": 0}, {"bn": "off"}, {"unfreeze": ["layer4"]},
                                    {"unfreeze": ["layer4@99"]}, {"cache_features": True},
                                    {"lr_mult": ["layer4"]}])
def test_bad_settings_are_config_errors(values: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig.from_dict({"epochs": 2, **values})


def test_tensorboard_events_are_written(colour_data: Path, tmp_path: Path) -> None:
    from finetune.train import train

    cfg = TrainConfig(data=str(colour_data), img_size=64, batch_size=16, workers="0", epochs=2,
                      tensorboard=True, out=str(tmp_path / "run"))
    result = train(cfg, quiet=True)
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert "val/top1" in acc.Tags()["scalars"]
    assert [e.value for e in acc.Scalars("val/top1")] == pytest.approx([r["val_top1"] for r in result.history])
    # Grad-CAM overlays of the same validation images after every epoch
    cams = acc.Images("cam/val")
    assert [e.step for e in cams] == [1, 2] and cams[0].width > 64 and cams[0].height >= 64
    # the model graph once (module names as scopes) and each stage's feature maps after every epoch
    assert acc.Tags()["graph"]
    assert any(node.name.startswith("ResNet/Sequential[layer4]/BasicBlock[1]/") for node in acc.Graph().node)
    features = [t for t in acc.Tags()["images"] if t.startswith("features/")]
    assert features == ["features/relu", "features/layer1", "features/layer2", "features/layer3", "features/layer4"]
    assert [e.step for e in acc.Images("features/layer4")] == [1, 2]


def test_tensorboard_cam_images_leave_training_as_it_was(colour_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from finetune.train import train

    def run(name: str, tensorboard: bool) -> dict:
        train(TrainConfig(data=str(colour_data), img_size=32, batch_size=16, workers="0", epochs=2, seed=3,
                          tensorboard=tensorboard, out=str(tmp_path / name)), quiet=True)
        return load_file(str(tmp_path / name / "best.safetensors"))

    plain, logged = run("plain", False), run("logged", True)
    assert plain.keys() == logged.keys() and all(torch.equal(plain[k], logged[k]) for k in plain)


def test_clip_grad_bounds_the_first_update(colour_data: Path, tmp_path: Path) -> None:
    """SGD's first step moves the weights by lr x the clipped gradient: its norm is at most lr x clip."""
    from finetune.models import create_model
    from finetune.train import train

    start = create_model("resnet18", num_classes=2).state_dict()
    torch.save(start, tmp_path / "start.pt")

    def moved(name: str, *extra: str) -> float:
        cfg = TrainConfig.from_dict({"data": str(colour_data), "img_size": 32, "batch_size": 16, "workers": "0",
                                     "epochs": 1, "max_steps": 1, "optimizer": "sgd", "lr": 1.0, "weight_decay": 0.0,
                                     "pretrained": str(tmp_path / "start.pt"), "out": str(tmp_path / name),
                                     **dict(zip(extra[::2], extra[1::2], strict=True))})
        train(cfg, quiet=True)
        end = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["model"]
        params = [k for k, v in start.items() if v.is_floating_point() and "running" not in k]
        return float(torch.sqrt(sum(((end[k] - start[k]) ** 2).sum() for k in params)))

    assert moved("clipped", "clip_grad", 1e-3) <= 1e-3 * (1 + 1e-4)
    assert moved("free") > 1e-2


def test_early_stop_ends_the_run_and_a_resume_does_not_train_on(colour_data: Path, tmp_path: Path) -> None:
    """A learning rate too small to change any prediction: top-1 never improves after epoch 1."""
    from finetune.train import train

    cfg = TrainConfig(data=str(colour_data), img_size=32, batch_size=16, workers="0", epochs=6, lr=1e-12,
                      linear_probe=True, early_stop=2, out=str(tmp_path / "run"))
    result = train(cfg, quiet=True)
    assert result.early_stopped and not result.stopped_early
    assert [r["epoch"] for r in result.history] == [0, 1, 2] and result.best_epoch == 0
    cfg.resume = "auto"
    again = train(cfg, quiet=True)
    assert again.early_stopped and len(again.history) == 3
    with pytest.raises(ConfigError, match="early-stop"):
        TrainConfig(early_stop=0).validate()


def test_ema_weights_are_what_the_run_measures_saves_and_resumes_exactly(colour_data: Path, tmp_path: Path,
                                                                          one_torch_thread) -> None:
    from safetensors.torch import load_file

    from finetune.train import evaluate_checkpoint, train

    def cfg(name: str, **kw) -> TrainConfig:
        return TrainConfig(data=str(colour_data), img_size=32, batch_size=16, workers="0", epochs=2, ema=0.9,
                           out=str(tmp_path / name), **kw)

    full = train(cfg("full"), quiet=True)
    record = full.history[-1]
    assert {"raw_val_top1", "raw_val_loss", "raw_val_top5"} <= record.keys()
    best = torch.load(tmp_path / "full" / "checkpoints" / "best.pt", weights_only=True)
    assert best["ema_updates"] == best["step"] and best["model_ema"].keys() == best["model"].keys()
    assert best["global_step"] == best["step"] and best["seed"] == 0  # the issue's names for them, too
    assert not torch.equal(best["model_ema"]["fc.weight"], best["model"]["fc.weight"])
    deployed = load_file(str(tmp_path / "full" / "best.safetensors"))
    assert all(torch.equal(deployed[k], best["model_ema"][k]) for k in deployed)
    # eval of the best checkpoint measures the EMA weights: the loss it logged for that epoch
    logged = full.history[best["best_epoch"]]
    result = evaluate_checkpoint(tmp_path / "full" / "checkpoints" / "best.pt", workers="0")
    assert result["top1"] == logged["val_top1"] and result["loss"] == pytest.approx(logged["val_loss"], rel=1e-5)
    # stopped in the middle of the first epoch, resumed: the same EMA, bitwise
    cut = cfg("cut", max_steps=2)
    train(cut, quiet=True)
    cut.max_steps, cut.resume = None, "auto"
    train(cut, quiet=True)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert a["ema_updates"] == b["ema_updates"]
    assert all(torch.equal(a["model_ema"][k], b["model_ema"][k]) for k in a["model_ema"])
    with pytest.raises(ConfigError, match="--ema"):
        TrainConfig(ema=1.0).validate()


def test_mixup_cutmix_train_and_resume_exactly(colour_data: Path, tmp_path: Path, one_torch_thread) -> None:
    from finetune.mixing import mix_batch
    from finetune.train import train

    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 1, 0, 1, 0])
    a = mix_batch(x, y, 2, mixup=0.2, cutmix=1.0, seed=1, step=7, label_smoothing=0.1)
    b = mix_batch(x, y, 2, mixup=0.2, cutmix=1.0, seed=1, step=7, label_smoothing=0.1)
    c = mix_batch(x, y, 2, mixup=0.2, cutmix=1.0, seed=1, step=8, label_smoothing=0.1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] != c[2]
    assert torch.allclose(a[1].sum(1), torch.ones(6)) and float(a[1].min()) >= 0.05 * min(a[2], 1 - a[2]) - 1e-6
    assert not torch.equal(a[0], x)

    def cfg(name: str, **kw) -> TrainConfig:
        return TrainConfig(data=str(colour_data), img_size=32, batch_size=16, workers="0", epochs=2, mixup=0.4,
                           cutmix=1.0, out=str(tmp_path / name), **kw)

    train(cfg("full"), quiet=True)
    cut = cfg("cut", max_steps=3)
    train(cut, quiet=True)
    cut.max_steps, cut.resume = None, "auto"
    train(cut, quiet=True)
    w1 = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    plain = TrainConfig(data=str(colour_data), img_size=32, batch_size=16, workers="0", epochs=2, out=str(tmp_path / "p"))
    train(plain, quiet=True)
    w3 = torch.load(tmp_path / "p" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert not torch.equal(w1["fc.weight"], w3["fc.weight"])  # the mixing changed what was learned
    with pytest.raises(ConfigError, match="cache-features"):
        TrainConfig(linear_probe=True, cache_features=True, mixup=0.2).validate()

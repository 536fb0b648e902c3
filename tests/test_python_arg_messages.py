"""An error the library raises to a Python caller names the Python argument, not only the CLI flag
(``img_size (--img-size)``): a Python user has no flags. Each case calls the library with a bad value
and checks the argument's name, then the flag, in the message."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import finetune
from conftest import write_colour_folder
from finetune import FinetuneError


def _cam_method_needs_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    finetune.class_activation_maps(model, torch.randn(1, 3, 8, 8), method="cam")  # a map, but no average-pool head


def _explain_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.explain(tmp_path, limit=0)


def _worker_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.data.samples import Samples

    loader = finetune.build_loader(Samples.from_lists(["x.jpg"], [0], ["a"]), train=False, workers=0)
    raise loader._crash_error(RuntimeError("DataLoader worker (pid 1) is killed by signal: Killed."))


def _strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.data.samples import Samples

    finetune.build_loader(Samples.from_lists([str(tmp_path / "gone.jpg")], [0], ["a"]), train=False, workers=0,
                          strict=True)


def _load_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.Checkpointer(tmp_path).load()


def _read_only_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune import checkpoint

    def fail(*args: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(checkpoint, "_write_atomic", fail)
    finetune.Checkpointer(tmp_path).save({"model": nn.Linear(2, 2), "epoch": 0, "step": 1})


def _drop_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.create_model("resnet18", num_classes=2, drop_path=0.1)


def _dropout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.create_model("resnet18", num_classes=2, drop_rate=0.1)


def _too_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.models import check_input_size

    check_input_size(nn.Sequential(nn.Conv2d(3, 2, 20), nn.Flatten()), 16)  # a 20x20 kernel: 32 px works


class _TwoHeads(nn.Module):
    """Two heads whose inputs differ in shape (a map and a vector): not splittable."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 2, 1)
        self.head_dist = nn.Linear(3, 2)

    def get_classifier(self) -> tuple[nn.Module, nn.Module]:
        return self.head, self.head_dist

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).flatten(1).sum(1, keepdim=True) + self.head_dist(x.mean((2, 3))).sum(1, keepdim=True)


def _split_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.freeze import split_head

    backbone, _head = split_head(_TwoHeads())
    backbone(torch.randn(1, 3, 4, 4))


def _sync_bn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class MyNorm(nn.BatchNorm2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    finetune.convert_sync_batchnorm(nn.Sequential(MyNorm(3)))


def _convert_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.weights import convert

    (tmp_path / "out.safetensors").touch()
    convert(tmp_path / "in.pt", tmp_path / "out.safetensors", overwrite=False)


def _convert_no_ema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.weights import convert

    torch.save({"w": torch.ones(2)}, tmp_path / "in.pt")
    convert(tmp_path / "in.pt", tmp_path / "out.safetensors", ema=True)


def _torchvision_weights_of_timm_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Linear(2, 2)
    model.finetune_arch = "timm:resnet18"
    finetune.load_weights(model, "torchvision")


def _cached_other_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import ResNet50_Weights

    from finetune.weights import sources

    monkeypatch.setenv("FINETUNE_OFFLINE", "1")
    monkeypatch.setattr(sources, "torch_hub_checkpoints", lambda: tmp_path)
    (tmp_path / ResNet50_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]).touch()  # V1 cached, the default (V2) not
    sources.torchvision_file("torchvision", "resnet50")


def _lr_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.lr_find(finetune.TrainConfig(), start_lr=1.0, end_lr=0.1)


def _lr_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.lr_find(finetune.TrainConfig(), num_steps=1)


def _lr_cache_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.lr_find(finetune.TrainConfig(linear_probe=True, cache_features=True))


def _eval_without_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.train import evaluate_checkpoint

    path = finetune.Checkpointer(tmp_path).save({"model": finetune.create_model("squeezenet1_1", num_classes=2),
                                                 "arch": "squeezenet1_1", "classes": ["a", "b"], "img_size": 32,
                                                 "epoch": 0, "step": 0})
    evaluate_checkpoint(path, device="cpu")


def _eval_train_folder_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.data.samples import eval_samples

    (tmp_path / "train" / "a").mkdir(parents=True)
    eval_samples(tmp_path, ["a"])


def _epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.TrainConfig(epochs=0).validate()


def _epochs_in_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.yaml").write_text("epochs: 0\n")
    finetune.load_config(tmp_path / "c.yaml")


def _optimizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.TrainConfig(optimizer="adam").validate()


def _field_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.TrainConfig(batch_size="16").validate()  # type: ignore[arg-type]


def _not_finite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.TrainConfig(lr=float("nan")).validate()


def _unfreeze_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.TrainConfig(epochs=3, unfreeze=["layer4@5"]).validate()


def _lr_mult_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.TrainConfig.from_dict({"lr_mult": ["fc"]})


def _cache_features_bn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.TrainConfig(linear_probe=True, cache_features=True, bn="train").validate()


def _no_augment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.TrainConfig(augment=False, auto_augment="randaugment").validate()


def _resume_auto_without_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.TrainConfig(resume="auto").validate()


def _out_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.config import check_run_dir

    (tmp_path / "run").touch()
    check_run_dir(finetune.TrainConfig(out=str(tmp_path / "run")))


def _cuda_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    resolve_device("cuda")


def _fp16_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.train import resolve_amp

    resolve_amp("fp16", torch.device("cpu"))


def _class_weights_of_an_empty_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.train import class_weights

    class_weights([0, 0], ("cat", "dog"), "balanced")


def _run_dir_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.train import hold_run_dir

    with hold_run_dir(tmp_path / "run"), hold_run_dir(tmp_path / "run"):
        pass


def _resume_auto_nothing_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune.train(finetune.TrainConfig(resume="auto", out=str(tmp_path / "run")), quiet=True)


def _lr_find_batch_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_colour_folder(tmp_path / "data", per_class=2, size=32)
    finetune.lr_find(finetune.TrainConfig(data=str(data), img_size=32, batch_size=1, workers="0"), num_steps=2,
                     quiet=True)  # resnet18's last BatchNorm sees 1 value per channel

def _val_fraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.data.samples import Samples, stratified_split

    stratified_split(Samples.from_lists(["a.jpg", "b.jpg"], [0, 1], ["a", "b"]), 1.5, seed=0)


CASES: list[tuple[Callable[[Path, pytest.MonkeyPatch], None], str]] = [
    (_cam_method_needs_layer, "layer=NAME (--layer)"),
    (_explain_limit, "limit (--limit)"),
    (_worker_killed, "workers (--workers)"),
    (_strict, "strict=True (--strict-data)"),
    (_load_nothing, "Checkpointer.latest() is None"),
    (_read_only_disk, "another directory (--out)"),
    (_drop_path, "drop_path (--drop-path)"),
    (_dropout, "drop_rate (--dropout)"),
    (_too_small, "img_size=32 or more (--img-size)"),
    (_split_head, "cache_features (--cache-features)"),
    (_sync_bn, "sync_bn (--sync-bn)"),
    (_convert_exists, "overwrite=True (--force)"),
    (_convert_no_ema, "ema=True (--ema)"),
    (_torchvision_weights_of_timm_model, "source='timm:resnet18' (--pretrained timm:resnet18)"),
    (_cached_other_weights, "source='torchvision:ResNet50_Weights.IMAGENET1K_V1' (--pretrained torchvision:"),
    (_lr_range, "start_lr/end_lr (--start-lr/--end-lr)"),
    (_lr_steps, "num_steps (--num-steps)"),
    (_lr_cache_features, "cache_features (--cache-features)"),
    (_eval_without_data, "data=PATH (--data)"),
    (_eval_train_folder_only, "as data (--data)"),
    # TrainConfig.validate (a TrainConfig built in code, or a config.yaml) and the run's own checks
    (_epochs, "epochs (--epochs) must be at least 1, got 0"),
    (_epochs_in_config_file, "epochs (--epochs) must be at least 1, got 0"),
    (_optimizer, "optimizer (--optimizer) must be sgd or adamw, got 'adam'"),
    (_field_type, "batch_size (--batch-size) must be a whole number, got '16'"),
    (_not_finite, "lr (--lr) must be a finite number, got nan"),
    (_unfreeze_epoch, "unfreeze='layer4@5' (--unfreeze layer4@5): epoch 5 is outside 1..3"),
    (_lr_mult_item, "lr_mult (--lr-mult) takes PATTERN=MULTIPLIER"),
    (_cache_features_bn, "cache_features (--cache-features) computes the backbone features once, in eval mode, "
                         "so bn='train' (--bn train) (BatchNorm layers"),
    (_no_augment, "augment=False (--no-augment) turns training augmentation off, so "
                  "auto_augment='randaugment' (--auto-augment randaugment) would do nothing"),
    (_resume_auto_without_out, "resume='auto' (--resume auto) needs out (--out RUN_DIR)"),
    (_out_is_a_file, "out (--out) '"),
    (_cuda_missing, "device='cuda' (--device cuda) was asked for"),
    (_fp16_on_cpu, "amp='fp16' (--amp fp16) needs a CUDA device"),
    (_class_weights_of_an_empty_class, "class_weights='balanced' (--class-weights balanced): class 'dog'"),
    (_run_dir_in_use, "out (--out) '"),
    (_resume_auto_nothing_to_resume, "resume='auto' (--resume auto): nothing to resume"),
    (_lr_find_batch_of_one, "batch_size=1 (--batch-size 1) is too small for resnet18's BatchNorm"),
    (_val_fraction, "val_fraction (--val-split) must be between 0 and 1"),
]


@pytest.mark.parametrize(("call", "named"), CASES, ids=[c.__name__.strip("_") for c, _ in CASES])
def test_library_errors_name_the_python_argument(call: Callable[[Path, pytest.MonkeyPatch], None], named: str,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FinetuneError) as info:
        call(tmp_path, monkeypatch)
    assert named in str(info.value), str(info.value)

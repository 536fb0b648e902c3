"""The eval transform follows the pretrained weights: timm's crop_pct / interpolation, the
resize of torchvision's weights (`--crop-pct`, `--interpolation` to override), saved in the
checkpoint so that eval, predict and cam give the model what its run validated with.

References are computed with timm's and torchvision's own transforms.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli, write_colour_folder
from finetune import Checkpointer
from finetune.data import Samples, build_loader
from finetune.errors import CheckpointError, ConfigError
from finetune.models import eval_transform_of
from finetune.train import eval_transform_of_checkpoint

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _noise_image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _smooth_image(w: int, h: int, seed: int) -> Image.Image:
    """A photo-like image (smooth gradients): where bilinear and bicubic filters differ little."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("eval_files")
    out = []
    for i, (w, h, ext) in enumerate([(300, 200, "png"), (97, 151, "png"), (40, 40, "png"), (333, 250, "jpg")]):
        path = root / f"im{i}.{ext}"
        _noise_image(w, h, i).save(path, **({"quality": 95} if ext == "jpg" else {}))
        out.append(path)
    return out


def _reference(path: Path, size: int, crop_pct: float, interpolation: str, crop_mode: str = "center") -> torch.Tensor:
    import torchvision.transforms as T

    mode = T.InterpolationMode(interpolation)
    side = int(size / crop_pct + 1e-6)
    t = T.Compose([T.Resize((side, side) if crop_mode == "squash" else side, interpolation=mode), T.CenterCrop(size),
                   T.ToTensor(), T.Normalize(MEAN, STD)])
    return t(Image.open(path).convert("RGB"))


def _diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest difference in 0..255 units between two normalised CHW images."""
    return float(((ours - ref).abs() * torch.tensor(STD).view(3, 1, 1) * 255).max())


# --------------------------------------------------------------------------- what the weights say
@pytest.mark.parametrize("name", ["resnet50.a1_in1k", "convnext_tiny.fb_in1k", "vit_tiny_patch16_224",
                                  "resnet50.tv_in1k", "tf_efficientnet_b3", "deit_tiny_patch16_224",
                                  "coat_lite_tiny.in1k"])
def test_timm_models_get_timms_own_eval_settings(name: str) -> None:
    timm = pytest.importorskip("timm")
    from timm.data import resolve_data_config

    model = timm.create_model(name, pretrained=False, num_classes=2)
    config = resolve_data_config({}, model=model)
    assert eval_transform_of("timm:" + name) == (pytest.approx(config["crop_pct"]), config["interpolation"],
                                                 config["crop_mode"])
    # a timm source for a model of another name (finetune's --pretrained timm:NAME) counts the same
    assert eval_transform_of("resnet18", "timm:" + name)[1] == config["interpolation"]


def test_torchvision_weights_give_their_resize_and_interpolation() -> None:
    from torchvision.models import get_model_weights, list_models

    checked = 0
    for name in list_models(module=__import__("torchvision").models):
        try:
            preset = get_model_weights(name).DEFAULT.transforms()
        except Exception:  # noqa: BLE001 - a model without weights
            continue
        crop_pct, interpolation, crop_mode = eval_transform_of(name, "torchvision")
        assert int(preset.crop_size[0] / crop_pct + 1e-6) == preset.resize_size[0], name
        assert interpolation == preset.interpolation.value, name
        assert crop_mode == "center"
        assert eval_transform_of(name, f"torchvision:{name}") == (crop_pct, interpolation, crop_mode)
        checked += 1
    assert checked > 60
    # without torchvision's weights: torchvision's classic eval transform
    assert eval_transform_of("efficientnet_b3") == (0.875, "bilinear", "center")
    assert eval_transform_of("efficientnet_b3", "/some/file.pt") == (0.875, "bilinear", "center")


# --------------------------------------------------------------------------- the loader
@pytest.mark.parametrize(("crop_pct", "interpolation"), [(0.95, "bicubic"), (1.0, "bicubic"), (224 / 232, "bilinear"),
                                                         (0.875, "bilinear")])
def test_eval_batches_equal_torchvisions_resize_and_crop(files: list[Path], crop_pct: float,
                                                         interpolation: str) -> None:
    size = 64
    samples = Samples.from_lists([str(f) for f in files], list(range(len(files))), [f"c{i}" for i in range(len(files))])
    for workers, cache in ((0, None), (2, "ram")):
        with build_loader(samples, train=False, img_size=size, batch_size=len(files), workers=workers, cache=cache,
                          crop_pct=crop_pct, interpolation=interpolation) as loader:
            batch, _ = next(iter(loader))
        for k, f in enumerate(files):
            assert _diff(batch[k], _reference(f, size, crop_pct, interpolation)) <= 2.01, (f.name, workers)


@pytest.mark.parametrize("crop_pct", [0.9, 1.0])
def test_squash_mode_equals_timms_squash_transform(files: list[Path], crop_pct: float) -> None:
    size = 48
    samples = Samples.from_lists([str(f) for f in files], [0] * len(files), ["a"])
    with build_loader(samples, train=False, img_size=size, batch_size=len(files), workers=0, crop_pct=crop_pct,
                      interpolation="bicubic", crop_mode="squash") as loader:
        batch, _ = next(iter(loader))
    for k, f in enumerate(files):
        assert _diff(batch[k], _reference(f, size, crop_pct, "bicubic", "squash")) <= 2.01, f.name
    pytest.importorskip("timm")
    from timm.data import create_transform

    transform = create_transform(input_size=(3, size, size), crop_pct=crop_pct, crop_mode="squash",
                                 interpolation="bicubic", mean=MEAN, std=STD, is_training=False)
    for k, f in enumerate(files):
        assert _diff(batch[k], transform(Image.open(f).convert("RGB"))) <= 2.01, f.name


def test_bicubic_is_not_bilinear(files: list[Path]) -> None:
    samples = Samples.from_lists([str(files[0])], [0], ["a"])
    out = {}
    for mode in ("bilinear", "bicubic"):
        with build_loader(samples, train=False, img_size=64, workers=0, crop_pct=0.95, interpolation=mode) as loader:
            out[mode] = next(iter(loader))[0]
    assert _diff(out["bilinear"][0], out["bicubic"][0]) > 5  # (noise: the two filters differ a lot)


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_dataset_objects_pil_and_tensor_take_the_same_settings(crop_mode: str) -> None:
    import torchvision.transforms.v2 as T2
    from torchvision.transforms.v2 import functional as F

    pil = _smooth_image(120, 90, 0)
    tensor = F.pil_to_tensor(pil)
    size, crop_pct = 48, 0.9
    side = int(size / crop_pct)
    ref = T2.Compose([T2.Resize((side, side) if crop_mode == "squash" else side,
                                interpolation=T2.InterpolationMode.BICUBIC, antialias=True), T2.CenterCrop(size)])
    for item in (pil, tensor):
        with build_loader([(item, 0)], train=False, img_size=size, workers=0, crop_pct=crop_pct,
                          interpolation="bicubic", crop_mode=crop_mode) as loader:
            batch, _ = next(iter(loader))
        expected = F.to_dtype(ref(item if isinstance(item, torch.Tensor) else F.pil_to_tensor(item)), torch.float32,
                              scale=True)
        expected = F.normalize(expected, MEAN, STD)
        assert _diff(batch[0], expected) <= 2.01, type(item).__name__


def test_loader_refuses_bad_settings(files: list[Path]) -> None:
    samples = Samples.from_lists([str(files[0])], [0], ["a"])
    with pytest.raises(ConfigError, match="crop_pct"):
        build_loader(samples, train=False, workers=0, crop_pct=1.5)
    with pytest.raises(ConfigError, match="interpolation"):
        build_loader(samples, train=False, workers=0, interpolation="nearest")
    with pytest.raises(ConfigError, match="crop_mode"):
        build_loader(samples, train=False, workers=0, crop_mode="border")


def test_timm_create_transform_gives_the_same_batch(files: list[Path]) -> None:
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2)
    config = resolve_data_config({}, model=model)
    transform = create_transform(**config, is_training=False)
    crop_pct, interpolation, _ = eval_transform_of("timm:vit_tiny_patch16_224")
    samples = Samples.from_lists([str(f) for f in files], [0] * len(files), ["a"])
    with build_loader(samples, train=False, img_size=config["input_size"][-1], batch_size=len(files), workers=0,
                      crop_pct=crop_pct, interpolation=interpolation, mean=config["mean"],
                      std=config["std"]) as loader:
        batch, _ = next(iter(loader))
    for k, f in enumerate(files):
        ref = transform(Image.open(f).convert("RGB"))
        assert float(((batch[k] - ref).abs() * torch.tensor(config["std"]).view(3, 1, 1) * 255).max()) <= 2.01, f.name


# --------------------------------------------------------------------------- a run and its checkpoint
def test_checkpoint_eval_transform_defaults_and_bad_values() -> None:
    assert eval_transform_of_checkpoint({"img_size": 48, "config": {"crop_pct": 0.9, "interpolation": "bicubic"}}) == (
        48, 0.9, "bicubic", "center")
    assert eval_transform_of_checkpoint({"crop_mode": "squash"}) == (224, 0.875, "bilinear", "squash")
    assert eval_transform_of_checkpoint({}) == (224, 0.875, "bilinear", "center")
    for bad in ({"crop_pct": 3}, {"interpolation": "lanczos"}, {"img_size": "big"}, {"crop_mode": "border"}):
        with pytest.raises(CheckpointError, match="eval transform"):
            eval_transform_of_checkpoint({"img_size": 32, **bad})


@pytest.fixture(scope="module")
def squash_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data, run directory, a non-square image) of one real `finetune train` with every eval setting given."""
    root = tmp_path_factory.mktemp("squash_run")
    data = write_colour_folder(root / "data", per_class=8, size=40)
    run = root / "run"
    r = run_cli("train", "--data", str(data), "--model", "squeezenet1_1", "--img-size", "32", "--batch-size", "8",
                "--workers", "0", "--epochs", "1", "--crop-pct", "0.8", "--interpolation", "bicubic",
                "--crop-mode", "squash", "--out", str(run), "-q")
    assert r.returncode == 0, r.stderr
    image = root / "wide.png"  # (not square: squash and centre crops differ)
    _noise_image(90, 50, 7).save(image)
    return data, run, image


def test_a_run_saves_its_eval_transform_and_predict_uses_it(squash_run: tuple[Path, Path, Path]) -> None:
    from finetune import predict
    from finetune.models import create_model

    _, run, image = squash_run
    assert "crop-pct: 0.8" in (run / "config.yaml").read_text()
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True, map_location="cpu")
    assert (state["crop_pct"], state["interpolation"], state["crop_mode"]) == (0.8, "bicubic", "squash")
    # predict = the model on torchvision's Resize((40, 40), bicubic) + CenterCrop(32) of the file
    [predicted] = predict(run / "checkpoints" / "best.pt", [str(image)], device="cpu")
    model = create_model("squeezenet1_1", num_classes=2)
    model.load_state_dict(state["model"])
    probs = model.eval().requires_grad_(False)(_reference(image, 32, 0.8, "bicubic", "squash")[None]).softmax(1)[0]
    by_class = {t["class"]: t["prob"] for t in predicted["top"]}
    assert by_class["red"] == pytest.approx(float(probs[state["classes"].index("red")]), abs=2e-3)


def test_bad_eval_settings_are_one_line_errors(tmp_path: Path) -> None:
    r = run_cli("train", "--img-size", "32", "--crop-pct", "1.5", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.startswith("finetune: error: crop_pct (--crop-pct) must be in (0, 1]"), r.stderr
    r = run_cli("train", "--crop-mode", "border", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--crop-mode" in r.stderr, r.stderr


def test_resuming_a_run_from_before_the_setting_keeps_its_eval_transform(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    from finetune import TrainConfig, train

    data = write_colour_folder(tmp_path / "data", per_class=8, size=40)
    run = tmp_path / "run"
    cfg = TrainConfig(data=str(data), model="timm:test_vit", img_size=32, batch_size=8, workers="0", epochs=2,
                      out=str(run), device="cpu")
    train(replace(cfg, max_steps=2), quiet=True)
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True, map_location="cpu")
    assert (state["crop_pct"], state["interpolation"]) == (0.95, "bicubic")  # timm's for this model
    # the files a run wrote before crop_pct existed: the checkpoint (and its config) lack it
    newest = max((run / "checkpoints").glob("ckpt-*.pt"))
    old = torch.load(newest, weights_only=True, map_location="cpu")
    for key in ("crop_pct", "interpolation", "crop_mode"):
        old.pop(key)
        old["config"].pop(key)
    shutil.rmtree(run / "checkpoints")
    Checkpointer(run).save(old)
    train(replace(cfg, resume="auto"), quiet=True)
    newest = max((run / "checkpoints").glob("*.pt"), key=lambda p: p.stat().st_mtime)
    state = torch.load(newest, weights_only=True, map_location="cpu")
    assert (state["crop_pct"], state["interpolation"], state["crop_mode"]) == (0.875, "bilinear", "center")


@pytest.mark.parametrize(("cache", "crop_mode"), [(None, "center"), ("gpu", "center"), (None, "squash"),
                                                  ("gpu", "squash")])
def test_device_paths_take_the_eval_settings(files: list[Path], cache: str | None, crop_mode: str) -> None:
    """The nvjpeg path (decode='gpu') and the device store (cache='gpu'), run on CPU tensors."""
    from finetune.data.loader import Loader

    samples = Samples.from_lists([str(f) for f in files], [0] * len(files), ["a"])
    common = dict(train=False, img_size=48, batch_size=len(files), workers=0, device="cpu", seed=0, drop_last=False,
                  channels_last=False, mean=MEAN, std=STD, crop_scale=(0.08, 1.0), crop_pct=0.95,
                  interpolation="bicubic", dct_scaling=False, crop_mode=crop_mode)
    where = {"cache": "gpu", "cache_max_bytes": 10**9} if cache else {"decode": "gpu"}
    with Loader(samples, **common, **where) as device:
        got, _ = next(iter(device))
    with Loader(samples, **{**common, "interpolation": "bilinear"}, **where) as device:
        bilinear, _ = next(iter(device))
    for k, f in enumerate(files):
        ref = _reference(f, 48, 0.95, "bicubic", crop_mode)
        if f.suffix == ".jpg" and not cache:  # decoded whole, its centre crop resized on the device
            assert float(((got[k] - ref).abs() * torch.tensor(STD).view(3, 1, 1) * 255).mean()) < 3, f.name
            assert _diff(got[k], bilinear[k]) > 5  # (noise: the filters differ)
        else:  # the CPU transform exactly
            assert _diff(got[k], ref) <= 2.01, f.name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_cuda_eval_with_nvjpeg_and_the_gpu_cache_takes_the_settings(files: list[Path], crop_mode: str) -> None:
    samples = Samples.from_lists([str(f) for f in files], [0] * len(files), ["a"])
    common = dict(train=False, img_size=48, batch_size=len(files), workers=0, crop_pct=0.95, interpolation="bicubic",
                  crop_mode=crop_mode, device="cuda")
    for where in ({"decode": "gpu"}, {"cache": "gpu"}):
        with build_loader(samples, **common, **where) as loader:
            got, _ = next(iter(loader))
        assert got.device.type == "cuda"
        for k, f in enumerate(files):
            ref = _reference(f, 48, 0.95, "bicubic", crop_mode)
            err = (got[k].cpu() - ref).abs() * torch.tensor(STD).view(3, 1, 1) * 255
            if f.suffix == ".jpg" and "decode" in where:  # nvjpeg's decode, the centre crop resized on the device
                assert float(err.mean()) < 4, (f.name, where)
            else:
                assert float(err.max()) <= 2.01, (f.name, where)


def test_best_safetensors_predicts_like_the_checkpoint(squash_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The deployable file alone (no run directory) carries what predict, eval and cam need."""
    from finetune import predict
    from finetune.cam import explain
    from finetune.train import evaluate_checkpoint
    from finetune.weights import convert

    data, run, image = squash_run
    alone = tmp_path / "elsewhere" / "model.safetensors"
    alone.parent.mkdir()
    shutil.copy(run / "best.safetensors", alone)
    outputs = [predict(ckpt, [str(image)], device="cpu")[0]["top"] for ckpt in (run / "checkpoints" / "best.pt", alone)]
    assert outputs[0] == outputs[1]
    assert evaluate_checkpoint(alone, data=str(data), device="cpu")["images"] == 2 * 2  # the val/ folder: 2 classes x 2
    # it names the data it was trained on (and its split): without --data, that data's validation split
    assert evaluate_checkpoint(alone, device="cpu")["images"] == 2 * 2
    assert len(explain(alone, [str(image)], out=tmp_path / "cam", device="cpu").records) == 1
    # converted weights carry no architecture or classes: still a clear refusal
    convert(run / "checkpoints" / "best.pt", tmp_path / "plain.safetensors")
    r = run_cli("predict", "--checkpoint", str(tmp_path / "plain.safetensors"), str(image))
    assert r.returncode == 2 and r.stderr.startswith("finetune: error:") and "finetune inspect" in r.stderr, r.stderr

"""Audit of the eval transform against timm's and torchvision's own code: a wide sample of timm
pretrained tags (``create_transform(**resolve_data_config(...), is_training=False)``), every
torchvision model with weights (``Weights.DEFAULT.transforms()``), other image sizes, workers and
the RAM cache, and a real run (train, predict, the deployable file, an old-style checkpoint).

Differences are measured in 0..255 levels on images of several sizes, aspects and modes.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_here, write_colour_folder
from finetune.data import Samples, build_loader
from finetune.models import eval_transform_of, normalization

timm = pytest.importorskip("timm")
from timm.data import create_transform, resolve_data_config  # noqa: E402
from timm.models import get_pretrained_cfg  # noqa: E402

#: (tag, create the model too): families, squash-mode ones, crop_pct 1.0, bilinear, fixed-size ones
TIMM_TAGS = [
    ("resnet18.a1_in1k", True), ("resnet50.a1_in1k", False), ("resnet50.tv_in1k", False), ("resnet18.tv_in1k", True),
    ("convnext_atto.d2_in1k", True), ("convnext_tiny.fb_in22k_ft_in1k_384", False), ("convnextv2_atto.fcmae_ft_in1k", True),
    ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", True), ("vit_tiny_patch16_384.augreg_in21k_ft_in1k", False),
    ("vit_base_patch16_clip_224.openai", False), ("vit_small_patch14_dinov2.lvd142m", False),
    ("deit_tiny_patch16_224.fb_in1k", True), ("deit3_small_patch16_224.fb_in1k", False),
    ("beit_base_patch16_224.in22k_ft_in22k_in1k", False), ("cait_xxs24_224.fb_dist_in1k", False),
    ("efficientnet_b0.ra_in1k", True), ("tf_efficientnet_b0.ns_jft_in1k", True), ("tf_efficientnet_b3.ns_jft_in1k", False),
    ("mobilenetv3_small_100.lamb_in1k", True), ("mobilenetv2_100.ra_in1k", True), ("lcnet_050.ra2_in1k", True),
    ("mobilenetv4_conv_small.e2400_r224_in1k", True), ("regnetx_002.pycls_in1k", True), ("ghostnet_100.in1k", False),
    ("swin_tiny_patch4_window7_224.ms_in1k", False), ("coat_lite_tiny.in1k", False), ("coat_lite_medium_384.in1k", False),
    ("dla34.in1k", False), ("densenet121.tv_in1k", False), ("inception_v3.tv_in1k", False), ("inception_v3.tf_in1k", False),
    ("xception41.tf_in1k", False), ("mixer_b16_224.goog_in21k_ft_in1k", False), ("resmlp_12_224.fb_in1k", False),
    ("levit_128s.fb_dist_in1k", True), ("vgg11.tv_in1k", False), ("hrnet_w18_small.ms_in1k", False),
    ("edgenext_xx_small.in1k", True), ("mobilevit_xxs.cvnets_in1k", True), ("mobilevitv2_050.cvnets_in1k", True),
    ("poolformer_s12.sail_in1k", False), ("pvt_v2_b0.in1k", True), ("tinynet_e.in1k", True),
    ("fastvit_t8.apple_in1k", False), ("repvit_m1.dist_in1k", False), ("efficientvit_m0.r224_in1k", True),
    ("rexnet_100.nav_in1k", False), ("caformer_s18.sail_in1k", False), ("tiny_vit_5m_224.in1k", False),
    ("volo_d1_224.sail_in1k", False), ("resnetv2_50x1_bit.goog_in21k_ft_in1k", False), ("nfnet_l0.ra2_in1k", False),
    ("hgnetv2_b0.ssld_stage2_ft_in1k", False), ("eva02_tiny_patch14_336.mim_in22k_ft_in1k", False),
]


def _timm_config(tag: str, size: int | None = None, *, create: bool = False) -> dict:
    args = {} if size is None else {"input_size": (3, size, size)}
    if create:
        model = timm.create_model(tag, pretrained=False)
        return resolve_data_config(args, model=model)
    return resolve_data_config(args, pretrained_cfg=get_pretrained_cfg(tag).to_dict())


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """Photo-like: smooth colour fields, a hard white band, a little noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).astype(np.int16)
    base[h // 3: max(h // 3 + 1, h // 2), :] = 240
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))


#: name, width, height, mode: JPEG, PNG, grey, RGBA, palette, smaller than the crop, 1000x20 and 20x1000
IMAGES = [("a.jpg", 500, 375, "RGB"), ("b.png", 97, 151, "RGB"), ("c.jpg", 640, 480, "L"), ("d.png", 300, 200, "RGBA"),
          ("e.png", 13, 9, "RGB"), ("f.png", 1000, 20, "RGB"), ("g.jpg", 20, 1000, "RGB"), ("h.gif", 120, 90, "P"),
          ("i.jpg", 1200, 900, "RGB"), ("j.png", 256, 256, "L"), ("k.png", 142, 294, "RGB")]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("audit_images")
    out = []
    for i, (name, w, h, mode) in enumerate(IMAGES):
        img = _photo(w, h, i)
        if mode == "RGBA":
            img = Image.merge("RGBA", (*img.split(), Image.new("L", img.size, 128)))
        elif mode != "RGB":
            img = img.convert(mode)
        img.save(root / name, **({"quality": 92} if name.endswith(".jpg") else {}))
        out.append(root / name)
    return out


def _ours(files: list[Path], size: int, crop_pct: float, interpolation: str, crop_mode: str, mean: tuple, std: tuple,
          **kw: object) -> torch.Tensor:
    samples = Samples.from_lists([str(f) for f in files], [0] * len(files), ["a"])
    kw.setdefault("workers", 0)
    with build_loader(samples, train=False, img_size=size, batch_size=len(files), crop_pct=crop_pct,
                      interpolation=interpolation, crop_mode=crop_mode, mean=mean, std=std, **kw) as loader:
        return torch.cat([x for x, _ in loader])


def _levels(ours: torch.Tensor, ref: torch.Tensor, std: tuple) -> list[float]:
    """Largest difference per image, in 0..255 levels."""
    return [round(v, 2) for v in ((ours - ref).abs() * torch.tensor(std).view(1, 3, 1, 1) * 255).amax((1, 2, 3)).tolist()]


# --------------------------------------------------------------------------- timm
def test_timm_settings_equal_resolve_data_config_for_many_tags() -> None:
    assert len(TIMM_TAGS) >= 40
    modes, pcts, interps = set(), set(), set()
    for tag, create in TIMM_TAGS:
        config = _timm_config(tag, create=create)
        crop_pct, interpolation, crop_mode = eval_transform_of("timm:" + tag)
        assert (crop_pct, interpolation, crop_mode) == (pytest.approx(config["crop_pct"]), config["interpolation"],
                                                        config["crop_mode"]), tag
        assert eval_transform_of("resnet18", "timm:" + tag) == (crop_pct, interpolation, crop_mode), tag  # --pretrained
        assert normalization("timm:" + tag) == (pytest.approx(config["mean"]), pytest.approx(config["std"])), tag
        modes.add(crop_mode), pcts.add(crop_pct), interps.add(interpolation)
    assert modes == {"center", "squash"} and 1.0 in pcts and interps == {"bilinear", "bicubic"}  # (the sample is wide)


def _timm_groups() -> list[tuple[str, int | None]]:
    """One tag per distinct (input size, crop_pct, interpolation, crop_mode, mean, std), plus other sizes."""
    seen, out = set(), []
    for tag, _ in TIMM_TAGS:
        c = _timm_config(tag)
        key = (c["input_size"], c["crop_pct"], c["interpolation"], c["crop_mode"], c["mean"], c["std"])
        if key not in seen and c["input_size"][-1] <= 400:
            seen.add(key)
            out.append((tag, None))
    # sizes other than the pretrained one (odd, smaller, larger)
    out += [("resnet50.a1_in1k", 160), ("coat_lite_medium_384.in1k", 100), ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", 257),
            ("resnet18.tv_in1k", 96), ("convnext_tiny.fb_in22k_ft_in1k_384", 129)]
    return out


@pytest.mark.parametrize(("tag", "size"), _timm_groups())
def test_eval_batch_equals_timms_create_transform(files: list[Path], tag: str, size: int | None) -> None:
    config = _timm_config(tag, size)
    side = config["input_size"][-1]
    assert math.floor(side / config["crop_pct"]) == int(side / config["crop_pct"] + 1e-6)  # (see the rounding test)
    ref = torch.stack([create_transform(**config, is_training=False)(Image.open(f).convert("RGB")) for f in files])
    crop_pct, interpolation, crop_mode = eval_transform_of("timm:" + tag)
    mean, std = normalization("timm:" + tag)
    ours = _ours(files, side, crop_pct, interpolation, crop_mode, mean, std)
    levels = _levels(ours, ref, std)
    assert max(levels) <= 2.01, dict(zip([f.name for f in files], levels, strict=True))


@pytest.mark.parametrize(("tag", "crop_mode"), [("coat_lite_medium_384.in1k", "squash"), ("tinynet_e.in1k", "center")])
def test_portrait_and_squashed_images_are_timms_exactly(tmp_path: Path, tag: str, crop_mode: str) -> None:
    """PIL resizes some shapes columns first (portrait images, squashed ones): resizing the centre
    box rows first was up to 19 levels off timm's transform at hard edges (noise) here."""
    config = _timm_config(tag, 106)
    assert config["crop_mode"] == crop_mode
    paths = []
    for k, (w, h) in enumerate([(142, 294), (157, 348), (79, 300), (375, 500), (184, 407)]):
        paths.append(tmp_path / f"n{k}.png")
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    for crop_pct in (config["crop_pct"], 0.9):
        tf = create_transform(**{**config, "crop_pct": crop_pct}, is_training=False)
        ref = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
        ours = _ours(paths, 106, crop_pct, config["interpolation"], crop_mode, config["mean"], config["std"])
        assert max(_levels(ours, ref, config["std"])) <= 1.01, _levels(ours, ref, config["std"])


@pytest.mark.parametrize("where", [{"workers": 2}, {"cache": "ram"}, {"workers": 2, "cache": "ram"}])
def test_workers_and_the_ram_cache_give_the_same_batch(files: list[Path], where: dict) -> None:
    for tag in ("coat_lite_medium_384.in1k", "resnet50.a1_in1k"):
        config = _timm_config(tag, 64)
        settings = (64, *eval_transform_of("timm:" + tag), config["mean"], config["std"])
        first = _ours(files, *settings)
        assert torch.equal(_ours(files, *settings, **where), first), (tag, where)
        if "cache" in where:  # an epoch from the filled cache
            samples = Samples.from_lists([str(f) for f in files], [0] * len(files), ["a"])
            with build_loader(samples, train=False, img_size=64, batch_size=4, crop_pct=settings[1],
                              interpolation=settings[2], crop_mode=settings[3], mean=settings[4], std=settings[5],
                              workers=where.get("workers", 0), cache="ram") as loader:
                for _ in range(2):
                    assert torch.equal(torch.cat([x for x, _ in loader]), first), tag


def test_timm_configs_finetune_takes_otherwise() -> None:
    """Deliberate differences: crop_pct above 1 (timm shrinks below the crop and pads with black; finetune's
    range is (0, 1]) is 1.0, the whole image unpadded, and "border" mode falls back; a non-square input size is not a default img_size; the floor of
    size / crop_pct takes the exact value where float error puts timm one pixel lower."""
    assert get_pretrained_cfg("volo_d4_448.sail_in1k").crop_pct == 1.15
    assert eval_transform_of("timm:volo_d4_448.sail_in1k") == (1.0, "bicubic", "center")
    border = [n for n in timm.list_pretrained("deepseek_vit*") if get_pretrained_cfg(n).crop_mode == "border"]
    for name in border[:1]:
        assert eval_transform_of("timm:" + name)[2] == "center"
    from finetune.models import pretrained_input_size

    assert pretrained_input_size("timm:vit_base_patch16_sapiens2.fb") is None  # (3, 1024, 768)
    from finetune.data.transforms import eval_resize_side

    assert (math.floor(117 / 0.936), eval_resize_side(117, 0.936)) == (124, 125)  # 117 / 0.936 = 125 exactly


# --------------------------------------------------------------------------- torchvision
def _torchvision_presets() -> list[tuple[str, tuple]]:
    from torchvision.models import get_model_weights, list_models

    seen, out = set(), []
    for name in list_models(module=__import__("torchvision").models):
        try:
            weights = get_model_weights(name)
        except Exception:  # noqa: BLE001
            continue
        kw = weights.DEFAULT.transforms.keywords
        key = (str(kw.get("crop_size")), str(kw.get("resize_size")), str(kw.get("interpolation")))
        if key not in seen:
            seen.add(key)
            out.append((name, key))
    return out


def test_every_torchvision_model_with_weights_gets_its_presets_resize() -> None:
    from torchvision.models import get_model_weights, list_models

    count = 0
    for name in list_models(module=__import__("torchvision").models):
        preset = get_model_weights(name).DEFAULT.transforms()
        crop, resize = preset.crop_size[0], preset.resize_size[0]
        crop_pct, interpolation, crop_mode = eval_transform_of(name, "torchvision")
        assert (int(crop / crop_pct + 1e-6), interpolation, crop_mode) == (resize, preset.interpolation.value, "center"), name
        assert eval_transform_of(name) == (0.875, "bilinear", "center")  # no torchvision weights: the classic
        count += 1
    assert count >= 80


@pytest.mark.parametrize(("name", "size"), [(n, None) for n, _ in _torchvision_presets()]
                         + [("resnet50", 160), ("efficientnet_b3", 224), ("swin_v2_t", 129)])
def test_eval_batch_equals_torchvisions_weights_transforms(files: list[Path], name: str, size: int | None) -> None:
    from torchvision.models import get_model_weights
    from torchvision.transforms._presets import ImageClassification

    preset = get_model_weights(name).DEFAULT.transforms()
    crop_pct, interpolation, crop_mode = eval_transform_of(name, "torchvision")
    if size is not None:  # the same share at another size
        preset = ImageClassification(crop_size=size, resize_size=int(size / crop_pct + 1e-6),
                                     interpolation=preset.interpolation)
    side = preset.crop_size[0]
    if side > 300:
        files = files[:2] + files[4:6]  # (the big ones: fewer images, the tiny and 1000x20 kept)
    mean, std = normalization(name, "torchvision")
    ours = _ours(files, side, crop_pct, interpolation, crop_mode, mean, std)
    ref = torch.stack([preset(Image.open(f).convert("RGB")) for f in files])  # PIL, as ImageFolder gives
    assert max(_levels(ours, ref, std)) <= 2.01, dict(zip([f.name for f in files], _levels(ours, ref, std), strict=True))
    if side > 300:
        return
    # the preset on tensors (torchvision.io.decode_image): antialiased torch resize, close but not PIL's
    from torchvision.transforms.functional import pil_to_tensor

    on_tensors = torch.stack([preset(pil_to_tensor(Image.open(f).convert("RGB"))) for f in files])
    mean_levels = float(((ours - on_tensors).abs() * torch.tensor(std).view(1, 3, 1, 1) * 255).mean())
    assert mean_levels < 1.5, mean_levels


# --------------------------------------------------------------------------- through a run
@pytest.fixture(scope="module")
def timm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("timm_run")
    data = write_colour_folder(root / "data", per_class=6, size=40)
    run = root / "run"
    r = run_here("train", "--data", str(data), "--model", "timm:test_vit", "--img-size", "32", "--batch-size", "6",
                "--workers", "0", "--epochs", "1", "--out", str(run), "-q")
    assert r.returncode == 0, r.stderr
    return data, run


def _by_hand(model: torch.nn.Module, config: dict, paths: list[Path], classes: list[str]) -> list[dict[str, float]]:
    tf = create_transform(**config, is_training=False)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    probs = model.eval().requires_grad_(False)(x).softmax(1)
    return [{c: float(p[i]) for i, c in enumerate(classes)} for p in probs]


def test_a_timm_run_predicts_what_timms_transform_and_the_model_give(timm_run: tuple[Path, Path], files: list[Path],
                                                                      tmp_path: Path) -> None:
    from finetune import predict
    from finetune.models import create_model

    _, run = timm_run
    text = (run / "config.yaml").read_text()
    assert "crop-pct: 0.95" in text and "interpolation: bicubic" in text and "crop-mode: center" in text
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True, map_location="cpu")
    model = create_model("timm:test_vit", num_classes=len(state["classes"]), img_size=32)
    model.load_state_dict(state["model"])
    config = resolve_data_config({"input_size": (3, 32, 32)}, pretrained_cfg=get_pretrained_cfg("test_vit").to_dict())
    paths = [f for f in files if f.suffix != ".gif"]
    want = _by_hand(model, config, paths, state["classes"])
    got = predict(run / "checkpoints" / "best.pt", [str(p) for p in paths], device="cpu")
    for w, g in zip(want, got, strict=True):
        assert {t["class"]: t["prob"] for t in g["top"]} == pytest.approx(w, abs=5e-3), g["path"]
    # best.safetensors copied elsewhere: the same predictions
    alone = tmp_path / "else" / "m.safetensors"
    alone.parent.mkdir()
    shutil.copy(run / "best.safetensors", alone)
    assert [g["top"] for g in predict(alone, [str(p) for p in paths], device="cpu")] == [g["top"] for g in got]
    r = run_here("predict", "--checkpoint", str(alone), str(paths[0]))
    assert r.returncode == 0, r.stderr


def test_an_old_style_checkpoint_falls_back_to_the_classic_transform(timm_run: tuple[Path, Path], files: list[Path],
                                                                     tmp_path: Path) -> None:
    from finetune import Checkpointer, predict
    from finetune.models import create_model

    _, run = timm_run
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True, map_location="cpu")
    for key in ("crop_pct", "interpolation", "crop_mode"):
        state.pop(key, None)
        state.get("config", {}).pop(key, None)
    path = Checkpointer(tmp_path / "old").save(state)
    model = create_model("timm:test_vit", num_classes=len(state["classes"]), img_size=32)
    model.load_state_dict(state["model"])
    config = {"input_size": (3, 32, 32), "crop_pct": 0.875, "interpolation": "bilinear", "crop_mode": "center",
              "mean": tuple(state["mean"]), "std": tuple(state["std"])}
    paths = [f for f in files if f.suffix == ".png"]
    want = _by_hand(model, config, paths, state["classes"])
    for w, g in zip(want, predict(path, [str(p) for p in paths], device="cpu"), strict=True):
        assert {t["class"]: t["prob"] for t in g["top"]} == pytest.approx(w, abs=5e-3), g["path"]


def test_resume_keeps_the_runs_eval_settings_and_config_round_trips(tmp_path: Path) -> None:
    from finetune.config import load_config, save_config

    data = write_colour_folder(tmp_path / "data", per_class=6, size=40)
    run = tmp_path / "run"
    common = ("--data", str(data), "--model", "squeezenet1_1", "--img-size", "32", "--batch-size", "6", "--workers", "0",
              "--out", str(run), "-q")
    r = run_here("train", *common, "--epochs", "1", "--crop-pct", "0.8", "--interpolation", "bicubic",
                 "--crop-mode", "squash")
    assert r.returncode == 0, r.stderr
    cfg = load_config(run / "config.yaml")
    assert (cfg.crop_pct, cfg.interpolation, cfg.crop_mode) == (0.8, "bicubic", "squash")
    save_config(cfg, tmp_path / "again.yaml")  # written and read back: the same settings
    assert load_config(tmp_path / "again.yaml") == cfg
    r = run_here("train", *common, "--epochs", "2", "--resume", "auto")
    assert r.returncode == 0, r.stderr
    newest = max((run / "checkpoints").glob("*.pt"), key=lambda p: p.stat().st_mtime)
    state = torch.load(newest, weights_only=True, map_location="cpu")
    assert state["epoch"] >= 1 and (state["crop_pct"], state["interpolation"], state["crop_mode"]) == (
        0.8, "bicubic", "squash")


# --------------------------------------------------------------------------- the flags
@pytest.mark.parametrize(("flags", "says"), [
    (("--crop-pct", "0"), "crop_pct (--crop-pct) must be in (0, 1]"), (("--crop-pct", "-0.5"), "crop_pct (--crop-pct) must be in (0, 1]"),
    (("--crop-pct", "1.01"), "crop_pct (--crop-pct) must be in (0, 1]"), (("--crop-pct", "abc"), "--crop-pct"),
    (("--crop-pct", "nan"), "--crop-pct"), (("--crop-pct", "inf"), "--crop-pct"),
    (("--interpolation", "lanczos"), "--interpolation"), (("--interpolation", "Bicubic"), "--interpolation"),
    (("--crop-mode", "border"), "--crop-mode"), (("--crop-mode", ""), "--crop-mode")])
def test_bad_flag_values_are_one_line_errors(tmp_path: Path, flags: tuple[str, ...], says: str) -> None:
    r = run_here("train", "--data", "shapes", "--out", str(tmp_path / "x"), *flags)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("finetune: error:") and says in lines[-1], r.stderr
    assert not any(line.startswith("Traceback") for line in lines), r.stderr
    assert not (tmp_path / "x").exists()


def test_train_help_describes_the_flags() -> None:
    r = run_here("train", "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0
    for words in ("--crop-pct PCT", "img-size/PCT", "--interpolation {bilinear,bicubic}", "--crop-mode {center,squash}",
                  "squash"):
        assert words in text, words

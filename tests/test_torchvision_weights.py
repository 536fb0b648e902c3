"""``--pretrained torchvision:…`` picks any of torchvision's weights, not only the default.

torchvision ships several weights for many architectures (``ResNet50_Weights.IMAGENET1K_V1``
and ``IMAGENET1K_V2``, each with its own eval resize). A user with the V1 file cached (what
``pretrained=True`` fetched before torchvision 0.13) names it the way torchvision does; the
run's eval transform follows the weights named. Files are written by the tests into a torch
hub cache under a temporary ``TORCH_HOME``; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torchvision.models import get_model_weights

from conftest import error_line, run_here
from finetune.errors import WeightsError
from finetune.models import create_model, eval_transform_of
from finetune.weights import load_weights
from finetune.weights.sources import torchvision_file, torchvision_weights

ARCH = "regnet_y_400mf"  # small, and torchvision has two weights for it (V1: resize 256, V2: resize 232)


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FINETUNE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def cache_weights(tag: str, seed: int) -> dict[str, torch.Tensor]:
    """Write ``ARCH``'s 1000-class weights where torchvision keeps ``tag``'s file; return them."""
    torch.manual_seed(seed)
    state = create_model(ARCH, 1000).state_dict()
    url = get_model_weights(ARCH)[tag].url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("source, arch, expected", [
    ("torchvision", "resnet50", "ResNet50_Weights.IMAGENET1K_V2"),
    ("torchvision:DEFAULT", "resnet50", "ResNet50_Weights.IMAGENET1K_V2"),
    ("torchvision:IMAGENET1K_V1", "resnet50", "ResNet50_Weights.IMAGENET1K_V1"),
    ("torchvision:resnet101", "resnet50", "ResNet101_Weights.IMAGENET1K_V2"),
    ("torchvision:resnet101.IMAGENET1K_V1", None, "ResNet101_Weights.IMAGENET1K_V1"),
    ("torchvision:ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1", "resnet50", "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1"),
])
def test_every_spelling_names_one_weights_entry(source: str, arch: str | None, expected: str) -> None:
    assert str(torchvision_weights(source, arch)) == expected


@pytest.mark.parametrize("source, arch, message", [
    ("torchvision:IMAGENET1K_V9", "resnet50", "no weights 'IMAGENET1K_V9' for resnet50: it has IMAGENET1K_V1, "
                                              "IMAGENET1K_V2 (the default)"),
    ("torchvision:resnet50.V2", None, "no weights 'V2' for resnet50"),
    ("torchvision:ResNet50_Weights.V2", None, "no weights 'ResNet50_Weights.V2'"),
    ("torchvision:nosuchnet", None, "no pretrained weights for 'nosuchnet'"),
    ("torchvision", None, "need the architecture"),
])
def test_unknown_weights_say_what_exists(source: str, arch: str | None, message: str) -> None:
    with pytest.raises(WeightsError, match="torchvision|architecture") as info:
        torchvision_weights(source, arch)
    assert message in str(info.value)


def test_named_tag_loads_its_file_and_the_missing_default_points_to_the_cached_one() -> None:
    v1 = cache_weights("IMAGENET1K_V1", seed=1)
    model = create_model(ARCH, 3)
    report = load_weights(model, "torchvision:IMAGENET1K_V1")
    assert report.mismatched and all(name.startswith("fc.") for name, *_ in report.mismatched)
    for name, tensor in model.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(tensor, v1[name]), name

    with pytest.raises(WeightsError) as info:  # the default (V2) is not cached; downloads are off
        torchvision_file("torchvision", ARCH)
    message = str(info.value)
    assert "regnet_y_400mf-e6988f5f.pth" in message and "are not cached" in message
    assert message.endswith("or use the cached regnet_y_400mf-c65dace8.pth: "
                            "source='torchvision:RegNet_Y_400MF_Weights.IMAGENET1K_V1' "
                            "(--pretrained torchvision:RegNet_Y_400MF_Weights.IMAGENET1K_V1)")


def test_eval_transform_follows_the_named_weights() -> None:
    assert eval_transform_of(ARCH, "torchvision:IMAGENET1K_V1") == (0.875, "bilinear", "center")  # 256 -> 224
    assert eval_transform_of(ARCH, "torchvision") == (224 / 232, "bilinear", "center")
    assert eval_transform_of("efficientnet_b1", "torchvision:IMAGENET1K_V1") == (240 / 256, "bicubic", "center")
    assert eval_transform_of("efficientnet_b1", "torchvision:efficientnet_b1.IMAGENET1K_V2") == (
        240 / 255, "bilinear", "center")


def test_train_with_named_weights_records_them_and_their_eval_transform(colour_data: Path, tmp_path: Path) -> None:
    cache_weights("IMAGENET1K_V1", seed=2)
    out = tmp_path / "run"
    res = run_here("train", "--data", str(colour_data), "--model", ARCH, "--pretrained", "torchvision:IMAGENET1K_V1",
                   "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--out", str(out), "-q")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["pretrained"] == "torchvision:IMAGENET1K_V1"
    assert (cfg["crop-pct"], cfg["interpolation"], cfg["crop-mode"]) == (0.875, "bilinear", "center")

    res = run_here("train", "--data", str(colour_data), "--model", ARCH, "--pretrained", "torchvision:IMAGENET1K_V3",
                   "--img-size", "32", "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "bad"), "-q")
    assert res.returncode == 2
    assert "no weights 'IMAGENET1K_V3' for regnet_y_400mf" in error_line(res)


def test_models_lists_each_weights_tag_the_way_pretrained_takes_it() -> None:
    cache_weights("IMAGENET1K_V1", seed=3)
    res = run_here("models", f"{ARCH}.*")
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.splitlines()[1:]]
    assert [(r[0], r[4]) for r in rows] == [(f"{ARCH}.IMAGENET1K_V1", "yes"), (f"{ARCH}.IMAGENET1K_V2", "-")]
    res = run_here("models", f"{ARCH}.*", "--cached")
    assert [line.split()[0] for line in res.stdout.splitlines()[1:]] == [f"{ARCH}.IMAGENET1K_V1"]
    assert torchvision_weights("torchvision:" + rows[0][0]).url.endswith(rows[0][5])  # the name is a valid source

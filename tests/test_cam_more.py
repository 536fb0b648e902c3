"""Score-CAM, Ablation-CAM and Eigen-Grad-CAM: equal to pytorch-grad-cam where it is importable
(on a ResNet and a timm ViT), and on models whose answer is known without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import finetune.cam as cam_module
from conftest import run_cli
from finetune import Checkpointer, create_model
from finetune.cam import class_activation_maps, localisation, scale_maps
from finetune.errors import ConfigError

NEW = ("eigengradcam", "scorecam", "ablationcam")


def grad_cam_maps(model: nn.Module, x: torch.Tensor, layer: nn.Module, classes: list[int], method: str,
                  reshape=None) -> np.ndarray:  # noqa: ANN001
    """pytorch-grad-cam's maps, with the two documented differences taken out: the eigen
    projection gets finetune's sign rule, and a ViT's channels are ablated by zero."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import eigen_grad_cam
    from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    def signed(batch: np.ndarray) -> np.ndarray:
        p = get_2d_projection(batch)
        s = np.sign((p * batch.sum(1)).sum((1, 2)))
        return p * np.where(s == 0, 1, s)[:, None, None]

    class ZeroTokens(AblationLayerVit):
        def __call__(self, _x):  # noqa: ANN001, ANN204
            out = self.activations.transpose(1, 2)
            for i in range(out.size(0)):
                out[i, self.indices[i], :] = 0
            return out.transpose(2, 1)

    kwargs: dict[str, object] = {"reshape_transform": reshape}
    if method == "ablationcam":
        kwargs["ablation_layer"] = ZeroTokens() if reshape is not None else AblationLayer()
    name = {"eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}[method]
    original = eigen_grad_cam.get_2d_projection
    eigen_grad_cam.get_2d_projection = signed
    try:
        cam = getattr(pgc, name)(model=model, target_layers=[layer], **kwargs)
        cam.batch_size = 64
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
        cam.activations_and_grads.release()
    finally:
        eigen_grad_cam.get_2d_projection = original
    return out


def positive_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4).eval()
    with torch.no_grad():
        model.fc.bias += 5.0  # positive logits: the one case where y and |y| agree (see the docstring)
    return model


def small_vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=64, depth=2).eval()
    with torch.no_grad():
        vit.head.bias += 5.0
    return vit


def vit_tokens(t: torch.Tensor) -> torch.Tensor:
    return t[:, 1:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)


@pytest.mark.parametrize(("method", "layer", "size"), [
    ("eigengradcam", "layer4", 64), ("ablationcam", "layer3", 32), ("scorecam", "layer2", 32),
])
def test_resnet_maps_equal_pytorch_grad_cam(method: str, layer: str, size: int) -> None:
    pytest.importorskip("pytorch_grad_cam")
    model = positive_resnet()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    ours = class_activation_maps(model, x, method=method, layer=layer, classes=[0, 3])
    theirs = grad_cam_maps(model, x, model.get_submodule(layer), [0, 3], method)
    assert ours.maps.shape == (2, size, size) and ours.method == method
    assert np.abs(ours.maps.numpy() - theirs).max() < 1e-5


@pytest.mark.parametrize("method", NEW)
def test_vit_maps_equal_pytorch_grad_cam(method: str) -> None:
    pytest.importorskip("pytorch_grad_cam")
    vit = small_vit()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = class_activation_maps(vit, x, method=method, classes=[1, 2])
    assert ours.layer == "blocks.1.norm1"
    theirs = grad_cam_maps(vit, x, vit.blocks[1].norm1, [1, 2], method, reshape=vit_tokens)
    assert np.abs(ours.maps.numpy() - theirs).max() < 1e-5


class ColourDetector(nn.Module):
    """Channel k of the features is how much of colour k (R, G, B) a 4x4 cell holds; the head
    reads only ``channel`` (class 1) and nothing (class 0)."""

    def __init__(self, channel: int = 0) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 3, 4, stride=4, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            for k in range(3):
                conv.weight[k, k] = 1.0 / 16
        self.features = nn.Sequential(conv, nn.ReLU())
        self.fc = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[1, channel] = 10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def squares(colour: int, background: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(4, 3, 64, 64)
    boxes = torch.tensor([[8, 8, 24, 24], [40, 4, 60, 20], [4, 40, 28, 60], [32, 32, 48, 48]])
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        if background is not None:
            x[i, background] = 0.5
        x[i, colour, y0:y1, x0:x1] = 1.0
    return x, boxes


@pytest.mark.parametrize("method", NEW)
def test_maps_are_on_the_object(method: str) -> None:
    x, boxes = squares(colour=0, background=1)  # red squares on green: the green channel is busy too
    result = class_activation_maps(ColourDetector(channel=0).eval(), x, method=method, classes=[1])
    assert result.maps.shape == (4, 64, 64) and result.classes.tolist() == [1, 1, 1, 1]
    assert float(result.maps.min()) >= 0 and float(result.maps.max()) <= 1
    loc = localisation(result.maps, boxes)
    assert loc.pointing == 1.0 and loc.iou > 0.6 and loc.energy > 0.6, (method, loc)


def test_ablation_weights_pick_the_channel_the_head_reads() -> None:
    x, _ = squares(colour=2, background=1)
    x[:, 0] = torch.rand(4, 64, 64)  # all three channels live
    for channel in range(3):
        model = ColourDetector(channel=channel).eval()
        layer = cam_module.find_cam_layer(model, x)
        weights = cam_module._ablation_weights(model, x, layer, torch.ones(4, dtype=torch.long), batch_size=2)
        expected = torch.zeros(4, 3)
        expected[:, channel] = 1.0  # the score drops to 0: all of it
        assert torch.allclose(weights, expected, atol=1e-6), channel
        maps = class_activation_maps(model, x, method="ablationcam", classes=[1]).maps
        feats = model.features(x)[:, channel]
        assert torch.allclose(maps, scale_maps(feats, (64, 64)), atol=1e-6)


def test_scorecam_weights_are_a_softmax_of_masked_scores() -> None:
    x, _ = squares(colour=0)  # green and blue are zero: their masks are empty
    model = ColourDetector(channel=0).eval()
    feats = model.features(x)
    weights = cam_module._score_weights(model, x, feats, torch.ones(4, dtype=torch.long), batch_size=3)
    assert torch.allclose(weights.sum(1), torch.ones(4))
    # the red channel's map, upsampled (corners aligned) and min-max scaled, masks the image
    mask = torch.nn.functional.interpolate(feats[:, :1], size=(64, 64), mode="bilinear", align_corners=True)
    mask = (mask - mask.amin((2, 3), keepdim=True)) / (mask.amax((2, 3), keepdim=True) - mask.amin((2, 3), keepdim=True))
    red = model(x * mask)[:, 1]
    expected = torch.stack([red, torch.zeros(4), torch.zeros(4)], 1).softmax(1)  # an empty mask: a zero image
    assert torch.allclose(weights, expected, atol=1e-5)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_batch_size_does_not_change_the_maps(method: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).eval()
    x = torch.randn(3, 3, 32, 32)
    maps = [class_activation_maps(model, x, method=method, layer="2", batch_size=b).maps for b in (1, 4, 100)]
    assert maps[0].shape == (3, 32, 32)
    assert all(torch.allclose(maps[0], m, atol=1e-6) for m in maps[1:])
    with pytest.raises(ConfigError, match="batch_size"):
        class_activation_maps(model, x, method=method, batch_size=0)


@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_ablation_replay_equals_whole_forwards(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-running only the layers after the feature layer gives the maps whole forwards give."""
    if arch == "vit":
        model, x, layer = small_vit(), torch.randn(2, 3, 64, 64), "blocks.1.norm1"
    else:
        model, x, layer = positive_resnet(), torch.randn(2, 3, 32, 32), "layer3.1"
    used: list[bool] = []
    real_check = cam_module._Replay.check

    def check(self: cam_module._Replay, images: torch.Tensor) -> None:
        real_check(self, images)
        used.append(self.fast)

    monkeypatch.setattr(cam_module._Replay, "check", check)
    fast = class_activation_maps(model, x, method="ablationcam", layer=layer, classes=[1, 2])
    monkeypatch.setattr(cam_module._Replay, "check", lambda self, _images: setattr(self, "fast", False))
    full = class_activation_maps(model, x, method="ablationcam", layer=layer, classes=[1, 2])
    assert used == [True]
    assert torch.allclose(fast.maps, full.maps, atol=1e-5)
    assert not any("forward" in m.__dict__ for m in model.modules())  # every replayed forward restored


class SharedBlock(nn.Module):
    """The feature layer runs twice (a shared module): no replay, whole forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.block(self.stem(x))).mean(dim=(2, 3)))


def test_models_that_cannot_be_replayed_run_whole() -> None:
    torch.manual_seed(0)
    model = SharedBlock().eval()
    x = torch.randn(2, 3, 32, 32)
    result = class_activation_maps(model, x, method="ablationcam", layer="block")
    assert result.maps.shape == (2, 32, 32) and float(result.maps.max()) <= 1
    replay = cam_module._Replay(model, x, "block")
    assert not replay.fast


def test_modes_and_gradients_untouched() -> None:
    model = create_model("resnet18", num_classes=3)
    model.train()
    model.layer1.requires_grad_(False)
    model.layer1.eval()
    bn = model.bn1.running_mean.clone()
    for method in NEW:
        class_activation_maps(model, torch.randn(2, 3, 32, 32), method=method, layer="layer3", batch_size=128)
    assert model.training and model.layer4.training and not any(m.training for m in model.layer1.modules())
    assert torch.equal(model.bn1.running_mean, bn)
    assert all(p.grad is None for p in model.parameters())
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == [
        n for n, _ in model.named_parameters() if n.startswith("layer1.")]
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_cam_command_takes_the_new_methods(tmp_path: Path) -> None:
    from PIL import Image

    from finetune.data.shapes import CLASSES

    torch.manual_seed(0)
    Checkpointer(tmp_path / "run").save({"model": create_model("resnet18", num_classes=8), "arch": "resnet18",
                                         "classes": list(CLASSES), "img_size": 64, "epoch": 0, "step": 0,
                                         "config": {}})
    Image.new("RGB", (80, 60), (200, 30, 30)).save(tmp_path / "red.jpg")
    res = run_cli("cam", str(tmp_path / "run"), str(tmp_path / "red.jpg"), "--method", "ablationcam",
                  "--out", str(tmp_path / "out"), "--device", "cpu", "--json")
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 1 and json.loads(res.stdout)[0]["layer"] == "layer4"

"""Class activation maps: the formulas against a textbook reference (full backward, hooks,
NumPy, pytorch-grad-cam's definitions), the layer each architecture gets, localisation on a
model whose answer is known, and `finetune cam` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import error_line, run_cli, run_here
from finetune import Checkpointer, create_model
from finetune.cam import (
    METHODS,
    class_activation_maps,
    explain,
    find_cam_layer,
    localisation,
    overlay,
    spatial_layout,
)
from finetune.errors import ConfigError


def reference_maps(model: nn.Module, x: torch.Tensor, layer: nn.Module, classes: list[int], method: str,
                   to_nchw=lambda t: t) -> np.ndarray:  # noqa: ANN001
    """The textbook way (pytorch-grad-cam's): hooks keep a copy of the layer's output and its
    gradient, ``backward()`` of the class scores through the whole network, NumPy formulas,
    ReLU, min-max per image, bilinear resize to the input, min-max again."""
    acts, grads = [], []

    def fwd(_m, _i, out):  # noqa: ANN001, ANN202
        acts.append(out.detach().clone())
        out.register_hook(lambda g: grads.append(g.detach().clone()))

    h = layer.register_forward_hook(fwd)
    model.zero_grad()
    logits = model(x)
    logits[torch.arange(len(classes)), torch.tensor(classes)].sum().backward()
    h.remove()
    a, g = to_nchw(acts[0]).numpy().astype(np.float64), to_nchw(grads[0]).numpy().astype(np.float64)
    if method == "gradcam":
        cam = (g.mean(axis=(2, 3))[:, :, None, None] * a).sum(1)
    elif method == "gradcam++":
        g2, g3 = g ** 2, g ** 3
        aij = g2 / (2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g3 + 1e-6)
        aij = np.where(g != 0, aij, 0)
        cam = ((np.maximum(g, 0) * aij).sum(axis=(2, 3))[:, :, None, None] * a).sum(1)
    elif method == "xgradcam":
        cam = ((g * a / (a.sum(axis=(2, 3), keepdims=True) + 1e-7)).sum(axis=(2, 3))[:, :, None, None] * a).sum(1)
    elif method == "layercam":
        cam = (np.maximum(g, 0) * a).sum(1)
    elif method == "hirescam":
        cam = (g * a).sum(1)
    else:
        raise AssertionError(method)
    cam = np.maximum(cam, 0)

    def minmax(m: np.ndarray) -> np.ndarray:
        m = m - m.min(axis=(1, 2), keepdims=True)
        return m / (1e-7 + m.max(axis=(1, 2), keepdims=True))

    up = F.interpolate(torch.from_numpy(minmax(cam)).float()[:, None], size=x.shape[-2:], mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    return minmax(up)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"])
def test_maps_equal_the_textbook_computation(method: str) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=5).eval()
    x = torch.randn(3, 3, 96, 96)
    ours = class_activation_maps(model, x, method=method, classes=[0, 3, 4])
    ref = reference_maps(model, x, model.layer4, [0, 3, 4], method)
    assert ours.layer == "layer4" and ours.maps.shape == (3, 96, 96)
    assert np.abs(ours.maps.numpy() - ref).max() < 1e-4


def test_vit_tokens_and_inplace_ops_downstream() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    ours = class_activation_maps(vit, x, classes=[1, 2])
    # a class-token ViT: the final norm's patch tokens feed nothing, the last block's norm1 does
    assert ours.layer == "blocks.11.norm1"

    def tokens(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    ref = reference_maps(vit, x, vit.blocks[11].norm1, [1, 2], "gradcam", tokens)
    assert np.abs(ours.maps.numpy() - ref).max() < 1e-4
    # DenseNet applies an in-place ReLU to its feature layer's output: the maps use the layer's output
    dense = create_model("densenet121", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    ours = class_activation_maps(dense, x, method="xgradcam", classes=[0, 1])
    ref = reference_maps(dense, x, dense.features, [0, 1], "xgradcam")
    assert ours.layer == "features" and np.abs(ours.maps.numpy() - ref).max() < 1e-4


def test_cam_needs_no_backward_and_equals_gradcam_on_gap_linear_heads() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    a = class_activation_maps(model, x, method="cam")
    b = class_activation_maps(model, x, method="gradcam")
    assert torch.equal(a.classes, b.classes) and torch.allclose(a.maps, b.maps, atol=1e-4)
    convnext = create_model("convnext_tiny", num_classes=4).eval()  # LayerNorm between pool and Linear
    with pytest.raises(ConfigError, match="global-average-pool"):
        class_activation_maps(convnext, x, method="cam")


@pytest.mark.parametrize(("arch", "layer"), [
    ("resnet18", "layer4"), ("densenet121", "features"), ("swin_t", "permute"),
    ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1"), ("mobilenet_v3_small", "features"),
])
def test_feature_layer_per_architecture(arch: str, layer: str) -> None:
    model = create_model(arch, num_classes=3, img_size=96).eval()  # (torchvision's ViT head starts at zero: found)
    assert find_cam_layer(model, torch.randn(1, 3, 96, 96)).name == layer


def test_no_gradient_or_mode_left_behind() -> None:
    model = create_model("resnet18", num_classes=3)
    model.train()
    model.layer1.requires_grad_(False)
    model.layer1.eval()  # as set_bn_policy leaves a frozen part under train()
    bn = model.bn1.running_mean.clone()
    for method in METHODS:  # (48 px: scorecam's 512 masked forwards per image dominate the test's time)
        class_activation_maps(model, torch.randn(2, 3, 48, 48), method=method)
    assert model.training and model.layer4.training and not any(m.training for m in model.layer1.modules())
    assert torch.equal(model.bn1.running_mean, bn)
    assert all(p.grad is None for p in model.parameters())
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == [
        n for n, _ in model.named_parameters() if n.startswith("layer1.")]


class RedDetector(nn.Module):
    """Scores class 1 by how red the image is, class 0 by how green: a model whose answer is known."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 2, 4, stride=4, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 1] = 1.0  # channel 0: green
            conv.weight[1, 0] = 1.0  # channel 1: red
        self.features = nn.Sequential(conv, nn.ReLU())
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_maps_point_at_the_evidence() -> None:
    x = torch.zeros(4, 3, 64, 64)
    boxes = torch.tensor([[8, 8, 24, 24], [40, 4, 60, 20], [4, 40, 28, 60], [32, 32, 48, 48]])
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        x[i, 0, y0:y1, x0:x1] = 1.0  # a red square
    model = RedDetector().eval()
    for method in ("cam", "gradcam", "gradcam++", "layercam", "eigencam"):
        result = class_activation_maps(model, x, method=method)
        assert result.classes.tolist() == [1, 1, 1, 1], method
        loc = localisation(result.maps, boxes)
        assert loc.pointing == 1.0 and loc.iou > 0.6 and loc.energy > 0.6, (method, loc)
    # the other class has no evidence: its map is empty
    assert float(class_activation_maps(model, x, method="gradcam", classes=[0]).maps.max()) == 0.0


def test_localisation_scores() -> None:
    maps = torch.zeros(2, 10, 10)
    maps[0, 2:5, 2:5] = 1.0  # inside its box
    maps[1, 7:9, 7:9] = 1.0  # outside its box
    loc = localisation(maps, torch.tensor([[2, 2, 5, 5], [0, 0, 4, 4]]))
    assert loc.images == 2 and loc.pointing == 0.5 and loc.energy == 0.5 and loc.iou == 0.5
    with pytest.raises(ConfigError, match="N x 4"):
        localisation(maps, torch.zeros(2, 3))
    empty = localisation(torch.zeros(1, 10, 10), torch.tensor([[2, 2, 8, 8]]))  # its centre is in the box
    assert (empty.pointing, empty.energy, empty.iou) == (0.0, 0.0, 0.0)


def test_layouts_and_overlay() -> None:
    assert spatial_layout(torch.zeros(2, 7, 7, 96), (224, 224), channels=96).kind == "nhwc"
    assert spatial_layout(torch.zeros(2, 5 + 256, 384), (224, 224), channels=384).prefix == 5  # 4 registers + cls
    assert spatial_layout(torch.zeros(2, 512, 1, 1), (224, 224)) is None
    image = np.full((4, 4, 3), 200, np.uint8)
    out = overlay(image, np.zeros((4, 4)), alpha=0.25)
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3) and out[0, 0].tolist() == [150, 150, 182]
    with pytest.raises(ConfigError, match="differ in size"):
        overlay(image, np.zeros((3, 3)))


def test_bad_arguments_are_config_errors() -> None:
    model = create_model("resnet18", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ConfigError, match="unknown CAM method"):
        class_activation_maps(model, x, method="gradcamm")
    with pytest.raises(ConfigError, match="did you mean layer4"):
        class_activation_maps(model, x, layer="layer44")
    with pytest.raises(ConfigError, match="does not output a feature map smaller than the image"):
        class_activation_maps(model, x, layer="fc")
    # a map at the image's own resolution (stride 1) is not used either: the message says why
    with pytest.raises(ConfigError, match=r"stride of 2 to 64 \(its output: \(1, 64, 64, 64\), the image: \(64, 64\)\)"):
        class_activation_maps(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                            nn.Linear(64, 3)).eval(), x, layer="0")
    with pytest.raises(ConfigError, match="one per image"):
        class_activation_maps(model, x, classes=[5])
    assert class_activation_maps(model, x, layer="layer3").maps.shape == (1, 64, 64)


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune import make_shapes
    from finetune.data.shapes import CLASSES

    data = make_shapes(tmp_path_factory.mktemp("shapes"), per_class=2, val_per_class=2, size=64)
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    Checkpointer(run).save({"model": create_model("resnet18", num_classes=8), "arch": "resnet18",
                            "classes": list(CLASSES), "img_size": 64, "epoch": 0, "step": 0,
                            "config": {"data": str(data), "val_split": 0.1, "seed": 0}}, metrics={"val_top1": 0.5})
    return run


def test_explain_writes_overlays_records_and_box_scores(cam_run: Path) -> None:
    report = explain(cam_run, limit=5, device="cpu")
    assert report.out_dir == cam_run / "cam" / "gradcam"
    pngs = sorted(p.name for p in report.out_dir.glob("*.png"))
    assert len(pngs) == len(report.records) == 5
    records = [json.loads(line) for line in (report.out_dir / "cam.jsonl").read_text().splitlines()]
    assert [r["overlay"] for r in records] == pngs
    assert all({"file", "class", "prob", "true_class", "pointing", "energy", "iou"} <= set(r) for r in records)
    summary = json.loads((report.out_dir / "summary.json").read_text())
    assert summary["images"] == 5 and summary["localisation"]["images"] == 5 and summary["layer"] == "layer4"
    assert summary["localisation"]["pointing"] == pytest.approx(np.mean([r["pointing"] for r in records]))
    assert summary["localisation"]["iou"] == pytest.approx(np.mean([r["iou"] for r in records]), abs=1e-5)
    target = explain(cam_run, limit=3, target="star", method="layercam", device="cpu")
    assert {r["class"] for r in target.records} == {"star"} and target.out_dir.name == "layercam"


def test_cam_command(cam_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (80, 60), (200, 30, 30)).save(tmp_path / "red.jpg")
    res = run_cli("cam", str(cam_run / "checkpoints" / "best.pt"), str(tmp_path / "red.jpg"),
                  "--method", "gradcam++", "--out", str(tmp_path / "out"), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 1 and "gradcam++" in res.stdout
    # the checkpoint as predict and eval take it: `cam --checkpoint RUN IMAGE`
    res = run_here("cam", "--checkpoint", str(cam_run), str(tmp_path / "red.jpg"), "--out", str(tmp_path / "flag"),
                   "--device", "cpu", "--json")
    assert res.returncode == 0, res.stderr
    assert [Path(r["file"]).name for r in json.loads(res.stdout)] == ["red.jpg"]
    assert error_line(run_here("cam", "--target", "pentagon")).startswith("finetune: error: cam needs a checkpoint")
    bad = run_here("cam", str(cam_run), "--target", "pentagon", "--device", "cpu")
    assert error_line(bad).startswith("finetune: error: unknown class 'pentagon'")
    assert "best.pt" in error_line(run_here("cam", str(tmp_path), "--device", "cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_maps_on_cuda_equal_the_cpu_maps(method: str) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4).eval()
    x = torch.randn(3, 3, 96, 96)
    on_cpu = class_activation_maps(model, x, method=method, classes=[0, 1, 2])
    # full fp32 on the GPU: cuDNN's default TF32 convolutions moved gradient maps by up to 0.0034 (H200)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        on_gpu = class_activation_maps(model.cuda(), x.cuda(), method=method, classes=[0, 1, 2])
    assert on_gpu.maps.is_cuda and on_gpu.layer == on_cpu.layer
    assert (on_gpu.maps.cpu() - on_cpu.maps).abs().max() < 1e-3  # (cuDNN's and the CPU's kernels differ a little)


@pytest.mark.parametrize("alpha", ["2", "-1", "nan"])
def test_cam_alpha_outside_0_1_is_one_message_at_parse_time(tmp_path: Path, alpha: str) -> None:
    res = run_here("cam", "--checkpoint", str(tmp_path / "none.pt"), "--alpha", alpha, str(tmp_path / "x.jpg"))
    assert res.returncode == 2
    assert res.stderr.startswith(f"finetune: error: argument --alpha: must be a number from 0 to 1, got '{alpha}'")

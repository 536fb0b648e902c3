"""camhunt: Eigen-CAM's sign on LayerNorm'd tokens, method 'cam' with a named layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune import create_model
from finetune.cam import _eigen_projection, class_activation_maps


def test_eigen_sign_does_not_follow_rounding_noise_on_layernorm_outputs() -> None:
    # a LayerNorm's output sums to 0 over the channels at every position: the channel-sum rule has nothing to go by
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        t = F.layer_norm(torch.randn(2, 16, 48, generator=g), (48,)).transpose(1, 2).reshape(2, 48, 4, 4)
        p = _eigen_projection(t)
        for k in range(4):
            noisy = t + 1e-7 * torch.randn(t.shape, generator=g)  # rounding-size changes only
            assert torch.allclose(_eigen_projection(noisy), p, atol=1e-3), (seed, k)


def test_eigencam_of_a_vit_is_stable_under_tiny_input_changes() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", depth=2, embed_dim=48, num_heads=2, img_size=64,
                            num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    a = class_activation_maps(vit, x, method="eigencam").maps
    b = class_activation_maps(vit, x * (1 + 1e-7), method="eigencam").maps
    assert (a - b).abs().max() < 1e-3


def test_method_cam_takes_the_gap_layer_by_name() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    named = class_activation_maps(model, x, method="cam", layer="layer4")
    assert named.layer == "layer4"
    assert torch.allclose(named.maps, class_activation_maps(model, x, method="gradcam", layer="layer4").maps, atol=1e-4)


def _folder_with_boxes(tmp_path, rows: str):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (100, 40), (200, 30, 30)).save(tmp_path / "imgs" / "wide.png")
    Image.new("RGB", (40, 40), (30, 200, 30)).save(tmp_path / "imgs" / "square.png")
    (tmp_path / "imgs" / "boxes.csv").write_text("path,x0,y0,x1,y1\n" + rows)
    return tmp_path / "imgs"


def test_a_box_the_eval_crop_cuts_away_is_not_scored_as_a_miss(tmp_path) -> None:
    import json

    from finetune import Checkpointer
    from finetune.cam import explain

    torch.manual_seed(0)
    run = tmp_path / "run"
    Checkpointer(run).save({"model": create_model("resnet18", num_classes=2), "arch": "resnet18",
                            "classes": ["a", "b"], "img_size": 32, "epoch": 0, "step": 0})
    imgs = _folder_with_boxes(tmp_path, "wide.png,2,4,30,36\nsquare.png,10,10,30,30\n")  # wide: left of the centre crop
    report = explain(run, [str(imgs)], device="cpu", out=tmp_path / "out")
    by_file = {json.loads(line)["file"].rpartition("/")[2]: json.loads(line)
               for line in (tmp_path / "out" / "cam.jsonl").read_text().splitlines()}
    assert by_file["wide.png"]["box"] == "outside the crop" and "pointing" not in by_file["wide.png"]
    assert "pointing" in by_file["square.png"]
    assert report.localisation.images == 1


def test_inverted_boxes_are_refused_with_what_the_columns_mean(tmp_path) -> None:
    from finetune.cam import read_boxes
    from finetune.errors import DataError

    imgs = _folder_with_boxes(tmp_path, "wide.png,20,4,10,30\n")  # COCO's x, y, w, h under x0,y0,x1,y1
    with pytest.raises(DataError, match="x1 <= x0 or y1 <= y0.*COCO"):
        read_boxes(imgs)

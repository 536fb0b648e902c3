"""--pretrained of another finetune run: a run directory carries its input settings, and a head
trained on the same classes in another order is loaded by class name."""
import json

import torch
from safetensors.torch import save_file

from finetune.config import TrainConfig
from finetune.models import create_model, eval_transform_of, normalization, pretrained_input_size
from finetune.train import build_model


def _run_dir(tmp_path, classes, model):
    run = tmp_path / "runA"
    (run / "checkpoints").mkdir(parents=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(run / "best.safetensors"), metadata={
        "format": "finetune-weights", "arch": "resnet18", "classes": json.dumps(classes), "img_size": "32",
        **{k: json.dumps(v) for k, v in {"crop_pct": 0.95, "interpolation": "bicubic", "crop_mode": "center",
                                         "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}.items()}})
    return run


def test_run_directory_as_pretrained_carries_input_settings(tmp_path):
    run = _run_dir(tmp_path, ["a", "b"], create_model("resnet18", num_classes=2))
    for source in (str(run), str(run / "best.safetensors")):
        assert pretrained_input_size("resnet18", source) == 32
        assert eval_transform_of("resnet18", source) == (0.95, "bicubic", "center")
        assert normalization("resnet18", source) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_head_of_same_classes_in_another_order_is_reordered_by_name(tmp_path):
    torch.manual_seed(0)
    trained = create_model("resnet18", num_classes=3)
    run = _run_dir(tmp_path, ["1", "2", "10"], trained)  # a CSV's numeric order
    cfg = TrainConfig(model="resnet18", pretrained=str(run), img_size=32).resolved()
    model = build_model(cfg, 3, torch.device("cpu"), quiet=True, classes=["1", "10", "2"])  # folders' sorted order
    assert torch.equal(model.fc.weight, trained.fc.weight[[0, 2, 1]])
    assert torch.equal(model.fc.bias, trained.fc.bias[[0, 2, 1]])
    same = build_model(cfg, 3, torch.device("cpu"), quiet=True, classes=["1", "2", "10"])
    assert torch.equal(same.fc.weight, trained.fc.weight)


def test_head_rows_in_a_child_module_are_reordered(tmp_path):
    """LeViT's heads are NormLinear modules (a BatchNorm, then `linear`): the class rows are `linear`'s."""
    import pytest

    pytest.importorskip("timm")
    torch.manual_seed(0)
    trained = create_model("timm:levit_128s", num_classes=3)
    run = _run_dir(tmp_path, ["x", "y", "z"], trained)
    cfg = TrainConfig(model="timm:levit_128s", pretrained=str(run), img_size=224).resolved()
    model = build_model(cfg, 3, torch.device("cpu"), quiet=True, classes=["z", "x", "y"])
    for head in ("head", "head_dist"):
        got, want = model.get_submodule(head), trained.get_submodule(head)
        assert torch.equal(got.linear.weight, want.linear.weight[[2, 0, 1]])
        assert torch.equal(got.linear.bias, want.linear.bias[[2, 0, 1]])
        assert torch.equal(got.bn.weight, want.bn.weight)  # (the features' norm: not class rows)


def test_auxiliary_heads_are_reordered_too(tmp_path):
    torch.manual_seed(0)
    trained = create_model("googlenet", num_classes=3)
    run = _run_dir(tmp_path, ["x", "y", "z"], trained)
    cfg = TrainConfig(model="googlenet", pretrained=str(run), img_size=64).resolved()
    model = build_model(cfg, 3, torch.device("cpu"), quiet=True, classes=["z", "x", "y"])
    for head in ("fc", "aux1.fc2", "aux2.fc2"):
        assert torch.equal(model.get_submodule(head).weight, trained.get_submodule(head).weight[[2, 0, 1]]), head

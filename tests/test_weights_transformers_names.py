"""Hugging Face transformers' ResNet / ViT / ConvNeXt files load into torchvision's / timm's models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import finetune
from finetune.weights import read_checkpoint


def _renamed(sd: dict[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for rx, repl in rules:
            k = re.sub(rx, repl, k)
        out[k] = v
    return out


_VIT_RULES = (
    (r"^cls_token$", "vit.embeddings.cls_token"),
    (r"^pos_embed$", "vit.embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", "vit.embeddings.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"vit.encoder.layer.\1.layernorm_before."),
    (r"^blocks\.(\d+)\.norm2\.", r"vit.encoder.layer.\1.layernorm_after."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"vit.encoder.layer.\1.attention.output.dense."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"vit.encoder.layer.\1.intermediate.dense."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"vit.encoder.layer.\1.output.dense."),
    (r"^norm\.", "vit.layernorm."), (r"^head\.", "classifier."),
)
_CONVNEXT_RULES = (
    (r"^stem\.0\.", "convnext.embeddings.patch_embeddings."),
    (r"^stem\.1\.", "convnext.embeddings.layernorm."),
    (r"^stages\.(\d+)\.downsample\.(\d)\.", r"convnext.encoder.stages.\1.downsampling_layer.\2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"convnext.encoder.stages.\1.layers.\2.dwconv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.", r"convnext.encoder.stages.\1.layers.\2.layernorm."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"convnext.encoder.stages.\1.layers.\2.pwconv1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"convnext.encoder.stages.\1.layers.\2.pwconv2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.gamma$", r"convnext.encoder.stages.\1.layers.\2.layer_scale_parameter"),
    (r"^head\.norm\.", "convnext.layernorm."), (r"^head\.fc\.", "classifier."),
)


def _resnet_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision resnet names as transformers' ResNetForImageClassification saves them."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^conv1\.", "resnet.embedder.embedder.convolution.", k)
        k = re.sub(r"^bn1\.", "resnet.embedder.embedder.normalization.", k)
        k = re.sub(r"^layer(\d)\.(\d+)\.downsample\.0\.",
                   lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution.", k)
        k = re.sub(r"^layer(\d)\.(\d+)\.downsample\.1\.",
                   lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization.", k)
        k = re.sub(r"^layer(\d)\.(\d+)\.conv(\d)\.",
                   lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution.", k)
        k = re.sub(r"^layer(\d)\.(\d+)\.bn(\d)\.",
                   lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization.", k)
        out[re.sub(r"^fc\.", "classifier.1.", k)] = v
    return out


def _vit_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm vit names as transformers' ViTForImageClassification saves them (q, k, v apart)."""
    out = {}
    for k, v in sd.items():
        if m := re.match(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", k):
            for name, part in zip(("query", "key", "value"), v.chunk(3), strict=True):
                out[f"vit.encoder.layer.{m[1]}.attention.attention.{name}.{m[2]}"] = part.clone()
            continue
        out.update(_renamed({k: v}, _VIT_RULES))
    return out


def _deit_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm distilled deit names as transformers' DeiTForImageClassificationWithTeacher saves them."""
    return _renamed(_vit_to_hf(sd), ((r"^vit\.", "deit."), (r"^classifier\.", "cls_classifier."),
                                     (r"^head_dist\.", "distillation_classifier."),
                                     (r"^dist_token$", "deit.embeddings.distillation_token")))


def _convnext_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm convnext names as transformers' ConvNextForImageClassification saves them."""
    return _renamed(sd, _CONVNEXT_RULES)


@pytest.mark.parametrize(("arch", "to_hf", "transformers_class"), [
    ("resnet18", _resnet_to_hf, "ResNetForImageClassification"),
    ("timm:vit_tiny_patch16_224", _vit_to_hf, "ViTForImageClassification"),
    ("timm:convnext_atto", _convnext_to_hf, "ConvNextForImageClassification"),
    ("timm:deit_tiny_distilled_patch16_224", _deit_to_hf, "DeiTForImageClassificationWithTeacher"),
])
def test_a_transformers_folder_loads_into_the_same_network(tmp_path: Path, arch: str, to_hf, transformers_class: str) -> None:
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if "vit" in arch or "deit" in arch else {}
    source = finetune.create_model(arch, num_classes=5, **kwargs).eval()
    (tmp_path / "hf").mkdir()
    save_file({k: v.contiguous() for k, v in to_hf(source.state_dict()).items()}, tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"architectures": [transformers_class]}))

    target = finetune.create_model(arch, num_classes=5, **kwargs).eval()
    report = finetune.load_weights(target, tmp_path / "hf", strict=True)
    assert report.ok and not report.unexpected, report
    assert any("Hugging Face transformers" in n for n in report.notes), report.notes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_other_files_keep_their_names() -> None:
    sd = {"classifier.1.weight": torch.zeros(2, 3), "features.0.weight": torch.zeros(3, 3)}  # (mobilenet)
    ck = read_checkpoint(sd)
    assert sorted(ck.weights) == sorted(sd) and not ck.notes


def test_a_transformers_folder_gives_its_image_processor_settings(tmp_path: Path) -> None:
    """preprocessor_config.json (google/vit-base-patch16-224's): mean/std 0.5, a 224x224 squash resize,
    bilinear; the run takes its input as the weights were trained (was ImageNet's mean/std, 0.875 crop)."""
    from finetune.models import eval_transform_of, normalization, pretrained_input_size

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["ViTForImageClassification"]}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "resample": 2, "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}}))
    save_file({"classifier.weight": torch.zeros(2, 3)}, tmp_path / "model.safetensors")
    for source in (str(tmp_path), str(tmp_path / "model.safetensors")):
        model = "timm:vit_tiny_patch16_224"
        assert normalization(model, source) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        assert eval_transform_of(model, source) == (1.0, "bilinear", "squash")
        assert pretrained_input_size(model, source) == 224


def _module_named_as(sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A module whose state dict has exactly ``sd``'s names and shapes (a stand-in for a transformers model)."""
    root = torch.nn.Module()
    for key, value in sd.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(torch.zeros_like(value, dtype=torch.float32),
                                                           requires_grad=False))
    return root


def test_a_transformers_model_takes_its_own_names_and_a_nested_file_is_found(tmp_path: Path) -> None:
    """A model with transformers' names (a transformers model in a user's wrapper) loads the file as it is
    (renaming it for torchvision would load nothing); a Lightning module's file ('model.resnet.…') renames."""
    hf = _resnet_to_hf({k: v.float() for k, v in finetune.create_model("resnet18", num_classes=5).state_dict().items()})
    wrapper = torch.nn.Module()
    wrapper.add_module("net", _module_named_as(hf))
    report = finetune.load_weights(wrapper, hf, strict=True)
    assert report.ok and not any("transformers" in n for n in report.notes)
    assert torch.equal(wrapper.state_dict()["net.classifier.1.weight"], hf["classifier.1.weight"])

    target = finetune.create_model("resnet18", num_classes=5)
    report = finetune.load_weights(target, {f"model.{k}": v for k, v in hf.items()}, strict=True)
    assert report.ok and any("Hugging Face transformers ResNet" in n for n in report.notes)
    assert torch.equal(target.fc.weight, hf["classifier.1.weight"])


def test_inspect_shows_the_input_settings_of_a_transformers_folder(tmp_path: Path) -> None:
    """The settings a run takes from preprocessor_config.json are in the folder's metadata (`finetune inspect`)."""
    from finetune.weights import inspect_checkpoint

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["ResNetForImageClassification"]}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({  # microsoft/resnet-50's
        "crop_pct": 0.875, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3,
        "size": {"shortest_edge": 224}}))
    save_file({"classifier.1.weight": torch.zeros(2, 3)}, tmp_path / "model.safetensors")
    meta = inspect_checkpoint(tmp_path)["metadata"]
    assert meta["config.architectures"] == ["ResNetForImageClassification"]
    assert (meta["preprocessor.input_size"], meta["preprocessor.crop_pct"], meta["preprocessor.interpolation"],
            meta["preprocessor.crop_mode"]) == ([3, 224, 224], 0.875, "bicubic", "center")


def _torchvision_vit_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision vit names as transformers' ViTForImageClassification saves them (q, k, v apart)."""
    out = {}
    for k, v in sd.items():
        if m := re.match(r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$", k):
            for name, part in zip(("query", "key", "value"), v.chunk(3), strict=True):
                out[f"vit.encoder.layer.{m[1]}.attention.attention.{name}.{m[2]}"] = part.clone()
            continue
        out.update(_renamed({k: v}, (
            (r"^class_token$", "vit.embeddings.cls_token"),
            (r"^encoder\.pos_embedding$", "vit.embeddings.position_embeddings"),
            (r"^conv_proj\.", "vit.embeddings.patch_embeddings.projection."),
            (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"vit.encoder.layer.\1.layernorm_before."),
            (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"vit.encoder.layer.\1.layernorm_after."),
            (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.",
             r"vit.encoder.layer.\1.attention.output.dense."),
            (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.0\.", r"vit.encoder.layer.\1.intermediate.dense."),
            (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.3\.", r"vit.encoder.layer.\1.output.dense."),
            (r"^encoder\.ln\.", "vit.layernorm."), (r"^heads\.head\.", "classifier."))))
    return out


def test_a_transformers_vit_folder_loads_into_torchvision_vit(tmp_path: Path) -> None:
    """google/vit-base-patch16-224 is torchvision's vit_b_16 too: the file takes torchvision's names when the
    model has them (was: timm's, and a non-strict load put one block's norm1 on encoder.ln, and nothing else)."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    kwargs = {"image_size": 32, "patch_size": 16, "num_layers": 2, "num_heads": 2, "hidden_dim": 64, "mlp_dim": 128,
              "num_classes": 5}  # (a small vit_b_16)
    source = VisionTransformer(**kwargs).eval()
    with torch.no_grad():
        source.class_token.normal_()  # (zeros at first)
    (tmp_path / "hf").mkdir()
    save_file({k: v.contiguous() for k, v in _torchvision_vit_to_hf(source.state_dict()).items()},
              tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"architectures": ["ViTForImageClassification"]}))

    target = VisionTransformer(**kwargs).eval()
    report = finetune.load_weights(target, tmp_path / "hf", strict=True)
    assert report.ok and not report.unexpected and len(report.loaded) == len(target.state_dict()), report
    assert any("Hugging Face transformers ViT names converted to torchvision's" in n for n in report.notes), report.notes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))

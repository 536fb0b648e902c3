"""A transformers ViT, DeiT, BEiT, DINOv2, ConvNeXt or Swin (V1, V2 each) folder given as --pretrained of another model: the
refusal names the timm model its config.json's fields build (was: only timm hub folders and transformers ResNets
had a --model named), and none where the fields name no timm model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("timm")

from finetune.models import weights_architecture

# the fields of their config.json on the Hugging Face hub that say which network it is (as save_pretrained writes them)
VIT_BASE = {"architectures": ["ViTForImageClassification"], "model_type": "vit", "hidden_size": 768,  # google/vit-base-patch16-224
            "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "patch_size": 16,
            "image_size": 224, "hidden_act": "gelu", "num_channels": 3}
DEIT_SMALL_DISTILLED = {**VIT_BASE, "architectures": ["DeiTForImageClassificationWithTeacher"], "model_type": "deit",
                        "hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536, "qkv_bias": True}
BEIT_BASE = {**VIT_BASE, "architectures": ["BeitForImageClassification"], "model_type": "beit",  # microsoft/beit-base-patch16-224
             "use_relative_position_bias": True, "use_shared_relative_position_bias": False,
             "use_absolute_position_embeddings": False, "use_mean_pooling": True, "layer_scale_init_value": 0.1}
DINOV2_SMALL = {"architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": 384,  # facebook/dinov2-small
                "num_hidden_layers": 12, "num_attention_heads": 6, "mlp_ratio": 4, "patch_size": 14, "image_size": 518,
                "use_swiglu_ffn": False, "qkv_bias": True}
CONVNEXT_TINY = {"architectures": ["ConvNextForImageClassification"], "model_type": "convnext",  # facebook/convnext-tiny-224
                 "depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768], "patch_size": 4, "num_stages": 4,
                 "layer_scale_init_value": 1e-6}
CONVNEXTV2_TINY = {"architectures": ["ConvNextV2ForImageClassification"], "model_type": "convnextv2",  # facebook/convnextv2-tiny-1k-224
                   "depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768], "patch_size": 4, "num_stages": 4}
SWIN_TINY = {"architectures": ["SwinForImageClassification"], "model_type": "swin", "embed_dim": 96,  # microsoft/swin-tiny-...
             "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7, "patch_size": 4, "image_size": 224,
             "mlp_ratio": 4.0, "use_absolute_embeddings": False}

SWINV2_TINY = {**SWIN_TINY, "architectures": ["Swinv2ForImageClassification"], "model_type": "swinv2",  # microsoft/swinv2-tiny-...
               "window_size": 8, "image_size": 256, "pretrained_window_sizes": [0, 0, 0, 0], "qkv_bias": True}


@pytest.mark.parametrize(("config", "model"), [
    (VIT_BASE, "timm:vit_base_patch16_224"),
    ({**VIT_BASE, "patch_size": 32, "image_size": 384}, "timm:vit_base_patch32_384"),
    (DEIT_SMALL_DISTILLED, "timm:deit_small_distilled_patch16_224"),
    ({**DEIT_SMALL_DISTILLED, "architectures": ["DeiTForImageClassification"]},  # (its distillation token all the same)
     "timm:deit_small_distilled_patch16_224"),
    (BEIT_BASE, "timm:beit_base_patch16_224"),
    ({**BEIT_BASE, "architectures": ["Data2VecVisionForImageClassification"], "model_type": "data2vec-vision"},
     "timm:beit_base_patch16_224"),  # (facebook/data2vec-vision-base-ft1k: BEiT's network)
    (DINOV2_SMALL, "timm:vit_small_patch14_dinov2"),
    ({**DINOV2_SMALL, "architectures": ["Dinov2WithRegistersModel"], "model_type": "dinov2_with_registers",
      "num_register_tokens": 4}, "timm:vit_small_patch14_reg4_dinov2"),
    ({**DINOV2_SMALL, "hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24, "use_swiglu_ffn": True},
     "timm:vit_giant_patch14_dinov2"),
    (CONVNEXT_TINY, "timm:convnext_tiny"),
    ({**CONVNEXT_TINY, "depths": [3, 3, 27, 3], "hidden_sizes": [128, 256, 512, 1024]}, "timm:convnext_base"),
    (CONVNEXTV2_TINY, "timm:convnextv2_tiny"),
    ({**CONVNEXTV2_TINY, "depths": [2, 2, 6, 2], "hidden_sizes": [40, 80, 160, 320]}, "timm:convnextv2_atto"),  # (1x1 convs)
    ({**CONVNEXTV2_TINY, "depths": [3, 3, 27, 3], "hidden_sizes": [352, 704, 1408, 2816]}, "timm:convnextv2_huge"),
    (SWIN_TINY, "timm:swin_tiny_patch4_window7_224"),
    ({**SWIN_TINY, "embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "window_size": 12,
      "image_size": 384}, "timm:swin_base_patch4_window12_384"),
    (SWINV2_TINY, "timm:swinv2_tiny_window8_256"),
    ({**SWINV2_TINY, "embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "window_size": 12,
      "image_size": 192}, "timm:swinv2_base_window12_192"),  # (microsoft/swinv2-base-patch4-window12-192-22k)
    ({**SWINV2_TINY, "embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "window_size": 16,
      "pretrained_window_sizes": [12, 12, 12, 6]}, "timm:swinv2_base_window12to16_192to256"),
])
def test_a_transformers_config_names_the_timm_model(tmp_path: Path, config: dict, model: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert weights_architecture(str(tmp_path / "model.safetensors"))[1] == model


@pytest.mark.parametrize("config", [
    {**VIT_BASE, "patch_size": 14},  # (no timm vit_base_patch14_224)
    {**VIT_BASE, "intermediate_size": 2048},  # (another MLP than timm's)
    {**VIT_BASE, "image_size": [224, 224]},
    {k: v for k, v in VIT_BASE.items() if k != "patch_size"},  # (a field missing: not sure)
    {**DEIT_SMALL_DISTILLED, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
     "intermediate_size": 4096},  # (no timm deit_large)
    {**BEIT_BASE, "use_relative_position_bias": False, "use_shared_relative_position_bias": True},  # (pre-trained only)
    {**DINOV2_SMALL, "patch_size": 16},
    {**DINOV2_SMALL, "model_type": "dinov2_with_registers", "num_register_tokens": 8},
    {**CONVNEXT_TINY, "depths": [2, 2, 6, 2], "hidden_sizes": [40, 80, 160, 320]},  # (convnext_atto's: a conv MLP in timm)
    {**CONVNEXT_TINY, "depths": [[3], 3, 9, 3]},
    {**CONVNEXTV2_TINY, "num_stages": 3},
    {**CONVNEXTV2_TINY, "depths": [3, 3, 27, 3], "hidden_sizes": [256, 512, 1024, 2048]},  # (no timm convnextv2_xlarge)
    {**SWIN_TINY, "use_absolute_embeddings": True},
    {**SWIN_TINY, "model_type": "swinv2"},
    {**SWINV2_TINY, "pretrained_window_sizes": [8, 8, 8, 8]},  # (no timm swinv2_tiny_window8to8)
    {**SWINV2_TINY, "window_size": 7, "image_size": 224},  # (no timm swinv2_tiny_window7_224)
])
def test_no_timm_model_named_where_the_fields_do_not_make_one(tmp_path: Path, config: dict) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    said, model = weights_architecture(str(tmp_path))
    assert model is None and config["architectures"][0] in said

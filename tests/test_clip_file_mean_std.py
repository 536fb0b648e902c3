"""A CLIP weights file is normalised with the mean/std it was trained with, not a timm model's default tag's."""
import json

import pytest
import torch

from finetune.models import OPENAI_CLIP_MEAN_STD, normalization

TOWER = {"visual.class_embedding": torch.zeros(8), "visual.conv1.weight": torch.zeros(8, 3, 2, 2)}
OPENAI = {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_openai_clip_file_gets_openai_mean_std(tmp_path, suffix):
    path = tmp_path / f"ViT-L-14{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({**TOWER, **OPENAI}, str(path))
    else:
        torch.save({**TOWER, **OPENAI}, path)
    # timm's default tag of vit_large_patch14_clip_224 is an ImageNet fine-tune at 0.5 / 0.5
    assert normalization("timm:vit_large_patch14_clip_224")[0] == (0.5, 0.5, 0.5)
    assert normalization("timm:vit_large_patch14_clip_224", str(path)) == OPENAI_CLIP_MEAN_STD


def test_open_clip_config_beside_the_file_wins(tmp_path):
    torch.save(TOWER, tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    expected = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert normalization("timm:vit_base_patch16_clip_224", str(tmp_path / "open_clip_pytorch_model.bin")) == expected
    assert normalization("timm:vit_base_patch16_clip_224", str(tmp_path)) == expected


def test_other_files_keep_the_models_own(tmp_path):
    torch.save(TOWER, tmp_path / "tower.bin")  # an open_clip file without its config: unknown, the model's own
    assert normalization("timm:vit_large_patch14_clip_224", str(tmp_path / "tower.bin"))[0] == (0.5, 0.5, 0.5)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "r.pt")
    assert normalization("resnet18", str(tmp_path / "r.pt"))[0] == (0.485, 0.456, 0.406)

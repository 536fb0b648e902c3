"""CLIP image towers (open_clip's open_clip_pytorch_model.bin / .safetensors, OpenAI's TorchScript ViT-B-32.pt) load
into timm's vit_*_clip_* models, as timm's own conversion (_convert_openai_clip) renames them (was: "0 of N tensors
match")."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import finetune
from conftest import save_torchscript_tensors

SMALL = {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 64}  # (a small vit_base_patch32_clip_224: 2x2 patches)
PROJ = 32  # (the width of CLIP's joint image-text space: 512 for ViT-B)


def _open_clip_names(model: nn.Module) -> dict[str, torch.Tensor]:
    """A timm CLIP ViT's tensors as open_clip's CLIP saves them: the image tower under 'visual.', its projection
    into the joint space, and a (small) text tower beside it."""
    sd, out = model.state_dict(), {}
    out["visual.conv1.weight"] = sd["patch_embed.proj.weight"]
    out["visual.class_embedding"] = sd["cls_token"][0, 0]
    out["visual.positional_embedding"] = sd["pos_embed"][0]
    for p in ("weight", "bias"):
        out[f"visual.ln_pre.{p}"], out[f"visual.ln_post.{p}"] = sd[f"norm_pre.{p}"], sd[f"norm.{p}"]
        for i in range(len(model.blocks)):
            block = f"visual.transformer.resblocks.{i}."
            for theirs, ours in (("ln_1", "norm1"), ("ln_2", "norm2"), ("attn.out_proj", "attn.proj"),
                                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{block}{theirs}.{p}"] = sd[f"blocks.{i}.{ours}.{p}"]
            out[f"{block}attn.in_proj_{p}"] = sd[f"blocks.{i}.attn.qkv.{p}"]
    out["visual.proj"] = torch.randn(model.embed_dim, PROJ)
    text = {"token_embedding.weight": (100, PROJ), "positional_embedding": (16, PROJ), "ln_final.weight": (PROJ,),
            "transformer.resblocks.0.attn.in_proj_weight": (3 * PROJ, PROJ), "transformer.resblocks.0.ln_1.weight": (PROJ,),
            "text_projection": (PROJ, PROJ), "logit_scale": ()}
    out |= {k: torch.randn(shape) for k, shape in text.items()}
    return {k: v.clone().contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def source() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch32_clip_224", num_classes=0, **SMALL).eval()


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_an_open_clip_file_loads_into_timm_clip_vit(tmp_path: Path, source: nn.Module, suffix: str) -> None:
    sd = _open_clip_names(source)
    path = tmp_path / f"open_clip_pytorch_model{suffix}"
    torch.save(sd, path) if suffix == ".bin" else save_file(sd, path)

    target = timm.create_model("vit_base_patch32_clip_224", num_classes=5, **SMALL).eval()  # (a new head: 5 classes)
    report = finetune.load_weights(target, path)
    assert report.ok and not report.unexpected, report
    assert sorted(n for n, _, _ in report.mismatched) == ["head.bias", "head.weight"], report  # (CLIP's projection)
    assert any("CLIP image tower" in n and "7 tensors outside the image tower" in n for n in report.notes), report.notes
    want = source.state_dict()
    assert sorted(report.loaded) == sorted(want), report
    assert all(torch.equal(target.state_dict()[k], v) for k, v in want.items())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source.forward_features(x), target.forward_features(x))

    # sized as timm's .openai / .laion2b CLIP models (the projection as the head): what timm's own conversion gives
    from timm.models.vision_transformer import checkpoint_filter_fn

    timm_own = timm.create_model("vit_base_patch32_clip_224", num_classes=PROJ, **SMALL).eval()
    timm_own.load_state_dict(checkpoint_filter_fn(sd, timm_own))
    target = timm.create_model("vit_base_patch32_clip_224", num_classes=PROJ, **SMALL).eval()
    report = finetune.load_weights(target, path, strict=True)
    assert len(report.loaded) == len(target.state_dict()), report
    with torch.no_grad():
        assert torch.equal(timm_own(x), target(x))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # (torch.jit is deprecated)
def test_openai_clip_torchscript_file_loads_into_timm_clip_vit(tmp_path: Path, source: nn.Module) -> None:
    sd = {k: v.half() for k, v in _open_clip_names(source).items()}  # (OpenAI's files are float16)
    sd |= {"input_resolution": torch.tensor(64), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}
    save_torchscript_tensors(sd, tmp_path / "ViT-B-32.pt")

    for name, quick in (("vit_base_patch32_clip_224", False), ("vit_base_patch32_clip_quickgelu_224", True)):
        target = timm.create_model(name, num_classes=5, **SMALL).eval()
        report = finetune.load_weights(target, tmp_path / "ViT-B-32.pt")  # (read without running the archive's code)
        assert report.ok and not report.unexpected and len(report.loaded) == len(source.state_dict()), report
        assert all(torch.equal(target.state_dict()[k], v.half().float()) for k, v in source.state_dict().items())
        assert any("QuickGELU" in n for n in report.notes) is not quick, report.notes


def test_train_starts_from_an_open_clip_file(tmp_path: Path) -> None:
    """`finetune train --model timm:vit_xsmall_patch16_clip_224 --pretrained FILE`: the backbone from the file, a new
    head, CLIP's mean / std (timm's pretrained_cfg)."""
    from finetune.config import TrainConfig
    from finetune.models import normalization
    from finetune.train import build_model

    torch.manual_seed(0)
    tower = timm.create_model("vit_xsmall_patch16_clip_224", num_classes=0, img_size=32).eval()
    save_file(_open_clip_names(tower), tmp_path / "open_clip_model.safetensors")
    cfg = TrainConfig(model="timm:vit_xsmall_patch16_clip_224", pretrained=str(tmp_path / "open_clip_model.safetensors"),
                      img_size=32).resolved()
    model = build_model(cfg, 3, torch.device("cpu"), quiet=True)
    assert model.head.out_features == 3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tower.state_dict().items())
    assert normalization(cfg.model, cfg.pretrained)[0] == (0.48145466, 0.4578275, 0.40821073)

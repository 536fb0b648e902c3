"""CLIP ResNet image towers (open_clip's open_clip_pytorch_model.bin / .safetensors, OpenAI's TorchScript RN50.pt) load
into timm's resnet*_clip models, as timm's own conversion (byobnet._convert_openai_clip) renames them (was: their
names left as they are, the stem, stages and attention pool unloaded)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.models.byobnet import ByobNet, checkpoint_filter_fn, model_cfgs
from torch import nn

import finetune
from conftest import save_torchscript_tensors

PROJ = 32  # (the width of CLIP's joint image-text space: 1024 for RN50)
CONVS = {"conv1_1x1": "1", "conv2_kxk": "2", "conv3_1x1": "3"}


def _small(name: str = "resnet50_clip", **kwargs) -> ByobNet:
    """timm's ``name`` with a block or two per stage at a quarter width (every stage's first block has a shortcut)."""
    cfg = model_cfgs[name]
    cfg = replace(cfg, blocks=tuple(replace(b, d=2 if i == 1 else 1) for i, b in enumerate(cfg.blocks)), width_factor=0.25,
                  stem_chs=(16, 16, 32))
    return ByobNet(cfg, **{"img_size": 64, **kwargs}).eval()


def _open_clip_names(model: nn.Module) -> dict[str, torch.Tensor]:
    """A timm CLIP ResNet's tensors as open_clip's CLIP (its ModifiedResNet under 'visual.') saves them, the
    attention pool's projection into the joint space included, and a (small) text tower beside it."""
    out = {}
    for k, v in model.state_dict().items():
        stage, *rest = k.split(".")
        if stage == "stem":  # stem.convN.conv.weight / stem.convN.bn.*
            n, layer, leaf = rest[0][-1], rest[1], ".".join(rest[2:])
            out[f"visual.{layer}{n}.{leaf}"] = v
        elif stage == "stages":  # stages.S.B.conv1_1x1.conv.weight, stages.S.B.shortcut.conv.bn.*
            s, b, layer, kind, *leaf = rest
            if layer == "shortcut":
                out[f"visual.layer{int(s) + 1}.{b}.downsample.{0 if leaf[0] == 'conv' else 1}.{'.'.join(leaf[1:])}"] = v
            else:
                out[f"visual.layer{int(s) + 1}.{b}.{kind}{CONVS[layer]}.{'.'.join(leaf)}"] = v
        else:  # head.pos_embed, head.q/k/v/proj.*
            theirs = {"pos_embed": "positional_embedding", "q": "q_proj", "k": "k_proj", "v": "v_proj", "proj": "c_proj"}
            out["visual.attnpool." + ".".join([theirs[rest[0]], *rest[1:]])] = v
    text = {"token_embedding.weight": (100, PROJ), "positional_embedding": (16, PROJ), "ln_final.weight": (PROJ,),
            "transformer.resblocks.0.attn.in_proj_weight": (3 * PROJ, PROJ), "text_projection": (PROJ, PROJ),
            "logit_scale": ()}
    out |= {k: torch.randn(shape) for k, shape in text.items()}
    return {k: v.clone().contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def source() -> nn.Module:
    """The tower as CLIP trained it: its attention pool projecting into the PROJ-wide joint space; every tensor random
    (BN statistics too: timm zero-inits the last BN of a block)."""
    torch.manual_seed(0)
    model = _small(num_classes=PROJ)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand_like(v) + 0.5 if "running_var" in k else torch.randn_like(v) * 0.1)
    return model


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_an_open_clip_file_loads_into_timm_clip_resnet(tmp_path: Path, source: nn.Module, suffix: str) -> None:
    sd = _open_clip_names(source)
    path = tmp_path / f"open_clip_pytorch_model{suffix}"
    torch.save(sd, path) if suffix == ".bin" else save_file(sd, path)

    target = _small(num_classes=5)  # (a new head: 5 classes)
    report = finetune.load_weights(target, path)
    assert report.ok and not report.unexpected, report
    assert sorted(n for n, _, _ in report.mismatched) == ["head.proj.bias", "head.proj.weight"], report  # (CLIP's)
    assert any("CLIP ResNet image tower" in n and "6 tensors outside the image tower" in n for n in report.notes), report
    want = {k: v for k, v in source.state_dict().items() if not k.startswith("head.proj.")}
    assert sorted(report.loaded) == sorted(want), report
    assert all(torch.equal(target.state_dict()[k], v) for k, v in want.items())

    # sized as timm's .openai CLIP ResNets (the projection as the head): every tensor, what timm's own conversion gives
    timm_own = _small(num_classes=PROJ)
    timm_own.load_state_dict(checkpoint_filter_fn(sd, timm_own))
    target = _small(num_classes=PROJ)
    report = finetune.load_weights(target, path, strict=True)
    assert len(report.loaded) == len(target.state_dict()), report
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), target(x)) and torch.equal(timm_own(x), target(x))


def test_a_clip_resnet_file_loads_into_gap_model_without_its_attention_pool(tmp_path: Path, source: nn.Module) -> None:
    """timm's resnet*_clip_gap pools by average: the attention pool is left out, as timm's conversion leaves it."""
    save_file(_open_clip_names(source), tmp_path / "open_clip_model.safetensors")
    target = _small("resnet50_clip_gap", num_classes=5)
    report = finetune.load_weights(target, tmp_path / "open_clip_model.safetensors")
    assert report.ok and not report.unexpected and not report.mismatched, report
    assert sorted(report.missing) == ["head.fc.bias", "head.fc.weight"], report
    assert any("attention pool (attnpool) left out" in n for n in report.notes), report.notes


def test_a_clip_resnet_file_loads_at_another_image_size(tmp_path: Path, source: nn.Module) -> None:
    """timm's resnet*_clip have a fixed input size: built for 32 px (``finetune train --img-size 32`` does so), the
    attention pool's position embedding (1 + 2x2 positions of the file's 64 px, 1 + 1x1 here) is resampled as timm
    resamples it when a 64 px model sees 32 px images."""
    save_file(_open_clip_names(source), tmp_path / "open_clip_model.safetensors")
    target = _small(num_classes=PROJ, img_size=32)
    report = finetune.load_weights(target, tmp_path / "open_clip_model.safetensors", strict=True)
    assert [n for n, _ in report.adapted] == ["head.pos_embed"] and not report.mismatched, report
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # (torch.jit is deprecated)
def test_openai_clip_resnet_torchscript_file_loads_into_timm_clip_resnet(tmp_path: Path, source: nn.Module) -> None:
    from finetune.models import OPENAI_CLIP_MEAN_STD, clip_file_mean_std

    half = ("conv.weight", "_proj.weight", "_proj.bias", "downsample.0.weight", "conv1.weight", "conv2.weight",
            "conv3.weight")  # (OpenAI's files: convs and linears float16, BN and the position embedding float32)
    sd = {k: v.half() if k.endswith(half) else v for k, v in _open_clip_names(source).items()}
    sd |= {"input_resolution": torch.tensor(64), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}
    save_torchscript_tensors(sd, tmp_path / "RN50.pt")

    target = _small(num_classes=5)
    report = finetune.load_weights(target, tmp_path / "RN50.pt")  # (read without running the archive's code)
    assert report.ok and not report.unexpected and len(report.loaded) == len(source.state_dict()) - 2, report
    assert not any("QuickGELU" in n for n in report.notes), report.notes  # (a CLIP ResNet's tower computes ReLU)
    timm_own = checkpoint_filter_fn(sd, target)  # (the file's tensors under timm's names, float16 where they are)
    for k, v in target.state_dict().items():
        if not k.startswith("head.proj."):
            assert torch.equal(v, timm_own[k].to(v.dtype)), k
    assert clip_file_mean_std(str(tmp_path / "RN50.pt")) == OPENAI_CLIP_MEAN_STD  # (OpenAI's own file: its mean / std)


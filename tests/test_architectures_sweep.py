"""A sweep over architectures finetune was not written around: torchvision and timm families.

For each architecture, at a small image size it accepts (the model is built for that size
where it has a fixed one: ViT, LeViT, EfficientFormerV2, Swin, MaxViT):

1. ``create_model(name, 3)``: the output has 3 classes and ``head_names`` finds the
   (new) head, whatever the family calls it;
2. pretrained weights as a user loads them: the architecture's own 1000-class state dict
   saved where ``--pretrained torchvision`` / ``--pretrained timm:NAME`` look for it (the
   torch hub cache under ``TORCH_HOME``, the Hugging Face hub layout under
   ``HF_HUB_CACHE``), offline. Everything but the head loads (position embeddings, window
   relative position tables and LeViT attention biases of a model built at a smaller
   size are resampled, and reported as adapted), the head is reported mismatched, and the
   logits equal those of the same weights put in by hand with ``load_state_dict``;
3. ``--linear-probe`` (``apply_freezing``): only the head trains; an AdamW step with
   weight decay in train mode leaves every other tensor (BatchNorm statistics included)
   bitwise unchanged; ``trainable_table`` and ``param_groups(layer_decay=0.7)`` work;
4. Grad-CAM maps are finite, of the input size, and leave no gradients;
5. ``layer_summary``, ``stage_feature_maps`` and ``add_model_graph`` do not raise.

The default suite runs a representative subset; ``-m slow`` runs every torchvision
classification model and a wide sample of timm families. Nothing is downloaded.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from finetune.cam import class_activation_maps
from finetune.config import TrainConfig
from finetune.errors import ConfigError, ModelError
from finetune.features import add_model_graph, stage_feature_maps
from finetune.freeze import param_groups, split_head, trainable_table
from finetune.models import (
    aux_head_names,
    check_input_size,
    create_model,
    head_names,
    layer_summary,
    list_models,
    logits_of,
)
from finetune.train import apply_freezing
from finetune.weights import load_weights
from finetune.weights.load import resample_attention_biases, resample_rel_pos_table

timm = pytest.importorskip("timm")

# (name, image size): a representative subset, each family's smallest variant
FAST = [
    "mobilenet_v3_small",            # classifier.3, hardswish, SE
    "squeezenet1_1",                 # 1x1 conv head
    "mnasnet0_5",                    # refuses a state dict without version metadata unless create_model helps
    "googlenet",                     # auxiliary heads (aux1, aux2): new classes too, not trained by a probe
    "timm:resnet10t",
    "timm:convnext_atto",            # head.fc after a norm
    "timm:vit_tiny_patch16_224",     # built at 64 px: pos_embed resampled
    "timm:deit_tiny_distilled_patch16_224",  # two heads, averaged
    "timm:levit_128s",               # NormLinear heads (head.linear, head_dist.linear), attention_biases cropped
    "timm:pit_ti_224",               # pos_embed as a [1, D, h, w] map
    "timm:botnet26t_256",            # height_rel / width_rel tables cropped
    "timm:volo_d1_224",              # aux_head adds to the logits; NHWC pos_embed
]

SLOW_TIMM = [
    "resnet18", "resnetv2_18", "resnext26ts", "seresnext26t_32x4d", "efficientnet_b0", "tf_efficientnetv2_b0",
    "mobilenetv3_small_050", "mobilenetv4_conv_small", "ghostnetv2_100", "regnetx_002", "regnety_002",
    "convnextv2_atto", "deit_tiny_patch16_224", "beit_base_patch16_224", "eva02_tiny_patch14_224", "cait_xxs24_224",
    "xcit_nano_12_p16_224", "swinv2_cr_tiny_ns_224", "swinv2_tiny_window8_256", "maxvit_nano_rw_256",
    "maxvit_tiny_tf_224", "coatnet_nano_rw_224", "coat_tiny", "levit_conv_128s", "mobilevitv2_050",
    "efficientformer_l1", "fastvit_t8", "poolformer_s12", "poolformerv2_s12", "nfnet_l0", "dm_nfnet_f0",
    "densenet121", "inception_v3", "xception41", "tnt_s_patch16_224", "visformer_tiny", "efficientformerv2_s0",
    "mobilevit_xxs", "swin_tiny_patch4_window7_224", "ghostnet_100", "legacy_xception", "dla34", "hrnet_w18_small", "repvgg_a0",
    "cspresnet50", "cspdarknet53", "edgenext_xx_small", "tiny_vit_5m_224", "pvt_v2_b0", "focalnet_tiny_srf",
    "davit_tiny", "mambaout_femto", "mixer_b16_224", "resmlp_12_224", "crossvit_tiny_240", "twins_svt_small",
    "pit_ti_224", "volo_d1_224", "lcnet_050", "hgnetv2_b0", "rexnet_100", "mobileone_s0", "repvit_m1",
    "efficientvit_b0", "efficientvit_m0", "gcvit_xxtiny", "inception_next_tiny", "starnet_s1", "hiera_tiny_224",
    "mvitv2_tiny", "convit_tiny", "regnetz_b16", "resnest14d", "nest_tiny", "sequencer2d_s", "vit_small_patch16_224.dino",
]

NOT_SPLITTABLE = {"timm:volo_d1_224"}  # its aux head takes the tokens, its main head the class token
TOKEN_MIXING = {"timm:mixer_b16_224": ("mlp_tokens",), "timm:resmlp_12_224": ("linear_tokens",)}

SIZES = (64, 96, 128, 160, 224, 240, 256, 299, 331, 384)


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def _build(name: str) -> tuple[int, nn.Module]:
    """The smallest size of SIZES the model (built for it) takes, and the model."""
    last: Exception | None = None
    for size in SIZES:
        try:
            torch.manual_seed(0)
            model = create_model(name, 3, img_size=size)
            check_input_size(model, size)
            return size, model
        except ModelError as e:
            last = e
    raise AssertionError(f"{name}: no image size of {SIZES} works: {last}")


def _fake_cache(name: str, root: Path) -> tuple[str, dict[str, torch.Tensor]] | None:
    """Save the architecture's own ImageNet-sized state dict where the named source looks for it."""
    if name.startswith("timm:"):
        from safetensors.torch import save_file
        from timm.models import get_pretrained_cfg

        bare = name[5:]
        cfg = get_pretrained_cfg(bare)
        repo = (cfg.hf_hub_id or "") if cfg is not None else ""
        if not repo:
            return None
        repo = repo + bare if repo.endswith("/") else repo
        torch.manual_seed(1)
        ref = timm.create_model(bare, pretrained=False,  # DINO & co: no head in the file
                                num_classes=1000 if cfg.num_classes is None else cfg.num_classes)
        sd = {k: v.detach().clone().contiguous() for k, v in ref.state_dict().items()}
        snapshot = root / "hf" / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abcd"
        snapshot.mkdir(parents=True)
        save_file(sd, str(snapshot / "model.safetensors"))
        return name, sd
    from torchvision.models import get_model_weights

    try:
        weights = get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
    torch.manual_seed(1)
    ref = create_model(name, len(weights.meta.get("categories") or []) or 1000)
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    folder = root / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(sd, folder / weights.url.rsplit("/", 1)[-1])
    return "torchvision", sd


def _under(key: str, modules: list[str]) -> bool:
    return any(key == m or key.startswith(m + ".") for m in modules)


def check_architecture(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size, model = _build(name)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))

    # 1. the head
    heads = head_names(model)
    modules = dict(model.named_modules())
    model.eval()
    with torch.no_grad():
        out = logits_of(model(x))
    assert out.shape == (2, 3), f"{name}: output {tuple(out.shape)}"
    for h in heads:
        weights = [m.weight for m in modules[h].modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]
        assert weights and weights[-1].shape[0] == 3, f"{name}: head {h} is not a 3-class layer"

    # 2. pretrained weights from the caches, as --pretrained finds them
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("FINETUNE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = _fake_cache(name, tmp_path)
    if cached is not None:
        source, sd = cached
        torch.manual_seed(0)
        loaded = create_model(name, 3, img_size=size)
        report = load_weights(loaded, source)
        state = loaded.state_dict()
        head_keys = {k for k in state if _under(k, heads + aux_head_names(loaded))}
        if name in TOKEN_MIXING:  # weights over the patches of the native size: no fit at another size
            head_keys |= {k for k in state if any(t in k for t in TOKEN_MIXING[name])}
        mismatched = {n for n, _, _ in report.mismatched}
        adapted = dict(report.adapted)
        assert mismatched <= head_keys, f"{name}: backbone tensors mismatched: {sorted(mismatched - head_keys)[:4]}"
        assert mismatched & head_keys or head_keys <= set(report.missing), \
            f"{name}: the head is reported neither mismatched nor missing ({report.mismatched})"
        assert set(report.missing) <= head_keys, f"{name}: missing {report.missing[:4]}"
        not_loaded = [k for k in state if k not in head_keys and k not in report.loaded and k not in adapted]
        assert not not_loaded, f"{name}: not loaded: {not_loaded[:4]}"
        for k in adapted:
            assert not _under(k, heads), f"{name}: head tensor {k} adapted"
            assert any(w in k for w in ("pos", "rel", "attention_biases")), f"{name}: {k} adapted ({adapted[k]})"
        # the same weights by hand: every backbone tensor of the file, the resampled ones as loaded, the head copied
        torch.manual_seed(0)
        by_hand = create_model(name, 3, img_size=size)
        hand_state = by_hand.state_dict()
        own = {k: v for k, v in sd.items() if k in hand_state and k not in head_keys and k not in adapted}
        assert all(own[k].shape == hand_state[k].shape for k in own), f"{name}: shapes differ but not adapted"
        own.update({k: state[k] for k in adapted})
        own.update({k: state[k] for k in head_keys})
        by_hand.load_state_dict(own, strict=False)
        loaded.eval()
        by_hand.eval()
        with torch.no_grad():
            a, b = logits_of(loaded(x)), logits_of(by_hand(x))
        assert torch.equal(a, b), f"{name}: logits differ from the hand-loaded model by {(a - b).abs().max()}"
        if name in NOT_SPLITTABLE:
            with pytest.raises(ConfigError, match="cannot be split"):
                split_head(loaded)[0](x)
        else:
            backbone, head = split_head(loaded)
            with torch.no_grad():
                assert torch.allclose(head(backbone(x)), a, atol=1e-5, rtol=1e-4), f"{name}: split_head"

    # 3. --linear-probe: only the head trains, frozen tensors stay bitwise
    torch.manual_seed(0)
    probe = create_model(name, 3, img_size=size)
    apply_freezing(probe, TrainConfig(linear_probe=True))
    probe_heads = head_names(probe)
    trainable = {n for n, p in probe.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in probe.named_parameters() if _under(n, probe_heads)}, name
    before = {k: v.detach().clone() for k, v in probe.state_dict().items()}
    probe.train()
    opt = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=0.1, weight_decay=0.05)
    torch.nn.functional.cross_entropy(logits_of(probe(x)), torch.tensor([0, 1])).backward()
    opt.step()
    after = probe.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(_under(k, probe_heads) for k in changed), f"{name}: changed {changed[:6]}"
    assert str(trainable_table(probe))
    groups = param_groups(model, 1e-3, layer_decay=0.7, weight_decay=0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())), name

    # 4. Grad-CAM
    cam = class_activation_maps(model, x)
    assert cam.layer and cam.maps.shape == (2, size, size), f"{name}: maps {tuple(cam.maps.shape)}"
    assert torch.isfinite(cam.maps).all(), name
    assert all(p.grad is None for p in model.parameters()), f"{name}: CAM left gradients"

    # 5. summary, TensorBoard feature maps and graph
    summary = layer_summary(model, size)
    assert summary.ok, f"{name}: {summary.error}"
    assert str(summary)
    maps = stage_feature_maps(model, x)
    assert all(t.ndim == 3 and torch.isfinite(t).all() for t in maps.values()), name
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    try:
        reason = add_model_graph(writer, model, x)
    finally:
        writer.close()
    assert reason is None or isinstance(reason, str)


@pytest.mark.parametrize("name", FAST)
def test_architecture(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_architecture(name, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(dict.fromkeys(
    [n for n in list_models() if n not in FAST] + ["timm:" + n for n in SLOW_TIMM if "timm:" + n not in FAST])))
def test_architecture_full_sweep(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if name.startswith("timm:") and not timm.is_model(name[5:].split(".")[0]):
        pytest.skip(f"{name} is not in this timm version")
    check_architecture(name, tmp_path, monkeypatch)


# ----------------------------------------------------------------- resampling, on timm's own modules
def _bias_of(module: nn.Module, n: int) -> torch.Tensor:
    bias = module.get_bias() if hasattr(module, "get_bias") else module.attention_biases[:, module.attention_bias_idxs]
    return bias.reshape(-1, n, n)


def _same_offsets(small: torch.Tensor, big: torch.Tensor, side: int, big_side: int) -> bool:
    cells = list(itertools.product(range(side), range(side)))
    return all(torch.allclose(small[:, i, j], big[:, p[0] * big_side + p[1], q[0] * big_side + q[1]])
               for i, p in enumerate(cells) for j, q in enumerate(cells))


@pytest.mark.parametrize("cls", ["RelPosBias", "RelPosBiasTf"])
def test_window_tables_cropped_keep_the_bias_of_each_offset(cls: str) -> None:
    from timm.models import maxxvit

    torch.manual_seed(0)
    big, small = getattr(maxxvit, cls)((7, 7), 2), getattr(maxxvit, cls)((3, 3), 2)
    nn.init.normal_(big.relative_position_bias_table)
    shape = tuple(small.relative_position_bias_table.shape)
    table, _ = resample_rel_pos_table(big.relative_position_bias_table.data, shape if len(shape) == 3 else shape[0])
    assert tuple(table.shape) == shape
    small.relative_position_bias_table.data = table
    with torch.no_grad():
        assert _same_offsets(_bias_of(small, 9), _bias_of(big, 49), 3, 7)


def test_levit_attention_biases_cropped_keep_the_bias_of_each_offset() -> None:
    from timm.models.levit import Attention

    torch.manual_seed(0)
    big, small = Attention(16, 8, 2, 2, resolution=5), Attention(16, 8, 2, 2, resolution=3)
    nn.init.normal_(big.attention_biases)
    small.attention_biases.data = resample_attention_biases(big.attention_biases.data, 9)[0]
    with torch.no_grad():
        assert _same_offsets(_bias_of(small, 9), _bias_of(big, 25), 3, 5)
    grown, how = resample_attention_biases(small.attention_biases.data, 25)
    assert grown.shape == (2, 25) and "bicubic" in how and torch.isfinite(grown).all()
    assert math.isclose(float(grown[0, 0]), float(small.attention_biases.detach()[0, 0]), rel_tol=0.5, abs_tol=0.5)


def test_no_download_env_is_respected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An uncached timm source offline is a WeightsError naming the file, never a download."""
    from finetune.errors import WeightsError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("FINETUNE_OFFLINE", "1")
    with pytest.raises(WeightsError, match="model.safetensors"):
        load_weights(create_model("timm:resnet10t", 3), "timm:resnet10t")
    assert not os.listdir(tmp_path)


def test_size_errors_name_the_size_the_model_was_designed_for() -> None:
    with pytest.raises(ModelError, match=r"vit_b_16 cannot be built for 100x100 .* use img_size=224 \(--img-size\)"):
        create_model("vit_b_16", 3, img_size=100)
    with pytest.raises(ModelError, match=r"cannot take 40x40 images .* use img_size=224 \(--img-size\), the size it was designed"):
        check_input_size(create_model("timm:levit_128s", 3, img_size=40), 40)


def test_mnasnet_takes_a_state_dict_without_version_metadata() -> None:
    """safetensors files, finetune's checkpoints and load_weights carry no ``_metadata``."""
    model = create_model("mnasnet0_5", 3)
    check_input_size(model, 64)  # restores its buffers
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    assert not hasattr(plain, "_metadata")
    assert model.load_state_dict(plain).missing_keys == []
    assert load_weights(create_model("mnasnet0_5", 3), plain).ok


@pytest.mark.parametrize("arch", ["googlenet", "inception_v3"])
def test_auxiliary_heads_sized_for_new_classes_are_not_reported_as_random_backbone(arch: str, capsys) -> None:
    """ImageNet weights into a 3-class model: the aux heads' last layers are new like the main head's."""
    from finetune import TrainConfig, create_model, load_weights
    from finetune.train import check_pretrained_fit

    model = create_model(arch, num_classes=3)
    report = load_weights(model, create_model(arch, num_classes=1000).state_dict())
    assert report.mismatched  # the heads (main and auxiliary) are sized for 1000 classes
    check_pretrained_fit(model, report, TrainConfig(model=arch))
    assert "keep their random values" not in capsys.readouterr().err

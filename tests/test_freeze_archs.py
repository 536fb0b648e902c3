"""The freezing API (finetune.freeze) on real architectures, not only ResNet.

Every torchvision / timm family the trainer offers is built without weights,
small inputs (64 px, Inception v3 at its minimum of 299 px with its auxiliary
head), a few real optimizer steps. Per architecture:

1. ``freeze_until`` / ``freeze_all_but`` freeze exactly what they name; frozen
   parameters and the BatchNorm statistics of frozen parts stay bitwise
   unchanged under ``model.train()`` with SGD-momentum and AdamW(weight_decay);
2. the head is found (``fc``, ``classifier``, ``classifier.N``, ``heads.head``,
   ``head``, timm's ``get_classifier()``, DeiT's two heads) and a linear probe
   on cached features equals training the head behind the frozen backbone;
3. ``param_groups(layer_decay=...)`` steps from the stem to the head in
   registration order (timm models: exactly timm's layer ids), holds every
   trainable parameter once, and keeps biases, norm weights and token /
   position embeddings out of weight decay;
4. ``trainable_table`` adds up to the model's parameter count;
5. ``audit`` is clean on a correct setup. Auxiliary heads (GoogLeNet ``aux1`` /
   ``aux2``, Inception ``AuxLogits``) run in train mode but get no gradient
   from a loss on the main logits: the audit reports them (the trainer prints
   it as a warning), so a clean setup freezes them; in eval mode they do not
   run and are not reported. DeiT's distillation head is used (the model
   averages both heads) unless ``distilled_training`` is on.

Models keep their dropout and stochastic depth: in frozen parts the freeze
policy switches them off, so a live linear probe in ``train()`` mode and one on
cached (eval-mode) features see the same features and compare bitwise.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from finetune.freeze import (
    _head_name,
    audit,
    bn_train_mode,
    extract_features,
    freeze,
    freeze_all_but,
    freeze_until,
    param_groups,
    split_head,
    train_head_on_features,
    trainable_table,
)
from finetune.models import aux_head_names, head_name, head_names, logits_of

NUM_CLASSES = 3
tv = torchvision.models


@dataclass(frozen=True)
class Arch:
    build: Callable[[], nn.Module]
    heads: tuple[str, ...]  # what split_head / head_names must find, main head first
    mid: str  # a module in the middle of the network, for freeze_until
    size: int = 64  # input side
    forward: bool = True  # False: too slow on CPU for this file; structure checks only


def _timm(name: str, **kw: object) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kw)


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(lambda: tv.resnet18(num_classes=NUM_CLASSES), ("fc",), "layer3"),
    "resnet18_groupnorm": Arch(lambda: tv.resnet18(num_classes=NUM_CLASSES, norm_layer=lambda c: nn.GroupNorm(8, c)),
                               ("fc",), "layer3"),
    "mobilenet_v3_small": Arch(lambda: tv.mobilenet_v3_small(num_classes=NUM_CLASSES), ("classifier.3",), "features.7"),
    "efficientnet_b0": Arch(lambda: tv.efficientnet_b0(num_classes=NUM_CLASSES), ("classifier.1",), "features.5"),
    "convnext_tiny": Arch(lambda: tv.convnext_tiny(num_classes=NUM_CLASSES), ("classifier.2",), "features.5"),
    "vit_small": Arch(lambda: tv.VisionTransformer(32, 8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
                                                   num_classes=NUM_CLASSES),
                      ("heads.head",), "encoder.layers.encoder_layer_1", size=32),
    "vit_b_16": Arch(lambda: tv.vit_b_16(num_classes=NUM_CLASSES), ("heads.head",), "encoder.layers.encoder_layer_6",
                     size=224, forward=False),
    "swin_t": Arch(lambda: tv.swin_t(num_classes=NUM_CLASSES), ("head",), "features.5"),
    "densenet121": Arch(lambda: tv.densenet121(num_classes=NUM_CLASSES), ("classifier",), "features.denseblock3"),
    "regnet_y_400mf": Arch(lambda: tv.regnet_y_400mf(num_classes=NUM_CLASSES), ("fc",), "trunk_output.block3"),
    "squeezenet1_0": Arch(lambda: tv.squeezenet1_0(num_classes=NUM_CLASSES), ("classifier.1",), "features.7"),
    "googlenet": Arch(lambda: tv.googlenet(num_classes=NUM_CLASSES, init_weights=False), ("fc",), "inception4c"),
    "inception_v3": Arch(lambda: tv.inception_v3(num_classes=NUM_CLASSES, init_weights=False), ("fc",), "Mixed_7a",
                         size=299),
    "timm_resnet18": Arch(_timm("resnet18"), ("fc",), "layer3"),
    "timm_vit_tiny": Arch(_timm("vit_tiny_patch16_224", img_size=64), ("head",), "blocks.6"),
    "timm_convnext_atto": Arch(_timm("convnext_atto"), ("head.fc",), "stages.2"),
    "timm_efficientnet_b0": Arch(_timm("efficientnet_b0"), ("classifier",), "blocks.4"),
    "timm_deit_distilled": Arch(_timm("deit_tiny_distilled_patch16_224", img_size=64), ("head", "head_dist"), "blocks.6"),
    "timm_mobilenetv3": Arch(_timm("mobilenetv3_small_100"), ("classifier",), "blocks.3"),
}
TRAINED = [name for name, a in ARCHS.items() if a.forward]
# nn.MultiheadAttention takes torch's fused fast path in eval mode without grad (feature caching) but not in
# train mode (a live probe): the features then differ in the last bits, so these compare with a tolerance
MHA_FAST_PATH = {"vit_small", "vit_b_16"}
_BUILT: dict[str, nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Bitwise comparisons need one thread count throughout (and tiny models run faster on one)."""


def build(name: str) -> nn.Module:
    """A fresh copy of the architecture (built once per session, seeded)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = ARCHS[name].build()
    return copy.deepcopy(_BUILT[name])


def images(name: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    side = ARCHS[name].size
    return torch.randn(n, 3, side, side, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trainable(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def under(name: str, modules: list[str] | tuple[str, ...]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def head_params(model: nn.Module, heads: tuple[str, ...]) -> list[str]:
    return [n for n, _ in model.named_parameters() if under(n, heads)]


def step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(logits_of(model(x)), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


# --------------------------------------------------------------------------- 1, 4, 5: freeze_until
@pytest.mark.parametrize("name", TRAINED)
def test_freeze_until_keeps_the_prefix_and_its_bn_statistics_bitwise_unchanged(name):
    spec = ARCHS[name]
    m = build(name)
    names = [n for n, _ in m.named_parameters()]
    first = next(i for i, n in enumerate(names) if under(n, (spec.mid,)))
    frozen = freeze_until(m, spec.mid)
    assert frozen == names[:first]  # everything registered before the module, nothing after it
    assert trainable(m) == names[first:]
    aux = aux_head_names(m)
    if aux:  # a clean setup: auxiliary heads that no loss uses are frozen (GoogLeNet's sit after the module)
        freeze(m, *aux)

    table = trainable_table(m)  # 4. the table adds up
    assert table.total == sum(p.numel() for p in m.parameters())
    assert table.trainable == sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert sum(r.frozen for r in table.rows) == table.frozen > 0

    frozen_bn = [n for n, mod in m.named_modules() if isinstance(mod, _BatchNorm)
                 and not any(p.requires_grad for p in mod.parameters())]
    live_bn = [n for n, mod in m.named_modules() if isinstance(mod, _BatchNorm) and n not in frozen_bn]
    before = snapshot(m)
    sgd = torch.optim.SGD(param_groups(m, 0.01, weight_decay=0.05), momentum=0.9)
    adamw = torch.optim.AdamW(param_groups(m, 1e-3, weight_decay=0.05))
    m.train()
    bn_train_mode(m)
    x, y = images(name, 2)
    for i, opt in enumerate((sgd, sgd, adamw, adamw)):
        loss = nn.functional.cross_entropy(logits_of(m(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if i == 0:
            assert audit(m, opt) == []  # 5. a clean setup: nothing to report
        opt.step()

    after = m.state_dict()
    for n, p in m.named_parameters():
        if not p.requires_grad:
            assert torch.equal(after[n], before[n]) and p.grad is None, f"frozen {n} changed"
        else:
            assert not torch.equal(after[n], before[n]), f"{n} did not train"
    for bn in frozen_bn:  # statistics too, although model.train() was on
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(after[f"{bn}.{k}"], before[f"{bn}.{k}"]), f"{bn}.{k} drifted"
    if live_bn:
        assert any(not torch.equal(after[f"{bn}.running_mean"], before[f"{bn}.running_mean"]) for bn in live_bn)


# --------------------------------------------------------------------------- 2: head, split, linear probe
@pytest.mark.parametrize("name", list(ARCHS))
def test_head_is_found_whatever_the_family_calls_it(name):
    spec = ARCHS[name]
    m = build(name)
    assert head_names(m) == list(spec.heads)
    assert _head_name(m) == head_name(m) == spec.heads[0]
    classifier = getattr(m, "get_classifier", None)
    if classifier is not None:  # timm: get_classifier() names them (a tuple for distilled models)
        got = classifier()
        assert [m.get_submodule(h) for h in spec.heads] == list(got if isinstance(got, tuple) else [got])
    for h in spec.heads:
        head = m.get_submodule(h)
        assert getattr(head, "out_features", getattr(head, "out_channels", None)) == NUM_CLASSES
    assert not any(under(h, tuple(aux_head_names(m))) for h in spec.heads)


@pytest.mark.parametrize("name", TRAINED)
def test_split_head_shares_parameters_and_reproduces_the_model(name):
    m = build(name).eval()
    backbone, head = split_head(m)
    x, _ = images(name, 2, seed=3)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (2, NUM_CLASSES)
        assert torch.equal(head(backbone(x)), out)
    model_ids = {id(p) for p in m.parameters()}
    head_ids = {id(p) for p in head.parameters()}
    assert head_ids == {id(m.get_parameter(n)) for n in head_params(m, ARCHS[name].heads)}
    assert {id(p) for p in backbone.parameters()} == model_ids - head_ids
    assert all(any(mod is m.get_submodule(h) for mod in head.modules()) for h in ARCHS[name].heads)


@pytest.mark.parametrize("name", TRAINED)
def test_linear_probe_on_cached_features_equals_training_behind_the_frozen_backbone(name):
    spec = ARCHS[name]
    n_images, batch = (4, 2) if spec.size > 64 else (8, 4)
    x, y = images(name, n_images, seed=1)
    orders = [torch.randperm(n_images, generator=torch.Generator().manual_seed(e)) for e in range(2)]

    live, cached = build(name), build(name)
    for m in (live, cached):
        frozen = freeze_all_but(m, *spec.heads)
        assert trainable(m) == head_params(m, spec.heads)
        assert sorted(frozen + trainable(m)) == sorted(n for n, _ in m.named_parameters())
    table = trainable_table(live)
    assert table.total == sum(p.numel() for p in live.parameters())
    assert table.trainable == sum(live.get_parameter(n).numel() for n in head_params(live, spec.heads))

    start = snapshot(live)
    opt = torch.optim.SGD(param_groups(live, 0.5, weight_decay=1e-3), momentum=0.9)
    for order in orders:  # the whole model in train() mode: frozen BatchNorms keep eval statistics
        live.train()
        bn_train_mode(live)
        for idx in order.split(batch):
            step(live, opt, x[idx], y[idx])
    changed = {k for k, v in live.state_dict().items() if not torch.equal(v, start[k])}
    assert changed == set(head_params(live, spec.heads))  # weights, statistics: only the head moved

    backbone, head = split_head(cached)
    feats, labels = extract_features(backbone, [(x[i : i + batch], y[i : i + batch]) for i in range(0, n_images, batch)])
    assert len(feats) == n_images and not feats.requires_grad and torch.equal(labels, y)
    opt = torch.optim.SGD(param_groups(cached, 0.5, weight_decay=1e-3), momentum=0.9)
    for order in orders:
        train_head_on_features(head, feats, labels, opt, batch_size=batch, order=order)
    for n in head_params(live, spec.heads):
        if name in MHA_FAST_PATH:
            assert torch.allclose(cached.get_parameter(n), live.get_parameter(n), rtol=0, atol=1e-5), n
        else:
            assert torch.equal(cached.get_parameter(n), live.get_parameter(n)), n


# --------------------------------------------------------------------------- 3: parameter groups
def _lr_by_name(groups: list[dict]) -> dict[str, float]:
    lr: dict[str, float] = {}
    for g in groups:
        for n in g["param_names"]:
            assert n not in lr, f"{n} is in two groups"
            lr[n] = g["lr"]
    return lr


def _no_decay_expected(model: nn.Module) -> set[str]:
    """Biases, every norm layer's parameters, 1-D tensors, and what the model (timm) lists."""
    norms = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)
    out = {n for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith(".bias")}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, norms):
            out |= {f"{mod_name}.{n}" for n, _ in mod.named_parameters(recurse=False)}
    listed = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    out |= {n for n, _ in model.named_parameters() if n in listed}
    out |= {n for n, _ in model.named_parameters() if n in ("class_token", "encoder.pos_embedding")}  # torchvision ViT
    return out


@pytest.mark.parametrize("name", list(ARCHS))
def test_layer_decay_steps_from_stem_to_head_and_no_decay_covers_norms_biases_tokens(name):
    spec = ARCHS[name]
    m = build(name)
    groups = param_groups(m, 1.0, layer_decay=0.7, weight_decay=0.05)
    names = [n for n, _ in m.named_parameters()]
    lr = _lr_by_name(groups)
    assert sorted(lr) == sorted(names)  # every trainable parameter, exactly once
    assert sum(len(g["params"]) for g in groups) == len(names)
    seq = [lr[n] for n in names]
    assert all(a <= b for a, b in zip(seq, seq[1:], strict=False)), "layer decay is not monotonic from stem to head"
    assert seq[0] < 1.0 and max(seq) == 1.0
    assert all(lr[n] == 1.0 for n in head_params(m, spec.heads))  # the head is last
    depths = {round(math.log(v) / math.log(0.7)) for v in seq}
    assert len(depths) >= 4, f"only {len(depths)} depths"

    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    expected_no_decay = _no_decay_expected(m)
    assert not decayed & expected_no_decay, sorted(decayed & expected_no_decay)[:5]
    weights = {f"{mn}.weight" for mn, mod in m.named_modules()
               if isinstance(mod, nn.Linear | nn.Conv2d) and mod.weight.ndim > 1}
    assert weights <= decayed

    if spec.forward:  # everything trainable (but unused aux heads), one real AdamW step: the audit is clean
        if aux_head_names(m):
            freeze(m, *aux_head_names(m))
            groups = param_groups(m, 1.0, layer_decay=0.7, weight_decay=0.05)
        opt = torch.optim.AdamW(groups)
        m.train()
        x, y = images(name, 2, seed=2)
        nn.functional.cross_entropy(logits_of(m(x)), y).backward()
        assert audit(m, opt) == []
        opt.step()


@pytest.mark.parametrize("name", [n for n in ARCHS if n.startswith("timm_")])
def test_timm_layer_decay_matches_timm(name):
    from timm.optim import param_groups_layer_decay

    m = build(name)
    ours = {n: g["lr_mult"] for g in param_groups(m, 1.0, layer_decay=0.7) for n in g["param_names"]}
    theirs = param_groups_layer_decay(m, weight_decay=0.0, layer_decay=0.7)
    by_param = {id(p): g["lr_scale"] for g in theirs for p in g["params"]}
    for n, p in m.named_parameters():
        assert ours[n] == pytest.approx(by_param[id(p)]), n


@pytest.mark.parametrize(("name", "stem", "block"), [
    ("vit_small", ("class_token", "conv_proj.", "encoder.pos_embedding"), "encoder.layers.encoder_layer_{}."),
    ("vit_b_16", ("class_token", "conv_proj.", "encoder.pos_embedding"), "encoder.layers.encoder_layer_{}."),
    ("timm_vit_tiny", ("cls_token", "pos_embed", "patch_embed."), "blocks.{}."),
    ("timm_deit_distilled", ("cls_token", "dist_token", "pos_embed", "patch_embed."), "blocks.{}."),
])
def test_vit_layer_decay_like_timm_embeddings_then_blocks_then_head(name, stem, block):
    m = build(name)
    mult = {n: g["lr_mult"] for g in param_groups(m, 1.0, layer_decay=0.5) for n in g["param_names"]}
    top = round(math.log(min(mult.values()), 0.5))
    depth = {n: top - round(math.log(v, 0.5)) for n, v in mult.items()}
    assert {depth[n] for n in depth if n.startswith(stem)} == {0}
    blocks = sorted({int(n[len(block.format("")):].split(".")[0]) for n in depth if n.startswith(block.format(""))})
    for i in blocks:
        assert {depth[n] for n in depth if n.startswith(block.format(i))} == {i + 1}, f"block {i}"
    assert all(depth[n] == top for n in head_params(m, ARCHS[name].heads))
    assert top >= len(blocks) + 1


# --------------------------------------------------------------------------- 5: heads the loss does not use
def test_audit_reports_aux_heads_that_run_without_gradient_but_not_in_eval_mode():
    m = build("googlenet")
    aux = aux_head_names(m)
    assert aux == ["aux1", "aux2"]
    opt = torch.optim.SGD(param_groups(m, 0.1), momentum=0.9)
    x, y = images("googlenet", 2)

    m.train()  # aux heads run; the loss on the main logits leaves them without gradient
    nn.functional.cross_entropy(logits_of(m(x)), y).backward()
    (finding,) = audit(m, opt)
    assert finding.kind == "no_grad_after_backward" and finding.names == head_params(m, tuple(aux))

    opt.zero_grad(set_to_none=True)
    m.eval()  # aux heads do not run at all: nothing to report
    nn.functional.cross_entropy(logits_of(m(x)), y).backward()
    assert audit(m, opt) == []

    freeze(m, *aux)  # the clean train-mode setup
    opt = torch.optim.SGD(param_groups(m, 0.1), momentum=0.9)
    m.train()
    nn.functional.cross_entropy(logits_of(m(x)), y).backward()
    assert audit(m, opt) == []


def test_deit_distillation_head_is_used_unless_distilled_training():
    m = build("timm_deit_distilled").train()
    opt = torch.optim.AdamW(param_groups(m, 1e-3, weight_decay=0.05))
    x, y = images("timm_deit_distilled", 2)
    nn.functional.cross_entropy(logits_of(m(x)), y).backward()  # the model averages head and head_dist
    assert audit(m, opt) == []

    opt.zero_grad(set_to_none=True)
    m.set_distilled_training(True)  # returns (head, head_dist): a loss on the first ignores head_dist
    nn.functional.cross_entropy(logits_of(m(x)), y).backward()
    (finding,) = audit(m, opt)
    assert finding.kind == "no_grad_after_backward" and finding.names == ["head_dist.weight", "head_dist.bias"]

"""Freeze by pattern, BatchNorm policy, parameter groups, audit, linear probe (finetune.freeze)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from finetune.checkpoint import load_optimizer_state_by_name, optimizer_state_by_name
from finetune.errors import ConfigError
from finetune.freeze import (
    AUDIT_KINDS,
    add_param_group_for,
    apply_bn_policy,
    audit,
    bn_train_mode,
    extract_features,
    format_findings,
    freeze,
    freeze_all_but,
    freeze_until,
    param_groups,
    set_bn_policy,
    split_head,
    train_head_on_features,
    trainable_table,
    unfreeze,
)

NUM_CLASSES = 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread than on an oversubscribed pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=NUM_CLASSES)


def batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 3, *, set_to_none: bool = True) -> None:
    model.train()
    for i in range(steps):
        x, y = batch(seed=i)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=set_to_none)
        loss.backward()
        opt.step()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- patterns
def test_patterns_match_module_and_parameter_names():
    m = resnet()
    layer4 = {n for n, _ in m.named_parameters() if n.startswith("layer4.")}
    assert set(freeze(m, "layer4")) == layer4
    assert trainable_names(m) == {n for n, _ in m.named_parameters()} - layer4
    unfreeze(m)
    assert set(freeze(m, "layer4.*")) == layer4
    unfreeze(m)
    bn_params = {n for n, _ in m.named_parameters() if ".bn" in n}
    assert set(freeze(m, "*.bn*")) == bn_params and "bn1.weight" not in bn_params
    unfreeze(m)
    assert freeze(m, "fc") == ["fc.weight", "fc.bias"]
    assert freeze(m, "layer1.0.conv1.weight") == ["layer1.0.conv1.weight"]


def test_freeze_without_patterns_freezes_everything_and_unfreeze_reverts():
    m = resnet()
    freeze(m)
    assert trainable_names(m) == set()
    assert len(unfreeze(m)) == len(list(m.parameters()))
    assert trainable_names(m) == {n for n, _ in m.named_parameters()}


@pytest.mark.parametrize("pattern", ["layer5", "layr4.*", "fc.weights"])
def test_unmatched_pattern_is_an_error_listing_close_names(pattern):
    m = resnet()
    with pytest.raises(ConfigError) as err:
        freeze(m, "fc", pattern)
    msg = str(err.value)
    assert repr(pattern) in msg and "did you mean" in msg
    assert ("layer4" in msg) or ("fc.weight" in msg)
    assert trainable_names(m) == {n for n, _ in m.named_parameters()}  # nothing half-done


def test_freeze_all_but_and_freeze_until():
    m = resnet()
    frozen = freeze_all_but(m, "fc")
    assert trainable_names(m) == {"fc.weight", "fc.bias"}
    assert len(frozen) == len(list(m.parameters())) - 2
    with pytest.raises(ConfigError):
        freeze_all_but(m)

    m = resnet()
    names = freeze_until(m, "layer4")
    assert names[0] == "conv1.weight" and names[-1].startswith("layer3.")
    assert trainable_names(m) == {n for n, _ in m.named_parameters() if n.startswith(("layer4.", "fc."))}
    with pytest.raises(ConfigError, match="layer4"):
        freeze_until(m, "layer44")


def test_wrapped_models_match_without_prefixes():
    m = resnet()
    wrapped = nn.DataParallel(m)  # names carry "module." (no GPU needed to wrap)
    assert freeze(wrapped, "module.layer4") == freeze(m, "layer4")
    assert freeze_all_but(torch.compile(m), "fc")[0] == "conv1.weight"  # OptimizedModule: "_orig_mod."
    assert trainable_names(m) == {"fc.weight", "fc.bias"}
    groups = param_groups(wrapped, 0.1)
    assert groups[0]["param_names"] == ["fc.weight", "fc.bias"]
    opt = torch.optim.SGD(groups)
    assert audit(wrapped, opt, after_backward=False) == []


# --------------------------------------------------------------------------- frozen means unchanged
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda g: torch.optim.SGD(g, momentum=0.9, weight_decay=1e-2),
        lambda g: torch.optim.AdamW(g, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "adamw-wd"],
)
def test_frozen_parameters_are_bitwise_unchanged_and_get_no_grad(make_opt):
    m = resnet()
    freeze_until(m, "layer4")
    before = snapshot(m)
    opt = make_opt(param_groups(m, 0.05, weight_decay=1e-2))
    train_steps(m, opt, steps=3)
    after = m.state_dict()
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert not torch.equal(after[n], before[n]), f"{n} did not train"
        else:
            assert torch.equal(after[n], before[n]), f"frozen {n} changed"
            assert p.grad is None
    frozen_part = [n for n in after if n.startswith(("conv1.", "bn1.", "layer1.", "layer2.", "layer3."))]
    assert any("running_var" in n for n in frozen_part)
    for n in frozen_part:  # incl. BN running stats: unchanged although model.train() was on
        assert torch.equal(after[n], before[n]), f"{n} drifted"
    assert not torch.equal(after["layer4.0.bn1.running_mean"], before["layer4.0.bn1.running_mean"])


def test_freezing_mid_training_drops_stale_grads_so_momentum_cannot_move_frozen_weights():
    m = resnet()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)  # over everything
    train_steps(m, opt, steps=2)
    freeze(m, "layer1")
    before = snapshot(m)
    train_steps(m, opt, steps=2, set_to_none=False)  # would zero (not drop) stale grads: momentum would move them
    assert all(torch.equal(m.state_dict()[n], before[n]) for n in before if n.startswith("layer1."))
    # the audit still points at the mistake
    assert [f.kind for f in audit(m, opt)] == ["frozen_in_optimizer"]


# --------------------------------------------------------------------------- BatchNorm policy
def bn_state(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix) and (".bn" in k or "downsample.1" in k)}


def test_bn_frozen_policy_keeps_eval_mode_under_train_without_swapping_types():
    m = resnet()
    types = {n: type(x) for n, x in m.named_modules()}
    keys = list(m.state_dict())
    freeze_until(m, "layer4")
    m.train()
    assert bn_train_mode(m)[:2] == ["bn1", "layer1.0.bn1"]
    assert not m.layer1[0].bn1.training and m.layer4[0].bn1.training
    assert {n: type(x) for n, x in m.named_modules()} == types and list(m.state_dict()) == keys
    m.eval()
    m.train()  # the hook alone (no bn_train_mode call) puts them back in eval before their forward
    assert m.layer2[0].bn1.training
    m(batch()[0])
    assert not m.layer2[0].bn1.training and m.layer4[1].bn2.training


def test_bn_policy_survives_deepcopy_and_state_dict_round_trip():
    m = resnet()
    freeze_all_but(m, "fc")
    twin = copy.deepcopy(m)  # e.g. an EMA copy
    twin.train()
    before = snapshot(twin)
    twin(batch()[0])
    assert all(torch.equal(twin.state_dict()[k], v) for k, v in before.items())
    assert set(twin.state_dict()) == set(resnet().state_dict())
    freeze(twin)
    with pytest.raises(ConfigError, match="nothing to train"):
        param_groups(twin, 0.1)


def test_bn_eval_policy_fixes_statistics_but_trains_affine():
    m = resnet()
    freeze_until(m, "layer4")
    modes = set_bn_policy(m, "eval")
    assert modes["layer1.0.bn1"] == "eval" and modes["layer4.0.bn1"] == "train"
    assert m.layer1[0].bn1.weight.requires_grad and not m.layer1[0].conv1.weight.requires_grad
    before = snapshot(m)
    train_steps(m, torch.optim.SGD(param_groups(m, 0.1), momentum=0.9))
    after = m.state_dict()
    assert torch.equal(after["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])
    assert torch.equal(after["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])
    assert not torch.equal(after["layer1.0.bn1.weight"], before["layer1.0.bn1.weight"])
    set_bn_policy(m, "frozen")  # back: affine frozen again
    assert not m.layer1[0].bn1.weight.requires_grad


def test_bn_train_policy_lets_statistics_move_but_not_frozen_affine():
    m = resnet()
    freeze_until(m, "layer4")
    set_bn_policy(m, "train")
    before = snapshot(m)
    train_steps(m, torch.optim.SGD(param_groups(m, 0.1)))
    after = m.state_dict()
    assert not torch.equal(after["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])
    assert torch.equal(after["layer1.0.bn1.weight"], before["layer1.0.bn1.weight"])
    with pytest.raises(ConfigError, match="frozen, eval, train"):
        set_bn_policy(m, "off")


def test_unfreezing_returns_bn_to_training_and_policy_follows_later_freezes():
    m = resnet()
    set_bn_policy(m, "eval")
    freeze(m, "layer1")
    assert m.layer1[0].bn1.weight.requires_grad  # eval: affine stays trainable
    m.train()
    assert bn_train_mode(m) == ["layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1", "layer1.1.bn2"]
    assert not m.layer1[0].bn1.training
    unfreeze(m, "layer1")
    assert m.layer1[0].bn1.training
    assert apply_bn_policy(m)["layer1.0.bn1"] == "train"


def stochastic_net() -> nn.Module:
    """A backbone with dropout and stochastic depth (as ConvNeXt/ViT blocks have), then a head with its own dropout."""
    from torchvision.ops import StochasticDepth

    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), StochasticDepth(0.5, "row"))
    return nn.Sequential(nn.Sequential(nn.Linear(4, 8), block), nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 2)))


@pytest.mark.parametrize("policy", ["frozen", "eval"])
def test_frozen_parts_run_without_dropout_so_features_equal_eval_features(policy):
    m = stochastic_net()
    set_bn_policy(m, policy)
    freeze_all_but(m, "1.1")
    x = torch.randn(16, 4)
    backbone = m[0]
    m.eval()
    want = backbone(x)
    m.train()
    bn_train_mode(m)
    assert torch.equal(backbone(x), want)  # the frozen backbone is deterministic in train()
    assert not m[1][0].training  # and so is the dropout before the head: only frozen layers feed it
    unfreeze(m, "0.1")  # a trainable block: dropout after it follows the model again, before it stays off
    assert m[0][1][1].training and m[1][0].training and not torch.equal(backbone(x), want)


def test_frozen_parts_keep_dropout_under_the_train_policy():
    m = stochastic_net()
    set_bn_policy(m, "train")
    freeze_all_but(m, "1.1")
    m.train()
    bn_train_mode(m)
    x = torch.randn(16, 4)
    assert m[0][1][1].training and not torch.equal(m[0](x), m[0](x))


def test_bn_policy_covers_timm_batchnormact_and_affine_free_bn():
    from timm.layers import BatchNormAct2d

    m = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4), nn.BatchNorm2d(4, affine=False), nn.Conv2d(4, 2, 1))
    freeze(m, "0", "1", "2")
    m.train()
    before = snapshot(m)
    m(torch.randn(2, 3, 8, 8))
    assert all(torch.equal(m.state_dict()[k], v) for k, v in before.items())
    assert apply_bn_policy(m) == {"1": "frozen", "2": "frozen"}


# --------------------------------------------------------------------------- table
def test_trainable_table_counts_and_bn_modes():
    m = resnet()
    freeze_until(m, "layer4")
    t = trainable_table(m)
    rows = {r.block: r for r in t.rows}
    assert list(rows) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert t.total == sum(p.numel() for p in m.parameters())
    assert t.trainable == sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert rows["layer3"].trainable == 0 and rows["layer3"].bn == "frozen"
    assert rows["layer4"].frozen == 0 and rows["layer4"].bn == "train"
    assert rows["conv1"].bn == "-"
    freeze(m, "layer4.1")
    assert trainable_table(m).rows[5].bn == "mixed (train 3, frozen 2)"
    text = str(t)
    assert text.splitlines()[1].split() == ["block", "type", "params", "trainable", "frozen", "bn"]
    assert f"{t.total:,}" in text.splitlines()[-1]
    assert json.loads(json.dumps(t.to_dict()))["rows"][6]["block"] == "fc"


def test_trainable_table_has_rows_for_root_parameters():
    vit = torchvision.models.VisionTransformer(32, 8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3)
    freeze_all_but(vit, "heads")
    t = trainable_table(vit)
    assert [r.block for r in t.rows] == ["class_token", "conv_proj", "encoder", "heads"]
    assert t.trainable == 16 * 3 + 3


# --------------------------------------------------------------------------- parameter groups
def test_param_groups_hold_each_trainable_parameter_once_with_no_decay_split():
    m = resnet()
    freeze_until(m, "layer3")
    groups = param_groups(m, 0.1, weight_decay=5e-4)
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(trainable_names(m)) and len(names) == len(set(names))
    by = {g["name"]: g for g in groups}
    assert set(by) == {"default", "default/no_decay"}
    assert all(n.endswith(".weight") and n.count("bn") == 0 and "downsample.1" not in n for n in by["default"]["param_names"])
    assert "fc.bias" in by["default/no_decay"]["param_names"] and "layer3.0.bn1.weight" in by["default/no_decay"]["param_names"]
    assert by["default"]["weight_decay"] == 5e-4 and by["default/no_decay"]["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups)  # AdamW's default decay (0.01) must not reach biases / norms
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    assert param_groups(m, 0.1)[0]["name"] == "default" and len(param_groups(m, 0.1)) == 1


def test_param_groups_no_decay_for_layernorm_by_type_and_name():
    net = nn.Sequential()
    net.add_module("proj", nn.Linear(4, 4))
    net.add_module("ln", nn.LayerNorm(4))
    net.add_module("out", nn.Linear(4, 2))
    net.add_module("gamma_norm_scale", nn.Linear(2, 2, bias=False))  # name contains "norm"
    by = {g["name"]: g["param_names"] for g in param_groups(net, 1.0, weight_decay=0.1)}
    assert by["default"] == ["proj.weight", "out.weight"]
    assert by["default/no_decay"] == ["proj.bias", "ln.weight", "ln.bias", "out.bias", "gamma_norm_scale.weight"]


def test_lr_mult_patterns_last_match_wins():
    m = resnet()
    groups = param_groups(m, 1.0, lr_mult={"layer4": 0.1, "layer4.1.*": 0.5, "fc": 2.0})
    lr = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lr["layer4.0.conv1.weight"] == pytest.approx(0.1)
    assert lr["layer4.1.conv1.weight"] == pytest.approx(0.5)
    assert lr["fc.weight"] == 2.0 and lr["conv1.weight"] == 1.0
    assert [g["name"] for g in groups] == ["default", "layer4", "layer4.1.*", "fc"]
    with pytest.raises(ConfigError, match="did you mean"):
        param_groups(m, 1.0, lr_mult={"layr4": 0.1})


def test_layer_decay_by_top_level_block():
    m = resnet()
    groups = param_groups(m, 1.0, layer_decay=0.5, lr_mult={"layer4": 0.1})
    by = {g["name"]: g["lr"] for g in groups}
    # blocks with parameters: conv1 bn1 layer1 layer2 layer3 layer4 fc -> depth 6 .. 0
    assert by["fc"] == 1.0 and by["layer3"] == 0.25 and by["conv1"] == 0.5**6
    assert by["layer4:layer4"] == pytest.approx(0.5 * 0.1)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError):
            param_groups(m, 1.0, layer_decay=bad)
    with pytest.raises(ConfigError):
        param_groups(m, 0.0)


# --------------------------------------------------------------------------- gradual unfreezing + resume
def unfreeze_run(model: nn.Module, opt_state: dict | None = None, *, epochs: range) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Epoch 0: train layer4+fc; at epoch 2 layer3 joins with its own group. Resumable at any epoch."""
    kw = {"lr_mult": {"layer3": 0.1}, "weight_decay": 1e-3}
    freeze_until(model, "layer4")
    opt = torch.optim.AdamW(param_groups(model, 0.01, **kw))
    if epochs.start > 2:  # resumed after the change: replay it before loading the state
        add_param_group_for(opt, model, unfreeze(model, "layer3"), 0.01, tag="unfreeze@2", **kw)
    if opt_state is not None:
        report = load_optimizer_state_by_name(opt, model, opt_state)  # the trainer's resume path
        assert report.exact, str(report)
    for epoch in epochs:
        if epoch == 2:
            added = add_param_group_for(opt, model, unfreeze(model, "layer3"), 0.01, tag="unfreeze@2", **kw)
            assert [g["name"] for g in added] == ["unfreeze@2:layer3", "unfreeze@2:layer3/no_decay"]
            assert added[0]["lr"] == pytest.approx(0.001)
        train_steps(model, opt, steps=1)
        assert audit(model, opt) == []
    return model, opt


def test_gradual_unfreezing_adds_a_named_group_and_survives_resume():
    straight, opt = unfreeze_run(resnet(), epochs=range(4))
    assert [g["name"] for g in opt.param_groups][-2:] == ["unfreeze@2:layer3", "unfreeze@2:layer3/no_decay"]
    assert not torch.equal(straight.layer3[0].conv1.weight, resnet().layer3[0].conv1.weight)

    for stop in (2, 3):  # resume before the change and after it
        first, opt1 = unfreeze_run(resnet(), epochs=range(stop))
        weights, state = snapshot(first), optimizer_state_by_name(opt1, first)
        fresh = resnet()
        fresh.load_state_dict(weights)
        resumed, _ = unfreeze_run(fresh, state, epochs=range(stop, 4))
        for n, p in straight.state_dict().items():
            assert torch.equal(resumed.state_dict()[n], p), f"{n} differs after resume at epoch {stop}"


def test_add_param_group_for_skips_present_and_rejects_frozen():
    m = resnet()
    freeze_all_but(m, "fc")
    opt = torch.optim.SGD(param_groups(m, 0.1))
    assert add_param_group_for(opt, m, ["fc.weight"], 0.1) == []
    with pytest.raises(ConfigError, match="frozen"):
        add_param_group_for(opt, m, ["layer4.0.conv1.weight"], 0.1)
    plain = torch.optim.SGD([m.fc.weight], lr=0.1)  # groups without param_names: added ones have none either
    add_param_group_for(plain, m, ["fc.bias"], 0.1)
    assert "param_names" not in plain.param_groups[-1]


# --------------------------------------------------------------------------- audit
def test_audit_clean_setup_has_no_findings():
    m = resnet()
    freeze_until(m, "layer4")
    opt = torch.optim.AdamW(param_groups(m, 1e-3, weight_decay=0.05))
    x, y = batch()
    nn.functional.cross_entropy(m(x), y).backward()
    assert audit(m, opt) == [] and format_findings([]) == ""


def test_audit_trainable_not_in_optimizer():
    m = resnet()
    freeze_until(m, "layer4")
    opt = torch.optim.SGD(m.fc.parameters(), lr=0.1)  # hand-picked list forgets layer4
    (f,) = audit(m, opt, after_backward=False)
    assert f.kind == "trainable_not_in_optimizer" and f.names[0] == "layer4.0.conv1.weight"


def test_audit_frozen_in_optimizer_and_adamw_still_changes_them():
    m = resnet()
    opt = torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.1)  # built before freezing
    freeze_all_but(m, "fc")
    before = m.conv1.weight.detach().clone()
    train_steps(m, opt, steps=1)  # grads of frozen weights stay None: AdamW skips them...
    assert torch.equal(m.conv1.weight, before)
    m.conv1.weight.grad = torch.zeros_like(m.conv1.weight)  # ...until a zero grad exists
    opt.step()
    assert not torch.equal(m.conv1.weight, before)  # the silent bug the finding warns about
    findings = audit(m, opt, after_backward=False)
    assert [f.kind for f in findings] == ["frozen_in_optimizer"]
    assert "conv1.weight" in findings[0].names and "fc.weight" not in findings[0].names
    assert "weight_decay=0.1" in findings[0].message and "1 of them have a .grad" in findings[0].message
    assert format_findings(findings).startswith("warning: frozen_in_optimizer: ")


def test_audit_no_grad_after_backward_for_unused_module():
    m = resnet()
    m.extra = nn.Linear(3, 3)  # trainable, never called in forward
    opt = torch.optim.SGD(param_groups(m, 0.1))
    x, y = batch()
    assert [f.kind for f in audit(m, opt)] == ["no_grad_after_backward"]  # nothing ran yet: every grad is None
    nn.functional.cross_entropy(m(x), y).backward()
    (f,) = audit(m, opt)
    assert f.kind == "no_grad_after_backward" and f.names == ["extra.weight", "extra.bias"]
    assert audit(m, opt, after_backward=False) == []


def test_audit_nonfinite_grad():
    m = resnet()
    freeze_all_but(m, "fc")
    opt = torch.optim.SGD(param_groups(m, 0.1))
    x, y = batch()
    x[0, 0, 0, 0] = float("inf")
    nn.functional.cross_entropy(m(x), y).backward()
    (f,) = audit(m, opt)
    assert f.kind == "nonfinite_grad" and set(f.names) <= {"fc.weight", "fc.bias"} and f.names
    assert {f.kind for f in audit(m, opt)} <= set(AUDIT_KINDS)


# --------------------------------------------------------------------------- speed: no graph for a frozen prefix
def saved_tensor_count(model: nn.Module, x: torch.Tensor) -> int:
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return count


def test_frozen_prefix_keeps_no_autograd_graph():
    m = resnet().train()
    x = batch()[0]
    full = saved_tensor_count(m, x)
    outs = {}
    for name in ("layer3", "layer4"):
        getattr(m, name).register_forward_hook(lambda mod, i, o, name=name: outs.__setitem__(name, o))
    freeze_until(m, "layer4")
    partial = saved_tensor_count(m, x)
    assert outs["layer3"].grad_fn is None and outs["layer4"].grad_fn is not None
    freeze_all_but(m, "fc")
    probe = saved_tensor_count(m, x)
    assert outs["layer4"].grad_fn is None
    assert probe <= 2 < partial < full  # a linear probe saves only the head's input (and weight)


# --------------------------------------------------------------------------- linear probe
def small_models() -> dict[str, nn.Module]:
    from torchvision.models.convnext import CNBlockConfig

    tv = torchvision.models
    return {
        "resnet": tv.resnet18(num_classes=3),
        "mobilenet": tv.mobilenet_v3_small(num_classes=3),
        "efficientnet": tv.efficientnet_b0(num_classes=3),
        "regnet": tv.regnet_y_400mf(num_classes=3),
        "convnext": tv.convnext.ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=3),
        "vit": tv.VisionTransformer(32, 8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3),
    }


@pytest.mark.parametrize("family", ["resnet", "mobilenet", "efficientnet", "regnet", "convnext", "vit"])
def test_split_head_shares_parameters_and_reproduces_the_model(family):
    torch.manual_seed(0)
    m = small_models()[family].eval()
    backbone, head = split_head(m)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(head(backbone(x)), m(x))
        assert m(x).shape == (2, 3)  # the original model keeps its head
    assert isinstance(head, nn.Linear) and head.out_features == 3
    assert any(module is head for module in m.modules()) and not any(module is head for module in backbone.modules())
    head_params = {id(p) for p in head.parameters()}
    assert {id(p) for p in backbone.parameters()} == {id(p) for p in m.parameters()} - head_params


def test_linear_probe_on_cached_features_equals_training_behind_the_frozen_backbone():
    torch.manual_seed(0)
    images = torch.randn(24, 3, 32, 32)
    labels = torch.randint(0, NUM_CLASSES, (24,))
    orders = [torch.randperm(24, generator=torch.Generator().manual_seed(e)) for e in range(3)]

    live = resnet()
    cached = resnet()
    for m in (live, cached):
        freeze_all_but(m, "fc")
    # live: the whole model each step, model.train() (BN frozen by policy), no augmentation
    opt = torch.optim.SGD(param_groups(live, 0.5, weight_decay=1e-3), momentum=0.9)
    for order in orders:
        live.train()
        for idx in order.split(8):
            loss = nn.functional.cross_entropy(live(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    # cached: backbone once, then only the head
    backbone, head = split_head(cached)
    feats, ys = extract_features(backbone, [(images[i : i + 8], labels[i : i + 8]) for i in range(0, 24, 8)])
    assert feats.shape == (24, 512) and feats.grad_fn is None and not feats.requires_grad
    opt = torch.optim.SGD(param_groups(cached, 0.5, weight_decay=1e-3), momentum=0.9)
    for order in orders:
        train_head_on_features(head, feats, ys, opt, batch_size=8, order=order)

    assert torch.equal(cached.fc.weight, live.fc.weight) and torch.equal(cached.fc.bias, live.fc.bias)
    assert not torch.equal(cached.fc.weight, resnet().fc.weight)
    live.eval()
    cached.eval()
    with torch.no_grad():
        assert torch.equal(live(images).argmax(1), cached(images).argmax(1))


def test_importing_freeze_does_not_import_heavy_optional_modules():
    code = "import sys, finetune.freeze; print(sorted(m for m in ('timm', 'tensorboard', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""BatchNorm frozen-part marks follow what the user made trainable since (freezehunt)."""

from __future__ import annotations

from torch import nn

from finetune.freeze import apply_bn_policy, freeze, set_bn_policy, unfreeze


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))


def test_freeze_under_eval_policy_returns_only_what_it_froze():
    m = _net()
    set_bn_policy(m, "eval")
    assert freeze(m, "0", "1") == ["0.weight", "0.bias"]  # the BN affine parameters stay trainable
    assert m[1].weight.requires_grad


def test_apply_bn_policy_after_unfreezing_by_hand_keeps_them_trainable():
    m = _net()
    m[1].requires_grad_(False)
    assert apply_bn_policy(m) == {"1": "frozen"}
    m[1].requires_grad_(True)  # by hand, as apply_bn_policy's docstring says
    assert apply_bn_policy(m) == {"1": "train"}
    assert m[1].weight.requires_grad and m[1].bias.requires_grad


def test_unfreeze_of_one_bn_parameter_is_trainable_as_returned():
    m = _net()
    freeze(m)
    assert unfreeze(m, "1.weight") == ["1.weight"]
    assert m[1].weight.requires_grad and not m[1].bias.requires_grad

"""The training loop's one-time audit under fp16's GradScaler: on unscaled gradients, and not spent on an
overflow step the scaler skips anyway (GradScaler on CPU stands for CUDA's here)."""

from __future__ import annotations

import torch
from torch import nn

from finetune.train import audit_step


def _model_and_grads(scale: float, x: float = 1.0) -> tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model[1].parameters(), lr=0.1)  # model[0] trainable but left out: a planted mistake
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    scaler.scale(model(torch.full((3, 4), x)).pow(2).sum()).backward()
    return model, optimizer, scaler


def test_an_overflowing_step_is_not_reported_as_nonfinite_gradients_and_the_next_one_is_audited():
    model, optimizer, scaler = _model_and_grads(2.0 ** 100, x=1e10)  # the scaled gradients overflow
    assert audit_step(model, optimizer, scaler) is None
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(optimizer)  # skipped by the scaler, as the training loop's
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_audit_sees_the_true_gradients_and_the_planted_mistake():
    model, optimizer, scaler = _model_and_grads(2.0 ** 10)
    findings = audit_step(model, optimizer, scaler)
    assert findings is not None
    assert [f.kind for f in findings] == ["trainable_not_in_optimizer"]
    reference, _, _ = _model_and_grads(2.0 ** 10)
    for p, q in zip(model[1].parameters(), reference[1].parameters(), strict=True):  # (the optimizer's)
        torch.testing.assert_close(p.grad, q.grad / 2.0 ** 10)
    scaler.step(optimizer)  # does not unscale a second time
    scaler.update()

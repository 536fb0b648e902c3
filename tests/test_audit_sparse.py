"""audit() on a model with sparse gradients (nn.Embedding(sparse=True)) (freezehunt)."""

from __future__ import annotations

import torch
from torch import nn

from finetune.freeze import audit


def test_audit_reads_sparse_gradients():
    m = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 2))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(torch.tensor([1, 2])).sum().backward()
    assert audit(m, opt) == []
    m[0].weight.grad = torch.sparse_coo_tensor([[1]], torch.full((1, 4), float("nan")), (10, 4))
    assert [(f.kind, f.names) for f in audit(m, opt)] == [("nonfinite_grad", ["0.weight"])]

"""camhunt: a module called twice (the PyTorch tutorial's shared pool) shows both outputs, in call order."""

from __future__ import annotations

import torch
from torch import nn

from finetune.models import layer_summary


class TutorialNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)  # used after both convolutions
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 3 * 3, 10)  # wrong for 32x32 inputs: 16 * 5 * 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc1(torch.flatten(x, 1))


def test_a_shared_module_has_a_row_per_call_in_call_order() -> None:
    s = layer_summary(TutorialNet(), 32)
    assert not s.ok and s.failed_at == "fc1" and "1x400" in (s.error or "")
    assert [(r.name, r.output_shape) for r in s.rows] == [
        ("conv1", (1, 6, 28, 28)), ("pool", (1, 6, 14, 14)), ("conv2", (1, 16, 10, 10)), ("pool", (1, 16, 5, 5))]
    assert "pool   MaxPool2d  1x16x5x5" in str(s)

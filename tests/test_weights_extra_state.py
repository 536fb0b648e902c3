"""Issue #3: get_extra_state() entries ('..._extra_state', any object) are no weights, in a file or the model."""
from __future__ import annotations

import torch
from torch import nn

import finetune


class _Calibrated(nn.Module):
    """A layer with extra state (torch's nn.Module.get_extra_state protocol: a non-tensor state dict entry)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 5)
        self.calib = {"scale": 1.0, "version": 2}

    def forward(self, x):
        return self.lin(x) * self.calib["scale"]

    def get_extra_state(self):
        return dict(self.calib)

    def set_extra_state(self, state):
        self.calib = dict(state)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.ReLU(), _Calibrated()).eval()


def test_extra_state_entries_are_skipped_in_the_file_and_the_model(tmp_path):
    src = _net(0)
    assert "3._extra_state" in src.state_dict()
    torch.save(src.state_dict(), tmp_path / "x.pt")
    sd = finetune.read_state_dict(tmp_path / "x.pt")
    assert set(sd) == {"1.weight", "1.bias", "3.lin.weight", "3.lin.bias"}
    x = torch.randn(2, 3, 4, 4)
    for source in (tmp_path / "x.pt", sd):  # a file with the entry; tensors only into a model that has one
        dst = _net(1)
        report = finetune.load_weights(dst, source)
        assert report.ok and len(report.loaded) == 4
        assert torch.equal(dst(x), src(x))
    torch.save(src, tmp_path / "whole.pt")  # a pickled module with extra state, trusted
    assert set(finetune.read_state_dict(tmp_path / "whole.pt", trust=True)) == set(sd)

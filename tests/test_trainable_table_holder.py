"""trainable_table looks through a module of the user's own that holds the network (a
LightningModule's ``self.model``, ``nn.Sequential(Normalize(), net)``): one row per block of the
network, not one row for the whole network."""

from __future__ import annotations

from torch import nn

from finetune.freeze import freeze, trainable_table


def _net() -> nn.Module:
    net = nn.Sequential()
    net.add_module("stem", nn.Linear(4, 4))
    net.add_module("layer1", nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    net.add_module("fc", nn.Linear(4, 2))
    return net


class Lit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = _net()
        self.loss = nn.CrossEntropyLoss()


def test_table_rows_are_the_held_networks_blocks() -> None:
    m = Lit()
    freeze(m, "model.layer1")
    rows = [(r.block, r.kind, r.total, r.trainable, r.bn) for r in trainable_table(nn.DataParallel(m)).rows]
    assert rows == [
        ("model.stem", "Linear", 20, 20, "-"),
        ("model.layer1", "Sequential", 28, 0, "frozen"),
        ("model.fc", "Linear", 10, 10, "-"),
    ]
    rows = [r.block for r in trainable_table(nn.Sequential(nn.Identity(), _net())).rows]
    assert rows == ["1.stem", "1.layer1", "1.fc"]


def test_a_single_layer_keeps_its_row() -> None:
    assert [(r.block, r.kind) for r in trainable_table(nn.Sequential(nn.Linear(2, 2))).rows] == [("0", "Linear")]

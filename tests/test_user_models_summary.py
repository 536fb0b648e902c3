"""layer_summary on models users build: dict / (tensor, None) outputs, ModuleList children, a failing view."""

import torch
from torch import nn

from finetune.models import layer_summary


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)])
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)
        self.aux = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for conv in self.convs:
            x = conv(x)
        t = x.flatten(2).transpose(1, 2)
        t = self.attn(t, t, t, need_weights=False)[0].mean(1)
        return {"logits": self.head(t), "aux": self.aux(t)}


def test_dict_output_and_tuple_with_none_have_shapes() -> None:
    s = layer_summary(_TwoHeads(), 8)
    assert s.ok and s.output_shape == "logits:1x3 aux:1x5"
    assert "-> output logits:1x3 aux:1x5," in str(s)
    assert {r.name: r.output_shape for r in s.rows}["attn"] == "1x16x8 None"


def test_children_of_a_module_list_show_their_full_name() -> None:
    lines = str(layer_summary(_TwoHeads(), 8)).splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["convs.0", "convs.1"]  # not a bare '0', '1'


class _ViewBug(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(-1, 8 * 7 * 7))


def test_a_failure_in_the_forward_code_names_the_layer_before_it() -> None:
    s = layer_summary(_ViewBug(), 32)
    assert s.failed_at == "(forward)"
    assert s.error.endswith("(in _ViewBug.forward, after conv)")

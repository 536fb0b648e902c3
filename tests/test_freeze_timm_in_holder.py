"""A timm model held in a module of the user's own (a LightningModule's ``self.model``) keeps what
finetune takes from timm's API: layer-decay ids (``group_matcher``), ``no_weight_decay()`` names,
and a linear probe's head dropout (``drop_rate``) off, as for the bare model."""

from __future__ import annotations

import torch
from torch import nn

from finetune.freeze import freeze_all_but, param_groups


class Lit(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = nn.CrossEntropyLoss()


def _groups(model: nn.Module, **kw) -> list[tuple[str, float, int]]:
    return [(g["name"], round(g["lr"], 6), len(g["params"])) for g in param_groups(model, 1.0, **kw)]


def test_layer_decay_uses_timm_ids_through_a_holder() -> None:
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=3)
    bare = _groups(vit, layer_decay=0.5)
    assert [name for name, _, _ in bare] == ["layer_0", "layer_1", "layer_2", "layer_3", "layer_4"]
    assert _groups(Lit(vit), layer_decay=0.5) == bare  # (was: the three blocks in one group)


class _Timmish(nn.Module):  # timm's no_weight_decay() / get_classifier() / drop_rate
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(2, 2))
        self.fc = nn.Linear(2, 2)
        self.drop_rate = 0.5

    def no_weight_decay(self) -> set[str]:
        return {"scale"}

    def get_classifier(self) -> nn.Module:
        return self.fc


def test_no_weight_decay_and_head_dropout_through_a_holder() -> None:
    m = Lit(_Timmish())
    decayed = [g["param_names"] for g in param_groups(m, 0.1, weight_decay=0.05) if g["weight_decay"] > 0]
    assert decayed == [["model.fc.weight"]]
    freeze_all_but(m, "model.fc")
    assert m.model.drop_rate == 0.0

"""A module attribute called ``module`` inside the model (timm's iFormer ``Residual.module``, in
every block) is not a DataParallel wrapper to strip by the keys' order: a file whose keys are
sorted (safetensors) loads completely into the model it was saved from."""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from finetune.weights import load_weights
from finetune.weights.keys import unwrap_names


class Residual(nn.Module):  # as timm.models.iformer.Residual: the wrapped layer is `self.module`
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.module(x)


def test_unwrapping_does_not_depend_on_the_keys_order() -> None:
    keys = [f"blocks.{i}.mixer.module.{p}" for i in range(12) for p in ("weight", "bias")] + ["head.weight"]
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    assert unwrap_names(keys)[0] == unwrap_names(shuffled)[0] == unwrap_names(sorted(keys))[0]


def test_sorted_file_of_many_inner_module_blocks_loads_completely(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = nn.Sequential(*[Residual(nn.Linear(4, 4)) for _ in range(12)], nn.Linear(4, 5))
    target = nn.Sequential(*[Residual(nn.Linear(4, 4)) for _ in range(12)], nn.Linear(4, 3))
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))  # keys sorted: 0, 1, 10, 11, 2…
    report = load_weights(target, path)
    assert report.ok, str(report)
    assert not report.missing and not report.unexpected
    for i in range(12):
        assert torch.equal(target[i].module.weight, source[i].module.weight)
    assert "(12 in all)" in report.mapping and len(report.mapping) < 300  # one readable line, not 24 names


def test_a_deep_module_attribute_is_a_layers_name_not_a_wrapper() -> None:
    keys = [f"stages.{s}.blocks.{b}.mixer.module.0.c.weight" for s in range(3) for b in range(12)] + ["head.weight"]
    mapping, removed = unwrap_names(keys)
    assert removed == [] and all(mapping[k] == k for k in keys)  # `finetune convert` keeps timm's iFormer names
    assert unwrap_names(["module.features.module.0.weight", "module.fc.weight"])[1] == ["module.", "features.module."]


def test_a_layers_own_module_loads_under_a_two_level_file_prefix() -> None:
    # the model's `0.module` (depth 1) is unwrapped as a wrapper would be; a Lightning module holding the network
    # as `self.net` saves it as 'model.net.0.module.weight' (depth 3): it must be unwrapped alike, not left unloaded
    torch.manual_seed(0)
    source = nn.Sequential(Residual(nn.Linear(4, 4)), Residual(nn.Linear(4, 4)), nn.Linear(4, 3))
    target = nn.Sequential(Residual(nn.Linear(4, 4)), Residual(nn.Linear(4, 4)), nn.Linear(4, 3))
    report = load_weights(target, {"model.net." + k: v for k, v in source.state_dict().items()})
    assert len(report.loaded) == 6 and not report.missing, str(report)
    assert torch.equal(target[0].module.weight, source[0].module.weight)


def test_a_wrapper_three_levels_down_in_the_file_is_unwrapped() -> None:
    torch.manual_seed(0)
    source, target = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    report = load_weights(target, {"a.b.c.module." + k: v for k, v in source.state_dict().items()})  # DDP, held deep
    assert len(report.loaded) == 4, str(report)
    assert torch.equal(target[0].weight, source[0].weight)


class ScaledResidual(nn.Module):  # a layer's `module` beside a parameter of its own (a layer scale)
    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(4, 4)
        self.gamma = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.module(x)


def test_a_layers_module_beside_a_parameter_the_file_lacks_still_loads() -> None:
    # in the file (no layer scales) `module` is an only child, in the model it is not: unwrapping it at any depth
    # on the file's side alone would leave every layer unloaded
    torch.manual_seed(0)
    # (three levels down, as in timm's models: blocks.0.0.module; within two levels: the next test)
    def net() -> nn.Module:
        return nn.Sequential(nn.Sequential(nn.Sequential(ScaledResidual(), ScaledResidual())), nn.Linear(4, 2))

    source, target = net(), net()
    report = load_weights(target, {k: v for k, v in source.state_dict().items() if "gamma" not in k})
    assert len(report.loaded) == 6 and sorted(report.missing) == ["0.0.0.gamma", "0.0.1.gamma"], str(report)
    assert torch.equal(target[0][0][1].module.weight, source[0][0][1].module.weight)


@pytest.mark.parametrize("prefix", ["", "model.", "module."])
def test_a_layers_module_within_two_levels_beside_a_parameter_the_file_lacks_loads(prefix: str) -> None:
    # within two levels read_checkpoint takes the file's `block.module` (an only child there) for a DataParallel
    # wrapper before the model is seen: the model's `block.module` is matched as the file's reader unwrapped it
    torch.manual_seed(0)

    def net() -> nn.Module:
        return nn.Sequential(OrderedDict(stem=nn.Linear(4, 4), block=ScaledResidual(), head=nn.Linear(4, 2)))

    source, target = net(), net()
    report = load_weights(target, {prefix + k: v for k, v in source.state_dict().items() if "gamma" not in k})
    assert len(report.loaded) == 6 and report.missing == ["block.gamma"], str(report)
    assert torch.equal(target.block.module.weight, source.block.module.weight)


def test_a_deep_module_attribute_keeps_its_name_in_the_report() -> None:
    # timm's iFormer (stages.0.blocks.0.mixer.module...) from its own file: the report names the model's tensors
    # as its state_dict() does (train's check_pretrained_fit counted 16% of iformer_t loaded and refused the file)
    def net() -> nn.Module:
        return nn.Sequential(nn.Sequential(nn.Sequential(Residual(nn.Linear(4, 4)), Residual(nn.Linear(4, 4)))),
                             nn.Linear(4, 2))

    target = net()
    report = load_weights(target, net().state_dict())
    assert report.loaded == list(target.state_dict()), str(report)
    assert not report.missing and not report.unexpected
    # ... also when only unwrapping at any depth fits (a Lightning module's 'model.net.' prefix), and for a layer's
    # `module` near the top, beside a parameter the file lacks
    report = load_weights(target, {"model.net." + k: v for k, v in net().state_dict().items()})
    assert report.loaded == list(target.state_dict()), str(report)
    scaled = nn.Sequential(OrderedDict(stem=nn.Linear(4, 4), block=ScaledResidual(), head=nn.Linear(4, 2)))
    report = load_weights(scaled, {k: v for k, v in scaled.state_dict().items() if "gamma" not in k})
    assert set(report.loaded) == set(scaled.state_dict()) - {"block.gamma"} and report.missing == ["block.gamma"]

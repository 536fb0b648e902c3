"""MoCo's two encoders in one file: the one MoCo evaluates is loaded (written here with torch)."""

from __future__ import annotations

import torch
import torchvision

from finetune.weights import load_weights


def _shifted(sd: dict[str, torch.Tensor], d: float) -> dict[str, torch.Tensor]:
    return {k: v + d if v.is_floating_point() else v for k, v in sd.items()}


def test_moco_v2_loads_encoder_q_whatever_the_key_order() -> None:
    """MoCo v2's {'state_dict': DDP(MoCo)}: encoder_q (what MoCo evaluates) and its momentum copy encoder_k;
    stored sorted by name (a safetensors copy) encoder_k comes first, and must not win the tie."""
    torch.manual_seed(0)
    q = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    q |= {"fc.0.weight": torch.zeros(512, 512), "fc.0.bias": torch.zeros(512),
          "fc.2.weight": torch.zeros(128, 512), "fc.2.bias": torch.zeros(128)}
    sd = {**{f"module.encoder_q.{k}": v for k, v in q.items()},
          **{f"module.encoder_k.{k}": v for k, v in _shifted(q, 1.0).items()},
          "module.queue": torch.zeros(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    for ordered in (sd, dict(sorted(sd.items()))):
        model = torchvision.models.resnet18(num_classes=3)
        report = load_weights(model, {"epoch": 200, "arch": "resnet18", "state_dict": ordered})
        assert "strip 'encoder_q.'" in report.mapping, report
        assert torch.equal(model.conv1.weight, q["conv1.weight"]) and report.ok

"""``finetune.find_cam_layer`` on a model in ``train()`` mode: the probe runs in eval mode, as
``class_activation_maps``' does, and leaves the model as it was (it ran in train mode: BatchNorm
running statistics moved, and a batch of one image failed in BatchNorm)."""

from __future__ import annotations

import torch

import finetune


def test_find_cam_layer_probes_in_eval_mode_and_keeps_the_modes() -> None:
    model = finetune.create_model("resnet18", num_classes=3)
    model.train()
    model.layer1.eval()
    stats = {n: b.clone() for n, b in model.named_buffers()}
    assert finetune.find_cam_layer(model, torch.randn(2, 3, 64, 64)).name == "layer4"
    assert finetune.find_cam_layer(model, torch.randn(1, 3, 64, 64)).name == "layer4"  # one image: no BN error
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers())
    assert model.training and model.layer4.training and not model.layer1.training and not model.layer1[0].bn1.training
    assert all(p.grad is None for p in model.parameters())

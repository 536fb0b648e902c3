"""class_map copies the class rows of every classifier head: a distilled model's two heads, LeViT's NormLinear heads."""

from __future__ import annotations

import pytest
import torch

from finetune.weights import load_weights

timm = pytest.importorskip("timm")


@pytest.mark.parametrize(("arch", "kwargs", "rows"), [
    ("deit_tiny_distilled_patch16_224", {"depth": 1, "img_size": 32}, ("head", "head_dist")),
    ("levit_128s", {}, ("head.linear", "head_dist.linear")),
])
@pytest.mark.parametrize("file_classes", [10, 3])
def test_class_map_copies_the_rows_of_every_head(arch: str, kwargs: dict, rows: tuple[str, ...],
                                                  file_classes: int) -> None:
    class_map = {0: 2, 1: 0, 2: 1}
    torch.manual_seed(0)
    file = timm.create_model(arch, num_classes=file_classes, **kwargs).state_dict()
    model = timm.create_model(arch, num_classes=3, **kwargs)
    report = load_weights(model, file, shape_mismatch="adapt", class_map=class_map)
    assert report.ok
    state = model.state_dict()
    for prefix in rows:
        for leaf in ("weight", "bias"):
            key = f"{prefix}.{leaf}"
            assert key in [n for n, _ in report.adapted], report
            for new, old in class_map.items():
                assert torch.equal(state[key][new], file[key][old]), (key, new, old)

"""`--pretrained timm:NAME` without timm (so without huggingface_hub) and not cached: says what to install."""

from __future__ import annotations

import sys

import pytest

from finetune.errors import WeightsError
from finetune.weights import sources


def test_timm_file_without_huggingface_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("FINETUNE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for module in ("timm", "timm.models"):  # no timm (also when another test imported it), and no
        monkeypatch.setitem(sys.modules, module, None)  # huggingface_hub that comes with it
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    monkeypatch.setattr(sources, "_unresolvable_hub_host", lambda: None)  # as if online
    with pytest.raises(WeightsError) as e:
        sources.timm_file("resnet18")
    message = str(e.value)
    assert "needs huggingface_hub" in message and "pip install timm" in message
    assert "ModuleNotFoundError" not in message
    assert "https://huggingface.co/timm/resnet18/resolve/main/model.safetensors" in message

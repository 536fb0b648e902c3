"""--amp auto picks bf16 only where the GPU computes in it natively (compute capability 8.0 on): a T4 or V100
only emulates bf16, slower than fp32, and gets fp16 with its GradScaler instead (timm's --amp)."""

from __future__ import annotations

import pytest
import torch

from finetune.train import resolve_amp


@pytest.mark.parametrize(("capability", "dtype"), [((7, 5), torch.float16), ((7, 0), torch.float16),
                                                   ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_on_cuda_follows_native_bf16(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int],
                                          dtype: torch.dtype) -> None:
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_amp("auto", torch.device("cuda")) is dtype
    assert resolve_amp("bf16", torch.device("cuda")) is torch.bfloat16  # asked for: as asked
    assert resolve_amp("auto", torch.device("cpu")) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_this_gpu() -> None:
    native = torch.cuda.get_device_capability()[0] >= 8 or bool(torch.version.hip)
    assert resolve_amp("auto", torch.device("cuda")) is (torch.bfloat16 if native else torch.float16)

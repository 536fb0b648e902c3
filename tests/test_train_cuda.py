"""`finetune train` on CUDA end to end (run by benchmarks/gpu_check.sh; skipped without CUDA).

The CUDA run must write the same run directory as a CPU run, checkpoints whose
tensors are all on the CPU, and a model that `finetune eval --device cpu`
reads back; nvjpeg decoding and the GPU cache must train too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA_RUN = ["--model", "resnet18", "--img-size", "32", "--batch-size", "16", "--workers", "2", "--seed", "0",
            "--lr", "0.002", "--warmup-epochs", "0", "--device", "cuda", "--epochs", "2", "-q"]
# Long enough to learn the two colours whatever the GPU's kernels and fp16's first skipped steps: 2 epochs of
# 4 steps left fp16 (GradScaler's first steps overflow) at chance and the GPU cache run failing one run in two.
LEARNING_RUN = [*CUDA_RUN, "--batch-size", "8", "--epochs", "4"]  # (the last of a flag given twice counts)


@pytest.mark.parametrize("extra", [["--amp", "bf16", "--channels-last", "--cache", "gpu"],
                                   ["--decode", "gpu"],
                                   ["--amp", "bf16", "--linear-probe"],
                                   # fp16's GradScaler unscales before clipping; EMA and mixing on the device
                                   ["--amp", "fp16", "--clip-grad", "1.0", "--ema", "0.9", "--mixup", "0.2",
                                    "--cutmix", "1.0", "--channels-last"]],
                         ids=["gpu-cache", "gpu-decode", "probe", "fp16-clip-ema-mix"])
def test_train_on_cuda_writes_a_cpu_loadable_run(colour_data: Path, tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "run"
    res = run_cli("train", "--data", str(colour_data), "--out", str(out), *LEARNING_RUN, *extra)
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["images_per_s"] > 0 for r in records)
    assert records[-1]["val_top1"] > 0.6, records  # two colour classes
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    tensors = [v for v in state["model"].values() if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    res = run_cli("eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--data", str(colour_data / "val"), "--device", "cpu", "--workers", "0", "--json")
    assert res.returncode == 0, res.stderr
    assert abs(json.loads(res.stdout)["top1"] - records[-1]["val_top1"]) < 0.1  # CPU fp32 vs CUDA autocast


def test_cuda_run_resumes_after_sigterm_style_stop(colour_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_cli("train", "--data", str(colour_data), "--out", str(out), *CUDA_RUN, "--max-steps", "3")
    assert first.returncode == 0, first.stderr
    again = run_cli("train", "--resume", "auto", "--out", str(out), "--max-steps", "1000", "-q")
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]

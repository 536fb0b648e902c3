"""finetune inspect FILE --model ARCH sizes the model from a transformers file's classifier."""

from __future__ import annotations

import re
from pathlib import Path

from safetensors.torch import save_file

import finetune
from finetune.weights import inspect_checkpoint

_RESNET_TO_HF = (
    (r"^conv1\.", "resnet.embedder.embedder.convolution."), (r"^bn1\.", "resnet.embedder.embedder.normalization."),
    (r"^layer(\d)\.(\d+)\.downsample\.0\.", lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution."),
    (r"^layer(\d)\.(\d+)\.downsample\.1\.", lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization."),
    (r"^layer(\d)\.(\d+)\.conv(\d)\.", lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution."),
    (r"^layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization."),
    (r"^fc\.", "classifier.1."),
)


def test_inspect_sizes_the_model_from_a_transformers_classifier(tmp_path: Path) -> None:
    """microsoft/resnet-*'s model.safetensors (classifier.1.weight, keys sorted: the file's last 2-d weight
    is a conv of layer4) against --model resnet18: every tensor fits (was a model of 512 classes and
    'mismatched: fc.weight file (5, 512), model (512, 512)')."""
    sd = finetune.create_model("resnet18", num_classes=5).state_dict()
    hf = {}
    for k, v in sd.items():
        for rx, repl in _RESNET_TO_HF:
            k = re.sub(rx, repl, k)
        hf[k] = v.contiguous()
    save_file(hf, tmp_path / "model.safetensors")
    report = inspect_checkpoint(tmp_path / "model.safetensors", model="resnet18")["load_report"]
    assert report["ok"] and not report["mismatched"] and len(report["loaded"]) == len(sd), report

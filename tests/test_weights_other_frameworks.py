"""Files of other frameworks: a clear refusal (ONNX, Keras, TensorFlow Lite); np.savez of a state dict is read."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import finetune
from finetune.errors import CheckpointError
from finetune.weights import read_checkpoint

# the first bytes of torch.onnx.export's file: ir_version 8, producer "pytorch", then the graph
ONNX_HEAD = b"\x08\x08\x12\x07pytorch\x1a\x062.14.1:\x8c\x01\n>\n\x05input\x12\x00" + b"\x00" * 64


@pytest.mark.parametrize(("name", "data", "said"), [
    ("model.onnx", ONNX_HEAD, "an ONNX model, not a PyTorch checkpoint"),
    ("model.h5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, "an HDF5 file (Keras .h5"),
    ("model.tflite", b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64, "a TensorFlow Lite model"),
], ids=["onnx", "keras-h5", "tflite"])
def test_other_frameworks_models_are_named_not_called_corrupt(tmp_path: Path, name: str, data: bytes, said: str) -> None:
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as e:
        read_checkpoint(tmp_path / name)
    assert said in str(e.value) and "corrupt" not in str(e.value)


def test_a_keras_v3_archive_is_named(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "model.keras", "w") as z:
        z.writestr("metadata.json", '{"keras_version": "3.5.0"}')
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")
    with pytest.raises(CheckpointError, match="a Keras .keras model archive"):
        read_checkpoint(tmp_path / "model.keras")


def test_np_savez_of_a_state_dict_loads(tmp_path: Path) -> None:
    source = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    np.savez(tmp_path / "w.npz", **{k: v.numpy() for k, v in source.state_dict().items()})
    target = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    report = finetune.load_weights(target, tmp_path / "w.npz", strict=True)
    assert report.ok and "NumPy .npz" in report.format
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        read_checkpoint(tmp_path / "objects.npz")

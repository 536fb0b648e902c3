"""finetune.weights on files written by the real libraries (tests/fixtures/real_checkpoints/).

The files come from tests/fixtures/make_real_checkpoints.py, run with PyTorch Lightning,
accelerate, timm, fastai, OmegaConf and torch's own writers (versions in
``versions.json``); none of those libraries but torch is needed here. Each check
compares the loaded model's output with the output the producing library's model
gave (``reference.safetensors``), so a wrong tensor, a swapped EMA or a dropped key fails.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.cli import main as cli
from finetune.errors import CheckpointError, UnsafeCheckpointError, WeightsError
from finetune.weights import convert, inspect_checkpoint, load_weights, read_state_dict
from finetune.weights.formats import read_checkpoint, sniff

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "real_checkpoints"

_spec = importlib.util.spec_from_file_location("make_real_checkpoints", FIXTURES / "make_real_checkpoints.py")
assert _spec is not None and _spec.loader is not None
maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(maker)

REF = load_file(str(REAL / "reference.safetensors"))
#: torch >= 2.5 has the public torch.distributed.tensor that FSDP2 files pickle; 2.4 cannot read them
HAS_DTENSOR = hasattr(importlib.import_module("torch.distributed.tensor"), "DTensor")
#: torch >= 2.5 takes an allowlist for its weights_only loader; on 2.4 finetune reads pickles itself
TORCH_SAFE_GLOBALS = hasattr(torch.serialization, "safe_globals")


def refused_without_dtensor(name: str) -> bool:
    """On torch 2.4 an FSDP2 file is a one-line error that names the torch it needs: check it."""
    if HAS_DTENSOR or not name.startswith("fsdp2"):
        return False
    with pytest.raises(CheckpointError, match=r"FSDP2 DTensors .*needs torch >= 2.5"):
        read_state_dict(REAL / CASES[name][0] if name in CASES else REAL / name)
    return True
TINY_KEYS = set(maker.Tiny().state_dict())

#: fixture -> (file or folder, format the reader names, LightningModule attribute or "")
CASES: dict[str, tuple[str, str, str]] = {
    "lightning_model": ("lightning_model.ckpt", "PyTorch Lightning", "model"),
    "lightning_net_omegaconf": ("lightning_net_omegaconf.ckpt", "PyTorch Lightning", "net"),
    "lightning_backbone_ema": ("lightning_backbone_ema.ckpt", "PyTorch Lightning", "backbone"),
    "lightning_swa": ("lightning_swa.ckpt", "PyTorch Lightning", "model"),
    "lightning_loss_weight": ("lightning_loss_weight.ckpt", "PyTorch Lightning", "model"),
    "lightning_timm_ema_attribute": ("lightning_timm_ema_attribute.ckpt", "PyTorch Lightning", "model"),
    "lightning_averaged_attribute": ("lightning_averaged_attribute.ckpt", "PyTorch Lightning", "net"),
    "lightning_hydra_template": ("lightning_hydra_template.ckpt", "PyTorch Lightning", "net"),
    "accelerate_state_safetensors": ("accelerate_state_safetensors", "accelerate save_state", ""),
    "accelerate_state_bin": ("accelerate_state_bin", "accelerate save_state", ""),
    "accelerate_sharded_safetensors": ("accelerate_sharded_safetensors", "weights folder (sharded", ""),
    "accelerate_sharded_bin": ("accelerate_sharded_bin", "weights folder (sharded", ""),
    "timm_ema_v2": ("timm_ema_v2.pth.tar", "timm CheckpointSaver", ""),
    "timm_ema_v3": ("timm_ema_v3.pth.tar", "timm CheckpointSaver", ""),
    "fastai_stage1": ("fastai_stage1.pth", "fastai Learner.save", ""),
    "dcp_no_pg": ("dcp_no_pg", "torch.distributed.checkpoint", ""),
    "dcp_gloo": ("dcp_gloo", "torch.distributed.checkpoint", ""),
    "torchscript_scripted": ("torchscript_scripted.pt", "TorchScript", ""),
    "torchscript_traced": ("torchscript_traced.pt", "TorchScript", ""),
    "compiled": ("compiled.pt", "state_dict", ""),
    "dataparallel_of_compiled": ("dataparallel_of_compiled.pt", "state_dict", ""),
    "compiled_of_dataparallel": ("compiled_of_dataparallel.pt", "state_dict", ""),
    "nested_wrappers": ("nested_wrappers.pth.tar", "pytorch/examples imagenet", ""),
    "torchvision_refs_model_0": ("torchvision_refs_model_0.pth", "torchvision references", ""),
    "imagenet_example": ("imagenet_example.pth.tar", "pytorch/examples imagenet", ""),
    "legacy": ("legacy.pth", "legacy torch.save", ""),
    "numpy2_metrics": ("numpy2_metrics.pt", "under 'model_state_dict'", ""),
    "fsdp2_dtensor_state_dict": ("fsdp2_dtensor_state_dict.pt", "state_dict", ""),
    "numpy1_metrics": ("numpy1_metrics.pth", "pytorch/examples imagenet", ""),
    "swin_style_ckpt_epoch_0": ("swin_style_ckpt_epoch_0.pth", "torchvision references", ""),
    "mmengine_epoch_2": ("mmengine_epoch_2.pth", "mmengine Runner", "net"),
    "mmengine_ema_epoch_2": ("mmengine_ema_epoch_2.pth", "mmengine Runner (EMAHook)", "net"),
}
#: files whose module attribute is part of the architecture's names (an OpenMMLab model's): convert keeps it
CONVERT_KEEPS = {"mmengine_epoch_2", "mmengine_ema_epoch_2"}
#: tensors of the LightningModule that are not the network's (a weighted loss's buffer)
EXTRA = {"lightning_loss_weight": {"criterion.weight"}}
EMA_CASES = sorted(k.removeprefix("y.").removesuffix(".ema") for k in REF if k.endswith(".ema"))


def output(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(REF["x"])


def assert_output(model: torch.nn.Module, key: str) -> None:
    y, ref = output(model), REF[f"y.{key}"]
    assert torch.allclose(y, ref, rtol=0, atol=1e-6), (key, (y - ref).abs().max())


def test_every_fixture_has_a_case_and_a_reference():
    assert {k.removeprefix("y.").removesuffix(".ema") for k in REF if k.startswith("y.")} == set(CASES)
    assert EMA_CASES == ["lightning_averaged_attribute", "lightning_backbone_ema", "lightning_swa",
                         "lightning_timm_ema_attribute", "mmengine_ema_epoch_2", "timm_ema_v2", "timm_ema_v3",
                         "torchvision_refs_model_0"]
    for key in EMA_CASES:  # the EMA weights differ from the raw ones: picking the wrong ones fails
        assert not torch.allclose(REF[f"y.{key}"], REF[f"y.{key}.ema"], atol=1e-4), key


@pytest.mark.parametrize("name", sorted(CASES))
def test_read_and_load_real_file(name):
    if refused_without_dtensor(name):
        return
    file, fmt, attr = CASES[name]
    path = REAL / file
    ck = read_checkpoint(path)
    assert fmt in ck.description, ck.description
    sd = read_state_dict(path)
    prefix = f"{attr}." if attr else ""
    extra = EXTRA.get(name, set())
    assert set(sd) == {prefix + k for k in TINY_KEYS} | extra
    assert all(type(v) is torch.Tensor and v.device.type == "cpu" for v in sd.values())
    model = maker.Tiny()
    model.load_state_dict({k.removeprefix(prefix): v for k, v in sd.items() if k not in extra}, strict=True)
    assert_output(model, name)

    fresh = maker.fresh(99)
    report = load_weights(fresh, path, strict=not extra)
    assert report.ok and len(report.loaded) == len(TINY_KEYS), report
    assert set(report.unexpected) == extra
    assert report.ema_available == (name in EMA_CASES) and not report.ema_used
    assert_output(fresh, name)


@pytest.mark.parametrize("name", EMA_CASES)
def test_ema_weights_of_real_files(name):
    path = REAL / CASES[name][0]
    model = maker.fresh(99)
    report = load_weights(model, path, ema=True, strict=True)
    assert report.ema_used, report
    assert_output(model, f"{name}.ema")
    sd = read_state_dict(path, ema=True)
    attr = CASES[name][2]
    model = maker.Tiny()
    model.load_state_dict({k.removeprefix(f"{attr}." if attr else ""): v for k, v in sd.items()}, strict=True)
    assert_output(model, f"{name}.ema")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_convert_real_file(name, suffix, tmp_path):
    if refused_without_dtensor(name):
        return
    path = REAL / CASES[name][0]
    for ema in (False, True) if name in EMA_CASES else (False,):
        dst = convert(path, tmp_path / f"{name}{'-ema' if ema else ''}{suffix}", ema=ema)
        sd = load_file(str(dst)) if suffix == ".safetensors" else torch.load(dst, weights_only=True)
        if name in CONVERT_KEEPS:
            assert all(k.startswith("net.") for k in sd)
            sd = {k.removeprefix("net."): v for k, v in sd.items()}
        model = maker.Tiny()
        model.load_state_dict(sd, strict=True)  # clean keys: no module., _orig_mod., Lightning attribute
        assert_output(model, f"{name}{'.ema' if ema else ''}")


def test_lightning_weight_averaging_layout():
    """EMAWeightAveraging saves the average under 'state_dict' and the raw weights under 'current_model_state'."""
    raw = torch.load(REAL / "lightning_backbone_ema.ckpt", weights_only=False)  # our own fixture
    assert {"current_model_state", "averaging_state"} <= set(raw)
    ck = read_checkpoint(REAL / "lightning_backbone_ema.ckpt")
    assert ck.ema is not None
    assert all(torch.equal(ck.ema[k], raw["state_dict"][k]) for k in ck.ema)
    assert all(torch.equal(ck.weights[k], raw["current_model_state"][k]) for k in ck.weights)
    assert "current_model_state" not in ck.metadata and ck.metadata["averaging_state"] == {"n_averaged": 6}


def test_a_shard_of_an_fsdp2_dtensor_is_an_error():
    """torch.save of an FSDP2 model on 2 ranks holds half of each tensor: say so, do not load half."""
    if refused_without_dtensor("fsdp2_rank0_of_2.pt"):
        return
    with pytest.raises(CheckpointError, match=r"one rank's shard of a DTensor .*full_state_dict"):
        read_state_dict(REAL / "fsdp2_rank0_of_2.pt")


def test_legacy_file_with_pickle_protocol_4(tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False, pickle_protocol=4) frames its magic number.

    torch's weights_only loader has no protocol-4 opcodes, so it takes --trust; before, the
    file was taken for a plain pickle and read as the bare magic number."""
    model = maker.fresh(3)
    path = tmp_path / "p4.pth"
    torch.save({"state_dict": model.state_dict()}, path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    assert sniff(path) == "pickle"
    if TORCH_SAFE_GLOBALS:
        with pytest.raises(UnsafeCheckpointError, match="--trust"):
            read_state_dict(path)
    else:  # torch 2.4: finetune's own restricted unpickler reads protocol 4 safely
        assert read_state_dict(path).keys() == model.state_dict().keys()
    fresh = maker.fresh(99)
    load_weights(fresh, path, trust=True, strict=True)
    assert torch.equal(output(fresh), output(model))


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_inspect_lightning_with_omegaconf_hparams(capsys):
    """Hydra/OmegaConf configs among Lightning hyperparameters become plain values; omegaconf is not imported."""
    path = REAL / "lightning_net_omegaconf.ckpt"
    code, out, err = run_cli(["inspect", str(path), "--json", "--optimizer"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["format"] == "PyTorch Lightning"
    hp = info["metadata"]["hyper_parameters"]
    assert hp["cfg"] == {"model": {"name": "tiny", "classes": 3}, "optim": {"lr": 0.1}, "tags": ["a", "b"]}
    assert hp["data_dir"] == "/data/train" and hp["attr"] == "net"
    assert info["optimizer"]["optimizers"][0]["state_keys"] == ["momentum_buffer"]
    code, out, _ = run_cli(["inspect", str(path)], capsys)
    assert code == 0 and "hyper_parameters.cfg.optim.lr" in out and "net.fc.weight" in out
    assert "omegaconf" not in sys.modules


def test_lightning_hydra_template_partials(capsys):
    """lightning-hydra-template keeps functools.partial(torch.optim.Adam, ...) among its hyperparameters:
    shown as text, nothing of it can be called."""
    path = REAL / "lightning_hydra_template.ckpt"
    with pytest.raises(Exception, match="functools.partial"):
        torch.load(path, weights_only=True)
    code, out, err = run_cli(["inspect", str(path), "--json"], capsys)
    assert code == 0, err
    hp = json.loads(out)["metadata"]["hyper_parameters"]
    assert hp == {"optimizer": "partial(torch.optim.adam.Adam, lr=0.001, weight_decay=0.0)",
                  "scheduler": "partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode='min', factor=0.1, "
                               "patience=10)", "compile": False}


def test_inspect_fastai_optimizer(capsys):
    """fastai keeps its hypers in a fastcore L: read as a list, without fastcore."""
    code, out, err = run_cli(["inspect", str(REAL / "fastai_stage1.pth"), "--optimizer", "--json"], capsys)
    assert code == 0, err
    opt = json.loads(out)["optimizer"]
    assert opt["states"] == len(list(maker.Tiny().parameters()))
    assert {"grad_avg", "sqr_avg", "step"} <= set(opt["state_keys"])
    (group,) = opt["param_groups"]
    assert set(group) == {"lr", "mom", "wd", "sqr_mom", "eps"} and isinstance(group["lr"], float)
    code, out, _ = run_cli(["inspect", str(REAL / "fastai_stage1.pth"), "--optimizer"], capsys)
    assert code == 0 and "np.float64" not in out and "fastai Learner.save" in out
    assert "fastcore" not in sys.modules


def test_numpy1_scalars_written_by_numpy1():
    """numpy 1.26 pickles scalars as numpy.core.multiarray.scalar (numpy 2: numpy._core)."""
    assert b"numpy.core.multiarray" in (REAL / "numpy1_metrics.pth").read_bytes()
    meta = inspect_checkpoint(REAL / "numpy1_metrics.pth")["metadata"]
    assert meta["numpy"].startswith("1.") and meta["epoch"] == 2 and meta["best_acc1"] == 0.625
    assert meta["args"] == {"seed": 7, "lr": 0.5, "dtype": "float16"}
    json.dumps(meta)


def test_frozen_torchscript_says_why_it_has_no_weights(tmp_path):
    scripted = torch.jit.freeze(torch.jit.script(maker.fresh(1)).eval())
    scripted.save(str(tmp_path / "frozen.pt"))
    with pytest.raises(CheckpointError, match="unnamed constants, as torch.jit.freeze"):
        read_state_dict(tmp_path / "frozen.pt")


def test_inspect_mmengine_message_hub(capsys):
    """mmengine keeps logged scalars in HistoryBuffers, whose pickle calls getattr: read as inert stand-ins."""
    path = REAL / "mmengine_ema_epoch_2.pth"
    assert b"HistoryBuffer" in (path.read_bytes()) and b"getattr" in path.read_bytes()
    code, out, err = run_cli(["inspect", str(path), "--json", "--optimizer"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["format"] == "mmengine Runner (EMAHook)" and info["ema"]["tensors"] == len(TINY_KEYS)
    assert info["metadata"]["meta"]["epoch"] == 2 and info["metadata"]["meta"]["mmengine_version"]
    assert info["optimizer"]["state_keys"] == ["momentum_buffer"]
    assert "mmengine" not in sys.modules


def test_yacs_config_beside_the_weights(capsys):
    """Swin-Transformer saves its yacs CfgNode (a dict filled item by item, which torch's safe
    unpickler refuses even when allowed): read as a plain dict by the restricted unpickler."""
    path = REAL / "swin_style_ckpt_epoch_0.pth"
    with pytest.raises(Exception, match="yacs"):
        torch.load(path, weights_only=True)
    code, out, err = run_cli(["inspect", str(path), "--json"], capsys)
    assert code == 0, err
    config = json.loads(out)["metadata"]["config"]
    assert config["MODEL"] == {"TYPE": "tiny", "NAME": "tiny_patch4", "NUM_CLASSES": 3}
    assert config["DATA"]["MEAN"] == [0.485, 0.456, 0.406] and config["TRAIN"]["AMP"] is True
    assert "yacs" not in sys.modules


def test_inspect_numpy2_metadata_and_timm_args(capsys):
    info = inspect_checkpoint(REAL / "numpy2_metrics.pt")
    meta = info["metadata"]
    assert meta["epoch"] == 4 and type(meta["epoch"]) is int
    assert meta["metrics"]["acc"] == 0.9 and type(meta["metrics"]["acc"]) is float
    assert meta["metrics"]["n"] == 3 and meta["bool"] is True and meta["dtype"] == "float32"
    json.dumps(info)
    code, out, err = run_cli(["inspect", str(REAL / "timm_ema_v2.pth.tar"), "--json"], capsys)
    assert code == 0, err
    args = json.loads(out)["metadata"]["args"]
    assert args["seed"] == 42 and args["data_dir"] == "/data" and args["output"] == "/o"


@pytest.mark.parametrize("name", ["accelerate_state_bin", "dcp_gloo", "torchscript_scripted", "lightning_swa",
                                  "compiled", "fsdp2_dtensor_state_dict"])
def test_inspect_text_and_json_of_folders_and_archives(name, capsys):
    if refused_without_dtensor(name):
        return
    path = REAL / CASES[name][0]
    code, out, err = run_cli(["inspect", str(path)], capsys)
    assert code == 0 and not err
    assert CASES[name][1].split(" (")[0] in out and "features.0.weight" in out
    assert "num_batches_tracked  3" not in out  # a weight, not metadata
    code, out, _ = run_cli(["inspect", str(path), "--json"], capsys)
    assert code == 0 and len(json.loads(out)["tensors"]) == len(TINY_KEYS)


class _Evil:
    """Unpickling this creates a file: the marker that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_stand_ins_do_not_open_the_door(tmp_path, monkeypatch):
    """A file that names fastcore's L (allowed as a stand-in) still cannot call anything else."""
    fake = types.ModuleType("fastcore.foundation")

    class L(list):
        def __reduce__(self):
            return (L, (), {"items": list(self)})

    L.__module__, L.__qualname__ = "fastcore.foundation", "L"
    fake.L = L
    monkeypatch.setitem(sys.modules, "fastcore", types.ModuleType("fastcore"))
    monkeypatch.setitem(sys.modules, "fastcore.foundation", fake)
    torch.save({"model": maker.Tiny().state_dict(), "opt": {"state": [], "hypers": L([{"lr": 0.1}])}},
               tmp_path / "benign.pth")
    torch.save({"model": maker.Tiny().state_dict(), "opt": {"state": [], "hypers": L([_Evil(tmp_path / "PWNED")])}},
               tmp_path / "evil.pth")
    monkeypatch.undo()
    ck = read_checkpoint(tmp_path / "benign.pth")
    assert ck.format == "fastai Learner.save" and ck.optimizer["hypers"] == [{"lr": 0.1}]
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to unpickle .*open.*--trust"):
        read_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()


class _Getattr:
    """Pickles as getattr(argparse.Namespace, '__init__'), as mmengine's HistoryBuffer pickles its methods."""

    def __reduce__(self):
        import argparse

        return (getattr, (argparse.Namespace, "__init__"))


def test_getattr_in_a_pickle_only_names_the_attribute(tmp_path):
    torch.save({"state_dict": maker.Tiny().state_dict(), "meta": {"fn": _Getattr()}}, tmp_path / "g.pth")
    ck = read_checkpoint(tmp_path / "g.pth")
    assert ck.metadata["meta"] == {"fn": "Namespace.__init__"}


@pytest.mark.parametrize("wrap", ["dataparallel", "compiled", "dataparallel_of_compiled", "attribute"])
@pytest.mark.parametrize("name", ["lightning_model", "mmengine_ema_epoch_2", "timm_ema_v2", "dataparallel_of_compiled"])
def test_real_files_load_into_wrapped_targets(name, wrap):
    inner = maker.fresh(5)
    holder = torch.nn.Module()
    holder.backbone = inner
    target = {"dataparallel": lambda: torch.nn.DataParallel(inner), "compiled": lambda: torch.compile(inner),
              "dataparallel_of_compiled": lambda: torch.nn.DataParallel(torch.compile(inner)),
              "attribute": lambda: holder}[wrap]()
    report = load_weights(target, REAL / CASES[name][0], strict=True)
    assert report.ok, report
    assert_output(inner, name)


def test_lightning_file_of_a_torchvision_resnet18_into_the_bare_model(tmp_path):
    """The real Lightning file's layout around a torchvision resnet18 held as `self.model`."""
    import torchvision

    ck = torch.load(REAL / "lightning_model.ckpt", weights_only=False)  # our own fixture
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval()
    ck["state_dict"] = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save(ck, tmp_path / "epoch=1-step=6.ckpt")
    bare = torchvision.models.resnet18(num_classes=3)
    report = load_weights(bare, tmp_path / "epoch=1-step=6.ckpt", strict=True)
    assert report.ok and report.mapping == "prefix: strip 'model.'"
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(bare.eval()(x), net(x))
    out = convert(tmp_path / "epoch=1-step=6.ckpt", tmp_path / "r18.safetensors")
    assert set(load_file(str(out))) == set(net.state_dict())


def _fake_class(monkeypatch, fullname: str) -> type:
    """A class importable (for pickling) as ``fullname`` while the test runs."""
    module, _, qualname = fullname.rpartition(".")
    cls = type(qualname, (), {"__module__": module, "__qualname__": qualname})
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    setattr(sys.modules[module], qualname, cls)
    return cls


def test_lightning_1_4_callbacks_keyed_by_class(tmp_path, monkeypatch):
    """Lightning < 1.5 keyed checkpoint['callbacks'] by the callback class (a pickled class reference)."""
    checkpoint_cls = _fake_class(monkeypatch, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")
    early_cls = _fake_class(monkeypatch, "pytorch_lightning.callbacks.early_stopping.EarlyStopping")
    user_cls = _fake_class(monkeypatch, "my_project.callbacks.Ema")
    real = torch.load(REAL / "lightning_model.ckpt", weights_only=False)  # our own fixture
    callbacks = {checkpoint_cls: {"monitor": "val_loss", "best_model_score": torch.tensor(0.25),
                                  "best_model_path": "/runs/epoch=3.ckpt", "current_score": torch.tensor(0.3),
                                  "dirpath": "/runs"},
                 early_cls: {"wait_count": 1, "stopped_epoch": 0, "best_score": torch.tensor(0.25), "patience": 3}}
    ck = {"epoch": 3, "global_step": 40, "pytorch-lightning_version": "1.4.9", "state_dict": real["state_dict"],
          "callbacks": callbacks, "optimizer_states": real["optimizer_states"], "lr_schedulers": [],
          "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.1}}
    torch.save(ck, tmp_path / "old.ckpt")
    torch.save({**ck, "callbacks": {**callbacks, user_cls: {"decay": 0.9}}}, tmp_path / "user.ckpt")
    monkeypatch.undo()
    model = maker.fresh(99)
    report = load_weights(model, tmp_path / "old.ckpt", strict=True)
    assert report.format == "PyTorch Lightning (torch zip)"
    assert_output(model, "lightning_model")
    meta = read_checkpoint(tmp_path / "old.ckpt").metadata
    assert meta["callbacks"]["ModelCheckpoint"]["best_model_score"] == 0.25
    assert meta["callbacks"]["EarlyStopping"]["patience"] == 3
    with pytest.raises(UnsafeCheckpointError, match=r"my_project\.callbacks\.Ema.*--trust"):
        read_state_dict(tmp_path / "user.ckpt")


@pytest.mark.parametrize("protocol", [4, 5])
def test_torch_zip_with_pickle_protocol_4_and_5(protocol, tmp_path):
    """torch.save(..., pickle_protocol=pickle.HIGHEST_PROTOCOL) (research code does): torch's own
    weights_only loader cannot parse it; finetune's restricted unpickler reads it, no --trust needed."""
    import argparse

    import numpy as np

    model = maker.fresh(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    maker.train_steps(model, opt, steps=1)
    path = tmp_path / "p.pth"
    torch.save({"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "best_acc1": np.float64(0.5),
                "args": argparse.Namespace(lr=0.1, dtype=torch.float16, size=torch.Size([2, 3]))}, path,
               pickle_protocol=protocol)
    with pytest.raises(Exception, match="Unsupported operand"):
        torch.load(path, weights_only=True)
    fresh = maker.fresh(99)
    report = load_weights(fresh, path, strict=True)
    assert report.format == "pytorch/examples imagenet (torch zip)"
    assert torch.equal(output(fresh), output(model))
    ck = read_checkpoint(path)
    assert ck.metadata == {"best_acc1": 0.5, "args": {"lr": 0.1, "dtype": "torch.float16", "size": [2, 3]}}
    assert ck.optimizer["state"][0]["momentum_buffer"].shape == model.features[0].weight.shape
    torch.save({"state_dict": model.state_dict(), "x": _Evil(tmp_path / "PWNED")}, tmp_path / "evil.pth",
               pickle_protocol=protocol)
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle .*open"):
        read_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()


def _py2_pickle(blobs: dict) -> bytes:
    """What Python 2's cPickle (protocol 2) writes for {'blobs': {name: float32 array}}, as Detectron's
    model-zoo .pkl files hold: byte strings (SHORT_BINSTRING/BINSTRING), numpy's array state with
    its raw data as a str, numpy.core names."""
    import struct

    def s(text: bytes) -> bytes:
        return b"U" + bytes([len(text)]) + text if len(text) < 256 else b"T" + struct.pack("<i", len(text)) + text

    dtype = (b"cnumpy\ndtype\n" + s(b"f4") + b"K\x00K\x01\x87R"
             + b"(K\x03" + s(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    out = b"\x80\x02}(" + s(b"blobs") + b"}("
    for name, arr in blobs.items():
        shape = b"(" + b"".join(b"K" + bytes([n]) for n in arr.shape) + b"t"
        out += s(name.encode()) + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
        out += b"(K\x01" + shape + dtype + b"\x89" + s(arr.astype("<f4").tobytes()) + b"tb"
    return out + b"u" + s(b"__author__") + s(b"Detectron") + b"u."


def test_python2_pickle_of_numpy_weights(tmp_path):
    """Detectron (Caffe2) .pkl files were written by Python 2: numpy data as latin1 str (detectron2
    reads them with encoding='latin1')."""
    import numpy as np

    rng = np.random.default_rng(0)
    blobs = {"conv1_w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "fc_b": np.array([0.0, 255.0, -1.5], dtype=np.float32)}  # bytes that are not ASCII
    path = tmp_path / "R-50.pkl"
    path.write_bytes(_py2_pickle(blobs))
    sd = read_state_dict(path)
    assert set(sd) == set(blobs)
    for k, v in blobs.items():
        assert torch.equal(sd[k], torch.from_numpy(v))


def test_wrong_architecture_is_not_a_match_through_num_batches_tracked(capsys):
    """A 0-d num_batches_tracked fits every BatchNorm: it must not make a prefix mapping, nor a load."""
    import torchvision

    path = REAL / "lightning_model.ckpt"
    with pytest.raises(WeightsError, match=r"0 of 8 tensors match .*closest file ~ model keys: 'model\.fc\.weight'"):
        load_weights(torchvision.models.resnet18(), path)
    code, out, _ = run_cli(["inspect", str(path), "--model", "resnet18", "--json"], capsys)
    report = json.loads(out)["load_report"]
    assert code == 0 and report["ok"] is False and report["error"].startswith(f"{path}: 0 of 8 tensors")


@pytest.mark.parametrize("name", ["lightning_net_omegaconf", "fastai_stage1", "mmengine_epoch_2",
                                  "swin_style_ckpt_epoch_0", "lightning_hydra_template"])
def test_trust_does_not_need_the_producing_library(name):
    """--trust unpickles the real classes; where their library is not installed (omegaconf, fastcore,
    mmengine, yacs), the file is still read, the safe way."""
    file, _, attr = CASES[name]
    sd = read_state_dict(REAL / file, trust=True)
    model = maker.Tiny()
    model.load_state_dict({k.removeprefix(f"{attr}." if attr else ""): v for k, v in sd.items()}, strict=True)
    assert_output(model, name)

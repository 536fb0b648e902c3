"""finetune.weights: every checkpoint layout round-trips, loading rules, safety, bad input.

Each fixture is written here, with the real producing library where it is a test
dependency (torch, safetensors, timm) and a faithful reproduction of the layout
otherwise. Every round trip compares the loaded model's outputs with the source's.
"""

from __future__ import annotations

import argparse
import inspect
import json
import pathlib
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import run_here
from finetune.errors import CheckpointError, FinetuneError, UnsafeCheckpointError, WeightsError
from finetune.weights import LoadReport, convert, inspect_checkpoint, load_weights, read_state_dict
from finetune.weights import unpickle as unpickle_mod
from finetune.weights.formats import read_checkpoint, sniff


# --------------------------------------------------------------------------- helpers
class TinyNet(nn.Module):
    """conv -> bn -> Sequential features -> pool -> fc: the key layout of a small CNN."""

    def __init__(self, in_ch: int = 3, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.features = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1))
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.features(x).mean(dim=(2, 3)))


def make_net(seed: int, **kw) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(**kw)
    with torch.no_grad():  # running stats that matter in eval mode
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
        net.bn1.num_batches_tracked.fill_(7)
    return net.eval()


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))


def out(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def assert_same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor = X) -> None:
    ya, yb = out(a, x), out(b, x)
    assert torch.allclose(ya, yb, atol=1e-6), (ya - yb).abs().max()


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def sgd_state(model: nn.Module) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    opt.zero_grad()
    return opt.state_dict()


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """Nothing downloads; caches live in the test's folder."""
    monkeypatch.setenv("FINETUNE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


@pytest.fixture(scope="module")
def src() -> TinyNet:
    """The model whose weights every fixture stores (parameters changed by one SGD step)."""
    net = make_net(1)
    return net


# --------------------------------------------------------------------------- writers: one per layout
def w_plain(net, d: Path) -> Path:
    torch.save(net.state_dict(), d / "plain.pt")
    return d / "plain.pt"


def w_legacy(net, d: Path) -> Path:
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, d / "legacy.pth",
               _use_new_zipfile_serialization=False)
    return d / "legacy.pth"


def w_imagenet_example(net, d: Path) -> Path:
    """pytorch/examples imagenet/main.py: DataParallel(model) (features only for alexnet/vgg)."""
    wrapped = make_net(1)
    wrapped.load_state_dict(net.state_dict())
    wrapped.features = nn.DataParallel(wrapped.features)  # mid-key 'features.module.0.weight'
    wrapped = nn.DataParallel(wrapped)  # top-level 'module.'
    sd = wrapped.state_dict()
    assert any(k.startswith("module.features.module.") for k in sd)
    torch.save({"epoch": 4, "arch": "tinynet", "state_dict": sd, "best_acc1": torch.tensor(71.5),
                "optimizer": sgd_state(make_net(2)), "scheduler": {"step_size": 30, "last_epoch": 4}},
               d / "checkpoint.pth.tar")
    return d / "checkpoint.pth.tar"


def w_torchvision_refs(net, d: Path) -> Path:
    """torchvision references/classification train.py with --model-ema (AveragedModel)."""
    ema = torch.optim.swa_utils.AveragedModel(make_net(9))  # EMA weights differ from the raw ones
    ema.n_averaged += 5
    args = argparse.Namespace(model="tinynet", lr=0.5, output_dir=pathlib.Path(d), model_ema=True)
    torch.save({"model": net.state_dict(), "optimizer": sgd_state(make_net(2)),
                "lr_scheduler": {"last_epoch": 2}, "epoch": 2, "args": args, "model_ema": ema.state_dict()},
               d / "model_2.pth")
    return d / "model_2.pth"


def w_timm_saver(net, d: Path) -> Path:
    """timm's real CheckpointSaver with a ModelEmaV3."""
    from timm.utils import CheckpointSaver, ModelEmaV3

    model = make_net(1)
    model.load_state_dict(net.state_dict())
    ema = ModelEmaV3(make_net(9))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args = argparse.Namespace(model="tinynet", lr=0.1, seed=np.int64(42), ratio=np.float64(0.5),
                              dtype=np.dtype("float32"), data_dir=pathlib.PurePosixPath("/data"))
    saver = CheckpointSaver(model, opt, args=args, model_ema=ema, checkpoint_dir=str(d), recovery_dir=str(d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saver.save_checkpoint(epoch=0, metric=0.75)
    return d / "last.pth.tar"


def w_lightning(net, d: Path) -> Path:
    """PyTorch Lightning ModelCheckpoint layout (Lightning itself is not installed)."""
    torch.save({
        "epoch": 5, "global_step": 600, "pytorch-lightning_version": "2.4.0",
        "state_dict": prefixed(net.state_dict(), "model."),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 6}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max'}": {
            "monitor": "val_acc", "best_model_score": torch.tensor(0.9), "best_model_path": "/x/best.ckpt"}},
        "optimizer_states": [sgd_state(make_net(2))],
        "lr_schedulers": [{"last_epoch": 5, "_last_lr": [0.01]}],
        "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.01, "num_classes": 5},
    }, d / "epoch=5-step=600.ckpt")
    return d / "epoch=5-step=600.ckpt"


def w_fastai(net, d: Path) -> Path:
    """fastai Learner.save(with_opt=True): {'model', 'opt'}."""
    params = list(net.parameters())
    opt = {"state": [{"grad_avg": torch.zeros_like(p), "do_wd": True} for p in params],
           "hypers": [{"lr": 1e-3, "mom": 0.9, "wd": 0.01}]}
    torch.save({"model": net.state_dict(), "opt": opt}, d / "stage1.pth")
    return d / "stage1.pth"


def w_accelerate(net, d: Path) -> Path:
    """accelerate save_state folder (safe_serialization=True) with an untouchable random_states pickle."""
    out = d / "checkpoint_0"
    out.mkdir()
    save_file(net.state_dict(), str(out / "model.safetensors"))
    torch.save(sgd_state(make_net(2)), out / "optimizer.bin")
    torch.save({"last_epoch": 1}, out / "scheduler.bin")
    (out / "random_states_0.pkl").write_bytes(pickle.dumps(_Evil(d / "PWNED_random_states")))
    return out


def w_accelerate_bin(net, d: Path) -> Path:
    out = d / "checkpoint_bin"
    out.mkdir()
    torch.save(net.state_dict(), out / "pytorch_model.bin")
    torch.save(sgd_state(make_net(2)), out / "optimizer.bin")
    return out


def w_sharded_safetensors(net, d: Path) -> Path:
    out = d / "sharded"
    out.mkdir()
    keys = list(net.state_dict())
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:]), 1):
        name = f"model-0000{i}-of-00002.safetensors"
        save_file({k: net.state_dict()[k].contiguous() for k in part}, str(out / name))
        weight_map.update({k: name for k in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


def w_sharded_bin(net, d: Path) -> Path:
    out = d / "sharded_bin"
    out.mkdir()
    sd = net.state_dict()
    keys = list(sd)
    weight_map = {}
    for i, part in enumerate((keys[:3], keys[3:]), 1):
        name = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: sd[k] for k in part}, out / name)
        weight_map.update({k: name for k in part})
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return out


def w_safetensors(net, d: Path) -> Path:
    save_file(net.state_dict(), str(d / "weights.bin"), metadata={"format": "pt"})  # name says nothing
    return d / "weights.bin"


def w_torchscript(net, d: Path) -> Path:
    torch.jit.script(net).save(str(d / "scripted.pt"))
    return d / "scripted.pt"


def w_traced(net, d: Path) -> Path:
    torch.jit.trace(net, X).save(str(d / "traced.zip"))
    return d / "traced.zip"


def w_dcp(net, d: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # torch 2.4's dcp.save has no no_dist: without a process group it saves as one process anyway
        no_dist = {"no_dist": True} if "no_dist" in inspect.signature(dcp.save).parameters else {}
        dcp.save({"model": net.state_dict(), "step": 10}, checkpoint_id=str(d / "dcp"), **no_dist)
    return d / "dcp"


def w_numpy_pickle(net, d: Path) -> Path:
    """A plain pickle of numpy arrays, as detectron2's model zoo .pkl files are."""
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    (d / "model_final.pkl").write_bytes(pickle.dumps({"model": weights, "__author__": "Detectron2"}, protocol=2))
    return d / "model_final.pkl"


def w_compiled(net, d: Path) -> Path:
    model = make_net(1)
    model.load_state_dict(net.state_dict())
    sd = torch.compile(model).state_dict()  # '_orig_mod.' (no compilation happens before a call)
    assert all(k.startswith("_orig_mod.") for k in sd)
    torch.save(sd, d / "compiled.pt")
    return d / "compiled.pt"


def w_finetune(net, d: Path) -> Path:
    torch.save({"format": "finetune-checkpoint", "format_version": 1, "model": net.state_dict(),
                "optimizer": sgd_state(make_net(2)), "scheduler": {}, "epoch": 3, "step": 120,
                "best_top1": 0.8, "best_top5": 1.0, "arch": "tinynet", "classes": list("abcde"),
                "config": {"lr": 0.1}, "versions": {"torch": torch.__version__}}, d / "ck.pt")
    return d / "ck.pt"


def nested(key: str) -> Callable[[nn.Module, Path], Path]:
    def write(net, d: Path) -> Path:
        torch.save({key: net.state_dict(), "extra": 1}, d / f"nested_{key}.pt")
        return d / f"nested_{key}.pt"

    write.__name__ = f"w_nested_{key}"
    return write


def wrapped(prefix: str) -> Callable[[nn.Module, Path], Path]:
    def write(net, d: Path) -> Path:
        torch.save({"state_dict": prefixed(net.state_dict(), prefix)}, d / "wrapped.pt")
        return d / "wrapped.pt"

    write.__name__ = f"w_wrapped_{prefix}"
    return write


class _Evil:
    """Unpickling this creates a file: the marker that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


LAYOUTS = [
    (w_plain, "state_dict"),
    (w_legacy, "legacy torch.save"),
    (w_imagenet_example, "pytorch/examples imagenet"),
    (w_torchvision_refs, "torchvision references"),
    (w_timm_saver, "timm CheckpointSaver"),
    (w_lightning, "PyTorch Lightning"),
    (w_fastai, "fastai"),
    (w_accelerate, "accelerate save_state"),
    (w_accelerate_bin, "accelerate save_state"),
    (w_sharded_safetensors, "sharded"),
    (w_sharded_bin, "sharded"),
    (w_safetensors, "safetensors"),
    (w_torchscript, "TorchScript"),
    (w_traced, "TorchScript"),
    (w_dcp, "torch.distributed.checkpoint"),
    (w_compiled, "state_dict"),
    (w_numpy_pickle, "plain pickle"),
    (w_finetune, "finetune"),
    *[(nested(k), f"under '{k}'") for k in ("state_dict", "model", "model_state_dict", "net", "network",
                                             "weights", "params", "module")],
    *[(wrapped(p), "") for p in ("module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod.")],
]


@pytest.mark.parametrize(("write", "fmt"), LAYOUTS, ids=[w.__name__.removeprefix("w_") for w, _ in LAYOUTS])
def test_every_layout_round_trips(write, fmt, src, tmp_path):
    path = write(src, tmp_path)
    dst = make_net(123)
    assert not torch.allclose(out(dst), out(src))  # the test can fail
    report = load_weights(dst, path)
    assert report.ok, report
    assert fmt in report.format, report.format
    assert not report.unexpected and not report.mismatched, report
    assert len(report.loaded) == len(src.state_dict())
    assert_same_outputs(dst, src)
    sd = read_state_dict(path)
    assert all(v.device.type == "cpu" for v in sd.values())
    if "Lightning" not in fmt:  # Lightning keeps the LightningModule attribute; convert strips it
        assert set(sd) == set(src.state_dict())
    assert not list(tmp_path.glob("PWNED*")), "a pickle in the folder was executed"


def test_sniffing_ignores_file_names(src, tmp_path):
    save_file(src.state_dict(), str(tmp_path / "a.pt"))
    torch.save(src.state_dict(), tmp_path / "b.safetensors")
    assert sniff(tmp_path / "a.pt") == "safetensors"
    assert sniff(tmp_path / "b.safetensors") == "torch zip"
    for name in ("a.pt", "b.safetensors"):
        dst = make_net(5)
        load_weights(dst, tmp_path / name)
        assert_same_outputs(dst, src)


# --------------------------------------------------------------------------- EMA
@pytest.mark.parametrize("write", [w_timm_saver, w_torchvision_refs])
def test_ema_is_reported_and_picked_on_request(write, src, tmp_path):
    path = write(src, tmp_path)
    ema_src = make_net(9)  # the EMA model's weights in both writers
    raw = make_net(77)
    report = load_weights(raw, path)
    assert report.ema_available and not report.ema_used
    assert "EMA" in str(report)
    assert_same_outputs(raw, src)
    ema = make_net(77)
    report = load_weights(ema, path, ema=True)
    assert report.ema_used and report.ok, report
    assert_same_outputs(ema, ema_src)
    assert torch.equal(read_state_dict(path, ema=True)["fc.weight"], ema_src.fc.weight)


def test_ema_requested_but_absent_falls_back_with_a_note(src, tmp_path):
    dst = make_net(3)
    report = load_weights(dst, w_plain(src, tmp_path), ema=True)
    assert not report.ema_used and any("no EMA" in n for n in report.notes)
    with pytest.warns(UserWarning, match="no EMA"):
        read_state_dict(tmp_path / "plain.pt", ema=True)


# --------------------------------------------------------------------------- target model wrapped
@pytest.mark.parametrize("wrap", ["dataparallel", "compile", "compile+dataparallel"])
def test_target_model_may_be_wrapped(wrap, src, tmp_path):
    path = w_imagenet_example(src, tmp_path)  # the file is wrapped too
    inner = make_net(50)
    model: nn.Module = inner
    if "compile" in wrap:
        model = torch.compile(model)
    if "dataparallel" in wrap:
        model = nn.DataParallel(model)
    report = load_weights(model, path)
    assert report.ok and not report.unexpected, report
    assert_same_outputs(inner, src)


# --------------------------------------------------------------------------- prefix alignment
@pytest.mark.parametrize("prefix", ["model.", "backbone.", "encoder.", "net.body."])
def test_file_prefixes_are_stripped(prefix, src):
    dst = make_net(4)
    report = load_weights(dst, prefixed(src.state_dict(), prefix))
    assert report.ok and prefix in report.mapping, report
    assert_same_outputs(dst, src)


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = make_net(8)
        self.extra = nn.Linear(5, 2)

    def forward(self, x):
        return self.backbone(x)


def test_prefix_is_added_when_the_model_nests_the_architecture(src):
    dst = Wrapper()
    report = load_weights(dst, src.state_dict())
    assert "add 'backbone.'" in report.mapping
    assert sorted(report.missing) == ["extra.bias", "extra.weight"]
    assert report.ok and "no classifier head" in str(report)  # (extra, its last Linear, is taken as its head)
    assert_same_outputs(dst.backbone, src)
    with pytest.raises(WeightsError, match="strict"):
        load_weights(Wrapper(), src.state_dict(), strict=True)
    assert load_weights(Wrapper(), src.state_dict(), exclude=["extra"]).ok


def test_lightning_keys_with_several_attributes(src):
    sd = prefixed(src.state_dict(), "model.")
    sd["criterion.weight"] = torch.ones(5)
    dst = make_net(4)
    report = load_weights(dst, {"pytorch-lightning_version": "2.1", "state_dict": sd, "epoch": 1})
    assert report.unexpected == ["criterion.weight"] and report.ok
    assert_same_outputs(dst, src)


# --------------------------------------------------------------------------- include / exclude / rename
def test_exclude_keeps_the_models_tensors(src):
    dst = make_net(4, num_classes=3)
    fc_before = dst.fc.weight.clone()
    report = load_weights(dst, src.state_dict(), exclude=["fc.*"], strict=True)
    assert report.ok and sorted(report.excluded) == ["fc.bias", "fc.weight"]
    assert not report.mismatched and torch.equal(dst.fc.weight, fc_before)
    assert torch.equal(dst.conv1.weight, src.conv1.weight)


def test_exclude_a_module_name_and_include(src):
    dst = make_net(4)
    report = load_weights(dst, src.state_dict(), exclude=["fc"])
    assert "fc.weight" in report.excluded and not torch.equal(dst.fc.weight, src.fc.weight)
    dst = make_net(4)
    report = load_weights(dst, src.state_dict(), include=["features.*"])
    assert sorted(report.loaded) == sorted(k for k in src.state_dict() if k.startswith("features."))
    assert torch.equal(dst.features[0].weight, src.features[0].weight)
    assert not torch.equal(dst.conv1.weight, src.conv1.weight)


def test_rename_regex_applies_before_matching(src):
    sd = {k.replace("fc.", "head.").replace("features.", "body."): v for k, v in src.state_dict().items()}
    with pytest.raises(WeightsError):
        load_weights(make_net(4), sd, strict=True)
    dst = make_net(4)
    report = load_weights(dst, sd, rename={r"^head\.": "fc.", r"^body\.": "features."}, strict=True)
    assert report.ok
    assert_same_outputs(dst, src)


# --------------------------------------------------------------------------- shapes
def imagenet_like(seed: int = 1) -> TinyNet:
    return make_net(seed, num_classes=10)


def test_shape_mismatch_skip_error_and_report():
    big = imagenet_like()
    dst = make_net(4, num_classes=3)
    fc_before = dst.fc.weight.clone()
    report = load_weights(dst, big.state_dict())
    assert ("fc.weight", (10, 6), (3, 6)) in report.mismatched
    assert report.ok and torch.equal(dst.fc.weight, fc_before)
    assert "10x6" in str(report) and "3x6" in str(report)
    with pytest.raises(WeightsError, match="fc.weight"):
        load_weights(make_net(4, num_classes=3), big.state_dict(), shape_mismatch="error")
    with pytest.raises(WeightsError, match="strict"):
        load_weights(make_net(4, num_classes=3), big.state_dict(), strict=True)
    with pytest.raises(WeightsError, match="shape_mismatch"):
        load_weights(make_net(4), big.state_dict(), shape_mismatch="pad")  # type: ignore[arg-type]


def test_adapt_classifier_rows_by_class_map():
    big = imagenet_like()
    dst = make_net(4, num_classes=3)
    class_map = {0: 7, 1: 2, 2: 9}
    report = load_weights(dst, big.state_dict(), shape_mismatch="adapt", class_map=class_map, strict=True)
    assert {n for n, _ in report.adapted} == {"fc.weight", "fc.bias"} and not report.mismatched
    assert torch.allclose(out(dst), out(big)[:, [7, 2, 9]], atol=1e-6)
    with pytest.raises(WeightsError, match="out of range"):
        load_weights(make_net(4, num_classes=3), big.state_dict(), shape_mismatch="adapt", class_map={0: 10})


def small_vit(image_size: int) -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=image_size, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                             mlp_dim=32, num_classes=3)


@pytest.mark.parametrize("mismatch", ["skip", "adapt"])
def test_vit_position_embedding_is_resampled_for_another_image_size(mismatch):
    torch.manual_seed(0)
    src, dst = small_vit(32), small_vit(64)  # a 4x4 grid of patches -> 8x8
    report = load_weights(dst, src.state_dict(), shape_mismatch=mismatch, strict=True)
    assert [n for n, _ in report.adapted] == ["encoder.pos_embedding"] and not report.mismatched
    old, new = src.encoder.pos_embedding.detach(), dst.encoder.pos_embedding.detach()
    assert new.shape == (1, 1 + 64, 16) and torch.equal(new[:, 0], old[:, 0])  # the class token's own
    # bicubic: the 8x8 grid's mean is close to the 4x4 grid's; a plain copy is impossible
    assert torch.allclose(new[:, 1:].mean(1), old[:, 1:].mean(1), atol=0.1)
    timm_layers = pytest.importorskip("timm.layers")
    want = timm_layers.resample_abs_pos_embed(old, (8, 8), num_prefix_tokens=1)
    assert torch.allclose(new, want, atol=1e-6)  # what timm gives for its own pretrained ViTs
    dst(torch.randn(2, 3, 64, 64))  # and the model runs at its size


def test_vit_position_embedding_mismatch_is_an_error_when_asked():
    with pytest.raises(WeightsError, match="pos_embedding"):
        load_weights(small_vit(64), small_vit(32).state_dict(), shape_mismatch="error")


def test_swin_relative_position_tables_follow_the_window_size():
    timm = pytest.importorskip("timm")
    from timm.models.swin_transformer import checkpoint_filter_fn

    from finetune import create_model

    torch.manual_seed(0)
    src = timm.create_model("swin_tiny_patch4_window7_224", num_classes=3).eval()
    with torch.no_grad():  # pretrained-like tables (timm initialises them near zero)
        for name, p in src.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0, 1)
    dst = create_model("timm:swin_tiny_patch4_window7_224", num_classes=3, img_size=64).eval()  # windows 7 -> 4, 2
    report = load_weights(dst, src.state_dict())
    assert not report.mismatched and len(report.adapted) == 8
    table = "layers.3.blocks.0.attn.relative_position_bias_table"
    old, new = src.state_dict()[table], dst.state_dict()[table]
    assert new.shape == (9, 24) and torch.equal(new.reshape(3, 3, 24), old.reshape(13, 13, 24)[5:8, 5:8])
    ref = timm.create_model("swin_tiny_patch4_window7_224", num_classes=3, img_size=64).eval()
    ref.load_state_dict(checkpoint_filter_fn(src.state_dict(), ref))  # timm's own (interpolating) resize
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        ours, theirs = dst(x), ref(x)
    assert torch.allclose(ours, theirs, atol=0.05 * float(theirs.abs().max()))
    with pytest.raises(WeightsError, match="relative_position_bias_table"):
        load_weights(create_model("timm:swin_tiny_patch4_window7_224", num_classes=3, img_size=64), src.state_dict(),
                     shape_mismatch="error")


def test_relative_position_table_grows_bicubically_and_keeps_extra_rows():
    from finetune.weights.load import resample_rel_pos_table

    t = torch.randn(13 * 13 + 3, 4)  # BEiT: 3 class-token rows after the offsets
    out, how = resample_rel_pos_table(t, 23 * 23 + 3)
    assert out.shape == (23 * 23 + 3, 4) and torch.equal(out[-3:], t[-3:]) and "bicubic" in how
    with pytest.raises(WeightsError, match="relative position table"):
        resample_rel_pos_table(torch.randn(50, 4), 49)


@pytest.mark.parametrize("channels", [1, 4, 6])
def test_adapt_first_conv_input_channels(channels):
    src = make_net(1)
    dst = make_net(4, in_ch=channels)
    report = load_weights(dst, src.state_dict(), shape_mismatch="adapt", strict=True)
    assert [n for n, _ in report.adapted] == ["conv1.weight"]
    if channels == 1:  # a gray image equals the RGB image with three equal channels
        gray = X[:, :1]
        assert torch.allclose(out(dst, gray), out(src, gray.repeat(1, 3, 1, 1)), atol=1e-5)
    elif channels == 6:  # the RGB image given twice gives the same activations
        assert torch.allclose(out(dst, X.repeat(1, 2, 1, 1)), out(src), atol=1e-5)
    else:
        assert dst.conv1.weight.shape[1] == 4
        assert torch.allclose(dst.conv1.weight[:, 3], src.conv1.weight[:, 0] * 3 / 4)
    skipped = load_weights(make_net(4, in_ch=channels), src.state_dict())
    assert skipped.mismatched[0][0] == "conv1.weight"


def test_wrong_architecture_raises_with_closest_keys(src):
    from collections import OrderedDict

    other = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 3), flat=nn.Flatten(), head=nn.Linear(4, 2)))
    with pytest.raises(WeightsError, match=r"0 of 12 tensors match the model's 4 .*closest file ~ model keys: '"):
        load_weights(other, src.state_dict())
    with pytest.raises(WeightsError, match="other shapes"):  # same names, every shape different
        load_weights(TinyNet(num_classes=7), {"fc.weight": torch.ones(7, 2), "fc.bias": torch.ones(3)})


def test_report_str_and_dict(src):
    report = load_weights(make_net(4, num_classes=3), src.state_dict(), exclude=["features.2.*"])
    text = str(report)
    for word in ("format", "mapping", "loaded", "mismatched", "excluded"):
        assert word in text
    d = report.to_dict()
    assert json.loads(json.dumps(d))["mismatched"][0]["model_shape"] == [3, 6]
    assert isinstance(report, LoadReport) and report.ok


# --------------------------------------------------------------------------- named sources
def test_torchvision_named_source_from_the_hub_cache(tmp_path):
    import torchvision

    src = torchvision.models.squeezenet1_1(num_classes=1000).eval()
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(src.state_dict(), cache / "squeezenet1_1-b8a52dc0.pth")
    x = torch.randn(1, 3, 64, 64)
    dst = torchvision.models.squeezenet1_1(num_classes=1000).eval()
    report = load_weights(dst, "torchvision", arch="squeezenet1_1")
    assert report.ok and "squeezenet1_1-b8a52dc0.pth" in report.source
    assert_same_outputs(dst, src, x)
    dst2 = torchvision.models.squeezenet1_1(num_classes=4).eval()
    dst2.finetune_arch = "squeezenet1_1"
    report = load_weights(dst2, "torchvision")
    assert [m[0] for m in report.mismatched] == ["classifier.1.weight", "classifier.1.bias"]


def test_torchvision_named_source_offline_error(tmp_path):
    import torchvision

    model = torchvision.models.squeezenet1_1()
    with pytest.raises(WeightsError) as e:
        load_weights(model, "torchvision", arch="squeezenet1_1")
    msg = str(e.value)
    assert "squeezenet1_1-b8a52dc0.pth" in msg and "https://download.pytorch.org/models/" in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in msg
    with pytest.raises(WeightsError, match="architecture"):
        load_weights(model, "torchvision")


def test_timm_named_source_from_the_hf_cache(tmp_path):
    import timm

    src = timm.create_model("test_resnet", pretrained=False).eval()
    snap = tmp_path / "hf_home" / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    save_file(src.state_dict(), str(snap / "model.safetensors"))
    dst = timm.create_model("test_resnet", pretrained=False).eval()
    report = load_weights(dst, "timm:test_resnet")
    assert report.ok and report.format.startswith("safetensors")
    x = torch.randn(1, 3, 32, 32)
    assert_same_outputs(dst, src, x)


def test_timm_named_source_offline_error(tmp_path):
    with pytest.raises(WeightsError) as e:
        load_weights(make_net(1), "timm:test_resnet")
    msg = str(e.value)
    assert "model.safetensors" in msg and "huggingface.co/timm/test_resnet.r160_in1k" in msg
    assert str(tmp_path / "hf_home" / "hub") in msg


# --------------------------------------------------------------------------- safety
def evil_files(d: Path) -> dict[str, Path]:
    marker = d / "PWNED"
    files = {}
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": _Evil(marker)}, d / "evil.pt")
    files["zip"] = d / "evil.pt"
    torch.save({"x": _Evil(marker)}, d / "evil_legacy.pt", _use_new_zipfile_serialization=False)
    files["legacy"] = d / "evil_legacy.pt"
    (d / "evil.pkl").write_bytes(pickle.dumps({"x": _Evil(marker)}, protocol=2))
    files["raw pickle"] = d / "evil.pkl"
    return files


@pytest.mark.parametrize("kind", ["zip", "legacy", "raw pickle"])
def test_code_in_a_pickle_never_runs(kind, tmp_path):
    path = evil_files(tmp_path)[kind]
    with pytest.raises(FinetuneError) as e:
        read_state_dict(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, UnsafeCheckpointError)
    assert "open" in str(e.value) and "--trust" in str(e.value)
    assert not (tmp_path / "PWNED").exists()


def test_code_in_dcp_metadata_never_runs(src, tmp_path):
    folder = w_dcp(src, tmp_path)
    (folder / ".metadata").write_bytes(pickle.dumps(_Evil(tmp_path / "PWNED")))
    with pytest.raises(UnsafeCheckpointError, match="open"):
        read_state_dict(folder)
    assert not (tmp_path / "PWNED").exists()


def test_pickled_module_needs_trust(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 10 * 10, 2))
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(UnsafeCheckpointError) as e:
        read_state_dict(tmp_path / "whole.pt")
    assert "torch.nn.modules" in str(e.value) and "trust=True" in str(e.value)
    dst = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 10 * 10, 2))
    report = load_weights(dst, tmp_path / "whole.pt", trust=True)
    assert report.ok and "pickled nn.Module" in report.format
    assert_same_outputs(dst, net)


def test_numpy1_and_numpy2_scalars_are_allowed(src, tmp_path):
    meta = {"acc": np.float64(0.5), "n": np.int64(3), "dt": np.dtype("float32"), "arr": np.arange(3)}
    torch.save({"state_dict": src.state_dict(), "best_acc1": meta["acc"], "meta": meta}, tmp_path / "np2.pt",
               _use_new_zipfile_serialization=False)
    data = (tmp_path / "np2.pt").read_bytes()
    assert b"numpy._core.multiarray\n" in data  # protocol 2 GLOBALs are text lines
    (tmp_path / "np1.pt").write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    for name in ("np1.pt", "np2.pt"):
        ck = read_checkpoint(tmp_path / name)
        assert ck.metadata["best_acc1"] == 0.5
        dst = make_net(4)
        load_weights(dst, tmp_path / name)
        assert_same_outputs(dst, src)


def test_old_torch_warns(monkeypatch, tmp_path, src):
    assert not unpickle_mod.torch_is_safe("2.5.1") and unpickle_mod.torch_is_safe("2.6.0")
    monkeypatch.setattr(unpickle_mod, "torch_is_safe", lambda version=None: False)
    monkeypatch.setattr(unpickle_mod, "_CVE_WARNED", False)
    with pytest.warns(UserWarning, match="CVE-2025-32434"):
        read_state_dict(w_plain(src, tmp_path))

    monkeypatch.setattr(unpickle_mod, "_CVE_WARNED", False)  # the command line: one finetune warning line
    res = run_here("inspect", str(tmp_path / "plain.pt"))
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("finetune: warning: torch ") and res.stderr.count("\n") == 1, res.stderr
    assert "CVE-2025-32434" in res.stderr


# --------------------------------------------------------------------------- bad input
def bad_inputs(d: Path, src: nn.Module) -> dict[str, tuple[Path, str]]:
    good = w_plain(src, d)
    data = good.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    legacy = w_legacy(src, d)
    (d / "truncated_legacy.pth").write_bytes(legacy.read_bytes()[:300])
    save_file(src.state_dict(), str(d / "w.safetensors"))
    (d / "truncated.safetensors").write_bytes((d / "w.safetensors").read_bytes()[:400])
    (d / "random.bin").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    (d / "empty.pt").write_bytes(b"")
    (d / "notes.txt").write_text("epoch 3: loss 0.2\n")
    (d / "nothing").mkdir()
    (d / "nothing" / "README.md").write_text("hi")
    import zipfile

    with zipfile.ZipFile(d / "other.zip", "w") as zf:
        zf.writestr("a.txt", "hello")
    np.savez(d / "bit.npz", **{"resnet/root_block/standardized_conv2d/kernel": np.zeros((7, 7, 3, 64), np.float32)})
    return {
        "truncated zip": (d / "truncated.pt", "truncated or corrupt"),
        "truncated legacy": (d / "truncated_legacy.pth", "corrupt or truncated"),
        "truncated safetensors": (d / "truncated.safetensors", "truncated"),
        "random bytes": (d / "random.bin", "unrecognised format"),
        "empty": (d / "empty.pt", "empty file"),
        "text": (d / "notes.txt", "text file"),
        "folder": (d / "nothing", "holds no model weights"),
        "other zip": (d / "other.zip", "not a PyTorch checkpoint"),
        "jax npz": (d / "bit.npz", "NumPy .npz archive (JAX/Flax weights)"),
        "missing": (d / "missing.pt", "no such file"),
    }


def test_bad_input_raises_one_clear_error(src, tmp_path):
    for kind, (path, words) in bad_inputs(tmp_path, src).items():
        with pytest.raises(CheckpointError) as e:
            read_state_dict(path)
        msg = str(e.value)
        assert str(path) in msg and words in msg, (kind, msg)
        assert "\n" not in msg, (kind, msg)


# --------------------------------------------------------------------------- inspect / convert
def test_inspect_reports_format_metadata_tensors_and_optimizer(src, tmp_path):
    info = inspect_checkpoint(w_timm_saver(src, tmp_path), optimizer=True)
    assert info["format"] == "timm CheckpointSaver"
    assert info["metadata"]["epoch"] == 0 and info["metadata"]["metric"] == 0.75
    assert info["metadata"]["args"]["model"] == "tinynet" and info["metadata"]["version"] == 2
    assert info["totals"]["tensors"] == len(src.state_dict())
    assert info["totals"]["numel"] == sum(v.numel() for v in src.state_dict().values())
    assert info["ema"]["tensors"] == len(src.state_dict())
    assert info["optimizer"]["param_groups"][0]["lr"] == 0.1
    info = inspect_checkpoint(w_finetune(src, tmp_path), optimizer=True)
    assert info["format"] == "finetune" and info["metadata"]["best_top1"] == 0.8
    assert info["metadata"]["classes"] == list("abcde")
    assert info["optimizer"]["state_keys"] == ["momentum_buffer"]
    info = inspect_checkpoint(w_lightning(src, tmp_path), optimizer=True)
    assert info["metadata"]["global_step"] == 600 and "optimizers" in info["optimizer"]
    json.dumps(info)


@pytest.mark.parametrize(("suffix", "reader"), [
    (".safetensors", lambda p: __import__("safetensors.torch", fromlist=["x"]).load_file(str(p))),
    (".pt", lambda p: torch.load(p, weights_only=True)),
])
@pytest.mark.parametrize("write", [w_lightning, w_imagenet_example, w_torchscript, w_dcp])
def test_convert_writes_clean_plain_weights(write, suffix, reader, src, tmp_path):
    path = write(src, tmp_path)
    dst_file = convert(path, tmp_path / f"clean{suffix}")
    sd = reader(dst_file)
    dst = make_net(6)
    dst.load_state_dict(sd, strict=True)  # plain torch, no finetune: names are clean
    assert_same_outputs(dst, src)


def test_convert_half_ema_and_prefix(src, tmp_path):
    path = w_timm_saver(src, tmp_path)
    out_file = convert(path, tmp_path / "ema16.safetensors", ema=True, half=True)
    sd = read_state_dict(out_file)
    assert sd["fc.weight"].dtype == torch.float16 and sd["bn1.num_batches_tracked"].dtype == torch.int64
    assert torch.allclose(sd["fc.weight"].float(), make_net(9).fc.weight, atol=1e-3)
    with pytest.raises(WeightsError, match="no EMA"):
        convert(w_plain(src, tmp_path), tmp_path / "x.pt", ema=True)
    convert(w_lightning(src, tmp_path), tmp_path / "kept.pt", strip_prefix="none")
    assert all(k.startswith("model.") for k in torch.load(tmp_path / "kept.pt", weights_only=True))
    torch.save(prefixed(src.state_dict(), "encoder."), tmp_path / "enc.pt")
    convert(tmp_path / "enc.pt", tmp_path / "dec.pt", strip_prefix="encoder")
    assert set(torch.load(tmp_path / "dec.pt", weights_only=True)) == set(src.state_dict())
    with pytest.raises(WeightsError, match="no key starts"):
        convert(tmp_path / "enc.pt", tmp_path / "y.pt", strip_prefix="decoder.")
    with pytest.raises(WeightsError, match="must end in"):
        convert(tmp_path / "enc.pt", tmp_path / "y.txt")


@pytest.mark.parametrize("safe", [False, True])
def test_timm_hub_folder_reads_with_its_config(safe, tmp_path):
    timm = pytest.importorskip("timm")
    from timm.models._hub import save_for_hf

    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    save_for_hf(model, tmp_path / "hub", model_config={"label_names": ["a", "b", "c"]}, safe_serialization=safe)
    ck = read_checkpoint(tmp_path / "hub")
    assert ck.metadata["config.architecture"] == "resnet18" and ck.metadata["config.label_names"] == ["a", "b", "c"]
    assert ck.metadata["config.num_classes"] == 3 and ck.metadata["config.crop_pct"] == 0.95
    fresh = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    load_weights(fresh, tmp_path / "hub", strict=True)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(fresh(x), model(x))
    (tmp_path / "hub" / "config.json").write_text("{not json")  # a broken config.json: the weights still read
    assert "config.architecture" not in read_checkpoint(tmp_path / "hub").metadata

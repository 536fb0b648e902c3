"""Issue #5 end to end through `finetune train`: what is frozen stays bitwise unchanged, what trains
is in the right optimizer groups, gradual unfreezing survives resumes, feature caching equals live
linear probing, and the trainable table / audit are reported.

Every run starts from a known state: ``--pretrained init.pt``, a state dict saved from
``finetune.models.create_model``. The CLI is driven in-process (``finetune.cli.main``: the same
parsing, config merge and error mapping as the console script, without a torch import per run).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune.checkpoint import Checkpointer
from finetune.cli import main
from finetune.config import TrainConfig
from finetune.data.shapes import make_shapes
from finetune.models import create_model
from finetune.train import train

TIMING_FIELDS = {"images_per_s"}
NUM_CLASSES = 8  # the shapes dataset
STEPS_PER_EPOCH = 4  # 8 classes x 4 training images, batch size 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Bitwise comparisons need the same thread count in every run (subprocesses get OMP_NUM_THREADS=1)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINETUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield make_shapes(tmp_path_factory.mktemp("data") / "shapes", per_class=4, size=32)


@pytest.fixture(scope="module")
def init(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The starting weights, as a file for --pretrained and as tensors to compare with."""
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in create_model("resnet18", num_classes=NUM_CLASSES).state_dict().items()}
    path = tmp_path_factory.mktemp("init") / "init.pt"
    torch.save(state, path)
    return path, state


def cli(data: Path, init_path: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["train", "--data", str(data), "--model", "resnet18", "--img-size", "32", "--batch-size", "8",
            "--workers", "0", "--epochs", str(epochs), "--seed", "5", "--optimizer", "sgd", "--lr", "0.05", "--pretrained", str(init_path),
            "--out", str(out), *extra]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def weights(run_dir: Path, path: Path | None = None) -> dict[str, Any]:
    return Checkpointer(run_dir).load(path)


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]


def group_names(state: dict[str, Any]) -> list[str]:
    return [g["name"] for g in state["optimizer"]["groups"]]


# --------------------------------------------------------------------------- --freeze / --lr-mult / --bn
def test_frozen_parameters_and_their_bn_statistics_stay_bitwise_unchanged(data, init, tmp_path, capsys):
    init_path, start = init
    out, err = run(cli(data, init_path, tmp_path / "run", "--max-steps", "3", "--freeze", "conv1", "bn1", "layer1",
                       "layer2", "--lr-mult", "layer4=0.1", "--bn", "frozen"), capsys)
    frozen = ("conv1", "bn1", "layer1", "layer2")
    state = weights(tmp_path / "run")
    changed = {k for k, v in state["model"].items() if not torch.equal(v, start[k])}
    assert not {k for k in changed if under(k, *frozen)}  # weights, running stats, num_batches_tracked
    assert {"layer3.0.conv1.weight", "layer4.1.conv2.weight", "fc.weight", "layer3.0.bn1.running_mean"} <= changed

    # the optimizer holds exactly the trainable parameters, in the --lr-mult groups
    groups = {g["name"]: g for g in state["optimizer"]["groups"]}
    assert set(groups) == {"layer4", "layer4/no_decay", "default", "default/no_decay"}
    assert groups["layer4"]["hparams"]["lr_mult"] == 0.1 and groups["default"]["hparams"]["lr_mult"] == 1.0
    assert groups["layer4/no_decay"]["hparams"]["weight_decay"] == 0.0
    in_optimizer = [n for g in groups.values() for n in g["params"]]
    assert sorted(in_optimizer) == sorted(n for n, _ in create_model("resnet18", NUM_CLASSES).named_parameters()
                                          if not under(n, *frozen))
    assert all(under(n, "layer4") for n in groups["layer4"]["params"])

    # the trainable table: printed at start, saved as trainable.json; the audit found nothing
    table = json.loads((tmp_path / "run" / "trainable.json").read_text())
    rows = {r["block"]: r for r in table["rows"]}
    assert all(rows[b]["trainable"] == 0 for b in frozen) and rows["conv1"]["bn"] == "-"
    assert all(rows[b]["bn"] == "frozen" for b in ("bn1", "layer1", "layer2"))
    assert all(rows[b]["trainable"] == rows[b]["total"] > 0 for b in ("layer3", "layer4", "fc"))
    assert table["trainable"] == sum(r["trainable"] for r in table["rows"]) < table["total"]
    assert f"{table['trainable']:,} of {table['total']:,} parameters trainable" in out
    assert "layer2" in out and "finetune: warning" not in err


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_train_only_with_layer_decay_and_bn_policy(data, init, tmp_path, capsys, bn):
    """--train-only layer4 fc: the rest keeps its weights, except what --bn says about its BatchNorms:
    ``eval`` trains their affine parameters with fixed statistics, ``train`` updates the statistics of
    fixed affine parameters. --layer-decay scales the learning rate per block from the head."""
    init_path, start = init
    run(cli(data, init_path, tmp_path / "run", "-q", "--max-steps", "2", "--train-only", "layer4", "fc",
            "--bn", bn, "--layer-decay", "0.5"), capsys)
    state = weights(tmp_path / "run")
    model = state["model"]
    changed = {k for k, v in model.items() if not torch.equal(v, start[k])}
    rest = [k for k in model if not under(k, "layer4", "fc")]
    bn_affine = {k for k in rest if ".bn" in k or k.startswith("bn1.") or ".downsample.1." in k}
    bn_affine = {k for k in bn_affine if k.endswith((".weight", ".bias"))}
    stats = {k for k in rest if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert {k for k in rest if k in changed} <= (bn_affine if bn == "eval" else stats)
    assert ("layer1.0.bn1.weight" in changed) == (bn == "eval")
    assert ("layer1.0.bn1.running_mean" in changed) == (bn == "train")
    assert "layer1.0.conv1.weight" not in changed and "layer4.0.conv1.weight" in changed
    mult = {g["name"]: g["hparams"]["lr_mult"] for g in state["optimizer"]["groups"]}
    assert mult["fc"] == 1.0 and mult["layer4"] == 0.5
    if bn == "eval":  # the frozen parts' BN affine parameters train, at their blocks' decayed lr
        assert mult["layer1/no_decay"] == 0.5**4


# --------------------------------------------------------------------------- --unfreeze PATTERN@EPOCH
def test_gradual_unfreezing_adds_a_named_group_at_its_epoch_and_survives_resumes(data, init, tmp_path, capsys):
    init_path, start = init
    base = TrainConfig(data=str(data), model="resnet18", img_size=32, batch_size=8, workers="0", epochs=2, seed=5,
                       optimizer="sgd", lr=0.05, pretrained=str(init_path), train_only=["fc"], unfreeze=["layer4@2"],
                       save_every_steps=2, keep_last=10)
    ref = tmp_path / "reference"
    capsys.readouterr()
    train(replace(base, out=str(ref)), quiet=False)
    out = capsys.readouterr().out
    assert "epoch 2: unfroze" in out and out.index("epoch 1/2") < out.index("epoch 2: unfroze") < out.index("epoch 2/2")

    ckpts = ref / "checkpoints"
    epoch1 = weights(ref, ckpts / "ckpt-e0001-s00000004.pt")  # end of epoch 1: layer4 still frozen
    assert group_names(epoch1) == ["default", "default/no_decay"]
    assert not any(under(n, "layer4") for n in epoch1["optimizer"]["shapes"])
    assert all(torch.equal(v, start[k]) for k, v in epoch1["model"].items() if under(k, "layer4"))
    mid2 = weights(ref, ckpts / "ckpt-e0001-s00000006.pt")  # middle of epoch 2: its own group, with momentum
    assert group_names(mid2) == ["default", "default/no_decay", "unfreeze@2:default", "unfreeze@2:default/no_decay"]
    assert "momentum_buffer" in mid2["optimizer"]["state"]["layer4.1.conv2.weight"]
    final = weights(ref)
    assert not torch.equal(final["model"]["layer4.1.conv2.weight"], start["layer4.1.conv2.weight"])
    assert all(torch.equal(v, start[k]) for k, v in final["model"].items() if not under(k, "layer4", "fc"))

    # stopped mid-epoch 1, at the boundary right before the unfreeze epoch, and after it: same end
    run_dir = tmp_path / "stopped"
    for i, stop in enumerate((3, 4, 6)):
        train(replace(base, out=str(run_dir), max_steps=stop, resume="auto" if i else None), quiet=True)
    train(replace(base, out=str(run_dir), resume="auto"), quiet=True)
    assert "optimizer state restored by name with differences" not in capsys.readouterr().err
    got = weights(run_dir)
    assert group_names(got) == group_names(final)
    assert all(torch.equal(v, got["model"][k]) for k, v in final["model"].items())
    for name, values in final["optimizer"]["state"].items():
        assert torch.equal(values["momentum_buffer"], got["optimizer"]["state"][name]["momentum_buffer"]), name
    assert metrics(run_dir) == metrics(ref)


# --------------------------------------------------------------------------- --linear-probe (--cache-features)
def test_linear_probe_with_cached_features_equals_live_probe_without_augmentation(data, init, tmp_path, capsys):
    init_path, start = init
    runs = {"live": ["--linear-probe", "--no-augment"], "cached": ["--linear-probe", "--cache-features", "--no-augment"]}
    for name, flags in runs.items():
        out, _ = run(cli(data, init_path, tmp_path / name, *flags, epochs=2), capsys)
        assert "4,104 of 11,180,616 parameters trainable" in out  # the head: 512 x 8 + 8
        assert json.loads((tmp_path / name / "trainable.json").read_text())["trainable"] == 4104
    live, cached = weights(tmp_path / "live")["model"], weights(tmp_path / "cached")["model"]
    for model in (live, cached):  # everything but the head bitwise as it started, BN statistics included
        assert all(torch.equal(v, start[k]) for k, v in model.items() if not under(k, "fc"))
        assert not torch.equal(model["fc.weight"], start["fc.weight"])
    for k in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(cached[k], live[k], rtol=1e-5, atol=1e-6)
    m_live, m_cached = metrics(tmp_path / "live"), metrics(tmp_path / "cached")
    assert len(m_live) == len(m_cached) == 2
    for a, b in zip(m_live, m_cached, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_no_augment_trains_on_the_eval_transform_in_the_seeded_order(data, init, tmp_path, capsys):
    """--no-augment is only the transform: same steps per epoch, and it differs from augmented training."""
    init_path, _ = init
    for name, flags in {"aug": [], "plain": ["--no-augment"]}.items():
        run(cli(data, init_path, tmp_path / name, "-q", "--linear-probe", "--max-steps", "2", *flags), capsys)
    aug, plain = weights(tmp_path / "aug"), weights(tmp_path / "plain")
    assert aug["step"] == plain["step"] == 2 and aug["loader"] == plain["loader"]
    assert not torch.equal(aug["model"]["fc.weight"], plain["model"]["fc.weight"])


# --------------------------------------------------------------------------- the audit
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torchvision: GoogLeNet init
def test_audit_findings_after_the_first_backward_are_printed_as_warnings(data, tmp_path, capsys):
    """GoogLeNet's auxiliary classifiers get no gradient (only the main logits enter the loss): they are
    frozen, unless --train-only asks to train one, which the audit then says gets no gradient."""
    _, err = run(["train", "-q", "--data", str(data), "--model", "googlenet", "--img-size", "32", "--batch-size", "8",
                  "--workers", "0", "--epochs", "1", "--max-steps", "1", "--seed", "5", "--out", str(tmp_path / "g"),
                  "--train-only", "aux1", "fc"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("finetune: warning: ")]
    assert any(line.startswith("finetune: warning: no_grad_after_backward:") and "aux1." in line for line in lines), err
    assert "warning: warning" not in err

"""--layer-decay when only the head trains and --bn when nothing is frozen change nothing: the run says so."""

from __future__ import annotations

from pathlib import Path

from conftest import run_here

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--epochs", "1",
        "--max-steps", "1", "--device", "cpu", "-q"]


def test_layer_decay_with_a_linear_probe_is_named_as_doing_nothing(tmp_path: Path) -> None:
    res = run_here("train", "--linear-probe", "--layer-decay", "0.7", "--out", str(tmp_path / "r"), *TINY)
    assert res.returncode == 0, res.stderr
    assert "--layer-decay 0.7 changes nothing" in res.stderr


def test_bn_policy_with_nothing_frozen_is_named_as_doing_nothing_and_is_quiet_when_it_applies(tmp_path: Path) -> None:
    res = run_here("train", "--bn", "eval", "--out", str(tmp_path / "a"), *TINY)
    assert res.returncode == 0, res.stderr
    assert "--bn eval changes nothing" in res.stderr
    res = run_here("train", "--bn", "eval", "--freeze", "layer1", "--layer-decay", "0.7", "--out", str(tmp_path / "b"),
                   *TINY)
    assert res.returncode == 0, res.stderr
    assert "changes nothing" not in res.stderr


def test_dropout_with_a_linear_probe_is_named_as_doing_nothing(tmp_path: Path) -> None:
    import timm  # noqa: F401  (the test's model)

    args = [a if a != "resnet18" else "timm:resnet10t" for a in TINY]
    res = run_here("train", "--linear-probe", "--dropout", "0.3", "--out", str(tmp_path / "r"), *args)
    assert res.returncode == 0, res.stderr
    assert "--dropout 0.3 changes nothing with --linear-probe" in res.stderr


def test_bn_policy_of_frozen_batchnorm_layers_whose_affine_parameters_train_is_not_named_as_doing_nothing() -> None:
    # --freeze '*bn*' --bn eval: the BatchNorm statistics stay fixed while their affine parameters train, so every
    # parameter trains but the policy applies (the default would freeze those parameters too)
    import torchvision

    from finetune import TrainConfig
    from finetune.train import apply_freezing, unused_freeze_flags

    model = torchvision.models.resnet18(num_classes=2)
    cfg = TrainConfig(freeze=["*bn*"], bn="eval")
    apply_freezing(model, cfg)
    assert all(p.requires_grad for p in model.parameters())
    assert unused_freeze_flags(model, cfg, unfrozen_later=False) == []


def test_layer_decay_evened_out_by_an_lr_mult_is_not_named_as_doing_nothing() -> None:
    # layer4 at 0.5 from the decay, x2 from --lr-mult: the lr of fc; without the decay it would train at 2x
    import torchvision

    from finetune import TrainConfig
    from finetune.freeze import param_groups
    from finetune.train import apply_freezing, unused_freeze_flags

    model = torchvision.models.resnet18(num_classes=2)
    cfg = TrainConfig(train_only=["layer4", "fc"], layer_decay=0.5, lr_mult={"layer4": 2.0})
    apply_freezing(model, cfg)
    assert len({g["lr"] for g in param_groups(model, 0.1, lr_mult=cfg.lr_mult, layer_decay=0.5)}) == 1
    assert unused_freeze_flags(model, cfg, unfrozen_later=False) == []


def test_freeze_of_what_a_linear_probe_or_train_only_freezes_already_is_named_as_doing_nothing() -> None:
    import torchvision

    from finetune import TrainConfig
    from finetune.train import apply_freezing, unused_freeze_flags

    for cfg, said in [(TrainConfig(linear_probe=True, freeze=["layer1"], unfreeze=["layer4@2"], epochs=2),
                       "--freeze layer1 changes nothing: --linear-probe freezes it already (everything but fc)"),
                      (TrainConfig(train_only=["layer4", "fc"], freeze=["layer1", "layer4.1"]),
                       "--freeze layer1 changes nothing: --train-only layer4 fc freezes it already")]:
        model = torchvision.models.resnet18(num_classes=2)
        apply_freezing(model, cfg)
        notes = unused_freeze_flags(model, cfg, unfrozen_later=bool(cfg.unfreeze))
        assert len(notes) == 1 and notes[0].startswith(said), notes  # (layer4.1 within what trains: it applies)

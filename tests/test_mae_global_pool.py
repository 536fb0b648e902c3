"""MAE's fine-tuned ViTs (``{'model': state_dict}`` of its models_vit.py with global_pool=True: ``fc_norm``, no final
``norm``) into timm's ViTs: the model is built with global_pool='avg' and fc_norm=True, every tensor loads, and the run's
checkpoints rebuild it so for eval / predict / resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")

from conftest import write_colour_folder  # noqa: E402
from finetune.config import TrainConfig  # noqa: E402
from finetune.models import create_model  # noqa: E402
from finetune.train import build_model, load_checkpoint_model, train  # noqa: E402
from finetune.weights import load_weights  # noqa: E402

ARCH = "timm:test_vit"  # (a small VisionTransformer: token pooling, final norm)


def _mae_file(tmp_path: Path, num_classes: int = 2) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    ref = timm.create_model(ARCH[5:], img_size=32, global_pool="avg", fc_norm=True, num_classes=num_classes).eval()
    with torch.no_grad():  # (LayerNorms away from their 1 / 0 init: a random norm would show)
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.5)
    path = tmp_path / "mae_finetuned_vit.pth"
    torch.save({"model": ref.state_dict()}, path)
    return path, ref


def test_mae_file_builds_the_avg_pooled_model_and_loads_every_tensor(tmp_path: Path) -> None:
    path, ref = _mae_file(tmp_path)
    cfg = TrainConfig(data=str(tmp_path), model=ARCH, pretrained=str(path), img_size=32).resolved()
    assert cfg.global_pool == "avg"
    model = build_model(cfg, 2, torch.device("cpu"), quiet=True).eval()
    assert type(model.norm).__name__ == "Identity" and type(model.fc_norm).__name__ == "LayerNorm"
    strict = timm.create_model(ARCH[5:], img_size=32, global_pool="avg", fc_norm=True, num_classes=2).eval()
    strict.load_state_dict(torch.load(path)["model"])  # strict
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), strict(x)) and torch.equal(model(x), ref(x))
    report = load_weights(create_model(ARCH, 2, img_size=32, global_pool="avg"), str(path))
    assert report.ok and not report.missing and not report.unexpected and not report.mismatched


def test_token_pooled_files_and_other_models_keep_their_pooling(tmp_path: Path) -> None:
    path, _ = _mae_file(tmp_path)
    assert TrainConfig(data=str(tmp_path), model=ARCH, pretrained=str(path), img_size=32,
                       global_pool="token").resolved().global_pool == "token"  # the user's setting wins
    token = tmp_path / "token.pth"
    torch.save({"model": timm.create_model(ARCH[5:], img_size=32, num_classes=2).state_dict()}, token)
    assert TrainConfig(data=str(tmp_path), model=ARCH, pretrained=str(token), img_size=32).resolved().global_pool is None
    assert TrainConfig(data=str(tmp_path), model="timm:beit_base_patch16_224",  # (has fc_norm already)
                       pretrained=str(path)).resolved().global_pool is None


def test_load_report_says_why_norm_is_missing(tmp_path: Path) -> None:
    path, _ = _mae_file(tmp_path)
    report = load_weights(create_model(ARCH, 2, img_size=32), str(path))  # (token pooling, as timm builds it)
    assert "norm.weight" in report.missing
    assert any("pools by average (fc_norm" in n and "global_pool='avg'" in n for n in report.notes), report.notes


def test_run_from_mae_file_is_rebuilt_with_its_pooling(tmp_path: Path) -> None:
    path, _ = _mae_file(tmp_path)
    data = write_colour_folder(tmp_path / "data", per_class=4, size=32)
    out = tmp_path / "run"
    train(TrainConfig(data=str(data), model=ARCH, pretrained=str(path), img_size=32, epochs=1, batch_size=4,
                      workers="0", out=str(out)), quiet=True)
    assert "global-pool: avg" in (out / "config.yaml").read_text()
    for ckpt in (out, out / "best.safetensors"):  # eval / predict / cam's model
        model, _ = load_checkpoint_model(ckpt, torch.device("cpu"))
        assert type(model.fc_norm).__name__ == "LayerNorm" and type(model.norm).__name__ == "Identity"
    with pytest.raises(Exception, match="global-pool avg"):  # a resume cannot change how the model is built
        train(TrainConfig(data=str(data), model=ARCH, pretrained=str(path), img_size=32, epochs=2, batch_size=4,
                          workers="0", out=str(out), resume="auto", global_pool="token"), quiet=True)

"""finetune.weights on real DeepSpeed checkpoints (tests/fixtures/deepspeed_checkpoints/).

The folders were written by DeepSpeed's ``save_checkpoint`` (ZeRO stages 0 to 3, fp32/fp16/bf16,
one and two ranks), by accelerate's ``save_state`` with a DeepSpeedPlugin and by PyTorch Lightning's
DeepSpeedStrategy, by
tests/fixtures/make_deepspeed_checkpoints.py (versions in ``versions.json``). DeepSpeed is not
needed here. Each check compares the loaded model's output with the output of the weights
DeepSpeed's own ``zero_to_fp32`` consolidation gave (``reference.safetensors``).
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.cli import main as cli
from finetune.errors import CheckpointError, UnsafeCheckpointError
from finetune.weights import convert, load_weights, read_state_dict
from finetune.weights.formats import read_checkpoint
from finetune.weights.unpickle import torch_load

FIXTURES = Path(__file__).parent / "fixtures"
DS = FIXTURES / "deepspeed_checkpoints"

_spec = importlib.util.spec_from_file_location("make_real_checkpoints", FIXTURES / "make_real_checkpoints.py")
assert _spec is not None and _spec.loader is not None
maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(maker)

REF = load_file(str(DS / "reference.safetensors"))
TINY_KEYS = set(maker.Tiny().state_dict())
LIGHTNING_TAG = "epoch=1-step=6.ckpt"

#: fixture -> (ZeRO stage, ranks, 16-bit module weights, Lightning)
CASES: dict[str, tuple[int, int, bool, bool]] = {
    "ds_stage0_fp32": (0, 1, False, False),
    "ds_stage0_fp16": (0, 1, True, False),
    "ds_stage1_fp32_2ranks": (1, 2, False, False),
    "ds_stage2_fp32_ema": (2, 1, False, False),
    "ds_stage2_fp16": (2, 1, True, False),
    "ds_stage2_bf16_2ranks": (2, 2, True, False),
    "ds_stage3_fp32": (3, 1, False, False),
    "ds_stage3_fp32_2ranks": (3, 2, False, False),
    "ds_stage3_bf16_2ranks": (3, 2, True, False),
    "ds_stage2_frozen_2ranks": (2, 2, False, False),
    "ds_stage3_frozen_2ranks": (3, 2, False, False),
    "accelerate_deepspeed_stage2": (2, 1, False, False),
    "accelerate_deepspeed_stage3": (3, 1, False, False),
    "lightning_deepspeed_stage2": (2, 1, False, True),
    "lightning_deepspeed_stage3": (3, 1, False, True),
}


def top(name: str) -> Path:
    """The folder holding ``latest`` and the tag folder."""
    return DS / name / LIGHTNING_TAG if CASES[name][3] else DS / name


def tag(name: str) -> Path:
    return top(name) / (top(name) / "latest").read_text().strip()


def model_states(name: str) -> Path:
    return next(p for p in sorted(tag(name).iterdir()) if p.name.endswith("model_states.pt"))


def output(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(REF["x"])


def assert_output(model: torch.nn.Module, key: str) -> None:
    y, ref = output(model), REF[f"y.{key}"]
    assert torch.allclose(y, ref, rtol=0, atol=1e-6), (key, (y - ref).abs().max())


def bare(sd: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in sd.items()} if CASES[name][3] else sd


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_every_fixture_has_a_case_and_a_reference():
    assert {p.name for p in DS.iterdir() if p.is_dir()} == set(CASES)
    assert {k.removeprefix("y.").removesuffix(".ema") for k in REF if k.startswith("y.")} == set(CASES)
    versions = json.loads((DS / "versions.json").read_text())
    assert {"deepspeed", "lightning", "accelerate", "torch"} <= set(versions)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[2] and c[0] < 3])  # stage 3: placeholders
def test_16_bit_module_weights_are_not_the_truth(name):
    """With fp16/bf16 the module holds 16-bit copies: the reference (DeepSpeed's fp32 master weights)
    differs from them, so reading the module instead of the partitions would fail the checks."""
    module = torch_load(model_states(name), name="m")["module"]
    assert any(v.dtype in (torch.float16, torch.bfloat16) for v in module.values())
    model = maker.Tiny()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in module.items()})
    assert not torch.allclose(output(model), REF[f"y.{name}"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_read_and_load_every_entry_point(name):
    stage, ranks, half, lightning = CASES[name]
    fmt = f"DeepSpeed (ZeRO stage {stage})"
    for path in (top(name), tag(name), model_states(name)):
        ck = read_checkpoint(path)
        assert ck.format.startswith(fmt) and ("PyTorch Lightning" in ck.format) == lightning, ck.format
        assert ck.metadata["zero_stage"] == stage and ck.metadata["dp_world_size"] == ranks
        assert ck.metadata["global_steps"] == (6 if lightning else 3) and ck.metadata["ds_version"]
        assert all(type(v) is torch.Tensor and v.device.type == "cpu" for v in ck.weights.values())
        assert all(v.dtype in (torch.float32, torch.int64) for v in ck.weights.values())  # fp32 is the truth
        sd = bare(ck.weights, name)
        assert set(sd) == TINY_KEYS
        model = maker.Tiny()
        model.load_state_dict(sd, strict=True)
        assert_output(model, name)
        assert any("fp32 master weights" in n for n in ck.notes) == half
    fresh = maker.fresh(99)
    report = load_weights(fresh, top(name), strict=True)  # what `finetune train --pretrained FOLDER` does
    assert report.ok and len(report.loaded) == len(TINY_KEYS), report
    assert report.ema_available == (name == "ds_stage2_fp32_ema") and not report.ema_used
    assert_output(fresh, name)


def test_lightning_run_folder_holding_the_checkpoint_folder():
    ck = read_checkpoint(DS / "lightning_deepspeed_stage3")
    assert ck.format == "DeepSpeed (ZeRO stage 3), PyTorch Lightning DeepSpeedStrategy"
    assert ck.metadata["hyper_parameters"] == {"lr": 0.01, "arch": "tiny"} and ck.metadata["epoch"] == 1
    assert any(LIGHTNING_TAG in n for n in ck.notes)


def test_ema_in_client_state():
    path = top("ds_stage2_fp32_ema")
    model = maker.fresh(99)
    assert load_weights(model, path, ema=True, strict=True).ema_used
    assert_output(model, "ds_stage2_fp32_ema.ema")
    assert not torch.allclose(REF["y.ds_stage2_fp32_ema"], REF["y.ds_stage2_fp32_ema.ema"], atol=1e-4)
    assert set(read_state_dict(path, ema=True)) == TINY_KEYS


@pytest.mark.parametrize("name", ["ds_stage3_bf16_2ranks", "ds_stage0_fp16", "lightning_deepspeed_stage3"])
def test_inspect_cli(name, capsys):
    code, out, err = run_cli(["inspect", str(top(name)), "--json", "--optimizer"], capsys)
    assert code == 0, err
    info = json.loads(out)
    stage, ranks, _, _ = CASES[name]
    assert info["format"].startswith(f"DeepSpeed (ZeRO stage {stage})")
    meta = info["metadata"]
    assert meta["zero_stage"] == stage and meta["dp_world_size"] == ranks and meta["ds_version"] == "0.19.8"
    assert meta["ds_config"]["zero_optimization"]["stage"] == stage
    assert info["totals"]["numel"] == 140 and info["optimizer"]["state_keys"] == ["exp_avg", "exp_avg_sq", "step"]
    code, out, _ = run_cli(["inspect", str(top(name))], capsys)
    assert code == 0 and f"DeepSpeed (ZeRO stage {stage})" in out and "global_steps" in out


@pytest.mark.parametrize("name", ["ds_stage2_bf16_2ranks", "ds_stage3_fp32_2ranks", "lightning_deepspeed_stage2",
                                  "accelerate_deepspeed_stage3"])
def test_convert_cli_to_safetensors(name, tmp_path, capsys):
    dst = tmp_path / "w.safetensors"
    code, _, err = run_cli(["convert", str(top(name)), str(dst)], capsys)
    assert code == 0, err
    model = maker.Tiny()
    model.load_state_dict(load_file(str(dst)), strict=True)  # clean names: Lightning's 'model.' stripped
    assert_output(model, name)
    ema = convert(top("ds_stage2_fp32_ema"), tmp_path / "ema.pt", ema=True)
    model.load_state_dict(torch.load(ema, weights_only=True), strict=True)
    assert_output(model, "ds_stage2_fp32_ema.ema")


def copy_fixture(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(DS / name, dst)
    return dst / LIGHTNING_TAG if CASES[name][3] else dst


def cli_error(path: Path, capsys) -> str:
    code, out, err = run_cli(["inspect", str(path)], capsys)
    assert code == 2 and out == "", out
    assert err.startswith("finetune: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("name", "missing"), [
    ("ds_stage3_fp32_2ranks", "zero_pp_rank_1_mp_rank_00_optim_states.pt"),
    ("ds_stage3_bf16_2ranks", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"),
    ("ds_stage2_bf16_2ranks", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"),
    ("ds_stage1_fp32_2ranks", "zero_pp_rank_1_mp_rank_00_optim_states.pt"),
])
def test_missing_partition_is_a_one_line_error(name, missing, tmp_path, capsys):
    folder = copy_fixture(name, tmp_path)
    (folder / "global_step3" / missing).unlink()
    err = cli_error(folder, capsys)
    assert f"'{missing}' is missing" in err
    with pytest.raises(CheckpointError, match=missing):
        load_weights(maker.fresh(1), folder)


def test_stage3_frozen_parameter_needs_every_rank_model_states(tmp_path, capsys):
    folder = copy_fixture("ds_stage3_frozen_2ranks", tmp_path)
    (folder / "global_step3" / "zero_pp_rank_1_mp_rank_00_model_states.pt").unlink()
    assert "'zero_pp_rank_1_mp_rank_00_model_states.pt' is missing" in cli_error(folder, capsys)


def test_stage3_without_any_partition(tmp_path, capsys):
    folder = copy_fixture("ds_stage3_fp32", tmp_path)
    (folder / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    assert "'zero_pp_rank_0_mp_rank_00_optim_states.pt' is missing" in cli_error(folder, capsys)


@pytest.mark.parametrize("which", ["zero_pp_rank_1_mp_rank_00_optim_states.pt",
                                   "zero_pp_rank_0_mp_rank_00_model_states.pt"])
def test_truncated_file_is_a_one_line_error(which, tmp_path, capsys):
    folder = copy_fixture("ds_stage3_fp32_2ranks", tmp_path)
    file = folder / "global_step3" / which
    file.write_bytes(file.read_bytes()[:1500])
    err = cli_error(folder, capsys)
    assert which in err and ("truncated" in err or "corrupt" in err), err


def test_stale_partition_of_another_run(tmp_path, capsys):
    folder = copy_fixture("ds_stage3_fp32_2ranks", tmp_path)
    step = folder / "global_step3"
    shutil.copy(step / "zero_pp_rank_1_mp_rank_00_optim_states.pt", step / "zero_pp_rank_2_mp_rank_00_optim_states.pt")
    assert "zero_pp_rank_2_mp_rank_00_optim_states.pt" in cli_error(folder, capsys)


def test_latest_names_a_missing_tag(tmp_path, capsys):
    folder = copy_fixture("ds_stage2_fp16", tmp_path)
    (folder / "latest").write_text("global_step9")
    assert "global_step9" in cli_error(folder, capsys)


def test_stage2_model_states_alone_fall_back_to_the_module(tmp_path):
    """No partitions beside a stage 2 file: the module's (16-bit) weights, and a note saying so."""
    folder = copy_fixture("ds_stage2_fp16", tmp_path)
    (folder / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    ck = read_checkpoint(folder)
    assert ck.format == "DeepSpeed (ZeRO stage 2)" and any("not the fp32 master weights" in n for n in ck.notes)
    assert ck.weights["fc.weight"].dtype == torch.float16 and set(ck.weights) == TINY_KEYS


def test_an_optimizer_partition_file_reads_the_whole_checkpoint(tmp_path):
    name = "ds_stage3_fp32_2ranks"
    model = maker.fresh(99)
    load_weights(model, tag(name) / "zero_pp_rank_1_mp_rank_00_optim_states.pt", strict=True)
    assert_output(model, name)
    renamed = tmp_path / "partition.pt"  # the file alone, out of its folder: say what it is
    shutil.copy(tag(name) / "zero_pp_rank_1_mp_rank_00_optim_states.pt", renamed)
    with pytest.raises(CheckpointError, match="one rank's DeepSpeed optimizer partition"):
        read_checkpoint(renamed)


def test_model_states_in_memory():
    states = torch_load(model_states("ds_stage2_fp32_ema"), name="m")
    ck = read_checkpoint(states)
    assert ck.format == "DeepSpeed (ZeRO stage 2)" and set(ck.weights) == TINY_KEYS and ck.ema is not None
    with pytest.raises(CheckpointError, match="stage 3 .* placeholders"):
        read_checkpoint(torch_load(model_states("ds_stage3_fp32"), name="m"))


def test_deepspeed_classes_are_inert_and_others_refused(tmp_path):
    """The optimizer files pickle DeepSpeed classes: stand-ins, never DeepSpeed (not even imported);
    an unknown DeepSpeed class records its arguments; any other class is still refused."""
    name = "ds_stage3_fp32"
    optim = tag(name) / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    obj = torch_load(optim, name="o")["optimizer_state_dict"]
    assert obj["zero_stage"] == 3 and type(obj["loss_scaler"]).__name__ == "Inert"
    assert "deepspeed" not in sys.modules

    def patched(module: str, cls: str) -> Path:
        """A copy whose optimizer file names ``module.cls`` where it names ZeroStageEnum (called with 3)."""
        folder = copy_fixture(name, tmp_path / f"{module}.{cls}")
        file = folder / "global_step3" / optim.name
        with zipfile.ZipFile(file) as zf:
            entries = {n: zf.read(n) for n in zf.namelist()}
        data_pkl = next(n for n in entries if n.endswith("data.pkl"))
        glob = b"cdeepspeed.runtime.zero.config\nZeroStageEnum\n"
        assert entries[data_pkl].count(glob) == 1
        entries[data_pkl] = entries[data_pkl].replace(glob, f"c{module}\n{cls}\n".encode())
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for n, data in entries.items():
                zf.writestr(n, data)
        file.write_bytes(buf.getvalue())
        return folder

    folder = patched("deepspeed.runtime.zero.config", "ZeroStage")  # a class of another DeepSpeed version
    model = maker.fresh(99)
    load_weights(model, folder, strict=True)  # recorded (its argument: the stage), not made
    assert_output(model, name)
    assert "deepspeed" not in sys.modules
    folder = patched("os", "system")
    with pytest.raises(UnsafeCheckpointError, match=r"os\.system.*--trust"):
        read_checkpoint(folder)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="needs DeepSpeed absent")
def test_trust_without_deepspeed_installed():
    model = maker.fresh(99)
    load_weights(model, top("ds_stage3_bf16_2ranks"), trust=True, strict=True)
    assert_output(model, "ds_stage3_bf16_2ranks")

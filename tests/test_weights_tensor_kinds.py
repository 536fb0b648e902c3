"""Checkpoints holding unusual tensor kinds and dtypes: read, inspected, converted and loaded
with the values that were saved (or one clear error naming the tensor)."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import error_line, run_here
from finetune.errors import WeightsError
from finetune.weights import convert, inspect_checkpoint, load_weights, read_state_dict

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (NaN-safe, fp8-safe)."""
    if a.dtype != b.dtype or a.shape != b.shape or a.layout != b.layout:
        return False
    if a.is_quantized:
        return torch.equal(a.int_repr(), b.int_repr()) and torch.equal(a.dequantize(), b.dequantize())
    if a.layout != torch.strided:
        return torch.equal(a.to_dense(), b.to_dense())
    if a.dtype == torch.bool or a.numel() == 0:
        return torch.equal(a, b)
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def every_dtype() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "bf16": torch.randn(3, 4, generator=g).bfloat16(),
        "f16": torch.randn(3, generator=g).half(),
        "f32": torch.randn(2, 3, generator=g),
        "f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "f8_e4m3": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.randn(4, generator=g).to(torch.float8_e5m2),
        "i8": torch.tensor([1, -2], dtype=torch.int8),
        "u8": torch.tensor([1, 250], dtype=torch.uint8),
        "bn.num_batches_tracked": torch.tensor(7),
        "mask": torch.tensor([True, False, True]),
        "c64": torch.randn(2, generator=g, dtype=torch.complex64),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


@pytest.fixture
def dtype_file(tmp_path):
    path = tmp_path / "dtypes.pt"
    torch.save(every_dtype(), path)
    return path


def test_every_dtype_reads_and_converts_bit_for_bit(dtype_file, tmp_path):
    ref = every_dtype()
    back = read_state_dict(dtype_file)
    assert all(same(ref[k], back[k]) for k in ref)
    for out, reader in ((tmp_path / "o.safetensors", load_file), (tmp_path / "o.pt", lambda p: torch.load(p, weights_only=True))):
        written = reader(convert(dtype_file, out))
        assert set(written) == set(ref) and all(same(ref[k], written[k]) for k in ref), out


def test_half_halves_float32_and_float64_only(dtype_file, tmp_path):
    """--half used to turn bfloat16 and float8 into float16 (fp8 doubled in size, bf16 values
    beyond 65504 became inf); integer, bool and complex buffers were already kept."""
    ref = every_dtype()
    for out in (tmp_path / "h.safetensors", tmp_path / "h.pt"):
        written = load_file(convert(dtype_file, out, half=True)) if out.suffix == ".safetensors" \
            else torch.load(convert(dtype_file, out, half=True), weights_only=True)
        for k, v in ref.items():
            expected = v.half() if v.dtype in (torch.float32, torch.float64) else v
            assert same(expected, written[k]), (out.suffix, k, written[k].dtype)


def test_half_refuses_values_beyond_float16_range(tmp_path):
    torch.save({"ok": torch.ones(2), "running_var": torch.tensor([1.0, 1e6])}, tmp_path / "big.pt")
    res = run_here("convert", str(tmp_path / "big.pt"), str(tmp_path / "out.safetensors"), "--half")
    assert res.returncode == 2
    assert "'running_var'" in error_line(res) and "without --half" in error_line(res)
    assert not (tmp_path / "out.safetensors").exists()
    assert run_here("convert", str(tmp_path / "big.pt"), str(tmp_path / "out.safetensors")).returncode == 0


def test_tied_weights_views_and_parameters(tmp_path):
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied: one tensor under two names
    model = nn.Module()
    model.emb, model.head = emb, head
    big = torch.randn(1000, 1000)  # 4 MB storage
    sd = {**model.state_dict(), "row": big[:2], "corner": big[:2, :3], "T": torch.randn(3, 5).t(),
          "param": nn.Parameter(torch.randn(3)), "grad": torch.randn(2, requires_grad=True)}
    torch.save(sd, tmp_path / "src.pt")
    assert (tmp_path / "src.pt").stat().st_size > 4e6
    info = inspect_checkpoint(tmp_path / "src.pt")
    assert info["totals"]["mb"] == round(sum(v.numel() * 4 for v in sd.values()) / 1e6, 3)
    for out in ("o.safetensors", "o.pt"):
        path = convert(tmp_path / "src.pt", tmp_path / out)
        assert path.stat().st_size < 20_000, out  # the views' values, not the 4 MB storage they view
        back = load_file(path) if out.endswith("safetensors") else torch.load(path, weights_only=True)
        assert all(torch.equal(back[k], v.detach()) for k, v in sd.items())
        assert not any(v.requires_grad for v in back.values())
        fresh = nn.Module()
        fresh.emb, fresh.head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
        assert load_weights(fresh, path).ok and torch.equal(fresh.head.weight, emb.weight)


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_tensors(layout, tmp_path):
    dense = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]])
    sparse = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    torch.save({"adj": sparse, "w": torch.ones(2)}, tmp_path / "s.pt")
    assert same(read_state_dict(tmp_path / "s.pt")["adj"], sparse)
    info = inspect_checkpoint(tmp_path / "s.pt")
    assert info["tensors"][0]["numel"] == 6
    stored = (3 * 4 + 2 * 2 * 8) if layout == "coo" else (2 * 4 + 3 * 8 + 2 * 8)  # values + indices
    assert info["totals"]["mb"] == round((stored + 8) / 1e6, 3)
    back = torch.load(convert(tmp_path / "s.pt", tmp_path / "o.pt"), weights_only=True)
    assert same(back["adj"], sparse)
    halved = torch.load(convert(tmp_path / "s.pt", tmp_path / "h.pt", half=True), weights_only=True)
    assert halved["adj"].dtype == torch.float16 and torch.equal(halved["adj"].to_dense(), dense.half())
    res = run_here("convert", str(tmp_path / "s.pt"), str(tmp_path / "o.safetensors"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "'adj'" in error_line(res) and "sparse" in error_line(res) and ".pt" in error_line(res)
    model = nn.Module()
    model.register_buffer("adj", torch.zeros(2, 3))
    model.register_buffer("w", torch.zeros(2))
    report = load_weights(model, tmp_path / "s.pt")
    assert torch.equal(model.adj, dense) and any("dense" in n for n in report.notes)


def quantized_model() -> tuple[nn.Module, nn.Module]:
    """(float model, its torch.ao.quantization int8 conversion): per-channel conv, packed Linear."""
    torch.manual_seed(0)
    float_model = nn.Sequential(torch.ao.quantization.QuantStub(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                                nn.Linear(4 * 4 * 4, 2), torch.ao.quantization.DeQuantStub()).eval()
    prepared = nn.Sequential(*[m for m in float_model])  # same modules; prepare works in place
    prepared.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.prepare(prepared, inplace=True)
        prepared(torch.randn(8, 3, 6, 6))
        quantized = torch.ao.quantization.convert(prepared)
    return float_model, quantized


def test_quantized_model_state_dict(tmp_path):
    """A quantized model's state dict holds a dtype and a (weight, bias) tuple per Linear: it was
    'no model weights found'; now its tensors read under the float layers' names."""
    _, quantized = quantized_model()
    torch.save(quantized.state_dict(), tmp_path / "q.pt")
    sd = read_state_dict(tmp_path / "q.pt")
    w, b = quantized[4]._packed_params._weight_bias()
    assert same(sd["4.weight"], w) and torch.equal(sd["4.bias"], b)
    assert same(sd["1.weight"], quantized[1].weight()) and sd["1.weight"].qscheme() == torch.per_channel_affine
    res = run_here("inspect", str(tmp_path / "q.pt"), "--json")
    assert res.returncode == 0
    rows = {r["name"]: r for r in json.loads(res.stdout)["tensors"]}
    assert rows["4.weight"]["dtype"] == "qint8" and rows["4.weight"]["numel"] == 2 * 64
    back = torch.load(convert(tmp_path / "q.pt", tmp_path / "q_out.pt"), weights_only=True)
    assert same(back["4.weight"], w)
    res = run_here("convert", str(tmp_path / "q.pt"), str(tmp_path / "q.safetensors"))
    assert res.returncode == 2 and "quantized" in error_line(res) and "Traceback" not in res.stderr
    # into the float model: dequantized, and the report says so
    target = nn.Sequential(nn.Identity(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    report = load_weights(target, tmp_path / "q.pt")
    assert report.ok and torch.equal(target[4].weight, w.dequantize())
    assert any("dequantized from qint8" in n for n in report.notes)


def test_half_keeps_quantization_scales(tmp_path):
    """convert --half halved a quantized model's scales (float16 rounds a scale of 1e-6 by 1%,
    moving every dequantized value); other float tensors are halved as before."""
    _, quantized = quantized_model()
    sd = quantized.state_dict()
    sd["0.scale"] = torch.tensor([1.37e-6])  # a small input scale, as for inputs in a small range
    torch.save(sd, tmp_path / "q.pt")
    back = torch.load(convert(tmp_path / "q.pt", tmp_path / "half.pt", half=True), weights_only=True)
    for name in ("0.scale", "1.scale", "4.scale"):
        assert back[name].dtype == torch.float32 and torch.equal(back[name], sd[name]), name
    assert back["1.bias"].dtype == torch.float16  # (a float bias of a quantized conv: halved)
    assert same(back["1.weight"], sd["1.weight"])
    reloaded = quantized_model()[1]
    reloaded.load_state_dict(back)
    assert reloaded[0].scale == sd["0.scale"]


def test_quantized_tensors_to_safetensors_is_one_clear_line(tmp_path):
    """It was 'unexpected KeyError: torch.qint8'."""
    qt = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    torch.save({"qt": qt}, tmp_path / "qt.pt")
    res = run_here("convert", str(tmp_path / "qt.pt"), str(tmp_path / "qt.safetensors"), "--half")
    assert res.returncode == 2 and "'qt'" in error_line(res) and "qint8" in error_line(res)
    assert same(torch.load(convert(tmp_path / "qt.pt", tmp_path / "qt2.pt", half=True), weights_only=True)["qt"], qt)


def test_other_dtype_in_the_model_is_cast_and_reported(tmp_path):
    src = nn.Linear(3, 2).half()
    torch.save(src.state_dict(), tmp_path / "h.pt")
    target = nn.Linear(3, 2)
    report = load_weights(target, tmp_path / "h.pt")
    assert target.weight.dtype == torch.float32 and torch.equal(target.weight, src.weight.float())
    assert any("cast from float16 to the model's float32" in n for n in report.notes)
    assert "float16" in str(report)
    same_dtype = load_weights(nn.Linear(3, 2), nn.Linear(3, 2).state_dict())
    assert not any("cast" in n for n in same_dtype.notes)


def test_complex_into_a_real_model_is_an_error():
    with pytest.raises(WeightsError, match="'weight' is complex64 .* imaginary"):
        load_weights(nn.Linear(3, 2), {"weight": torch.ones(2, 3, dtype=torch.complex64), "bias": torch.zeros(2)})


def test_inspect_text_and_json_of_every_dtype(dtype_file):
    ref = every_dtype()
    res = run_here("inspect", str(dtype_file), "--json")
    assert res.returncode == 0
    info = json.loads(res.stdout)
    rows = {r["name"]: r for r in info["tensors"]}
    assert {k: (r["dtype"], r["numel"]) for k, r in rows.items()} == \
        {k: (str(v.dtype).removeprefix("torch."), v.numel()) for k, v in ref.items()}
    assert info["totals"]["mb"] == round(sum(v.numel() * v.element_size() for v in ref.values()) / 1e6, 3)
    text = run_here("inspect", str(dtype_file))
    assert text.returncode == 0 and "float8_e4m3fn" in text.stdout and "complex64" in text.stdout


def test_torchscript_with_unusual_dtypes(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2).to(torch.bfloat16)
            self.bn = nn.BatchNorm1d(2)
            self.register_buffer("mask", torch.tensor([True, False]))
            self.register_buffer("f8", torch.ones(2).to(torch.float8_e4m3fn))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    net = Net()
    torch.jit.save(torch.jit.script(net), tmp_path / "ts.pt")
    sd = read_state_dict(tmp_path / "ts.pt")
    assert set(sd) == set(net.state_dict()) and all(same(v, sd[k]) for k, v in net.state_dict().items())


def test_pickle_protocol_5_with_float8_and_uint16(tmp_path):
    """torch.save's _rebuild_tensor_v3 (dtypes without a legacy storage class) was refused as unsafe
    by the reader of protocol 4/5 pickles."""
    sd = {"f8": torch.randn(3).to(torch.float8_e5m2), "u16": torch.tensor([1, 60000], dtype=torch.uint16),
          "bf16": torch.randn(2).bfloat16(), "view": torch.arange(10.0)[3:5]}
    try:
        torch.save(sd["u16"], io.BytesIO())
    except KeyError:  # torch 2.4 cannot save uint16 tensors at all
        del sd["u16"]
    torch.save(sd, tmp_path / "p5.pt", pickle_protocol=5)
    back = read_state_dict(tmp_path / "p5.pt")
    assert all(same(v, back[k]) for k, v in sd.items())

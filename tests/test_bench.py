"""`bnnrepro bench`: every case against torch fp32, bf16 and int8, the fields of its JSON, the nulls
where a path does not exist, and ratios that come from the timings (shapes shrunk to stay fast)."""
from __future__ import annotations

import json
import platform

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnnrepro.kernels import baselines, bench, variant

TINY = dict(fc_m=(1, 4), fc_k=256, fc_n=128, conv=(64, 64, 8), conv_batches=(1, 2), mlp_batch=4,
            mlp_hidden=128, convnet_batch=1, convnet=dict(channels=(64,) * 6, fc=(64, 64)))


def _shrink(mp):
    mp.setitem(bench.SHAPES, "quick", TINY)
    mp.setattr(bench, "PEAK_REPS", 16)
    mp.setattr(bench, "PEAK_CALL_REPS", 4)
    mp.setattr(baselines, "MATMUL_N", 128)
    mp.setattr(baselines, "ENGINE_PROBE", (4, 128, 128))


@pytest.fixture(scope="module")
def quick_json(tmp_path_factory):
    """One tiny `bench --quick --json` run, read back from its JSON file. One thread: the two
    OpenMP pools (numba's, torch's) then cannot spin against each other on a loaded machine."""
    import numba

    path = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as mp:
            _shrink(mp)
            code = bench.main(["--quick", "--no-write", "--repeats", "2", "--threads", "1", "--json", str(path)])
    finally:
        torch.set_num_threads(threads[0])
        numba.set_num_threads(threads[1])
    return code, json.loads(path.read_text())


def test_quick_json_rows_carry_every_path_with_its_type(quick_json):
    code, result = quick_json
    assert code == 0
    rows = result["rows"]
    assert len(rows) == 2 + 2 * 3 + 2  # FC x2, conv x2 batches x (plain, fused, prepacked), two models
    bf16_here = baselines.bf16_unavailable() is None
    for r in rows:
        for key in ("torch_fp32_ms", "packed_ms", "peak_fraction", "speedup_vs_fastest", "torch_ms", "speedup"):
            assert isinstance(r[key], float) and r[key] > 0, (r["case"], key)
        for key in ("torch_bf16_ms", "torch_int8_ms"):
            assert r[key] is None or isinstance(r[key], float) and r[key] > 0, (r["case"], key)
        assert isinstance(r["bit_exact"], bool) and r["bit_exact"], r["case"]
        assert r["fastest_torch"] in ("fp32", "bf16", "int8")
        assert r["torch_fp32_ms"] == r["torch_ms"]
        assert (r["torch_bf16_ms"] is not None) == bf16_here, r["case"]
        assert (r["torch_int8_ms"] is not None) == (result["baselines"]["int8"]["engine"] is not None), r
        assert set(r["null_reasons"]) == {p for p in bench.TORCH_PATHS if r[f"torch_{p}_ms"] is None}
        assert r["torch_fp32_peak_fraction"] == pytest.approx(r["torch_fp32_gops"] / result["matmul_peak_gflops"]["fp32"])
        if not r["case"].startswith("BNN"):  # +-1 layers: one XOR+popcount per multiply-accumulate
            assert r["binary_ops"] == r["ops"], r["case"]
        # the ceiling: the peak loop timed beside the case; the run's best peak sample in the other column
        assert r["case_peak_tops"] > 0
        rate = r["binary_ops"] / (r["packed_ms"] / 1e3)
        assert r["peak_fraction"] == pytest.approx(rate / (r["case_peak_tops"] * 1e12))
        assert r["peak_fraction_best"] == pytest.approx(rate / (result["peak_tops"] * 1e12))
        assert r["logical_peak_fraction"] == pytest.approx(r["packed_gops"] * 1e9 / (r["case_peak_tops"] * 1e12))
    # the whole MLP's first layer runs on the 8 bit-planes of its uint8 pixels: 8 passes of 784 x 128
    mlp = next(r for r in rows if r["case"].startswith("BNN MLP"))
    b, h = TINY["mlp_batch"], TINY["mlp_hidden"]
    assert mlp["ops"] == 2.0 * b * (784 * h + 2 * h * h + h * 10)
    assert mlp["binary_ops"] == 2.0 * b * (8 * 784 * h + 2 * h * h + h * 10)
    assert result["kernel_variant"] == variant.detect()
    mm = result["matmul_peak_gflops"]
    assert isinstance(mm["fp32"], float) and mm["fp32"] > 0
    assert (mm["bf16"] is not None) == bf16_here
    assert result["peak_tops"] > 0 and result["matmul_peak_n"] == 128
    if platform.machine() in ("x86_64", "AMD64"):  # CPU torch on x86 ships fbgemm and oneDNN
        assert result["baselines"]["int8"]["engine"] in baselines.INT8_ENGINES


def test_ratios_come_from_the_timings(quick_json):
    for r in quick_json[1]["rows"]:
        timed_ = {p: r[f"torch_{p}_ms"] for p in bench.TORCH_PATHS if r[f"torch_{p}_ms"] is not None}
        assert r["fastest_torch"] == min(timed_, key=timed_.get)
        assert r["speedup_vs_fastest"] == pytest.approx(min(timed_.values()) / r["packed_ms"])
        assert r["speedup"] == pytest.approx(r["torch_fp32_ms"] / r["packed_ms"])
        assert r["speedup_vs_fastest"] <= r["speedup"] * (1 + 1e-12)


def _stats(ms: float) -> dict:
    return {"median_s": ms / 1e3, "iqr_s": 0.0, "min_s": ms / 1e3, "n": 3}


@pytest.mark.parametrize("fp32, bf16, int8, fastest", [(10.0, 4.0, 2.0, "int8"), (3.0, 4.0, 5.0, "fp32"),
                                                       (10.0, 1.0, None, "bf16"), (10.0, None, None, "fp32")])
def test_row_picks_the_fastest_timed_path(fp32, bf16, int8, fastest):
    times = {"fp32": (_stats(fp32), None), "bf16": (None if bf16 is None else _stats(bf16), "no bf16 here"),
             "int8": (None if int8 is None else _stats(int8), "no int8 here")}
    row = bench._row("case", "what", 1e9, _stats(0.5), times, True)
    assert row["fastest_torch"] == fastest
    assert row["speedup_vs_fastest"] == pytest.approx(min(v for v in (fp32, bf16, int8) if v) / 0.5)
    assert row["torch_bf16_ms"] == (None if bf16 is None else pytest.approx(bf16))
    assert row["null_reasons"] == {p: f"no {p} here" for p, v in (("bf16", bf16), ("int8", int8)) if v is None}


def test_without_bf16_hardware_the_bf16_path_and_peak_are_null(monkeypatch, tmp_path):
    _shrink(monkeypatch)
    monkeypatch.setattr(baselines.precision, "bf16_hardware", lambda device: None)
    b = baselines.Baselines()
    assert b.bf16_reason and "bf16" in b.bf16_reason
    rng = np.random.default_rng(0)
    row = bench.bench_fc(2, 128, 64, 2, rng, b)
    assert row["torch_bf16_ms"] is None and row["null_reasons"]["bf16"] == b.bf16_reason
    assert row["fastest_torch"] in ("fp32", "int8")
    assert bench._matmul_peaks(b)["bf16"] is None
    result = {"rows": [row], "peak_tops": 1.0, "matmul_peak_gflops": bench._matmul_peaks(b), "matmul_peak_n": 128,
              "baselines": b.describe(), "environment": bench.environment(), "repeats": 2, "date": "now",
              "command": "bnnrepro bench --quick", "kernel_variant": variant.detect(),
              "variants": {"case": "FC 2x128->64", "rows": [
                  dict(target="host", what="own", picked=True, variant="avx2-pshufb", vector_bits=256, ms=2.0,
                       bit_exact=True),
                  dict(target="x86-64", what="SSE2 only", picked=False, variant="scalar-bitwise", vector_bits=64,
                       ms=5.0, bit_exact=True),
                  dict(target="nehalem", what="SSE4.2", picked=False, variant=None, vector_bits=None, ms=None,
                       bit_exact=None, error="boom")]}}
    row["peak_fraction"], row["peak_fraction_best"], row["check"] = 0.5, 0.4, "bit-exact"
    md, _ = bench.write_reports(result, tmp_path)
    text = md.read_text()
    assert f"popcount variant {result['kernel_variant']['variant']} " in text
    assert "| x86-64 (SSE2 only) | scalar-bitwise | 64 | 5.000 | 2.50x | bit-exact |" in text
    assert "| nehalem (SSE4.2) | failed: boom |" in text
    assert "| torch bf16 ms | torch int8 ms | fastest torch | packed vs fastest |" in text
    assert "bf16 n/a (no bf16 matrix hardware" in text and "| n/a |" in text


def test_without_an_int8_engine_the_int8_path_is_null(monkeypatch):
    monkeypatch.setattr(baselines, "supported_engines", lambda: ["qnnpack", "none"])
    b = baselines.Baselines()
    fn, why = b.int8_linear(torch.ones(1, 8), torch.ones(4, 8))
    assert fn is None and "int8 engines" in why and b.describe()["int8"]["engine"] is None


def test_int8_and_bf16_paths_compute_the_same_layers_as_fp32():
    torch.manual_seed(0)
    b = baselines.Baselines((4, 128, 128))
    x, w = torch.randn(8, 256), torch.randn(64, 256).sign()
    want = F.linear(x, w)
    fn, _ = b.int8_linear(x, w)
    assert fn().dtype == torch.float32
    torch.testing.assert_close(fn(), want, rtol=0, atol=0.03 * float(want.abs().max()))
    xc, wc = torch.randn(2, 16, 8, 8).sign(), torch.randn(32, 16, 3, 3).sign()
    want = F.conv2d(xc, wc, padding=1)
    fn, _ = b.int8_conv(xc, wc, 1)
    got = fn()
    assert got.shape == want.shape  # static int8 rounds the output to 256 levels: close, not exact
    assert float((got - want).abs().max()) <= 0.15 * float(want.abs().max())
    assert torch.corrcoef(torch.stack([got.flatten(), want.flatten()]))[0, 1] > 0.99
    if b.bf16_reason is None:
        fn, _ = b.bf16_linear(x.sign(), w)
        got = fn()
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), F.linear(x.sign(), w), rtol=0.01, atol=1.0)


def test_an_int8_layer_torch_cannot_build_here_is_null_with_the_reason(monkeypatch):
    _shrink(monkeypatch)
    b = baselines.Baselines()

    def no_quantized_conv(model, calibrate):
        raise NotImplementedError("quantized::conv2d is not implemented for this engine")

    monkeypatch.setattr(baselines, "_static_int8_convs", no_quantized_conv)
    row = bench.bench_conv(1, 64, 64, 4, 2, np.random.default_rng(0), b)
    assert row["torch_int8_ms"] is None and row["torch_int8_gops"] is None
    assert row["null_reasons"]["int8"] == "NotImplementedError: quantized::conv2d is not implemented for this engine"
    assert row["fastest_torch"] in ("fp32", "bf16") and row["bit_exact"]

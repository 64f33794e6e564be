"""``bnnrepro bench``: packed binary kernels against torch fp32, bf16 and int8 on the same shapes, one process.

Every case times the packed path and each torch path (fp32; bf16 and int8 where this CPU has them,
see :mod:`.baselines`) in alternating blocks of calls (so a load change on a shared machine hits
all of them), after warm-up, and reports the median (and IQR, and best) of the repeats; the
packed path is compared with the fastest of the torch paths as well as with fp32. GOP/s counts a
binary multiply-accumulate as 2 ops, like a float FMA. The XOR+popcount peak is measured in the
same run by an in-register loop on every thread (``peak``), so "fraction of peak" is relative to
what this machine delivered at that moment; so are torch's fp32 and bf16 matmul peaks, the
ceilings of the torch figures.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..timing import environment, timed
from . import baselines as baselines_module
from . import variant as variant_module
from .baselines import Baselines, frozen_float_copy, matmul_peak, random_bn

PEAK_REPS = 4096  # x 8192 words per thread per peak measurement
PEAK_CALL_REPS = 1024  # one peak sample interleaved with a case's paths (~0.3 ms on 2 Zen 4 cores)
TORCH_PATHS = ("fp32", "bf16", "int8")
# the cases of a full and a --quick run: FC M values at K x N, conv channels in/out and size, the
# conv batches, the models' batches, the MLP's hidden width, bnn_convnet's arguments (the paper's
# widths when empty) and the bit-serial FC rows: M and (weight bits, activation bits) at fc_k x fc_n
SHAPES = {
    "full": dict(fc_m=(1, 16, 64, 256), fc_k=4096, fc_n=4096, conv=(128, 128, 32), conv_batches=(1, 64),
                 mlp_batch=256, mlp_hidden=4096, convnet_batch=64, convnet={}, fc_multibit_m=64,
                 fc_multibit=((1, 2), (2, 2))),
    "quick": dict(fc_m=(1, 64), fc_k=4096, fc_n=4096, conv=(128, 128, 32), conv_batches=(1, 8),
                  mlp_batch=64, mlp_hidden=4096, convnet_batch=8, convnet={}, fc_multibit_m=64,
                  fc_multibit=((1, 2), (2, 2))),
}


def measure_peak(repeats: int = 10) -> float:
    """XOR+popcount+add throughput in ops/s (128 ops per 64-bit word) on all numba threads."""
    import numba

    from ._peak import BUF_VECS, UNROLL, peak_loop

    nt = numba.get_num_threads()
    out = np.zeros(nt * 8, np.int64)
    peak_loop(nt, 16, out)
    words = nt * PEAK_REPS * BUF_VECS * UNROLL * 8
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        peak_loop(nt, PEAK_REPS, out)
        best = max(best, words * 128 / (time.perf_counter() - t))
    return best


def peak_sampler():
    """``(call, ops per call)``: the in-register XOR+popcount loop as one more timed function, so
    each case's ceiling is sampled in the same interleaved blocks as its paths (median vs median)."""
    import numba

    from ._peak import BUF_VECS, UNROLL, peak_loop

    nt = numba.get_num_threads()
    out = np.zeros(nt * 8, np.int64)
    return (lambda: peak_loop(nt, PEAK_CALL_REPS, out)), nt * PEAK_CALL_REPS * BUF_VECS * UNROLL * 8 * 128


# ---------------------------------------------------------------- cases

def _pm1(rng, shape) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def bench_fc(m: int, k: int, n: int, repeats: int, rng, baselines: Baselines) -> dict:
    from .bitpack import pack_rows
    from .gemm import DenseWeights, bgemm

    a, w = _pm1(rng, (m, k)), _pm1(rng, (n, k))
    W = DenseWeights.from_float(w)
    ab = pack_rows(a)
    out = np.empty((m, W.npad), np.int32)
    at, wt = torch.from_numpy(a), torch.from_numpy(w)
    ok = bool(np.array_equal(bgemm(ab, W, out), F.linear(at, wt).numpy()))
    paths = {"fp32": (lambda: F.linear(at, wt), None), "bf16": baselines.bf16_linear(at, wt),
             "int8": baselines.int8_linear(at, wt)}
    with torch.no_grad():
        tp, times = _timed_paths(lambda: bgemm(ab, W, out), paths, repeats)
    return _row(f"FC {m}x{k}->{n}", "gemm (input packed, weights pre-packed)", 2.0 * m * n * k, tp, times, ok)


def bench_fc_multibit(m: int, k: int, n: int, w_bits: int, a_bits: int, repeats: int, rng,
                      baselines: Baselines) -> dict:
    """A bit-serial FC layer (``multibit``): k-bit activation codes packed into planes beforehand
    (as the engine's previous layer leaves them), DoReFa m-bit weight codes pre-packed, exact int
    pre-activations out; torch runs the same layer on the dequantized float values."""
    from .multibit import MultiBitWeights, bitserial_gemm, bitserial_gemm_reference, pack_code_planes

    codes = rng.integers(0, 2 ** a_bits, (m, k)).astype(np.uint8)
    W = MultiBitWeights(rng.integers(0, 2 ** w_bits, (n, k)).astype(np.uint8), w_bits,
                        1.0 if w_bits == 1 else 1.0 / (2 ** w_bits - 1))
    planes = pack_code_planes(codes, a_bits)
    out = np.empty((m, n), np.int64)
    at = torch.from_numpy((codes / (2 ** a_bits - 1)).astype(np.float32))
    wt = torch.from_numpy(W.values().astype(np.float32))
    y = bitserial_gemm(planes, W, out)
    ok = bool(np.array_equal(y, bitserial_gemm_reference(codes, W)) and
              np.allclose(y * W.scale / (2 ** a_bits - 1), F.linear(at, wt).numpy(), rtol=1e-5, atol=1e-3))
    paths = {"fp32": (lambda: F.linear(at, wt), None), "bf16": baselines.bf16_linear(at, wt),
             "int8": baselines.int8_linear(at, wt)}
    with torch.no_grad():
        tp, times = _timed_paths(lambda: bitserial_gemm(planes, W, out), paths, repeats)
    return _row(f"FC {m}x{k}->{n} W{w_bits}A{a_bits}",
                f"bit-serial gemm, {w_bits * a_bits} plane pairs (activation planes packed, weights pre-packed)",
                2.0 * m * n * k, tp, times, ok, binary_ops=2.0 * m * n * k * w_bits * a_bits)


def _timed_paths(packed, paths: dict, repeats: int, extra=()) -> tuple:
    """``timed`` over the packed call, the torch paths that exist (``paths``: name -> (fn or None,
    why)), ``extra`` calls and the popcount peak loop, interleaved: (packed stats, {name: (stats or
    None, why)}, extra stats); the packed stats carry ``peak_ops_s``, the peak loop's median rate."""
    names = [p for p in TORCH_PATHS if paths[p][0] is not None]
    peak_call, peak_ops = peak_sampler()
    stats = timed([packed] + [paths[p][0] for p in names] + list(extra) + [peak_call], repeats)
    got = dict(zip(names, stats[1:]))
    times = {p: (got.get(p), paths[p][1]) for p in TORCH_PATHS}
    tp = dict(stats[0], peak_ops_s=peak_ops / stats[-1]["median_s"])
    return (tp, times, *stats[1 + len(names):-1])


def bench_conv(batch: int, c: int, o: int, hw: int, repeats: int, rng, baselines: Baselines,
               fused: bool = False, prepacked: bool = False) -> dict:
    """``fused=False``: pack the float +-1 input, convolve, int32 NHWC pre-activations out (the
    same information torch's conv2d returns). ``fused=True``: pack + conv + sign threshold (T = 0
    here; folded BN thresholds cost the same) -> packed bits with the next layer's zero border.
    ``prepacked=True`` (with ``fused``): a hidden layer as the engine runs it, its input already the
    packed bits the previous layer's threshold wrote (packed once, untimed), so conv + threshold."""
    from . import tiles
    from .bitpack import pack_nchw, unpack
    from .conv import ConvWeights, Dest, bconv2d, plan_conv, run_conv

    x, w = _pm1(rng, (batch, c, hw, hw)), _pm1(rng, (o, c, 3, 3))
    W = ConvWeights.from_float(w, 1, 1)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    buf = np.zeros((batch, hw + 2, hw + 2, (c + 63) // 64), np.uint64)
    want = F.conv2d(xt, wt, padding=1)
    if fused:
        cw = (o + 63) // 64
        plan = plan_conv(W, hw, hw, Dest(hw, hw, cw * 8, 1))
        out = np.zeros((batch, hw + 2, hw + 2, cw), np.uint64)
        thr, flip = np.zeros(W.npad, np.int64), np.zeros(W.npad // 8, np.uint8)

        if prepacked:
            xin = pack_nchw(x, 1, buf)

            def packed():
                return run_conv(plan, xin, out, tiles.BITS, thr, flip)
            what = "packed bits in (the previous layer's output) + conv + sign threshold, packed bits out"
        else:
            def packed():
                return run_conv(plan, pack_nchw(x, 1, buf), out, tiles.BITS, thr, flip)
            what = "pack NCHW float + conv + sign threshold, packed bits out (engine layer)"

        got = np.moveaxis(unpack(packed()[:, 1:-1, 1:-1], o), -1, 1)
        ok = bool(np.array_equal(got, np.where(want.numpy() >= 0, 1, -1)))
    else:
        out = np.empty((batch, hw, hw, W.npad), np.int32)

        def packed():
            return bconv2d(pack_nchw(x, 1, buf), W, out)

        ok = bool(np.array_equal(packed(), want.permute(0, 2, 3, 1).numpy()))
        what = "pack NCHW float + conv, int32 NHWC out"
    paths = {"fp32": (lambda: F.conv2d(xt, wt, padding=1), None), "bf16": baselines.bf16_conv(xt, wt, 1),
             "int8": baselines.int8_conv(xt, wt, 1)}
    with torch.no_grad():
        tp, times = _timed_paths(packed, paths, repeats)
    label = (f"conv {c}->{o} 3x3 {hw}x{hw} batch {batch}" + (" bits->bits" if prepacked else " +sign->bits" if fused
                                                              else ""))
    return _row(label, what, 2.0 * batch * hw * hw * o * c * 9, tp, times, ok)


def bench_model(name: str, batch: int, repeats: int, rng, baselines: Baselines, **kwargs) -> dict:
    from .. import models
    from .engine import PackedModel

    shape = (1, 28, 28) if name == "mlp" else (3, 32, 32)
    torch.manual_seed(0)
    model = random_bn(models.build(name, input_shape=shape, num_classes=10, **kwargs))
    packed = PackedModel.from_torch(model, shape)
    x = torch.from_numpy(rng.integers(0, 256, (batch,) + shape, dtype=np.uint8))
    xn = x.numpy()

    frozen = frozen_float_copy(model)

    def call(m):
        return m(x.to(torch.float32).mul(2.0 / 255.0).sub(1.0))

    def float_path(m):
        return lambda: call(m)

    with torch.no_grad():
        want = call(model)
        logits = packed.forward(xn)
        same_frozen = bool(torch.equal(call(frozen), want))
        ok = same_frozen and bool(torch.equal(logits, want))
        same_predictions = same_frozen and bool(torch.equal(logits.argmax(1), want.argmax(1)))
        paths = {"fp32": (float_path(frozen), None), "bf16": baselines.bf16_model(frozen, call),
                 "int8": baselines.int8_model(frozen, call)}
        tp, times, tt = _timed_paths(lambda: packed.forward(xn), paths, repeats, extra=[float_path(model)])
    macs, binary_macs = _model_macs(model, shape), _model_binary_macs(model, packed, shape)
    label = (f"BNN MLP 3x{kwargs['hidden'][0]} (MNIST)" if name == "mlp" else "BNN ConvNet (CIFAR-10 shape"
             + (f", channels {kwargs['channels']}" if "channels" in kwargs else "") + ")")
    row = _row(f"{label} batch {batch}", "whole model from uint8 pixels (random weights)", 2.0 * macs * batch,
               tp, times, ok, binary_ops=2.0 * binary_macs * batch)
    row["identical_predictions"] = same_predictions
    row.update(model_eval_ms=1e3 * tt["median_s"], model_eval_iqr_ms=1e3 * tt["iqr_s"],
               speedup_vs_model_eval=tt["median_s"] / tp["median_s"])
    return row


def _layer_macs(model, shape) -> dict[str, int]:
    """Multiply-accumulates per example of each Linear/Conv2d, by module name."""
    macs: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: macs.__setitem__(
        name, o[0].numel() * mod.weight[0].numel())) for name, m in model.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with torch.no_grad():
        model(torch.zeros((1,) + shape))
    for h in hooks:
        h.remove()
    return macs


def _model_macs(model, shape) -> int:
    return int(sum(_layer_macs(model, shape).values()))


def _model_binary_macs(model, packed, shape) -> int:
    """The XOR+popcount multiply-accumulates the engine runs per example: a layer on uint8 pixels
    (``input == "planes"``) runs one pass per bit-plane, 8 in all."""
    macs = _layer_macs(model, shape)
    return int(sum(macs[L.names[0]] * (8 if L.input == "planes" else 1) for L in packed.layers))


def _row(case, what, ops, tp, times: dict, ok, binary_ops: float | None = None) -> dict:
    """One case's figures. ``ops``: the layer's multiply-accumulates x 2 (GOP/s columns);
    ``binary_ops``: the XOR+popcount ops the packed path runs for them (``ops`` for +-1 layers,
    ``ops`` x weight bits x activation bits for a bit-serial layer), what "% of peak" counts.
    ``times``: torch path -> (timing stats or None, why it is None); fp32 always has stats.
    ``torch_ms``/``speedup`` (fp32) are kept as the earlier reports named them."""
    tt = times["fp32"][0]
    row = {"case": case, "packed_path": what, "ops": ops, "binary_ops": ops if binary_ops is None else binary_ops,
           "packed_ms": 1e3 * tp["median_s"], "packed_iqr_ms": 1e3 * tp["iqr_s"], "packed_min_ms": 1e3 * tp["min_s"],
           "torch_ms": 1e3 * tt["median_s"], "torch_iqr_ms": 1e3 * tt["iqr_s"], "torch_min_ms": 1e3 * tt["min_s"],
           "packed_gops": ops / tp["median_s"] / 1e9, "torch_gflops": ops / tt["median_s"] / 1e9,
           "speedup": tt["median_s"] / tp["median_s"], "speedup_best": tt["min_s"] / tp["min_s"],
           "repeats": tp["n"], "bit_exact": ok, "null_reasons": {}, "case_peak_tops": tp["peak_ops_s"] / 1e12 if "peak_ops_s" in tp else None}
    for path in TORCH_PATHS:
        stats, why = times[path]
        row[f"torch_{path}_ms"] = None if stats is None else 1e3 * stats["median_s"]
        row[f"torch_{path}_iqr_ms"] = None if stats is None else 1e3 * stats["iqr_s"]
        row[f"torch_{path}_gops"] = None if stats is None else ops / stats["median_s"] / 1e9
        if stats is None:
            row["null_reasons"][path] = why
    timed_paths = [p for p in TORCH_PATHS if row[f"torch_{p}_ms"] is not None]
    fastest = min(timed_paths, key=lambda p: row[f"torch_{p}_ms"])
    row["fastest_torch"] = fastest
    row["speedup_vs_fastest"] = row[f"torch_{fastest}_ms"] / row["packed_ms"]
    return row


def compile_times() -> dict:
    """First use (empty numba cache) and second use (cache filled) in fresh processes."""
    code = ("import time; t=time.perf_counter(); import numpy as np; "
            "from bnnrepro.kernels import warmup; warmup(); print(time.perf_counter()-t)")
    res = {}
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d)
        for key in ("first_use_s", "cached_s"):
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                 check=True)
            res[key] = float(out.stdout.strip().splitlines()[-1])
    return res


# ---------------------------------------------------------------- report

COLUMNS = ["case", "packed_ms", "packed_iqr_ms", "packed_min_ms", "torch_ms", "torch_iqr_ms", "torch_min_ms",
           "torch_bf16_ms", "torch_bf16_iqr_ms", "torch_int8_ms", "torch_int8_iqr_ms", "fastest_torch",
           "speedup_vs_fastest", "speedup", "speedup_best", "packed_gops",
           "torch_gflops", "torch_bf16_gops", "torch_int8_gops", "peak_fraction", "torch_fp32_peak_fraction",
           "torch_bf16_peak_fraction", "logical_peak_fraction", "peak_fraction_best", "case_peak_tops", "binary_ops",
           "check", "model_eval_ms",
           "speedup_vs_model_eval", "repeats", "packed_path"]


def _ms(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _peak_line(result: dict) -> str:
    """The machine's ceilings measured in this run, one line (a path it has not: n/a and why)."""
    mm, n = result["matmul_peak_gflops"], result["matmul_peak_n"]
    bf16 = (f"{mm['bf16']:.0f} GFLOP/s" if mm["bf16"] is not None
            else f"n/a ({result['baselines']['bf16']['null_reason']})")
    cases = [r["case_peak_tops"] for r in result["rows"] if r.get("case_peak_tops")]
    spread = f"; sampled beside the cases {min(cases):.2f}-{max(cases):.2f} TOPS" if cases else ""
    return (f"- peaks measured in this run: XOR+popcount {result['peak_tops']:.2f} TOPS (in-register loop on "
            f"every thread, best sample{spread}); torch matmul {n}x{n}x{n} fp32 {mm['fp32']:.0f} GFLOP/s, bf16 {bf16}")


def _path_suffix(what: str) -> str:
    return " bits->bits" if "bits in" in what else " +sign" if "bits out" in what else ""


def _peak_cell(r: dict) -> str:
    """The fraction of the popcount peak on the ops the packed path runs, and on the logical
    multiply-accumulates where those differ (bit-serial layers, a first layer on 8 pixel bit-planes)."""
    run, logical = 100 * r["peak_fraction"], 100 * r.get("logical_peak_fraction", r["peak_fraction"])
    return f"{run:.0f}%" if round(run) == round(logical) else f"{run:.0f}% ({logical:.0f}%)"


def _variant_line(v: dict) -> str:
    return (f"packed kernels: popcount variant {v['variant']} ({v['vector_bits']}-bit vectors), compiled at run "
            f"time for {v['target_cpu']} (LLVM picks the lowering per CPU; read from its machine code)")


def _variant_table(result: dict) -> list[str]:
    v = result.get("variants")
    if not v:
        return []
    picked = next(r for r in v["rows"] if r["picked"])
    lines = ["", f"Kernel variants: {v['case']} compiled for each target in a fresh process (empty numba cache, "
             f"`NUMBA_CPU_NAME`), median of {result['repeats']} repeats, one after another:", "",
             "| target | variant | vector bits | ms | vs the variant taken | check |", "|---|---|---:|---:|---:|---|"]
    for r in v["rows"]:
        if r["ms"] is None:
            lines.append(f"| {r['target']} ({r['what']}) | failed: {r['error']} | | | | |")
            continue
        ratio = f"{r['ms'] / picked['ms']:.2f}x" if picked["ms"] else "n/a"
        lines.append(f"| {r['target']} ({r['what']}) | {r['variant']} | {r['vector_bits']} | {r['ms']:.3f} | "
                     f"{ratio} | {'bit-exact' if r['bit_exact'] else 'MISMATCH'} |")
    return lines


def _baseline_line(info: dict, key: str) -> str:
    return f"n/a ({info['null_reason']})" if info["null_reason"] else f"{key} {info[key]}"


def write_reports(result: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "kernels.csv", out_dir / "kernels.md"
    rows = result["rows"]
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    env = result["environment"]
    lines = [
        "# Packed binary kernels vs torch fp32, bf16 and int8 (CPU)",
        "",
        f"Generated by `{result['command']}` on {result['date']}. Median of {result['repeats']} repeats "
        "(alternating blocks of 5 after warm-up), all paths in one process; IQR in parentheses. GOP/s "
        "counts the layer's logical multiply-accumulates, 2 ops each (like a float FMA); "
        "% of peak counts the XOR+popcount work the packed path runs for them (w x a plane pairs of a "
        "bit-serial layer, 8 bit-plane passes of a first layer on uint8 pixels), the logical figure in "
        "parentheses where it differs. The peak it is a fraction of is the in-register XOR+popcount loop "
        "timed in the same interleaved blocks as the case (median against median, so a busy moment of a "
        "shared machine slows both); `vs best peak` divides by the run's best peak sample instead.",
        "",
        f"- CPU: {env['cpu']} (LLVM: {env['llvm_cpu']}); flags: "
        + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in env["flags"].items()),
        f"- threads: numba {env['numba_threads']} ({env['numba_threading_layer']} layer), torch "
        f"{env['torch_threads']}; torch {env['torch']}, numba {env['numba']}, numpy {env['numpy']}",
        f"- load average when the run ended: {env['loadavg']}",
        "- " + _variant_line(result["kernel_variant"]),
        _peak_line(result),
        f"- torch bf16: {_baseline_line(result['baselines']['bf16'], 'hardware')}; int8: "
        f"{_baseline_line(result['baselines']['int8'], 'engine')}",
        f"- torch paths: fp32 as is; bf16 = fp32 inputs under torch.autocast (CPU, bfloat16), weights in bf16 "
        f"once beforehand; int8 = {result['baselines']['int8']['method']} (the fastest engine of this build)",
    ]
    if "compile" in result:
        c = result["compile"]
        lines.append(f"- numba compile, fresh process: first use {c['first_use_s']:.1f} s, "
                     f"cached {c['cached_s']:.1f} s")
    lines += ["", "| case | packed ms | torch fp32 ms | torch bf16 ms | torch int8 ms | fastest torch "
                  "| packed vs fastest | packed vs fp32 | vs fp32, best times | packed GOP/s | torch fp32 GFLOP/s "
                  "| % of popcount peak: ops run (logical) | vs best peak | check |",
              "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['packed_ms']:.3f} ({r['packed_iqr_ms']:.3f}) | {r['torch_ms']:.2f} "
                     f"({r['torch_iqr_ms']:.2f}) | {_ms(r['torch_bf16_ms'])} | {_ms(r['torch_int8_ms'])} | "
                     f"{r['fastest_torch']} | {r['speedup_vs_fastest']:.1f}x | {r['speedup']:.1f}x | "
                     f"{r['speedup_best']:.1f}x | {r['packed_gops']:.0f} | {r['torch_gflops']:.0f} | "
                     f"{_peak_cell(r)} | {100 * r['peak_fraction_best']:.0f}% | {r['check']} |")
    nulls = sorted({f"{path}: {why}" for r in rows for path, why in r["null_reasons"].items()})
    if nulls:
        lines += ["", "n/a: " + "; ".join(nulls)]
    models_ = [r for r in rows if "model_eval_ms" in r]
    if models_:
        lines += ["", "Whole models: the torch columns above run the float model with its +-1 weights precomputed "
                  "(plain nn.Linear/nn.Conv2d; for bf16 those weights in bf16, for int8 its linear layers "
                  "dynamically quantized and its convs statically); the trained model's own eval, which "
                  "re-binarizes its latent weights on every call, is slower:", "",
                  "| case | model eval ms | packed speedup over it |", "|---|---:|---:|"]
        for r in models_:
            lines.append(f"| {r['case']} | {r['model_eval_ms']:.2f} ({r['model_eval_iqr_ms']:.2f}) | "
                         f"{r['speedup_vs_model_eval']:.1f}x |")
    lines += _variant_table(result)
    paths = sorted({f"{r['case'].split(' ')[0]}{_path_suffix(r['packed_path'])}: {r['packed_path']}" for r in rows})
    lines += ["", "Packed paths: " + "; ".join(paths),
              "", "The machine may be shared: rerun `bnnrepro bench` on a quiet machine for final numbers.", ""]
    md_path.write_text("\n".join(lines))
    return md_path, csv_path


def _matmul_peaks(baselines: Baselines) -> dict:
    return {"fp32": matmul_peak(torch.float32),
            "bf16": None if baselines.bf16_reason else matmul_peak(torch.bfloat16)}


def run(quick: bool = False, repeats: int | None = None, with_compile: bool = True, variants: bool = False) -> dict:
    rng = np.random.default_rng(0)
    reps = repeats or (5 if quick else 20)
    mreps = repeats or (3 if quick else 10)
    shapes = SHAPES["quick" if quick else "full"]
    t0 = time.perf_counter()
    from . import warmup

    warmup(references=True)
    baselines = Baselines()
    peak, matmul = measure_peak(), _matmul_peaks(baselines)
    rows = []
    for m in shapes["fc_m"]:
        rows.append(bench_fc(m, shapes["fc_k"], shapes["fc_n"], reps, rng, baselines))
    for w_bits, a_bits in shapes.get("fc_multibit", ()):
        rows.append(bench_fc_multibit(shapes["fc_multibit_m"], shapes["fc_k"], shapes["fc_n"], w_bits, a_bits, reps,
                                      rng, baselines))
    for b in shapes["conv_batches"]:
        for fused, prepacked in ((False, False), (True, False), (True, True)):
            rows.append(bench_conv(b, *shapes["conv"], reps if b == 1 else mreps, rng, baselines, fused, prepacked))
    rows.append(bench_model("mlp", shapes["mlp_batch"], mreps, rng, baselines, hidden=(shapes["mlp_hidden"],) * 3))
    rows.append(bench_model("bnn_convnet", shapes["convnet_batch"], mreps, rng, baselines, **shapes["convnet"]))
    # again at the end: the best of both, in case of a busy moment
    peak = max(peak, measure_peak())
    matmul = {k: None if v is None else max(v, matmul[k]) for k, v in _matmul_peaks(baselines).items()}
    for r in rows:
        # against the peak loop sampled beside this case (median vs median); the run's best peak beside
        case_peak = r["case_peak_tops"] * 1e12 if r.get("case_peak_tops") else peak
        r["peak_fraction"] = r["binary_ops"] / (r["packed_ms"] / 1e3) / case_peak
        r["logical_peak_fraction"] = r["packed_gops"] * 1e9 / case_peak
        r["peak_fraction_best"] = r["binary_ops"] / (r["packed_ms"] / 1e3) / peak
        for path in ("fp32", "bf16"):  # torch's op rate against its own matmul peak in that dtype
            rate, ceiling = r[f"torch_{path}_gops"], matmul[path]
            r[f"torch_{path}_peak_fraction"] = None if rate is None or ceiling is None else rate / ceiling
        r["check"] = ("bit-exact" if r["bit_exact"] else "identical predictions" if r.get("identical_predictions")
                      else "MISMATCH")
    result = {"rows": rows, "peak_tops": peak / 1e12, "matmul_peak_gflops": matmul,
              "matmul_peak_n": baselines_module.MATMUL_N, "baselines": baselines.describe(),
              "kernel_variant": variant_module.detect(),
              "environment": environment(), "repeats": reps,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick}
    if with_compile and not quick:
        result["compile"] = compile_times()
    if variants:
        m = max(shapes["fc_m"])
        result["variants"] = {"case": f"FC {m}x{shapes['fc_k']}->{shapes['fc_n']}",
                              "rows": variant_module.compare(m, shapes["fc_k"], shapes["fc_n"], reps)}
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv: list[str]) -> int:
    from .. import commandline

    args = commandline.parse(commandline.bench_parser(__doc__.split("\n\n")[0]), argv)
    out_dir = commandline.report_dir("bench", args.out, args.overrides)
    if args.threads:
        import numba

        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    if args.train:
        return _train_bench(args, out_dir, "bnnrepro bench " + " ".join(argv))
    if args.pareto:
        return _pareto_bench(args, out_dir, "bnnrepro bench " + " ".join(argv))
    result = run(args.quick, args.repeats, not args.no_compile, args.variants)
    result["command"] = "bnnrepro bench " + " ".join(argv)
    for r in result["rows"]:
        extra = (f"  (model eval {r['model_eval_ms']:.1f} ms: {r['speedup_vs_model_eval']:.1f}x)"
                 if "model_eval_ms" in r else "")
        print(f"{r['case']:<44} packed {r['packed_ms']:9.3f} ms  torch fp32 {r['torch_ms']:9.2f}  "
              f"bf16 {_ms(r['torch_bf16_ms']):>8}  int8 {_ms(r['torch_int8_ms']):>8} ms  "
              f"{r['speedup']:6.1f}x fp32  {r['speedup_vs_fastest']:6.1f}x {r['fastest_torch']:<4}  "
              f"{r['packed_gops']:7.0f} GOP/s  {100 * r['peak_fraction']:4.0f}% peak  {r['check']}{extra}")
    mm, b = result["matmul_peak_gflops"], result["baselines"]
    print(f"peaks: popcount {result['peak_tops']:.2f} TOPS; torch matmul fp32 {mm['fp32']:.0f} GFLOP/s, bf16 "
          + (f"{mm['bf16']:.0f} GFLOP/s" if mm["bf16"] is not None else f"n/a ({b['bf16']['null_reason']})")
          + f"; int8 engine {b['int8']['engine'] or 'n/a (' + b['int8']['null_reason'] + ')'}")
    print(_variant_line(result["kernel_variant"]))
    for v in result.get("variants", {}).get("rows", ()):
        print(f"  {result['variants']['case']} compiled for {v['target']:<8} {v['variant'] or 'failed':<17} "
              + (f"{v['ms']:9.3f} ms" if v["ms"] is not None else v["error"]))
    print(f"threads numba {result['environment']['numba_threads']} "
          f"({result['environment']['numba_threading_layer']}), torch {result['environment']['torch_threads']}")
    if "compile" in result:
        c = result["compile"]
        print(f"compile: first use {c['first_use_s']:.1f} s, cached {c['cached_s']:.1f} s")
    if not args.no_write:
        md, csv_path = write_reports(result, out_dir)
        print(f"wrote {md} and {csv_path}")
    if args.json:
        commandline.write_json(json.dumps(result, indent=2), args.json)
    return 0 if all(r["check"] != "MISMATCH" for r in result["rows"]) else 1


def _pareto_bench(args, out_dir: Path, command: str) -> int:
    from .. import commandline
    from . import pareto

    grid = Path(args.grid)
    if not grid.is_file():
        print(f"bnnrepro: error: bench --pareto: no grid table at {grid} (make it with `bnnrepro table quant_grid "
              f"--out results`, or pass --grid FILE)", file=sys.stderr)
        return 2
    result = pareto.run(grid, args.repeats or (5 if args.quick else 20))
    for r in result["rows"]:
        print(f"{r['row']:<20} error {r['test_error']:5.2f}%  packed b1 {pareto._ms(r.get('packed_ms_b1')):>7} "
              f"b64 {pareto._ms(r.get('packed_ms_b64')):>7} ms  torch b64 {pareto._ms(r['torch_ms_b64']):>7} ms "
              f"({r['fastest_torch_b64']})  {pareto._kib(r.get('packed_bytes')):>10}  "
              f"{r.get('check') or r['note']}{'  front' if r['front'] else ''}")
    if args.json:
        commandline.write_json(json.dumps(result, indent=2), args.json)
    if not args.no_write:
        print(f"wrote {pareto.write_reports(result, out_dir, command)}")
    return 0


def _train_bench(args, out_dir: Path, command: str) -> int:
    from .. import commandline
    from ..errors import UsageError
    from ..train import speed

    try:
        protocols = speed.select(args.protocols)
    except ValueError as err:
        raise UsageError(f"bnnrepro bench --train: {err}") from None
    result = speed.run(protocols, args.repeats or (3 if args.quick else 7), profile=not args.quick)
    result["command"] = command
    for row in result["rows"]:
        print(speed.summary_line(row))
    env = result["environment"]
    print(f"CPU: {env['cpu']}; bf16 matrix hardware: {env['bf16_hardware'] or 'none'}")
    if not args.no_write:
        print("wrote " + " and ".join(map(str, speed.write(result, out_dir))))
    if args.json:
        commandline.write_json(json.dumps(result, indent=2), args.json)
    return 0

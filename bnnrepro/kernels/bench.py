"""``bnnrepro bench``: packed binary kernels against torch float32 on the same shapes, one process.

Every case times the packed path and torch in alternating blocks of calls (so a load change on a
shared machine hits both), after warm-up, and reports the median (and IQR, and best) of the
repeats. GOP/s counts a binary
multiply-accumulate as 2 ops, like a float FMA. The XOR+popcount peak is measured in the same run
by an in-register loop on every thread (``peak``), so "fraction of peak" is relative to what this
machine delivered at that moment.
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

PEAK_REPS = 4096  # x 8192 words per thread per peak measurement


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


# ---------------------------------------------------------------- cases

def _pm1(rng, shape) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def bench_fc(m: int, k: int, n: int, repeats: int, rng) -> dict:
    from .bitpack import pack_rows
    from .gemm import DenseWeights, bgemm

    a, w = _pm1(rng, (m, k)), _pm1(rng, (n, k))
    W = DenseWeights.from_float(w)
    ab = pack_rows(a)
    out = np.empty((m, W.npad), np.int32)
    at, wt = torch.from_numpy(a), torch.from_numpy(w)
    ok = bool(np.array_equal(bgemm(ab, W, out), F.linear(at, wt).numpy()))
    with torch.no_grad():
        tp, tt = timed([lambda: bgemm(ab, W, out), lambda: F.linear(at, wt)], repeats)
    return _row(f"FC {m}x{k}->{n}", "gemm (input packed, weights pre-packed)", 2.0 * m * n * k, tp, tt, ok)


def bench_conv(batch: int, c: int, o: int, hw: int, repeats: int, rng, fused: bool = False) -> dict:
    """``fused=False``: pack the float +-1 input, convolve, int32 NHWC pre-activations out (the
    same information torch's conv2d returns). ``fused=True``: the layer as the engine runs it,
    pack + conv + sign threshold (T = 0 here; folded BN thresholds cost the same) -> packed bits
    with the next layer's zero border."""
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

        def packed():
            return run_conv(plan, pack_nchw(x, 1, buf), out, tiles.BITS, thr, flip)

        got = np.moveaxis(unpack(packed()[:, 1:-1, 1:-1], o), -1, 1)
        ok = bool(np.array_equal(got, np.where(want.numpy() >= 0, 1, -1)))
        what = "pack NCHW float + conv + sign threshold, packed bits out (engine layer)"
    else:
        out = np.empty((batch, hw, hw, W.npad), np.int32)

        def packed():
            return bconv2d(pack_nchw(x, 1, buf), W, out)

        ok = bool(np.array_equal(packed(), want.permute(0, 2, 3, 1).numpy()))
        what = "pack NCHW float + conv, int32 NHWC out"
    with torch.no_grad():
        tp, tt = timed([packed, lambda: F.conv2d(xt, wt, padding=1)], repeats)
    label = f"conv {c}->{o} 3x3 {hw}x{hw} batch {batch}" + (" +sign->bits" if fused else "")
    return _row(label, what, 2.0 * batch * hw * hw * o * c * 9, tp, tt, ok)


def _random_bn(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 40)
            m.running_var.copy_(torch.rand(n, generator=g) * 50 + 1)
            m.weight.data.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def bench_model(name: str, batch: int, repeats: int, rng, **kwargs) -> dict:
    from .. import models
    from .engine import PackedModel

    shape = (1, 28, 28) if name == "mlp" else (3, 32, 32)
    torch.manual_seed(0)
    model = _random_bn(models.build(name, input_shape=shape, num_classes=10, **kwargs))
    packed = PackedModel.from_torch(model, shape)
    x = torch.from_numpy(rng.integers(0, 256, (batch,) + shape, dtype=np.uint8))
    xn = x.numpy()

    frozen = frozen_float_copy(model)

    def float_path(m):
        return lambda: m(x.to(torch.float32).mul(2.0 / 255.0).sub(1.0))

    with torch.no_grad():
        want = float_path(model)()
        ok = bool(torch.equal(packed.forward(xn).argmax(1), want.argmax(1)))
        ok = ok and bool(torch.equal(float_path(frozen)(), want))
        tp, tf, tt = timed([lambda: packed.forward(xn), float_path(frozen), float_path(model)], repeats)
    macs = _model_macs(model, shape)
    label = "BNN MLP 3x4096 (MNIST)" if name == "mlp" else "BNN ConvNet (CIFAR-10 shape)"
    row = _row(f"{label} batch {batch}", "whole model from uint8 pixels (random weights)", 2.0 * macs * batch,
               tp, tf, ok, predictions=True)
    row.update(model_eval_ms=1e3 * tt["median_s"], model_eval_iqr_ms=1e3 * tt["iqr_s"],
               speedup_vs_model_eval=tt["median_s"] / tp["median_s"])
    return row


def frozen_float_copy(model):
    """The float model with its +-1 weights computed once: plain nn.Linear/nn.Conv2d layers. The
    fairer float baseline (the model's own eval re-binarizes its latent weights every call)."""
    import copy

    import torch.nn as nn

    frozen = copy.deepcopy(model).eval()
    for parent in list(frozen.modules()):
        for cname, child in list(parent.named_children()):
            if not hasattr(child, "quantized_weight"):
                continue
            with torch.no_grad():
                w = child.quantized_weight().detach().clone()
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                child.padding, child.dilation, child.groups, child.bias is not None)
            else:
                new = nn.Linear(child.in_features, child.out_features, child.bias is not None)
            new.weight = nn.Parameter(w, requires_grad=False)
            if child.bias is not None:
                new.bias = nn.Parameter(child.bias.detach().clone(), requires_grad=False)
            q = getattr(child, "input_quantizer", None)
            setattr(parent, cname, new if q is None or getattr(q, "precision", 32) == 32 else nn.Sequential(q, new))
    return frozen.eval()


def _model_macs(model, shape) -> int:
    macs = []
    hooks = [m.register_forward_hook(lambda mod, i, o: macs.append(
        o[0].numel() * mod.weight[0].numel())) for m in model.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with torch.no_grad():
        model(torch.zeros((1,) + shape))
    for h in hooks:
        h.remove()
    return int(sum(macs))


def _row(case, what, ops, tp, tt, ok, predictions=False) -> dict:
    return {"case": case, "packed_path": what, "ops": ops,
            "packed_ms": 1e3 * tp["median_s"], "packed_iqr_ms": 1e3 * tp["iqr_s"], "packed_min_ms": 1e3 * tp["min_s"],
            "torch_ms": 1e3 * tt["median_s"], "torch_iqr_ms": 1e3 * tt["iqr_s"], "torch_min_ms": 1e3 * tt["min_s"],
            "packed_gops": ops / tp["median_s"] / 1e9, "torch_gflops": ops / tt["median_s"] / 1e9,
            "speedup": tt["median_s"] / tp["median_s"], "speedup_best": tt["min_s"] / tp["min_s"],
            "repeats": tp["n"],
            ("identical_predictions" if predictions else "bit_exact"): ok}


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
           "speedup", "speedup_best", "packed_gops",
           "torch_gflops", "peak_fraction", "check", "model_eval_ms", "speedup_vs_model_eval", "repeats",
           "packed_path"]


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
    peak = result["peak_tops"]
    lines = [
        "# Packed binary kernels vs torch float32 (CPU)",
        "",
        f"Generated by `{result['command']}` on {result['date']}. Median of {result['repeats']} repeats "
        "(alternating blocks of 5 after warm-up), both paths in one process; IQR in parentheses. GOP/s "
        "counts a binary multiply-accumulate as 2 ops.",
        "",
        f"- CPU: {env['cpu']} (LLVM: {env['llvm_cpu']}); flags: "
        + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in env["flags"].items()),
        f"- threads: numba {env['numba_threads']} ({env['numba_threading_layer']} layer), torch "
        f"{env['torch_threads']}; torch {env['torch']}, numba {env['numba']}, numpy {env['numpy']}",
        f"- load average when the run ended: {env['loadavg']}",
        f"- XOR+popcount peak measured in this run: {peak:.2f} TOPS (in-register loop on every thread)",
    ]
    if "compile" in result:
        c = result["compile"]
        lines.append(f"- numba compile, fresh process: first use {c['first_use_s']:.1f} s, "
                     f"cached {c['cached_s']:.1f} s")
    lines += ["", "| case | packed ms | torch fp32 ms | speedup | speedup of best times | packed GOP/s "
                  "| torch GFLOP/s | % of popcount peak | check |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['packed_ms']:.3f} ({r['packed_iqr_ms']:.3f}) | {r['torch_ms']:.2f} "
                     f"({r['torch_iqr_ms']:.2f}) | {r['speedup']:.1f}x | {r['speedup_best']:.1f}x | "
                     f"{r['packed_gops']:.0f} | {r['torch_gflops']:.0f} | {100 * r['peak_fraction']:.0f}% | "
                     f"{r['check']} |")
    models_ = [r for r in rows if "model_eval_ms" in r]
    if models_:
        lines += ["", "Whole models: *torch fp32 ms* above is the float model with its +-1 weights precomputed "
                  "(plain nn.Linear/nn.Conv2d); the trained model's own eval, which re-binarizes its latent "
                  "weights on every call, is slower:", "",
                  "| case | model eval ms | packed speedup over it |", "|---|---:|---:|"]
        for r in models_:
            lines.append(f"| {r['case']} | {r['model_eval_ms']:.2f} ({r['model_eval_iqr_ms']:.2f}) | "
                         f"{r['speedup_vs_model_eval']:.1f}x |")
    paths = sorted({f"{r['case'].split(' ')[0]}{' +sign' if 'bits out' in r['packed_path'] else ''}: "
                    f"{r['packed_path']}" for r in rows})
    lines += ["", "Packed paths: " + "; ".join(paths),
              "", "The machine may be shared: rerun `bnnrepro bench` on a quiet machine for final numbers.", ""]
    md_path.write_text("\n".join(lines))
    return md_path, csv_path


def run(quick: bool = False, repeats: int | None = None, with_compile: bool = True) -> dict:
    rng = np.random.default_rng(0)
    reps = repeats or (5 if quick else 20)
    mreps = repeats or (3 if quick else 10)
    t0 = time.perf_counter()
    from . import warmup

    warmup(references=True)
    peak = measure_peak()
    rows = []
    for m in ((1, 64) if quick else (1, 16, 64, 256)):
        rows.append(bench_fc(m, 4096, 4096, reps, rng))
    for b in ((1, 8) if quick else (1, 64)):
        for fused in (False, True):
            rows.append(bench_conv(b, 128, 128, 32, reps if b == 1 else mreps, rng, fused))
    rows.append(bench_model("mlp", 64 if quick else 256, mreps, rng, hidden=(4096,) * 3))
    rows.append(bench_model("bnn_convnet", 8 if quick else 64, mreps, rng))
    peak = max(peak, measure_peak())  # again at the end: the best of both, in case of a busy moment
    for r in rows:
        r["peak_fraction"] = r["packed_gops"] * 1e9 / peak
        r["check"] = ("identical predictions" if r.get("identical_predictions") else
                      "bit-exact" if r.get("bit_exact") else "MISMATCH")
    result = {"rows": rows, "peak_tops": peak / 1e12, "environment": environment(), "repeats": reps,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick}
    if with_compile and not quick:
        result["compile"] = compile_times()
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
    result = run(args.quick, args.repeats, not args.no_compile)
    result["command"] = "bnnrepro bench " + " ".join(argv)
    for r in result["rows"]:
        extra = (f"  (model eval {r['model_eval_ms']:.1f} ms: {r['speedup_vs_model_eval']:.1f}x)"
                 if "model_eval_ms" in r else "")
        print(f"{r['case']:<44} packed {r['packed_ms']:9.3f} ms  torch {r['torch_ms']:9.2f} ms  "
              f"{r['speedup']:6.1f}x  {r['packed_gops']:7.0f} GOP/s  {100 * r['peak_fraction']:4.0f}% peak  "
              f"{r['check']}{extra}")
    print(f"popcount peak {result['peak_tops']:.2f} TOPS; threads numba {result['environment']['numba_threads']} "
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

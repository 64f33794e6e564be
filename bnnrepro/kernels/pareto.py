"""``bnnrepro bench --pareto``: accuracy x speed x size for each (W, A, G) row of the MNIST quant grid.

Each row of the grid table (``results/quant_grid_mnist.csv``, built by ``bnnrepro table
quant_grid`` from the run records beside it) gives the test error (mean ± std over its seeds) and
the preset and scale its runs were trained at. For that architecture and bit widths this module
times, in one process, interleaved, median of repeats after warm-up, at batch 1 and 64 from uint8
pixels:

* the packed engine (the ±1 engine, or the bit-serial engine for DoReFa's multi-bit nets), and
* the fastest torch path of the same net (fp32 with its quantized weights computed once, bf16
  autocast where the CPU multiplies bf16, int8: dynamic linear layers), as ``bnnrepro bench`` does,

and reports the packed file's size against float32 weights. Latency is measured on the row's
architecture with random weights and BatchNorm statistics (the records carry no checkpoints): the
packed kernels do the same work whatever the weight values are. A row the packed engine cannot run
(float activations, QNN's grids) gets its reason instead. ``front`` marks the rows no other row
beats on error, batch-64 latency and size at once.
"""
from __future__ import annotations

import csv
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import PackError
from ..timing import environment, timed
from . import variant
from .baselines import Baselines, frozen_float_copy, random_bn

SHAPE = (1, 28, 28)
BATCHES = (1, 64)
TORCH_PATHS = ("fp32", "bf16", "int8")
COLUMNS = ["row", "family", "W", "A", "G", "scale", "test_error", "test_error_std", "n", "engine",
           "packed_ms_b1", "packed_ms_b64", "fastest_torch_b1", "torch_ms_b1", "fastest_torch_b64", "torch_ms_b64",
           "speedup_b64", "packed_bytes", "size_kind", "float32_bytes", "check", "front", "note"]


def grid_rows(grid_csv: Path) -> list[dict]:
    """The reproduced rows of a quant-grid table CSV (n >= 1)."""
    with open(grid_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("n") and int(r["n"]) > 0]
    if not rows:
        raise ValueError(f"{grid_csv}: no reproduced rows (run `bnnrepro table quant_grid` first)")
    return rows


def _model(preset: str, scale: str):
    from ..compose import compose
    from ..config import validate
    from ..train.factory import build_model

    cfg = compose(preset.split() + [f"scale={scale}"])
    validate(cfg)
    torch.manual_seed(0)
    return random_bn(build_model(cfg, SHAPE, 10))


def _size(packed) -> tuple[int, str]:
    """Bytes of the packed net: its ``.bnn`` file, or (no file format for it) its packed weights plus
    the float32 weights of the layers it runs in float (DoReFa's first and last)."""
    from . import artifact

    with tempfile.TemporaryDirectory() as d:
        try:
            return artifact.save(packed, Path(d) / "m.bnn").stat().st_size, "file"
        except PackError:
            floats = [m for st in getattr(packed, "stages", ()) for _, m in getattr(st, "modules", ())]
            return (packed.weight_bytes() + artifact.float_weight_bytes(torch.nn.Sequential(*floats)),
                    "packed weights + float32 first/last layers")


def _call(m, x):
    return m(x.to(torch.float32).mul(2.0 / 255.0).sub(1.0))


def measure(preset: str, scale: str, repeats: int, baselines: Baselines, rng) -> dict:
    """One architecture's latencies (ms per batch), sizes and agreement of packed and torch."""
    from .artifact import float_weight_bytes
    from .engine import PackedModel

    model = _model(preset, scale)
    frozen = frozen_float_copy(model)
    out = {"float32_bytes": float_weight_bytes(model), "engine": None, "note": ""}
    try:
        packed = PackedModel.from_torch(model, SHAPE)
        out["engine"] = "bit-serial" if type(packed).__name__ == "MultiBitModel" else "binary"
        out["packed_bytes"], out["size_kind"] = _size(packed)
    except PackError as err:
        packed = None
        out["note"] = f"not packable: {str(err).splitlines()[0]}"
    differ = 0
    for b in BATCHES:
        x = torch.from_numpy(rng.integers(0, 256, (b,) + SHAPE, dtype=np.uint8))
        xn = x.numpy()
        with torch.no_grad():
            paths = {"fp32": (lambda: _call(frozen, x), None),
                     "bf16": baselines.bf16_model(frozen, lambda m: _call(m, x)),
                     "int8": baselines.int8_model(frozen, lambda m: _call(m, x))}
            names = [p for p in TORCH_PATHS if paths[p][0] is not None]
            fns = ([lambda: packed.forward(xn)] if packed is not None else []) + [paths[p][0] for p in names]
            stats = timed(fns, repeats)
            if packed is not None:
                out[f"packed_ms_b{b}"] = 1e3 * stats[0]["median_s"]
                differ += int((packed.forward(xn).argmax(1) != _call(model, x).argmax(1)).sum())
            torch_ms = {p: 1e3 * s["median_s"] for p, s in zip(names, stats[-len(names):])}
        fastest = min(torch_ms, key=torch_ms.get)
        out[f"fastest_torch_b{b}"], out[f"torch_ms_b{b}"] = fastest, torch_ms[fastest]
    if packed is not None:
        out["speedup_b64"] = out["torch_ms_b64"] / out["packed_ms_b64"]
        out["check"] = "identical predictions" if differ == 0 else f"{differ}/{sum(BATCHES)} predictions differ"
    return out


def front(rows: list[dict], keys=("test_error", "packed_ms_b64", "packed_bytes")) -> list[bool]:
    """Per row: no other row is at least as good on every key and better on one (rows lacking a key:
    False)."""
    def vals(r):
        return [r.get(k) for k in keys]

    ok = [all(v is not None and math.isfinite(v) for v in vals(r)) for r in rows]
    marks = []
    for i, r in enumerate(rows):
        if not ok[i]:
            marks.append(False)
            continue
        mine = vals(r)
        beaten = any(ok[j] and j != i and all(o <= m for o, m in zip(vals(s), mine)) and vals(s) != mine
                     for j, s in enumerate(rows))
        marks.append(not beaten)
    return marks


def run(grid_csv: Path, repeats: int = 20) -> dict:
    from . import warmup

    t0 = time.perf_counter()
    warmup()
    baselines, rng = Baselines(), np.random.default_rng(0)
    cache: dict = {}
    rows = []
    for g in grid_rows(grid_csv):
        arch = (g["preset"].replace(f"quant.g_bits={g['G']}", ""), g["scale"])  # G changes training only
        if arch not in cache:
            cache[arch] = measure(g["preset"], g["scale"], repeats, baselines, rng)
        rows.append({"row": g["row"], "family": g["family"], "W": int(g["W"]), "A": int(g["A"]), "G": int(g["G"]),
                     "scale": g["scale"], "test_error": float(g["mean"]),
                     "test_error_std": float(g["std"]) if g["std"] else None, "n": int(g["n"]), **cache[arch]})
    for r, f in zip(rows, front(rows)):
        r["front"] = f
    return {"rows": rows, "grid": str(grid_csv), "environment": environment(), "kernel_variant": variant.detect(),
            "baselines": baselines.describe(), "repeats": repeats, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- report

def _ms(v) -> str:
    return "—" if v is None else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _kib(v) -> str:
    return "—" if v is None else f"{v / 1024:.1f} KiB"


def plot(rows: list[dict], out: Path) -> Path:
    from ..runs.curves import figure

    fig, (ax1, ax2) = figure(2, width=10.0, height=4.2)
    for r in rows:
        err, sd = r["test_error"], r["test_error_std"] or 0.0
        label = f"W{r['W']}A{r['A']}G{r['G']}" + ("" if r["family"] == "DoReFa" else f" {r['family']}")
        packed = r.get("packed_ms_b64") is not None
        x = r["packed_ms_b64"] if packed else r["torch_ms_b64"]
        style = dict(marker="o" if packed else "s", fillstyle="full" if packed else "none",
                     color="C0" if r["front"] else ("C1" if packed else "C7"))
        ax1.errorbar(x, err, yerr=sd, linestyle="none", capsize=2, **style)
        ax1.annotate(label, (x, err), fontsize=6, xytext=(3, 3), textcoords="offset points")
        size = r.get("packed_bytes") or r["float32_bytes"]
        ax2.errorbar(size / 1024, err, yerr=sd, linestyle="none", capsize=2, **style)
        ax2.annotate(label, (size / 1024, err), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax1.set_xscale("log")
    ax1.set_xlabel("batch-64 latency, ms (circles: packed, squares: fastest torch)")
    ax2.set_xscale("log")
    ax2.set_xlabel("size, KiB (packed file, or float32 weights)")
    for ax in (ax1, ax2):
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("MNIST MLP quant grid: error vs packed latency and size (blue: on the front)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})
    return out


def write_reports(result: dict, out_dir: Path, command: str, figures: bool = True) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, env, v = result["rows"], result["environment"], result["kernel_variant"]
    with open(out_dir / "pareto_mnist.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (f"{val:.4g}" if isinstance(val, float) else val) for k, val in r.items()})
    (out_dir / "pareto_mnist.json").write_text(json.dumps(dict(result, command=command), indent=2) + "\n")
    scales = sorted({r["scale"] for r in rows})
    lines = [
        "# Accuracy x speed x size: the MNIST MLP quant grid on the packed engine",
        "",
        f"Generated by `{command}` on {result['date']} from `{Path(result['grid']).name}` (test error: mean ± "
        f"sample std over the row's seeds, read from its run records; scale {', '.join(scales)}). Latency: median "
        f"of {result['repeats']} repeats per batch from uint8 pixels, packed and torch paths interleaved in one "
        "process after warm-up, on each row's architecture with random weights and BatchNorm statistics (the "
        "records carry no checkpoints; the packed kernels' work does not depend on the weight values). Torch: "
        "the fastest of fp32 (quantized weights computed once), bf16 autocast and int8 (dynamic linear layers) "
        "for that net. Size: the packed `.bnn` file, or its packed weights where the engine has no file format; "
        "float32: the weights of the same layers. `front` (among the packed rows): no other packed row has "
        "lower-or-equal error, batch-64 latency and size with one strictly lower.",
        "",
        f"- CPU: {env['cpu']} (LLVM: {env['llvm_cpu']}); threads: numba {env['numba_threads']}, torch "
        f"{env['torch_threads']}; load average at the end: {env['loadavg']}",
        f"- packed kernels: popcount variant {v['variant']} ({v['vector_bits']}-bit vectors)",
        f"- torch bf16: {result['baselines']['bf16']['hardware'] or result['baselines']['bf16']['null_reason']}; "
        f"int8 engine: {result['baselines']['int8']['engine'] or result['baselines']['int8']['null_reason']}",
        "",
        "| row | W | A | G | test error % (n) | engine | packed ms b1 | packed ms b64 | fastest torch ms b1 "
        "| fastest torch ms b64 | packed vs torch b64 | packed size | float32 | check | front |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        sd = f" ± {r['test_error_std']:.2f}" if r["test_error_std"] is not None else ""
        speed = f"{r['speedup_b64']:.1f}x" if r.get("speedup_b64") else "—"
        lines.append(
            f"| {r['row']} | {r['W']} | {r['A']} | {r['G']} | {r['test_error']:.2f}{sd} ({r['n']}) | "
            f"{r['engine'] or '—'} | {_ms(r.get('packed_ms_b1'))} | {_ms(r.get('packed_ms_b64'))} | "
            f"{_ms(r['torch_ms_b1'])} ({r['fastest_torch_b1']}) | {_ms(r['torch_ms_b64'])} ({r['fastest_torch_b64']}) "
            f"| {speed} | {_kib(r.get('packed_bytes'))} | {_kib(r['float32_bytes'])} | "
            f"{r.get('check') or r['note']} | {'yes' if r['front'] else ''} |")
    kinds = sorted({r["size_kind"] for r in rows if r.get("size_kind")})
    if kinds != ["file"] and kinds:
        lines += ["", "Packed size: " + "; ".join(
            f"{k}: {', '.join(r['row'] for r in rows if r.get('size_kind') == k)}" for k in kinds)]
    if figures:
        plot(rows, out_dir / "figures" / "pareto_mnist.png")
        lines += ["", "![error vs latency and size](figures/pareto_mnist.png)"]
    md = out_dir / "pareto_mnist.md"
    md.write_text("\n".join(lines) + "\n")
    return md

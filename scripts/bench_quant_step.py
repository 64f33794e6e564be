#!/usr/bin/env python
"""Training-step time of the acceptance grid's MLP with each quantizer setting, against the float step.

Every row of the quant_grid table target (bnnrepro/report/targets/quant_grid.yaml) (DoReFa (W, A, G) and QNN linear/log k-bit) is
built exactly as ``bnnrepro train`` builds it (same preset, overrides and scale), with its loss,
optimizer, LR groups and latent-weight clipping; one step = forward, loss, zero_grad, backward,
optimizer step, clip. All settings run in this one process on the same random batch, after a
warm-up, interleaved round-robin (so drift of a shared machine hits all of them alike); the
median of the repeats is reported, both as this process's CPU time (what a shared machine's
other processes do not inflate) and as wall time, and its ratio to the float reference of the same family
(DoReFa: dorefa-w32a32g32 = float weights, ReLU, float gradients; QNN: the same qnn_mnist_mlp with
identity weights and hard-tanh activations, i.e. BNN's float baseline).

    OMP_NUM_THREADS=1 python scripts/bench_quant_step.py [--scale quick] [--repeats 30] [--threads 1]

A benchmark, not a test: timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
FLOAT_ROW = "dorefa-w32a32g32"  # the DoReFa family's float reference
# the QNN family's float reference: BNN's float baseline on the same net
QNN_FLOAT = ("qnn-float", ["+experiment=qnn_mnist_mlp", "quant.weight=identity", "quant.w_bits=32",
                           "quant.activation=htanh", "quant.a_bits=32"])


def compose(overrides):
    """The config `bnnrepro train <overrides>` would run with (the tables' own composer)."""
    from bnnrepro.compose import hydra_composer

    return hydra_composer()(overrides)


def build_step(cfg, x, y):
    from bnnrepro.config import validate
    from bnnrepro.optim import LatentWeightClipper, build_optimizer
    from bnnrepro.train.factory import build_loss, build_model

    validate(cfg)
    model = build_model(cfg, (1, 28, 28), 10)
    model.train()
    loss_fn = build_loss(cfg.train.loss)
    optimizer = build_optimizer(model, cfg.optim)
    clip = LatentWeightClipper(model, cfg.optim.clip_latent, optimizer)

    def step():
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clip()
        return loss

    return step


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni") if f in flags)
    except OSError:
        pass
    return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="quick", help="scale preset (quick: the grid's 3x256 MLP)")
    ap.add_argument("--repeats", type=int, default=30, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per setting first")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--only", default="", help="comma-separated row ids (default: all)")
    ap.add_argument("--limit", type=float, default=1.5, help="acceptance: ratio to float at most this")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from bnnrepro.report import targets

    (grid,) = targets.load("quant_grid").tables
    rows = [(r.id, list(r.overrides)) for r in grid.rows]
    from bnnrepro import quant

    float_act = "htanh" if "htanh" in quant.names() else "identity"
    rows.append((QNN_FLOAT[0], [o.replace("htanh", float_act) for o in QNN_FLOAT[1]]))
    if args.only:
        keep = set(args.only.split(",")) | {FLOAT_ROW, QNN_FLOAT[0]}
        rows = [r for r in rows if r[0] in keep]

    steps = {}
    batch = None
    for rid, overrides in rows:
        cfg = compose(list(overrides) + [f"scale={args.scale}"])
        if batch is None:
            n = int(cfg.train.batch_size)
            batch = (torch.rand(n, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (n,)))
        steps[rid] = build_step(cfg, *batch)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    wall = {rid: [] for rid in steps}
    cpu = {rid: [] for rid in steps}
    for _ in range(args.repeats):
        for rid, step in steps.items():
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            wall[rid].append(time.perf_counter() - t0)
            cpu[rid].append(time.process_time() - c0)

    med_wall = {rid: statistics.median(t) for rid, t in wall.items()}
    med_cpu = {rid: statistics.median(t) for rid, t in cpu.items()}
    print(f"# bench_quant_step: scale={args.scale}, batch {batch[0].shape[0]}, {args.threads} thread(s), "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()} [{cpu_flags()}], "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; median of {args.repeats} steps after "
          f"{args.warmup} warm-up steps, settings interleaved")
    print("# cpu = this process's CPU time per step (robust to other processes taking the cores);"
          " wall = elapsed time")
    print(f"{'setting':<20} {'cpu ms':>8} {'wall ms':>8} {'wall p10-p90':>14} {'cpu ratio':>10} {'wall ratio':>11}")
    worst = 0.0
    for rid in wall:
        ref = QNN_FLOAT[0] if rid.startswith("qnn") else FLOAT_ROW
        r_cpu, r_wall = med_cpu[rid] / med_cpu[ref], med_wall[rid] / med_wall[ref]
        q = statistics.quantiles(wall[rid], n=10)
        print(f"{rid:<20} {med_cpu[rid] * 1e3:8.2f} {med_wall[rid] * 1e3:8.2f} {q[0] * 1e3:6.2f}-{q[-1] * 1e3:6.2f} "
              f"{r_cpu:9.2f}x {r_wall:10.2f}x")
        worst = max(worst, r_cpu)
    verdict = "ok" if worst <= args.limit else "SLOWER than the limit"
    print(f"# worst CPU-time ratio to float {worst:.2f}x (limit {args.limit}x): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

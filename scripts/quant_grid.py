#!/usr/bin/env python
"""Run the QNN/DoReFa acceptance grid on MNIST (or Fashion-MNIST) as Hydra multiruns, then print its table.

The grid is conf/tables/quant_grid_mnist.yaml: DoReFa (W, A, G) in {32/32/32, 1/32/32, 1/1/32,
1/2/32, 1/2/4, 1/2/6, 1/1/2, 2/2/4, 8/8/8} on +experiment=dorefa_mnist_mlp and QNN linear/log at
2 and 4 bits on +experiment=qnn_mnist_mlp. Each row is one multirun over the seeds::

    bnnrepro train -m <row overrides> scale=quick scale.schedule=compress data=mnist seed=0,1 \\
        runs_dir=runs/quant_grid train.num_threads=1 train.progress=false \\
        hydra.sweep.dir=runs/quant_grid/multirun/<row>-<time>

``scale.schedule=compress``: the presets' LR decay (1e-3 -> 1e-5 over their 100 epochs) is squeezed
into the quick scale's 20 epochs, so every run ends at a small learning rate (--schedule truncate
runs the first 20 epochs of the 100-epoch schedule instead).

``--jobs`` rows run at once (one thread each; default 2 = the 2 cores of the reference machine).
Seeds that already have a completed run of the same setting under the runs folder are skipped,
so an interrupted grid continues where it stopped. At the end it prints scripts/quant_table.py's
table and checks.

Budget (scale=quick: 3x256 MLP, 20 epochs of 50k images, batch 100): about 5 s per epoch for the
float net and 6-9 s for the quantized ones on one core of the reference 2-core machine, i.e.
~2-3 min per run and ~50-60 min for the 26 runs at --jobs 1, ~30 min at --jobs 2 on an otherwise
idle machine (more when the cores are shared). Measure yours with one row first:
--only dorefa-w1a2g4 --seeds 0.

    python scripts/quant_grid.py [--scale quick] [--seeds 0,1] [--data mnist] [--jobs 2] [--schedule compress]
                                 [--runs-dir runs/quant_grid] [--only ID,ID] [--dry-run] [-- extra overrides]
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quant_table  # noqa: E402  (the same row matching as the table)


def bnnrepro_cmd() -> list[str]:
    return [sys.executable, "-m", "bnnrepro"]


def plan(grid, args, extra) -> list[tuple[str, list[str], list[int]]]:
    """(row id, command, seeds to run) for each row that still lacks seeds."""
    seeds = [int(s) for s in args.seeds.split(",")]
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {r["id"] for r in grid["rows"]}
    if unknown:
        raise SystemExit(f"unknown row id(s) {', '.join(sorted(unknown))}; rows: "
                         f"{', '.join(r['id'] for r in grid['rows'])}")
    done: dict[str, list[dict]] = {}
    if not args.dry_run or Path(args.runs_dir).is_dir():
        keys = quant_table.row_keys(grid, args.scale, args.data, extra)
        done = quant_table.collect(grid, keys, quant_table.completed_summaries([args.runs_dir]))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    jobs = []
    for r in grid["rows"]:
        if only and r["id"] not in only:
            continue
        have = {s.get("seed") for s in done.get(r["id"], [])}
        todo = [s for s in seeds if s not in have]
        if not todo:
            print(f"{r['id']}: seeds {args.seeds} done, skipped", file=sys.stderr)
            continue
        cmd = ["train", "-m", *r["overrides"], f"scale={args.scale}", f"scale.schedule={args.schedule}",
               f"data={args.data}",
               f"seed={','.join(map(str, todo))}", f"runs_dir={args.runs_dir}",
               f"train.num_threads={args.threads}", "train.progress=false",
               f"hydra.sweep.dir={args.runs_dir}/multirun/{r['id']}-{stamp}", *extra]
        jobs.append((r["id"], cmd, todo))
    return jobs


def run_one(job, args) -> tuple[str, int, float]:
    rid, cmd, _ = job
    log_dir = Path(args.runs_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    t0 = time.time()
    with open(log_dir / f"{rid}.log", "a") as log:
        log.write(f"$ bnnrepro {shlex.join(cmd)}\n")
        log.flush()
        rc = subprocess.call(bnnrepro_cmd() + cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    dt = time.time() - t0
    print(f"{rid}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {dt / 60:.1f} min "
          f"(log {log_dir / (rid + '.log')})", file=sys.stderr)
    return rid, rc, dt


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="quick")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--schedule", default="compress", choices=["compress", "truncate"],
                    help="scale.schedule: the LR schedule squeezed into the scaled epochs, or its start")
    ap.add_argument("--data", default="mnist", choices=["mnist", "fashion_mnist"])
    ap.add_argument("--jobs", type=int, default=2, help="rows run at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--runs-dir", default="runs/quant_grid")
    ap.add_argument("--only", default="", help="comma-separated row ids")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--no-table", action="store_true", help="do not print the table at the end")
    args = ap.parse_args(argv)

    grid = quant_table.load_grid()
    jobs = plan(grid, args, extra)
    n_runs = sum(len(j[2]) for j in jobs)
    print(f"# {len(jobs)} multiruns, {n_runs} runs, scale={args.scale}, data={args.data}, {args.jobs} at once, "
          f"{args.threads} thread(s) each; runs under {args.runs_dir}", file=sys.stderr)
    if args.dry_run:
        for rid, cmd, _ in jobs:
            print(f"bnnrepro {shlex.join(cmd)}")
        return 0
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda j: run_one(j, args), jobs))
    failed = [rid for rid, rc, _ in results if rc != 0]
    print(f"# grid finished in {(time.time() - t0) / 60:.1f} min; "
          f"{'all rows ok' if not failed else 'FAILED: ' + ', '.join(failed)}", file=sys.stderr)
    if not args.no_table:
        quant_table.main([args.runs_dir, "--scale", args.scale, "--data", args.data])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

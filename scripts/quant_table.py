#!/usr/bin/env python
"""The acceptance grid's table: mean ± std of test_error per setting, and the DoReFa paper's orderings.

Reads every completed ``summary.json`` under the runs folder(s) (nothing else: no hand-typed
numbers), matches each run to a row of conf/tables/quant_grid_mnist.yaml by what the run recorded
(experiment, quantizer names and bits, scale, dataset), and prints one line per row: mean ± sample
std of the test error (at the best-validation epoch) over seeds, the seeds, and the difference to
the float row. Then it checks the orderings of DoReFa's Table 1 (papers.md §c.2):

  1. G=2 hurts most: (1,1,2) has the highest error of the DoReFa rows;
  2. A=1 costs: (1,1,32) is worse than (1,2,32);
  3. (1,2,4) is within about a point (--tol-124, default 1.0) of float;
  4. 8/8/8 is about float (within --tol-888, default 0.5 points).

    python scripts/quant_table.py [runs/quant_grid ...] [--scale quick] [--data mnist] [--csv out.csv]
                                  [--md out.md] [--strict]

``--md`` writes the table, the checks and, per row, the run directories and code versions its
numbers come from (results/quant_grid_mnist.md is made this way).

``--strict`` exits 1 when a check fails or cannot be made (missing rows).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "conf" / "tables" / "quant_grid_mnist.yaml"
KEY_FIELDS = ("experiment", "weight", "w_bits", "activation", "a_bits", "gradient", "g_bits", "scale", "dataset")


def load_grid(path: Path = GRID) -> dict:
    return yaml.safe_load(Path(path).read_text())


def compose(overrides):
    """The config `bnnrepro train <overrides>` would run with (the tables' own composer)."""
    from bnnrepro.compose import hydra_composer

    return hydra_composer()(overrides)


def key_of_config(cfg) -> tuple:
    q = cfg.quant
    return (cfg.experiment, q.weight, q.w_bits, q.activation, q.a_bits, q.gradient, q.g_bits, cfg.scale.name,
            cfg.data.name)


def key_of_summary(s: dict) -> tuple:
    q = s.get("quantizer") or {}
    return (s.get("experiment"), q.get("weight"), q.get("w_bits"), q.get("activation"), q.get("a_bits"),
            q.get("gradient"), q.get("g_bits"), s.get("scale"), s.get("dataset"))


def row_keys(grid: dict, scale: str, data: str, extra: list[str] = ()) -> dict[str, tuple]:
    """Each row's identity as its runs record it: compose the row exactly as the runner launches it."""
    return {r["id"]: key_of_config(compose(list(r["overrides"]) + [f"scale={scale}", f"data={data}", *extra]))
            for r in grid["rows"]}


def completed_summaries(roots) -> list[tuple[Path, dict]]:
    out = []
    for root in roots:
        for path in sorted(Path(root).rglob("summary.json")):
            try:
                s = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if s.get("status") == "completed":
                out.append((path.parent, s))
    return out


def collect(grid: dict, keys: dict[str, tuple], summaries) -> dict[str, list[dict]]:
    """Row id -> its runs' summaries (one per seed: the latest run of a seed wins)."""
    by_key = {k: rid for rid, k in keys.items()}
    per_row: dict[str, dict[int, dict]] = {r["id"]: {} for r in grid["rows"]}
    for run_dir, s in summaries:
        rid = by_key.get(key_of_summary(s))
        if rid is None:
            continue
        s = dict(s, run_dir=str(run_dir))
        seed = s.get("seed")
        old = per_row[rid].get(seed)
        if old is None or str(run_dir) > old["run_dir"]:  # names end in a timestamp
            per_row[rid][seed] = s
    return {rid: [runs[k] for k in sorted(runs)] for rid, runs in per_row.items()}


def stats(runs: list[dict]) -> dict:
    errs = [float(r["test_error"]) for r in runs]
    if not errs:
        return {"n": 0, "mean": math.nan, "std": math.nan, "seeds": []}
    return {"n": len(errs), "mean": statistics.fmean(errs),
            "std": statistics.stdev(errs) if len(errs) > 1 else math.nan,
            "seeds": [r.get("seed") for r in runs],
            "runs": [Path(r["run_dir"]).name for r in runs],
            "code": sorted({_code(r) for r in runs}),
            "epochs": sorted({r.get("epochs_done") for r in runs}),
            "wall_s": statistics.fmean(float(r.get("wall_time_s", math.nan)) for r in runs)}


def _code(summary: dict) -> str:
    v = summary.get("code_version") or {}
    commit = (v.get("git_commit") or "?")[:10]
    return f"{v.get('package', '?')}@{commit}{'+dirty' if v.get('git_dirty') else ''}"


def checks(table: dict[str, dict], reference: str, tol_124: float = 1.0, tol_888: float = 0.5) -> list[tuple]:
    """(name, verdict, detail) for the DoReFa orderings; verdict True / False / None (cannot check)."""
    def m(rid):
        s = table.get(rid)
        return None if not s or s["n"] == 0 else s["mean"]

    out = []
    dorefa = {rid: m(rid) for rid in table if rid.startswith("dorefa-")}
    g2 = m("dorefa-w1a1g2")
    if g2 is None or any(v is None for v in dorefa.values()):
        out.append(("G=2 hurts most: (1,1,2) is the worst DoReFa setting", None, "rows missing"))
    else:
        worst = max(dorefa, key=dorefa.get)
        out.append(("G=2 hurts most: (1,1,2) is the worst DoReFa setting", worst == "dorefa-w1a1g2",
                    f"(1,1,2) {g2:.2f}%, worst {worst} {dorefa[worst]:.2f}%"))
    a1, a2 = m("dorefa-w1a1g32"), m("dorefa-w1a2g32")
    out.append(("A=1 costs: (1,1,32) worse than (1,2,32)", None if None in (a1, a2) else a1 > a2,
                "rows missing" if None in (a1, a2) else f"{a1:.2f}% vs {a2:.2f}% ({a1 - a2:+.2f})"))
    f, q124, q888 = m(reference), m("dorefa-w1a2g4"), m("dorefa-w8a8g8")
    out.append((f"(1,2,4) within {tol_124:g} point of float", None if None in (f, q124) else q124 - f <= tol_124,
                "rows missing" if None in (f, q124) else f"{q124:.2f}% vs float {f:.2f}% ({q124 - f:+.2f})"))
    out.append((f"8/8/8 ~ float (within {tol_888:g} point)", None if None in (f, q888) else abs(q888 - f) <= tol_888,
                "rows missing" if None in (f, q888) else f"{q888:.2f}% vs float {f:.2f}% ({q888 - f:+.2f})"))
    return out


def _fmt(s: dict) -> str:
    if s["n"] == 0:
        return "missing"
    std = "" if math.isnan(s["std"]) else f" ± {s['std']:.2f}"
    return f"{s['mean']:.2f}{std}"


def _cells(s: dict, ref: dict, empty: str) -> tuple[str, str, str]:
    """(difference to the float row, epochs, mean wall seconds per run) of a row's statistics."""
    delta = "" if s["n"] == 0 or not ref.get("n") else f"{s['mean'] - ref['mean']:+.2f}"
    epochs = ",".join(map(str, s.get("epochs", []))) or empty
    wall = empty if s["n"] == 0 else f"{s['wall_s']:.0f}"
    return delta, epochs, wall


def render(grid: dict, table: dict[str, dict], scale: str, data: str) -> str:
    ref = table.get(grid["reference"], {})
    lines = [f"# {grid['title']}", f"# test error (%) at the best-validation epoch, mean ± sample std over seeds; "
             f"scale={scale}, data={data}",
             f"{'row':<18} {'quantizer':<11} {'W':>3} {'A':>3} {'G':>3}  {'test error %':>14} {'n':>2} "
             f"{'vs float':>9} {'epochs':>7} {'s/run':>6}"]
    for r in grid["rows"]:
        s, lab = table[r["id"]], r["labels"]
        delta, epochs, wall = _cells(s, ref, "-")
        lines.append(f"{r['id']:<18} {lab['quantizer']:<11} {lab['W']:>3} {lab['A']:>3} {lab['G']:>3}  "
                     f"{_fmt(s):>14} {s['n']:>2} {delta:>9} {epochs:>7} {wall:>6}")
    return "\n".join(lines)


def render_markdown(grid: dict, table: dict[str, dict], results: list[tuple], scale: str, data: str,
                    roots) -> str:
    ref = table.get(grid["reference"], {})
    lines = [f"# {grid['title']}", "",
             f"Test error (%) at the best-validation epoch, mean ± sample std over seeds; scale={scale}, "
             f"data={data}. Not a paper table: neither paper has an MNIST MLP row, so there are no paper "
             f"numbers; the checks below are the DoReFa paper's orderings (papers.md §c.2).", "",
             f"Generated by `python scripts/quant_table.py {' '.join(map(str, roots))} --scale {scale} --data {data} "
             f"--md <this file>` from the runs' `summary.json` (runs made by `make quant-grid`); nothing is typed.", "",
             "| Row | Quantizer | W | A | G | Test error (%) | n | Δ vs float | Epochs | Wall s/run | Code | Runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in grid["rows"]:
        s, lab = table[r["id"]], r["labels"]
        delta, epochs, wall = _cells(s, ref, "")
        lines.append(f"| {r['id']} | {lab['quantizer']} | {lab['W']} | {lab['A']} | {lab['G']} | {_fmt(s)} | "
                     f"{s['n']} | {delta} | {epochs} | {wall} | {', '.join(s.get('code', []))} | "
                     f"{'<br>'.join(s.get('runs', []))} |")
    lines += ["", "## DoReFa orderings", ""]
    for name, ok, detail in results:
        lines.append(f"- **{'PASS' if ok else 'n/a' if ok is None else 'FAIL'}** {name}: {detail}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="*", default=["runs/quant_grid"], help="folders searched for summary.json")
    ap.add_argument("--scale", default="quick")
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--tol-124", type=float, default=1.0, help="points (1,2,4) may be above float")
    ap.add_argument("--tol-888", type=float, default=0.5, help="points 8/8/8 may differ from float")
    ap.add_argument("--csv", help="also write the table as CSV here")
    ap.add_argument("--md", help="also write the table, its checks and its runs as Markdown here")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless every check passes")
    args = ap.parse_args(argv)

    grid = load_grid()
    keys = row_keys(grid, args.scale, args.data)
    table = {rid: stats(runs) for rid, runs in collect(grid, keys, completed_summaries(args.roots)).items()}
    print(render(grid, table, args.scale, args.data))
    print("\n# DoReFa orderings (papers.md §c.2)")
    results = checks(table, grid["reference"], args.tol_124, args.tol_888)
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'n/a ' if ok is None else 'FAIL'}  {name}: {detail}")
    for k in ("linear", "log"):  # not a paper claim: more bits should not hurt
        a, b = table.get(f"qnn-{k}2"), table.get(f"qnn-{k}4")
        if a and b and a["n"] and b["n"]:
            print(f"info  QNN {k}: 2 bits {a['mean']:.2f}%, 4 bits {b['mean']:.2f}% ({b['mean'] - a['mean']:+.2f})")
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "quantizer", "W", "A", "G", "mean_test_error", "std", "n", "seeds", "scale", "data"])
            for r in grid["rows"]:
                s, lab = table[r["id"]], r["labels"]
                w.writerow([r["id"], lab["quantizer"], lab["W"], lab["A"], lab["G"], s["mean"], s["std"], s["n"],
                            " ".join(map(str, s["seeds"])), args.scale, args.data])
    if args.md:
        Path(args.md).write_text(render_markdown(grid, table, results, args.scale, args.data, args.roots))
    if args.strict and not all(ok for _, ok, _ in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

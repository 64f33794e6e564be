"""Write a sweep's files: ``robustness_<noise>.csv`` (run x level), ``robustness_<noise>_draws.csv``
(every draw), ``robustness_<noise>.md`` (definitions, provenance, tables) and ``.png`` (the plot)."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from ..runs import code_version
from .distortions import DISTORTIONS
from .report import (fmt_bits, fmt_level, level_table, markdown_table, per_projection, per_run, runs_table,
                     within_tolerance)
from .sweep import SweepOptions

DEFINITIONS = {
    "additive": "W + sigma * s_k * eps, eps ~ N(0, 1) per weight, s_k = the layer's {sigma_scale} "
                "of its weights",
    "multiplicative": "W * (1 + sigma * eps), eps ~ N(0, 1) per weight",
    "binarize": "a random fraction p of each layer's weights replaced by sign(W) * b_k, b_k = the "
                "layer's {binary_scale} of its weights (p = 1: the whole layer, deterministic)",
    "power": "sign(W) * |W / max|W||^beta, rescaled to keep the layer's {binary_scale} "
             "(beta = 1: identity, beta = 0: binarize with p = 1); deterministic",
    "clip": "clip(W, -c * max|W|, c * max|W|) per layer; deterministic",
}
WEIGHTS_TEXT = {
    "effective": "the effective weights P(w) each trained net computes with at test time (its training "
                 "projection in eval mode), then used with the projection disabled",
    "latent": "the real latent weights w, rescaled per layer by rms(P(w))/rms(w), used with the "
              "projection disabled",
    "latent_projected": "the latent weights w, then passed through the training projection again: P(D(w))",
}


def provenance(opts: SweepOptions, argv: list[str] | None) -> list[str]:
    version = code_version()
    commit = (version.get("git_commit") or "unknown")[:12]
    dirty = ", uncommitted changes" if version.get("git_dirty") else ""
    command = "bnnrepro robustness " + " ".join(shlex.quote(a) for a in (argv or []))
    return [f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `{command}`",
            f"(bnnrepro {version.get('package')}, git {commit}{dirty}; draw seed {opts.seed}, "
            f"{opts.which} checkpoints)."]


def noise_markdown(noise: str, by_run: pd.DataFrame, agg: pd.DataFrame, opts: SweepOptions,
                   argv: list[str] | None) -> str:
    distortion = DISTORTIONS[noise]
    first = by_run.iloc[0]
    datasets = ", ".join(sorted(by_run["dataset"].unique()))
    definition = DEFINITIONS[noise].format(sigma_scale=opts.distortion.sigma_scale,
                                           binary_scale=opts.distortion.binary_scale)
    lines = [f"# Robustness to {noise} weight distortion ({datasets})", "", *provenance(opts, argv), "",
             f"* **Distortion** D(W): {definition}. Level: {distortion.level_name}.",
             f"* **Weights distorted**: {WEIGHTS_TEXT[opts.weights]} (`--weights {opts.weights}`); every "
             "QuantLinear / QuantConv2d layer, BN and biases untouched; a copy, never the checkpoint.",
             "* **BatchNorm**: " + (f"running statistics re-estimated on the first {opts.bn_recalibrate} "
                                    "training images for every distorted net (`--bn-recalibrate`)."
                                    if opts.bn_recalibrate else "the running statistics of training (the "
                                    "trained net, distorted; `--bn-recalibrate N` re-estimates them)."),
             f"* **Draws**: {opts.draws} independent draws per random level; deterministic levels once.",
             f"* **Test error** (%) on the whole test set ({int(first['test_size'])} images): mean ± std "
             "over all draws of all seeds of a training projection (the std includes the seed spread).",
             f"* **Scale** of the trained runs: {', '.join(sorted(by_run['scale'].unique()))}."]
    if noise in ("additive", "multiplicative"):
        lines.append(f"* **Effective bits** per weight: 1/2 log2(1 + S/N) per layer, S = {opts.signal} of "
                     "the clean layer weights, N = the noise variance, averaged over all weights.")
    lines += ["", "## Test error (%) by level and training projection", "", level_table(agg, noise), ""]
    tol = within_tolerance(agg, noise, 1.0)
    header = ["training projection", "clean error (%)", "strongest level within +1 point",
              "tested up to"]
    if noise in ("additive", "multiplicative"):
        header.insert(3, "effective bits there")
    rows = []
    for r in tol.itertuples():
        row = [r.projection, f"{r.clean_error:.2f}", fmt_level(r.level)]
        if noise in ("additive", "multiplicative"):
            row.append(fmt_bits(r.effective_bits))
        rows.append(row + [f"{r.max_level_tested:g}"])
    lines += ["## Tolerance: the error stays within 1 point of clean", "",
              "Linear interpolation between levels; '–': even the mildest distorted level exceeds it.", "",
              markdown_table(header, rows), "", "## Runs", "", runs_table(by_run), ""]
    return "\n".join(lines)


def write_outputs(rows: list[dict], noises: list[str], out: Path, opts: SweepOptions,
                  argv: list[str] | None = None, plot: bool = True) -> list[Path]:
    from .plots import plot_noise

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    draws = pd.DataFrame(rows)
    written = []
    for noise in noises:
        sub = draws[draws["noise"] == noise]
        by_run, agg = per_run(sub), per_projection(sub)
        paths = {k: out / f"robustness_{noise}{k}" for k in (".csv", "_draws.csv", ".md", ".png")}
        by_run.to_csv(paths[".csv"], index=False)
        sub.to_csv(paths["_draws.csv"], index=False)
        paths[".md"].write_text(noise_markdown(noise, by_run, agg, opts, argv))
        written += [paths[".csv"], paths["_draws.csv"], paths[".md"]]
        if plot:
            title = (f"{', '.join(sorted(sub['dataset'].unique()))}: {noise} distortion of the "
                     f"{opts.weights} weights ({', '.join(sorted(sub['scale'].unique()))} scale)")
            bits_axis = opts.distortion.sigma_scale == "std" and opts.signal == "variance"
            written.append(plot_noise(agg, noise, paths[".png"], title, bits_axis=bits_axis))
    return written


def print_summary(rows: list[dict], noises: list[str], file=sys.stdout) -> None:
    draws = pd.DataFrame(rows)
    for noise in noises:
        agg = per_projection(draws[draws["noise"] == noise])
        print(f"\n{noise}:", file=file)
        print(level_table(agg, noise), file=file)

"""Check Merolla et al.'s claims against finished sweeps (the robustness_<noise>.csv files of one or
more output folders) and write them as ``claims.md``. Nothing here is hand-typed: every number is
computed from the CSVs, and a claim whose sweep is missing says so."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .distortions import DISTORTIONS
from .report import fmt_bits, fmt_level, markdown_table, ordered_projections, tolerance_level

TOLERANCE = 1.0  # points of test error


def load_results(dirs: list[Path], relative_to: Path | None = None) -> pd.DataFrame:
    frames = []
    for d in dirs:
        for path in sorted(Path(d).glob("robustness_*.csv")):
            if path.name.endswith("_draws.csv"):
                continue
            frame = pd.read_csv(path)
            frame["source"] = (path.relative_to(relative_to).as_posix()
                               if relative_to is not None and path.is_relative_to(relative_to) else str(path))
            frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"no robustness_<noise>.csv in {', '.join(map(str, dirs))}")
    df = pd.concat(frames, ignore_index=True)
    bn = df["bn_recalibrate"].fillna(0).astype(int) if "bn_recalibrate" in df else pd.Series(0, index=df.index)
    # the sweep's setting, as the command-line flags that chose it
    df["mode"] = "--weights " + df["weights"] + bn.map(lambda n: f" --bn-recalibrate {n}" if n else "")
    # What a distorted error is compared with. A `latent` sweep's undistorted level is the net
    # computing with its real weights, which is not the net that was trained when the training
    # projection is not the identity (a sign-trained net's latent weights alone give ~30% error):
    # there, the reference is the trained net's own test error.
    latent = df["weights"] == "latent"
    if "trained_test_error" in df:
        df["reference_error"] = df["clean_error"].where(~latent, df["trained_test_error"])
    else:
        df["reference_error"] = df["clean_error"]
    return df


def excess_by_run(df: pd.DataFrame) -> pd.DataFrame:
    """Per run: the mean over the distorted levels of (error - reference error), in points: the area
    between its curve and its clean error (`latent` sweeps: the trained net's error), per level."""
    distort = df[df.apply(lambda r: r["level"] != DISTORTIONS[r["noise"]].identity_level, axis=1)]
    out = distort.assign(excess=distort["error_mean"] - distort["reference_error"])
    return out.groupby(["mode", "noise", "projection", "run"], as_index=False)["excess"].mean()


def excess_table(df: pd.DataFrame, noise: str, mode: str) -> tuple[str, dict]:
    runs = excess_by_run(df[(df["noise"] == noise) & (df["mode"] == mode)])
    stats = {}
    for projection, g in runs.groupby("projection"):
        stats[projection] = (float(g["excess"].mean()), float(g["excess"].std(ddof=1)) if len(g) > 1 else 0.0,
                             len(g))
    rows = [[p, f"{stats[p][0]:.2f} ± {stats[p][1]:.2f}", stats[p][2]] for p in ordered_projections(stats)]
    return markdown_table(["training projection", "mean excess error (points)", "seeds"], rows), stats


def _verdict(flag: bool | None) -> str:
    return {True: "**holds**", False: "**does not hold**", None: "**not tested**"}[flag]


def _compare(stats: dict, challenger: str, baseline: str = "none") -> str:
    if challenger not in stats or baseline not in stats:
        return f"{challenger} vs {baseline}: not both swept"
    (m, s, _), (m0, s0, _) = stats[challenger], stats[baseline]
    spread = math.hypot(s, s0)
    clear = "" if abs(m - m0) > spread else " (within the seed spread)"
    word = "less" if m < m0 else "more"
    return f"{challenger} degrades {word} than {baseline}: {m:.2f} vs {m0:.2f} points{clear}"


def _modes(df: pd.DataFrame, noise: str) -> list[str]:
    return sorted(df.loc[df["noise"] == noise, "mode"].unique())


def claims_markdown(df: pd.DataFrame) -> str:
    lines = ["# Merolla et al. (2016): do the claims hold here?", "",
             f"Computed from: {', '.join(sorted(df['source'].unique()))}.",
             f"Datasets: {', '.join(sorted(df['dataset'].unique()))}; scale: "
             f"{', '.join(sorted(df['scale'].unique()))}; seeds per projection: see the tables.",
             "'Mean excess error' is a run's mean over the distorted levels of (error - its clean error); "
             "mean ± std over seeds.", ""]
    # 1 and 2: projected / clipped nets degrade less than unprojected ones under noise
    lines += ["## 1. Nets trained with a projection degrade less under noise than unprojected nets", ""]
    any_noise = False
    clip_lines = []
    for noise in ("additive", "multiplicative"):
        for mode in _modes(df, noise):
            any_noise = True
            table, stats = excess_table(df, noise, mode)
            others = [p for p in ordered_projections(stats) if p != "none"]
            better = [p for p in others if "none" in stats and stats[p][0] < stats["none"][0]]
            flag = None if "none" not in stats or not others else len(better) == len(others)
            lines += [f"### {noise} noise (`{mode}`): {_verdict(flag)} for "
                      f"{len(better)} of {len(others)} projections", "", table, ""]
            lines += [f"* {_compare(stats, p)}" for p in others] + [""]
            if "clip" in stats and "none" in stats:
                clip_lines.append(f"* {noise} (`{mode}`): {_verdict(stats['clip'][0] < stats['none'][0])}: "
                                  f"{_compare(stats, 'clip')}")
    if not any_noise:
        lines += ["Not tested: no additive or multiplicative sweep found.", ""]
    lines += ["## 2. Clipping alone confers robustness (clip vs none)", ""]
    lines += clip_lines or ["Not tested: needs runs trained with `clip` and with `none`."]
    for noise in ("binarize", "power", "clip"):
        for mode in _modes(df, noise):
            table, stats = excess_table(df, noise, mode)
            if "clip" in stats and "none" in stats:
                lines.append(f"* {noise} distortion (`{mode}`): {_compare(stats, 'clip')}")
    lines.append("")
    # 3: binarizing sign / stochastic-sign trained nets costs little
    lines += ["## 3. Binarizing a net trained with sign / stochastic projections costs little", "",
              "Binarize at p = 1 (every weight sign(W) times the layer scale). 'Cost' is the binarized "
              "error minus the net's own clean error; 'vs float' minus the clean error of the nets "
              "trained with no projection (`none`), what a binary net costs against a float one.", ""]
    found = False
    for mode in _modes(df, "binarize"):
        sub = df[(df["noise"] == "binarize") & (df["mode"] == mode) & (df["level"] == 1.0)]
        if sub.empty:
            continue
        found = True
        sub = sub.assign(cost=sub["error_mean"] - sub["reference_error"])
        float_clean = (float(sub.loc[sub["projection"] == "none", "reference_error"].mean())
                       if (sub["projection"] == "none").any() else math.nan)
        rows, costs = [], {}
        for p in ordered_projections(sub["projection"]):
            g = sub[sub["projection"] == p]
            costs[p] = float(g["cost"].mean())
            spread = float(g["cost"].std(ddof=1)) if len(g) > 1 else 0.0
            vs_float = "–" if math.isnan(float_clean) else f"{g['error_mean'].mean() - float_clean:+.2f}"
            rows.append([p, f"{g['reference_error'].mean():.2f}", f"{g['error_mean'].mean():.2f}",
                         f"{costs[p]:+.2f} ± {spread:.2f}", vs_float, len(g)])
        binary = [p for p in ("sign", "stochastic_binary", "stochastic_sign") if p in costs]
        flag = all(costs[p] <= TOLERANCE for p in binary) if binary else None
        note = (" With `effective` weights a sign-trained net already computes with sign(w) (its cost is "
                "0 by construction); the `latent` sweep starts from its real weights instead."
                if mode == "--weights effective" else
                " Clean error here: the trained net's own test error (its latent weights alone may do worse)."
                if mode.startswith("--weights latent") else "")
        lines += [f"### `{mode}`: {_verdict(flag)} (cost <= {TOLERANCE:g} point for "
                  f"{', '.join(binary) or 'no sign-trained runs'}).{note}", "",
                  markdown_table(["training projection", "clean error (%)", "binarized (p = 1) (%)",
                                  "cost (points)", "vs float (points)", "seeds"], rows), ""]
    if not found:
        lines += ["Not tested: no binarize sweep with level 1.", ""]
    # 4: effective bits at which the error stays within 1 point of clean
    lines += [f"## 4. Effective bits at which the error stays within {TOLERANCE:g} point of clean "
              "(additive noise)", ""]
    found = False
    for mode in _modes(df, "additive"):
        sub = df[(df["noise"] == "additive") & (df["mode"] == mode)]
        rows = []
        for p in ordered_projections(sub["projection"]):
            g = sub[sub["projection"] == p].groupby("level", as_index=False).agg(
                error_mean=("error_mean", "mean"), clean=("reference_error", "mean"), bits=("effective_bits", "mean"))
            level = tolerance_level(g["level"].to_numpy(float), g["error_mean"].to_numpy(float),
                                    float(g["clean"].iloc[0]), TOLERANCE)
            finite = g[np.isfinite(g["bits"])]
            bits = float(np.interp(level, finite["level"], finite["bits"])) if (
                not math.isnan(level) and level > 0 and len(finite)) else math.nan
            rows.append([p, f"{g['clean'].iloc[0]:.2f}", fmt_level(level), fmt_bits(bits),
                         f"{g['level'].max():g}"])
        found = True
        lines += [f"### `{mode}`", "",
                  markdown_table(["training projection", "clean error (%)", "sigma within +1 point",
                                  "effective bits there", "sigma tested up to"], rows), "",
                  "Merolla et al. report 11% CIFAR-10 error at 0.68 effective bits per weight (sigma = 0.80 "
                  "with this definition); fewer bits at the tolerance = more robust.", ""]
    if not found:
        lines += ["Not tested: no additive sweep found.", ""]
    # 5: robustness to the class of non-linear projections binarization belongs to
    lines += ["## 5. Nets trained with a projection are robust to test-time power projections "
              "sign(w)|w|^beta (beta = 0: binarization)", ""]
    found = False
    for mode in _modes(df, "power"):
        found = True
        table, stats = excess_table(df, "power", mode)
        sub = df[(df["noise"] == "power") & (df["mode"] == mode)]
        others = [p for p in ordered_projections(stats) if p != "none"]
        better = [p for p in others if "none" in stats and stats[p][0] < stats["none"][0]]
        flag = None if "none" not in stats or not others else len(better) == len(others)
        rows = []
        for p in ordered_projections(sub["projection"]):
            g = sub[sub["projection"] == p].groupby("level", as_index=False).agg(
                error_mean=("error_mean", "mean"), clean=("reference_error", "mean"))
            beta = tolerance_level(g["level"].to_numpy(float), g["error_mean"].to_numpy(float),
                                   float(g["clean"].iloc[0]), TOLERANCE, stronger_is_smaller=True)
            rows.append([p, f"{stats[p][0]:.2f} ± {stats[p][1]:.2f}", fmt_level(beta), stats[p][2]])
        lines += [f"### `{mode}`: {_verdict(flag)} for {len(better)} of {len(others)} projections", "",
                  markdown_table(["training projection", "mean excess error (points)",
                                  f"smallest beta within +{TOLERANCE:g} point", "seeds"], rows), ""]
    if not found:
        lines += ["Not tested: no power sweep found.", ""]
    return "\n".join(lines)


def write_claims(dirs: list[Path], out: Path) -> Path:
    out = Path(out)
    df = load_results([Path(d) for d in dirs], relative_to=out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "claims.md"
    path.write_text(claims_markdown(df))
    return path

"""Sweep results as tables: per run x level (CSV), per training projection x level (Markdown), the
level up to which each projection stays within a tolerance of its clean error."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .distortions import DISTORTIONS

PROJECTION_ORDER = ("none", "clip", "sign", "stochastic_binary", "stochastic_sign", "power",
                    "stochastic_projection")
RUN_KEYS = ["run", "run_name", "projection", "experiment", "train_seed", "scale", "dataset", "weights",
            "noise", "level"]
RUN_COLUMNS = RUN_KEYS + ["error_mean", "error_std", "draws", "effective_bits", "clean_error",
                          "trained_test_error", "test_size", "sigma_scale", "binary_scale", "checkpoint_which",
                          "bn_recalibrate"]


def projection_sort_key(name: str):
    base = name.split("(")[0]
    rank = PROJECTION_ORDER.index(base) if base in PROJECTION_ORDER else len(PROJECTION_ORDER)
    return (rank, name)


def ordered_projections(names) -> list[str]:
    return sorted(set(names), key=projection_sort_key)


def _std(x: pd.Series) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else 0.0


def per_run(draws: pd.DataFrame) -> pd.DataFrame:
    """One row per run x noise x level: error mean and std over the draws."""
    extra = ["code"] if "code" in draws else []  # the code version that made the draws (study records)
    first = RUN_COLUMNS[RUN_COLUMNS.index("effective_bits"):] + extra
    grouped = draws.groupby(RUN_KEYS, sort=False, dropna=False)
    out = grouped.agg(error_mean=("error", "mean"), error_std=("error", _std), draws=("error", "size"),
                      **{c: (c, "first") for c in first}).reset_index()
    return out[RUN_COLUMNS + extra]


def per_projection(draws: pd.DataFrame) -> pd.DataFrame:
    """One row per training projection x level, seeds pooled: mean and std over all draws of all
    runs of that projection (the std includes the spread between seeds)."""
    grouped = draws.groupby(["projection", "noise", "level"], sort=False)
    out = grouped.agg(error_mean=("error", "mean"), error_std=("error", _std), draws=("error", "size"),
                      runs=("run", "nunique"), effective_bits=("effective_bits", "mean"),
                      clean_error=("clean_error", "mean")).reset_index()
    out["_p"] = out["projection"].map(projection_sort_key)
    return out.sort_values(["_p", "level"]).drop(columns="_p").reset_index(drop=True)


def tolerance_level(levels: np.ndarray, errors: np.ndarray, clean: float, tolerance: float,
                    stronger_is_smaller: bool = False) -> float:
    """The strongest level (linear interpolation between measured levels) before the error first
    exceeds ``clean + tolerance``; nan when even the mildest level exceeds it."""
    order = np.argsort(-levels if stronger_is_smaller else levels)
    lv, er = levels[order], errors[order]
    limit = clean + tolerance
    if er[0] > limit:
        return math.nan
    for i in range(1, len(lv)):
        if er[i] > limit:
            frac = (limit - er[i - 1]) / (er[i] - er[i - 1])
            return float(lv[i - 1] + frac * (lv[i] - lv[i - 1]))
    return float(lv[-1])


def within_tolerance(agg: pd.DataFrame, noise: str, tolerance: float = 1.0) -> pd.DataFrame:
    """Per projection: clean error, the strongest level keeping the mean error within ``tolerance``
    points of it, and (for noises) the effective bits at that level."""
    distortion = DISTORTIONS[noise]
    rows = []
    for projection, g in agg[agg["noise"] == noise].groupby("projection", sort=False):
        level = tolerance_level(g["level"].to_numpy(float), g["error_mean"].to_numpy(float),
                                float(g["clean_error"].iloc[0]), tolerance, distortion.stronger_is_smaller)
        bits = math.nan
        if noise in ("additive", "multiplicative") and not math.isnan(level):
            # interpolate the bits on the same curve (exact for additive noise with sigma_scale=std)
            known = g.dropna(subset=["effective_bits"])
            finite = known[np.isfinite(known["effective_bits"])]
            if len(finite) and level > 0:
                bits = float(np.interp(level, finite["level"], finite["effective_bits"]))
            elif level == 0:
                bits = math.inf
        rows.append({"projection": projection, "clean_error": float(g["clean_error"].iloc[0]),
                     "level": level, "effective_bits": bits,
                     "max_level_tested": float(g["level"].min() if distortion.stronger_is_smaller
                                               else g["level"].max())})
    return pd.DataFrame(rows)


def fmt_error(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std else f"{mean:.2f}"


def fmt_bits(bits) -> str:
    if bits is None or (isinstance(bits, float) and math.isnan(bits)):
        return ""
    return "∞" if math.isinf(bits) else f"{bits:.2f}"


def fmt_level(level: float) -> str:
    return "–" if level is None or math.isnan(level) else f"{level:.3g}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def level_table(agg: pd.DataFrame, noise: str) -> str:
    """Rows: levels (mildest first); columns: effective bits, then one per projection."""
    sub = agg[agg["noise"] == noise]
    projections = ordered_projections(sub["projection"])
    distortion = DISTORTIONS[noise]
    levels = sorted(sub["level"].unique(), reverse=distortion.stronger_is_smaller)
    with_bits = noise in ("additive", "multiplicative")
    header = ["level"] + (["eff. bits"] if with_bits else []) + projections
    rows = []
    for level in levels:
        at = sub[sub["level"] == level].set_index("projection")
        row = [f"{level:g}"]
        if with_bits:
            row.append(fmt_bits(float(at["effective_bits"].mean())))
        for p in projections:
            row.append(fmt_error(at.loc[p, "error_mean"], at.loc[p, "error_std"]) if p in at.index else "–")
        rows.append(row)
    return markdown_table(header, rows)


def runs_table(by_run: pd.DataFrame) -> str:
    runs = by_run.drop_duplicates("run")
    runs = runs.assign(_p=runs["projection"].map(projection_sort_key)).sort_values(["_p", "train_seed"])
    rows = [[r.run_name, r.projection, r.train_seed, r.scale,
             "–" if pd.isna(r.trained_test_error) else f"{r.trained_test_error:.2f}", f"{r.clean_error:.2f}"]
            for r in runs.itertuples()]
    return markdown_table(["run", "training projection", "seed", "scale", "trained test error (%)",
                           "clean error here (%)"], rows)

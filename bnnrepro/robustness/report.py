"""Sweep results as tables: per run x level (CSV), per training projection x level (Markdown), the
level up to which each projection stays within a tolerance of its clean error."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .distortions import DISTORTIONS

PROJECTION_ORDER = ("none", "none+scaled", "clip", "clip+plain", "sign", "stochastic_binary", "stochastic_sign", "power",
                    "stochastic_projection")
RUN_KEYS = ["run", "run_name", "projection", "experiment", "train_seed", "scale", "dataset", "weights",
            "noise", "level"]
RUN_COLUMNS = RUN_KEYS + ["error_mean", "error_std", "draws", "effective_bits", "noop", "clean_error",
                          "trained_error", "trained_test_error", "test_size", "sigma_scale", "binary_scale",
                          "checkpoint_which", "bn_recalibrate"]


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
    first = RUN_COLUMNS[RUN_COLUMNS.index("clean_error"):] + extra
    grouped = draws.groupby(RUN_KEYS, sort=False, dropna=False)
    out = grouped.agg(error_mean=("error", "mean"), error_std=("error", _std), draws=("error", "size"),
                      effective_bits=("effective_bits", "mean"), noop=("noop", "all"),
                      **{c: (c, "first") for c in first}).reset_index()
    return out[RUN_COLUMNS + extra]


def per_projection(draws: pd.DataFrame) -> pd.DataFrame:
    """One row per training projection x level, seeds pooled: mean and std over all draws of all
    runs of that projection (the std includes the spread between seeds)."""
    grouped = draws.groupby(["projection", "noise", "level"], sort=False)
    out = grouped.agg(error_mean=("error", "mean"), error_std=("error", _std), draws=("error", "size"),
                      runs=("run", "nunique"), effective_bits=("effective_bits", "mean"),
                      clean_error=("clean_error", "mean"), trained_error=("trained_error", "mean"),
                      noop=("noop", "all")).reset_index()
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
    """Per projection: the trained net's error, the strongest level keeping the mean error within
    ``tolerance`` points of it, and the effective bits at that level."""
    distortion = DISTORTIONS[noise]
    rows = []
    for projection, g in agg[agg["noise"] == noise].groupby("projection", sort=False):
        g = g.sort_values("level")
        level = tolerance_level(g["level"].to_numpy(float), g["error_mean"].to_numpy(float),
                                float(g["trained_error"].iloc[0]), tolerance, distortion.stronger_is_smaller)
        bits = math.nan
        if not math.isnan(level):  # interpolate the bits on the same curve
            known = g.dropna(subset=["effective_bits"])
            finite = known[np.isfinite(known["effective_bits"])]
            if len(finite) and level != distortion.identity_level:
                bits = float(np.interp(level, finite["level"], finite["effective_bits"]))
            elif level == distortion.identity_level:
                bits = math.inf
        rows.append({"projection": projection, "clean_error": float(g["trained_error"].iloc[0]),
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
    """Rows: levels (mildest first); columns: effective bits (additive noise), then one per projection:
    error mean ± std over all draws, '(no-op)' where the distortion is the identity for those nets."""
    sub = agg[agg["noise"] == noise]
    projections = ordered_projections(sub["projection"])
    distortion = DISTORTIONS[noise]
    levels = sorted(sub["level"].unique(), reverse=distortion.stronger_is_smaller)
    with_bits = noise == "additive"  # the same in every net (sigma_scale=std); per net elsewhere
    header = ["level"] + (["eff. bits"] if with_bits else []) + projections
    rows = []
    for level in levels:
        at = sub[sub["level"] == level].set_index("projection")
        row = [f"{level:g}"]
        if with_bits:
            row.append(fmt_bits(float(at["effective_bits"].mean())))
        for p in projections:
            if p not in at.index:
                row.append("–")
                continue
            cell = fmt_error(at.loc[p, "error_mean"], at.loc[p, "error_std"])
            no_op = bool(at.loc[p, "noop"]) and level != distortion.identity_level if "noop" in at else False
            row.append(cell + " (no-op)" if no_op else cell)
        rows.append(row)
    return markdown_table(header, rows)


def excess_table(draws: pd.DataFrame, noise: str) -> str:
    """Rows: levels (mildest first); columns: projections; cells: mean excess error over the
    trained net (points) with its 95 % interval, or 'no-op' where the distorted net computes with the
    trained net's weights by construction ('trained weights' at the identity level)."""
    from . import statistics as st

    sub = draws[draws["noise"] == noise]
    sub = sub.assign(excess=sub["error"] - sub["trained_error"], noop=sub["noop"].astype(bool))
    projections = ordered_projections(sub["projection"])
    distortion = DISTORTIONS[noise]
    levels = sorted(sub["level"].unique(), reverse=distortion.stronger_is_smaller)
    cells = {}
    for p in projections:
        g = sub[(sub["projection"] == p) & ~sub["noop"]]
        runs = st.runs_of(g)
        key = (",".join(sorted(sub["dataset"].unique())), noise, p, str(sub["weights"].iloc[0]),
               int(sub["bn_recalibrate"].iloc[0]))
        cells[p] = st.per_level_intervals(runs, *key) if runs else {}
        noops = set(sub.loc[(sub["projection"] == p), :].groupby("level")["noop"].all().loc[lambda x: x].index)
        cells[p].update({float(level): None for level in noops})
    rows = []
    for level in levels:
        row = [f"{level:g}"]
        for p in projections:
            ci = cells[p].get(float(level), "missing")
            if ci is None:
                row.append("trained weights" if level == distortion.identity_level else "no-op")
            else:
                row.append("–" if ci == "missing" else ci.text())
        rows.append(row)
    return markdown_table(["level"] + projections, rows)


def doubling(draws: pd.DataFrame, projection: str):
    """``(runs, mean trained error, Interval)``: the level at which one projection's mean error
    reaches twice its trained nets' error, every draw counted and the undistorted level included
    (a net already twice as bad there doubles at p = 0), percentile interval (statistics.py)."""
    from . import statistics as st

    g = draws[draws["projection"] == projection]
    g = g.assign(excess=g["error"] - g["trained_error"])
    runs = st.runs_of(g)
    trained = float(g.groupby("run")["trained_error"].first().mean())
    key = ("doubling", projection, ",".join(sorted(g["dataset"].unique())), ",".join(sorted(g["noise"].unique())),
           ",".join(sorted(g["weights"].unique())), int(g["bn_recalibrate"].max()))
    return len(runs), trained, st.crossing_interval(runs, trained, *key, log=True)


def fmt_crossing(ci) -> str:
    if math.isnan(ci.mean):
        return "not reached"
    high = "> tested" if math.isinf(ci.high) else f"{ci.high:.3g}"
    return f"{ci.mean:.3g} [{ci.low:.3g}, {high}]"


DOUBLING_HEADER = ["training projection", "seeds", "trained error (%)",
                   "p where the error doubles [percentile interval]"]


def doubling_table(draws: pd.DataFrame) -> str:
    """Per projection: the trained error and the level at which the mean error doubles."""
    rows = []
    for p in ordered_projections(draws["projection"]):
        n, trained, ci = doubling(draws, p)
        rows.append([p, n, f"{trained:.2f}", fmt_crossing(ci)])
    return markdown_table(DOUBLING_HEADER, rows)


def runs_table(by_run: pd.DataFrame) -> str:
    runs = by_run.drop_duplicates("run")
    runs = runs.assign(_p=runs["projection"].map(projection_sort_key)).sort_values(["_p", "train_seed"])
    rows = [[r.run_name, r.projection, r.train_seed, r.scale,
             "–" if pd.isna(r.trained_test_error) else f"{r.trained_test_error:.2f}", f"{r.trained_error:.2f}",
             f"{r.clean_error:.2f}"]
            for r in runs.itertuples()]
    return markdown_table(["run", "training projection", "seed", "scale", "test error, run summary (%)",
                           "trained net here (%)", "undistorted copy here (%)"], rows)

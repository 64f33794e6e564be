"""Check Merolla et al.'s claims against finished sweeps and write them as ``claims.md``, one per
dataset. Nothing here is hand-typed: every number is computed from the draws
(``robustness_<noise>_draws.csv``), and a claim whose sweep or nets are missing says so.

* Every comparison rests on a named pair of training treatments that differ in one thing
  (:data:`PAIRS`), e.g. ``sign`` vs ``none+scaled``: the same U(-1, 1) init and Glorot LR scale,
  only the projection differs.
* What a distortion costs a net is its **excess error**, the distorted error minus the trained net's
  own test error (``trained_error``); a curve's excess is its mean over the distorted levels.
* A draw that is a no-op by construction (the distorted net computes with exactly the trained
  net's weights, e.g. binarizing a sign-trained net's effective weights) is never counted; a curve
  made only of such draws is reported as "no-op by construction".
* Intervals: two-level bootstrap (seeds, then draws), 95 %, :mod:`.statistics`. A claim **holds**
  when the interval of its difference excludes zero in the claimed direction, is **contradicted**
  when it excludes zero the other way, and is **not shown** otherwise.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import statistics as st
from .distortions import DISTORTIONS
from .effective_bits import DEFINITION as BITS_DEFINITION
from .report import (DOUBLING_HEADER, doubling, fmt_bits, fmt_crossing, markdown_table, ordered_projections,
                     tolerance_level)

TOLERANCE = 1.0  # points of test error
MIN_SEEDS = 3    # a verdict needs at least this many nets on each side (a bootstrap of 1-2 seeds is no interval)
FLOAT = "none"
FLOAT_SCALED = "none+scaled"
PROJECTIONS = ("sign", "stochastic_binary", "power", "stochastic_projection")
SAME_SETTINGS = "same U(-1, 1) init and Glorot LR scale"
# (challenger, baseline, what differs): the challenger is claimed to degrade less
PAIRS = {
    "projection": [(p, FLOAT_SCALED, f"{SAME_SETTINGS}; only the projection (with its latent clipping) differs")
                   for p in PROJECTIONS],
    "clipping": [("clip", FLOAT_SCALED, f"{SAME_SETTINGS}; only the clipping differs"),
                 ("clip+plain", FLOAT, "same Glorot init, no LR scale; only the clipping differs")],
    "settings": [(FLOAT_SCALED, FLOAT, "both unprojected; only init and LR scale differ")],
}


def mode_of(weights: str, bn: int) -> str:
    return f"--weights {weights}" + (f" --bn-recalibrate {bn}" if bn else "")


def load_draws(dirs: list[Path], relative_to: Path | None = None) -> pd.DataFrame:
    frames = []
    for d in dirs:
        for path in sorted(Path(d).glob("robustness_*_draws.csv")):
            frame = pd.read_csv(path)
            frame["source"] = (path.relative_to(relative_to).as_posix()
                               if relative_to is not None and path.is_relative_to(relative_to) else str(path))
            frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"no robustness_<noise>_draws.csv in {', '.join(map(str, dirs))}")
    return pd.concat(frames, ignore_index=True)


def prepare(draws: pd.DataFrame) -> pd.DataFrame:
    df = draws.copy()
    bn = df["bn_recalibrate"].fillna(0).astype(int) if "bn_recalibrate" in df else pd.Series(0, index=df.index)
    df["mode"] = [mode_of(w, b) for w, b in zip(df["weights"], bn)]
    reference = df["trained_error"] if "trained_error" in df else df["clean_error"]
    df["excess"] = df["error"] - reference
    if "noop" not in df:
        raise ValueError("these sweeps have no `noop` column (made before no-ops were flagged): sweep them again")
    df["noop"] = df["noop"].fillna(False).astype(bool)
    return df


class Curves:
    """The draws of one dataset, grouped for the statistics: per (mode, noise, projection), per run,
    level -> draw excesses, no-ops dropped (``identity``: keep the undistorted level too, whatever it is)."""

    def __init__(self, df: pd.DataFrame):
        self.df = df
        self._cache: dict = {}

    def runs(self, mode: str, noise: str, projection: str, identity: bool = False,
             levels: tuple[float, ...] | None = None) -> st.Runs:
        key = (mode, noise, projection, identity, levels)
        if key not in self._cache:
            d = DISTORTIONS[noise]
            at_identity = self.df["level"] == d.identity_level
            keep = (~self.df["noop"] | at_identity) if identity else (~self.df["noop"] & ~at_identity)
            sub = self.df[(self.df["mode"] == mode) & (self.df["noise"] == noise)
                          & (self.df["projection"] == projection) & keep]
            if levels is not None:
                sub = sub[sub["level"].isin(levels)]
            self._cache[key] = st.runs_of(sub)
        return self._cache[key]

    def noop_only(self, mode: str, noise: str, projection: str, levels: tuple[float, ...] | None = None) -> bool:
        d = DISTORTIONS[noise]
        sub = self.df[(self.df["mode"] == mode) & (self.df["noise"] == noise)
                      & (self.df["projection"] == projection) & (self.df["level"] != d.identity_level)]
        if levels is not None:
            sub = sub[sub["level"].isin(levels)]
        return len(sub) > 0 and bool(sub["noop"].all())

    def trained(self, mode: str, noise: str, projection: str) -> float:
        """The mean over runs of the trained nets' own test error."""
        sub = self.df[(self.df["mode"] == mode) & (self.df["noise"] == noise) & (self.df["projection"] == projection)]
        return float(sub.groupby("run")["trained_error"].first().mean()) if len(sub) else math.nan

    def seeds(self, mode: str, noise: str, projection: str) -> int:
        sub = self.df[(self.df["mode"] == mode) & (self.df["noise"] == noise) & (self.df["projection"] == projection)]
        return int(sub["run"].nunique())

    def modes(self, noise: str) -> list[str]:
        return sorted(self.df.loc[self.df["noise"] == noise, "mode"].unique(), key=_mode_order)

    def projections(self) -> list[str]:
        return ordered_projections(self.df["projection"])


def _mode_order(mode: str):
    return ("effective" in mode, "bn-recalibrate" in mode, mode)


def verdict(diff: st.Interval) -> str:
    """The challenger degrades less when the difference (challenger - baseline) is below zero."""
    if math.isnan(diff.mean) or math.isnan(diff.low):
        return "not tested"
    if diff.high < 0:
        return "**holds**"
    if diff.low > 0:
        return "**contradicted**"
    return "not shown"


def pair_rows(curves: Curves, mode: str, noise: str, pairs, dataset: str, levels=None) -> list[list]:
    rows = []
    for challenger, baseline, differs in pairs:
        a, b = st.shared(curves.runs(mode, noise, challenger, levels=levels),
                         curves.runs(mode, noise, baseline, levels=levels))
        label = f"{challenger} vs {baseline}"
        if curves.noop_only(mode, noise, challenger, levels) or curves.noop_only(mode, noise, baseline, levels):
            rows.append([label, differs, "–", "–", "–", "–", "no-op by construction (not counted)"])
            continue
        if not a or not b or not st.common_levels(a):
            rows.append([label, differs, f"{len(a)}, {len(b)}", "–", "–", "–", "not tested (nets missing)"])
            continue
        trained = f"{curves.trained(mode, noise, challenger):.2f} vs {curves.trained(mode, noise, baseline):.2f}"
        diff = st.curve_difference(a, b, dataset, mode, noise, challenger, baseline, levels)
        means = f"{st.level_means(a, st.common_levels(a)).mean():.2f} vs {st.level_means(b, st.common_levels(b)).mean():.2f}"
        enough = min(len(a), len(b)) >= MIN_SEEDS
        rows.append([label, differs, f"{len(a)}, {len(b)}", trained, means, diff.text(),
                     verdict(diff) if enough else f"not shown (n < {MIN_SEEDS})"])
    return rows


PAIR_HEADER = ["comparison (challenger vs baseline)", "what differs", "n (seeds)", "trained error (%)",
               "mean excess error (points)", "difference, 95% CI", "verdict"]


def tally(rows: list[list]) -> str:
    verdicts = [r[-1] for r in rows]
    counted = [v for v in verdicts if v in ("**holds**", "**contradicted**") or v.startswith("not shown")]
    held = sum(v == "**holds**" for v in counted)
    against = sum(v == "**contradicted**" for v in counted)
    if not counted:
        return "not tested"
    return f"holds for {held} of {len(counted)} comparisons" + (f", contradicted by {against}" if against else "")


def _definitions(df: pd.DataFrame) -> list[str]:
    return [
        f"Computed from: {', '.join(sorted(df['source'].unique()))}.",
        f"Dataset: {', '.join(sorted(df['dataset'].unique()))}; scale: {', '.join(sorted(df['scale'].unique()))}; "
        f"{int(df['run'].nunique())} nets.",
        "",
        "* **Excess error** of a distorted net: its test error minus the trained net's own test error "
        "(points). A curve's mean excess: the mean over the distortion's levels, the identity level "
        "excluded.",
        "* **Intervals**: 95 %, mean ± t(0.975, n - 1) × the two-level bootstrap standard error (seeds "
        f"resampled, then the draws of each random level; {st.N_BOOT} replicates), as wide as a t "
        "interval over the seeds plus the draws' noise (statistics.py says why not percentiles).",
        "* **Verdict**: *holds* when the interval of (challenger - baseline) is below zero, "
        f"*contradicted* when above, *not shown* when it contains zero or either side has fewer than "
        f"{MIN_SEEDS} nets.",
        "* **No-op by construction**: a draw whose distorted net computes with exactly the trained "
        "net's weights (binarizing a sign-trained net's effective weights, say); never counted.",
        "* **Treatments**: `none` (Glorot init, no LR scale), `none+scaled` (U(-1, 1) init and BNN's "
        "Glorot per-layer LR scale), `clip` (clipping with the latter), `clip+plain` (clipping with "
        "the former); sign, stochastic_binary, power, stochastic_projection: projections with "
        "clipping, U(-1, 1) init and the Glorot LR scale.",
        "* **Weights**: `--weights hidden` distorts the real-valued hidden weights (the paper's "
        "setting); `--weights effective` (an option) the weights P(w) each net computes with; "
        "`--bn-recalibrate N`: BN statistics re-estimated on N training images for every distorted net.",
        "",
    ]


def _pairs_section(curves, noises, kinds, dataset) -> list[str]:
    lines = []
    for noise in noises:
        for mode in curves.modes(noise):
            rows = []
            for kind in kinds:
                rows += pair_rows(curves, mode, noise, PAIRS[kind], dataset)
            lines += [f"### {noise} (`{mode}`): {tally(rows)}", "", markdown_table(PAIR_HEADER, rows), ""]
    return lines or ["Not tested: no such sweep.", ""]


def _binarize_section(curves: Curves, dataset: str) -> list[str]:
    lines = ["Binarize at p = 1 (every weight sign(W) times the layer's rms). Cost: the binarized "
             f"error minus the trained net's own error. Holds when the cost's 95 % interval lies below "
             f"{TOLERANCE:g} point, contradicted when above it.", ""]
    found = False
    for mode in curves.modes("binarize"):
        rows = []
        for p in curves.projections():
            runs = curves.runs(mode, "binarize", p, levels=(1.0,))
            if curves.noop_only(mode, "binarize", p, (1.0,)):
                rows.append([p, curves.seeds(mode, "binarize", p), "– (the trained net's own weights)",
                             "no-op by construction (not counted)"])
                continue
            if not runs:
                continue
            cost = st.curve_interval(runs, dataset, mode, "binarize-cost", p)
            v = (f"not shown (n < {MIN_SEEDS})" if cost.n < MIN_SEEDS else "**holds**" if cost.high <= TOLERANCE
                 else "**contradicted**" if cost.low > TOLERANCE else "not shown")
            rows.append([p, cost.n, cost.text(), v])
        if rows:
            found = True
            lines += [f"### `{mode}`", "", markdown_table(["training treatment", "n (seeds)",
                                                           "cost (points), 95% CI", f"cost <= {TOLERANCE:g}"], rows), ""]
    return lines if found else ["Not tested: no binarize sweep at p = 1.", ""]


def _bits_section(curves: Curves, dataset: str) -> list[str]:
    lines = [f"Definition: {BITS_DEFINITION.format(signal='variance')}. The strongest level (and its "
             f"effective bits) at which the mean error stays within {TOLERANCE:g} point of the trained "
             "net's (linear interpolation between the distorted levels, the undistorted one and no-ops "
             "left out); fewer bits there = more robust. '–': even the mildest distorted level exceeds it "
             "(for a hidden-weight sweep of a projected net this can be the real-valued net itself: see "
             "its excess at the undistorted level in `robustness_<noise>.md`); '≥': no tested level does.", ""]
    df = curves.df
    found = False
    for noise in ("additive", "multiplicative", "binarize", "power", "clip", "bitflip"):
        d = DISTORTIONS[noise]
        for mode in curves.modes(noise):
            rows = []
            for p in curves.projections():
                sub = df[(df["mode"] == mode) & (df["noise"] == noise) & (df["projection"] == p) & ~df["noop"]
                         & (df["level"] != d.identity_level)]
                if sub.empty:
                    continue
                g = sub.groupby("level").agg(excess=("excess", "mean"), bits=("effective_bits", "mean"))
                levels, excess = g.index.to_numpy(float), g["excess"].to_numpy(float)
                level = tolerance_level(levels, excess, 0.0, TOLERANCE, d.stronger_is_smaller)
                strongest = levels.min() if d.stronger_is_smaller else levels.max()
                finite = g[np.isfinite(g["bits"])]
                bits = float(np.interp(level, finite.index.to_numpy(float), finite["bits"].to_numpy(float))) \
                    if len(finite) and not math.isnan(level) else math.nan
                if math.isnan(level):
                    rows.append([p, "–", ""])
                    continue
                never = bool((excess <= TOLERANCE).all())
                rows.append([p, (f"≥ {strongest:g}" if never else f"{level:.3g}"), fmt_bits(bits)])
            if rows:
                found = True
                lines += [f"### {noise} (`{mode}`): level = {d.level_name}", "",
                          markdown_table(["training treatment", f"strongest level within +{TOLERANCE:g} point",
                                          "effective bits there"], rows), ""]
    return lines if found else ["Not tested.", ""]


def _bitflip_section(curves: Curves, dataset: str) -> list[str]:
    lines = ["The flip probability p at which the mean error doubles (reaches twice the trained error), "
             "interpolated in log p, every draw counted and the undistorted level included, with a "
             "percentile bootstrap interval (narrower than 95 % with 3 seeds; '> tested': beyond 0.3); "
             "then each pair's mean excess over the flipped levels.", ""]
    found = False
    df = curves.df
    for mode in curves.modes("bitflip"):
        sub = df[(df["mode"] == mode) & (df["noise"] == "bitflip")]
        rows = []
        for p in curves.projections():
            if not (sub["projection"] == p).any():
                continue
            n, trained, ci = doubling(sub, p)
            rows.append([p, n, f"{trained:.2f}", fmt_crossing(ci)])
        if rows:
            found = True
            pairs = []
            for kind in ("projection", "clipping", "settings"):
                pairs += pair_rows(curves, mode, "bitflip", PAIRS[kind], dataset)
            lines += [f"### `{mode}`", "", markdown_table(DOUBLING_HEADER, rows), "",
                      f"Pairs: {tally(pairs)}", "", markdown_table(PAIR_HEADER, pairs), ""]
    return lines if found else ["Not tested: no bitflip sweep.", ""]


def claims_markdown(draws: pd.DataFrame) -> str:
    """The claims checked, one document per dataset (seeds of different datasets are never pooled)."""
    df = prepare(draws)
    return "\n\n".join(_claims_one(df[df["dataset"] == d]) for d in sorted(df["dataset"].unique()))


def _claims_one(df: pd.DataFrame) -> str:
    dataset = str(df["dataset"].iloc[0])
    curves = Curves(df)
    lines = [f"# Merolla et al. (2016): do the claims hold here? ({dataset})", "", *_definitions(df)]
    lines += ["## 1. Nets trained with a projection degrade less under noise than unprojected nets", ""]
    lines += _pairs_section(curves, ("additive", "multiplicative"), ("projection",), dataset)
    lines += ["## 2. Clipping alone confers robustness", "",
              "Two pairs, each differing in the clipping only; the third row measures what init and LR "
              "scale alone do (the confound of a `clip` vs `none` comparison).", ""]
    lines += _pairs_section(curves, ("additive", "multiplicative"), ("clipping", "settings"), dataset)
    lines += ["## 3. Binarizing a net trained with a projection costs little", ""]
    lines += _binarize_section(curves, dataset)
    lines += ["## 4. Effective bits at which the error stays within 1 point", ""]
    lines += _bits_section(curves, dataset)
    lines += ["## 5. Nets trained with a projection are robust to test-time power projections "
              "sign(w)|w|^beta (beta = 0: binarization)", ""]
    lines += _pairs_section(curves, ("power",), ("projection", "clipping"), dataset)
    lines += ["## 6. Bit errors: each stored sign bit flipped with probability p", ""]
    lines += _bitflip_section(curves, dataset)
    return "\n".join(lines)


def write_claims(dirs: list[Path], out: Path, draws: pd.DataFrame | None = None) -> Path:
    """``claims.md`` in ``out`` from the draws of the sweeps in ``dirs`` (or ``draws`` given)."""
    out = Path(out)
    if draws is None:
        draws = load_draws([Path(d) for d in dirs], relative_to=out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "claims.md"
    path.write_text(claims_markdown(draws))
    return path

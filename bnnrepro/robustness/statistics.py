"""Confidence intervals for sweep results from a two-level bootstrap: the training seeds (runs) are
resampled, then, independently for every resampled slot, that run's draws at every random level.
The statistic is a mean over runs of a per-run quantity, the excess error ``mean(draw errors) -
trained error`` at a level or averaged over a curve's levels.

The 95 % interval of a mean (or of a difference of two groups' means) is ``mean ± t × SE``: SE the
bootstrap standard error rescaled by ``sqrt(n / (n - 1))`` (the bootstrap's plug-in variance of a
mean of n runs is (n - 1)/n of the usual one), t Student's 0.975 quantile with ``n - 1`` degrees of
freedom (``min(n_a, n_b) - 1`` for a difference). With 3 seeds a plain percentile bootstrap would
cover only about 75-80 % (a third of its replicates repeat one seed); this one is about as wide
as a t interval over the seeds, plus the draws' own noise. n = 1 has no interval.

Where the statistic is a level read off a curve (where the error doubles), the interval is the
percentile interval of the replicates, replicates that never get there counting as beyond the
strongest level; with 3 seeds it is narrower than 95 %, and says so where it is printed.

Every replicate set comes from a generator seeded by its own key, so a table rebuilt from the same
records gives the same intervals byte for byte, whatever else it computes.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

N_BOOT = 4000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int  # runs

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 2) -> str:
        if math.isnan(self.mean):
            return "–"
        if math.isnan(self.low):  # one seed: no interval
            return f"{self.mean:+.{digits}f} (n = {self.n})"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


Runs = list[dict[float, np.ndarray]]  # per run: level -> the excess of each draw at that level


def runs_of(frame, column: str = "excess") -> Runs:
    """A frame of draw rows (columns run, level and ``column``) as :data:`Runs`, runs sorted."""
    return [{float(level): h[column].to_numpy(float) for level, h in r.groupby("level")}
            for _, r in frame.groupby("run", sort=True)]


def common_levels(runs: Runs) -> list[float]:
    """The levels every run has, sorted."""
    levels = set(runs[0]) if runs else set()
    for run in runs[1:]:
        levels &= set(run)
    return sorted(levels)


def level_replicates(runs: Runs, levels: list[float], rng: np.random.Generator,
                     n_boot: int = N_BOOT) -> np.ndarray:
    """``[n_boot, len(levels)]`` replicates of the mean over runs of each level's mean draw
    excess: runs resampled (the same picks at every level, so a replicate is a whole curve), then
    the draws of the run in each picked slot, independently per slot and level."""
    n = len(runs)
    total = np.zeros((n_boot, len(levels)))
    pick = rng.integers(0, n, size=(n_boot, n))
    for k in range(n):
        for i, run in enumerate(runs):
            rows = np.flatnonzero(pick[:, k] == i)
            if not len(rows):
                continue
            for j, level in enumerate(levels):
                draws = np.asarray(run[level], float)
                total[rows, j] += draws[0] if len(draws) == 1 else \
                    draws[rng.integers(0, len(draws), size=(len(rows), len(draws)))].mean(axis=1)
    return total / n


def level_means(runs: Runs, levels: list[float]) -> np.ndarray:
    return np.array([np.mean([np.mean(run[level]) for run in runs]) for level in levels])


def t_interval(mean: float, variance: float, df: int, n: int) -> Interval:
    """``mean ± t(0.975, df) * sqrt(variance)``; no interval below one degree of freedom."""
    if df < 1 or not math.isfinite(variance):
        return Interval(mean, math.nan, math.nan, n)
    half = float(student_t.ppf(1 - (1 - CONFIDENCE) / 2, df)) * math.sqrt(variance)
    return Interval(mean, mean - half, mean + half, n)


def corrected_variance(samples: np.ndarray, n: int) -> float:
    """The bootstrap variance of a mean of n runs, rescaled to the usual n - 1 estimate."""
    return float(np.var(samples)) * n / (n - 1) if n > 1 else math.nan


def percentile_interval(samples: np.ndarray, mean: float, n: int) -> Interval:
    alpha = (1 - CONFIDENCE) / 2
    if not len(samples) or np.isnan(samples).all():
        return Interval(mean, math.nan, math.nan, n)
    big = np.where(np.isinf(samples), np.sign(samples) * 1e300, samples)  # quantiles of inf are nan
    low, high = (math.copysign(math.inf, q) if abs(q) >= 1e299 else float(q)
                 for q in np.quantile(big, [alpha, 1 - alpha]))
    return Interval(mean, low, high, n)


NAN = Interval(math.nan, math.nan, math.nan, 0)


def per_level_intervals(runs: Runs, *key) -> dict[float, Interval]:
    """Each common level's mean excess with its interval."""
    levels = common_levels(runs)
    if not levels:
        return {}
    samples = level_replicates(runs, levels, rng_for(*key))
    means, n = level_means(runs, levels), len(runs)
    return {level: t_interval(float(means[j]), corrected_variance(samples[:, j], n), n - 1, n)
            for j, level in enumerate(levels)}


def curve_interval(runs: Runs, *key) -> Interval:
    """The mean excess over a curve's levels (the area between the curve and the trained error,
    per level), mean over runs, with its interval."""
    levels = common_levels(runs)
    if not levels:
        return NAN
    samples = level_replicates(runs, levels, rng_for(*key)).mean(axis=1)
    n = len(runs)
    return t_interval(float(level_means(runs, levels).mean()), corrected_variance(samples, n), n - 1, n)


def curve_difference(a: Runs, b: Runs, *key) -> Interval:
    """curve mean(a) - curve mean(b), two independent groups of runs, each resampled on its own;
    over the levels both groups have."""
    levels = sorted(set(common_levels(a)) & set(common_levels(b))) if a and b else []
    if not levels:
        return NAN
    rng = rng_for(*key)
    va = corrected_variance(level_replicates(a, levels, rng).mean(axis=1), len(a))
    vb = corrected_variance(level_replicates(b, levels, rng).mean(axis=1), len(b))
    mean = float(level_means(a, levels).mean() - level_means(b, levels).mean())
    n = min(len(a), len(b))
    return t_interval(mean, va + vb, n - 1, n)


def shared(a: Runs, b: Runs) -> tuple[Runs, Runs]:
    """Both groups restricted to the levels every run of both has (so that their curve means
    subtract to their difference)."""
    levels = set(common_levels(a)) & set(common_levels(b)) if a and b else set()
    return ([{k: v for k, v in r.items() if k in levels} for r in a],
            [{k: v for k, v in r.items() if k in levels} for r in b])


def crossing(levels: np.ndarray, values: np.ndarray, threshold: float, log: bool = False) -> float:
    """The level (levels increasing) where ``values`` first reach ``threshold``, interpolated
    between the measured levels (in log level where both are > 0 and ``log``); nan if never."""
    for j, v in enumerate(values):
        if v >= threshold:
            if j == 0:
                return float(levels[0])
            x0, x1, v0 = float(levels[j - 1]), float(levels[j]), float(values[j - 1])
            frac = (threshold - v0) / (v - v0)
            if log and x0 > 0:
                return float(math.exp(math.log(x0) + frac * (math.log(x1) - math.log(x0))))
            return x0 + frac * (x1 - x0)
    return math.nan


def crossing_interval(runs: Runs, threshold: float, *key, log: bool = False) -> Interval:
    """The level at which the mean excess reaches ``threshold``, with its percentile interval
    (a replicate that never reaches it counts as +inf: an upper bound of inf means "beyond the
    strongest level tested"; a mean of nan: the curve itself never reaches it)."""
    levels = common_levels(runs)
    if not levels:
        return NAN
    x = np.array(levels)
    samples = level_replicates(runs, levels, rng_for(*key))
    reps = np.array([crossing(x, row, threshold, log) for row in samples])
    reps[np.isnan(reps)] = math.inf
    return percentile_interval(reps, crossing(x, level_means(runs, levels), threshold, log), len(runs))

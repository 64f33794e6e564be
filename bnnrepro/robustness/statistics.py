"""Bootstrap confidence intervals for sweep results, two levels deep: the training seeds (runs) are
resampled, then each resampled run's draws at every random level. The statistic is a mean over
runs of a per-run quantity, the excess error ``mean(draw errors) - trained error`` at a level or
averaged over a curve's levels.

Every interval is a percentile interval of ``N_BOOT`` replicates from a generator seeded by the
interval's own key, so a table rebuilt from the same records gives the same intervals byte for byte,
whatever else it computes. With 3 seeds the interval reflects those 3 nets, not the population of
all nets one could train: it is narrower than the truth when the seeds happen to agree.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

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
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


Runs = list[dict[float, np.ndarray]]  # per run: level -> the excess of each draw at that level


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
    each picked run's draws at every random level."""
    per_run = np.empty((len(runs), len(levels), n_boot))
    for i, run in enumerate(runs):
        for j, level in enumerate(levels):
            draws = np.asarray(run[level], float)
            per_run[i, j] = draws[0] if len(draws) == 1 else \
                draws[rng.integers(0, len(draws), size=(n_boot, len(draws)))].mean(axis=1)
    pick = rng.integers(0, len(runs), size=(n_boot, len(runs)))
    return per_run[pick, :, np.arange(n_boot)[:, None]].mean(axis=1)


def level_means(runs: Runs, levels: list[float]) -> np.ndarray:
    return np.array([np.mean([np.mean(run[level]) for run in runs]) for level in levels])


def interval(samples: np.ndarray, mean: float, n: int) -> Interval:
    alpha = (1 - CONFIDENCE) / 2
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        return Interval(mean, math.nan, math.nan, n)
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return Interval(mean, float(low), float(high), n)


NAN = Interval(math.nan, math.nan, math.nan, 0)


def per_level_intervals(runs: Runs, *key) -> dict[float, Interval]:
    """Each common level's mean excess with its interval."""
    levels = common_levels(runs)
    if not levels:
        return {}
    samples = level_replicates(runs, levels, rng_for(*key))
    means = level_means(runs, levels)
    return {level: interval(samples[:, j], float(means[j]), len(runs)) for j, level in enumerate(levels)}


def curve_interval(runs: Runs, *key) -> Interval:
    """The mean excess over a curve's levels (the area between the curve and the trained error,
    per level), mean over runs, with its interval."""
    levels = common_levels(runs)
    if not levels:
        return NAN
    samples = level_replicates(runs, levels, rng_for(*key)).mean(axis=1)
    return interval(samples, float(level_means(runs, levels).mean()), len(runs))


def curve_difference(a: Runs, b: Runs, *key) -> Interval:
    """curve mean(a) - curve mean(b), two independent groups of runs, each resampled on its own;
    over the levels both groups have."""
    levels = sorted(set(common_levels(a)) & set(common_levels(b))) if a and b else []
    if not levels:
        return NAN
    rng = rng_for(*key)
    samples = level_replicates(a, levels, rng).mean(axis=1) - level_replicates(b, levels, rng).mean(axis=1)
    mean = float(level_means(a, levels).mean() - level_means(b, levels).mean())
    return interval(samples, mean, min(len(a), len(b)))


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
    """The level at which the mean excess reaches ``threshold``, with its interval (replicates that
    never reach it are left out of the interval; its ``n`` still counts the runs)."""
    levels = common_levels(runs)
    if not levels:
        return NAN
    x = np.array(levels)
    samples = level_replicates(runs, levels, rng_for(*key))
    reps = np.array([crossing(x, row, threshold, log) for row in samples])
    return interval(reps, crossing(x, level_means(runs, levels), threshold, log), len(runs))

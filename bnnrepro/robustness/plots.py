"""Test error versus distortion strength, one curve per training projection (seeds pooled), in the
manner of Merolla et al.'s figures. The band: the 95 % bootstrap interval of the mean error (seeds,
then draws) when the draws are given, else one standard deviation over all draws of all seeds."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .distortions import DISTORTIONS
from .effective_bits import sigma_for_bits
from .report import ordered_projections

FLOOR = 0.05  # percent: the log axis' floor (a band reaching 0 is cut there)
COLORS = {"none": "#444444", "none+scaled": "#999999", "clip": "#1f77b4", "clip+plain": "#17becf", "sign": "#d62728", "stochastic_binary": "#ff7f0e",
          "stochastic_sign": "#8c564b", "power": "#2ca02c", "stochastic_projection": "#9467bd"}


def _bands(draws: pd.DataFrame, projection: str, levels) -> tuple[list[float], list[float]]:
    from . import statistics as st

    g = draws[draws["projection"] == projection]
    runs = st.runs_of(g, "error")
    cis = st.per_level_intervals(runs, "plot", projection, ",".join(sorted(g["noise"].unique())))
    return ([cis[float(v)].low if float(v) in cis else float("nan") for v in levels],
            [cis[float(v)].high if float(v) in cis else float("nan") for v in levels])


def plot_noise(agg: pd.DataFrame, noise: str, path: Path, title: str = "",
               bits_axis: bool = False, draws: pd.DataFrame | None = None) -> Path:
    """Write the PNG for ``noise``; ``bits_axis`` adds a top axis in effective bits (additive noise
    with sigma relative to the layer std and signal = variance, where bits = f(sigma) exactly)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    distortion = DISTORTIONS[noise]
    sub = agg[agg["noise"] == noise]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for i, projection in enumerate(ordered_projections(sub["projection"])):
        g = sub[sub["projection"] == projection].sort_values("level")
        color = COLORS.get(projection.split("(")[0], f"C{i % 10}")
        runs = int(g["runs"].max())
        ax.plot(g["level"], g["error_mean"], marker="o", ms=3.5, lw=1.6, color=color,
                label=f"{projection} (n={runs})")
        if draws is not None:
            low, high = _bands(draws, projection, g["level"])
            low = pd.Series(low, index=g.index).clip(lower=FLOOR)
        else:
            low = (g["error_mean"] - g["error_std"]).clip(lower=FLOOR)
            high = g["error_mean"] + g["error_std"]
        ax.fill_between(g["level"], low, high, color=color, alpha=0.18, lw=0)
    ax.set_xlabel(distortion.level_name)
    if distortion.log_levels:
        positive = sub.loc[sub["level"] > 0, "level"]
        ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1e-4)
    ax.set_ylabel("test error (%)")
    if distortion.stronger_is_smaller:
        ax.invert_xaxis()  # distortion grows to the right, as for the noises
    # log scale: the clean errors (1-5%) and the collapse (up to 90%) both stay readable
    ax.set_yscale("log")
    lowest = float(sub["error_mean"].min()) if len(sub) else 1.0
    ax.set_ylim(max(FLOOR, lowest / 1.6), 100.0)
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if t >= lowest / 1.6]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.grid(True, alpha=0.3, which="major")
    ax.legend(title="training projection" + (" (band: 95% CI of the mean)" if draws is not None else
                                             " (band: ± 1 std)"), fontsize=7, title_fontsize=7)
    if title:
        ax.set_title(title, fontsize=9, pad=10 if not (bits_axis and noise == "additive") else 32)
    if bits_axis and noise == "additive":
        secax = ax.secondary_xaxis("top", functions=(_sigma_to_bits, _bits_to_sigma))
        lo, hi = ax.get_xlim()
        ticks = [b for b in (2, 1, 0.68, 0.5, 0.3, 0.2, 0.1)
                 if min(lo, hi) < sigma_for_bits(b) < max(lo, hi)]
        secax.set_xticks(ticks, [f"{b:g}" for b in ticks])
        secax.set_xlabel("effective bits per weight")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def _sigma_to_bits(sigma):
    import numpy as np

    sigma = np.asarray(sigma, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(sigma > 0, 0.5 * np.log2(1 + 1 / np.maximum(sigma, 1e-12) ** 2), 50.0)


def _bits_to_sigma(bits):
    import numpy as np

    bits = np.asarray(bits, dtype=float)
    return 1 / np.sqrt(np.maximum(2 ** (2 * np.maximum(bits, 1e-9)) - 1, 1e-300))


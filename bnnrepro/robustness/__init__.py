"""Merolla et al. (2016): test-time weight distortion sweeps of trained runs.

``distortions`` (additive / multiplicative noise, binarize, power, clip, bitflip), ``effective_bits``,
``weights`` (which weights, on a copy), ``evaluation`` (test set, BN recalibration), ``runs``
(finding run directories), ``sweep`` (levels x draws), ``report`` / ``outputs`` (CSV, Markdown),
``plots`` (PNG), ``statistics`` (bootstrap intervals), ``claims`` (the paper's claims checked on controlled
pairs), ``packed`` (bit errors in the packed engine), ``commands`` (``bnnrepro robustness``).
"""
from .distortions import DISTORTIONS, Distortion, DistortionOptions, get_distortion
from .effective_bits import capacity_bits, effective_bits
from .sweep import SweepOptions, sweep_run, sweep_runs
from .weights import WEIGHT_MODES, DistortableCopy

__all__ = ["DISTORTIONS", "Distortion", "DistortionOptions", "get_distortion", "capacity_bits",
           "effective_bits", "SweepOptions", "sweep_run", "sweep_runs", "WEIGHT_MODES", "DistortableCopy"]

"""Optimizers, BNN's Glorot per-layer learning-rate scale, latent-weight clipping and LR schedules."""
from .build import LatentWeightClipper, build_optimizer, build_scheduler, param_groups
from .shift_adamax import ShiftAdaMax

__all__ = ["LatentWeightClipper", "ShiftAdaMax", "build_optimizer", "build_scheduler", "param_groups"]

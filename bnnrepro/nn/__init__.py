"""Layers whose weights (and optionally inputs) pass through quantizers in forward.

Latent weights are ordinary parameters; the quantized copy is computed in every forward pass.
Clipping latent weights and the Glorot learning-rate scale are optimizer concerns (bnnrepro.optim).
"""
from .dropout import Dropout
from .layers import QuantConv2d, QuantLinear, QuantLayer
from .shift_bn import ShiftBatchNorm

__all__ = ["Dropout", "QuantConv2d", "QuantLinear", "QuantLayer", "ShiftBatchNorm"]

"""Quantizers as modules, registered by name: ``build('sign')``, ``build('stochastic_sign')``, ...

``base`` holds the :class:`Quantizer` base class (what a quantizer declares: precision, kind, ...),
``ste`` every straight-through autograd Function, ``scheme`` the :class:`QuantScheme` (which
quantizer plays each role in a model, built from the config's ``quant`` section).
"""
from .registry import QUANTIZERS, VALID_BITS, allowed_bits, build, check_bits, get, names, register
from .base import Quantizer
from .ste import hard_sigmoid, sign_pm1
from .binary import HardTanh, Identity, Sign, StochasticSign
from .dorefa import DoReFaActivation, DoReFaGradient, DoReFaWeight, quantize_gradient, quantize_k
from .activations import ReLU
from .projections import Clip, Power, StochasticBinary, StochasticProjection
from .qnn import QnnGradient, QnnLinear, QnnLog, ap2, bitplane_conv2d, bitplane_linear, bitplanes
from .scheme import LayerQuant, QuantConfig, QuantScheme, Spec

__all__ = [
    "QUANTIZERS", "VALID_BITS", "allowed_bits", "build", "check_bits", "get", "names", "register",
    "HardTanh", "Identity", "Quantizer", "Sign", "StochasticSign", "hard_sigmoid", "sign_pm1",
    "DoReFaActivation", "DoReFaGradient", "DoReFaWeight", "quantize_gradient", "quantize_k",
    "QnnGradient", "QnnLinear", "QnnLog", "ap2", "bitplane_conv2d", "bitplane_linear", "bitplanes",
    "ReLU", "Clip", "Power", "StochasticBinary", "StochasticProjection",
    "LayerQuant", "QuantConfig", "QuantScheme", "Spec",
]

from __future__ import annotations

import torch.nn as nn

from .. import quant


def quantizer_spec(name: str, bits: int | None, kwargs: dict | None):
    kw = dict(kwargs or {})
    if bits is not None:
        kw["bits"] = bits
    return (name, kw)


def activation(spec) -> nn.Module:
    name, kw = spec
    return quant.build(name, **kw)


def norm_layer(dim: int, features: int, eps: float, momentum: float, kind: str = "standard") -> nn.Module:
    """``standard``: torch BatchNorm; ``shift``: BNN's shift-based BatchNorm (powers of two)."""
    if kind == "shift":
        from ..nn import ShiftBatchNorm

        return ShiftBatchNorm(features, eps=eps, momentum=momentum)
    if kind != "standard":
        raise ValueError(f"model.batchnorm={kind!r} is unknown; allowed: standard, shift")
    cls = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    return cls(features, eps=eps, momentum=momentum)


def scaled(width: int, mult: float) -> int:
    return max(1, int(round(width * mult)))

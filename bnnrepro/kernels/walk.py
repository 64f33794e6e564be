"""What both packed engines (``engine``: W1A1, ``multibit_engine``: bit-serial) ask of a torch model's
modules while walking it, and the check of their uint8 input."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..nn import ShiftBatchNorm
from ..quant import Quantizer


def _precision(m) -> int | None:
    return getattr(m, "precision", None)


def _kind(m) -> str | None:
    """A quantizer's declared kind (``bnnrepro.quant.base``); None for other modules."""
    return getattr(m, "kind", None) if isinstance(m, Quantizer) else None


def _is_skip(m) -> bool:
    return isinstance(m, (nn.Dropout, nn.Identity)) or (_kind(m) == "identity" and _precision(m) == 32)


def _is_monotone_elementwise(m) -> bool:
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return m.track_running_stats
    if isinstance(m, ShiftBatchNorm):
        return getattr(m, "track_running_stats", True)
    return isinstance(m, nn.Hardtanh)


def check_input(x, input_shape: tuple) -> np.ndarray:
    """uint8 images ``[N, *input_shape]`` (or the same number of values per image), contiguous."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise TypeError(f"the packed engine takes uint8 pixels, got {x.dtype}")
    if tuple(x.shape[1:]) != input_shape:
        if int(np.prod(x.shape[1:])) == int(np.prod(input_shape)):
            x = x.reshape((len(x),) + input_shape)
        else:
            raise ValueError(f"input shape {tuple(x.shape[1:])} != packed model's {input_shape}")
    return np.ascontiguousarray(x)

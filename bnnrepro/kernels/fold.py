"""Fold "BatchNorm (or any per-channel monotone chain) + sign" into integer thresholds.

The packed engine computes each pre-activation ``y`` exactly as an integer. The float model then
applies per-channel elementwise modules (BatchNorm, shift-based BatchNorm, ...) and
``sign`` (``v >= 0 -> +1``). For a fixed channel that is a monotone step function of ``y``
(every float32 operation is monotone in its input), so it is fully described by one integer
threshold ``T`` and a direction: the output bit (1 = -1) is ``(y < T) ^ flip``.

Rather than re-deriving ``mean - beta * sqrt(var + eps) / gamma`` in some other precision (which
disagrees with torch whenever ``y`` lands within rounding distance of the threshold), the threshold
is found by **evaluating the torch modules themselves** in float32 on candidate integer values,
shaped like the model's own activations, by bisection per channel. So the packed engine takes
exactly the decisions torch takes for every integer ``y``: gamma < 0 (flip), gamma == 0 (constant
output), eps, and whatever formula a module uses are all handled by construction.

The first layer sees real pixels; its exact value is ``y / 255`` with ``y`` an integer. Torch's
own first-layer output carries float32 rounding, so rare disagreements remain there; they are
counted per layer by ``bnnrepro compare``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .tiles import NEVER


@dataclass
class Thresholds:
    """Per channel: output bit (1 = -1) is ``(y < t) ^ flip``."""

    t: np.ndarray  # int64 [C]
    flip: np.ndarray  # bool [C]
    inconsistent: int = 0  # channels whose decision depended on the spatial position (should be 0)

    def apply(self, y: np.ndarray, axis: int = -1) -> np.ndarray:
        """Reference: bits (True = -1) of integer pre-activations ``y`` (channels on ``axis``)."""
        shape = [1] * y.ndim
        shape[axis] = -1
        return (y < self.t.reshape(shape)) ^ self.flip.reshape(shape)


def chain_fn(modules: Sequence[torch.nn.Module], bias: torch.Tensor | None = None) -> Callable:
    """The float path from an integer pre-activation to the value that is signed."""

    def fn(v: torch.Tensor) -> torch.Tensor:
        if bias is not None:
            v = v + bias.detach().to(v.dtype).reshape((1, -1) + (1,) * (v.dim() - 2))
        for m in modules:
            v = m(v)
        return v

    return fn


@torch.no_grad()
def fold_sign(fn: Callable, channels: int, spatial: tuple[int, ...], lo: int, hi: int,
              scale: float = 1.0) -> Thresholds:
    """Thresholds for ``sign(fn(float32(y * scale))) `` over integers ``y`` in ``[lo, hi]``.

    ``fn`` is evaluated on tensors ``[1, channels, *spatial]`` whose channel ``c`` holds one
    candidate value everywhere; each channel must decide the same way at every position.
    """

    def positive(y: np.ndarray) -> tuple[np.ndarray, int]:
        v = torch.from_numpy((y.astype(np.float64) * scale).astype(np.float32))
        v = v.reshape((1, channels) + (1,) * len(spatial)).expand((1, channels) + tuple(spatial)).contiguous()
        out = fn(v) >= 0  # NaN -> False -> -1, as quant.sign_pm1
        flat = out.reshape(channels, -1)
        first = flat[:, 0]
        bad = int((flat != first[:, None]).any(dim=1).sum())
        return first.numpy(), bad

    lo_a = np.full(channels, lo, np.int64)
    hi_a = np.full(channels, hi, np.int64)
    p_lo, bad_lo = positive(lo_a)
    p_hi, bad_hi = positive(hi_a)
    target = p_hi
    active = p_lo != p_hi
    bad = bad_lo + bad_hi
    # invariant on active channels: positive(lo) != target == positive(hi)
    while True:
        gap = active & (hi_a - lo_a > 1)
        if not gap.any():
            break
        mid = np.where(gap, (lo_a + hi_a) // 2, hi_a)
        p_mid, b = positive(mid)
        bad += b
        hit = p_mid == target
        hi_a = np.where(gap & hit, mid, hi_a)
        lo_a = np.where(gap & ~hit, mid, lo_a)
    t = np.where(active, hi_a, NEVER).astype(np.int64)
    flip = np.where(active, ~target, ~p_lo)
    return Thresholds(t, flip.astype(bool), inconsistent=bad)


@dataclass
class Affine:
    """The float tail of the output layer (no sign), reproduced op for op as torch runs it.

    ``kind``: ``none`` (logits = y), ``batchnorm`` (torch's own ``F.batch_norm`` kernel at run time,
    so the logits are bit-identical), ``scale_shift`` (``y * scale + shift``, two float32 roundings,
    as ``ShiftBatchNorm`` evaluates). ``pre_bias`` is the linear layer's own bias."""

    kind: str
    params: dict = field(default_factory=dict)  # name -> float32 array or None
    eps: float = 0.0
    pre_bias: np.ndarray | None = None

    ARRAYS = {"none": (), "batchnorm": ("mean", "var", "weight", "bias"), "scale_shift": ("scale", "shift")}

    @classmethod
    def from_module(cls, m, pre_bias=None) -> "Affine":
        arr = lambda t: None if t is None else t.detach().to(torch.float32).numpy().copy()  # noqa: E731
        if m is None:
            return cls("none", {}, 0.0, arr(pre_bias))
        if isinstance(m, (torch.nn.BatchNorm1d,)):
            return cls("batchnorm", {"mean": arr(m.running_mean), "var": arr(m.running_var),
                                     "weight": arr(m.weight), "bias": arr(m.bias)}, float(m.eps), arr(pre_bias))
        if hasattr(m, "scale_shift"):
            with torch.no_grad():
                scale, shift = m.scale_shift()
            return cls("scale_shift", {"scale": arr(scale), "shift": arr(shift)}, 0.0, arr(pre_bias))
        raise TypeError(f"no float tail for {type(m).__name__}")

    @torch.no_grad()
    def __call__(self, y: np.ndarray) -> torch.Tensor:
        v = torch.from_numpy(np.ascontiguousarray(y, np.float32))
        if self.pre_bias is not None:
            v = v + torch.from_numpy(self.pre_bias)
        p = {k: None if a is None else torch.from_numpy(a) for k, a in self.params.items()}
        if self.kind == "batchnorm":
            return torch.nn.functional.batch_norm(v, p["mean"], p["var"], p["weight"], p["bias"], False, 0.0,
                                                  self.eps)
        if self.kind == "scale_shift":
            return v * p["scale"] + p["shift"]
        return v

"""Shift-based batch normalization (BNN Algorithm 3, papers.md §a.3), as BNN's Torch7
``BatchNormalizationShiftPow2.lua`` / ``SpatialBatchNormalizationShiftPow2.lua`` compute it.

Training, per channel (statistics over every axis but the channel axis 1)::

    mu = mean(x);  C = x - mu
    var = mean(C * AP2(C))              # the square becomes a shift
    s = AP2((var + eps) ** -1/2)
    y = AP2(gamma) * (C * s) + beta

Backward is the Torch7 code's hand-written one (not autograd of the above)::

    dx     = s * AP2(gamma) * (g - mean(g) - AP2(C) * s**2 * mean(AP2(C) * g))
    dgamma = sum(AP2(C * s) * g);  dbeta = sum(g)

Eval: ``y = AP2(gamma) * (x - running_mean) * AP2(running_invstd) + beta``.

Running statistics as Torch7 keeps them: the mean and the *inverse standard deviation* (unrounded),
``running = (1 - momentum) * running + momentum * batch``, momentum 0.125 by default. One deviation:
Torch7 starts ``running_invstd`` at 0, we start it at 1 (a fresh layer then is the identity in eval,
like torch's BatchNorm with running_var = 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..quant import ap2


def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.dim()))


def _channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class _ShiftBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        dims = _reduce_dims(x)
        mean = x.mean(dim=dims, keepdim=True)
        centered = x - mean
        centered_ap2 = ap2(centered)
        invstd = ((centered * centered_ap2).mean(dim=dims, keepdim=True) + eps).rsqrt()
        s = ap2(invstd)
        normalized = centered * s
        gamma_ap2 = _channel(ap2(gamma), x)
        ctx.save_for_backward(centered_ap2, s, normalized, gamma_ap2)
        ctx.dims = dims
        out = normalized * gamma_ap2 + _channel(beta, x)
        mean, invstd = mean.flatten(), invstd.flatten()
        ctx.mark_non_differentiable(mean, invstd)
        return out, mean, invstd

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_invstd):
        centered_ap2, s, normalized, gamma_ap2 = ctx.saved_tensors
        dims = ctx.dims
        proj = (centered_ap2 * grad).mean(dim=dims, keepdim=True)
        grad_x = (grad - grad.mean(dim=dims, keepdim=True) - centered_ap2 * proj * s * s) * s * gamma_ap2
        grad_gamma = (ap2(normalized) * grad).sum(dim=dims)
        grad_beta = grad.sum(dim=dims)
        return grad_x, grad_gamma, grad_beta, None


class ShiftBatchNorm(nn.Module):
    """Shift-based BN for (N, C), (N, C, L) or (N, C, H, W) inputs; see the module docstring.

    ``weight``/``bias`` are gamma/beta (``affine=False``: fixed 1 and 0). ``track_running_stats=False``
    normalises with batch statistics in eval too (Torch7 ``runningVal=false``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.125,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_buffer("weight", torch.ones(num_features))
            self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_invstd", torch.ones(num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"ShiftBatchNorm({self.num_features}) got input of shape {tuple(x.shape)}")
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()  # normalisation in fp32 under autocast (train.amp=bf16), as torch's BatchNorm
        if self.training or not self.track_running_stats:
            out, mean, invstd = _ShiftBN.apply(x, self.weight, self.bias, self.eps)
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    self.running_mean.lerp_(mean, self.momentum)
                    self.running_invstd.lerp_(invstd, self.momentum)
            return out
        scale, shift = self.scale_shift()
        return x * _channel(scale, x) + _channel(shift, x)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode affine form ``y = x * scale + shift`` per channel (for folding into thresholds)."""
        scale = ap2(self.weight) * ap2(self.running_invstd)
        return scale, self.bias - self.running_mean * scale

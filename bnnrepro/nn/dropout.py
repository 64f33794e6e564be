"""Dropout whose random mask is a function of (seed, element index): one Numba pass forward, one
backward, and nothing stored between them.

torch's CPU dropout draws a Bernoulli mask from its Mersenne Twister one element at a time (about
7 ns per element on 2 Zen 4 cores: 3 ms of a 16 ms quick-scale BNN step). Here each call draws one
63-bit seed from torch's generator (so ``torch.manual_seed`` and the checkpointed RNG state govern
it, as before) and element i keeps its value when the top 24 bits of SplitMix64's i-th output from
that seed are below ``round((1 - p) * 2**24)``: P(keep) = 1 - p to 24 bits, the resolution of
``torch.rand``. The backward recomputes the mask from the seed. Kept values are multiplied by the
float32 factor 1/(1 - p) (``precision.dropout_scale``), dropped ones by 0 (NaN stays NaN, as in
torch). The output depends on the seed only, not on the thread count.

Other devices, dtypes, non-contiguous inputs, p = 0 and p = 1 take ``nn.Dropout``'s own path.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..jit import keeping_torch_threads

_KERNELS: dict[bool, tuple] = {}
MASK_BITS = 24


def _kernels(parallel: bool):
    """The Numba loop, compiled on first use and cached on disk; ``parallel`` False where torch runs on one
    thread (see optim.shift_adamax)."""
    if parallel not in _KERNELS:
        import numba

        golden, mix1, mix2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
        s30, s27, s31, top = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(64 - MASK_BITS)
        one, zero = np.uint64(1), np.float32(0.0)

        @numba.njit(parallel=parallel, cache=True, boundscheck=False)
        def apply(x, out, seed, threshold, scale):
            # out[i] = x[i] * scale where SplitMix64(seed)'s i-th output keeps it, x[i] * 0 elsewhere
            for i in numba.prange(x.size):
                z = seed + (np.uint64(i) + one) * golden
                z = (z ^ (z >> s30)) * mix1
                z = (z ^ (z >> s27)) * mix2
                z = z ^ (z >> s31)
                out[i] = x[i] * (scale if (z >> top) < threshold else zero)

        _KERNELS[parallel] = keeping_torch_threads(apply)
    return _KERNELS[parallel]


def _fast(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()


def masked(x: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """``x`` times the factor where the mask of ``seed`` keeps it, times 0 elsewhere."""
    out = torch.empty_like(x)
    threshold = np.uint64(round((1.0 - p) * 2**MASK_BITS))
    _kernels(torch.get_num_threads() > 1)(x.detach().view(-1).numpy(), out.view(-1).numpy(), np.uint64(seed),
                                          threshold, np.float32(1.0 / (1.0 - p)))
    return out


class _SeededDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        ctx.seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64).item())
        ctx.p = p
        return masked(x, ctx.seed, p)

    @staticmethod
    def backward(ctx, grad):
        return masked(grad.contiguous(), ctx.seed, ctx.p), None


class Dropout(nn.Dropout):
    """``nn.Dropout`` (an instance of it, for every check that looks for one) with the seeded mask
    of the module docstring on float32 CPU tensors."""

    def forward(self, x):
        if not self.training or not 0.0 < self.p < 1.0 or self.inplace or not _fast(x):
            return super().forward(x)
        return _SeededDropout.apply(x, self.p)

"""QNN quantizers (Hubara et al. 2016, papers.md §b.3): k-bit linear and logarithmic quantization,
AP2, quantized gradients and BNN's bit-plane first layer.

QNN extends BNN: k = 1 is BNN's sign (deterministic, or hard-sigmoid stochastic), the gradient is
the straight-through estimator cancelled outside the clipping window (hard-tanh), and latent weights
are clipped to [-1, 1] like BNN's. The paper's exact grid and [minV, maxV] are [U]; the choices made
here are documented on each class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Quantizer
from .dorefa import DoReFaGradient
from .registry import register
from .ste import SteSign, ste


# float32 |x| = 2**e * 1.m rounds up to 2**(e+1) exactly when 1.m >= sqrt(2), i.e. when its 23
# mantissa bits are >= those of the smallest float32 >= sqrt(2) (0x3FB504F4): adding the rest of
# 2**23 to the bits carries into the exponent then, and masking keeps the exponent alone
_AP2_CARRY = (1 << 23) - 0x3504F4
_EXPONENT, _MAGNITUDE, _SIGN = 0x7F800000, 0x7FFFFFFF, -(1 << 31)


def ap2_reference(x: torch.Tensor) -> torch.Tensor:
    """AP2 by its formula sign(x) * 2**round(log2|x|), in float64 (the twin of :func:`ap2`)."""
    d = x.double()
    return (torch.sign(d) * torch.exp2(torch.round(torch.log2(d.abs())))).to(x.dtype)


def ap2(x: torch.Tensor) -> torch.Tensor:
    """Nearest power of two, rounded in the log domain: sign(x) * 2**round(log2|x|); AP2(0) = 0.

    float32 takes integer operations on the bits (no log2/exp2), exact where the float32 formula
    could round log2 onto a half: the result is 2**(e+1) exactly when |x| >= sqrt(2) * 2**e.
    Subnormal |x| (below 2**-126) give 0 or 2**-126 where the formula gives smaller powers of two;
    infinities stay, NaN becomes an infinity (so a diverged tensor stays non-finite). No gradient
    flows through it (bits have none). Other dtypes take the formula."""
    if x.dtype != torch.float32:
        return torch.sign(x) * torch.exp2(torch.round(torch.log2(x.abs())))
    bits = x.view(torch.int32)
    # NaN's magnitude bits would carry into the sign bit: clamped to infinity's first
    magnitude = (bits & _MAGNITUDE).clamp_max_(_EXPONENT)
    return magnitude.add_(_AP2_CARRY).bitwise_and_(_EXPONENT).bitwise_or_(bits & _SIGN).view(torch.float32)


@register("qnn_linear")
class QnnLinear(Quantizer):
    """QNN LinearQuant: a k-bit two's-complement fixed-point grid.

    ``q = clip(round(x * 2**(k-1)) / 2**(k-1), minV, maxV)``, i.e. step ``2**-(k-1)`` (the step of
    papers.md's second transcription) and ``[minV, maxV] = [-1, 1 - 2**-(k-1)]``: exactly the 2**k
    values of a signed k-bit integer with k-1 fraction bits. [U] choices, documented:

    * the same grid serves weights and activations: both live in BNN's hard-tanh range [-1, 1]
      (latent weights are clipped there, activations follow BN + hard-tanh), so one signed grid
      covers both and k = 1 reduces to BNN exactly;
    * ``k = 1`` is BNN's sign (values +-1, sign(0) = +1; stochastic = hard-sigmoid Bernoulli), not
      the degenerate 1-bit two's-complement grid {-1, 0};
    * ``scale`` (default 1) stretches the grid to ``scale * [minV, maxV]``; keep it a power of two
      and the values stay fixed-point (a shift). Used for LSTM weights, whose natural range is far
      below 1 (``models.language_model``);
    * ``stochastic=True`` rounds ``floor(x * 2**(k-1) + U[0, 1))`` (unbiased) while training and
      deterministically in eval, as BNN's stochastic sign does;
    * gradient: straight-through, cancelled where |x| > ``clip * scale`` (hard-tanh window, clip 1);
    * ``k = 32`` passes x through unchanged.

    ``grid="symmetric"`` is the alternative with a zero code and no extra negative level: the
    ``2**k - 1`` values ``{-n, ..., 0, ..., n} / n``, n = 2**(k-1) - 1, spanning [-1, 1] (k = 2:
    ternary {-1, 0, 1}); the default ``twos_complement`` is the grid above (k = 2: {-1, -1/2, 0, 1/2}).
    """

    GRIDS = ("twos_complement", "symmetric")
    kind = "linear"
    clips_latent_weights = True
    takes_scale = True

    def __init__(self, bits: int = 2, stochastic: bool = False, scale: float = 1.0,
                 clip: float | None = 1.0, eval_stochastic: bool = False, grid: str = "twos_complement"):
        super().__init__()
        if grid not in self.GRIDS:
            raise ValueError(f"qnn_linear grid={grid!r} is unknown; allowed: {', '.join(self.GRIDS)}")
        self.grid = grid
        self.precision = bits
        self.stochastic = stochastic
        self.eval_stochastic = eval_stochastic
        self.scale = float(scale)
        self.clip = clip
        self.generator: torch.Generator | None = None

    def extra_repr(self) -> str:
        grid = "" if self.grid == "twos_complement" else f", grid={self.grid}"
        return f"precision={self.precision}, stochastic={self.stochastic}, scale={self.scale}{grid}"

    def forward(self, x):
        if self.precision == 32:
            return x
        stochastic = self.stochastic and (self.training or self.eval_stochastic)
        window = None if self.clip is None else self.clip * self.scale
        if self.precision == 1:
            return SteSign.apply(x / self.scale, self.clip, stochastic, self.generator) * self.scale
        levels = 2.0 ** (self.precision - 1)
        # the codes' range: [-levels, levels - 1] (two's complement) or [-n, n], n = levels - 1
        lo, hi, levels = ((-levels, levels - 1, levels) if self.grid == "twos_complement"
                          else (-(levels - 1), levels - 1, levels - 1))

        def quantize(v):
            # (v / scale * levels), rounded, clamped, / levels * scale + 0.0 (no -0.0): the same
            # float operations, in place on one buffer (v / 1.0 is v exactly, so it is skipped)
            v = v / self.scale * levels if self.scale != 1.0 else v * levels
            if stochastic:
                v.add_(torch.rand(v.shape, generator=self.generator, device=v.device, dtype=v.dtype)).floor_()
            else:
                v.round_()
            return v.clamp_(lo, hi).div_(levels).mul_(self.scale).add_(0.0)

        return ste(x, quantize, window)


@register("qnn_log")
class QnnLog(Quantizer):
    """QNN LogQuant: ``clip(AP2(x), minV, maxV)``, power-of-two values (multiplications become shifts).

    [U] choices, documented: k bits = 1 sign bit + k-1 exponent bits, so ``2**(k-1)`` magnitudes
    ``2**0, 2**-1, ..., 2**-(2**(k-1) - 1)`` (times ``scale``); magnitudes are clipped into that
    range (no zero code: x = 0 maps to +smallest, sign(0) = +1), giving exactly 2**k values, and
    k = 1 is ``scale * sign(x)``. Rounding is in the log domain, as AP2 (§a.3). Gradient:
    straight-through, cancelled where |x| > ``clip * scale``. ``k = 32`` passes x through.

    ``zero_code=True`` is the alternative that spends one code on zero: magnitudes ``2**0 ...
    2**-(2**(k-1) - 2)`` and 0, the ``2**k - 1`` values symmetric around it; |x| whose log2 rounds
    below the smallest exponent maps to 0 (k = 2: {-1, 0, 1}; k = 1 has no room for it).
    """

    kind = "log"
    clips_latent_weights = True
    takes_scale = True

    def __init__(self, bits: int = 4, scale: float = 1.0, clip: float | None = 1.0, zero_code: bool = False):
        super().__init__()
        if zero_code and bits == 1:
            raise ValueError("qnn_log zero_code=true needs bits >= 2 (1 bit has no code left for zero)")
        self.precision = bits
        self.scale = float(scale)
        self.clip = clip
        self.zero_code = bool(zero_code)

    def forward(self, x):
        if self.precision == 32:
            return x
        lowest = -(2.0 ** (self.precision - 1) - (2 if self.zero_code else 1))

        def quantize(v):
            # sign(v) * 2**clamp(round(log2(|v| / scale))) * scale, sign(0) = +1, in place on one buffer
            magnitude = v.abs()
            if self.scale != 1.0:
                magnitude.div_(self.scale)
            exponent = magnitude.log2_().round_()
            zero = exponent < lowest if self.zero_code else None
            exponent.clamp_(lowest, 0.0).exp2_().mul_(self.scale)
            if zero is not None:
                exponent.masked_fill_(zero, 0.0)
            # copysign, not where(v >= 0, ...) (several times slower on CPU); v + 0.0: -0.0 -> +0.0
            out = exponent.copysign_(v + 0.0)
            return out.add_(0.0) if zero is not None else out  # a zero code of negative v: +0.0

        return ste(x, quantize, None if self.clip is None else self.clip * self.scale)


@register("qnn_gradient")
class QnnGradient(DoReFaGradient):
    """QNN's quantized gradients (6 bits in the paper). The paper's exact rule is [U]; this is the
    DoReFa form papers.md §b.3 names: stochastic, max-normalised ``2M[quantize_k(g/2M + 1/2 + N) - 1/2]``,
    applied to the gradient at a layer's output (identity forward). Default 6 bits."""

    def __init__(self, bits: int = 6, per_example: bool = True):
        super().__init__(bits=bits, per_example=per_example)


def bitplanes(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """The bit planes of an unsigned integer tensor, least significant first: shape (bits, *x.shape)."""
    if x.dtype.is_floating_point:
        raise TypeError(f"bitplanes needs an integer tensor (uint8 pixels), got {x.dtype}")
    shifts = torch.arange(bits, device=x.device).view(-1, *([1] * x.dim()))
    return (x.to(torch.int32).unsqueeze(0) >> shifts) & 1


def bitplane_linear(x: torch.Tensor, weight: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """BNN's exact first layer for 8-bit inputs: ``s = sum_n 2**(n-1) (x^n . w_b)``, x^n the n-th
    bit plane. Equal to ``F.linear(x.float(), weight)``; each term is a binary (bitwise) product."""
    planes = bitplanes(x, bits).to(weight.dtype)
    out = torch.zeros((), dtype=weight.dtype, device=weight.device)
    for n in range(bits):
        out = out + 2.0 ** n * F.linear(planes[n], weight)
    return out


def bitplane_conv2d(x: torch.Tensor, weight: torch.Tensor, bits: int = 8, **conv_kwargs) -> torch.Tensor:
    """Convolutional form of :func:`bitplane_linear` (``conv_kwargs``: stride, padding, ...)."""
    planes = bitplanes(x, bits).to(weight.dtype)
    out = torch.zeros((), dtype=weight.dtype, device=weight.device)
    for n in range(bits):
        out = out + 2.0 ** n * F.conv2d(planes[n], weight, **conv_kwargs)
    return out

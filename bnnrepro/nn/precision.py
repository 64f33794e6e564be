"""``train.precision``: low-precision matmuls for the layers whose operands are exactly +-1, fp32
elsewhere.

+-1 is exact in int8 and bf16 and so is every product; a dot product of K such terms is an integer,
exact in an int32 or fp32 sum up to 2**24. So the forward of such a layer runs as an int8 GEMM with
int32 sums on CPU (``torch._int_mm``: VNNI where the CPU has it, about 2x a bf16 GEMM's speed on Zen
4 and exact, where a bf16 GEMM's bf16 output would round the sum to 8 significant bits) and as a
bf16 GEMM with an fp32 output on CUDA: the forward output is bit-identical to fp32's (without a
bias: F.linear's addmm may add a bias in another order). The backward's matmuls take the
real-valued output gradient in bf16 and round there, as mixed precision does.

A layer whose weight quantizer is the deterministic sign binarizes its latent weight inside its own
autograd node, one Numba pass writing the int8 operand and the bf16 one for the backward; the pass
also finds whether every latent is inside the straight-through window [-clip, clip], as BNN's
latent clipping keeps them, and the backward then passes the weight gradient as it is, instead of
masking it.

A linear layer qualifies when its weight quantizer produces exactly +-1 and its input is exactly +-1:
its own input quantizer is a sign, or, in an ``nn.Sequential``, the module before it is a sign; a
dropout between them is allowed when its factor c = 1/(1-p) is a bf16 number and fp32's own sums
of +-c are exact (c a power of two, 2 at BNN's p = 0.5, or with a short significand, 1.25 at
p = 0.2): the layer then divides its input by c, {0, +-c} -> {0, +-1} exactly, multiplies the exact
integer result by c, one exact product, and keeps the input {0, +-c}, exact in bf16, for the
backward.
So BNN's hidden and output layers qualify, and its first layer (real-valued input) does not; conv
layers and DoReFa/QNN k-bit levels stay fp32.

``auto`` takes the low-precision path only where the hardware multiplies bf16 matrices natively (AMX
or AVX512-BF16 on CPU, compute capability 8.0+ on CUDA): elsewhere bf16 is emulated and slower than
fp32.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..jit import keeping_torch_threads
from ..quant.ste import sign_pm1, window_grad

PRECISIONS = ("auto", "fp32", "bf16")
BF16_SIGNIFICAND = 8  # bits, the implicit one included
MIN_INT8_K = 8  # below: the exact matmul in fp32 (see exact_pm1_matmul)
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def pm1_valued(quantizer: nn.Module) -> bool:
    """The quantizer's output is exactly +-1 (BNN's sign, stochastic or not; QNN's 1-bit grid at
    scale 1)."""
    kind = getattr(quantizer, "kind", None)
    if kind == "sign":
        return True
    return kind == "linear" and getattr(quantizer, "precision", 32) == 1 and getattr(quantizer, "scale", 1.0) == 1.0


def dropout_scale(m: nn.Module) -> float | None:
    """The factor a training-mode ``nn.Dropout`` multiplies kept values by, as the fp32 number torch
    uses (1.0 at p = 0); None for any other module or p = 1."""
    if not isinstance(m, nn.Dropout) or m.p >= 1:
        return None
    return torch.tensor(1.0 / (1.0 - m.p), dtype=torch.float32).item()


def significand_bits(c: float) -> int:
    """How many significant bits the fp32 number ``c`` (> 0) has: 1 for a power of two, 3 for 1.25."""
    mantissa = int(torch.tensor(c, dtype=torch.float32).view(torch.int32).item()) & 0x7FFFFF | 0x800000
    return 24 - ((mantissa & -mantissa).bit_length() - 1)


def _exact_sums(scale: float, k: int) -> bool:
    """Every partial sum of k terms of +-``scale`` is exact in fp32 (so fp32's result is too)."""
    return significand_bits(scale) + k.bit_length() <= 24


def _qualifying(model: nn.Module) -> list[tuple[str, float | None]]:
    """(name, factor to divide out) of each linear layer whose matmul operands are exactly +-1, the
    input times 1 (None) or times the factor of a dropout between the sign and the layer (see the
    module docstring)."""
    found = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        scale = None  # the value flowing into the next child is +-1 times ``scale`` (None: it is not)
        for name, m in seq.named_children():
            if isinstance(m, nn.Linear) and hasattr(m, "weight_quantizer"):  # a QuantLinear
                if pm1_valued(m.input_quantizer):
                    scale = 1.0
                elif getattr(m.input_quantizer, "kind", None) != "identity":
                    scale = None
                if scale is not None and pm1_valued(m.weight_quantizer):
                    if significand_bits(scale) <= BF16_SIGNIFICAND and _exact_sums(scale, m.in_features):
                        found.append((f"{seq_name}.{name}" if seq_name else name, None if scale == 1.0 else scale))
                scale = None
            elif pm1_valued(m):
                scale = 1.0
            elif isinstance(m, nn.Dropout) and scale is not None:
                if m.p > 0:  # an active dropout multiplies by its factor; a second one is not tracked
                    scale = dropout_scale(m) if scale == 1.0 else None
            elif not isinstance(m, nn.Flatten):
                scale = None
    return found


def qualifying_layers(model: nn.Module) -> list[str]:
    """Names of the linear layers whose matmul operands are exactly +-1 (see the module docstring)."""
    return [name for name, _ in _qualifying(model)]


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_hardware(device: torch.device) -> str | None:
    """What multiplies bf16 matrices natively on ``device`` (None: nothing)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"tensor cores (compute capability {major}.{minor})" if major >= 8 else None
    found = [f for f in _CPU_BF16_FLAGS if f in cpu_flags()]
    return ", ".join(found) if found else None


def resolve(requested: str, device: torch.device, hardware=bf16_hardware) -> tuple[str, str]:
    """(``fp32`` or ``bf16``, why)."""
    if requested not in PRECISIONS:
        raise ValueError(f"train.precision={requested!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, "requested"
    found = hardware(device)
    if found:
        return "bf16", f"auto: bf16 matrix hardware ({found})"
    return "fp32", f"auto: no bf16 matrix hardware on {device.type} (bf16 would be emulated, slower)"


def configure(model: nn.Module, requested: str, device: torch.device, hardware=bf16_hardware) -> dict:
    """Set every qualifying layer's matmul precision; the record that goes into summary.json."""
    used, why = resolve(requested, device, hardware)
    found = _qualifying(model)
    layers = [name for name, _ in found]
    for name, divide_out in found:
        layer = model.get_submodule(name)
        layer.matmul_dtype = torch.bfloat16 if used == "bf16" else None
        layer.matmul_input_scale = divide_out
    return {"requested": requested, "used": used, "reason": why,
            "bf16_layers": layers if used == "bf16" else []}


_KERNELS: dict[bool, object] = {}


def _kernels(parallel: bool):
    """The Numba loops of the fused +-1 layer (compiled on first use, cached on disk); ``parallel``
    False where torch runs on one thread (see optim.shift_adamax)."""
    if parallel not in _KERNELS:
        import numba

        @numba.njit(parallel=parallel, cache=True, boundscheck=False)
        def sign_operands(latent, out_int8, out_bf16_bits, lo, hi):
            # sign(latent) (sign(0) = +1, NaN -1, as quant.sign_pm1) as int8 and as bf16 bits
            # (0x3F80 = +1.0, 0xBF80 = -1.0); the count of latents outside [lo, hi]
            outside = 0
            for i in numba.prange(latent.size):
                v = latent[i]
                positive = v >= 0
                out_int8[i] = 1 if positive else -1
                out_bf16_bits[i] = 16256 if positive else -16512
                outside += 0 if lo <= v <= hi else 1
            return outside

        @numba.njit(parallel=parallel, cache=True, boundscheck=False)
        def widen(bf16_bits, out_float32_bits):
            # a bf16 is the top half of the float32 of the same value
            for i in numba.prange(bf16_bits.size):
                out_float32_bits[i] = np.int32(bf16_bits[i]) << 16

        _KERNELS[parallel] = keeping_torch_threads(sign_operands), keeping_torch_threads(widen)
    return _KERNELS[parallel]


def _flat_numpy(t: torch.Tensor) -> np.ndarray:
    """The contiguous CPU tensor's memory as a flat numpy array (bf16 as its int16 bits)."""
    t = t.detach()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).view(-1).numpy()


def _fusable(latent: torch.Tensor) -> bool:
    return latent.device.type == "cpu" and latent.dtype == torch.float32 and latent.is_contiguous()


def sign_operands(latent: torch.Tensor, clip: float | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(sign(latent) as the forward's operand, the same as a bf16 tensor, whether every latent is
    within [-clip, clip]): one pass over the latent on CPU (int8 operand), torch ops elsewhere
    (bf16 operand, and False)."""
    if not _fusable(latent):
        w = sign_pm1(latent.detach()).to(torch.bfloat16)
        return w, w, False
    w8 = torch.empty(latent.shape, dtype=torch.int8)
    wb = torch.empty(latent.shape, dtype=torch.bfloat16)
    lo, hi = (math.inf, -math.inf) if clip is None else (-clip, clip)
    outside = _kernels(torch.get_num_threads() > 1)[0](_flat_numpy(latent), _flat_numpy(w8), _flat_numpy(wb), lo, hi)
    return w8, wb, outside == 0


def widen_to_float(grad_bf16: torch.Tensor) -> torch.Tensor:
    """``grad_bf16.float()``, one pass on CPU (torch's conversion is about 2x slower there)."""
    if grad_bf16.device.type != "cpu" or not grad_bf16.is_contiguous():
        return grad_bf16.float()
    out = torch.empty(grad_bf16.shape, dtype=torch.float32)
    _kernels(torch.get_num_threads() > 1)[1](_flat_numpy(grad_bf16), out.view(torch.int32).view(-1).numpy())
    return out


def exact_pm1_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` as float32 for operands with values in {0, +-1}, exact: an int8 GEMM with int32
    sums on CPU (``w`` int8 or any dtype, converted), a bf16 GEMM with an fp32 output on CUDA."""
    if x.is_cuda:
        return torch.mm(x.to(torch.bfloat16), w.to(torch.bfloat16).t(), out_dtype=torch.float32)
    if x.shape[1] < MIN_INT8_K:  # torch 2.13's CPU _int_mm returns garbage for K = 1; fp32 is exact too
        return torch.mm(x.float(), w.float().t())
    return torch._int_mm(x.to(torch.int8), w.to(torch.int8).t()).float()


class PlusMinusOneLinear(torch.autograd.Function):
    """``F.linear(x, sign(latent))`` for ``x`` in {0, +-scale} (2-D; ``scale`` None: 1) and a
    deterministic sign with the straight-through gradient cancelled where |latent| > clip (None:
    nowhere), as one node: the forward exact (bit-identical to fp32), the backward's matmuls in
    bf16 (the output gradient rounds). ``latent`` may also be the +-1 weight itself (``clip`` None)."""

    @staticmethod
    def forward(ctx, x, latent, clip=None, scale=None):
        w, wb, inside = sign_operands(latent, clip)
        xs = x if scale is None else x / scale
        out = exact_pm1_matmul(xs, w)
        # x itself in bf16 (exact: {0, +-scale}, scale a bf16 number), so the weight gradient needs
        # no factor
        ctx.save_for_backward(x.to(torch.bfloat16), wb, latent)
        ctx.clip, ctx.inside = clip, inside
        return out if scale is None else out.mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        xb, wb, latent = ctx.saved_tensors
        gb = grad.to(torch.bfloat16)
        grad_x = (gb @ wb).float() if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = widen_to_float(gb.t() @ xb)
            if ctx.clip is not None and not ctx.inside:  # a clipped latent is always inside
                grad_w = window_grad(grad_w, latent, -ctx.clip, ctx.clip)
        return grad_x, grad_w, None, None


def fuses_sign(weight_quantizer: nn.Module) -> bool:
    """The weight quantizer takes the deterministic sign now (BNN's ``sign``; a stochastic sign in
    eval), so the layer can binarize its latent inside its own matmul."""
    return getattr(weight_quantizer, "kind", None) == "sign" and not weight_quantizer.sampling()


def linear(x: torch.Tensor, latent: torch.Tensor, weight_quantizer: nn.Module, bias: torch.Tensor | None, dtype,
           input_scale: float | None = None) -> torch.Tensor:
    """The layer's ``F.linear(x, weight_quantizer(latent), bias)`` at its precision (``dtype`` None:
    fp32 as usual); ``input_scale``: the input is in {0, +-input_scale} (a training-mode dropout's
    output), not +-1."""
    # a weight quantizer swapped after configure() for one whose output is not +-1 (a robustness
    # distortion, say) takes fp32 too: the node below would binarize its output
    if dtype is None or x.dim() != 2 or not pm1_valued(weight_quantizer):
        return F.linear(x, weight_quantizer(latent), bias)
    if fuses_sign(weight_quantizer):
        out = PlusMinusOneLinear.apply(x, latent, weight_quantizer.clip, input_scale)
    else:
        out = PlusMinusOneLinear.apply(x, weight_quantizer(latent), None, input_scale)
    return out if bias is None else out + bias  # the sum is exact; adding the bias rounds once

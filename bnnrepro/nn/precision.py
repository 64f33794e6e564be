"""``train.precision``: bf16 matmuls for the layers whose operands are exactly +-1, fp32 elsewhere.

+-1 is exact in bf16 and so is every product; a dot product of K such terms is an integer, exact in
an fp32 sum up to 2**24. A bf16 matmul whose output is bf16, though, rounds that integer to 8
significant bits, so the forward here sums chunks of at most 256 terms (integers up to 256 are
exact in bf16) in bf16 and adds the chunks in fp32, or asks for an fp32 output where the backend
has one (CUDA: one matmul with an fp32 output). The forward output is then bit-identical to fp32's
(without a bias: F.linear's addmm may add a bias in another order). The backward's matmuls take the
real-valued output gradient in bf16 and round there, as mixed precision does.

A linear layer qualifies when its weight quantizer produces exactly +-1 and its input is exactly +-1:
its own input quantizer is a sign, or, in an ``nn.Sequential``, the module before it is a sign
(a dropout between them is allowed when it scales by a power of two, 1/(1-p) = 2 at BNN's p = 0.5:
inputs in {0, +-2} keep every chunk's sum exact; or by a c = 1/(1-p) with a short significand,
1.25 at p = 0.2, where fp32's own sums of +-c are exact: the layer then divides its input by c,
{0, +-c} -> {0, +-1} exactly, and multiplies the exact integer result by c, one exact product).
So BNN's hidden and output layers qualify, and its first layer (real-valued input) does not; conv
layers and DoReFa/QNN k-bit levels stay fp32 (their sums would need smaller chunks to stay exact).

``auto`` takes bf16 only where the hardware multiplies bf16 matrices natively (AMX or AVX512-BF16 on
CPU, compute capability 8.0+ on CUDA): elsewhere bf16 is emulated and slower than fp32.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

PRECISIONS = ("auto", "fp32", "bf16")
EXACT_CHUNK = 256  # |sum of <= 256 terms of +-1| <= 256: an integer bf16 holds exactly
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
    input times 1, a power of two (chunk sums stay exact as they are: None) or the factor of a
    dropout between the sign and the layer (see the module docstring)."""
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
                    power_of_two = significand_bits(scale) == 1
                    if power_of_two or _exact_sums(scale, m.in_features):
                        found.append((f"{seq_name}.{name}" if seq_name else name, None if power_of_two else scale))
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


def _exact_pm1_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` for +-1 operands with bf16 inputs and an exact fp32 result."""
    return _exact_bf16_matmul(x.to(torch.bfloat16), w.to(torch.bfloat16))


def _exact_bf16_matmul(xb: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    if xb.is_cuda:
        return torch.mm(xb, wb.t(), out_dtype=torch.float32)
    k = xb.shape[1]
    out = None
    for start in range(0, k, EXACT_CHUNK):
        part = torch.mm(xb[:, start:start + EXACT_CHUNK], wb[:, start:start + EXACT_CHUNK].t()).float()
        out = part if out is None else out.add_(part)
    return out


class Bf16PlusMinusOneLinear(torch.autograd.Function):
    """``F.linear(x, w)`` for +-1 ``w`` and ``x`` in {0, +-scale} (2-D ``x``; ``scale`` None: 1):
    forward exact (bit-identical to fp32), backward matmuls in bf16 (the output gradient rounds)."""

    @staticmethod
    def forward(ctx, x, w, scale=None):
        xb, wb = (x if scale is None else x / scale).to(torch.bfloat16), w.to(torch.bfloat16)
        ctx.save_for_backward(xb, wb)  # the backward's operands, converted once (and half the memory)
        ctx.scale = scale
        out = _exact_bf16_matmul(xb, wb)
        return out if scale is None else out.mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        xb, wb = ctx.saved_tensors
        gb = grad.to(torch.bfloat16)
        grad_x = (gb @ wb).float() if ctx.needs_input_grad[0] else None
        grad_w = (gb.t() @ xb).float() if ctx.needs_input_grad[1] else None
        if grad_w is not None and ctx.scale is not None:
            grad_w.mul_(ctx.scale)
        return grad_x, grad_w, None


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, dtype,
           input_scale: float | None = None) -> torch.Tensor:
    """The layer's matmul at its precision (``dtype`` None: fp32 as usual); ``input_scale``: the
    input is in {0, +-input_scale} (a training-mode dropout's output), not +-1."""
    if dtype is None or x.dim() != 2:
        return F.linear(x, w, bias)
    out = Bf16PlusMinusOneLinear.apply(x, w, input_scale)
    return out if bias is None else out + bias  # the sum is exact; adding the bias rounds once

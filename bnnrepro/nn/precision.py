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
inputs in {0, +-2} keep every chunk's sum exact). So BNN's hidden and output layers qualify, and its
first layer (real-valued input) does not; conv layers and DoReFa/QNN k-bit levels stay fp32 (their
sums would need smaller chunks to stay exact).

``auto`` takes bf16 only where the hardware multiplies bf16 matrices natively (AMX or AVX512-BF16 on
CPU, compute capability 8.0+ on CUDA): elsewhere bf16 is emulated and slower than fp32.
"""
from __future__ import annotations

import math
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


def _power_of_two_dropout(m: nn.Module) -> bool:
    if not isinstance(m, nn.Dropout):
        return False
    scale = 1.0 / (1.0 - m.p) if m.p < 1 else 0.0
    return m.p == 0 or (scale > 0 and math.log2(scale).is_integer())


def qualifying_layers(model: nn.Module) -> list[str]:
    """Names of the linear layers whose matmul operands are exactly +-1 (see the module docstring)."""
    found = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        pm1_in = False  # the value flowing into the next child is +-1 (times a power of two)
        for name, m in seq.named_children():
            if isinstance(m, nn.Linear) and hasattr(m, "weight_quantizer"):  # a QuantLinear
                if pm1_valued(m.weight_quantizer) and (pm1_valued(m.input_quantizer) or (
                        pm1_in and getattr(m.input_quantizer, "kind", None) == "identity")):
                    found.append(f"{seq_name}.{name}" if seq_name else name)
                pm1_in = False
            elif pm1_valued(m):
                pm1_in = True
            elif not (isinstance(m, nn.Flatten) or _power_of_two_dropout(m)):
                pm1_in = False
    return found


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
    layers = qualifying_layers(model)
    for name in layers:
        model.get_submodule(name).matmul_dtype = torch.bfloat16 if used == "bf16" else None
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
    """``F.linear(x, w)`` for +-1 ``x`` and ``w`` (2-D ``x``): forward exact (bit-identical to
    fp32), backward matmuls in bf16 (the output gradient rounds)."""

    @staticmethod
    def forward(ctx, x, w):
        xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
        ctx.save_for_backward(xb, wb)  # the backward's operands, converted once (and half the memory)
        return _exact_bf16_matmul(xb, wb)

    @staticmethod
    def backward(ctx, grad):
        xb, wb = ctx.saved_tensors
        gb = grad.to(torch.bfloat16)
        grad_x = (gb @ wb).float() if ctx.needs_input_grad[0] else None
        grad_w = (gb.t() @ xb).float() if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, dtype) -> torch.Tensor:
    """The layer's matmul at its precision (``dtype`` None: fp32 as usual)."""
    if dtype is None or x.dim() != 2:
        return F.linear(x, w, bias)
    out = Bf16PlusMinusOneLinear.apply(x, w)
    return out if bias is None else out + bias  # the sum is exact; adding the bias rounds once

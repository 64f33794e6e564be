"""The strongest torch paths on this CPU, the baselines ``bench`` times the packed kernels against.

fp32 alone flatters a binary kernel: on a CPU with bf16 matrix hardware (AVX512-BF16, AMX) torch's
bf16 matmuls run several times faster, and oneDNN/fbgemm int8 faster again (peers.md §7). So every
bench case is also timed

- in **bf16**: the fp32 inputs under ``torch.autocast("cpu", torch.bfloat16)``, the weights
  converted to bf16 once beforehand (as a deployed model holds them), only where
  :func:`~bnnrepro.nn.precision.bf16_hardware` finds bf16 hardware: elsewhere bf16 is emulated,
  slower than fp32, and no one's fastest path;
- in **int8**: linear layers by dynamic quantization (``quantize_dynamic``: weights int8 once,
  activations quantized per call, fp32 out); conv layers by static quantization (a quantize stub,
  the int8 conv calibrated on the benchmark's own input, a dequantize stub), since torch has no
  dynamic quantized conv. The engine is the fastest of those this build has, measured at start.

A path that does not exist here is ``None`` with the reason, never a silent fp32 stand-in. The
matmul peaks (:func:`matmul_peak`) are the ceilings the torch figures are read against, as the
popcount peak is the packed kernels'. :func:`frozen_float_copy` is the float model those paths run
(quantized weights computed once), :func:`random_bn` a timing subject's BatchNorm statistics.
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import precision

INT8_ENGINES = ("x86", "fbgemm", "onednn")  # qnnpack is the ARM engine (about 10x slower on x86)
ENGINE_PROBE = (64, 2048, 2048)  # M, K, N of the linear layer each engine is timed on
MATMUL_N = 2048  # the matmul-peak measurement multiplies two MATMUL_N x MATMUL_N matrices


@contextlib.contextmanager
def _quiet():
    """torch.ao.quantization warns on import and use that it is deprecated: the warning is known
    (it is still torch's only int8 CPU path in this build) and would bury the benchmark's output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def bf16_unavailable() -> str | None:
    """Why there is no bf16 path on this CPU (None: there is one)."""
    if precision.bf16_hardware(torch.device("cpu")):
        return None
    return "no bf16 matrix hardware (AMX or AVX512-BF16): bf16 would be emulated, slower than fp32"


def matmul_peak(dtype: torch.dtype, n: int | None = None, repeats: int = 3) -> float:
    """GFLOP/s of the best of ``repeats`` ``n x n`` torch matmuls in ``dtype`` (after one warm-up)."""
    n = n or MATMUL_N
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(n, n, generator=g).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def _dynamic_int8(module: nn.Module) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    with _quiet():
        return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)


def _timed_ms(fn, calls: int = 5) -> float:
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2]


def supported_engines() -> list[str]:
    return list(torch.backends.quantized.supported_engines)


def choose_int8_engine(probe: tuple[int, int, int] | None = None) -> tuple[str | None, dict, str | None]:
    """(the fastest int8 engine, ms of each engine on the probe layer, why none when None).
    Sets ``torch.backends.quantized.engine`` to the one chosen."""
    m, k, n = probe or ENGINE_PROBE
    supported = [e for e in INT8_ENGINES if e in supported_engines()]
    if not supported:
        return None, {}, (f"torch {torch.__version__} has none of the int8 engines {', '.join(INT8_ENGINES)}")
    x = torch.randn(m, k)
    lin = nn.Linear(k, n, bias=False).eval()
    timings, errors = {}, {}
    for engine in supported:
        try:
            torch.backends.quantized.engine = engine
            q = _dynamic_int8(nn.Sequential(lin))
            with torch.no_grad():
                timings[engine] = _timed_ms(lambda: q(x))
        except (RuntimeError, NotImplementedError) as err:
            errors[engine] = str(err).splitlines()[0]
    if not timings:
        return None, {}, "no int8 engine runs here: " + "; ".join(f"{e}: {m}" for e, m in errors.items())
    best = min(timings, key=timings.get)
    torch.backends.quantized.engine = best
    return best, timings, None


class _StaticInt8(nn.Module):
    """A float module between a quantize and a dequantize stub: fp32 in and out, int8 inside."""

    def __init__(self, module: nn.Module):
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.module, self.dequant = QuantStub(), module, DeQuantStub()

    def forward(self, x):
        return self.dequant(self.module(self.quant(x)))


def _static_int8_convs(model: nn.Module, calibrate) -> nn.Module:
    """``model`` (a copy) with every ``nn.Conv2d`` an int8 conv calibrated by ``calibrate(model)``."""
    from torch.ao.quantization import QConfig, convert, default_per_channel_weight_observer, prepare
    from torch.ao.quantization.observer import MinMaxObserver

    # the engine's default qconfig but a min/max activation observer: its histogram observer spends
    # about a second per layer searching for a clipping range, and a min/max range is no worse here
    # (the activations of a binary net are +-1; the first layer's pixels are uniform in [-1, 1])
    engine = torch.backends.quantized.engine
    qconfig = QConfig(activation=MinMaxObserver.with_args(reduce_range=engine in ("x86", "fbgemm")),
                      weight=default_per_channel_weight_observer)
    model = copy.deepcopy(model).eval()
    wrapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                w = _StaticInt8(child)
                w.qconfig = qconfig
                setattr(parent, name, w)
                wrapped.append(w)
    with _quiet():
        for w in wrapped:
            prepare(w, inplace=True)
        with torch.no_grad():
            calibrate(model)
        for w in wrapped:
            convert(w, inplace=True)
    return model


class Baselines:
    """The bf16 and int8 torch paths of one bench run: each ``*_path`` returns ``(fn, None)``, a
    no-argument callable computing the same layer or model as the fp32 call, or ``(None, why)``."""

    def __init__(self, probe: tuple[int, int, int] | None = None):
        self.bf16_reason = bf16_unavailable()
        self.bf16_hardware = precision.bf16_hardware(torch.device("cpu"))
        self.int8_engine, self.int8_engine_ms, self.int8_reason = choose_int8_engine(probe)

    def describe(self) -> dict:
        return {"bf16": {"hardware": self.bf16_hardware, "null_reason": self.bf16_reason},
                "int8": {"engine": self.int8_engine, "engine_probe_ms": self.int8_engine_ms,
                         "null_reason": self.int8_reason,
                         "method": "linear: quantize_dynamic (qint8 weights, per-call activation scale); "
                                   "conv: static quantization calibrated on the benchmark input"}}

    def _built(self, reason, build):
        if reason:
            return None, reason
        try:
            return build(), None
        except (RuntimeError, NotImplementedError, AssertionError) as err:
            return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"

    # ---- layers

    def bf16_linear(self, x: torch.Tensor, w: torch.Tensor):
        def build():
            wb = w.to(torch.bfloat16)

            def run():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return F.linear(x, wb)
            return run
        return self._built(self.bf16_reason, build)

    def int8_linear(self, x: torch.Tensor, w: torch.Tensor):
        def build():
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight = nn.Parameter(w.clone(), requires_grad=False)
            q = _dynamic_int8(nn.Sequential(lin).eval())
            return lambda: q(x)
        return self._built(self.int8_reason, build)

    def bf16_conv(self, x: torch.Tensor, w: torch.Tensor, padding: int):
        def build():
            wb = w.to(torch.bfloat16)

            def run():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return F.conv2d(x, wb, padding=padding)
            return run
        return self._built(self.bf16_reason, build)

    def int8_conv(self, x: torch.Tensor, w: torch.Tensor, padding: int):
        def build():
            conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], padding=padding, bias=False)
            conv.weight = nn.Parameter(w.clone(), requires_grad=False)
            q = _static_int8_convs(nn.Sequential(conv), lambda m: m(x))
            return lambda: q(x)
        return self._built(self.int8_reason, build)

    # ---- whole models (the frozen float copy: plain nn.Linear / nn.Conv2d)

    def bf16_model(self, frozen: nn.Module, call):
        """``call(model)`` runs the model on the benchmark input."""
        def build():
            model = copy.deepcopy(frozen)
            for m in model.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    m.to(torch.bfloat16)  # BatchNorm stays fp32 (autocast leaves it so)

            def run():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return call(model)
            return run
        return self._built(self.bf16_reason, build)

    def int8_model(self, frozen: nn.Module, call):
        def build():
            model = _dynamic_int8(_static_int8_convs(frozen, call))
            return lambda: call(model)
        return self._built(self.int8_reason, build)


# ---------------------------------------------------------------- the models the benchmarks time

def random_bn(model, seed: int = 0):
    """``model`` in eval mode with random BatchNorm statistics and affine parameters (a timing
    subject: BN folded into thresholds then costs what a trained net's does)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 40)
            m.running_var.copy_(torch.rand(n, generator=g) * 50 + 1)
            m.weight.data.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def frozen_float_copy(model):
    """The float model with its +-1 weights computed once: plain nn.Linear/nn.Conv2d layers. The
    fairer float baseline (the model's own eval re-binarizes its latent weights every call)."""
    frozen = copy.deepcopy(model).eval()
    for parent in list(frozen.modules()):
        for cname, child in list(parent.named_children()):
            if not hasattr(child, "quantized_weight"):
                continue
            with torch.no_grad():
                w = child.quantized_weight().detach().clone()
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                child.padding, child.dilation, child.groups, child.bias is not None)
            else:
                new = nn.Linear(child.in_features, child.out_features, child.bias is not None)
            new.weight = nn.Parameter(w, requires_grad=False)
            if child.bias is not None:
                new.bias = nn.Parameter(child.bias.detach().clone(), requires_grad=False)
            q = getattr(child, "input_quantizer", None)
            setattr(parent, cname, new if q is None or getattr(q, "precision", 32) == 32 else nn.Sequential(q, new))
    return frozen.eval()

"""Run a DoReFa-style multi-bit net (dense and convolutional) with the bit-serial kernels (``multibit``).

``MultiBitModel.from_torch(model, input_shape)`` walks an ``nn.Sequential`` block by block (a block
is one Linear/Conv2d and the modules up to the next one) into stages:

* the first block, whose input is real pixels (``data.scale_pm1``), and the output block when its
  weights or input are float (DoReFa keeps the first and last layers float) run as **float stages**:
  the torch modules themselves, so they compute what torch computes;
* every other block is a **bit-serial stage**: its input is a k-bit activation code (the previous
  block ended with a quantizing ``DoReFaActivation``), its weights m-bit DoReFa codes; the exact
  integer pre-activation comes from ``multibit.bitserial_gemm``; BatchNorm + the next
  ``quantize_k(clip(., 0, 1))`` are folded into ``2**k - 1`` integer thresholds per channel
  (``multibit.fold_levels``), or, for the block feeding a float output layer (DoReFa's clipped but
  unquantized last input), evaluated in float32 by torch's modules on ``float32(y * scale)``.
  Convolutions are im2col of the codes (zero padding is code 0, DoReFa's value 0) into the same
  kernel; a max-pool between BatchNorm and the activation runs on the output codes (max commutes
  with the non-decreasing staircase).

Torch's own float pre-activation of a bit-serial layer is a float32 matmul of ``c/n_a`` and
``s_w (2u - n_w)``, i.e. the exact value plus rounding; the engine uses the exact value, so a code
can differ from torch's where torch's value lands within rounding distance of a staircase step
(``bnnrepro compare`` counts these per layer). Anything else fails with :class:`PackError`
naming the layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from . import fold, multibit
from .walk import _is_monotone_elementwise, _is_skip, _kind, _precision, check_input
from ..data.preprocess import scale_pm1
from ..errors import PackError
from ..models import stages as model_stages

_DOREFA_KINDS = ("dorefa_activation", "dorefa_weight")


def uses_multibit(model: nn.Module) -> bool:
    """Whether ``model`` has DoReFa quantizers, i.e. is this engine's (not the +-1 BNN engine's)."""
    return any(_kind(m) in _DOREFA_KINDS for m in model.modules())


def _is_compute(m) -> bool:
    return isinstance(m, (nn.Linear, nn.Conv2d))


def _code_bits(m) -> int | None:
    """Bits of a quantizing, monotone DoReFa activation (``quantize_k(clip(x, 0, 1))``), else None."""
    if _kind(m) != "dorefa_activation" or not getattr(m, "quantize", False):
        return None
    bits = _precision(m)
    return bits if bits is not None and 1 <= bits <= 8 and m.nonlin == "clip" else None


def _float_stage_bits(m) -> int | None:
    """Bits of any quantizing DoReFa activation closing a float stage (torch computes it, so any nonlin)."""
    if _kind(m) != "dorefa_activation" or not getattr(m, "quantize", False):
        return None
    bits = _precision(m)
    return bits if bits is not None and 1 <= bits <= 8 else None


def _fail(name, m, why) -> PackError:
    return PackError(f"cannot pack layer {name} ({type(m).__name__}): {why}")


@dataclass
class FloatStage:
    """Torch modules run as they are; ``out_bits``: the output is a code of that many bits."""

    name: str
    modules: list  # [(name, module)]
    out_bits: int | None = None
    kind: str = "float"

    @property
    def names(self) -> list:
        return [n for n, _ in self.modules]

    @torch.no_grad()
    def __call__(self, value, record: dict | None = None):
        v = value if isinstance(value, torch.Tensor) else _codes_to_float(*value)
        for n, m in self.modules:
            v = m(v)
            if record is not None and n == self.name:
                record["pre"] = v.to(torch.float64)
        if self.out_bits is None:
            return v
        return _float_to_codes(v, self.out_bits), self.out_bits


@dataclass
class BitSerialStage:
    """A dense layer on k-bit codes: integer pre-activations, then thresholds (codes out) or the
    float tail (``tail``: bias, BatchNorm, clip, ... on ``float32(y * scale)``)."""

    name: str
    weights: multibit.MultiBitWeights
    in_bits: int
    scale: float  # value of one integer step of y: s_w / n_a
    names: list = field(default_factory=list)
    thresholds: multibit.LevelThresholds | None = None
    out_bits: int | None = None
    tail: object = None  # callable float tensor -> float tensor, when thresholds is None
    # what ``tail`` computes, for the .bnn file: the layer's bias, then these (name, module) pairs
    # (fold.chain_fn); None: a tail made some other way, which the file cannot describe
    chain: list | None = None
    bias: torch.Tensor | None = None
    kind: str = "dense"
    conv: tuple | None = None  # (kh, kw, stride, pad) of a convolution
    pool: nn.Module | None = None  # a max-pool between BatchNorm and the activation, run on the codes
    flatten: bool = False  # codes out flattened to [N, -1] (an nn.Flatten after the activation)

    def __call__(self, value, record: dict | None = None):
        if isinstance(value, torch.Tensor) or value[1] != self.in_bits:
            raise ValueError(f"layer {self.name}: expects {self.in_bits}-bit codes")
        codes = value[0]
        if self.conv is not None:
            y4 = multibit.bitserial_conv2d(codes, self.weights, *self.conv, self.in_bits)  # [N, Ho, Wo, O]
            y = y4.reshape(-1, self.weights.n)
        else:
            y = multibit.bitserial_gemm(multibit.pack_code_planes(codes.reshape(len(codes), -1), self.in_bits),
                                        self.weights)

        def torch_layout(a):  # channels-last rows -> [N, O] or [N, O, Ho, Wo]
            return a if self.conv is None else np.ascontiguousarray(a.reshape(y4.shape).transpose(0, 3, 1, 2))

        if record is not None:
            record["pre"] = torch.from_numpy(torch_layout(y.astype(np.float64) * self.scale))
        if self.thresholds is not None:
            out = torch_layout(self.thresholds.apply(y))
            if self.pool is not None:
                # max commutes with the non-decreasing staircase: the max of the codes is the code of the max
                with torch.no_grad():
                    out = self.pool(torch.from_numpy(out).to(torch.float32)).to(torch.uint8).numpy()
            return (out.reshape(len(out), -1) if self.flatten else out), self.out_bits
        with torch.no_grad():
            return self.tail(torch.from_numpy(torch_layout((y * self.scale).astype(np.float32))))


def _float_to_codes(v: torch.Tensor, bits: int) -> np.ndarray:
    # DoReFa's output is round(n x) / n in float32; times n it rounds back to the integer exactly
    return torch.round(v * float(2 ** bits - 1)).to(torch.uint8).numpy()


def _codes_to_float(codes: np.ndarray, bits: int) -> torch.Tensor:
    # float32(c) / float32(n): the value torch's DoReFaActivation holds (one correctly rounded division)
    return torch.from_numpy(codes).to(torch.float32).div_(float(2 ** bits - 1))


def _blocks(mods):
    """``(prefix, [[(name, module), ...], ...])``: modules before the first compute layer, then blocks."""
    prefix, blocks = [], []
    for name, m in mods:
        if _is_compute(m):
            blocks.append([(name, m)])
        elif blocks:
            blocks[-1].append((name, m))
        else:
            prefix.append((name, m))
    return prefix, blocks


def _weights(name, m) -> multibit.MultiBitWeights:
    q = getattr(m, "weight_quantizer", None)
    bits = _precision(q)
    if bits is None or bits >= 32:
        raise _fail(name, m, f"float weights (weight quantizer {type(q).__name__}, precision {bits}); only the "
                             f"first and the output layer may be float")
    if bits > 1 and _kind(q) != "dorefa_weight":  # any 1-bit weight is +-E, checked on the values
        raise _fail(name, m, f"{bits}-bit weights of kind {_kind(q)!r}; the bit-serial engine takes DoReFa's grid")
    with torch.no_grad():
        w = m.quantized_weight().detach().to(torch.float32).numpy()
    w = w.reshape(len(w), -1)  # a convolution's [O, C, kh, kw]: torch's tap order, as im2col_codes
    try:
        return multibit.MultiBitWeights.from_dorefa(w, bits)
    except ValueError as err:
        raise _fail(name, m, str(err)) from None


def _bitserial(block, in_bits: int, last: bool) -> BitSerialStage:
    name, m = block[0]
    conv = None
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        s, p = set(m.stride), set(m.padding) if not isinstance(m.padding, str) else {None}
        if m.groups != 1 or set(m.dilation) != {1} or m.padding_mode != "zeros" or len(s) != 1 or len(p) != 1 \
                or None in p:
            raise _fail(name, m, "grouped, dilated, non-zero-padded or unevenly strided/padded convolution")
        conv = (kh, kw, s.pop(), p.pop())
    q = getattr(m, "input_quantizer", None)
    if q is not None and _precision(q) != 32:
        raise _fail(name, m, f"input quantizer {type(q).__name__} (precision {_precision(q)}) is not supported")
    w = _weights(name, m)
    stage = BitSerialStage(name, w, in_bits, w.scale / (2 ** in_bits - 1), names=[n for n, _ in block], conv=conv,
                           kind="dense" if conv is None else "conv")
    chain, act = [], None
    for nm, mm in block[1:]:
        if _is_skip(mm):
            continue
        if isinstance(mm, nn.Flatten):
            if act is None:
                chain.append((nm, mm))  # a float output: flattened by the tail
            else:
                stage.flatten = True
            continue
        if act is not None:
            raise _fail(nm, mm, "modules after the activation quantizer are not supported")
        if isinstance(mm, nn.MaxPool2d):
            if stage.pool is not None or not chain:
                raise _fail(nm, mm, "a max-pool must sit between BatchNorm and the activation (one per block)")
            stage.pool = mm
        elif stage.pool is not None and not _code_bits(mm):
            raise _fail(nm, mm, "only the activation quantizer may follow the max-pool")
        elif _is_monotone_elementwise(mm):
            chain.append((nm, mm))
        elif _code_bits(mm) is not None:
            act = mm
            stage.out_bits = _code_bits(mm)
        elif _kind(mm) == "dorefa_activation" and mm.nonlin == "clip" and _precision(mm) == 32 and not mm.quantize:
            chain.append((nm, mm))  # clip(x, 0, 1) unquantized: elementwise, stays float
        else:
            why = "not supported by the multi-bit packed engine"
            if _kind(mm) == "dorefa_activation":
                why = (f"DoReFa activation (precision {_precision(mm)}, nonlin={mm.nonlin}) is not a monotone "
                       f"staircase of 1 to 8 bits")
            raise _fail(nm, mm, why)
    bias = m.bias.detach() if m.bias is not None else None
    if act is None:
        if stage.pool is not None:
            raise _fail(name, m, "a max-pool before a float output is not supported")
        if not last and not chain:
            raise _fail(name, m, "no activation quantizer follows")
        stage.chain, stage.bias = chain, bias
        stage.tail = fold.chain_fn([mm for _, mm in chain], bias)
        return stage
    levels = 2 ** stage.out_bits - 1
    path = fold.chain_fn([mm for _, mm in chain], bias)
    span = w.k * w.levels * (2 ** in_bits - 1)
    stage.thresholds = multibit.fold_levels(lambda v: torch.round(act(path(v)) * levels), w.n, levels,
                                            -span, span, stage.scale, () if conv is None else (1, 1))
    if stage.thresholds.inconsistent:
        raise _fail(name, m, "the per-channel chain is not elementwise")
    return stage


def build_stages(model: nn.Module) -> list:
    if not isinstance(model, nn.Sequential):
        raise PackError(f"the packed engine walks an nn.Sequential; got {type(model).__name__}")
    model.eval()
    prefix, blocks = _blocks(model_stages(model))
    if not blocks:
        raise PackError("the model has no Linear/QuantLinear layer")
    out = []
    for b, block in enumerate(blocks):
        name, m = block[0]
        last = b == len(blocks) - 1
        prev = out[-1] if out else None
        in_bits = getattr(prev, "out_bits", None)
        floatish = (getattr(m, "weight_quantizer", None) is None or _precision(m.weight_quantizer) == 32)
        if b == 0 or (last and (in_bits is None or floatish)):
            mods = (prefix if b == 0 else []) + block
            bits = None
            for nm, mm in reversed(block):
                if not _is_skip(mm):
                    bits = _float_stage_bits(mm)
                    break
            if last and bits is not None:
                raise _fail(name, m, "the output layer ends with an activation quantizer; expected logits")
            out.append(FloatStage(name, mods, bits))
            continue
        if in_bits is None:
            raise _fail(name, m, f"its input is float (from layer {prev.name}); a hidden layer must take the "
                                 f"codes of a quantizing DoReFa activation")
        stage = _bitserial(block, in_bits, last)
        if last and stage.thresholds is not None:
            raise _fail(name, m, "the output layer ends with an activation quantizer; expected logits")
        out.append(stage)
    return out


class MultiBitModel:
    """A DoReFa-style net on bit-serial kernels: ``forward(x_uint8) -> logits`` (float32 ``[N, classes]``)."""

    def __init__(self, stages: list, input_shape: tuple, meta: dict | None = None):
        self.stages = stages
        self.input_shape = tuple(input_shape)
        self.meta = dict(meta or {})

    @classmethod
    def from_torch(cls, model: nn.Module, input_shape: tuple, meta: dict | None = None) -> "MultiBitModel":
        return cls(build_stages(model), input_shape, meta)

    def _check_input(self, x) -> np.ndarray:
        return check_input(x, self.input_shape)

    def run(self, x_uint8: np.ndarray, records: list | None = None) -> torch.Tensor:
        """Logits of one batch; ``records`` (a list) gets per stage ``{"pre": ..., "out": ...}``."""
        v = scale_pm1(torch.from_numpy(x_uint8))
        for st in self.stages:
            rec = {} if records is not None else None
            v = st(v, rec)
            if rec is not None:
                rec["out"] = v
                records.append(rec)
        return v

    def forward(self, x_uint8, batch_size: int = 256) -> torch.Tensor:
        x = self._check_input(x_uint8)
        outs = [self.run(x[s:s + batch_size]) for s in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.empty(0, 0)

    __call__ = forward

    def predict(self, x_uint8, batch_size: int = 256) -> np.ndarray:
        return self.forward(x_uint8, batch_size).argmax(1).numpy()

    @torch.no_grad()
    def compare(self, model: nn.Module, x_uint8: np.ndarray, batch_size: int = 500) -> list[dict]:
        """``commands.compare``'s rows for this engine: per stage the pre-activations (exact values
        against torch's float32 output), the outputs (codes exactly; float outputs, which carry
        torch's float32 rounding of a bit-serial layer's exact value, differ when ``> 1e-4`` apart,
        as pre-activations), and the output given torch's own input (teacher forcing)."""
        model.eval()
        modules = dict(model.named_modules())
        x_uint8 = self._check_input(x_uint8)
        rows = [dict(layer=st.name, kind=st.kind, n_pre=0, pre_mismatch=0, pre_maxdiff=0.0, n_out=0,
                     out_mismatch=0, forced_mismatch=0) for st in self.stages]
        agree = 0
        for s in range(0, len(x_uint8), batch_size):
            xb = x_uint8[s:s + batch_size]
            seen = {}
            want = {n for st in self.stages for n in (st.name, st.names[-1])}
            hooks = [modules[n].register_forward_hook(lambda m_, i_, o, n=n: seen.__setitem__(n, o.detach()))
                     for n in want]
            try:
                logits_t = model(scale_pm1(torch.from_numpy(xb)))
            finally:
                for h in hooks:
                    h.remove()
            records: list = []
            self.run(xb, records)
            for i, (st, rec, r) in enumerate(zip(self.stages, records, rows)):
                diff = (rec["pre"] - seen[st.name].to(torch.float64)).abs()
                r["n_pre"] += diff.numel()
                r["pre_mismatch"] += int((diff > 1e-4).sum())
                r["pre_maxdiff"] = max(r["pre_maxdiff"], float(diff.max()) if diff.numel() else 0.0)
                torch_in = scale_pm1(torch.from_numpy(xb)) if i == 0 else _as_value(seen[self.stages[i - 1].names[-1]],
                                                                                   self.stages[i - 1])
                forced = st(torch_in)
                torch_out = _as_value(seen[st.names[-1]], st)
                mine = _flat(rec["out"])
                r["n_out"] += mine.size
                r["out_mismatch"] += _differ(mine, _flat(torch_out))
                r["forced_mismatch"] += _differ(_flat(forced), _flat(torch_out))
            agree += int((records[-1]["out"].argmax(1) == logits_t.argmax(1)).sum())
        for r in rows:
            r["n_images"] = len(x_uint8)
        rows.append(dict(layer="predictions", kind="", n_out=len(x_uint8), out_mismatch=len(x_uint8) - agree))
        return rows

    def weight_bytes(self) -> int:
        return sum(st.weights.planes.bits.nbytes for st in self.stages if isinstance(st, BitSerialStage))


def _as_value(t: torch.Tensor, stage):
    """A torch activation as the stage after ``stage`` receives it (codes when ``stage`` makes codes)."""
    return (_float_to_codes(t, stage.out_bits), stage.out_bits) if stage.out_bits is not None else t


def _differ(mine: np.ndarray, theirs: np.ndarray) -> int:
    if mine.dtype == np.uint8:
        return int((mine != theirs).sum())
    return int((np.abs(mine.astype(np.float64) - theirs.astype(np.float64)) > 1e-4).sum())


def _flat(v) -> np.ndarray:
    return (v[0] if isinstance(v, tuple) else v.numpy()).reshape(-1)

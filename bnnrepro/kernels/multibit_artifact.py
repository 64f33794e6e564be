"""The ``.bnn`` file of the multi-bit (bit-serial) engine: a :class:`MultiBitModel` saved and loaded.

The same container as the binary engine's (``artifact``: an ``.npz`` of numeric arrays read with
``allow_pickle=False``, a JSON header, the content hash ``sha256``), told apart by the header field
``"engine": "multibit"`` (a binary file has no ``engine`` field). The header lists the stages:

* a **bit-serial stage** (``"type": "bitserial"``) stores its weight codes as the bit-planes the
  kernels compute with (``s<i>.planes``: uint64 ``[w_bits * n, ceil(k / 64)]``, row ``j * n + o`` is
  bit ``j`` of output ``o``'s codes, bit 1 = code bit 0), ``w_scale`` (the value of ``2u - n_w`` is
  ``w_scale * (2u - n_w)``), the convolution geometry, the max-pool on the codes, and either the
  folded level thresholds (``s<i>.t`` ``[n, 2**out_bits - 1]`` in the narrowest of int16, int32,
  int64 that holds them, the dtype's minimum standing for "never", ``s<i>.flip`` packed bits) or
  the float tail (feeding a float output layer): the layer's bias and its elementwise chain, as
  module descriptions;
* a **float stage** (``"type": "float"``) stores its torch modules as descriptions (:data:`MODULES`:
  type, hyper-parameters) and their float32 arrays (``s<i>.m<j>.<array>``); a quantized layer's
  weight is stored as the float32 tensor its forward computes with. Load rebuilds torch modules
  that compute what the originals compute.

Save refuses (:class:`PackError` naming the layer and its module type) anything the format cannot
describe. :func:`check` validates every header field and propagates the shapes from
``input_shape`` through every module and stage, so each array is checked against the shape the
header implies before anything is built.
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch
import torch.nn as nn

from ..errors import PackError
from ..nn import QuantConv2d, QuantLinear, ShiftBatchNorm
from ..quant import DoReFaActivation
from . import fold, multibit
from .packed_file import FORMAT, INPUT, VERSION, check_arrays, check_common, is_int, need_int, need_keys, need_str
from .bitpack import unpack, words
from .multibit_engine import BitSerialStage, FloatStage, MultiBitModel
from .tiles import NEVER
from .walk import _is_skip, _kind, _precision

THRESHOLD_DTYPES = (np.int16, np.int32, np.int64)


def narrow_thresholds(t: np.ndarray) -> np.ndarray:
    """Level thresholds in the narrowest of :data:`THRESHOLD_DTYPES` that holds every reachable one,
    the never-reached ``tiles.NEVER`` stored as that dtype's minimum (a threshold is at least the
    pre-activation's minimum + 1, so the minimum is free)."""
    t = np.asarray(t, np.int64)
    live = t[t != NEVER]
    for dtype in THRESHOLD_DTYPES:
        info = np.iinfo(dtype)
        if live.size == 0 or (live.min() > info.min and live.max() <= info.max):
            return np.where(t == NEVER, info.min, t).astype(dtype)
    raise AssertionError("int64 holds every threshold")


def widen_thresholds(t: np.ndarray) -> np.ndarray:
    """The int64 thresholds the kernels take, from :func:`narrow_thresholds`' array."""
    return np.ascontiguousarray(np.where(t == np.iinfo(t.dtype).min, NEVER, t.astype(np.int64)), np.int64)

ENGINE = "multibit"
CODE_ENCODING = ("activation code c of k bits: value c / (2**k - 1); weight code u of m bits: value "
                 "w_scale * (2u - (2**m - 1)); planes row j*n + o: bit j of output o's codes, bit 1 = code bit 0")
HEADER_KEYS = {"format", "version", "engine", "input_shape", "input", "code_encoding", "stages", "meta"}
FLOAT_KEYS = {"type", "name", "out_bits", "modules"}
BITSERIAL_KEYS = {"type", "name", "names", "in_bits", "w_bits", "w_scale", "n", "k", "conv", "pool", "flatten",
                  "out_bits", "tail"}
# what the engine puts in a float tail (multibit_engine._bitserial): elementwise modules and a flatten
TAIL_TYPES = ("batchnorm1d", "batchnorm2d", "shift_batchnorm", "hardtanh", "dorefa_activation", "flatten")


# ---------------------------------------------------------------- field checks

def _bool(v, where: str) -> bool:
    if not isinstance(v, bool):
        raise PackError(f"{where}: expected true or false, got {v!r}")
    return v


def _number(v, where: str, lo: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (lo is not None and v < lo):
        raise PackError(f"{where}: expected a finite number{'' if lo is None else f' >= {lo}'}, got {v!r}")
    return v


def _bits(v, where: str, hi: int = 8, none: bool = False) -> int | None:
    if none and v is None:
        return None
    if not is_int(v) or not 1 <= v <= hi:
        raise PackError(f"{where}: expected an int from 1 to {hi}{' or null' if none else ''}, got {v!r}")
    return v


def _pair(v, where: str, lo: int = 1) -> tuple:
    if not isinstance(v, list) or len(v) != 2 or not all(is_int(x) and x >= lo for x in v):
        raise PackError(f"{where}: expected [int, int] (each >= {lo}), got {v!r}")
    return tuple(v)


def _choice(*options):
    def check(v, where):
        if v not in options:
            raise PackError(f"{where}: expected one of {list(options)}, got {v!r}")
        return v

    return check


def _dim(v, where: str) -> int:
    if not is_int(v):
        raise PackError(f"{where}: expected an int, got {v!r}")
    return v


_pos = need_int
_eps = lambda v, where: _number(v, where, lo=0)  # noqa: E731
_nonneg_pair = lambda v, where: _pair(v, where, lo=0)  # noqa: E731

# each module type: its fields and their checks (besides "type" and, in a list of modules, "name")
MODULES = {
    "identity": {},  # nn.Identity, nn.Dropout (eval), a 32-bit identity quantizer
    "linear": {"in_features": _pos, "out_features": _pos, "bias": _bool},
    "conv2d": {"in_channels": _pos, "out_channels": _pos, "kernel_size": _pair, "stride": _pair,
               "padding": _nonneg_pair, "dilation": _pair, "groups": _pos, "bias": _bool},
    "batchnorm1d": {"num_features": _pos, "eps": _eps, "affine": _bool},
    "batchnorm2d": {"num_features": _pos, "eps": _eps, "affine": _bool},
    "shift_batchnorm": {"num_features": _pos, "eps": _eps, "affine": _bool},
    "dorefa_activation": {"bits": lambda v, w: _bits(v, w, hi=32), "nonlin": _choice("clip", "cabs"),
                          "quantize": _bool},
    "hardtanh": {"min_val": _number, "max_val": _number},
    "relu": {},
    "flatten": {"start_dim": _dim, "end_dim": _dim},
    "maxpool2d": {"kernel_size": _pair, "stride": _pair, "padding": _nonneg_pair, "dilation": _pair,
                  "ceil_mode": _bool},
}


# ---------------------------------------------------------------- save: describing the model

def _fail(name, m, why: str) -> PackError:
    return PackError(f"cannot save layer {name} ({type(m).__name__}) to a .bnn file: {why}")


def _f32(name, m, t: torch.Tensor) -> np.ndarray:
    if t.dtype != torch.float32:
        raise _fail(name, m, f"{t.dtype} parameters (the file stores float32 ones)")
    return t.detach().cpu().numpy().copy()


def _pairs(v) -> list:
    return [int(x) for x in v] if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _effective_weight(name, m) -> torch.Tensor:
    """The weight ``m``'s forward computes with: a QuantLayer's quantized weight, on an unquantized input."""
    if not hasattr(m, "weight_quantizer"):
        return m.weight
    iq, gq = m.input_quantizer, m.grad_quantizer
    if _kind(iq) != "identity" or _precision(iq) != 32:
        raise _fail(name, m, f"input quantizer {type(iq).__name__} (precision {_precision(iq)}); a float stage's "
                             f"layer must take its input as it is")
    if _kind(gq) not in ("identity", "gradient"):  # a gradient quantizer is the identity in the forward
        raise _fail(name, m, f"output quantizer {type(gq).__name__} of kind {_kind(gq)!r}")
    if getattr(m, "matmul_dtype", None) is not None:
        raise _fail(name, m, f"matmul_dtype={m.matmul_dtype} (the file's linear layers compute in float32)")
    with torch.no_grad():
        return m.quantized_weight()


def describe_module(name, m, named: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """``(description, {array name: float32 array})`` of one torch module (eval mode), or PackError."""
    d = {"name": name} if named else {}
    t = type(m)  # exact types: a subclass may compute something else
    if _is_skip(m):
        return {**d, "type": "identity"}, {}
    if t in (nn.Linear, QuantLinear):
        arrays = {"weight": _f32(name, m, _effective_weight(name, m))}
        if m.bias is not None:
            arrays["bias"] = _f32(name, m, m.bias)
        return {**d, "type": "linear", "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}, arrays
    if t in (nn.Conv2d, QuantConv2d):
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise _fail(name, m, f"padding {m.padding!r} / padding_mode {m.padding_mode!r} (the file takes zero "
                                 f"padding given as integers)")
        arrays = {"weight": _f32(name, m, _effective_weight(name, m))}
        if m.bias is not None:
            arrays["bias"] = _f32(name, m, m.bias)
        return {**d, "type": "conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": _pairs(m.kernel_size), "stride": _pairs(m.stride), "padding": _pairs(m.padding),
                "dilation": _pairs(m.dilation), "groups": m.groups, "bias": m.bias is not None}, arrays
    if t in (nn.BatchNorm1d, nn.BatchNorm2d, ShiftBatchNorm):
        if not m.track_running_stats or getattr(m, "running_mean", None) is None:
            raise _fail(name, m, "no running statistics (it normalises with each batch's own)")
        keys = ("running_mean", "running_invstd", "weight", "bias") if t is ShiftBatchNorm else \
            ("running_mean", "running_var") + (("weight", "bias") if m.affine else ())
        kind = {nn.BatchNorm1d: "batchnorm1d", nn.BatchNorm2d: "batchnorm2d"}.get(t, "shift_batchnorm")
        return ({**d, "type": kind, "num_features": m.num_features, "eps": float(m.eps), "affine": bool(m.affine)},
                {k: _f32(name, m, getattr(m, k)) for k in keys})
    if t is DoReFaActivation:
        return {**d, "type": "dorefa_activation", "bits": m.bits, "nonlin": m.nonlin, "quantize": m.quantize}, {}
    if t is nn.Hardtanh:
        return {**d, "type": "hardtanh", "min_val": float(m.min_val), "max_val": float(m.max_val)}, {}
    if t is nn.ReLU:
        return {**d, "type": "relu"}, {}
    if t is nn.Flatten:
        return {**d, "type": "flatten", "start_dim": m.start_dim, "end_dim": m.end_dim}, {}
    if t is nn.MaxPool2d:
        if m.return_indices:
            raise _fail(name, m, "return_indices=True")
        return {**d, "type": "maxpool2d", "kernel_size": _pairs(m.kernel_size),
                "stride": _pairs(m.stride if m.stride is not None else m.kernel_size), "padding": _pairs(m.padding),
                "dilation": _pairs(m.dilation), "ceil_mode": bool(m.ceil_mode)}, {}
    raise _fail(name, m, f"the format describes only the module types {sorted(MODULES)}")


def _describe_modules(pairs, prefix: str, arrays: dict) -> list[dict]:
    out = []
    for j, (name, m) in enumerate(pairs):
        d, a = describe_module(name, m)
        out.append(d)
        arrays.update({f"{prefix}m{j}.{k}": v for k, v in a.items()})
    return out


def describe(model: MultiBitModel) -> tuple[dict, dict[str, np.ndarray]]:
    """``(header without sha256, arrays)`` of ``model``, validated as :func:`load` will validate them."""
    arrays: dict[str, np.ndarray] = {}
    stages = []
    for i, st in enumerate(model.stages):
        p = f"s{i}."
        if isinstance(st, FloatStage):
            stages.append({"type": "float", "name": st.name, "out_bits": st.out_bits,
                           "modules": _describe_modules(st.modules, p, arrays)})
            continue
        if not isinstance(st, BitSerialStage):
            raise PackError(f"cannot save stage {i} ({type(st).__name__}) to a .bnn file: not a FloatStage or "
                            f"BitSerialStage")
        w = st.weights
        d = {"type": "bitserial", "name": st.name, "names": list(st.names), "in_bits": st.in_bits, "w_bits": w.bits,
             "w_scale": float(w.scale), "n": w.n, "k": w.k, "conv": None if st.conv is None else _pairs(st.conv),
             "pool": None if st.pool is None else describe_module(st.name, st.pool, named=False)[0],
             "flatten": bool(st.flatten), "out_bits": st.out_bits, "tail": None}
        arrays[p + "planes"] = w.planes.bits
        if st.thresholds is not None:
            arrays[p + "t"] = narrow_thresholds(st.thresholds.t)
            arrays[p + "flip"] = np.packbits(np.asarray(st.thresholds.flip, bool).reshape(-1), bitorder="little")
        else:
            if st.chain is None:
                raise PackError(f"cannot save layer {st.name} (BitSerialStage) to a .bnn file: its float tail is a "
                                f"function with no description (no chain of modules)")
            d["tail"] = {"bias": st.bias is not None, "modules": _describe_modules(st.chain, p + "tail.", arrays)}
            if st.bias is not None:
                if st.bias.dtype != torch.float32:
                    raise PackError(f"cannot save layer {st.name} (BitSerialStage) to a .bnn file: a {st.bias.dtype} "
                                    f"bias (the file stores float32)")
                arrays[p + "tail.bias"] = st.bias.detach().cpu().numpy().copy()
        stages.append(d)
    header = {"format": FORMAT, "version": VERSION, "engine": ENGINE, "input_shape": list(model.input_shape),
              "input": INPUT, "code_encoding": CODE_ENCODING, "stages": stages, "meta": model.meta}
    try:  # what load would refuse is refused now (a stage's arrays or shapes that do not fit)
        check(json.loads(json.dumps({**header, "sha256": ""})), arrays)
    except PackError as err:
        raise PackError(f"cannot save this MultiBitModel to a .bnn file: {err}") from None
    return header, arrays


# ---------------------------------------------------------------- load: the header, field by field

def _check_module(where: str, d, named: bool = True) -> dict:
    if not isinstance(d, dict):
        raise PackError(f"{where}: expected an object, got {d!r}")
    if d.get("type") not in MODULES:
        raise PackError(f"{where}.type: expected one of {sorted(MODULES)}, got {d.get('type')!r}")
    fields = MODULES[d["type"]]
    need_keys(d, where, {"type"} | ({"name"} if named else set()) | set(fields))
    if named:
        need_str(d["name"], f"{where}.name")
    for key, check_field in fields.items():
        check_field(d[key], f"{where}.{key}")
    if d["type"] == "hardtanh" and not d["max_val"] > d["min_val"]:
        raise PackError(f"{where}.max_val: expected more than min_val {d['min_val']}, got {d['max_val']}")
    return d


def _module_arrays(d: dict) -> dict[str, tuple]:
    t = d["type"]
    if t in ("linear", "conv2d"):
        o = d["out_features" if t == "linear" else "out_channels"]
        weight = (o, d["in_features"]) if t == "linear" else (o, d["in_channels"] // d["groups"], *d["kernel_size"])
        return {"weight": weight, **({"bias": (o,)} if d["bias"] else {})}
    c = (d.get("num_features"),)
    if t == "shift_batchnorm":
        return dict.fromkeys(("running_mean", "running_invstd", "weight", "bias"), c)
    if t in ("batchnorm1d", "batchnorm2d"):
        return dict.fromkeys(("running_mean", "running_var") + (("weight", "bias") if d["affine"] else ()), c)
    return {}


def _window(size: int, k: int, stride: int, pad: int, dilation: int, ceil: bool) -> int:
    """Torch's output size of a convolution / pooling window over ``size`` (pooling_output_shape)."""
    span = size + 2 * pad - dilation * (k - 1) - 1
    out = (span + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _module_shape(where: str, d: dict, shape: tuple) -> tuple:
    """The shape (one sample's) ``d`` makes of an input of ``shape``; PackError where it cannot take it."""
    t = d["type"]

    def need(ok: bool, what: str):
        if not ok:
            raise PackError(f"{where}: a {t} {what}; its input has shape {list(shape)}")

    if t == "linear":
        need(len(shape) >= 1 and shape[-1] == d["in_features"], f"of in_features {d['in_features']}")
        return shape[:-1] + (d["out_features"],)
    if t in ("conv2d", "maxpool2d"):
        conv = t == "conv2d"
        need(len(shape) == 3, "takes [C, H, W]")
        if conv:
            g = d["groups"]
            need(shape[0] == d["in_channels"] and d["in_channels"] % g == 0 and d["out_channels"] % g == 0,
                 f"of {d['in_channels']} input, {d['out_channels']} output channels in {g} groups")
        else:
            need(all(2 * p <= k for p, k in zip(d["padding"], d["kernel_size"])), "pads at most half its kernel")
        hw = tuple(_window(x, *a, ceil=not conv and d["ceil_mode"])
                   for x, *a in zip(shape[1:], d["kernel_size"], d["stride"], d["padding"], d["dilation"]))
        need(min(hw) >= 1, "makes an empty output")
        return ((d["out_channels"] if conv else shape[0]),) + hw
    if t in ("batchnorm1d", "batchnorm2d", "shift_batchnorm"):
        dims = {"batchnorm1d": (1, 2), "batchnorm2d": (3,)}.get(t, (1, 2, 3))
        need(len(shape) in dims and shape[0] == d["num_features"], f"of {d['num_features']} features")
        return shape
    if t == "flatten":
        nd = len(shape) + 1  # with the batch axis, which may not be flattened
        s, e = (x + nd if x < 0 else x for x in (d["start_dim"], d["end_dim"]))
        need(1 <= s <= e < nd, f"of dims {d['start_dim']}..{d['end_dim']}")
        return shape[:s - 1] + (math.prod(shape[s - 1:e]),) + shape[e:]
    return shape  # elementwise


def _check_modules(where: str, mods, prefix: str, shape: tuple, expected: dict, types=None) -> tuple:
    if not isinstance(mods, list):
        raise PackError(f"{where}: expected a list of modules, got {mods!r}")
    for j, d in enumerate(mods):
        w = f"{where}[{j}]"
        _check_module(w, d)
        if types is not None and d["type"] not in types:
            raise PackError(f"{w}.type: a float tail holds only {list(types)}, got {d['type']!r}")
        if types is not None and d["type"] == "dorefa_activation" and (d["quantize"] or d["nonlin"] != "clip"):
            raise PackError(f"{w}: a float tail's DoReFa activation is clip(x, 0, 1), not quantized")
        shape = _module_shape(w, d, shape)
        expected.update({f"{prefix}m{j}.{k}": (np.float32, s) for k, s in _module_arrays(d).items()})
    return shape


def _check_float(where: str, p: str, d: dict, shape: tuple, expected: dict) -> tuple:
    need_keys(d, where, FLOAT_KEYS)
    need_str(d["name"], f"{where}.name")
    out_bits = _bits(d["out_bits"], f"{where}.out_bits", none=True)
    shape = _check_modules(f"{where}.modules", d["modules"], p, shape, expected)
    if d["name"] not in [m["name"] for m in d["modules"]]:
        raise PackError(f"{where}.name: {d['name']!r} names none of its modules")
    # the output is a code when the stage ends in a quantizing DoReFa activation (build_stages' rule)
    last = next((m for m in reversed(d["modules"]) if m["type"] != "identity"), None)
    bits = last["bits"] if (last and last["type"] == "dorefa_activation" and last["quantize"]
                            and last["bits"] <= 8) else None
    if out_bits != bits:
        raise PackError(f"{where}.out_bits: expected {bits} (from its last module), got {out_bits}")
    return shape


def _check_bitserial(where: str, p: str, d: dict, shape: tuple, bits: int | None, expected: dict) -> tuple:
    need_keys(d, where, BITSERIAL_KEYS)
    if bits is None:
        raise PackError(f"{where}.type: a bit-serial stage takes codes; its input is float values (the model input "
                        f"or a float output)")
    if not is_int(d["in_bits"]) or d["in_bits"] != bits:
        raise PackError(f"{where}.in_bits: expected {bits} (the codes the stage before makes), got {d['in_bits']!r}")
    need_str(d["name"], f"{where}.name")
    if not isinstance(d["names"], list) or not d["names"] or not all(isinstance(n, str) for n in d["names"]) \
            or d["names"][0] != d["name"]:
        raise PackError(f"{where}.names: expected a list of strings starting with the name {d['name']!r}, "
                        f"got {d['names']!r}")
    w_bits = _bits(d["w_bits"], f"{where}.w_bits")
    _number(d["w_scale"], f"{where}.w_scale", lo=0)
    n, k = need_int(d["n"], f"{where}.n"), need_int(d["k"], f"{where}.k")
    out_bits = _bits(d["out_bits"], f"{where}.out_bits", none=True)
    _bool(d["flatten"], f"{where}.flatten")
    conv = d["conv"]
    if conv is None:
        if math.prod(shape) != k:
            raise PackError(f"{where}.k: {k} does not match its input shape {list(shape)}")
        shape = (n,)
    else:
        if not isinstance(conv, list) or len(conv) != 4 or not all(is_int(x) for x in conv) or min(conv[:3]) < 1 \
                or conv[3] < 0:
            raise PackError(f"{where}.conv: expected null or [kh, kw, stride, pad] (pad >= 0, the rest positive), "
                            f"got {conv!r}")
        kh, kw, stride, pad = conv
        if len(shape) != 3 or shape[0] * kh * kw != k:
            raise PackError(f"{where}.k: {k} is not C * kh * kw of its input shape {list(shape)} and kernel {kh}x{kw}")
        hw = tuple(_window(x, kk, stride, pad, 1, False) for x, kk in zip(shape[1:], (kh, kw)))
        if min(hw) < 1:
            raise PackError(f"{where}.conv: its input shape {list(shape)} makes an empty output")
        shape = (n,) + hw
    expected[p + "planes"] = (np.uint64, (w_bits * n, words(k)))
    if out_bits is None:  # the float tail
        if d["pool"] is not None or d["flatten"]:
            raise PackError(f"{where}: a stage with a float tail neither pools nor flattens its codes "
                            f"(pool null, flatten false)")
        tail = d["tail"]
        need_keys(tail, f"{where}.tail", {"bias", "modules"})
        if _bool(tail["bias"], f"{where}.tail.bias"):
            expected[p + "tail.bias"] = (np.float32, (n,))
        return _check_modules(f"{where}.tail.modules", tail["modules"], p + "tail.", shape, expected, TAIL_TYPES)
    if d["tail"] is not None:
        raise PackError(f"{where}.tail: expected null for a stage that makes {out_bits}-bit codes")
    levels = 2 ** out_bits - 1
    expected.update({p + "t": (THRESHOLD_DTYPES, (n, levels)), p + "flip": (np.uint8, (-(-n * levels // 8),))})
    if d["pool"] is not None:
        if conv is None:
            raise PackError(f"{where}.pool: a dense stage cannot pool")
        pool = _check_module(f"{where}.pool", d["pool"], named=False)
        if pool["type"] != "maxpool2d":
            raise PackError(f"{where}.pool.type: expected 'maxpool2d', got {pool['type']!r}")
        shape = _module_shape(f"{where}.pool", pool, shape)
    return (math.prod(shape),) if d["flatten"] else shape


def _owner(name: str) -> str:
    """``s1.tail.m0.weight`` -> ``stages[1].tail.modules[0]``: where an array belongs in the header."""
    parts = name.split(".")
    where = f"stages[{parts[0][1:]}]"
    if parts[1] == "tail":
        where += ".tail"
        parts = parts[1:]
    if len(parts) > 2:
        where += f".modules[{parts[1][1:]}]"
    return where


def check(header: dict, arrays: dict[str, np.ndarray]) -> None:
    """Validate a multi-bit header (any version check and the hash done) and its arrays: every field,
    the shapes through every stage, each array's dtype and shape, the bits past the end of the planes."""
    if header["version"] < 2:
        raise PackError(f"version: a multi-bit file has version >= 2 (a content hash), got {header['version']}")
    shape = check_common(header, HEADER_KEYS, "code_encoding")
    stages = header["stages"]
    if not isinstance(stages, list) or not stages:
        raise PackError("stages: expected a non-empty list of stages")
    expected: dict[str, tuple] = {}
    bits = None  # what flows into the next stage: codes of that many bits, or float (None)
    for i, d in enumerate(stages):
        where = f"stages[{i}]"
        if not isinstance(d, dict) or d.get("type") not in ("float", "bitserial"):
            got = d.get("type") if isinstance(d, dict) else d
            raise PackError(f"{where}.type: expected 'float' or 'bitserial', got {got!r}")
        if d["type"] == "bitserial":
            shape = _check_bitserial(where, f"s{i}.", d, shape, bits, expected)
        else:
            shape = _check_float(where, f"s{i}.", d, shape, expected)
        bits = d["out_bits"]
    if bits is not None or len(shape) != 1:
        raise PackError(f"stages[{len(stages) - 1}]: the last stage must make logits [classes], it makes "
                        f"{'codes' if bits is not None else 'values'} of shape {list(shape)}")
    check_arrays(arrays, expected, _owner)
    for i, d in enumerate(stages):
        if d["type"] == "bitserial":
            _check_pad_bits(f"s{i}.", d, arrays)


def _check_pad_bits(p: str, d: dict, arrays: dict) -> None:
    planes, k = arrays[p + "planes"], d["k"]
    if k % 64 and (planes[:, -1] >> np.uint64(k % 64)).any():
        raise PackError(f"{_owner(p + 'planes')}: array {p + 'planes'!r}: bits past k={k} are set (planes pad with 0)")
    if p + "flip" in arrays:
        used = d["n"] * (2 ** d["out_bits"] - 1)
        if np.unpackbits(arrays[p + "flip"], bitorder="little")[used:].any():
            raise PackError(f"{_owner(p + 'flip')}: array {p + 'flip'!r}: bits past the {used} flags are set")


# ---------------------------------------------------------------- building the model (validated input)

def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))  # a writable copy


def build_module(d: dict, arrays: dict[str, np.ndarray]) -> nn.Module:
    """The torch module of a validated description ``d`` and its arrays (local names), in eval mode."""
    t = d["type"]
    if t == "identity":
        m = nn.Identity()
    elif t in ("linear", "conv2d"):
        if t == "linear":  # skip_init: no random initialisation (the weights are copied in; torch's RNG untouched)
            m = torch.nn.utils.skip_init(nn.Linear, d["in_features"], d["out_features"], bias=d["bias"])
        else:
            m = torch.nn.utils.skip_init(nn.Conv2d, d["in_channels"], d["out_channels"], tuple(d["kernel_size"]),
                                         stride=tuple(d["stride"]), padding=tuple(d["padding"]),
                                         dilation=tuple(d["dilation"]), groups=d["groups"], bias=d["bias"])
        _load(m, arrays)
    elif t in ("batchnorm1d", "batchnorm2d", "shift_batchnorm"):
        cls = {"batchnorm1d": nn.BatchNorm1d, "batchnorm2d": nn.BatchNorm2d}.get(t, ShiftBatchNorm)
        m = cls(d["num_features"], eps=d["eps"], affine=d["affine"])
        _load(m, arrays)
    elif t == "dorefa_activation":
        m = DoReFaActivation(d["bits"], d["nonlin"], d["quantize"])
    elif t == "hardtanh":
        m = nn.Hardtanh(d["min_val"], d["max_val"])
    elif t == "relu":
        m = nn.ReLU()
    elif t == "flatten":
        m = nn.Flatten(d["start_dim"], d["end_dim"])
    else:
        m = nn.MaxPool2d(tuple(d["kernel_size"]), tuple(d["stride"]), tuple(d["padding"]), tuple(d["dilation"]),
                         ceil_mode=d["ceil_mode"])
    return m.requires_grad_(False).eval()


def _load(m: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        for key, a in arrays.items():
            getattr(m, key).copy_(_tensor(a))


def _modules(mods: list, prefix: str, arrays: dict) -> list:
    out = []
    for j, d in enumerate(mods):
        p = f"{prefix}m{j}."
        local = {k[len(p):]: a for k, a in arrays.items() if k.startswith(p)}
        out.append((d["name"], build_module(d, local)))
    return out


def _codes(planes: np.ndarray, bits: int, n: int, k: int) -> np.ndarray:
    """Weight codes ``[n, k]`` of their planes (plane j read as +-1 is ``2 c_j - 1``)."""
    c = (unpack(planes, k).astype(np.int64).reshape(bits, n, k) + 1) // 2
    return (c << np.arange(bits, dtype=np.int64)[:, None, None]).sum(0).astype(np.uint8)


def build(header: dict, arrays: dict[str, np.ndarray]) -> MultiBitModel:
    stages = []
    for i, d in enumerate(header["stages"]):
        p = f"s{i}."
        if d["type"] == "float":
            stages.append(FloatStage(d["name"], _modules(d["modules"], p, arrays), d["out_bits"]))
            continue
        n, k, w_bits = d["n"], d["k"], d["w_bits"]
        planes = arrays[p + "planes"]
        w = multibit.MultiBitWeights(_codes(planes, w_bits, n, k), w_bits, d["w_scale"])
        if not np.array_equal(w.planes.bits, planes):  # cannot happen on validated planes; never run on others
            raise PackError(f"{_owner(p + 'planes')}: array {p + 'planes'!r}: the planes do not round-trip")
        st = BitSerialStage(d["name"], w, d["in_bits"], w.scale / (2 ** d["in_bits"] - 1), names=list(d["names"]),
                            out_bits=d["out_bits"], kind="dense" if d["conv"] is None else "conv",
                            conv=None if d["conv"] is None else tuple(d["conv"]), flatten=d["flatten"])
        if d["out_bits"] is not None:
            levels = 2 ** d["out_bits"] - 1
            flip = np.unpackbits(arrays[p + "flip"], bitorder="little")[:n * levels].reshape(n, levels).astype(bool)
            st.thresholds = multibit.LevelThresholds(widen_thresholds(arrays[p + "t"]), flip)
            st.pool = None if d["pool"] is None else build_module(d["pool"], {})
        else:
            st.chain = _modules(d["tail"]["modules"], p + "tail.", arrays)
            st.bias = _tensor(arrays[p + "tail.bias"]) if d["tail"]["bias"] else None
            st.tail = fold.chain_fn([m for _, m in st.chain], st.bias)
        stages.append(st)
    return MultiBitModel(stages, tuple(header["input_shape"]), header["meta"])


def _shape_text(d: dict) -> str:
    """``in->out`` of a linear layer, ``in->out kxk`` of a convolution (a layer's description)."""
    if d.get("type") == "linear":
        return f"{d['in_features']}->{d['out_features']}"
    if d.get("type") == "conv2d":
        return f"{d['in_channels']}->{d['out_channels']} {d['kernel_size'][0]}x{d['kernel_size'][1]}"
    return ""


def stage_rows(model: MultiBitModel) -> list[dict]:
    """``bnnrepro pack``'s table: per stage its name, kind, bits (``W1A2``; ``fp32``), shape, bytes stored."""
    header, arrays = describe(model)
    rows = []
    for i, (st, d) in enumerate(zip(model.stages, header["stages"])):
        size = sum(a.nbytes for name, a in arrays.items() if name.startswith(f"s{i}."))
        if d["type"] == "bitserial":
            conv = d["conv"]
            shape = _shape_text({"type": "linear", "in_features": d["k"], "out_features": d["n"]} if conv is None else
                                {"type": "conv2d", "in_channels": d["k"] // (conv[0] * conv[1]), "out_channels": d["n"],
                                 "kernel_size": conv[:2]})
            bits = f"W{d['w_bits']}A{d['in_bits']}"
        else:
            shape = _shape_text(next(m for m in d["modules"] if m["name"] == d["name"]))
            bits = "fp32"
        rows.append(dict(name=st.name, kind=st.kind, bits=bits, shape=shape, bytes=size))
    return rows

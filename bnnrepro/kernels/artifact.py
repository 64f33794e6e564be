"""The packed model file (``.bnn``): :func:`save` and :func:`load` of either engine's model, and the
binary engine's format. The container (a plain ``.npz`` of numeric arrays plus a JSON header, the
content hash, the field checks) is :mod:`.packed_file`'s.

Nothing in it can execute code: it is read with ``np.load(..., allow_pickle=False)`` and the
header is JSON. Weights are stored packed (1 bit each, natural ``[N, Kw]`` / ``[O, kh, kw, Cw]``
layouts; panels are rebuilt at load time), thresholds as int64, flip flags as packed bits.

Version 2 adds ``sha256``, a content hash over the canonical header and every array, so a file
modified or damaged after it was written is refused. :func:`load` validates the header field by
field and every array against the shapes the header implies before anything is built; any
problem is a :class:`PackError` naming the file and the field.

A multi-bit (DoReFa, bit-serial) :class:`MultiBitModel` is saved in the same container with the
header field ``"engine": "multibit"`` (``multibit_artifact``: its stages, weight codes as their
bit-planes, level thresholds, float stages as module descriptions); a binary file has no
``engine`` field, so files written before it existed load as they did.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import PackError
from . import conv as convk
from . import fold, tiles
from .bitpack import words
from .engine import Layer, PackedModel
from .gemm import DenseWeights
from .multibit_engine import MultiBitModel
from .packed_file import (  # noqa: F401 (is_artifact, content_hash: re-exported, this module's API)
    FORMAT, INPUT, VERSION, check_arrays, check_common, check_hash, check_version, content_hash, engine_of,
    is_artifact, is_int, need_int, need_keys, need_pool, need_shape, need_str, read_arrays, read_header, write)


def save(model: PackedModel | MultiBitModel, path: str | os.PathLike) -> Path:
    if isinstance(model, MultiBitModel):
        from . import multibit_artifact

        return write(path, *multibit_artifact.describe(model))
    if not isinstance(model, PackedModel):
        raise PackError(f"a {type(model).__name__} is not a packed model (a PackedModel or a MultiBitModel)")
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for i, L in enumerate(model.layers):
        w = L.weights
        p = f"l{i}."
        d = {"name": L.name, "kind": L.kind, "input": L.input, "out_channels": L.out_channels,
             "in_shape": list(L.in_shape), "out_shape": list(L.out_shape),
             "pool_pre": L.pool_pre and list(L.pool_pre), "pool_post": L.pool_post and list(L.pool_post),
             "names": list(L.names), "sign_name": L.sign_name, "variant": int(w.variant), "k": int(w.k)}
        arrays[p + "bits"] = w.bits
        if L.kind == "conv":
            d.update(c=int(w.c), stride=int(w.stride), pad=int(w.pad))
            arrays[p + "tap_sums"] = w.tap_sums.astype(np.int32)
        if L.thresholds is not None:
            arrays[p + "t"] = L.thresholds.t.astype(np.int64)
            arrays[p + "flip"] = np.packbits(L.thresholds.flip, bitorder="little")
        else:
            a = L.affine
            d["affine"] = {"kind": a.kind, "eps": a.eps, "present": []}
            for key, val in list(a.params.items()) + [("pre_bias", a.pre_bias)]:
                if val is not None:
                    d["affine"]["present"].append(key)
                    arrays[p + "affine." + key] = np.asarray(val, np.float32)
        layers.append(d)
    header = {"format": FORMAT, "version": VERSION, "input_shape": list(model.input_shape),
              "input": INPUT, "bit_encoding": "bit 1 = -1, x >= 0 -> +1", "layers": layers, "meta": model.meta}
    return write(path, header, arrays)


def load(path: str | os.PathLike) -> PackedModel | MultiBitModel:
    """The model of a ``.bnn`` file: a :class:`PackedModel`, or a :class:`MultiBitModel` for a file
    whose header says ``"engine": "multibit"``."""
    path = Path(path)
    try:
        arrays = read_arrays(path)
        header = read_header(arrays.pop("header", None))
        check_version(header)
        if header["version"] >= 2:
            check_hash(header, arrays)
        if engine_of(header) == "multibit":
            from . import multibit_artifact

            multibit_artifact.check(header, arrays)
            return multibit_artifact.build(header, arrays)
        check_arrays(arrays, _check_header(header), _layer_of)
    except PackError as err:
        raise PackError(f"{path}: {err}") from None
    model = _build(header, arrays)
    if header["version"] == 1:
        print(f"bnnrepro: warning: {path}: packed format version 1 carries no content hash (damage or edits "
              f"cannot be detected); pack it again to add one", file=sys.stderr)
    return model


# ---------------------------------------------------------------- the header, field by field

KINDS = ("dense", "conv")
LAYER_KEYS = {"name", "kind", "input", "out_channels", "in_shape", "out_shape", "pool_pre", "pool_post", "names",
              "sign_name", "variant", "k"}
CONV_KEYS = {"c", "stride", "pad"}
HEADER_KEYS = {"format", "version", "input_shape", "input", "bit_encoding", "layers", "meta"}
# the affine arrays Affine.__call__ cannot run without
AFFINE_REQUIRED = {"none": (), "batchnorm": ("mean", "var"), "scale_shift": ("scale", "shift")}


def _check_header(header: dict) -> dict[str, tuple]:
    """Validate the header; returns ``{array name: (dtype, shape)}`` of every array it implies."""
    input_shape = check_common(header, HEADER_KEYS, "bit_encoding")
    layers = header["layers"]
    if not isinstance(layers, list) or len(layers) < 2:
        raise PackError("layers: expected a list of at least 2 layers (hidden layers, then the output layer)")
    expected: dict[str, tuple] = {}
    prev = None
    for i, d in enumerate(layers):
        expected.update(_check_layer(i, d, prev, input_shape, last=i == len(layers) - 1))
        prev = d
    return expected


def _check_layer(i: int, d, prev: dict | None, input_shape: tuple, last: bool) -> dict[str, tuple]:
    where = f"layers[{i}]"
    if not isinstance(d, dict):
        raise PackError(f"{where}: expected an object, got {d!r}")
    if d.get("kind") not in KINDS:
        raise PackError(f"{where}.kind: expected one of {list(KINDS)}, got {d.get('kind')!r}")
    conv = d["kind"] == "conv"
    need_keys(d, where, LAYER_KEYS | (CONV_KEYS if conv else set()) | ({"affine"} if last else set()))
    need_str(d["name"], f"{where}.name")
    if not isinstance(d["names"], list) or not all(isinstance(n, str) for n in d["names"]):
        raise PackError(f"{where}.names: expected a list of strings, got {d['names']!r}")
    # the engine feeds uint8 bit-planes to the first layer only, binary activations to the others
    first = prev is None
    if d["input"] != ("planes" if first else "bits"):
        raise PackError(f"{where}.input: expected {'planes' if first else 'bits'!r}, got {d['input']!r}")
    variant = tiles.PLANES if first else tiles.ROWS
    if not is_int(d["variant"]) or d["variant"] != variant:
        raise PackError(f"{where}.variant: expected {variant} for a layer on {d['input']}, got {d['variant']!r}")
    if last:  # the output layer: integer logits through the float tail, no sign
        if conv:
            raise PackError(f"{where}.kind: the output layer must be dense, got 'conv'")
        if d["sign_name"] is not None:
            raise PackError(f"{where}.sign_name: expected null for the output layer, got {d['sign_name']!r}")
    else:
        need_str(d["sign_name"], f"{where}.sign_name")
    o = need_int(d["out_channels"], f"{where}.out_channels")
    k = need_int(d["k"], f"{where}.k")
    in_shape = need_shape(d["in_shape"], f"{where}.in_shape", 3 if conv else 1)
    out_shape = need_shape(d["out_shape"], f"{where}.out_shape", 3 if conv else 1)
    if out_shape[0] != o:
        raise PackError(f"{where}.out_channels: {o} does not match out_shape {list(out_shape)}")
    _check_input_shape(where, d, prev, input_shape)
    p = f"l{i}."
    if conv:
        arrays, want_out = _check_conv(where, p, d, o, k, in_shape)
    else:
        arrays, want_out = _check_dense(where, p, d, o, k, in_shape, prev)
    if out_shape != want_out:
        raise PackError(f"{where}.out_shape: expected {list(want_out)} (from in_shape, kernel, stride, pad and "
                        f"pooling), got {list(out_shape)}")
    if last:
        arrays.update(_check_affine(f"{where}.affine", p, d["affine"], o))
    else:
        arrays.update({p + "t": (np.int64, (o,)), p + "flip": (np.uint8, (-(-o // 8),))})
    return arrays


def _check_input_shape(where: str, d: dict, prev: dict | None, input_shape: tuple) -> None:
    """Layer ``i``'s ``in_shape`` is what layer ``i-1`` (or the model input) produces."""
    src, name = (input_shape, "input_shape") if prev is None else (tuple(prev["out_shape"]), "the previous out_shape")
    if d["kind"] == "conv":
        if prev is not None and prev["kind"] != "conv":
            raise PackError(f"{where}.kind: a convolution cannot follow a dense layer")
        want = src
    else:
        want = (math.prod(src),)  # dense layers flatten their input
    if tuple(d["in_shape"]) != want:
        raise PackError(f"{where}.in_shape: {d['in_shape']} does not match {name} {list(src)} "
                        f"(expected {list(want)})")


def _check_dense(where: str, p: str, d: dict, o: int, k: int, in_shape: tuple, prev: dict | None):
    if d["pool_pre"] is not None or d["pool_post"] is not None:
        raise PackError(f"{where}: a dense layer cannot pool (pool_pre/pool_post must be null)")
    if k != in_shape[0]:
        raise PackError(f"{where}.k: {k} does not match in_shape {list(in_shape)}")
    if prev is not None and prev["kind"] == "conv":  # weights permuted to the NHWC words of the conv output
        c, h, w = prev["out_shape"]
        kw = h * w * words(c)
    else:
        kw = words(k)
    return {p + "bits": (np.uint64, (o, kw))}, (o,)


def _check_conv(where: str, p: str, d: dict, o: int, k: int, in_shape: tuple):
    c = need_int(d["c"], f"{where}.c")
    stride = need_int(d["stride"], f"{where}.stride")
    pad = need_int(d["pad"], f"{where}.pad", lo=0)
    pool_pre = need_pool(d["pool_pre"], f"{where}.pool_pre", 3)
    pool_post = need_pool(d["pool_post"], f"{where}.pool_post", 2)
    if c != in_shape[0]:
        raise PackError(f"{where}.c: {c} does not match in_shape {list(in_shape)}")
    kh = math.isqrt(k // c)
    if kh * kh * c != k:  # k = kh * kw * c with a square kernel
        raise PackError(f"{where}.k: {k} is not kh * kh * c for c={c}")
    h, w = (convk.out_size(x, kh, stride, pad) for x in in_shape[1:])
    if pool_pre is not None:
        h, w = ((x + 2 * pool_pre[2] - pool_pre[0]) // pool_pre[1] + 1 for x in (h, w))
    if pool_post is not None:
        h, w = ((x - pool_post[0]) // pool_post[1] + 1 for x in (h, w))
    if h < 1 or w < 1:
        raise PackError(f"{where}: the output of in_shape {list(in_shape)} after kernel {kh}, stride {stride}, "
                        f"pad {pad} and pooling is empty")
    arrays = {p + "bits": (np.uint64, (o, kh, kh, words(c))), p + "tap_sums": (np.int32, (o, kh, kh))}
    return arrays, (o, h, w)


def _check_affine(where: str, p: str, a, o: int) -> dict[str, tuple]:
    need_keys(a, where, {"kind", "eps", "present"})
    if a["kind"] not in fold.Affine.ARRAYS:
        raise PackError(f"{where}.kind: expected one of {list(fold.Affine.ARRAYS)}, got {a['kind']!r}")
    eps = a["eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise PackError(f"{where}.eps: expected a finite number >= 0, got {eps!r}")
    allowed = fold.Affine.ARRAYS[a["kind"]] + ("pre_bias",)
    present = a["present"]
    if not isinstance(present, list) or not all(x in allowed for x in present) or len(set(present)) != len(present):
        raise PackError(f"{where}.present: expected distinct names among {list(allowed)}, got {present!r}")
    for key in AFFINE_REQUIRED[a["kind"]]:
        if key not in present:
            raise PackError(f"{where}.present: {a['kind']!r} needs {key!r}")
    return {p + "affine." + key: (np.float32, (o,)) for key in present}


def _layer_of(name: str) -> str:
    """``l2.bits`` -> ``layers[2]``: where an array belongs in the header."""
    return f"layers[{name[1:name.index('.')]}]"


# ---------------------------------------------------------------- building the model (validated input)

def _build(header: dict, arrays: dict[str, np.ndarray]) -> PackedModel:
    layers = []
    for i, d in enumerate(header["layers"]):
        p = f"l{i}."
        bits = np.ascontiguousarray(arrays[p + "bits"], np.uint64)
        if d["kind"] == "conv":
            w = convk.ConvWeights(bits, arrays[p + "tap_sums"].astype(np.int64), d["c"], d["stride"], d["pad"],
                                  d["variant"])
        else:
            w = DenseWeights(bits, d["k"], d["variant"])
        L = Layer(d["name"], d["kind"], d["input"], w, d["out_channels"], tuple(d["in_shape"]),
                  tuple(d["out_shape"]), pool_pre=d["pool_pre"] and tuple(d["pool_pre"]),
                  pool_post=d["pool_post"] and tuple(d["pool_post"]), names=d["names"], sign_name=d["sign_name"])
        if p + "t" in arrays:
            n = d["out_channels"]
            flip = np.unpackbits(arrays[p + "flip"], bitorder="little")[:n].astype(bool)
            L.thresholds = fold.Thresholds(arrays[p + "t"].astype(np.int64), flip)
        else:
            a = d["affine"]
            get = lambda key: arrays[p + "affine." + key] if key in a["present"] else None  # noqa: E731
            params = {key: get(key) for key in fold.Affine.ARRAYS[a["kind"]]}
            L.affine = fold.Affine(a["kind"], params, a["eps"], get("pre_bias"))
        layers.append(L)
    return PackedModel(layers, tuple(header["input_shape"]), header.get("meta"))


def float_weight_bytes(model) -> int:
    """Bytes of the float32 weights of the layers the engine packs (conv/linear weights and biases)."""
    import torch.nn as nn

    return sum(4 * (m.weight.numel() + (m.bias.numel() if m.bias is not None else 0))
               for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))

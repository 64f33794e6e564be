"""The packed model file (``.bnn``): a plain ``.npz`` of numeric arrays plus a JSON header.

Nothing in it can execute code: it is read with ``np.load(..., allow_pickle=False)`` and the
header is JSON. Weights are stored packed (1 bit each, natural ``[N, Kw]`` / ``[O, kh, kw, Cw]``
layouts; panels are rebuilt at load time), thresholds as int64, flip flags as packed bits.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..runs import atomic_write_bytes
from . import conv as convk
from . import fold
from .engine import Layer, PackedModel
from .gemm import DenseWeights

FORMAT = "bnnrepro-packed"
VERSION = 1


def save(model: PackedModel, path: str | os.PathLike) -> Path:
    path = Path(path)
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
              "input": "uint8, x = p * 2/255 - 1 (data.scale_pm1)", "bit_encoding": "bit 1 = -1, x >= 0 -> +1",
              "layers": layers, "meta": model.meta}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
    return path


def load(path: str | os.PathLike) -> PackedModel:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "header" not in arrays:
        raise ValueError(f"{path}: not a bnnrepro packed model (no header)")
    header = json.loads(arrays["header"].tobytes().decode())
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported packed format {header.get('format')!r} v{header.get('version')}")
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

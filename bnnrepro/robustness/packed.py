"""Bit errors in a deployed binary net: the packed engine's weight bits flipped, then the whole test
set run through the engine (``--engine packed``, noise ``bitflip`` only).

What a memory fault does to the ``.bnn`` artifact of a W1A1 net: each stored weight bit flips
independently with probability p. The flips are drawn exactly as the torch sweep draws them for
the same net's effective (±1) weights -- the same generator, layer by layer in the same order, in
the torch weight layout -- so the packed and the torch curves of one net see the same faults, and
p = 0 leaves every bit, hence every prediction, as packed. BN thresholds are as folded from the
trained net (a fault in the weights only).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..kernels import PackedModel
from ..kernels.bitpack import pack_reference, unpack
from ..kernels.conv import ConvWeights
from ..kernels.gemm import DenseWeights
from .distortions import Distortion, DistortionOptions


def _after_conv(layer, previous) -> tuple[int, int, int] | None:
    """(C, H, W) of the conv output a dense layer reads: the engine stores such a layer's weights
    in (h, w, c) order, each pixel's channels padded to whole words."""
    if layer.kind == "dense" and previous is not None and previous.kind == "conv":
        return tuple(previous.out_shape)
    return None


def layer_signs(layer, previous=None) -> torch.Tensor:
    """A packed layer's ±1 weights as float32 in torch's layout ([O, K] or [O, C, kh, kw]);
    ``previous``: the layer before it (a dense layer after a conv is stored permuted)."""
    w = layer.weights
    if layer.kind == "conv":
        return torch.from_numpy(np.moveaxis(unpack(w.bits, w.c), -1, 1).astype(np.float32))
    chw = _after_conv(layer, previous)
    if chw is not None:
        c, h, ww = chw
        hwc = unpack(w.bits.reshape(w.n, h, ww, -1), c)          # [O, h, w, c]
        return torch.from_numpy(hwc.transpose(0, 3, 1, 2).reshape(w.n, -1).astype(np.float32))
    return torch.from_numpy(unpack(w.bits, w.k).astype(np.float32))


def _repacked(layer, signs: torch.Tensor, previous=None):
    w = layer.weights
    if layer.kind == "conv":
        return ConvWeights.from_float(signs.numpy(), w.stride, w.pad, w.variant)
    chw = _after_conv(layer, previous)
    if chw is not None:
        c, h, ww = chw
        hwc = signs.numpy().reshape(w.n, c, h, ww).transpose(0, 2, 3, 1)
        return DenseWeights(pack_reference(hwc).reshape(w.n, -1), c * h * ww, w.variant)
    return DenseWeights.from_float(signs.numpy(), w.variant)


def distorted(packed: PackedModel, distortion: Distortion, level: float, generator: torch.Generator | None,
              opts: DistortionOptions = DistortionOptions()) -> tuple[PackedModel, bool, list[torch.Tensor],
                                                                       list[torch.Tensor]]:
    """A new packed model whose weight bits are ``distortion`` of the stored ones (the stored
    model is untouched); also whether every bit is unchanged, and the layers' clean and distorted
    ±1 weights (for the effective bits)."""
    if distortion.name != "bitflip":
        raise ValueError(f"--engine packed supports --noise bitflip only, not {distortion.name!r}: the packed "
                         "weights are bits")
    layers, same, clean, flipped = [], True, [], []
    for i, layer in enumerate(packed.layers):
        previous = packed.layers[i - 1] if i else None
        signs = layer_signs(layer, previous)
        new = distortion.apply(signs, level, generator, opts)
        unchanged = torch.equal(new, signs)
        same &= unchanged
        clean.append(signs)
        flipped.append(new)
        layers.append(layer if unchanged else
                      dataclasses.replace(layer, weights=_repacked(layer, new, previous)))
    return PackedModel(layers, packed.input_shape, packed.meta), same, clean, flipped


def error(packed: PackedModel, x_uint8: np.ndarray, y: np.ndarray, batch_size: int = 2000) -> float:
    """Test error (percent) of the packed model on uint8 images."""
    pred = packed.predict(x_uint8, batch_size=batch_size)
    return 100.0 * float((pred != y).sum()) / len(y)

"""Max-pooling on packed activations and on integer pre-activations.

On +-1 values max is +1 as soon as one input is +1; with bit 1 = -1 that is the AND of the
window's words (64 channels per instruction). Max-pooling before BatchNorm (the BNN ConvNet order
``conv -> pool -> BN -> sign``) is done on the exact integer pre-activations instead; the common
2x2/2 case is fused into the convolution (``tiles.POOL4``), these kernels cover the rest.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


def bmaxpool2d_reference(bits: np.ndarray, k: int, stride: int | None = None) -> np.ndarray:
    """``[N, H, W, Cw]`` packed -> ``[N, Ho, Wo, Cw]`` (no padding, floor mode)."""
    s = stride or k
    n, h, w, cw = bits.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.full((n, ho, wo, cw), np.uint64(0xFFFFFFFFFFFFFFFF), np.uint64)
    for dh in range(k):
        for dw in range(k):
            out &= bits[:, dh:dh + s * (ho - 1) + 1:s, dw:dw + s * (wo - 1) + 1:s]
    return out


@njit(parallel=True, cache=True, boundscheck=False)
def _bmaxpool(bits, k, s, out, pad):
    n, h, w, cw = bits.shape
    ho = (h - k) // s + 1
    wo = (w - k) // s + 1
    for t in prange(n * ho):
        i = t // ho
        oh = t % ho
        for ow in range(wo):
            for q in range(cw):
                acc = np.uint64(0xFFFFFFFFFFFFFFFF)
                for dh in range(k):
                    for dw in range(k):
                        acc &= bits[i, oh * s + dh, ow * s + dw, q]
                out[i, oh + pad, ow + pad, q] = acc


def bmaxpool2d(bits: np.ndarray, k: int, stride: int | None = None, out: np.ndarray | None = None,
               pad: int = 0) -> np.ndarray:
    """Optimized :func:`bmaxpool2d_reference`; writes the interior of ``out`` (border ``pad``)."""
    s = stride or k
    n, h, w, cw = bits.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    if out is None:
        out = np.zeros((n, ho + 2 * pad, wo + 2 * pad, cw), np.uint64)
    _bmaxpool(np.ascontiguousarray(bits), int(k), int(s), out, int(pad))
    return out


def maxpool_int(y: np.ndarray, k: int, stride: int, pad: int = 0) -> np.ndarray:
    """Max-pool of integer pre-activations ``[N, H, W, C]`` (padding never wins, as in torch)."""
    n, h, w, c = y.shape
    info = np.iinfo(y.dtype)
    if pad:
        yp = np.full((n, h + 2 * pad, w + 2 * pad, c), info.min, y.dtype)
        yp[:, pad:pad + h, pad:pad + w] = y
        y, h, w = yp, h + 2 * pad, w + 2 * pad
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.full((n, ho, wo, c), info.min, y.dtype)
    for dh in range(k):
        for dw in range(k):
            np.maximum(out, y[:, dh:dh + stride * (ho - 1) + 1:stride, dw:dw + stride * (wo - 1) + 1:stride],
                       out=out)
    return out

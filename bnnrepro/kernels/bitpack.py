"""Bit packing along the reduction axis.

Encoding (everywhere in ``bnnrepro.kernels``): one bit per value, 64 per uint64 word, value ``k``
of a row in bit ``k % 64`` of word ``k // 64``; **bit 0 means +1 and bit 1 means -1**, and a value
packs to +1 exactly when ``x >= 0`` (the training convention ``sign(0) = +1``; NaN packs to -1 like
``quant.sign_pm1``). Then XOR marks disagreements and a +-1 dot product of length ``K`` is
``K - 2 * popcount(a ^ b)``. Padding bits (past ``K``, or past ``C`` channels in a word) are 0 in
both operands, so they never count.

Activations of convolutions are NHWC with channels packed: ``[N, H, W, ceil(C/64)]`` words,
optionally with a zero (+1) border of ``pad`` pixels that the convolution corrects for exactly.
Pixels of the real-valued first layer are split into 8 bit-planes (``pack_planes_*``).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._simd import bitplanes64

WORD = 64


def words(k: int) -> int:
    return (int(k) + WORD - 1) // WORD


# ---------------------------------------------------------------- reference (numpy, obviously right)

def pack_reference(x: np.ndarray) -> np.ndarray:
    """Pack the last axis of a real array: ``[..., K] -> [..., ceil(K/64)]`` uint64."""
    x = np.asarray(x)
    neg = ~(x >= 0)  # NaN -> -1
    k = x.shape[-1]
    pad = words(k) * WORD - k
    neg = np.concatenate([neg, np.zeros(neg.shape[:-1] + (pad,), bool)], axis=-1)
    return np.packbits(neg, axis=-1, bitorder="little").view(np.uint64)


def unpack(bits: np.ndarray, k: int) -> np.ndarray:
    """``[..., Kw]`` uint64 -> ``[..., K]`` int8 in {-1, +1}."""
    b = np.unpackbits(np.ascontiguousarray(bits).view(np.uint8), axis=-1, bitorder="little")[..., :k]
    return (1 - 2 * b.astype(np.int8)).astype(np.int8)


def pack_nchw_reference(x: np.ndarray, pad: int = 0) -> np.ndarray:
    """``[N, C, H, W]`` real -> ``[N, H+2p, W+2p, Cw]`` packed with a +1 (bit 0) border."""
    n, c, h, w = x.shape
    inner = pack_reference(np.moveaxis(np.asarray(x), 1, -1))
    out = np.zeros((n, h + 2 * pad, w + 2 * pad, words(c)), np.uint64)
    out[:, pad:pad + h, pad:pad + w] = inner
    return out


# ---------------------------------------------------------------- optimized (numba)

@njit(parallel=True, cache=True, boundscheck=False)
def _pack_rows(x, out, k):
    m, kw = out.shape
    for r in prange(m):
        for wd in range(kw):
            word = np.uint64(0)
            base = wd * 64
            top = min(64, k - base)
            for b in range(top):
                if not (x[r, base + b] >= 0):
                    word |= np.uint64(1) << np.uint64(b)
            out[r, wd] = word


def pack_rows(x: np.ndarray) -> np.ndarray:
    """Fast :func:`pack_reference` for 2-D float32/float64 arrays ``[M, K]``."""
    x = np.ascontiguousarray(x)
    if x.ndim != 2:
        raise ValueError(f"pack_rows expects [M, K], got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    out = np.empty((x.shape[0], words(x.shape[1])), np.uint64)
    _pack_rows(x, out, x.shape[1])
    return out


@njit(parallel=True, cache=True, boundscheck=False)
def _pack_nchw(x, out, pad):
    # one task per (image, 64-channel word): the 64 channel planes are read whole and in order
    # (streaming, prefetch-friendly), the word of every pixel is built in an L1-resident buffer
    n, c, h, w = x.shape
    cw = out.shape[3]
    for t in prange(n * cw):
        i = t // cw
        wd = t % cw
        acc = np.zeros((h, w), np.uint64)
        top = min(64, c - wd * 64)
        for b in range(top):
            plane = x[i, wd * 64 + b]
            sh = np.uint64(b)
            for r in range(h):
                for col in range(w):
                    acc[r, col] |= np.uint64(not (plane[r, col] >= 0)) << sh
        for r in range(h):
            for col in range(w):
                out[i, r + pad, col + pad, wd] = acc[r, col]


def pack_nchw(x: np.ndarray, pad: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Fast :func:`pack_nchw_reference`. ``out`` (reused between calls) must have a zero border."""
    x = np.ascontiguousarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    n, c, h, w = x.shape
    shape = (n, h + 2 * pad, w + 2 * pad, words(c))
    if out is None:
        out = np.zeros(shape, np.uint64)
    elif out.shape != shape or out.dtype != np.uint64:
        raise ValueError(f"out must be uint64 {shape}, got {out.dtype} {out.shape}")
    _pack_nchw(x, out, pad)
    return out


# ---------------------------------------------------------------- bit-planes of uint8 pixels
#
# A pixel p in 0..255 enters the float model as x = 2p/255 - 1. With q_b = 2*bit_b(p) - 1 in
# {-1, +1}, sum_b 2**b q_b = 2p - 255 = 255 x, so 255 * (w . x) = sum_b 2**b (w . q_b): eight
# binary dot products, exact in integers. Plane b is stored with the usual encoding (bit 1 = -1),
# i.e. the complement of bit b of the pixel.

def planes_dense_reference(x: np.ndarray) -> np.ndarray:
    """``[M, K]`` uint8 -> ``[M, 8, Kw]`` uint64 bit-planes (row ``m*8 + b`` is plane b)."""
    x = np.asarray(x, np.uint8)
    q = np.stack([((x >> b) & 1).astype(np.float32) * 2 - 1 for b in range(8)], axis=1)
    return pack_reference(q)


@njit(parallel=True, cache=True, boundscheck=False)
def _planes_dense(x, out, k):
    m = x.shape[0]
    kw = out.shape[2]
    for r in prange(m):
        buf = np.zeros(64 * kw, np.uint8)  # complemented pixels: bit b of ~p is plane b's code
        for i in range(k):
            buf[i] = ~x[r, i]
        for wd in range(kw):
            bitplanes64(np.int64(buf.ctypes.data) + 64 * wd, np.int64(out[r, 0, wd:].ctypes.data), np.int64(kw))


def planes_dense(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, np.uint8).reshape(len(x), -1)
    shape = (x.shape[0], 8, words(x.shape[1]))
    if out is None or out.shape != shape:
        out = np.empty(shape, np.uint64)
    _planes_dense(x, out, x.shape[1])
    return out


def planes_im2col_reference(x: np.ndarray, kh: int, kw: int, stride: int, pad: int) -> np.ndarray:
    """``[N, C, H, W]`` uint8 -> ``[N, 8, Kw, Ho, Wo]`` uint64: for each output position and plane
    the ``kh*kw*C`` taps in order ``(dh, dw, c)``; taps in the zero padding are bit 0."""
    x = np.asarray(x, np.uint8)
    n, c, h, w = x.shape
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    k = kh * kw * c
    q = np.ones((n, 8, ho, wo, k), np.float32)  # +1 = bit 0 in the padding
    for b in range(8):
        plane = ((x >> b) & 1).astype(np.float32) * 2 - 1
        padded = np.ones((n, c, h + 2 * pad, w + 2 * pad), np.float32)
        padded[:, :, pad:pad + h, pad:pad + w] = plane
        for dh in range(kh):
            for dw in range(kw):
                patch = padded[:, :, dh:dh + stride * (ho - 1) + 1:stride, dw:dw + stride * (wo - 1) + 1:stride]
                t0 = (dh * kw + dw) * c
                q[:, b, :, :, t0:t0 + c] = np.moveaxis(patch, 1, -1)
    return np.ascontiguousarray(np.moveaxis(pack_reference(q), -1, 2))


@njit(parallel=True, cache=True, boundscheck=False)
def _planes_im2col(x, out, kh, kw, stride, pad):
    n, c, h, w = x.shape
    kw1, ho, wo = out.shape[2], out.shape[3], out.shape[4]
    plane_stride = np.int64(kw1 * ho * wo)
    for t in prange(n * ho):
        i = t // ho
        oh = t % ho
        buf = np.zeros(64 * kw1, np.uint8)  # complemented taps; 0 (code +1) in the zero padding
        for ow in range(wo):
            for dh in range(kh):
                ih = oh * stride + dh - pad
                for dw in range(kw):
                    iw = ow * stride + dw - pad
                    base = (dh * kw + dw) * c
                    if ih < 0 or ih >= h or iw < 0 or iw >= w:
                        for ch in range(c):
                            buf[base + ch] = 0
                    else:
                        for ch in range(c):
                            buf[base + ch] = ~x[i, ch, ih, iw]
            for wd in range(kw1):
                bitplanes64(np.int64(buf.ctypes.data) + 64 * wd, np.int64(out[i, 0, wd, oh, ow:].ctypes.data),
                            plane_stride)


def planes_im2col(x: np.ndarray, kh: int, kw: int, stride: int, pad: int,
                  out: np.ndarray | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, np.uint8)
    n, c, h, w = x.shape
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    shape = (n, 8, words(kh * kw * c), ho, wo)
    if out is None or out.shape != shape:
        out = np.empty(shape, np.uint64)
    _planes_im2col(x, out, kh, kw, stride, pad)
    return out
